"""Teach the daemon a subject: DreamBooth-LoRA training as a daemon job (PROTOCOL.md 5.14).

A `train` request brings 3 to 30 pictures of one subject (optionally with a mask each: the
subject is learned where the mask is on), the word to call it by (`token`, "sks") and its
class ("cat").  The daemon trains a LoRA on the inpainting model itself, the way the model
is used: each step masks a random part of a picture and teaches the UNet (its 9-channel
input: noisy latents + mask + masked-image latents) to restore it for the prompt
"a photo of sks cat".  With `prior_images` N, N pictures of the class are made by the base
model first (kept per model and class in the data folder) and trained on beside the
subject with "a photo of cat", so that the class as a whole is not forgotten (DreamBooth's
prior preservation).  The result is a diffusers-format LoRA `.safetensors` in the daemon's
LoRA folder, which the next job may use at once.

What does the work: peft (`LoraConfig` on the UNet's attention projections, its state
dicts), diffusers (the noise schedule, `save_lora_weights`, `cast_training_params`,
gradient checkpointing on CUDA), accelerate (mixed precision: its autocast, backward and
gradient clipping, and the optimizer it prepares) and torch's AdamW (bitsandbytes' 8-bit
AdamW on CUDA when it is installed).  The UNet itself is not handed to accelerate's
`prepare`: that would wrap the forward of the model the artist's jobs share.

Sharing the GPU with the artist.  The trainer runs on its own thread, one step at a time,
each step inside a turn of `executor.GpuTurns`: an inpaint job that wants the GPU waits only
for the step under way, training waits while jobs run.  It trains the registry's warm
engine's own pipeline (no second copy): its adapter is switched on for a step and off
after it (other jobs' adapters stay off while it trains), and removed at the end, so the
base model is exactly as before.

Checkpoints.  Every `checkpoint_every` steps the LoRA weights, the optimizer's state, the
step and the random generators' states are written to `training/runs/KEY/` in the data
folder, KEY a hash of the images and settings.  A job interrupted (a daemon killed, a
cancel) resumes from its last checkpoint when the same request is sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inpaintd_protocol.messages import LIMITS, Code, Limits, ProtocolError, Stage
from inpaintd_protocol.wire import Message

from . import executor as ex
from .engines.base import EngineError, EngineRequest, JobCancelled, check_cancel
from .validation import _image

if TYPE_CHECKING:
    import torch

log = logging.getLogger("inpaintd.training")

MIN_IMAGES, MAX_IMAGES = 3, 30
#: Training pictures are scaled to `resolution` anyway: a side limit tighter than a canvas's.
MAX_IMAGE_SIDE = 4096
MAX_STEPS = 20000
MAX_RANK = 128
MAX_PRIOR_IMAGES = 200
MAX_TOKEN_CHARS, MAX_CLASS_CHARS = 32, 64
MIN_RESOLUTION, MAX_RESOLUTION, RESOLUTION_MULTIPLE = 64, 2048, 64
MAX_LEARNING_RATE = 0.1
#: Families whose models can be trained (`families.Arch` values) and their ModelSpec names.
ARCHITECTURES = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}
#: The name of the adapter the trainer adds to the shared UNet while it trains.
ADAPTER = "inpaintd_training"
#: The UNet layers the LoRA adapts: the attention projections.
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
PRIOR_LOSS_WEIGHT = 1.0
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

DEFAULTS: dict[str, Any] = {"prior_images": 0, "steps": 400, "rank": 4, "learning_rate": 1e-4, "resolution": 0,
                            "seed": 0, "model": "", "checkpoint_every": 100}


@dataclass
class TrainRequest:
    """A `train` request, checked: the pictures as H x W x 3|4 uint8, the masks H x W uint8."""

    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    token: str
    class_noun: str
    name: str
    prior_images: int = 0
    steps: int = 400
    rank: int = 4
    learning_rate: float = 1e-4
    resolution: int = 0  # 0: the model's native size
    seed: int = 0
    model: str = ""
    checkpoint_every: int = 100

    @property
    def prompt(self) -> str:
        return f"a photo of {self.token} {self.class_noun}"

    @property
    def class_prompt(self) -> str:
        return f"a photo of {self.class_noun}"

    def image_hashes(self) -> list[str]:
        return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16] for im in self.images]

    def key(self, model_id: str, resolution: int) -> str:
        """What identifies the job across restarts: its pixels, masks and settings."""
        h = hashlib.sha256()
        for image, mask in zip(self.images, self.masks, strict=True):
            h.update(repr(image.shape).encode())
            h.update(np.ascontiguousarray(image).tobytes())
            h.update(b"-" if mask is None else np.ascontiguousarray(mask).tobytes())
        settings = {"token": self.token, "class": self.class_noun, "name": self.name, "prior": self.prior_images,
                    "steps": self.steps, "rank": self.rank, "lr": self.learning_rate, "resolution": resolution,
                    "seed": self.seed, "model": model_id}
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()[:24]


def _bad(code: str, name: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, {"field": name})


def _number(body: dict[str, Any], name: str, kind: type, low: float, high: float) -> Any:
    value: Any = body.get(name, DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
        raise _bad(Code.BAD_FIELD_TYPE, name, f"'{name}' must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(Code.BAD_VALUE, name, f"'{name}' is {value}; it must be a finite number")
    if not low <= value <= high:
        raise _bad(Code.BAD_VALUE, name, f"'{name}' is {value}; allowed range is {low:g} to {high:g}")
    return kind(value)


def _text(body: dict[str, Any], name: str, longest: int, *, required: bool, default: str = "") -> str:
    if name not in body:
        if required:
            raise _bad(Code.MISSING_FIELD, name, f"'train' needs the field '{name}'")
        return default
    value = body[name]
    if not isinstance(value, str):
        raise _bad(Code.BAD_FIELD_TYPE, name, f"'{name}' must be str, got {type(value).__name__}")
    if len(value) > longest:
        raise _bad(Code.TOO_LARGE, name, f"'{name}' has {len(value)} characters; the limit is {longest}")
    return value.strip()


def parse_train(msg: Message, limits: Limits = LIMITS) -> TrainRequest:
    """Every field of a `train` request and its pixels, in the order of PROTOCOL.md 5.14;
    the first problem is raised as a ProtocolError that names the field."""
    body = msg.body
    descs = body.get("images")
    if descs is None:
        raise _bad(Code.MISSING_FIELD, "images", "'train' needs the field 'images': 3 to 30 image descriptors")
    if not isinstance(descs, list):
        raise _bad(Code.BAD_FIELD_TYPE, "images", f"'images' must be a list of image descriptors, got {type(descs).__name__}")
    if not MIN_IMAGES <= len(descs) <= MAX_IMAGES:
        raise _bad(Code.BAD_VALUE, "images", f"'images' has {len(descs)} image(s); a subject is taught with "
                                             f"{MIN_IMAGES} to {MAX_IMAGES}")
    images = [_image(msg, f"images[{i}]", (3, 4), limits, desc=d, max_side=MAX_IMAGE_SIDE) for i, d in enumerate(descs)]
    masks: list[np.ndarray | None] = [None] * len(images)
    mask_descs = body.get("masks")
    if mask_descs is not None:
        if not isinstance(mask_descs, list):
            raise _bad(Code.BAD_FIELD_TYPE, "masks", f"'masks' must be a list (an image descriptor or nil per image), "
                                                     f"got {type(mask_descs).__name__}")
        if len(mask_descs) != len(images):
            raise _bad(Code.BAD_VALUE, "masks", f"'masks' has {len(mask_descs)} entries for {len(images)} images; "
                                                "give one per image (nil: the whole image)")
        for i, d in enumerate(mask_descs):
            if d is None:
                continue
            mask = _image(msg, f"masks[{i}]", (1,), limits, desc=d, max_side=MAX_IMAGE_SIDE)
            if mask.shape != images[i].shape[:2]:
                h, w = images[i].shape[:2]
                raise _bad(Code.SIZE_MISMATCH, f"masks[{i}]", f"masks[{i}] is {mask.shape[1]}x{mask.shape[0]} but "
                                                              f"images[{i}] is {w}x{h}; they must be the same size")
            if not mask.any():
                raise _bad(Code.EMPTY_MASK, f"masks[{i}]", f"masks[{i}] selects nothing (every value is 0); mark the "
                                                           "subject, or send nil for the whole image")
            masks[i] = mask
    token = _text(body, "token", MAX_TOKEN_CHARS, required=True)
    if not token or any(c.isspace() for c in token):
        raise _bad(Code.BAD_VALUE, "token", f"'token' is {token!r}; it must be one word (e.g. \"sks\")")
    class_noun = _text(body, "class_noun", MAX_CLASS_CHARS, required=True)
    if not class_noun:
        raise _bad(Code.BAD_VALUE, "class_noun", "'class_noun' is empty; name what the subject is (e.g. \"cat\")")
    name = _text(body, "name", 64, required=True)
    if not NAME_RULE.match(name):
        raise _bad(Code.BAD_VALUE, "name", f"'name' is {name!r}; a LoRA name is 1 to 64 letters, digits, '_', '.' or '-', "
                                           "starting with a letter or digit")
    steps = _number(body, "steps", int, 1, MAX_STEPS)
    request = TrainRequest(
        images=images, masks=masks, token=token, class_noun=class_noun, name=name,
        prior_images=_number(body, "prior_images", int, 0, MAX_PRIOR_IMAGES),
        steps=steps,
        rank=_number(body, "rank", int, 1, MAX_RANK),
        learning_rate=_number(body, "learning_rate", float, 1e-8, MAX_LEARNING_RATE),
        resolution=_number(body, "resolution", int, 0, MAX_RESOLUTION),
        seed=_number(body, "seed", int, 0, 2**32 - 1),
        model=_text(body, "model", 1000, required=False),
        checkpoint_every=_number(body, "checkpoint_every", int, 0, MAX_STEPS),
    )
    if request.resolution and (request.resolution < MIN_RESOLUTION or request.resolution % RESOLUTION_MULTIPLE):
        raise _bad(Code.BAD_VALUE, "resolution", f"'resolution' is {request.resolution}; a multiple of "
                                                 f"{RESOLUTION_MULTIPLE} from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
                                                 "or 0 for the model's native size")
    return request


def admit_train(request: TrainRequest, models: Any, lora_dir: Path | None) -> tuple[str, str, int]:
    """The model (SD 1.x or SDXL diffusers only) and the output name (not taken), checked
    before the job is queued.  Returns (model id, family, resolution)."""
    if lora_dir is None:
        raise _bad(Code.BAD_VALUE, "name", "this daemon serves no LoRA folder to put a trained LoRA in")
    try:
        info = models.admit(request.model or models.default_model_id)
    except EngineError as exc:
        raise ProtocolError(exc.code, exc.message, {**exc.details, "field": "model"}) from None
    family = str(getattr(info, "family", "") or "")
    if family not in ARCHITECTURES:
        what = getattr(info, "label", "") or family or f"a {info.engine} model"
        raise _bad(Code.BAD_VALUE, "model", f"model '{info.id}' is {what}{f' ({family})' if family else ''}; training "
                                            "needs an SD 1.x or SDXL diffusers model")
    taken = [p for p in Path(lora_dir).glob("*") if p.stem.lower() == request.name.lower() and p.is_file()
             and p.suffix.lower() == ".safetensors"]
    if taken:
        raise _bad(Code.BAD_VALUE, "name", f"a LoRA '{request.name}' is already in {lora_dir} ({taken[0].name}); "
                                           "pick another name or remove that file")
    resolution = request.resolution or int(getattr(info, "native_size", None) or 512)
    return str(info.id), family, resolution


# -- events, trainer -> daemon ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainProgress:
    """A step (stage `training`) or a class image (stage `preparing`) is done."""

    job_id: str
    stage: Stage
    step: int
    total: int
    loss: float | None = None
    remaining: float | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class Trained:
    """The LoRA is written: the job's result."""

    job_id: str
    name: str
    path: str
    steps: int
    final_loss: float
    device: str
    resumed_from: int
    at: float = field(default_factory=time.monotonic)


TrainEvent = TrainProgress | Trained | ex.Failed | ex.Cancelled


class Trainer:
    """One `train` job on its own thread.  `post` hears its events (from that thread)."""

    def __init__(self, job_id: str, request: TrainRequest, *, model: str, family: str, resolution: int,
                 registry: Any, turns: ex.GpuTurns, data_dir: Path, lora_dir: Path,
                 post: Callable[[TrainEvent], None]) -> None:
        self.job_id, self.request, self.model, self.family, self.resolution = job_id, request, model, family, resolution
        self.registry, self.turns, self.data_dir, self.lora_dir, self.post = registry, turns, data_dir, lora_dir, post
        self.key = request.key(model, resolution)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"inpaintd-train-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            event: TrainEvent = self._train()
        except JobCancelled:
            event = ex.Cancelled(job_id=self.job_id)
        except Exception as exc:
            code, text = ex.failure(exc)
            if code == Code.ENGINE_FAILURE:
                log.exception("training job %s failed", self.job_id)
            else:
                log.error("training job %s failed: %s", self.job_id, text)
            event = ex.Failed(job_id=self.job_id, code=code, message=text)
        self.post(event)

    def _train(self) -> Trained:
        cancelled = self._cancel.is_set
        hold = getattr(self.registry, "in_use", None)
        # The model stays warm while it trains: loading another for a job never closes it.
        with hold(self.model) if callable(hold) else nullcontext():
            with self.turns.training_step(cancelled):
                engine = self.registry.load(self.model)
            pipe = getattr(engine, "pipe", None)
            if pipe is None or not hasattr(pipe, "unet"):
                raise ProtocolError(Code.BAD_VALUE, f"model '{self.model}' has no UNet pipeline to train")
            run = LoraTraining(pipe, self.request, family=self.family, resolution=self.resolution, device=engine.device,
                               folder=self.data_dir / "training" / "runs" / self.key)
            priors = self._class_images(engine, cancelled) if self.request.prior_images else []
            with self.turns.training_step(cancelled):
                run.setup(priors)
            try:
                started = time.monotonic()
                busy = 0.0  # seconds of steps in this run (pauses for inpaint jobs left out)
                first = run.step + 1
                for step in range(first, self.request.steps + 1):
                    with self.turns.training_step(cancelled):
                        check_cancel(cancelled)
                        t0 = time.monotonic()
                        loss = run.train_step()
                        busy += time.monotonic() - t0
                    if self.request.checkpoint_every and step % self.request.checkpoint_every == 0 \
                            and step < self.request.steps:
                        run.save_checkpoint()
                    remaining = busy / (step - first + 1) * (self.request.steps - step)
                    self.post(TrainProgress(job_id=self.job_id, stage=Stage.TRAINING, step=step,
                                            total=self.request.steps, loss=round(loss, 6), remaining=round(remaining, 3)))
                path = run.save_lora(self.lora_dir / f"{self.request.name}.safetensors", self.model)
                log.info("training job %s: LoRA %s written after %d steps in %.1f s (final loss %.4f)", self.job_id, path,
                         self.request.steps, time.monotonic() - started, run.final_loss)
                run.forget_checkpoints()
                return Trained(job_id=self.job_id, name=self.request.name, path=str(path), steps=self.request.steps,
                               final_loss=run.final_loss, device=engine.device, resumed_from=first - 1)
            finally:
                with self.turns.training_step():
                    run.teardown()

    def _class_images(self, engine: Any, cancelled: Callable[[], bool]) -> list[np.ndarray]:
        """The prior-preservation pictures of the class: made by the base model once, kept
        in `training/class-images/MODEL/CLASS/RESOLUTION/` in the data folder."""
        from PIL import Image

        r = self.request
        model_tag = hashlib.sha256(self.model.encode()).hexdigest()[:12]
        folder = self.data_dir / "training" / "class-images" / model_tag / _slug(r.class_noun) / str(self.resolution)
        folder.mkdir(parents=True, exist_ok=True)
        caps = self.registry.caps(self.model)
        out: list[np.ndarray] = []
        for i in range(r.prior_images):
            path = folder / f"{i:04d}.png"
            if not path.exists():
                side = self.resolution
                with self.turns.training_step(cancelled):
                    made = engine.generate(EngineRequest(
                        image=np.full((side, side, 3), 127, np.uint8), mask=np.full((side, side), 255, np.uint8),
                        prompt=r.class_prompt, negative_prompt="", seeds=[i], steps=caps.default_steps,
                        guidance_scale=caps.default_guidance, strength=1.0, scheduler="default",
                    ), lambda stage, step, total: None, cancelled)
                tmp = path.with_suffix(".tmp.png")
                Image.fromarray(made.images[0]).save(tmp)
                os.replace(tmp, path)
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
            self.post(TrainProgress(job_id=self.job_id, stage=Stage.PREPARING, step=i + 1, total=r.prior_images))
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:48] or "class"


def _square(image: np.ndarray, side: int, resample: int) -> np.ndarray:
    """`image` scaled so its shorter side is `side`, the centre square kept."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    scale = side / min(im.size)
    im = im.resize((max(side, round(im.width * scale)), max(side, round(im.height * scale))), resample)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)))


class LoraTraining:
    """The training itself, on a pipeline it borrows: `setup`, then `train_step` until done
    (`save_checkpoint` now and then), `save_lora`, and `teardown` however it ends."""

    def __init__(self, pipe: Any, request: TrainRequest, *, family: str, resolution: int, device: str,
                 folder: Path) -> None:
        self.pipe, self.request, self.family, self.resolution, self.device = pipe, request, family, resolution, device
        self.folder = folder  # this job's checkpoints
        self.step = 0  # steps done
        self.losses: list[float] = []
        self._added = False
        self._fused = False
        self._saved_processors: dict[str, Any] = {}

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return float(sum(tail) / len(tail)) if tail else float("nan")

    # -- setup ------------------------------------------------------------------------

    def setup(self, priors: list[np.ndarray]) -> None:
        """Pictures to tensors, prompts encoded once, the adapter added, the optimizer made;
        then the last checkpoint, if there is one, put back."""
        import torch
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from PIL import Image

        r, side = self.request, self.resolution
        pipe = self.pipe
        self.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # under torch.compile: the module itself
        self.cuda = str(self.device).startswith("cuda")
        self.dtype = self.unet.dtype
        # Pictures: the subject's, each with where it is (1 where no mask was given), and the class's.
        self.images = torch.stack([self._pixels(_square(im[:, :, :3], side, Image.Resampling.LANCZOS)) for im in r.images])
        subject = [np.full((side, side), 255, np.uint8) if m is None else _square(m, side, Image.Resampling.BILINEAR)
                   for m in r.masks]
        self.subject = torch.stack([torch.from_numpy(m.astype(np.float32) / 255.0)[None] for m in subject])
        self.priors = torch.stack([self._pixels(p) for p in priors]) if priors else None
        # Prompt embeddings once: the text encoder is not trained (and other jobs' LoRAs are off).
        with torch.no_grad():
            self.embeds = self._encode(r.prompt)
            self.class_embeds = self._encode(r.class_prompt) if priors else None
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.vae_scale = float(pipe.vae.config.scaling_factor)
        # The base weights stay as they are; only the adapter learns.
        self._grad_flags = {n: p.requires_grad for n, p in self.unet.named_parameters()}
        # Fused QKV projections (a CUDA speed-up) bypass the to_q/to_k/to_v the LoRA adapts:
        # each step runs with the plain attention processors, the fused ones put back after.
        self._fused = any(getattr(m, "fused_projections", False) for m in self.unet.modules())
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=r.rank, lora_alpha=r.rank, init_lora_weights="gaussian",
                                         target_modules=TARGET_MODULES), adapter_name=ADAPTER)
        self._added = True
        self._adapter_on()
        cast_training_params(self.unet, dtype=torch.float32)  # the LoRA learns in float32 under bf16 autocast
        self.params = [p for n, p in self.unet.named_parameters() if ADAPTER in n]
        from accelerate import Accelerator

        mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "no") if self.cuda else "no"
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=not self.cuda)
        self.optimizer = self.accelerator.prepare_optimizer(self._optimizer(self.params, r.learning_rate))
        if self.cuda:
            self.unet.enable_gradient_checkpointing()
        self.generator = torch.Generator("cpu").manual_seed(r.seed)
        self.rng = np.random.default_rng(r.seed)
        self._resume()
        self._adapter_off()

    def _pixels(self, rgb: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0

    def _encode(self, prompt: str) -> dict[str, Any]:
        """The UNet's text inputs for `prompt`: SD's hidden states; SDXL's also the pooled
        embedding and the size numbers."""
        import torch

        if self.family == "sdxl":
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
            side = self.resolution
            time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=embeds.dtype, device=self.device)
            return {"hidden": embeds, "added": {"text_embeds": pooled, "time_ids": time_ids}}
        embeds, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return {"hidden": embeds, "added": None}

    def _optimizer(self, params: list[Any], lr: float) -> Any:
        import torch

        if self.cuda:
            try:
                import bitsandbytes as bnb  # type: ignore[import-not-found]

                return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
            except ImportError:
                pass
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)

    def _adapter_on(self) -> None:
        """Only the trainer's adapter on (other jobs' LoRAs off), trainable."""
        self.unet.enable_adapters()
        self.unet.set_adapter(ADAPTER)
        if self._fused:
            from diffusers.models.attention_processor import AttnProcessor2_0

            self._saved_processors = dict(self.unet.attn_processors)
            self.unet.set_attn_processor(AttnProcessor2_0())

    def _adapter_off(self) -> None:
        """Every adapter off: between steps the pipeline is the base model for other jobs."""
        self.unet.disable_adapters()
        if self._fused and self._saved_processors:
            self.unet.set_attn_processor(self._saved_processors)
            self._saved_processors = {}

    # -- one step ---------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimisation step, in plain order: pick a picture, mask a random part of
        it, encode, add noise, predict, compare, learn.  Returns its loss."""
        import torch
        import torch.nn.functional as F

        dev = self.device
        self._adapter_on()
        try:
            # 1. a picture of the subject (and one of the class), flipped half the time
            i = int(self.rng.integers(len(self.images)))
            pixels, weight = self.images[i : i + 1], self.subject[i : i + 1]
            embeds = [self.embeds]
            if self.priors is not None:
                j = int(self.rng.integers(len(self.priors)))
                pixels = torch.cat([pixels, self.priors[j : j + 1]])
                weight = torch.cat([weight, torch.ones_like(weight)])
                embeds.append(self.class_embeds)  # type: ignore[arg-type]
            if self.rng.random() < 0.5:
                pixels, weight = pixels.flip(-1), weight.flip(-1)
            # 2. a random inpainting mask (1 = to restore), and the picture with that part blanked
            mask = torch.from_numpy(np.stack([self._random_mask() for _ in range(len(pixels))]))[:, None]
            masked = pixels * (mask < 0.5)
            pixels, masked, mask, weight = (t.to(dev) for t in (pixels, masked, mask, weight))
            with torch.no_grad():
                # 3. both into latents, the mask down to latent size
                latents = self._latents(pixels)
                masked_latents = self._latents(masked)
                size = latents.shape[-2:]
                mask_latent = F.interpolate(mask, size=size)
                weight_latent = F.interpolate(weight, size=size, mode="area")
                # 4. noise at a random timestep
                noise = torch.randn(latents.shape, generator=self.generator).to(dev, latents.dtype)
                t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),),
                                  generator=self.generator).to(dev)
                noisy = self.noise_scheduler.add_noise(latents, noise, t)
                if self.noise_scheduler.config.prediction_type == "v_prediction":
                    target = self.noise_scheduler.get_velocity(latents, noise, t)
                else:
                    target = noise
            # 5. the UNet's prediction: 9 channels in for an inpainting UNet
            inputs = noisy
            if int(self.unet.config.in_channels) == 9:
                inputs = torch.cat([noisy, mask_latent.to(noisy.dtype), masked_latents], dim=1)
            hidden = torch.cat([e["hidden"] for e in embeds])
            added = None
            if embeds[0]["added"] is not None:
                added = {k: torch.cat([e["added"][k] for e in embeds]) for k in embeds[0]["added"]}
            with self.accelerator.autocast():
                pred = self.unet(inputs.to(self.dtype), t, encoder_hidden_states=hidden,
                                 added_cond_kwargs=added, return_dict=False)[0]
            # 6. the loss: squared error, only where the subject is (its mask), per picture
            error = (pred.float() - target.float()) ** 2 * weight_latent
            per_picture = error.sum(dim=(1, 2, 3)) / (weight_latent.sum(dim=(1, 2, 3)) * error.shape[1] + 1e-8)
            loss = per_picture[0] + (PRIOR_LOSS_WEIGHT * per_picture[1] if len(per_picture) > 1 else 0.0)
            # 7. learn
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            self._adapter_off()
        self.step += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def _random_mask(self) -> np.ndarray:
        """A random rectangle (a quarter of the time the whole picture), as the inpainting
        models were trained: 1 inside, 0 outside."""
        side = self.resolution
        mask = np.zeros((side, side), np.float32)
        if self.rng.random() < 0.25:
            mask[:] = 1.0
            return mask
        h, w = (int(self.rng.uniform(0.25, 1.0) * side) for _ in range(2))
        y, x = int(self.rng.integers(0, side - h + 1)), int(self.rng.integers(0, side - w + 1))
        mask[y : y + h, x : x + w] = 1.0
        return mask

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        vae_dtype = next(vae.parameters()).dtype
        dist = vae.encode(pixels.to(vae_dtype)).latent_dist
        return (dist.sample(self.generator) * self.vae_scale).to(self.dtype)

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def _checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """LoRA weights, optimizer state, step, losses and RNG states; written whole or not at all."""
        import torch
        from peft import get_peft_model_state_dict

        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step, "losses": list(self.losses),
            "lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(self.unet, adapter_name=ADAPTER).items()},
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": self.generator.get_state(), "numpy_rng": json.dumps(self.rng.bit_generator.state),
        }
        tmp = self._checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self._checkpoint)
        log.info("training checkpoint at step %d: %s", self.step, self._checkpoint)

    def _resume(self) -> None:
        import torch
        from peft import set_peft_model_state_dict

        if not self._checkpoint.is_file():
            return
        state = torch.load(self._checkpoint, map_location="cpu", weights_only=True)
        set_peft_model_state_dict(self.unet, state["lora"], adapter_name=ADAPTER)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.step, self.losses = int(state["step"]), [float(x) for x in state["losses"]]
        log.info("training resumes from its checkpoint at step %d (%s)", self.step, self._checkpoint)

    def forget_checkpoints(self) -> None:
        for path in (self._checkpoint, self._checkpoint.with_suffix(".tmp")):
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass

    # -- the result ------------------------------------------------------------------------------

    def save_lora(self, path: Path, model_id: str) -> Path:
        """The adapter as a diffusers-format LoRA file with ModelSpec metadata (its family)
        and what it was trained from; a sidecar NAME.json gives its trigger words."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        r = self.request
        path.parent.mkdir(parents=True, exist_ok=True)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=ADAPTER))
        layers = {k: v.detach().to("cpu").contiguous() for k, v in layers.items()}
        kind = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
        tmp = path.with_name(f".{path.stem}.tmp.safetensors")
        kind.save_lora_weights(str(tmp.parent), unet_lora_layers=layers, weight_name=tmp.name)
        metadata = {
            "modelspec.architecture": f"{ARCHITECTURES[self.family]}/lora",
            "modelspec.title": r.name,
            "modelspec.trigger_phrase": f"{r.token} {r.class_noun}",
            "inpaintd.base_model": model_id,
            "inpaintd.token": r.token,
            "inpaintd.class": r.class_noun,
            "inpaintd.steps": str(r.steps),
            "inpaintd.rank": str(r.rank),
            "inpaintd.resolution": str(self.resolution),
            "inpaintd.prior_images": str(r.prior_images),
            "inpaintd.final_loss": f"{self.final_loss:.6f}",
            "inpaintd.image_hashes": json.dumps(r.image_hashes()),
        }
        save_file(load_file(str(tmp)), str(tmp), metadata=metadata)
        path.with_suffix(".json").write_text(json.dumps({"trigger_words": [f"{r.token} {r.class_noun}"], "weight": 1.0}))
        os.replace(tmp, path)
        return path

    def teardown(self) -> None:
        """The pipeline as it was: the adapter removed, the flags put back."""
        if not self._added:
            return
        self._added = False
        self.unet.delete_adapters(ADAPTER)
        if not getattr(self.unet, "peft_config", None):
            # No other job's LoRA is loaded: take the LoRA layers out too, the UNet's modules as before.
            self.unet.unload_lora()
        if self.cuda:
            self.unet.disable_gradient_checkpointing()
        for name, param in self.unet.named_parameters():
            if name in self._grad_flags:
                param.requires_grad_(self._grad_flags[name])
        self.optimizer = None
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
