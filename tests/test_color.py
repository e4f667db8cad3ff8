"""Colour-cast correction: measured where the model should have kept the picture."""

from __future__ import annotations

import numpy as np
import pytest

from inpaintd.color import GAIN_RANGE, MIN_KEPT_PIXELS, match_colors
from inpaintd.engines.base import CancelledFn, EngineOutput, EngineRequest, ModelCaps, ProgressFn
from inpaintd.engines.classical import ClassicalEngine
from inpaintd.runner import run_job
from inpaintd_protocol.messages import JobOptions


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth photo-like image with texture: gradients plus mild noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(3)
    img = np.stack([40 + 120 * x / w, 60 + 100 * y / h, 150 - 60 * x / w + 30 * y / h], axis=-1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def cast(img: np.ndarray, gain=(0.92, 1.04, 0.95), offset=(25.0, -18.0, 14.0)) -> np.ndarray:
    out = img.astype(np.float32) * np.float32(gain) + np.float32(offset)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def left_half(h: int = 96, w: int = 128) -> np.ndarray:
    keep = np.zeros((h, w), bool)
    keep[:, : w // 2] = True
    return keep


def test_a_cast_measured_in_the_kept_area_is_removed_everywhere() -> None:
    src = scene()
    out = match_colors(cast(src), src, left_half())
    # the other half was never used to measure, and is corrected too
    err = np.abs(out.astype(int) - src.astype(int))
    assert err.mean() < 1.0 and np.percentile(err, 99) <= 3
    assert np.abs(cast(src).astype(int) - src.astype(int)).mean() > 8  # there was a cast to remove


def test_no_cast_is_the_identity_exactly() -> None:
    src = scene()
    assert match_colors(src.copy(), src, left_half()) is not None
    assert np.array_equal(match_colors(src.copy(), src, left_half()), src)


def test_too_few_kept_pixels_leave_the_output_alone() -> None:
    src = scene()
    keep = np.zeros(src.shape[:2], bool)
    keep.flat[: MIN_KEPT_PIXELS - 1] = True
    tinted = cast(src)
    assert match_colors(tinted, src, keep) is tinted


def test_a_flat_area_gets_an_offset_only_and_gains_are_bounded() -> None:
    flat = np.full((64, 64, 3), 120, np.uint8)
    out = match_colors(np.full((64, 64, 3), 100, np.uint8), flat, np.ones((64, 64), bool))
    assert np.all(out == 120)
    # a model that flattened the contrast a lot is not blown back up beyond the gain bound
    src = scene()
    washed = (src.astype(np.float32) * 0.3 + 90).astype(np.uint8)
    out = match_colors(washed, src, left_half()).astype(np.float32)
    got_std = out[left_half()].std(axis=0)
    assert np.all(got_std <= washed[left_half()].std(axis=0) * GAIN_RANGE[1] + 1)


def test_source_alpha_is_ignored() -> None:
    src = scene()
    rgba = np.dstack([src, np.full(src.shape[:2], 7, np.uint8)])
    assert np.array_equal(match_colors(cast(src), rgba, left_half()), match_colors(cast(src), src, left_half()))


class TintingEngine:
    """A stand-in for a diffusion model: gives back its input with a colour cast."""

    name = "tinting"
    model_id = "tinting"
    device = "cpu"
    caps = ModelCaps(engine="tinting", size_multiple=8, shape_multiple=8, prefills=True)

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        return EngineOutput([cast(request.image) for _ in request.seeds])

    def close(self) -> None:
        pass


@pytest.mark.parametrize("on", [False, True])
def test_through_the_runner(on: bool) -> None:
    src = scene(160, 200)
    mask = np.zeros(src.shape[:2], np.uint8)
    mask[50:110, 70:130] = 255
    out = run_job(TintingEngine(), src, mask, JobOptions(seed=1, grow=0, feather=0, padding=40, color_match=on), [1])
    layer = out.layers[0]
    region = out.region
    inside = layer.rgba[50 - region.y: 110 - region.y, 70 - region.x: 130 - region.x, :3].astype(int)
    truth = src[50:110, 70:130].astype(int)
    error = np.abs(inside - truth).mean()
    if on:
        assert error < 1.5, error  # the cast is gone from the inpainted area
    else:
        assert error > 8, error  # without it the tinted patch stays


def test_classical_engine_is_unaffected() -> None:
    src = scene(160, 200)
    mask = np.zeros(src.shape[:2], np.uint8)
    mask[50:110, 70:130] = 255
    engine = ClassicalEngine("opencv-telea")
    plain = run_job(engine, src, mask, JobOptions(seed=1), [1]).layers[0].rgba
    matched = run_job(engine, src, mask, JobOptions(seed=1, color_match=True), [1]).layers[0].rgba
    assert np.array_equal(plain, matched)
