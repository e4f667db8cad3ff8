"""One inpaint job, start to finish, for any engine: prepare -> generate -> finish.

`prepare` is pure CPU work on the client's pixels: grow and feather the mask, find the
context region, crop and scale it to the model's native size, pre-fill the hole where the
job asks.  It needs only the model's `ModelCaps` (its description), never a loaded engine,
and yields a plain `EngineRequest` (what the engine needs, serialisable) and a `Plan` (what
`finish` needs, kept where the pixels are).  The engine's `generate` turns the request into
an `EngineOutput`: images and notes.  `finish` scales the images back, matches colours if
asked, and composites them into the source region through the mask.  The daemon's executor
runs the three steps; `run_job` chains them for benchmarks and tests.
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
from .engines.base import CancelledFn, Engine, EngineError, EngineOutput, EngineRequest, ModelCaps, ProgressFn, check_cancel
from .geometry import auto_padding, context_region, processing_size
from .masks import bounding_box, prepare_mask
from .prefill import prefill


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
    #: What the artist should hear about how the job was done (the runner's and the
    #: engine's); the daemon puts them in the result.
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What `finish` needs of a prepared job: where the crop came from and how to put the
    engine's images back.  It holds views of the client's pixels, so it stays with them."""

    source: np.ndarray  # the context region of the client's image, H x W x 3|4 uint8 (a view)
    region: Rect  # where that is in the image
    region_mask: np.ndarray  # the grown, feathered selection over the region (the blend)
    keep: np.ndarray  # at the processing size: where the engine was to keep the picture
    engine_image: np.ndarray  # the crop the engine saw, for colour matching
    seeds: list[int]
    processing_size: tuple[int, int]
    color_match: bool
    notes: list[str] = field(default_factory=list)


def variant_seeds(seed: int, variants: int, rng: np.random.Generator | None = None) -> list[int]:
    """Seed i of a job is base + i, so any one variant can be made again on its own.  A
    picked base keeps every seed below 2**31: each fits an editor's Seed box, to type back."""
    base = seed if seed >= 0 else int((rng or np.random.default_rng()).integers(0, 2**31 - variants))
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


def prepare(
    image: np.ndarray, mask: np.ndarray, options: JobOptions, caps: ModelCaps, seeds: list[int],
    references: list[np.ndarray] | None = None,
    loras: list[tuple[str, str, float]] | None = None,
    embeddings: list[tuple[str, str]] | None = None,
) -> tuple[EngineRequest, Plan]:
    """Turn the client's image (H x W x 3|4 uint8) and mask (H x W uint8) into the engine's
    request and the plan to put its output back.  CPU only; raises EngineError on a mask
    that selects nothing.  `references` go to the engine whole, as RGB (the pipelines size
    them themselves)."""
    prepared = prepare_mask(mask, options.grow, options.feather)
    if prepared is None:
        raise EngineError("empty_mask", "the mask selects nothing (every value is 0); select the area to inpaint")
    window_mask, window = prepared
    local_bbox = bounding_box(window_mask)
    assert local_bbox is not None  # grow/feather never clear a selected pixel
    bbox = Rect(window.x + local_bbox.x, window.y + local_bbox.y, local_bbox.width, local_bbox.height)

    height, width = mask.shape
    padding = options.padding if options.padding >= 0 else auto_padding(bbox)
    region = context_region(bbox, width, height, padding, caps.native_size, caps.size_multiple)
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

    size = processing_size(region, caps.native_size, caps.shape_multiple)
    engine_image = _resize(np.ascontiguousarray(source[:, :, :3]), size)
    engine_mask = _engine_mask(engine_region_mask, size)
    notes: list[str] = []
    fill = options.fill
    if not caps.prefills:
        if fill not in ("auto", "none"):
            notes.append(f"fill '{fill}' was not used: a classical engine fills the hole itself")
    elif options.strength < 1.0:
        # Below strength 1 the engine starts from the encoded picture: what it starts from in
        # the hole is the `fill` option's choice (prefill.py).
        empty_at_size = None if empty is None else _engine_mask(empty.astype(np.uint8) * 255, size) > 0
        engine_image, done = prefill(engine_image, engine_mask, empty_at_size, fill, seeds[0] if seeds else 0)
        if done:
            notes.append(f"pre-filled the hole before encoding: {done}")
    request = EngineRequest(
        image=engine_image,
        mask=engine_mask,
        prompt=options.prompt,
        negative_prompt=options.negative_prompt,
        seeds=list(seeds),
        steps=options.steps or caps.default_steps,
        guidance_scale=float(options.guidance_scale or caps.default_guidance),
        strength=float(options.strength),
        scheduler=options.scheduler,
        references=[np.ascontiguousarray(r[:, :, :3]) for r in references or []],
        reference_weight=float(options.reference_weight),
        loras=list(loras or []),
        embeddings=list(embeddings or []),
    )
    plan = Plan(
        source=source, region=region, region_mask=region_mask, keep=engine_mask == 0, engine_image=engine_image,
        seeds=list(seeds), processing_size=size, color_match=bool(options.color_match), notes=notes,
    )
    return request, plan


def finish(plan: Plan, output: EngineOutput, on_progress: ProgressFn | None = None) -> JobOutput:
    """Composite the engine's images into the source region: one layer per variant.
    Timings are the caller's (run_job measures the three steps)."""
    images = output.images
    # A deterministic engine (the same pixels for every seed) makes one image for all: one
    # layer, with the first seed; its note says so.
    if len(images) != len(plan.seeds) and not (len(images) == 1 and plan.seeds):
        raise EngineError("engine_failure", f"engine returned {len(images)} images for {len(plan.seeds)} seeds")
    if plan.color_match:
        images = [match_colors(out, plan.engine_image, plan.keep) for out in images]
    if on_progress:
        on_progress("compositing", 0, 1)
    region = plan.region
    layers = [
        LayerResult(i, seed, region.x, region.y, composite(plan.source, _resize(out, (region.width, region.height)), plan.region_mask))
        for i, (seed, out) in enumerate(zip(plan.seeds, images, strict=False))
    ]
    return JobOutput(layers=layers, region=region, processing_size=plan.processing_size,
                     notes=[*plan.notes, *output.notes])


def run_job(
    engine: Engine,
    image: np.ndarray,
    mask: np.ndarray,
    options: JobOptions,
    seeds: list[int],
    progress: ProgressFn | None = None,
    cancelled: CancelledFn = lambda: False,
    caps: ModelCaps | None = None,
    references: list[np.ndarray] | None = None,
    loras: list[tuple[str, str, float]] | None = None,
    embeddings: list[tuple[str, str]] | None = None,
) -> JobOutput:
    """prepare -> generate -> finish in this process.  `caps`: the model's description (the
    daemon passes the registry's); by default the engine's own, for benchmarks and tests."""
    report = progress or (lambda stage, step, total: None)
    t0 = time.perf_counter()
    report("preparing", 0, 1)
    request, plan = prepare(image, mask, options, caps or engine.caps, seeds, references, loras, embeddings)
    check_cancel(cancelled)
    t1 = time.perf_counter()
    output = engine.generate(request, report, cancelled)
    t2 = time.perf_counter()
    result = finish(plan, output, report)
    result.timings = {"prepare": t1 - t0, "generate": t2 - t1, "composite": time.perf_counter() - t2,
                      "total": time.perf_counter() - t0}
    return result
