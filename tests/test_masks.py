"""Unit tests for inpaintd.masks: bounding box, grow, feather, and the windowed prepare_mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inpaintd.masks import bounding_box, feather_mask, grow_mask, prepare_mask, reach
from inpaintd_protocol.rect import Rect


def blank(h=64, w=64):
    return np.zeros((h, w), dtype=np.uint8)


def distance_to_selection(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest non-zero pixel of `mask`."""
    inv = np.where(mask > 0, 0, 255).astype(np.uint8)
    return cv2.distanceTransform(inv, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


# --- bounding_box ------------------------------------------------------------------------


def test_bounding_box_empty_is_none():
    assert bounding_box(blank()) is None


def test_bounding_box_single_pixel():
    m = blank()
    m[10, 20] = 1
    assert bounding_box(m) == Rect(20, 10, 1, 1)


def test_bounding_box_faint_pixel_counts():
    m = blank()
    m[5, 6] = 1
    m[40, 50] = 255
    assert bounding_box(m) == Rect(6, 5, 45, 36)


def test_bounding_box_rectangle():
    m = blank(100, 200)
    m[30:40, 100:150] = 255
    assert bounding_box(m) == Rect(100, 30, 50, 10)


@pytest.mark.parametrize("y,x", [(0, 0), (0, 63), (63, 0), (63, 63)])
def test_bounding_box_corners(y, x):
    m = blank()
    m[y, x] = 200
    assert bounding_box(m) == Rect(x, y, 1, 1)


def test_bounding_box_full_mask():
    m = np.full((17, 33), 255, np.uint8)
    assert bounding_box(m) == Rect(0, 0, 33, 17)


def test_bounding_box_returns_python_ints():
    m = blank()
    m[3, 4] = 9
    b = bounding_box(m)
    assert all(type(v) is int for v in (b.x, b.y, b.width, b.height))


def test_bounding_box_non_contiguous_view():
    big = np.zeros((50, 50), np.uint8)
    big[20, 30] = 255
    view = big[::2, ::2]  # strided; pixel lands at (10, 15)
    assert bounding_box(view) == Rect(15, 10, 1, 1)


# --- reach -------------------------------------------------------------------------------


@pytest.mark.parametrize("grow,feather", [(0, 0), (8, 0), (0, 16), (8, 16), (512, 512)])
def test_reach_is_at_least_grow_plus_feather(grow, feather):
    assert reach(grow, feather) > grow + feather


# --- grow_mask ---------------------------------------------------------------------------


def test_grow_zero_returns_mask_unchanged():
    m = blank()
    m[10:20, 10:20] = 128
    out = grow_mask(m, 0)
    assert np.array_equal(out, m)


def test_grow_negative_is_no_op():
    m = blank()
    m[10, 10] = 255
    assert np.array_equal(grow_mask(m, -3), m)


def test_grow_reaches_radius_along_axes():
    m = blank(101, 101)
    m[50, 50] = 255
    out = grow_mask(m, 10)
    for dy, dx in ((0, 10), (0, -10), (10, 0), (-10, 0)):
        assert out[50 + dy, 50 + dx] == 255
    for dy, dx in ((0, 11), (0, -11), (11, 0), (-11, 0)):
        assert out[50 + dy, 50 + dx] == 0


def test_grow_kernel_is_round_not_square():
    m = blank(101, 101)
    m[50, 50] = 255
    out = grow_mask(m, 10)
    assert out[40, 40] == 0 and out[60, 60] == 0 and out[40, 60] == 0  # corners at distance 14.1
    assert out[43, 43] == 255  # distance 9.9


def test_grow_stays_within_radius():
    m = blank(101, 101)
    m[50, 50] = 255
    r = 12
    out = grow_mask(m, r)
    d = distance_to_selection(m)
    assert (d[out > 0] <= r + 0.5).all()


def test_grow_never_removes_selection():
    rng = np.random.default_rng(1)
    m = (rng.random((60, 60)) > 0.97).astype(np.uint8) * rng.integers(1, 256, (60, 60), dtype=np.uint8)
    out = grow_mask(m, 3)
    assert (out >= m).all()


def test_grow_soft_values_spread_with_max():
    m = blank(41, 41)
    m[20, 20] = 100
    m[20, 22] = 200
    out = grow_mask(m, 2)
    assert out[20, 21] == 200  # between both: max
    assert out[20, 18] == 100  # only the faint one reaches
    assert out.max() == 200


def test_grow_at_image_edge_does_not_wrap_or_reflect():
    m = blank(30, 30)
    m[0, 0] = 255
    out = grow_mask(m, 3)
    assert out[0, 3] == 255 and out[3, 0] == 255
    assert out[29, 29] == 0 and out[0, 29] == 0  # no wrap-around
    assert out[:, 5:].max() == 0


def test_grow_preserves_dtype_and_shape():
    m = blank(20, 30)
    m[5, 5] = 1
    out = grow_mask(m, 4)
    assert out.dtype == np.uint8 and out.shape == (20, 30)


# --- feather_mask ------------------------------------------------------------------------


def test_feather_zero_returns_mask_unchanged():
    m = blank()
    m[10:20, 10:20] = 255
    assert np.array_equal(feather_mask(m, 0), m)


def test_feather_soft_outside_the_selection():
    m = blank(100, 100)
    m[30:70, 30:70] = 255
    out = feather_mask(m, 8)
    outside = out[m == 0]
    assert outside.max() > 0  # fades out beyond the edge
    assert outside.max() < 255  # but softly
    assert 0 < out[50, 29] < 255  # just outside the edge: in between
    assert out[50, 29] > out[50, 25] > out[50, 23]  # monotone fade away from the edge


def test_feather_selected_pixels_never_decrease():
    m = blank(100, 100)
    m[30:70, 30:70] = 255
    m[50, 80] = 90  # isolated soft pixel: blur alone would dim it
    out = feather_mask(m, 8)
    assert (out >= m).all()
    assert (out[30:70, 30:70] == 255).all()
    assert out[50, 80] >= 90


def test_feather_zero_beyond_reach_square():
    m = blank(100, 100)
    m[40:60, 40:60] = 255
    f = 10
    out = feather_mask(m, f)
    d = distance_to_selection(m)
    assert out[d > reach(0, f)].max() == 0


def test_feather_zero_far_away_single_pixel():
    m = blank(81, 81)
    m[40, 40] = 255
    out = feather_mask(m, 16)
    assert out[40, 40] == 255
    assert out[:, :40 - 17].max() == 0 and out[:, 40 + 18 :].max() == 0


def test_feather_at_image_edge_fades_like_canvas_continues_empty():
    # A selection along the left edge: the edge pixels must stay selected and the
    # zero border must not leak selection from beyond the canvas.
    m = blank(50, 50)
    m[:, :10] = 255
    out = feather_mask(m, 6)
    assert (out[:, :10] == 255).all()
    assert out[25, 10] < 255
    assert out[:, 10 + 7 :].max() == 0


# --- grow + feather properties -----------------------------------------------------------


@st.composite
def sparse_masks(draw, max_side=48):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    n = draw(st.integers(1, 6))
    m = np.zeros((h, w), np.uint8)
    for _ in range(n):
        y = draw(st.integers(0, h - 1))
        x = draw(st.integers(0, w - 1))
        bh = draw(st.integers(1, max(1, h // 3)))
        bw = draw(st.integers(1, max(1, w // 3)))
        v = draw(st.integers(1, 255))
        m[y : y + bh, x : x + bw] = v
    return m


@settings(max_examples=60, deadline=None)
@given(sparse_masks(), st.integers(0, 6), st.integers(0, 8))
def test_prop_grow_feather_never_decrease_and_bounded_reach(m, grow, feather):
    out = feather_mask(grow_mask(m, grow), feather)
    assert out.dtype == np.uint8
    assert (out >= m).all()
    d = distance_to_selection(m)
    assert out[d > reach(grow, feather)].max(initial=0) == 0


# --- prepare_mask ------------------------------------------------------------------------


def full_image_reference(mask, grow, feather):
    return feather_mask(grow_mask(mask.copy(), grow), feather)


def test_prepare_mask_empty_is_none():
    assert prepare_mask(blank(), 8, 16) is None


def test_prepare_mask_window_in_middle():
    m = blank(500, 600)
    m[200:210, 300:320] = 255
    final, window = prepare_mask(m, 4, 6)
    r = reach(4, 6)
    assert window == Rect(300 - r, 200 - r, 20 + 2 * r, 10 + 2 * r)
    assert final.shape == (window.height, window.width)


@pytest.mark.parametrize(
    "y,x",
    [(0, 0), (0, 599), (499, 0), (499, 599), (0, 300), (499, 300), (250, 0), (250, 599)],
    ids=["tl", "tr", "bl", "br", "top", "bottom", "left", "right"],
)
def test_prepare_mask_window_clipped_at_borders(y, x):
    m = blank(500, 600)
    m[y, x] = 255
    final, window = prepare_mask(m, 8, 16)
    assert window.x >= 0 and window.y >= 0 and window.right <= 600 and window.bottom <= 500
    assert final.shape == (window.height, window.width)
    # the selected pixel keeps its place in window coordinates
    assert final[y - window.y, x - window.x] == 255


@pytest.mark.parametrize("y,x", [(0, 0), (499, 599), (0, 300), (250, 599)])
def test_prepare_mask_matches_full_image_processing_at_borders(y, x):
    m = blank(500, 600)
    m[max(0, y - 3) : y + 4, max(0, x - 5) : x + 6] = 255
    final, window = prepare_mask(m, 8, 16)
    ref = full_image_reference(m, 8, 16)
    assert np.array_equal(final, ref[window.slices()])
    outside = ref.copy()
    outside[window.slices()] = 0
    assert outside.max() == 0


def test_prepare_mask_whole_image_selection():
    m = np.full((40, 30), 255, np.uint8)
    final, window = prepare_mask(m, 8, 16)
    assert window == Rect(0, 0, 30, 40)
    assert (final == 255).all()


def test_prepare_mask_soft_input_keeps_soft_values():
    m = blank(200, 200)
    m[90:110, 90:110] = 100  # a half-transparent selection
    final, window = prepare_mask(m, 0, 0)
    assert final.max() == 100
    assert np.array_equal(final, m[window.slices()])


def test_prepare_mask_soft_input_grown_and_feathered():
    m = blank(200, 200)
    m[90:110, 90:110] = 100
    final, window = prepare_mask(m, 4, 6)
    inner = final[100 - window.y, 100 - window.x]
    assert inner >= 100
    assert final.max() <= 100  # a soft selection never becomes more than it was
    assert 0 < final[100 - window.y, 110 + 4 + 2 - window.x] < 100


def test_prepare_mask_does_not_modify_input():
    m = blank(100, 100)
    m[40:50, 40:50] = 255
    before = m.copy()
    prepare_mask(m, 8, 16)
    assert np.array_equal(m, before)


def test_prepare_mask_small_selection_on_huge_canvas_is_small_window():
    m = np.zeros((4000, 6000), np.uint8)
    m[2000:2010, 3000:3010] = 255
    final, window = prepare_mask(m, 8, 16)
    assert final.shape == (window.height, window.width)
    assert window.width <= 10 + 2 * reach(8, 16) and window.height <= 10 + 2 * reach(8, 16)


def test_prepare_mask_accepts_strided_read_only_mask():
    base = np.zeros((100, 128), np.uint8)
    base[40:45, 50:55] = 255
    m = base[:, :100]  # non-contiguous rows
    m.flags.writeable = False
    final, window = prepare_mask(m, 2, 2)
    ref = full_image_reference(np.ascontiguousarray(m), 2, 2)
    assert np.array_equal(final, ref[window.slices()])


@settings(max_examples=60, deadline=None)
@given(sparse_masks(max_side=64), st.integers(0, 6), st.integers(0, 8))
def test_prop_prepare_mask_equals_full_image_processing(m, grow, feather):
    final, window = prepare_mask(m, grow, feather)
    h, w = m.shape
    assert 0 <= window.x and 0 <= window.y and window.right <= w and window.bottom <= h
    ref = full_image_reference(m, grow, feather)
    assert np.array_equal(final, ref[window.slices()])
    rest = ref.copy()
    rest[window.slices()] = 0
    assert rest.max() == 0  # nothing selected outside the window
    # window contains the bounding box of the input selection
    bbox = bounding_box(m)
    assert window.x <= bbox.x and window.y <= bbox.y and window.right >= bbox.right and window.bottom >= bbox.bottom
