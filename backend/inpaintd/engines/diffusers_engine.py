"""The diffusion engine: Stable Diffusion 1.5/2 and SDXL, and the flow-matching transformer
families (families.py), inpainting through diffusers.

One `DiffusersEngine` holds one pipeline, loaded once and kept warm by the daemon.  It
accepts dedicated inpainting checkpoints (9-channel UNet: latents + mask + masked image)
and ordinary 4-channel ones, for which diffusers' inpaint pipelines blend the known
latents back in under the mask at every step.  The family row's `loop` chooses the
sampler: UNet families run `sd_inpaint.InpaintLoop`, the flow-matching transformer
families (SD 3.5, FLUX.1 Fill and Kontext, FLUX.2 klein, Qwen-Image-Edit, Z-Image,
Chroma) `flow_inpaint.FlowInpaintLoop`.
With `--ip-adapter`, SD 1.x and SDXL models load an IP-Adapter too, and their jobs'
reference images steer the style (`ip_adapter.py`); the flow families that take
references take them whole, and a `reference_weight` of 0 drops them for every family.

Everything that is not model work (mask feathering, cropping, scaling, compositing) is done
by the runner before and after `generate`; see `inpaintd.engines.base`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..families import (
    DROPPED_T5_COST,
    Arch,
    Family,
    Loop,
    SingleFile,
    UnsupportedModel,
    caps_for,
    droppable,
    family_of_folder,
    family_of_pipeline,
    inspect_single_file,
    missing_components,
    missing_parts_message,
    missing_parts_text,
    no_reference_message,
    read_single_file_header,
    reference_download_hint,
    single_file_problem,
    weighted_components,
)
from ..memory import MODES, step_down
from ..policy import is_pickle, pickle_refusal
from .base import (
    CancelledFn,
    EngineError,
    EngineOutput,
    EngineRequest,
    ProgressFn,
    check_cancel,
    is_out_of_memory,
)
from .flow_inpaint import FlowInpaintLoop, FlowInputs, encode_once
from .ip_adapter import IP_ADAPTER_FILES, ReferenceEncoder, load_ip_adapter, takes_ip_adapter
from .pacing import StepPacer
from .quantize import Quantization, QuantizeError, pipeline_quantization, resolve_plan
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


log = logging.getLogger("inpaintd.diffusers")

#: Prompt embeddings kept across jobs: users re-run the same prompt with new seeds a lot.
PROMPT_CACHE_SIZE = 8



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


def _dtype_for(device: str, family: Family | None = None) -> torch.dtype:
    import torch

    # Half precision halves memory and is fast on GPUs; CPUs have no fast float16 path.
    if device.split(":")[0] == "cpu":
        return torch.float32
    # The flow transformers (and FLUX's T5) were trained in bfloat16 and overflow float16.
    if family is not None and family.loop == Loop.FLOW and device.split(":")[0] == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
    return torch.float16


def _pipeline_class(family: Family) -> Any:
    """The family's diffusers pipeline class (Any: diffusers is untyped here, see pyproject.toml)."""
    import diffusers

    return getattr(diffusers, family.inpaint_pipeline)


def _without(component: str) -> dict[str, None]:
    """Pipeline arguments that load it without `component` (a text encoder goes with its tokenizer)."""
    out: dict[str, None] = {component: None}
    if component.startswith("text_encoder"):
        out[component.replace("text_encoder", "tokenizer")] = None
    return out


def _settled(pipe: Any) -> Any:
    """A pipeline from a bundled single file, made fit to run: diffusers (0.42, with
    transformers 5) builds the file's T5 encoder in training mode (dropout on: every prompt
    encodes differently) and leaves its tied input embedding unloaded (`encoder.embed_tokens`,
    which real files hold only as `shared`)."""
    for component in pipe.components.values():
        if not hasattr(component, "eval"):
            continue
        if hasattr(component, "tie_weights") and any(p.is_meta for p in component.parameters()):
            component.tie_weights()
        component.eval()
    return pipe


#: The prefix ComfyUI's saves put before every transformer tensor's name.
_COMFY_PREFIX = "model.diffusion_model."


def transformer_source(path: Path) -> str | dict[str, Any]:
    """A transformer file for diffusers' `from_single_file`: its path, or, where its tensor
    names carry ComfyUI's prefix, its tensors without it.  diffusers 0.42.1's FLUX.1, Chroma
    and Z-Image converters drop the prefix themselves; its FLUX.2 converter (which then reads
    "diffusion_model" as a block number) and Qwen-Image's identity mapping (which then finds
    no weight) do not, so the prefix goes here, for every family alike, and with it whatever
    else a bundled save holds (`vae.*`, `text_encoders.*`: those come from the reference).
    The tensors are read as diffusers would read them (memory-mapped, a GGUF's still quantised)."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    if not any(k.startswith(_COMFY_PREFIX) for k in read_single_file_header(path)):
        return str(path)
    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    return {k[len(_COMFY_PREFIX):]: v for k, v in checkpoint.items() if k.startswith(_COMFY_PREFIX)}


def _family_of_folder(folder: Path, model_id: str) -> Family:
    """The family of a diffusers folder by the families table, or a refusal that names it."""
    try:
        return family_of_folder(folder)
    except UnsupportedModel as exc:
        raise EngineError("model_refused", f"model '{model_id}': {exc}") from None


class DiffusersEngine:
    """A Stable Diffusion (XL) inpaint pipeline, loaded once and reused for every job."""

    name = "diffusers"
    #: The IP-Adapter loaded into the pipeline (`--ip-adapter`), or None.
    ip_adapter: str | None = None

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
        memory: str = "gpu",
        on_memory_mode: Callable[[str], None] | None = None,
        quantize: Mapping[str, str] | None = None,
        drop_t5: bool = False,
        ip_adapter: str | Path | None = None,
    ) -> None:
        """Load `source`: a Hub repo id, a diffusers folder, or a single checkpoint file.

        `config` (a diffusers folder or repo id of the same architecture) tells diffusers
        how to lay out a single-file checkpoint; without it diffusers looks for the
        matching reference repo in the Hugging Face cache.  `cache_dir` is the hub cache.
        `memory`: how the pipeline sits on the device (`inpaintd.memory.MODES`, already
        resolved from `auto`); `on_memory_mode` hears of an out-of-memory step down.
        `quantize`: component -> method (`inpaintd.engines.quantize.parse_quantize`),
        checked against the model's family before any weights are read.  `drop_t5`: load
        SD 3.x without its T5 encoder (`families.droppable`; other families are unaffected).
        `ip_adapter`: an IP-Adapter folder or repo id (`serve --ip-adapter`, laid out as
        `inpaintd.engines.ip_adapter` says) loaded into SD 1.x and SDXL models, whose jobs'
        reference images then steer the style; other families load without it.  One that is
        missing or does not load refuses the model (`model_unavailable`).
        """
        self.model_id = model_id or str(source)
        self.device = pick_device(device)
        self.dtype = _dtype_for(self.device)
        self._cache_dir = str(cache_dir) if cache_dir is not None else None
        self._local_files_only = local_files_only
        self._on_memory_mode = on_memory_mode
        self._plan = dict(quantize or {})
        self._quantization: Quantization | None = None
        self._drop_t5 = drop_t5
        self._dropped: list[str] = []
        self._ip_adapter_source = ip_adapter
        report = progress or (lambda stage, step, total: None)

        report("loading", 0, 1)
        pipe = self._load(str(source), config, allow_pickle)
        ip_notes = self._load_ip_adapter(pipe, ip_adapter)
        quantized: list[str] = self._quantization.after_load(pipe) if self._quantization is not None else []
        self._adopt(pipe, speedups, memory)
        for line in quantized:
            log.info("model %s quantised: %s", self.model_id, line)
        self.speed_notes += [f"quantised {line}" for line in quantized]
        if self._dropped:
            self.speed_notes.append(f"loaded without {' and '.join(self._dropped)} (--drop-t5): {DROPPED_T5_COST}")
        self.speed_notes += ip_notes
        report("loading", 1, 1)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, model_id: str, device: str | None = None, speedups: Speedups | None = None,
        memory: str = "gpu",
    ) -> DiffusersEngine:
        """Wrap a pipeline already built in memory (benchmarks build the full-size
        architectures from configs with random weights; nothing is read from disk).
        The pipeline keeps its dtype; it is placed on `device` in memory mode `memory`."""
        self = cls.__new__(cls)
        self.model_id = model_id
        self.device = pick_device(device)
        self.dtype = pipe.dtype
        self._cache_dir = None
        self._local_files_only = True
        self._on_memory_mode = None
        self._plan = {}
        self._quantization = None
        self._drop_t5 = False
        self._dropped = []
        self._ip_adapter_source = None
        self.ip_adapter = None
        self._adopt(pipe, speedups, memory)
        return self

    def _load_ip_adapter(self, pipe: Any, source: str | Path | None) -> list[str]:
        """Load the IP-Adapter at `source` into a loaded SD 1.x or SDXL pipeline (before it is
        placed and sped up); other families ignore it.  Returns what the engine's notes
        should say of it.  Sets `self.ip_adapter`: the source loaded, or None."""
        self.ip_adapter = None
        if source is None:
            return []
        family = family_of_pipeline(pipe.__class__.__name__)
        if family.loop != Loop.SD:
            return []
        if not takes_ip_adapter(family):
            return [f"no IP-Adapter for {family.label} (--ip-adapter has SD 1.x and SDXL ones): its jobs take no "
                    "reference images"]
        load_ip_adapter(pipe, str(source), family, local_files_only=self._local_files_only, cache_dir=self._cache_dir)
        self.ip_adapter = str(source)
        subfolder, weight_name = IP_ADAPTER_FILES[family.arch]
        style = "style blocks only" if family.arch == Arch.SDXL else "every cross-attention layer"
        log.info("model %s: IP-Adapter %s (%s/%s) loaded", self.model_id, source, subfolder, weight_name)
        return [f"IP-Adapter {source} ({subfolder}/{weight_name}) loaded: reference images steer the style "
                f"({style}), weighted by reference_weight"]

    def _adopt(self, pipe: Any, speedups: Speedups | None, memory: str) -> None:
        """Place a loaded pipeline on the device in its memory mode, speed it up, and read
        what the runner needs."""
        import torch

        self.pipe = pipe
        self.memory_mode = "gpu"
        self.memory_notes: list[str] = []
        self._place(memory)
        if self.memory_mode != "gpu" and speedups is not None and speedups.compile != "off":
            # Compiled graphs (CUDA graphs above all) assume weights that stay put.
            speedups = dataclasses.replace(speedups, compile="off")
            self.memory_notes.append(f"torch.compile is off in memory mode {self.memory_mode}: weights move between steps")
        self.pipe.set_progress_bar_config(disable=True)
        self.family = family_of_pipeline(pipe.__class__.__name__)
        self._prompt_cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        #: LoRA adapters loaded into the pipeline (peft adapter names), kept between jobs and
        #: switched on per job; textual-inversion tokens added to its tokenizer(s).
        self._adapters: dict[str, str] = {}
        self._tokens: set[str] = set()
        self._saved_processors: dict[str, Any] | None = None  # while the low-memory retry runs
        #: The IP-Adapter's side of a job (scale, reference embeddings), where one is loaded.
        self._references: ReferenceEncoder | None = None
        if self.family.loop == Loop.FLOW:
            self._adopt_flow(speedups)
            return
        if self.family.vae_upcast and self.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16; the stock pipeline casts it to float32 and
            # back for every encode and decode.  Keep it in float32 once (~160 MB more).
            pipe.vae.to(torch.float32)
        self.vae_scale_factor: int = int(self.pipe.vae_scale_factor)
        #: Processing sizes must be multiples of this (the VAE's downscale, times the
        #: transformer's patch for the flow families).
        self.size_multiple: int = self.vae_scale_factor
        native_size = int(self.pipe.unet.config.sample_size) * self.vae_scale_factor
        self.unet_in_channels: int = int(self.pipe.unet.config.in_channels)
        self._default_scheduler = self.pipe.scheduler
        self._schedulers: dict[str, Any] = {"default": self._default_scheduler}
        self.speedups = speedups or Speedups.default_for(self.device)
        ip_skipped: list[str] = []
        if self.ip_adapter is not None:
            self._references = ReferenceEncoder(pipe, self.family)
            if self.speedups.fuse_qkv:
                # diffusers' fused attention processors would replace the IP-Adapter's.
                self.speedups = dataclasses.replace(self.speedups, fuse_qkv=False)
                ip_skipped.append("fused QKV (the IP-Adapter's attention layers take the place of fused ones)")
        #: This engine's model as a job is prepared for it; the daemon takes the same from
        #: the registry's description (`ModelRegistry.caps`), this one serves in-process use
        #: (benchmarks, tests) where no registry describes the pipeline.
        self.caps = caps_for(self.family, native_size, self.speedups.compile, self.vae_scale_factor)
        applied = apply(self.pipe, self.speedups)
        self._loop = InpaintLoop(
            self.pipe, self.device, dual_text_encoder=self.family.dual_text_encoder,
            cuda_graphs=self.speedups.uses_cuda_graphs(self.device),
        )
        #: What the daemon logs and shows clients as notices about this engine's speed settings.
        self.speed_notes: list[str] = [f"speed-ups in use: {', '.join(applied.used) or 'none'}"]
        self.speed_notes += [f"speed-up not applied: {why}" for why in [*ip_skipped, *applied.skipped]]
        self.speed_notes += self._memory_notes()
        self.warmup_seconds = 0.0
        if applied.compiled:
            self._warm_up()

    def _adopt_flow(self, speedups: Speedups | None) -> None:
        """The flow-matching transformer families: the stock pipeline, stepped by callbacks.

        The UNet speed-ups (fused QKV, channels-last, compile) are not applied to them yet."""
        self.vae_scale_factor = int(self.pipe.vae_scale_factor)
        #: The last job's VAE encodes: (run, spared by `encode_once`).
        self.vae_encodes = (0, 0)
        self.size_multiple = self.family.size_multiple
        # SD 3's transformer config has its sample size; FLUX's has none (its pipeline's
        # default_sample_size is 128, i.e. the family's 1024), but a config may name one.
        sample = self.pipe.transformer.config.get("sample_size")
        native_size = int(sample) * self.vae_scale_factor if sample else self.family.native_size
        self.unet_in_channels = int(self.pipe.transformer.config.in_channels)
        self._default_scheduler = self.pipe.scheduler
        self._schedulers = {"default": self._default_scheduler}
        self.speedups = speedups or Speedups.default_for(self.device)
        self.caps = caps_for(self.family, native_size, "off", self.size_multiple)
        self._flow = FlowInpaintLoop(
            self.pipe, self.device, negative_prompt=self.family.negative_prompt, pins_size=self.family.pins_size,
            pooled_prompt=self.family.pooled_prompt, max_pixels=self.family.max_pixels,
        )
        self.speed_notes = [f"speed-ups in use: none (not yet applied to {self.family.label})", *self._memory_notes()]
        self.warmup_seconds = 0.0

    # -- memory modes ----------------------------------------------------------------

    def _memory_notes(self) -> list[str]:
        return [f"memory mode {self.memory_mode}", *self.memory_notes]

    def _place(self, mode: str) -> None:
        """Put the pipeline on the device in memory `mode` (see `inpaintd.memory`), undoing
        the placement it had: the load does this once, an out-of-memory retry again.

        gpu: all of it on the device.  offload: diffusers' model CPU offload (a component
        at a time).  group: diffusers' group offloading, a block at a time, with the next
        one copied on a side stream on CUDA.  sequential: a layer at a time (accelerate's
        hooks; they need a CUDA device)."""
        import torch

        if mode not in MODES:
            raise ValueError(f"unknown memory mode '{mode}'; known: {', '.join(MODES)}")
        pipe = self.pipe
        cuda = self.device.startswith("cuda")
        if mode == "sequential" and not cuda:
            self.memory_notes.append(f"sequential offload needs a CUDA device; {self.device} keeps mode {self.memory_mode}")
            mode = self.memory_mode
        if mode == self.memory_mode and getattr(self, "_placed", False):
            return
        if self.memory_mode in ("offload", "sequential"):
            pipe.remove_all_hooks()
        elif self.memory_mode == "group":
            _remove_group_offload(pipe)
        if mode == "gpu":
            pipe.to(self.device)
        elif mode == "offload":
            pipe.enable_model_cpu_offload(device=self.device)
        elif mode == "group":
            pipe.to("cpu")
            pipe.enable_group_offload(
                onload_device=torch.device(self.device), offload_device=torch.device("cpu"),
                offload_type="block_level", num_blocks_per_group=1, use_stream=cuda,
            )
        else:
            pipe.enable_sequential_cpu_offload(device=self.device)
        self.memory_mode = mode
        self._placed = True

    def _step_down(self) -> str | None:
        """After an out-of-memory error: the next leaner mode, in place, or None at the
        bottom of the ladder.  The registry hears of it, so that a reload keeps it."""
        lower = step_down(self.memory_mode)
        if lower is None or (lower == "sequential" and not self.device.startswith("cuda")):
            return None
        before = self.memory_mode
        self._place(lower)
        if self.memory_mode == before:
            return None
        if self._on_memory_mode is not None:
            self._on_memory_mode(self.memory_mode)
        return self.memory_mode

    def _warm_up(self) -> None:
        """Compile for the shapes most jobs use now, not during an artist's first Generate.

        A job at another size or variant count compiles on first use (same cost again);
        if compilation fails, the engine goes back to eager mode and says so.
        """
        import time

        side = self.caps.native_size or 512
        image = np.zeros((side, side, 3), np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
        start = time.perf_counter()
        try:
            for n in self.speedups.warmup_variants:
                self.generate(EngineRequest(
                    image=image, mask=mask, prompt="", negative_prompt="", seeds=list(range(n)),
                    steps=2, guidance_scale=7.5, strength=1.0, scheduler="default",
                ), lambda stage, step, total: None, lambda: False)
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

    def _dropping(self, family: Family) -> dict[str, None]:
        """The components --drop-t5 leaves out of `family` (as `from_pretrained` keywords)."""
        if not self._drop_t5:
            return {}
        self._dropped = [n for n in droppable(family) if n.startswith("text_encoder")]
        return {name: None for name in droppable(family)}

    def _quantize_for(self, family: Family, *, from_gguf: Collection[str] = (), absent: Collection[str] = ()) -> Any:
        """The `quantization_config` for loading `family` under this engine's --quantize plan
        (None where nothing quantises as it loads); the plan is checked here, before any
        weights are read, and a plan that cannot run refuses the model saying why."""
        if not self._plan:
            return None
        try:
            self._quantization = pipeline_quantization(
                self._plan, family, self.device, from_gguf=from_gguf, absent=absent
            )
        except QuantizeError as exc:
            raise EngineError("model_refused", f"model '{self.model_id}' ({family.label}): {exc}") from None
        quantized = resolve_plan(self._plan, family).methods.get("unet")
        if quantized and self._ip_adapter_source is not None and takes_ip_adapter(family):
            # diffusers casts the whole UNet to add the IP-Adapter's layers, which a quantised
            # one refuses (SDNQ) or loses its savings to (fp8).
            raise EngineError(
                "model_refused",
                f"model '{self.model_id}' ({family.label}): the IP-Adapter {self._ip_adapter_source} cannot be "
                f"loaded into a UNet quantised by --quantize ({quantized}); serve it without --ip-adapter or with its "
                "UNet unquantised (no denoiser or unet in --quantize)",
            )
        return self._quantization.config

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
            return self._from_pretrained(_family_of_folder(path, self.model_id), str(path), path, common)
        return self._load_from_hub(source, common)

    def _from_pretrained(self, family: Family, source: str, folder: Path, common: dict[str, Any]) -> Any:
        """The family's inpaint pipeline `from_pretrained`, with a missing or refused weights
        file named as such."""
        if self.dtype != _dtype_for(self.device, family):
            self.dtype = common["dtype"] = _dtype_for(self.device, family)
        # Components a family can do without (SD 3's T5) that the folder does not hold.
        index = folder / "model_index.json"
        listed = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
        absent = {
            name: None for name in family.optional_components
            if not (folder / name).is_dir() or listed.get(name) in (None, [None, None])
        }
        absent.update(self._dropping(family))
        # Name every component without weights at once (diffusers stops at the first); an
        # optional one (SD 3's T5) is left out instead.  Pickled weights count here: the
        # pickle rule below says what to do about those.  (A repo that may be downloaded
        # gets its missing files from the Hub instead.)
        repo = None if Path(source).expanduser().is_dir() else source
        offline = repo is None or self._local_files_only
        missing = [n for n in missing_components(folder, family=family) if n not in absent] if offline else []
        required = [n for n in missing if n not in family.optional_components]
        if required:
            get = (f"run `hf download {repo}` for the whole repo" if repo
                   else "copy them in from a complete save (save_pretrained layout)")
            raise EngineError(
                "model_unavailable",
                f"cannot load model '{self.model_id}' from {folder}: its weights are missing for "
                f"{missing_parts_text(family, folder, missing, repo)}; a snapshot with configs only, as fetched "
                f"for a single-file checkpoint, is not a model: {get}",
            )
        for name in missing:
            log.warning("model %s: %s has no weights in %s; loading without it", self.model_id, name, folder)
            absent.update(_without(name))
        quantization = self._quantize_for(family, absent=absent)
        if quantization is not None:  # each layer quantised as it is read
            common = {**common, "quantization_config": quantization}
        try:
            return _pipeline_class(family).from_pretrained(
                source, **self._no_safety_checker(family), **absent, **common
            )
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
        folder = Path(index).parent
        return self._from_pretrained(_family_of_folder(folder, self.model_id), repo_id, folder, common)

    def _load_single_file(
        self, path: Path, config: str | Path | None, allow_pickle: bool, common: dict[str, Any]
    ) -> Any:
        if is_pickle(path) and not allow_pickle:
            raise EngineError("model_refused", pickle_refusal(path))
        inspected = inspect_single_file(path)
        if inspected is not None and inspected.components:
            return self._load_transformer_file(path, inspected, config, allow_pickle)
        if inspected is None and (config is None or path.suffix.lower() == ".gguf"):
            raise EngineError("model_refused", f"{single_file_problem(path)}; or give a config folder for it")
        if config is None and self._local_files_only:
            config = self._cached_reference_config(path)
        config_path = Path(config).expanduser() if config is not None else None
        if config_path is not None and (config_path / "model_index.json").is_file():
            family = _family_of_folder(config_path, self.model_id)
            config = str(config_path)
        elif inspected is not None:
            family = inspected.family
        else:
            raise EngineError(
                "model_unavailable", f"the config given for '{path}', {config}, is not a diffusers folder (no model_index.json)"
            )
        self._quantize_for(family)  # from_single_file takes no quantisation config: after loading
        cls = _pipeline_class(family)
        return cls.from_single_file(str(path), config=config, **self._no_safety_checker(family), **common)

    def _load_transformer_file(
        self, path: Path, sf: SingleFile, config: str | Path | None, allow_pickle: bool
    ) -> Any:
        """An SD 3.x or FLUX.1 single file or GGUF: the parts it holds from it, the rest from
        the reference folder (a config folder, or the family's repo in the hub cache).

        A transformer alone (FLUX's files, every GGUF) loads through the transformer class's
        `from_single_file` (a GGUF with `GGUFQuantizationConfig`: its weights stay quantised
        and are dequantised layer by layer in the compute dtype) and then the pipeline's
        `from_pretrained(reference, transformer=...)`.  A file with more (Stability's SD 3.x
        with its VAE, maybe text encoders) loads through the pipeline's `from_single_file`,
        with the parts it lacks loaded from the reference first: diffusers itself looks
        for those only under diffusers' file names, which text encoders do not use."""
        family = sf.family
        self.dtype = _dtype_for(self.device, family)
        reference, repo = self._reference_folder(path, sf, config)
        try:
            of_reference = family_of_folder(reference)
        except UnsupportedModel as exc:
            raise EngineError("model_refused", f"model '{self.model_id}': {exc}") from None
        if of_reference != family:
            raise EngineError(
                "model_refused",
                f"{path} is {sf.what}, but its config {reference} is a {of_reference.label} pipeline",
            )
        missing = missing_components(reference, sf.components, family, pickles=allow_pickle)
        required = [n for n in missing if n not in family.optional_components]
        if required and repo is not None and not self._local_files_only:
            reference = self._download_reference(repo, sf)
            missing = missing_components(reference, sf.components, family, pickles=allow_pickle)
            required = [n for n in missing if n not in family.optional_components]
        source = f"{repo}'s snapshot at {reference}" if repo else str(reference)
        if required:
            raise EngineError("model_unavailable", missing_parts_message(path, sf, reference, repo, missing))
        absent: dict[str, None] = self._dropping(family)
        # Weightless optional parts the reference does not hold (Qwen-Image-Edit's processor in
        # a folder saved without it: the loop then processes the picture itself), as for folders.
        listed = json.loads((reference / "model_index.json").read_text(encoding="utf-8"))
        absent.update({
            name: None for name in family.optional_components
            if name not in missing and (not (reference / name).is_dir() or listed.get(name) in (None, [None, None]))
        })
        for name in missing:
            if name in absent:
                continue
            log.warning("%s: %s is in neither the file nor %s; loading without it (optional)", path, name, source)
            absent.update(_without(name))
        # Checked before the weights are read; applied after loading (a GGUF's transformer
        # is quantised already and may not be quantised again).
        self._quantize_for(family, from_gguf={"transformer"} if sf.format == "gguf" else (), absent=absent)
        load: dict[str, Any] = {"dtype": self.dtype, "local_files_only": True}
        if not allow_pickle:
            load["use_safetensors"] = True
        cls = _pipeline_class(family)
        try:
            if sf.components == {"transformer"}:
                transformer = self._transformer_from_file(path, sf, reference)
                return cls.from_pretrained(str(reference), transformer=transformer, **absent, **load)
            parts = {
                name: self._component(reference, name, load)
                for name in weighted_components(reference, family)
                if name not in sf.components and name not in absent
            }
            return _settled(cls.from_single_file(
                str(path), config=str(reference), **parts, **absent, dtype=self.dtype, local_files_only=True
            ))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and is_out_of_memory(exc):
                raise
            raise EngineError(
                "model_unavailable",
                f"cannot load '{path}' ({sf.what}) with the configs of {source}: {exc}",
            ) from exc

    def _reference_folder(self, path: Path, sf: SingleFile, config: str | Path | None) -> tuple[Path, str | None]:
        """The diffusers folder that completes a transformer file, and the Hub repo it is a
        snapshot of (None for a local folder): the config given for the model, else the
        family's reference repo in the hub cache (downloaded, where that is allowed)."""
        from ..models import cached_snapshot, hub_cache_dir

        repo = sf.reference_repo
        if config is not None:
            config_path = Path(config).expanduser()
            if (config_path / "model_index.json").is_file():
                return config_path, None
            if config_path.exists() or str(config).count("/") != 1:
                raise EngineError(
                    "model_unavailable",
                    f"the config given for '{path}', {config}, is not a diffusers folder (no model_index.json in it)",
                )
            repo = str(config)
        cache = Path(self._cache_dir) if self._cache_dir is not None else hub_cache_dir()
        snapshot = cached_snapshot(repo, cache, need_weights=False)
        if snapshot is None and not self._local_files_only:
            snapshot = self._download_reference(repo, sf)
        if snapshot is None:
            raise EngineError("model_unavailable", no_reference_message(path, sf, repo, cache))
        return snapshot, repo

    def _download_reference(self, repo: str, sf: SingleFile) -> Path:
        """The reference repo's configs and the parts the file lacks, from the Hub (--allow-download)."""
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                repo, cache_dir=self._cache_dir, allow_patterns=reference_download_hint(sf, repo, patterns=True)
            )
        except Exception as exc:  # network, a gated repo (FLUX: accept the licence and log in first)
            raise EngineError(
                "model_unavailable", f"cannot download the rest of '{self.model_id}' from {repo}: {exc}"
            ) from exc
        return Path(folder)

    def _transformer_from_file(self, path: Path, sf: SingleFile, reference: Path) -> Any:
        """The transformer of a single file or GGUF, laid out by the reference's config."""
        import diffusers

        index = weighted_components(reference, sf.family)
        cls = getattr(diffusers, index.get("transformer", ""), None)
        if cls is None:
            raise EngineError("model_refused", f"{reference}: its model_index.json names no diffusers transformer")
        kwargs: dict[str, Any] = {
            "config": str(reference), "subfolder": "transformer", "dtype": self.dtype, "local_files_only": True,
        }
        if sf.format == "gguf":
            import importlib.util

            if importlib.util.find_spec("gguf") is None:  # diffusers reads GGUF files with it
                raise EngineError(
                    "model_unavailable", f"'{path}' is a GGUF file, which needs the gguf package: pip install gguf"
                )
            # Quantised weights stay quantised; each layer is dequantised into this dtype when it runs.
            kwargs["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=self.dtype)
        return cls.from_single_file(transformer_source(path), **kwargs)

    @staticmethod
    def _component(reference: Path, name: str, load: dict[str, Any]) -> Any:
        """One pipeline component from the reference folder, by its model_index.json entry."""
        import importlib

        index = json.loads((reference / "model_index.json").read_text(encoding="utf-8"))
        library, class_name = index[name]
        cls = getattr(importlib.import_module(library), class_name)
        kwargs = {k: v for k, v in load.items() if k != "local_files_only"}
        return cls.from_pretrained(str(reference / name), local_files_only=True, **kwargs)

    def _cached_reference_config(self, path: Path) -> str:
        """A cached diffusers folder to lay out `path` with, or a clear error saying what to get."""
        from huggingface_hub import try_to_load_from_cache

        inspected = inspect_single_file(path)
        repo = inspected.reference_repo if inspected else None
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
    def _no_safety_checker(family: Family) -> dict[str, Any]:
        # The plugin user paints on their own images; a checker that blacks out results
        # would only cost memory and time.  Some families have none to disable.
        if not family.safety_checker:
            return {}
        return {"safety_checker": None, "requires_safety_checker": False}

    # -- generation ----------------------------------------------------------------

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        """Inpaint one request, with its LoRAs switched on for it alone: whatever happens
        (done, failed, cancelled) the model is its base self again afterwards."""
        adapters = self._use_addons(request)
        try:
            out = self._generate(request, on_progress, cancelled, adapters)
            if adapters and self.speedups.compile != "off":
                out.notes.append("the compiled model was recompiled for this job's LoRAs (diffusers' LoRA hot-swap is "
                                 "not used: it needs every LoRA's rank known at start-up)")
            return out
        finally:
            if adapters:
                self.pipe.disable_lora()

    # -- LoRAs and embeddings ------------------------------------------------------------

    def _use_addons(self, request: EngineRequest) -> str:
        """Load what the job's LoRAs and embeddings need (once: adapters stay loaded, off
        between jobs) and switch its LoRAs on at their weights.  Returns a tag of the active
        adapters for the prompt cache ("" for none): a LoRA of the text encoder changes the
        embeddings of the same words."""
        for token, path in request.embeddings:
            self._load_embedding(token, path)
        if not request.loras:
            return ""
        names, weights = [], []
        for name, path, weight in request.loras:
            adapter = self._adapters.get(path)
            if adapter is None:
                adapter = f"lora{len(self._adapters)}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:40]
                try:
                    self.pipe.load_lora_weights(path, adapter_name=adapter)
                except Exception as exc:  # a file whose keys fit no layer of this model, a bad file
                    if is_out_of_memory(exc):
                        raise
                    raise EngineError("bad_value", f"LoRA '{name}' ({path}) cannot be applied to {self.family.label}: "
                                      f"{type(exc).__name__}: {exc}"[:600]) from None
                self._adapters[path] = adapter
            names.append(adapter)
            weights.append(weight)
        self.pipe.enable_lora()
        self.pipe.set_adapters(names, adapter_weights=weights)
        return ";".join(f"{n}={w:g}" for n, w in zip(names, weights, strict=True))

    def _load_embedding(self, token: str, path: str) -> None:
        """A textual-inversion embedding under `token` (SDXL: its CLIP-L and CLIP-G halves
        into the two encoders).  Cached prompts are dropped: the token reads differently now."""
        if token in self._tokens:
            return
        try:
            if self.family.dual_text_encoder:
                from safetensors.torch import load_file

                halves = load_file(path)
                self.pipe.load_textual_inversion(halves["clip_l"], token=token, text_encoder=self.pipe.text_encoder,
                                                 tokenizer=self.pipe.tokenizer)
                self.pipe.load_textual_inversion(halves["clip_g"], token=token, text_encoder=self.pipe.text_encoder_2,
                                                 tokenizer=self.pipe.tokenizer_2)
            else:
                self.pipe.load_textual_inversion(path, token=token)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise EngineError("bad_value", f"embedding '{token}' ({path}) cannot be used with {self.family.label}: "
                              f"{type(exc).__name__}: {exc}"[:600]) from None
        self._tokens.add(token)
        self._prompt_cache.clear()

    def _generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn,
                  adapters: str) -> EngineOutput:
        import torch

        height, width = request.mask.shape[:2]
        if request.image.shape[:2] != (height, width):
            raise EngineError("size_mismatch", "image and mask sizes differ")
        if height % self.size_multiple or width % self.size_multiple:
            raise EngineError(
                "bad_value", f"size {width}x{height} is not a multiple of {self.size_multiple}"
            )
        notes: list[str] = []
        if not request.seeds:
            return EngineOutput([], notes)
        if request.steps < 1 or not 0.0 < request.strength <= 1.0:
            raise EngineError("bad_value", "steps must be >= 1 and strength in (0, 1]")
        if int(request.steps * request.strength) < 1:
            raise EngineError(
                "bad_value",
                f"strength {request.strength} leaves no denoising step out of {request.steps}; raise either",
            )
        self.pipe.scheduler = self._scheduler(request.scheduler)
        flow = self.family.loop == Loop.FLOW
        negative = request.negative_prompt
        if flow:
            # The flow pipelines run exactly `int(steps x strength)` steps themselves.
            steps, strength = request.steps, request.strength
            if negative and not self.family.negative_prompt:
                notes.append(f"{self.family.label} takes no negative prompt; it was ignored")
                negative = ""
        else:
            # `steps` x `strength` UNet calls, whatever the scheduler (PNDM would run one more).
            steps, strength = scheduler_settings(self.pipe.scheduler, request.steps, request.strength)

        on_progress("encoding", 0, 1)
        check_cancel(cancelled)
        embeds = self._prompt_embeds(request.prompt, negative, adapters)
        references = list(getattr(request, "references", None) or [])
        weight = float(getattr(request, "reference_weight", 1.0))
        reference_embeds = None
        if flow:
            if weight <= 0:
                references = []  # weight 0: the references are ignored
            elif references and self.family.reference_image and weight != 1.0:
                notes.append(f"{self.family.label} takes reference images whole: reference_weight only turns them "
                             "off (at 0), so it was used at full weight")
        elif self._references is not None:
            reference_embeds = self._references(references, weight)
        elif references and weight > 0:
            notes.append(f"the reference images were ignored: {self.family.label} takes them only through an "
                         "IP-Adapter, and none is loaded (serve --ip-adapter)")
        on_progress("encoding", 1, 1)
        check_cancel(cancelled)

        # One generator per variant, on the CPU, so that a seed gives the same noise on
        # every device and whatever its place in the batch.
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in request.seeds]

        def call(gens: list[Any], part: int, parts: int) -> np.ndarray:
            def on_step(step: int, total: int) -> None:
                on_progress("denoising", part * total + step + 1, parts * total)
                check_cancel(cancelled)  # JobCancelled propagates out of the loop
                if part + 1 == parts and step + 1 == total:
                    on_progress("decoding", 0, 1)

            pacer = StepPacer.for_device(self.device, on_step)
            if flow:
                return self._flow(FlowInputs(
                    image=request.image, mask=request.mask, prompt=embeds, generators=gens,
                    steps=steps, guidance_scale=request.guidance_scale, strength=strength,
                    references=references,
                ), pacer=pacer)
            job = Inputs(
                image=request.image, mask=request.mask, embeddings=embeds, generators=gens,
                steps=steps, guidance_scale=request.guidance_scale, strength=strength, references=reference_embeds,
            )
            return self._loop(job, pacer=pacer)

        try:
            if flow:
                # One pipeline call per variant: the stock pipelines draw the VAE samples of
                # the image with the first generator only, so in a batch a variant's noise
                # would depend on its place; alone, each seed means the same pixels always.
                # (At these models' sizes one image already fills a GPU.)  The picture is
                # VAE-encoded once for them all (`encode_once`; each still samples its own).
                with encode_once(getattr(self.pipe, "vae", None)) as encodes:
                    images = np.concatenate([call([g], i, len(generators)) for i, g in enumerate(generators)])
                self.vae_encodes = (encodes[0], encodes[1])
            else:
                images = call(generators, 0, 1)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            check_cancel(cancelled)
            before = self.memory_mode
            self._free_cache()
            lower = self._step_down()
            moved = f"memory mode {lower} (was {before}; kept for this model until the daemon restarts) and " if lower else ""
            images = self._retry_low_memory(
                call, generators, exc, f"{len(request.seeds)} variant(s) at {width}x{height}", moved,
            )
            notes.append(
                f"{self.device} ran out of memory inpainting {len(request.seeds)} variant(s) at {width}x{height}; "
                f"retried once with {moved}{LOW_MEMORY_SETTINGS}, which worked"
            )
        on_progress("decoding", 1, 1)
        return EngineOutput([np.ascontiguousarray(p[:height, :width, :3]) for p in images], notes)

    def _retry_low_memory(
        self, call: Any, generators: list[Any], first: BaseException, what: str, moved: str = "",
    ) -> np.ndarray:
        """Out of memory: free what the failed call held, then try once more with attention
        slicing, VAE tiling and one variant per pipeline call (each with its own seed's
        generator, so the seeds still mean the same pixels), in the next leaner memory mode
        where there is one (`moved` says which).  Slower, far smaller peak.
        Gives up with `out_of_memory` if that fails too; either way the result says so."""
        del first
        self._free_cache()
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
                f"{moved}{LOW_MEMORY_SETTINGS}; ask for fewer variants or a smaller region, or start the "
                "daemon with a leaner --memory mode or --quantize",
            ) from None
        finally:
            self._set_low_memory(False)
        return np.concatenate(parts, axis=0)

    def _set_low_memory(self, on: bool) -> None:
        """Attention slicing and VAE tiling on or off.  Off again after the retry: they
        cost time, and the next job may well fit.  The attention processors in use before
        (fused QKV ones, say) come back exactly as they were."""
        vae = getattr(self.pipe, "vae", None)
        # The transformers have no sliced attention; sliced processors would replace an
        # IP-Adapter's.
        slicing = self.family.loop == Loop.SD and self._references is None
        if on:
            if slicing:
                self._saved_processors = dict(self.pipe.unet.attn_processors)
                self.pipe.enable_attention_slicing("max")
            if vae is not None and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
        else:
            if slicing and self._saved_processors:
                self.pipe.unet.set_attn_processor(self._saved_processors)
            elif slicing:
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
        if self.family.loop == Loop.FLOW:
            return self._flow_scheduler(name, key)
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

    def _flow_scheduler(self, name: str, key: str) -> Any:
        """A flow family's scheduler: its own, or "euler", the flow-matching Euler sampler
        on the model's own scheduler config (the wire's other names are UNet samplers)."""
        if key not in self.family.schedulers:
            raise EngineError(
                "bad_value",
                f"scheduler '{name}' does not run {self.family.label}; it takes: {', '.join(self.family.schedulers)}",
            )
        import diffusers

        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self._default_scheduler.config)
        self._schedulers[key] = scheduler
        return scheduler

    def _prompt_embeds(self, prompt: str, negative: str, adapters: str = "") -> Any:
        """Encode a prompt pair once per set of active LoRAs; the text encoder is the same
        for every job and seed."""
        key = (prompt or "", negative or "", adapters)
        cached = self._prompt_cache.get(key)
        if cached is not None:
            self._prompt_cache.move_to_end(key)
            return cached
        if self.family.loop == Loop.FLOW:
            flow_embeds = self._flow.encode(key[0], key[1])
            self._remember(key, flow_embeds)
            return flow_embeds
        import torch

        with torch.inference_mode():
            # Always encode the negative side too, so that one cache entry serves any
            # guidance scale; the pipeline ignores it when guidance is off.
            if self.family.dual_text_encoder:
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
        self._remember(key, embeds)
        return embeds

    def _remember(self, key: tuple[str, str, str], embeds: Any) -> None:
        self._prompt_cache[key] = embeds
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)

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
        if self._references is not None:
            self._references.clear()
            self._references = None
        self._schedulers.clear()
        self.pipe = None
        self._default_scheduler = None
        self._free_cache()


def _remove_group_offload(pipe: Any) -> None:
    """Take diffusers' group-offloading hooks off every component (an out-of-memory step
    down from `group` to `sequential` needs the modules bare again)."""
    from diffusers.hooks import HookRegistry

    for component in pipe.components.values():
        if not hasattr(component, "named_modules"):
            continue
        registry = HookRegistry.check_if_exists_or_initialize(component)
        for name in ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker"):
            registry.remove_hook(name, recurse=True)
    pipe.to("cpu")
