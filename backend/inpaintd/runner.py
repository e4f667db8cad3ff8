"""One inpaint job, start to finish, for any engine.

The steps, in order: grow and feather the mask, find the context region, crop and scale
it to the engine's native size, let the engine fill it, scale back, and composite into
the source region through the mask.  The daemon calls this from its worker thread;
benchmarks and tests call it in-process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from inpaintd_protocol.messages import JobOptions
from inpaintd_protocol.rect import Rect

from .color import match_colors
from .compositing import composite
from .engines.base import Engine, EngineError, EngineTask, ProgressFn
from .geometry import auto_padding, context_region, processing_size
from .masks import bounding_box, prepare_mask
from .prefill import prefill

DEFAULT_DIFFUSION_STEPS = 20


@dataclass
class LayerResult:
    index: int
    seed: int
    x: int
    y: int
    rgba: np.ndarray  # H x W x 4 uint8, C-contiguous


@dataclass
class JobOutput:
    layers: list[LayerResult]
    region: Rect
    processing_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    #: What the runner did that the client should hear (also handed to the engine's
    #: `last_notes`, which the daemon puts in the result).
    notes: list[str] = field(default_factory=list)


def variant_seeds(seed: int, variants: int, rng: np.random.Generator | None = None) -> list[int]:
    """Seed i of a job is base + i, so any one variant can be made again on its own."""
    base = seed if seed >= 0 else int((rng or np.random.default_rng()).integers(0, 2**32 - variants))
    return [(base + i) % 2**32 for i in range(variants)]


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if array.shape[1] == w and array.shape[0] == h:
        return np.ascontiguousarray(array)
    shrinking = w * h < array.shape[0] * array.shape[1]
    return cv2.resize(array, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _engine_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask at the engine's size.  Area averaging can round a faint, thin selection
    away when shrinking; every engine pixel that covers a selected pixel stays selected,
    since the composite will blend the engine's output in there."""
    scaled = _resize(mask, size)
    if size[0] * size[1] >= mask.shape[0] * mask.shape[1]:
        return scaled
    # In float, an area average is > 0 wherever any covered pixel is selected.
    covered = cv2.resize((mask > 0).astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    return np.maximum(scaled, covered.astype(np.uint8))


def run_job(
    engine: Engine,
    image: np.ndarray,
    mask: np.ndarray,
    options: JobOptions,
    seeds: list[int],
    progress: ProgressFn | None = None,
    cancelled=lambda: False,
) -> JobOutput:
    """Inpaint `image` (H x W x 3|4 uint8) where `mask` (H x W uint8) selects."""
    report = progress or (lambda stage, step, total: None)
    t0 = time.perf_counter()
    report("preparing", 0, 1)
    prepared = prepare_mask(mask, options.grow, options.feather)
    if prepared is None:
        raise EngineError("empty_mask", "the mask selects nothing (every value is 0); select the area to inpaint")
    window_mask, window = prepared
    local_bbox = bounding_box(window_mask)
    assert local_bbox is not None  # grow/feather never clear a selected pixel
    bbox = Rect(window.x + local_bbox.x, window.y + local_bbox.y, local_bbox.width, local_bbox.height)

    height, width = mask.shape
    padding = options.padding if options.padding >= 0 else auto_padding(bbox)
    region = context_region(bbox, width, height, padding, engine.native_size, engine.size_multiple)
    rows, cols = region.slices()
    source = image[rows, cols]
    region_mask = np.zeros((region.height, region.width), dtype=np.uint8)
    inter = window.intersect(region)
    region_mask[inter.y - region.y : inter.bottom - region.y, inter.x - region.x : inter.right - region.x] = window_mask[
        inter.y - window.y : inter.bottom - window.y, inter.x - window.x : inter.right - window.x
    ]

    # Fully transparent pixels hold no picture, only a meaningless colour (black, as often as
    # not, as when a canvas was just extended for outpainting).  The engine is told to fill
    # them rather than take them as context; the composite still uses only the selection,
    # so they stay transparent in the result.
    engine_region_mask = region_mask
    empty = None
    if source.shape[2] == 4:
        empty = source[:, :, 3] == 0
        if empty.any():
            engine_region_mask = np.where(empty, np.uint8(255), region_mask)
        else:
            empty = None

    size = processing_size(region, engine.native_size, getattr(engine, "shape_multiple", engine.size_multiple))
    engine_image = _resize(np.ascontiguousarray(source[:, :, :3]), size)
    engine_mask = _engine_mask(engine_region_mask, size)
    notes: list[str] = []
    fill = getattr(options, "fill", "auto")
    if getattr(engine, "name", "") == "classical":
        if fill not in ("auto", "none"):
            notes.append(f"fill '{fill}' was not used: a classical engine fills the hole itself")
    elif options.strength < 1.0:
        # Below strength 1 the engine starts from the encoded picture: what it starts from in
        # the hole is the `fill` option's choice (backend/inpaintd/prefill.py).
        empty_at_size = None if empty is None else _engine_mask(empty.astype(np.uint8) * 255, size) > 0
        engine_image, done = prefill(engine_image, engine_mask, empty_at_size, fill, seeds[0] if seeds else 0)
        if done:
            notes.append(f"pre-filled the hole before encoding: {done}")
    task = EngineTask(
        image=engine_image,
        mask=engine_mask,
        prompt=options.prompt,
        negative_prompt=options.negative_prompt,
        seeds=seeds,
        steps=options.steps or getattr(engine, "default_steps", DEFAULT_DIFFUSION_STEPS),
        guidance_scale=float(options.guidance_scale),
        strength=float(options.strength),
        scheduler=options.scheduler,
        progress=report,
        cancelled=cancelled,
    )
    t1 = time.perf_counter()
    task.check_cancel()
    outputs = engine.generate(task)
    t2 = time.perf_counter()
    # A deterministic engine (`seeded` False: the same pixels for every seed) makes one.
    one_for_all = len(outputs) == 1 and not getattr(engine, "seeded", True)
    if len(outputs) != len(seeds) and not one_for_all:
        raise EngineError("engine_failure", f"engine returned {len(outputs)} images for {len(seeds)} seeds")
    if notes:
        engine_notes = getattr(engine, "last_notes", None)
        if isinstance(engine_notes, list):
            engine_notes.extend(notes)
    if options.color_match:
        keep = task.mask == 0
        outputs = [match_colors(out, task.image, keep) for out in outputs]
    report("compositing", 0, 1)
    layers = [
        LayerResult(i, seed, region.x, region.y, composite(source, _resize(out, (region.width, region.height)), region_mask))
        for i, (seed, out) in enumerate(zip(seeds, outputs))
    ]
    t3 = time.perf_counter()
    timings = {"prepare": t1 - t0, "generate": t2 - t1, "composite": t3 - t2, "total": t3 - t0}
    return JobOutput(layers=layers, region=region, processing_size=size, timings=timings, notes=notes)
