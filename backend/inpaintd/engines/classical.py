"""The classical engines: fills made from the picture's own surroundings, no weights.

One of them is the embedded default on a machine without diffusion weights, so the daemon
always has something real to offer, and they are the fast engines for small retouching.
Prompts mean nothing to them.  Which one is the default was chosen by measurement
(`bench/quality.py`, figures in bench/RESULTS.md): PatchMatch, which copies texture from
around the hole, where OpenCV's Telea and Navier-Stokes fills smear colour across it.

Seeds: PatchMatch's search is random, so each seed gives its own fill and the same seed
the same fill again: variants differ.  The other methods are deterministic; for them the
engine makes one variant, whatever was asked, and says so in its output's notes (the daemon
puts those in the result).

Each method is also a plain function (`fill`), used by the runner's pre-fill of diffusion
jobs (`fill: classical`) and by the benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .base import CancelledFn, EngineOutput, EngineRequest, ModelCaps, ProgressFn, check_cancel

#: The radius OpenCV's two fills look around each pixel.
OPENCV_RADIUS = 5
#: PatchMatch's patch radius (patches of 7 x 7 px); pypatchmatch's own default, 15, is
#: ~10x slower and no better on photos (bench/RESULTS.md).
PATCHMATCH_RADIUS = 3

_patchmatch_lock = threading.Lock()  # pypatchmatch keeps its seed in process-wide state


def _opencv(flag: int) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    def fill(rgb: np.ndarray, hole: np.ndarray, seed: int) -> np.ndarray:
        # Both methods treat the channels alike and independently; RGB order is fine.
        return cv2.inpaint(rgb, hole, OPENCV_RADIUS, flag)

    return fill


def _xphoto(flag_name: str) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    def fill(rgb: np.ndarray, hole: np.ndarray, seed: int) -> np.ndarray:
        # xphoto wants intensity in the first channel (its docs: CIELab or similar), and a
        # mask of the *valid* pixels.
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        out = np.zeros_like(lab)
        cv2.xphoto.inpaint(lab, np.where(hole > 0, 0, 255).astype(np.uint8), out, getattr(cv2.xphoto, flag_name))
        return cv2.cvtColor(out, cv2.COLOR_Lab2RGB)

    return fill


def _patchmatch(rgb: np.ndarray, hole: np.ndarray, seed: int) -> np.ndarray:
    import patchmatch

    with _patchmatch_lock:
        patchmatch.set_random_seed(seed % 2**32)
        return patchmatch.inpaint(rgb, hole, patch_size=PATCHMATCH_RADIUS)


def _biharmonic(rgb: np.ndarray, hole: np.ndarray, seed: int) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = inpaint_biharmonic(rgb, hole > 0, channel_axis=-1)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _missing_xphoto() -> str:
    if hasattr(cv2, "xphoto"):
        return ""
    return "needs OpenCV's contrib modules (cv2.xphoto): pip install opencv-contrib-python-headless"


def _missing_patchmatch() -> str:
    try:
        import patchmatch
    except ImportError:
        return "needs the PatchMatch library: pip install pypatchmatch (Python 3.11 or newer)"
    if not getattr(patchmatch, "patchmatch_available", False):
        return "the PatchMatch library is installed but its native code could not be loaded"
    return ""


def _missing_skimage() -> str:
    try:
        import skimage.restoration  # noqa: F401
    except ImportError:
        return "needs scikit-image: pip install scikit-image"
    return ""


@dataclass(frozen=True)
class Method:
    """One classical fill."""

    id: str
    summary: str
    #: True: the fill depends on the seed (each variant its own, the same seed the same fill).
    seeded: bool
    fill: Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (rgb, hole 0/255, seed) -> rgb
    missing: Callable[[], str] = lambda: ""  # why it cannot run here; "" when it can

    @property
    def available(self) -> bool:
        return not self.missing()


#: Every classical method, in the order bench/quality.py ranks them (mean rank over its five
#: quality figures, those within its time budget for a large hole first); the first one this
#: install can run is the daemon's fallback default.
METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method("patchmatch", "PatchMatch (pypatchmatch): copies texture from around the hole; seeded", True,
               _patchmatch, _missing_patchmatch),
        Method("biharmonic", "scikit-image biharmonic: smooth; deterministic", False, _biharmonic, _missing_skimage),
        Method("opencv-ns", "OpenCV Navier-Stokes: smooth; deterministic", False, _opencv(cv2.INPAINT_NS)),
        Method("opencv-telea", "OpenCV Telea: fast marching, smooth; deterministic", False, _opencv(cv2.INPAINT_TELEA)),
        # Best PSNR, SSIM and edge continuity, but 3-4x PatchMatch's time on large holes.
        Method("opencv-fsr", "OpenCV xphoto FSR (fast): frequency-selective reconstruction, slow; deterministic",
               False, _xphoto("INPAINT_FSR_FAST"), _missing_xphoto),
        Method("opencv-shiftmap", "OpenCV xphoto shift-map: copies one shifted region, slow; deterministic (no seed), "
                                  "though its source region was seen to change between runs", False,
               _xphoto("INPAINT_SHIFTMAP"), _missing_xphoto),
    )
}


def default_method() -> str:
    """The best classical method this install can run."""
    return next(m.id for m in METHODS.values() if m.available)


def fill(method_id: str, rgb: np.ndarray, hole: np.ndarray, seed: int = 0) -> np.ndarray:
    """`rgb` (H x W x 3 uint8) with the pixels where `hole` is non-zero filled."""
    method = METHODS[method_id]
    hole = np.ascontiguousarray((hole > 0).astype(np.uint8) * 255)
    out = method.fill(np.ascontiguousarray(rgb), hole, seed)
    # Every method keeps the known pixels, up to rounding in a colour conversion: make it exact.
    return np.where(hole[:, :, None] > 0, out, rgb)


def caps_of(method_id: str) -> ModelCaps:
    """A classical method as a job is prepared for it: the crop at its own resolution."""
    return ModelCaps(engine="classical", seeded=METHODS[method_id].seeded, prefills=False)


class ClassicalEngine:
    name = "classical"
    device = "cpu"

    def __init__(self, model_id: str = "patchmatch") -> None:
        if model_id not in METHODS:
            raise ValueError(f"unknown classical model {model_id!r}; known: {sorted(METHODS)}")
        missing = METHODS[model_id].missing()
        if missing:
            raise ValueError(f"classical model {model_id!r} cannot run here: {missing}")
        self.model_id = model_id
        self.method = METHODS[model_id]
        self.caps = caps_of(model_id)

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        # Every pixel that the runner will blend in (mask > 0) must be filled, so the
        # hole is the whole non-zero part of the soft mask.
        hole = request.mask > 0
        seeds = request.seeds if self.method.seeded else request.seeds[:1]
        images = []
        for i, seed in enumerate(seeds):
            on_progress("denoising", i, len(seeds))
            check_cancel(cancelled)
            images.append(fill(self.model_id, request.image, hole, seed))
        on_progress("denoising", len(seeds), len(seeds))
        notes = []
        if len(seeds) < len(request.seeds):
            hint = " (the seeded classical model 'patchmatch' makes variants)" if METHODS["patchmatch"].available else ""
            notes.append(
                f"made 1 variant instead of {len(request.seeds)}: '{self.model_id}' fills the same way "
                f"for every seed{hint}"
            )
        return EngineOutput(images, notes)

    def free_memory(self) -> None:
        pass

    def close(self) -> None:
        pass
