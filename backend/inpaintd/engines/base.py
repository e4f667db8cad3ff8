"""The contract between the job runner and an inpainting engine.

The runner does everything that is the same for every engine (mask grow and feather,
context crop, scaling to the engine's native size, compositing back); an engine only
turns one prepared crop into pixels.  That keeps each engine small and lets the
geometry be tested without any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class JobCancelled(Exception):
    """Raised from inside an engine (through `EngineTask.check_cancel`) to stop a job."""


class EngineError(Exception):
    """An engine failed in a way the client should hear about; `code` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


@dataclass
class EngineTask:
    """One prepared crop to inpaint.

    `image` is H x W x 3 uint8 RGB at the processing size (a multiple of 8 on both sides
    for diffusion engines); `mask` is H x W uint8, 0 = keep, 255 = regenerate, soft in
    between.  One output is wanted per entry of `seeds`, in that order.
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
    progress: ProgressFn = field(default=lambda stage, step, total: None)
    cancelled: Callable[[], bool] = field(default=lambda: False)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled()


@dataclass(frozen=True)
class ModelInfo:
    """What the daemon tells clients about one model it can use."""

    id: str
    engine: str
    kind: str  # "builtin", "hub", "folder", "single_file"
    available: bool
    native_size: int | None  # None: the engine works at the crop's own resolution
    detail: str = ""  # where it lives, or why it is not available

    def to_wire(self) -> dict:
        return {
            "id": self.id,
            "engine": self.engine,
            "kind": self.kind,
            "available": self.available,
            "native_size": self.native_size,
            "detail": self.detail,
        }


class Engine(Protocol):
    """A loaded model, kept warm by the daemon between jobs."""

    name: str  # engine family: "diffusers" or "classical"
    model_id: str
    device: str  # "cuda", "mps", "cpu"
    #: Side length the model was trained at (512 for SD 1.5, 1024 for SDXL); the runner
    #: scales crops to about this many pixels.  None: use the crop as it is.
    native_size: int | None
    #: Processing sizes are rounded to multiples of this.  An engine may also set
    #: `shape_multiple`, a coarser grid used for the processing size instead: a compiled
    #: engine does, so that jobs meet a few shapes (each new one compiles), at the price of
    #: a slightly uneven scale (up to ~6% with 64 px at 512).
    size_multiple: int

    def generate(self, task: EngineTask) -> list[np.ndarray]:
        """Return one H x W x 3 uint8 RGB array per seed, at the task's size."""
        ...

    def close(self) -> None:
        """Free what the engine holds (GPU memory above all)."""
        ...
