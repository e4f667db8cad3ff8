"""Unit tests for inpaintd.compositing: exactness at the mask's ends, alpha, paste."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inpaintd.compositing import composite, paste

rng = np.random.default_rng(1234)


def rand(shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


# --- exactness ---------------------------------------------------------------------------


def test_mask_zero_rgb_returns_source_bytes_exactly():
    src, gen = rand((32, 48, 3)), rand((32, 48, 3))
    out = composite(src, gen, np.zeros((32, 48), np.uint8))
    assert out.shape == (32, 48, 4) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, :3], src)
    assert (out[:, :, 3] == 255).all()


def test_mask_zero_rgba_returns_source_bytes_exactly():
    src, gen = rand((32, 48, 4)), rand((32, 48, 3))
    out = composite(src, gen, np.zeros((32, 48), np.uint8))
    assert np.array_equal(out, src)


def test_mask_zero_keeps_rgb_of_fully_transparent_pixels():
    src = rand((16, 16, 4))
    src[:, :, 3] = 0  # RGB under alpha 0 is meaningful to editors that keep it
    out = composite(src, rand((16, 16, 3)), np.zeros((16, 16), np.uint8))
    assert np.array_equal(out, src)


def test_mask_full_returns_generated_exactly():
    src, gen = rand((20, 30, 3)), rand((20, 30, 3))
    out = composite(src, gen, np.full((20, 30), 255, np.uint8))
    assert np.array_equal(out[:, :, :3], gen)
    assert (out[:, :, 3] == 255).all()


def test_mask_full_over_rgba_is_generated_and_opaque():
    src, gen = rand((20, 30, 4)), rand((20, 30, 3))
    src[:, :, 3] = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = composite(src, gen, np.full((20, 30), 255, np.uint8))
    assert np.array_equal(out[:, :, :3], gen)
    assert (out[:, :, 3] == 255).all()


def test_extremes_with_extreme_values_no_overflow():
    src = np.full((4, 4, 3), 255, np.uint8)
    gen = np.full((4, 4, 3), 255, np.uint8)
    for m in (0, 1, 127, 128, 254, 255):
        out = composite(src, gen, np.full((4, 4), m, np.uint8))
        assert (out[:, :, :3] == 255).all(), m
    out = composite(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 200, np.uint8))
    assert (out[:, :, :3] == 0).all()


def test_half_mask_is_rounded_average():
    src = np.full((1, 1, 3), 0, np.uint8)
    gen = np.full((1, 1, 3), 255, np.uint8)
    out = composite(src, gen, np.full((1, 1), 128, np.uint8))
    assert out[0, 0, 0] == 128  # (0*127 + 255*128 + 127)//255
    src[:] = 10
    gen[:] = 20
    out = composite(src, gen, np.full((1, 1), 51, np.uint8))  # 20% towards gen
    assert out[0, 0, 0] == 12


def test_blend_rounds_to_nearest():
    # every mask level against a spread of source/generated values: within half a level
    m = np.tile(np.arange(256, dtype=np.uint8), (16, 1))
    vals = np.linspace(0, 255, 16).astype(np.uint8)
    src = np.repeat(vals[:, None], 256, axis=1)[:, :, None].repeat(3, axis=2)
    gen = src[::-1].copy()
    out = composite(src, gen, m)[:, :, 0].astype(float)
    exact = (src[:, :, 0] * (255.0 - m) + gen[:, :, 0] * m.astype(float)) / 255.0
    assert np.abs(out - exact).max() <= 0.5


def test_blend_is_monotone_in_mask():
    src = np.full((1, 256, 3), 30, np.uint8)
    gen = np.full((1, 256, 3), 220, np.uint8)
    mask = np.arange(256, dtype=np.uint8)[None, :]
    out = composite(src, gen, mask)[0, :, 0].astype(int)
    assert out[0] == 30 and out[-1] == 220
    assert (np.diff(out) >= 0).all()


# --- alpha -------------------------------------------------------------------------------


def test_alpha_blends_towards_opaque():
    src = np.zeros((1, 3, 4), np.uint8)
    src[..., 3] = [0, 100, 255]
    gen = np.zeros((1, 3, 3), np.uint8)
    out = composite(src, gen, np.full((1, 3), 128, np.uint8))
    a = out[0, :, 3].astype(int)
    assert a[0] == 128  # 0 -> halfway to opaque
    assert a[1] == (100 * 127 + 255 * 128 + 127) // 255
    assert a[2] == 255


def test_alpha_never_decreases():
    src = rand((32, 32, 4))
    out = composite(src, rand((32, 32, 3)), rand((32, 32)))
    assert (out[:, :, 3] >= src[:, :, 3]).all()


def test_rgb_source_gives_opaque_result_everywhere():
    out = composite(rand((8, 8, 3)), rand((8, 8, 3)), rand((8, 8)))
    assert (out[:, :, 3] == 255).all()


def test_partial_mask_over_transparent_pixel_shows_generated_colour():
    # Source pixel fully transparent (a hole), stored RGB black.  With coverage m=128 the
    # visible colour must be the generated colour at alpha ~128 ("gen over nothing");
    # today the result is (100, 100, 100, 128): half black.
    src = np.zeros((1, 1, 4), np.uint8)
    gen = np.full((1, 1, 3), 200, np.uint8)
    out = composite(src, gen, np.full((1, 1), 128, np.uint8))
    assert out[0, 0, 3] == 128
    assert abs(int(out[0, 0, 0]) - 200) <= 1


# --- errors ------------------------------------------------------------------------------


def test_size_mismatch_raises():
    with pytest.raises(ValueError, match="sizes differ"):
        composite(rand((10, 10, 3)), rand((10, 11, 3)), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        composite(rand((10, 10, 3)), rand((10, 10, 3)), np.zeros((9, 10), np.uint8))


def test_inputs_not_modified_and_output_is_new():
    src, gen, m = rand((6, 6, 4)), rand((6, 6, 3)), rand((6, 6))
    copies = src.copy(), gen.copy(), m.copy()
    out = composite(src, gen, m)
    assert all(np.array_equal(a, b) for a, b in zip((src, gen, m), copies, strict=True))
    assert not np.shares_memory(out, src)
    assert out.flags.c_contiguous


def test_strided_source_view():
    big = rand((40, 40, 4))
    src = big[5:25, 10:30]  # non-contiguous view
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 255
    gen = rand((20, 20, 3))
    out = composite(src, gen, m)
    keep = m == 0
    assert np.array_equal(out[keep], src[keep])
    assert np.array_equal(out[5:10, 5:10, :3], gen[5:10, 5:10])


# --- property ----------------------------------------------------------------------------


@st.composite
def triples(draw):
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    c = draw(st.sampled_from([3, 4]))
    src = draw(arrays(np.uint8, (h, w, c)))
    gen = draw(arrays(np.uint8, (h, w, 3)))
    mask = draw(arrays(np.uint8, (h, w), elements=st.sampled_from([0, 0, 0, 1, 77, 128, 254, 255])))
    return src, gen, mask


@settings(max_examples=60, deadline=None)
@given(triples())
def test_prop_unmasked_pixels_are_source_exactly(t):
    src, gen, mask = t
    out = composite(src, gen, mask)
    keep = mask == 0
    assert np.array_equal(out[keep][:, : src.shape[2]], src[keep])
    if src.shape[2] == 3:
        assert (out[keep][:, 3] == 255).all()
    full = mask == 255
    assert np.array_equal(out[full][:, :3], gen[full])
    # every channel lies between source and generated
    lo = np.minimum(src[:, :, :3], gen)
    hi = np.maximum(src[:, :, :3], gen)
    assert (out[:, :, :3] >= lo).all() and (out[:, :, :3] <= hi).all()


# --- paste -------------------------------------------------------------------------------


def test_paste_rgba_into_rgba_at_offset():
    image = rand((50, 60, 4))
    layer = rand((10, 20, 4))
    out = paste(image, layer, 30, 5)
    assert np.array_equal(out[5:15, 30:50], layer)
    rest = np.ones((50, 60), bool)
    rest[5:15, 30:50] = False
    assert np.array_equal(out[rest], image[rest])


def test_paste_rgba_layer_into_rgb_drops_alpha():
    image = rand((30, 30, 3))
    layer = rand((5, 7, 4))
    out = paste(image, layer, 0, 0)
    assert out.shape == (30, 30, 3)
    assert np.array_equal(out[0:5, 0:7], layer[:, :, :3])


def test_paste_does_not_modify_image():
    image = rand((10, 10, 3))
    before = image.copy()
    out = paste(image, rand((3, 3, 4)), 2, 2)
    assert np.array_equal(image, before)
    assert not np.shares_memory(out, image)


def test_paste_at_bottom_right_corner():
    image = np.zeros((10, 12, 4), np.uint8)
    layer = np.full((3, 4, 4), 9, np.uint8)
    out = paste(image, layer, 8, 7)
    assert (out[7:10, 8:12] == 9).all()
    assert out.sum() == 9 * layer.size


def test_composite_then_paste_leaves_unmasked_image_untouched():
    image = rand((40, 50, 3))
    x, y, w, h = 10, 8, 20, 16
    mask = np.zeros((h, w), np.uint8)
    mask[4:12, 5:15] = 200
    layer = composite(image[y : y + h, x : x + w], rand((h, w, 3)), mask)
    out = paste(image, layer, x, y)
    full_mask = np.zeros((40, 50), np.uint8)
    full_mask[y : y + h, x : x + w] = mask
    assert np.array_equal(out[full_mask == 0], image[full_mask == 0])
    assert not np.array_equal(out[full_mask > 0], image[full_mask > 0])
