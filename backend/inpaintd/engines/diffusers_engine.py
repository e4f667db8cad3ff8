"""The diffusion engine: Stable Diffusion 1.5/2 and SDXL inpainting through diffusers.

One `DiffusersEngine` holds one pipeline, loaded once and kept warm by the daemon.  It
accepts dedicated inpainting checkpoints (9-channel UNet: latents + mask + masked image)
and ordinary 4-channel ones, for which diffusers' inpaint pipelines blend the known
latents back in under the mask at every step.

Everything that is not model work (mask feathering, cropping, scaling, compositing) is done
by the runner before and after `generate`; see `inpaintd.engines.base`.
"""

from __future__ import annotations

import gc
import json
import struct
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import EngineError, EngineTask, ProgressFn, is_out_of_memory
from .pacing import StepPacer
from .sd_inpaint import Embeddings, InpaintLoop, Inputs, scheduler_settings
from .speedups import Speedups, apply, uncompile

if TYPE_CHECKING:  # torch and diffusers are imported lazily: they cost seconds
    import torch

#: Scheduler names clients may ask for -> diffusers class name.  "default" keeps the
#: scheduler the checkpoint was saved with.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "lcm": "LCMScheduler",
}
KNOWN_SCHEDULERS = ("default", *SCHEDULERS)

#: Extra settings per scheduler, on top of the checkpoint's scheduler config.
_SCHEDULER_OVERRIDES: dict[str, dict[str, Any]] = {
    # Without this PNDM runs Runge-Kutta warm-up steps that do not match `steps`.
    "pndm": {"skip_prk_steps": True},
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
}

#: What the one retry after running out of memory changes (see `generate`).
LOW_MEMORY_SETTINGS = "attention slicing, VAE tiling and one variant at a time"

#: Processing sizes of a compiled engine are multiples of this (see `_adopt`).
COMPILED_SHAPE_MULTIPLE = 64

#: Prompt embeddings kept across jobs: users re-run the same prompt with new seeds a lot.
PROMPT_CACHE_SIZE = 8

_PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")

SD15_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"
XL_INPAINT_REPO = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"


def pick_device(requested: str | None = None) -> str:
    """The best device present, unless one was asked for."""
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _dtype_for(device: str) -> "torch.dtype":
    import torch

    # Half precision halves memory and is fast on GPUs; CPUs have no fast float16 path.
    return torch.float32 if device.split(":")[0] == "cpu" else torch.float16


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor names -> dtype/shape of a .safetensors file, from its JSON header (no torch)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def single_file_is_sdxl(path: Path) -> bool:
    """SDXL checkpoints carry a second text encoder under `conditioner.embedders.1`."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        return any(k.startswith("conditioner.embedders.1.") for k in safetensors_header(path))
    except (OSError, ValueError, struct.error):
        return False


def reference_repo_for(path: Path) -> str | None:
    """The diffusers repo whose configs describe a single-file checkpoint's architecture.

    diffusers guesses the same thing, but then fetches the configs from the Hub even when
    told to stay offline; knowing the repo lets us look in the cache first, or say exactly
    what to download.  None: not a layout we recognise (pickles are not inspected).
    """
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = safetensors_header(path)
    except (OSError, ValueError, struct.error):
        return None
    first_conv = header.get("model.diffusion_model.input_blocks.0.0.weight", {})
    shape = first_conv.get("shape") or [0, 4]
    inpainting = len(shape) > 1 and shape[1] == 9
    if any(k.startswith("conditioner.embedders.1.") for k in header):
        return XL_INPAINT_REPO if inpainting else "stabilityai/stable-diffusion-xl-base-1.0"
    if any(k.startswith("cond_stage_model.model.") for k in header):  # OpenCLIP: SD 2.x
        return "stabilityai/stable-diffusion-2-inpainting" if inpainting else "stabilityai/stable-diffusion-2-1-base"
    if inpainting:
        return SD15_INPAINT_REPO
    return "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _pipeline_class(sdxl: bool) -> type:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    return StableDiffusionXLInpaintPipeline if sdxl else StableDiffusionInpaintPipeline


def _class_from_model_index(model_index: Path, model_id: str) -> type:
    """Choose the inpaint pipeline for a diffusers folder from the class it was saved as.

    Text-to-image and img2img checkpoints of the same family share their components with
    the inpaint pipeline, so they load into it unchanged (4-channel UNet, latent blending).
    """
    name = json.loads(model_index.read_text(encoding="utf-8")).get("_class_name", "")
    if name.startswith("StableDiffusionXL"):
        return _pipeline_class(sdxl=True)
    if name.startswith("StableDiffusion") and "Upscale" not in name and "Depth" not in name:
        return _pipeline_class(sdxl=False)
    raise EngineError(
        "model_refused",
        f"model '{model_id}' is a {name or 'unknown'} pipeline; only Stable Diffusion 1.x/2.x "
        "and SDXL checkpoints can be used for inpainting",
    )


class DiffusersEngine:
    """A Stable Diffusion (XL) inpaint pipeline, loaded once and reused for every job."""

    name = "diffusers"
    #: Processing sizes are rounded to this: the VAE downsamples by 8.
    size_multiple = 8

    def __init__(
        self,
        source: str | Path,
        *,
        model_id: str | None = None,
        device: str | None = None,
        config: str | Path | None = None,
        local_files_only: bool = True,
        cache_dir: str | Path | None = None,
        allow_pickle: bool = False,
        progress: ProgressFn | None = None,
        speedups: Speedups | None = None,
    ) -> None:
        """Load `source`: a Hub repo id, a diffusers folder, or a single checkpoint file.

        `config` (a diffusers folder or repo id of the same architecture) tells diffusers
        how to lay out a single-file checkpoint; without it diffusers looks for the
        matching reference repo in the Hugging Face cache.  `cache_dir` is the hub cache.
        """
        self.model_id = model_id or str(source)
        self.device = pick_device(device)
        self.dtype = _dtype_for(self.device)
        self._cache_dir = str(cache_dir) if cache_dir is not None else None
        self._local_files_only = local_files_only
        report = progress or (lambda stage, step, total: None)

        report("loading", 0, 1)
        self._adopt(self._load(str(source), config, allow_pickle), speedups)
        report("loading", 1, 1)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, model_id: str, device: str | None = None, speedups: Speedups | None = None
    ) -> "DiffusersEngine":
        """Wrap a pipeline already built in memory (benchmarks build the full-size
        architectures from configs with random weights; nothing is read from disk).
        The pipeline keeps its dtype; it is moved to `device`."""
        self = cls.__new__(cls)
        self.model_id = model_id
        self.device = pick_device(device)
        self.dtype = pipe.dtype
        self._cache_dir = None
        self._local_files_only = True
        self._adopt(pipe, speedups)
        return self

    def _adopt(self, pipe: Any, speedups: Speedups | None) -> None:
        """Move a loaded pipeline to the device, speed it up, and read what the runner needs."""
        import torch

        self.pipe = pipe
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.is_sdxl = pipe.__class__.__name__.startswith("StableDiffusionXL")
        if self.is_sdxl and self.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16; the stock pipeline casts it to float32 and
            # back for every encode and decode.  Keep it in float32 once (~160 MB more).
            pipe.vae.to(torch.float32)
        self.vae_scale_factor: int = int(self.pipe.vae_scale_factor)
        self.size_multiple = self.vae_scale_factor
        self.native_size: int | None = int(self.pipe.unet.config.sample_size) * self.vae_scale_factor
        self.unet_in_channels: int = int(self.pipe.unet.config.in_channels)
        self._default_scheduler = self.pipe.scheduler
        self._schedulers: dict[str, Any] = {"default": self._default_scheduler}
        self._prompt_cache: OrderedDict[tuple[str, str], Embeddings] = OrderedDict()
        self._saved_processors: dict[str, Any] | None = None  # while the low-memory retry runs
        self.speedups = speedups or Speedups.default_for(self.device)
        # Compiled code is specialised to each shape it meets: round processing sizes to
        # 64 px (8 latent pixels) so that jobs meet about a dozen shapes, not hundreds.
        self.shape_multiple = COMPILED_SHAPE_MULTIPLE if self.speedups.compile != "off" else self.size_multiple
        applied = apply(self.pipe, self.speedups)
        self._loop = InpaintLoop(self.pipe, self.device, cuda_graphs=self.speedups.uses_cuda_graphs(self.device))
        #: What the daemon logs and shows clients as notices about this engine's speed settings.
        self.speed_notes: list[str] = [f"speed-ups in use: {', '.join(applied.used) or 'none'}"]
        self.speed_notes += [f"speed-up not applied: {why}" for why in applied.skipped]
        self.warmup_seconds = 0.0
        if applied.compiled:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile for the shapes most jobs use now, not during an artist's first Generate.

        A job at another size or variant count compiles on first use (same cost again);
        if compilation fails, the engine goes back to eager mode and says so.
        """
        import time

        side = self.native_size or 512
        image = np.zeros((side, side, 3), np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
        start = time.perf_counter()
        try:
            for n in self.speedups.warmup_variants:
                self.generate(EngineTask(
                    image=image, mask=mask, prompt="", negative_prompt="", seeds=list(range(n)),
                    steps=2, guidance_scale=7.5, strength=1.0, scheduler="default",
                ))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            uncompile(self.pipe)
            self.speed_notes.append(f"torch.compile failed while warming up, running uncompiled: {exc}")
            return
        self.warmup_seconds = time.perf_counter() - start
        variants = " and ".join(str(n) for n in self.speedups.warmup_variants)
        self.speed_notes.append(
            f"compiled for {side}x{side} with {variants} variant(s) in {self.warmup_seconds:.1f} s; "
            "a job at another size or variant count compiles on first use"
        )

    # -- loading -------------------------------------------------------------------

    def _load(self, source: str, config: str | Path | None, allow_pickle: bool) -> Any:
        path = Path(source).expanduser()
        common: dict[str, Any] = {
            "dtype": self.dtype,
            "local_files_only": self._local_files_only,
        }
        if self._cache_dir is not None:
            common["cache_dir"] = self._cache_dir

        if path.is_file():
            return self._load_single_file(path, config, allow_pickle, common)
        # Folders and repos may hold pickled weights (.bin) beside or instead of
        # safetensors; diffusers would fall back to them, which the pickle policy forbids.
        common["use_safetensors"] = None if allow_pickle else True
        if path.is_dir():
            index = path / "model_index.json"
            if not index.is_file():
                raise EngineError(
                    "model_unavailable",
                    f"'{source}' is not a diffusers folder (no model_index.json in it)",
                )
            cls = _class_from_model_index(index, self.model_id)
            return self._from_pretrained(cls, str(path), path, common)
        return self._load_from_hub(source, common)

    def _from_pretrained(self, cls: type, source: str, folder: Path, common: dict[str, Any]) -> Any:
        """`cls.from_pretrained`, with a missing or refused weights file named as such."""
        try:
            return cls.from_pretrained(source, **self._no_safety_checker(cls), **common)
        except OSError as exc:  # diffusers: "no file named diffusion_pytorch_model.safetensors ..."
            pickles = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.bin"))
            if common.get("use_safetensors") and pickles:
                why = (f"its weights are pickle files ({', '.join(pickles[:3])}), which can run code when "
                       "loaded; convert them to .safetensors or start the daemon with --allow-pickle")
            else:
                why = (f"its weights are missing ({exc}); a snapshot with configs only, as fetched for a "
                       f"single-file checkpoint, is not a model: run `hf download {self.model_id}` for the "
                       "whole repo")
            raise EngineError("model_unavailable", f"cannot load model '{self.model_id}' from {folder}: {why}") from exc

    def _load_from_hub(self, repo_id: str, common: dict[str, Any]) -> Any:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            index = hf_hub_download(
                repo_id,
                "model_index.json",
                cache_dir=self._cache_dir,
                local_files_only=self._local_files_only,
            )
        except LocalEntryNotFoundError as exc:
            raise EngineError(
                "model_unavailable",
                f"model '{repo_id}' is not in the Hugging Face cache; run `hf download {repo_id}` on a "
                "machine with network access, or start the daemon with --allow-download",
            ) from exc
        cls = _class_from_model_index(Path(index), self.model_id)
        return self._from_pretrained(cls, repo_id, Path(index).parent, common)

    def _load_single_file(
        self, path: Path, config: str | Path | None, allow_pickle: bool, common: dict[str, Any]
    ) -> Any:
        suffix = path.suffix.lower()
        if suffix in _PICKLE_SUFFIXES and not allow_pickle:
            raise EngineError(
                "model_refused",
                f"'{path}' is a pickle checkpoint, which can run arbitrary code when loaded; "
                "convert it to .safetensors or start the daemon with --allow-pickle",
            )
        if config is None and self._local_files_only:
            config = self._cached_reference_config(path)
        if config is not None:
            config_path = Path(config).expanduser()
            if (config_path / "model_index.json").is_file():
                cls = _class_from_model_index(config_path / "model_index.json", self.model_id)
                config = str(config_path)
            else:
                cls = _pipeline_class(single_file_is_sdxl(path))
                config = str(config)
        else:
            cls = _pipeline_class(single_file_is_sdxl(path))
        return cls.from_single_file(str(path), config=config, **self._no_safety_checker(cls), **common)

    def _cached_reference_config(self, path: Path) -> str:
        """A cached diffusers folder to lay out `path` with, or a clear error saying what to get."""
        from huggingface_hub import try_to_load_from_cache

        repo = reference_repo_for(path)
        if repo is not None:
            found = try_to_load_from_cache(repo, "model_index.json", cache_dir=self._cache_dir)
            if isinstance(found, str):
                return str(Path(found).parent)
        wanted = f"the configs of {repo} (`hf download {repo} --include '*.json' '*.txt'`)" if repo else (
            "a diffusers config folder of the same architecture"
        )
        raise EngineError(
            "model_unavailable",
            f"cannot load single-file checkpoint '{path}' offline without its diffusers config: "
            f"provide {wanted}, give a config folder or repo id for it, or start the daemon with "
            "--allow-download",
        )

    @staticmethod
    def _no_safety_checker(cls: type) -> dict[str, Any]:
        # The plugin user paints on their own images; a checker that blacks out results
        # would only cost memory and time.  SDXL pipelines have none to disable.
        if cls.__name__.startswith("StableDiffusionXL"):
            return {}
        return {"safety_checker": None, "requires_safety_checker": False}

    # -- generation ----------------------------------------------------------------

    def generate(self, task: EngineTask) -> list[np.ndarray]:
        import torch

        height, width = task.mask.shape[:2]
        if task.image.shape[:2] != (height, width):
            raise EngineError("size_mismatch", "image and mask sizes differ")
        if height % self.size_multiple or width % self.size_multiple:
            raise EngineError(
                "bad_value", f"size {width}x{height} is not a multiple of {self.size_multiple}"
            )
        self.last_notes: list[str] = []  # the daemon copies these into the result
        if not task.seeds:
            return []
        if task.steps < 1 or not 0.0 < task.strength <= 1.0:
            raise EngineError("bad_value", "steps must be >= 1 and strength in (0, 1]")
        if int(task.steps * task.strength) < 1:
            raise EngineError(
                "bad_value",
                f"strength {task.strength} leaves no denoising step out of {task.steps}; raise either",
            )
        self.pipe.scheduler = self._scheduler(task.scheduler)
        # `steps` x `strength` UNet calls, whatever the scheduler (PNDM would run one more).
        steps, strength = scheduler_settings(self.pipe.scheduler, task.steps, task.strength)

        task.progress("encoding", 0, 1)
        task.check_cancel()
        embeds = self._prompt_embeds(task.prompt, task.negative_prompt)
        task.progress("encoding", 1, 1)
        task.check_cancel()

        # One generator per variant, on the CPU, so that a seed gives the same noise on
        # every device and whatever its place in the batch.
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in task.seeds]

        def call(gens: list[Any], part: int, parts: int) -> np.ndarray:
            def on_step(step: int, total: int) -> None:
                task.progress("denoising", part * total + step + 1, parts * total)
                task.check_cancel()  # JobCancelled propagates out of the loop
                if part + 1 == parts and step + 1 == total:
                    task.progress("decoding", 0, 1)

            job = Inputs(
                image=task.image, mask=task.mask, embeddings=embeds, generators=gens,
                steps=steps, guidance_scale=task.guidance_scale, strength=strength,
            )
            return self._loop(job, pacer=StepPacer.for_device(self.device, on_step))

        try:
            images = call(generators, 0, 1)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            images = self._retry_low_memory(call, task, generators, exc, width, height)
        task.progress("decoding", 1, 1)
        return [np.ascontiguousarray(p[:height, :width, :3]) for p in images]

    def _retry_low_memory(
        self, call: Any, task: EngineTask, generators: list[Any], first: BaseException, width: int, height: int
    ) -> np.ndarray:
        """Out of memory: free what the failed call held, then try once more with attention
        slicing, VAE tiling and one variant per pipeline call (each with its own seed's
        generator, so the seeds still mean the same pixels).  Slower, far smaller peak.
        Gives up with `out_of_memory` if that fails too; either way the result says so."""
        del first
        self._free_cache()
        task.check_cancel()
        what = f"{len(task.seeds)} variant(s) at {width}x{height}"
        self._set_low_memory(True)
        try:
            parts = [call([g], i, len(generators)) for i, g in enumerate(generators)]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._free_cache()
            raise EngineError(
                "out_of_memory",
                f"{self.device} ran out of memory inpainting {what}, and again after retrying with "
                f"{LOW_MEMORY_SETTINGS}; ask for fewer variants or a smaller region",
            ) from None
        finally:
            self._set_low_memory(False)
        self.last_notes.append(
            f"{self.device} ran out of memory inpainting {what}; retried once with {LOW_MEMORY_SETTINGS}, which worked"
        )
        return np.concatenate(parts, axis=0)

    def _set_low_memory(self, on: bool) -> None:
        """Attention slicing and VAE tiling on or off.  Off again after the retry: they
        cost time, and the next job may well fit.  The attention processors in use before
        (fused QKV ones, say) come back exactly as they were."""
        vae = getattr(self.pipe, "vae", None)
        if on:
            self._saved_processors = dict(self.pipe.unet.attn_processors)
            self.pipe.enable_attention_slicing("max")
            if vae is not None and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
        else:
            if self._saved_processors:
                self.pipe.unet.set_attn_processor(self._saved_processors)
            else:
                self.pipe.disable_attention_slicing()
            self._saved_processors = None
            if vae is not None and hasattr(vae, "disable_tiling"):
                vae.disable_tiling()

    def free_memory(self) -> None:
        """Give back cached device memory; the daemon calls this after a failed job."""
        self._free_cache()

    def _scheduler(self, name: str) -> Any:
        key = (name or "default").lower()
        if key in self._schedulers:
            return self._schedulers[key]
        if key not in SCHEDULERS:
            raise EngineError(
                "bad_value", f"unknown scheduler '{name}'; known: {', '.join(KNOWN_SCHEDULERS)}"
            )
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[key])
        try:
            scheduler = cls.from_config(self._default_scheduler.config, **_SCHEDULER_OVERRIDES.get(key, {}))
        except ImportError as exc:  # e.g. LMS needs scipy
            raise EngineError("bad_value", f"scheduler '{name}' is not usable here: {exc}") from exc
        self._schedulers[key] = scheduler
        return scheduler

    def _prompt_embeds(self, prompt: str, negative: str) -> Embeddings:
        """Encode a prompt pair once; the text encoder is the same for every job and seed."""
        key = (prompt or "", negative or "")
        cached = self._prompt_cache.get(key)
        if cached is not None:
            self._prompt_cache.move_to_end(key)
            return cached
        import torch

        with torch.inference_mode():
            # Always encode the negative side too, so that one cache entry serves any
            # guidance scale; the pipeline ignores it when guidance is off.
            if self.is_sdxl:
                embeds = self.pipe.encode_prompt(
                    prompt=key[0],
                    device=self.pipe._execution_device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=True,
                    negative_prompt=key[1],
                )
            else:
                embeds = self.pipe.encode_prompt(
                    key[0],
                    self.pipe._execution_device,
                    1,
                    True,
                    negative_prompt=key[1],
                )
        embeds = Embeddings(*embeds)
        self._prompt_cache[key] = embeds
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return embeds

    # -- teardown ------------------------------------------------------------------

    def _free_cache(self) -> None:
        import torch

        gc.collect()
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif self.device.startswith("mps") and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def close(self) -> None:
        self._prompt_cache.clear()
        self._schedulers.clear()
        self.pipe = None
        self._default_scheduler = None
        self._free_cache()
