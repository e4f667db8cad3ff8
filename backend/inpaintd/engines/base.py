"""The contract between the job runner and an inpainting engine.

A job is prepare -> generate -> finish.  The runner prepares (mask grow and feather,
context crop, scaling to the model's native size: pure CPU work, from the model's `ModelCaps`)
and finishes (scaling back, compositing); an engine only turns one `EngineRequest` into an
`EngineOutput`.  That keeps each engine small, lets the geometry be tested without any
model, and lets the middle step run somewhere else (an executor on another machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class JobCancelled(Exception):
    """Raised from inside an engine (see `check_cancel`) to stop a job."""


class EngineError(Exception):
    """An engine failed in a way the client should hear about; `code` is a protocol error code."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's (CUDA) OutOfMemoryError, MPS's RuntimeError, or host MemoryError, told
    apart without importing torch, so the daemon and every engine judge alike."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__.endswith("OutOfMemoryError") or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


#: Called by engines as work advances: (stage, step, total_steps).
#: Stages: "loading", "encoding", "denoising", "decoding".
ProgressFn = Callable[[str, int, int], None]
#: True once the job is to stop; engines check it between steps.
CancelledFn = Callable[[], bool]


@dataclass(frozen=True)
class ModelCaps:
    """What preparing a job needs to know of a model, read from the model's description
    (the registry: its family row and its configs), never from a live engine, so that a job
    can be prepared before its engine is loaded, or for an engine on another machine."""

    engine: str  # "classical" or "diffusers"
    #: The model family (`families.Arch` value); "" for classical engines.
    family: str = ""
    #: Side length the model was trained at; crops are scaled to about this many pixels.
    #: None: the engine works at the crop's own resolution.
    native_size: int | None = None
    #: Processing sizes are multiples of this (the VAE's downscale; 1 for classical fills).
    size_multiple: int = 1
    #: The grid processing sizes are actually rounded to: a compiled engine uses a coarser
    #: one (64 px), so that jobs meet a few shapes (each new one compiles), at the price of a
    #: slightly uneven scale (up to ~6% at 512).
    shape_multiple: int = 1
    #: Denoising steps when the job says 0.
    default_steps: int = 20
    #: Guidance scale when the job says 0 (FLUX.1 Fill's is distilled guidance, about 30).
    default_guidance: float = 7.5
    schedulers: tuple[str, ...] = ("default",)
    #: Whether variants differ by seed; a deterministic engine makes one image for all.
    seeded: bool = True
    #: Whether the job option `fill` applies (diffusion below strength 1 starts from the
    #: picture; classical engines fill the hole themselves).
    prefills: bool = False


@dataclass
class EngineRequest:
    """One prepared crop to inpaint: plain arrays and values, nothing live, so it can be
    handed to an engine in this process or sent to one elsewhere.

    `image` is H x W x 3 uint8 RGB at the processing size (a multiple of the model's size
    multiple on both sides); `mask` is H x W uint8, 0 = keep, 255 = regenerate, soft in
    between.  One output is wanted per entry of `seeds`, in that order (a deterministic
    engine may return one for all).
    """

    image: np.ndarray
    mask: np.ndarray
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    guidance_scale: float
    strength: float
    scheduler: str
    #: Reference images that condition the model (h x w x 3 uint8, any size); only for
    #: families whose row says `reference_image`, or SD 1.x/SDXL with an IP-Adapter loaded.
    references: list[np.ndarray] = field(default_factory=list)
    #: How strongly the references steer the result (job option `reference_weight`, 0..2):
    #: the IP-Adapter's scale for SD 1.x/SDXL; 0 means the references are ignored, by every
    #: family (the flow families take a reference whole, at any other weight).
    reference_weight: float = 1.0
    #: LoRAs to apply for this job only, (name, path, weight), and textual-inversion
    #: embeddings its prompt uses, (token, path): found and checked at admission.
    loras: list[tuple[str, str, float]] = field(default_factory=list)
    embeddings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EngineOutput:
    """What an engine made: one H x W x 3 uint8 RGB image per seed (or one for all from a
    deterministic engine), and what the artist should hear about how it was made."""

    images: list[np.ndarray]
    notes: list[str] = field(default_factory=list)


def check_cancel(cancelled: CancelledFn) -> None:
    if cancelled():
        raise JobCancelled()


#: The inputs a model entry says it uses or not (`ModelInfo.takes`).
TAKES = ("negative_prompt", "reference_image", "lora", "textual_inversion")
#: A model's defaults where it has none (classical engines): 0 = not used.
NO_DEFAULTS: dict[str, Any] = {"steps": 0, "guidance_scale": 0.0, "strength": 1.0, "scheduler": "default"}


@dataclass(frozen=True)
class ModelInfo:
    """What the daemon tells clients about one model it can use."""

    id: str
    engine: str
    kind: str  # "builtin", "hub", "folder", "single_file"
    available: bool
    native_size: int | None  # None: the crop's own resolution (classical), or not known yet
    detail: str = ""  # where it lives, or why it is not available
    family: str = ""  # `families.Arch` value, "" for classical engines or when not known
    label: str = ""  # the family's name for people ("FLUX.1 Fill")
    size_multiple: int = 1
    schedulers: tuple[str, ...] = ("default",)
    #: What a job gets where it leaves an option at "auto" (steps and guidance 0), and the
    #: strength and scheduler an editor should start from: editors apply these when the
    #: artist picks the model.  Classical models: 0 = not used.
    defaults: dict[str, Any] = field(default_factory=lambda: dict(NO_DEFAULTS))
    #: Which job inputs the model uses: negative_prompt, reference_image, lora,
    #: textual_inversion (all false for classical models).
    takes: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(TAKES, False))
    #: Sizes and memory estimates (`inpaintd.memory.MemoryReport.to_wire`); None where the
    #: weights are not on this machine or the engine has none.
    memory: dict[str, Any] | None = None

    def to_wire(self) -> dict:
        return {
            "id": self.id,
            "engine": self.engine,
            "kind": self.kind,
            "available": self.available,
            "native_size": self.native_size,
            "family": self.family,
            "detail": self.detail,
            "label": self.label,
            "size_multiple": self.size_multiple,
            "schedulers": list(self.schedulers),
            "defaults": dict(self.defaults),
            "takes": dict(self.takes),
            "memory": self.memory,
        }


class Engine(Protocol):
    """A loaded model, kept warm by the daemon between jobs."""

    name: str  # engine kind: "diffusers" or "classical"
    model_id: str
    device: str  # "cuda", "mps", "cpu"
    #: The loaded model as a job is prepared for it.  The daemon prepares from the
    #: registry's description instead (the same values); this serves in-process use.
    caps: ModelCaps

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        """Inpaint one prepared crop; raise JobCancelled when `cancelled()` turns true."""
        ...

    def free_memory(self) -> None:
        """Give back caches and device memory after a failed job (the model stays loaded)."""
        ...

    def close(self) -> None:
        """Free what the engine holds (GPU memory above all)."""
        ...
