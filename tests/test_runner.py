"""Unit tests for inpaintd.runner.run_job with the real ClassicalEngine and a fake engine."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from inpaintd.engines.base import (
    CancelledFn,
    EngineError,
    EngineOutput,
    EngineRequest,
    JobCancelled,
    ModelCaps,
    ProgressFn,
    check_cancel,
)
from inpaintd.engines.classical import ClassicalEngine
from inpaintd.masks import prepare_mask
from inpaintd.runner import finish, prepare, run_job, variant_seeds
from inpaintd_protocol.messages import JobOptions
from inpaintd_protocol.rect import Rect


class FakeEngine:
    """Records the task it got and fills with a constant colour."""

    name = "fake"
    model_id = "fake"
    device = "cpu"

    def __init__(self, native_size: int | None = 512, size_multiple: int = 8, fill: int = 77, extra_outputs: int = 0):
        self.caps = ModelCaps(engine="fake", native_size=native_size, size_multiple=size_multiple,
                              shape_multiple=size_multiple, prefills=True)
        self.fill = fill
        self.extra_outputs = extra_outputs
        self.tasks: list[EngineRequest] = []

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        self.tasks.append(request)
        check_cancel(cancelled)
        h, w = request.image.shape[:2]
        return EngineOutput([np.full((h, w, 3), self.fill, np.uint8) for _ in range(len(request.seeds) + self.extra_outputs)])

    def close(self) -> None:
        pass

    @property
    def task(self) -> EngineRequest:
        assert len(self.tasks) == 1
        return self.tasks[0]


def photo(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def rect_mask(h, w, y, x, mh, mw, value=255):
    m = np.zeros((h, w), np.uint8)
    m[y : y + mh, x : x + mw] = value
    return m


def final_mask_image(mask: np.ndarray, options: JobOptions) -> np.ndarray:
    """The blend mask in image coordinates, as prepare_mask makes it."""
    final, window = prepare_mask(mask, options.grow, options.feather)
    full = np.zeros_like(mask)
    full[window.slices()] = final
    return full


def assert_untouched_where_unmasked(image, mask, options, out):
    full = final_mask_image(mask, options)
    for layer in out.layers:
        h, w = layer.rgba.shape[:2]
        region = Rect(layer.x, layer.y, w, h)
        src = image[region.slices()]
        keep = full[region.slices()] == 0
        assert np.array_equal(layer.rgba[keep][:, : image.shape[2]], src[keep])
        if image.shape[2] == 3:
            assert (layer.rgba[keep][:, 3] == 255).all()


# --- pixels outside the mask are bit-identical -------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_classical_unmasked_pixels_bit_identical(channels):
    image = photo(200, 300, channels)
    mask = rect_mask(200, 300, 80, 120, 20, 30)
    opts = JobOptions(grow=4, feather=6)
    out = run_job(ClassicalEngine(), image, mask, opts, [1])
    assert_untouched_where_unmasked(image, mask, opts, out)


def test_classical_masked_pixels_change():
    image = photo(120, 160)
    mask = rect_mask(120, 160, 50, 60, 10, 10)
    out = run_job(ClassicalEngine(), image, mask, JobOptions(grow=2, feather=2), [1])
    layer = out.layers[0]
    inside = layer.rgba[50 - layer.y : 60 - layer.y, 60 - layer.x : 70 - layer.x, :3]
    assert not np.array_equal(inside, image[50:60, 60:70])


@pytest.mark.parametrize("channels", [3, 4])
def test_fake_engine_unmasked_pixels_bit_identical_after_rescaling(channels):
    # native 512 on a region that must be scaled: generated pixels come back resized,
    # and still nothing outside the final mask moves.
    image = photo(900, 1300, channels, seed=3)
    mask = rect_mask(900, 1300, 300, 400, 300, 500)
    opts = JobOptions(grow=8, feather=16)
    engine = FakeEngine(native_size=512)
    out = run_job(engine, image, mask, opts, [5, 6])
    assert out.processing_size != (out.region.width, out.region.height)
    assert_untouched_where_unmasked(image, mask, opts, out)


def test_fake_engine_fully_masked_pixels_are_generated():
    image = photo(600, 600)
    mask = rect_mask(600, 600, 200, 200, 100, 100)
    out = run_job(FakeEngine(fill=77), image, mask, JobOptions(grow=0, feather=0), [1])
    layer = out.layers[0]
    inner = layer.rgba[210 - layer.y : 290 - layer.y, 210 - layer.x : 290 - layer.x, :3]
    assert (np.abs(inner.astype(int) - 77) <= 1).all()


def test_soft_mask_input_unmasked_pixels_identical():
    image = photo(256, 256, 4, seed=9)
    mask = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[:256, :256]
    d = np.hypot(yy - 128, xx - 100)
    mask[d < 30] = np.clip(255 - d[d < 30] * 8, 1, 255).astype(np.uint8)
    opts = JobOptions(grow=3, feather=5)
    out = run_job(ClassicalEngine(), image, mask, opts, [0])
    assert_untouched_where_unmasked(image, mask, opts, out)


@pytest.mark.parametrize("corner", ["tl", "br"])
def test_selection_at_image_corner(corner):
    image = photo(333, 517, 3, seed=2)
    if corner == "tl":
        mask = rect_mask(333, 517, 0, 0, 5, 5)
    else:
        mask = rect_mask(333, 517, 328, 512, 5, 5)
    opts = JobOptions()
    engine = FakeEngine(native_size=512)
    out = run_job(engine, image, mask, opts, [1])
    r = out.region
    assert r.x >= 0 and r.y >= 0 and r.right <= 517 and r.bottom <= 333
    assert_untouched_where_unmasked(image, mask, opts, out)


# --- layer geometry ----------------------------------------------------------------------


def test_layer_offset_and_size_are_the_region():
    image = photo(400, 500)
    mask = rect_mask(400, 500, 100, 150, 40, 60)
    out = run_job(FakeEngine(native_size=None, size_multiple=8), image, mask, JobOptions(), [1, 2, 3])
    assert len(out.layers) == 3
    for i, layer in enumerate(out.layers):
        assert layer.index == i
        assert (layer.x, layer.y) == (out.region.x, out.region.y)
        assert layer.rgba.shape == (out.region.height, out.region.width, 4)
        assert layer.rgba.dtype == np.uint8 and layer.rgba.flags.c_contiguous


def test_layers_carry_their_seeds_in_order():
    image = photo(100, 100)
    mask = rect_mask(100, 100, 40, 40, 10, 10)
    out = run_job(FakeEngine(native_size=None), image, mask, JobOptions(), [7, 8, 9])
    assert [layer.seed for layer in out.layers] == [7, 8, 9]


def test_region_contains_grown_selection():
    image = photo(800, 800)
    mask = rect_mask(800, 800, 300, 300, 20, 20)
    opts = JobOptions(grow=8, feather=16, padding=0)
    out = run_job(FakeEngine(native_size=None, size_multiple=1), image, mask, opts, [1])
    full = final_mask_image(mask, opts)
    ys, xs = np.nonzero(full)
    r = out.region
    assert r.x <= xs.min() and r.right > xs.max() and r.y <= ys.min() and r.bottom > ys.max()


def test_explicit_padding_is_used():
    image = photo(1000, 1000)
    mask = rect_mask(1000, 1000, 500, 500, 1, 1)
    opts = JobOptions(grow=0, feather=0, padding=40)
    out = run_job(FakeEngine(native_size=None, size_multiple=1), image, mask, opts, [1])
    assert out.region == Rect(460, 460, 81, 81)


def test_auto_padding_when_minus_one():
    image = photo(1000, 1000)
    mask = rect_mask(1000, 1000, 500, 500, 1, 1)
    opts = JobOptions(grow=0, feather=0, padding=-1)
    out = run_job(FakeEngine(native_size=None, size_multiple=1), image, mask, opts, [1])
    assert out.region == Rect(468, 468, 65, 65)  # auto padding 32


# --- what the engine sees ----------------------------------------------------------------


@pytest.mark.parametrize("native,multiple", [(512, 8), (1024, 64), (768, 8)])
def test_engine_task_sizes_multiple_and_about_native(native, multiple):
    image = photo(1500, 2500)
    mask = rect_mask(1500, 2500, 400, 700, 600, 900)
    engine = FakeEngine(native_size=native, size_multiple=multiple)
    out = run_job(engine, image, mask, JobOptions(), [1])
    t = engine.task
    h, w = t.image.shape[:2]
    assert t.image.shape == (h, w, 3) and t.image.dtype == np.uint8
    assert t.mask.shape == (h, w)
    assert w % multiple == 0 and h % multiple == 0
    assert abs(w * h / native**2 - 1) < 0.15
    assert (w, h) == out.processing_size
    rw, rh = out.region.width, out.region.height
    assert abs((w / h) / (rw / rh) - 1) < 0.1
    assert t.mask.max() > 0


def test_engine_receives_rgb_even_for_rgba_source():
    image = photo(200, 200, 4)
    mask = rect_mask(200, 200, 90, 90, 10, 10)
    engine = FakeEngine(native_size=None)
    out = run_job(engine, image, mask, JobOptions(), [1])
    assert engine.task.image.shape[2] == 3
    assert np.array_equal(engine.task.image, image[out.region.slices()][:, :, :3])


def test_engine_receives_options():
    image = photo(100, 100)
    mask = rect_mask(100, 100, 40, 40, 10, 10)
    opts = JobOptions(prompt="a cat", negative_prompt="dog", steps=0, guidance_scale=3, strength=0.5, scheduler="ddim")
    engine = FakeEngine(native_size=None)
    run_job(engine, image, mask, opts, [11, 12])
    t = engine.task
    assert (t.prompt, t.negative_prompt, t.seeds, t.scheduler) == ("a cat", "dog", [11, 12], "ddim")
    assert t.steps == 20  # 0 means the default
    assert isinstance(t.guidance_scale, float) and t.guidance_scale == 3.0
    assert t.strength == 0.5


def test_model_default_steps_used_when_steps_zero():
    """The default comes from the model's description (caps), not from the engine object."""
    engine = FakeEngine(native_size=None)
    caps = dataclasses.replace(engine.caps, default_steps=4)
    run_job(engine, photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(steps=0), [1], caps=caps)
    assert engine.task.steps == 4


def test_family_default_guidance_when_guidance_zero():
    """guidance_scale 0 (the option's default) is the family's own: 30 for FLUX.1 Fill."""
    from inpaintd.families import FAMILIES, Arch, caps_for

    image, mask = photo(64, 64), rect_mask(64, 64, 20, 20, 5, 5)
    for arch, wanted in ((Arch.SD15, 7.5), (Arch.SD3, 3.5), (Arch.FLUX_FILL, 30.0)):
        caps = caps_for(FAMILIES[arch], 64, "off")
        request, _ = prepare(image, mask, JobOptions(), caps, [1])
        assert request.guidance_scale == wanted, arch
        request, _ = prepare(image, mask, JobOptions(guidance_scale=2.0), caps, [1])
        assert request.guidance_scale == 2.0


def test_prepare_needs_no_engine():
    """prepare is pure CPU work from a description; finish composites what any engine made."""
    caps = ModelCaps(engine="diffusers", family="sd15", native_size=64, size_multiple=8, shape_multiple=8, prefills=True)
    image, mask = photo(120, 160), rect_mask(120, 160, 40, 50, 20, 30)
    request, plan = prepare(image, mask, JobOptions(steps=0, grow=0, feather=0), caps, [3, 4])
    assert request.steps == caps.default_steps and request.seeds == [3, 4]
    assert request.image.shape[0] % 8 == 0 and request.image.shape[1] % 8 == 0
    h, w = request.image.shape[:2]
    out = finish(plan, EngineOutput([np.zeros((h, w, 3), np.uint8)] * 2, ["engine note"]))
    assert [layer.seed for layer in out.layers] == [3, 4] and out.notes == ["engine note"]
    assert out.region == plan.region


def test_explicit_steps_win():
    engine = FakeEngine(native_size=None)
    run_job(engine, photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(steps=9), [1])
    assert engine.task.steps == 9


def test_engine_mask_matches_region_mask_without_scaling():
    image = photo(300, 300)
    mask = rect_mask(300, 300, 100, 120, 30, 40)
    opts = JobOptions(grow=5, feather=7)
    engine = FakeEngine(native_size=None, size_multiple=1)
    out = run_job(engine, image, mask, opts, [1])
    full = final_mask_image(mask, opts)
    assert np.array_equal(engine.task.mask, full[out.region.slices()])


def test_big_canvas_small_selection_engine_sees_small_crop_quickly():
    h, w = 4000, 6000
    image = np.zeros((h, w, 3), np.uint8)
    image[1990:2050, 2990:3050] = 200
    mask = rect_mask(h, w, 2000, 3000, 40, 40)
    engine = FakeEngine(native_size=512)
    t0 = time.perf_counter()
    out = run_job(engine, image, mask, JobOptions(), [1])
    elapsed = time.perf_counter() - t0
    th, tw = engine.task.image.shape[:2]
    assert th * tw <= 600 * 600
    assert out.region.width <= 600 and out.region.height <= 600
    assert out.layers[0].rgba.shape[:2] == (out.region.height, out.region.width)
    assert elapsed < 1.0, f"run_job took {elapsed:.2f} s for a 40x40 selection on a 6000x4000 canvas"


def test_big_canvas_small_selection_classical_quick():
    h, w = 4000, 6000
    image = np.full((h, w, 3), 128, np.uint8)
    mask = rect_mask(h, w, 3990, 5990, 10, 10)  # bottom-right corner
    t0 = time.perf_counter()
    out = run_job(ClassicalEngine(), image, mask, JobOptions(), [1])
    assert time.perf_counter() - t0 < 1.0
    assert out.region.right == w and out.region.bottom == h
    assert out.region.width < 200 and out.region.height < 200


def test_engine_mask_never_empty_after_downscale():
    # region 2008 px square scaled to 512: one source pixel of value 5 is 1/15 of a
    # processing pixel and averages to 0
    image = np.zeros((2100, 2100, 3), np.uint8)
    mask = np.zeros((2100, 2100), np.uint8)
    mask[1050, 1050] = 5
    engine = FakeEngine(native_size=512)
    out = run_job(engine, image, mask, JobOptions(grow=0, feather=0, padding=1000), [1])
    assert out.region.width == 2008
    assert engine.task.mask.max() > 0


# --- errors and cancellation -------------------------------------------------------------


def test_empty_mask_raises_engine_error():
    image = photo(50, 50)
    with pytest.raises(EngineError) as info:
        run_job(FakeEngine(), image, np.zeros((50, 50), np.uint8), JobOptions(), [1])
    assert info.value.code == "empty_mask"


def test_empty_mask_never_calls_engine():
    engine = FakeEngine()
    with pytest.raises(EngineError):
        run_job(engine, photo(20, 20), np.zeros((20, 20), np.uint8), JobOptions(), [1])
    assert engine.tasks == []


def test_engine_returning_wrong_count_is_engine_failure():
    engine = FakeEngine(native_size=None, extra_outputs=1)
    with pytest.raises(EngineError) as info:
        run_job(engine, photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1, 2])
    assert info.value.code == "engine_failure"


def test_cancelled_before_generate_raises_and_skips_engine():
    engine = FakeEngine()
    with pytest.raises(JobCancelled):
        run_job(engine, photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1], cancelled=lambda: True)
    assert engine.tasks == []


def test_cancelled_inside_classical_engine_raises():
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) >= 2  # runner's own check passes, the engine's check trips

    with pytest.raises(JobCancelled):
        run_job(ClassicalEngine(), photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1], cancelled=cancelled)
    assert len(calls) == 2


def test_cancel_callable_reaches_the_engine():
    engine = FakeEngine()
    seen = []

    def cancelled() -> bool:
        seen.append(len(engine.tasks))
        return len(engine.tasks) > 0  # turns true once the engine has the request

    with pytest.raises(JobCancelled):
        run_job(engine, photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1], cancelled=cancelled)
    assert seen[-1] == 1  # the engine itself asked, and stopped


def test_progress_reports_preparing_then_compositing():
    stages = []
    run_job(
        ClassicalEngine(), photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1],
        progress=lambda stage, step, total: stages.append(stage),
    )
    assert stages[0] == "preparing"
    assert stages[-1] == "compositing"
    assert "denoising" in stages


def test_timings_reported():
    out = run_job(FakeEngine(), photo(50, 50), rect_mask(50, 50, 20, 20, 5, 5), JobOptions(), [1])
    assert set(out.timings) == {"prepare", "generate", "composite", "total"}
    assert all(v >= 0 for v in out.timings.values())
    assert out.timings["total"] >= out.timings["generate"]


def test_input_image_and_mask_not_modified():
    image = photo(80, 80, 4)
    mask = rect_mask(80, 80, 30, 30, 10, 10)
    before = image.copy(), mask.copy()
    run_job(ClassicalEngine(), image, mask, JobOptions(), [1])
    assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])


def test_read_only_strided_inputs_accepted():
    base = photo(100, 130, 4)
    image = base[:, :120]
    image.flags.writeable = False
    mbase = rect_mask(100, 128, 40, 40, 10, 10)
    mask = mbase[:, :120]
    mask.flags.writeable = False
    opts = JobOptions()
    out = run_job(ClassicalEngine(), image, mask, opts, [1])
    assert_untouched_where_unmasked(image, np.ascontiguousarray(mask), opts, out)


# --- variant_seeds -----------------------------------------------------------------------


def test_variant_seeds_consecutive():
    assert variant_seeds(100, 4) == [100, 101, 102, 103]


def test_variant_seeds_single():
    assert variant_seeds(0, 1) == [0]


def test_variant_seeds_wrap_at_2_32():
    assert variant_seeds(2**32 - 2, 4) == [2**32 - 2, 2**32 - 1, 0, 1]


def test_variant_seeds_random_when_minus_one_uses_rng():
    a = variant_seeds(-1, 3, np.random.default_rng(42))
    b = variant_seeds(-1, 3, np.random.default_rng(42))
    assert a == b
    assert a[1] == a[0] + 1 and a[2] == a[0] + 2
    assert all(0 <= s < 2**32 for s in a)


def test_variant_seeds_random_differs_between_calls():
    seen = {variant_seeds(-1, 1)[0] for _ in range(20)}
    assert len(seen) > 1


def test_variant_seeds_random_never_wraps_and_fit_an_editors_seed_box():
    for seed in range(50):
        s = variant_seeds(-1, 8, np.random.default_rng(seed))
        assert s == list(range(s[0], s[0] + 8))
        assert s[-1] < 2**31  # a signed 32-bit field (Krita's and GIMP's Seed) holds each


def test_variant_seeds_are_python_ints():
    assert all(type(s) is int for s in variant_seeds(-1, 3))


def test_transparent_pixels_are_filled_by_the_engine_not_taken_as_context():
    # An extended canvas: the left part is empty (alpha 0, black), the right part a picture;
    # the selection straddles the edge (outpainting).
    h, w = 120, 200
    src = np.zeros((h, w, 4), np.uint8)
    src[:, 80:, :3] = 128
    src[:, 80:, 3] = 255
    mask = rect_mask(h, w, 40, 60, 40, 60)  # x 60..120: 20 px empty, 40 px picture
    opts = JobOptions(seed=1, grow=0, feather=0, padding=30)
    engine = FakeEngine(native_size=None, size_multiple=1)
    out = run_job(engine, src, mask, opts, [1])
    region = out.region
    task_mask = engine.task.mask
    empty = src[region.y:region.bottom, region.x:region.right, 3] == 0
    assert np.all(task_mask[empty] == 255)  # the engine fills the empty part of its view
    opaque_unselected = ~empty & (mask[region.y:region.bottom, region.x:region.right] == 0)
    assert np.all(task_mask[opaque_unselected] == 0)  # and keeps the picture around it
    layer = out.layers[0].rgba
    sel = mask[region.y:region.bottom, region.x:region.right] > 0
    assert np.all(layer[empty & ~sel][:, 3] == 0)  # unselected empty pixels stay transparent
    assert np.all(layer[sel][:, 3] == 255)

    # With a real fill the empty black does not bleed into the result: the selected picture
    # part is filled from the grey picture, not darkened towards black.
    telea = run_job(ClassicalEngine("opencv-telea"), src, mask, opts, [1]).layers[0].rgba
    filled = telea[sel & ~empty][:, :3].astype(int)
    assert abs(filled.mean() - 128) < 3, filled.mean()
