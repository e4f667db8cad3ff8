"""Unit tests for inpaintd_protocol.rect.Rect and inpaintd.geometry: context region, processing size, padding."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inpaintd.geometry import auto_padding, context_region, processing_size
from inpaintd_protocol.rect import Rect


def contains(outer: Rect, inner: Rect) -> bool:
    return outer.x <= inner.x and outer.y <= inner.y and outer.right >= inner.right and outer.bottom >= inner.bottom


def inside_image(box: Rect, w: int, h: int) -> bool:
    return box.x >= 0 and box.y >= 0 and box.right <= w and box.bottom <= h


# --- Rect (inpaintd_protocol.rect) ----------------------------------------------------------------


def test_rect_right_bottom():
    b = Rect(3, 5, 10, 20)
    assert (b.right, b.bottom) == (13, 25)


@pytest.mark.parametrize("w,h,empty", [(1, 1, False), (0, 5, True), (5, 0, True), (-1, 5, True), (5, -3, True)])
def test_rect_empty(w, h, empty):
    assert Rect(0, 0, w, h).empty is empty


def test_rect_expand_grows_every_side():
    assert Rect(10, 20, 5, 6).expand(3) == Rect(7, 17, 11, 12)


def test_rect_expand_zero_is_identity():
    assert Rect(1, 2, 3, 4).expand(0) == Rect(1, 2, 3, 4)


def test_rect_expand_negative_shrinks():
    assert Rect(0, 0, 10, 10).expand(-2) == Rect(2, 2, 6, 6)


def test_rect_intersect_overlap():
    assert Rect(0, 0, 10, 10).intersect(Rect(5, 3, 10, 10)) == Rect(5, 3, 5, 7)


def test_rect_intersect_is_symmetric():
    a, b = Rect(2, 7, 13, 4), Rect(5, 1, 3, 30)
    assert a.intersect(b) == b.intersect(a)


def test_rect_intersect_contained():
    assert Rect(0, 0, 100, 100).intersect(Rect(10, 20, 5, 5)) == Rect(10, 20, 5, 5)


def test_rect_intersect_disjoint_is_empty():
    r = Rect(0, 0, 10, 10).intersect(Rect(20, 20, 5, 5))
    assert r.empty
    assert r.width == 0 and r.height == 0


def test_rect_intersect_touching_edges_is_empty():
    assert Rect(0, 0, 10, 10).intersect(Rect(10, 0, 10, 10)).empty


def test_rect_intersect_clips_negative_origin():
    assert Rect(-5, -5, 10, 10).intersect(Rect(0, 0, 100, 100)) == Rect(0, 0, 5, 5)


def test_rect_slices_index_rows_then_columns():
    import numpy as np

    a = np.arange(20 * 30).reshape(20, 30)
    b = Rect(4, 2, 3, 5)  # x=4, y=2, w=3, h=5
    sub = a[b.slices()]
    assert sub.shape == (5, 3)
    assert sub[0, 0] == a[2, 4]
    assert sub[-1, -1] == a[6, 6]


def test_rect_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Rect(0, 0, 1, 1).x = 5  # type: ignore[misc]


def test_rect_area_translate_contains_as_tuple():
    r = Rect(10, 10, 4, 6)
    assert r.area == 24 and Rect(3, 4, 0, 7).area == 0 and Rect(0, 0, -2, 5).area == 0
    assert r.translate(-10, 5) == Rect(0, 15, 4, 6)
    assert r.contains(r) and r.expand(1).contains(r) and not r.contains(r.expand(1))
    assert r.as_tuple() == (10, 10, 4, 6)


# --- auto_padding ------------------------------------------------------------------------


@pytest.mark.parametrize("w,h", [(1, 1), (10, 10), (128, 4), (4, 127)])
def test_auto_padding_floor_is_32(w, h):
    assert auto_padding(Rect(0, 0, w, h)) == 32


@pytest.mark.parametrize("w,h,expected", [(400, 100, 100), (100, 400, 100), (1000, 1000, 250), (129, 10, 32), (130, 10, 32), (132, 10, 33)])
def test_auto_padding_quarter_of_larger_side(w, h, expected):
    assert auto_padding(Rect(0, 0, w, h)) == expected


def test_auto_padding_ignores_position():
    assert auto_padding(Rect(500, 900, 400, 10)) == auto_padding(Rect(0, 0, 400, 10))


# --- context_region: examples ------------------------------------------------------------


def test_region_centered_selection_exact_numbers():
    bbox = Rect(1000, 1000, 100, 100)
    r = context_region(bbox, 4000, 3000, padding=32, min_size=512)
    assert (r.width, r.height) == (512, 512)
    # centered on the bbox: 1050 - 256 = 794
    assert (r.x, r.y) == (794, 794)


def test_region_padding_added_on_each_side_when_no_min_size():
    bbox = Rect(100, 200, 40, 24)
    r = context_region(bbox, 1000, 1000, padding=10, min_size=None, multiple=1)
    assert r == Rect(90, 190, 60, 44)


def test_region_padding_then_rounded_up_to_multiple():
    bbox = Rect(100, 200, 41, 23)
    r = context_region(bbox, 1000, 1000, padding=10, min_size=None, multiple=8)
    assert (r.width, r.height) == (64, 48)  # 61 -> 64, 43 -> 48
    assert contains(r, bbox.expand(10))


def test_region_negative_padding_treated_as_zero():
    bbox = Rect(100, 100, 16, 16)
    r = context_region(bbox, 1000, 1000, padding=-50, min_size=None)
    assert r == bbox


def test_region_zero_min_size_same_as_none():
    bbox = Rect(30, 40, 50, 60)
    assert context_region(bbox, 500, 500, 5, 0) == context_region(bbox, 500, 500, 5, None)


def test_region_large_selection_keeps_size_beyond_min():
    bbox = Rect(100, 100, 1500, 900)
    r = context_region(bbox, 4000, 3000, padding=0, min_size=512)
    assert (r.width, r.height) == (1504, 904)
    assert contains(r, bbox)


@pytest.mark.parametrize(
    "bbox",
    [
        Rect(0, 0, 10, 10),  # top-left corner
        Rect(990, 0, 10, 10),  # top-right
        Rect(0, 790, 10, 10),  # bottom-left
        Rect(990, 790, 10, 10),  # bottom-right
        Rect(495, 0, 10, 10),  # top edge
        Rect(495, 790, 10, 10),  # bottom edge
        Rect(0, 395, 10, 10),  # left edge
        Rect(990, 395, 10, 10),  # right edge
    ],
    ids=["tl", "tr", "bl", "br", "top", "bottom", "left", "right"],
)
def test_region_at_edges_and_corners_is_shifted_not_shrunk(bbox):
    r = context_region(bbox, 1000, 800, padding=32, min_size=512)
    assert inside_image(r, 1000, 800)
    assert contains(r, bbox)
    assert (r.width, r.height) == (512, 512)


def test_region_top_left_corner_starts_at_origin():
    r = context_region(Rect(0, 0, 4, 4), 1000, 800, padding=32, min_size=512)
    assert (r.x, r.y) == (0, 0)


def test_region_bottom_right_corner_ends_at_image_edge():
    r = context_region(Rect(996, 796, 4, 4), 1000, 800, padding=32, min_size=512)
    assert (r.right, r.bottom) == (1000, 800)


def test_region_image_smaller_than_native_is_whole_image():
    r = context_region(Rect(100, 50, 20, 20), 300, 200, padding=32, min_size=512)
    assert r == Rect(0, 0, 300, 200)


def test_region_image_narrower_than_native_only_in_one_direction():
    r = context_region(Rect(100, 1000, 20, 20), 300, 3000, padding=32, min_size=512)
    assert (r.x, r.width) == (0, 300)
    assert r.height == 512
    assert contains(r, Rect(100, 1000, 20, 20))


def test_region_tiny_one_pixel_selection():
    bbox = Rect(250, 160, 1, 1)
    r = context_region(bbox, 517, 333, padding=0, min_size=None)
    assert contains(r, bbox)
    assert (r.width, r.height) == (8, 8)
    r2 = context_region(bbox, 517, 333, padding=0, min_size=None, multiple=1)
    assert r2 == bbox


def test_region_tiny_selection_with_native_size_in_big_image():
    bbox = Rect(2000, 1500, 1, 1)
    r = context_region(bbox, 6000, 4000, padding=32, min_size=512)
    assert (r.width, r.height) == (512, 512)
    assert contains(r, bbox)


def test_region_whole_image_selection_is_whole_image():
    r = context_region(Rect(0, 0, 517, 333), 517, 333, padding=32, min_size=512)
    assert r == Rect(0, 0, 517, 333)


def test_region_whole_image_selection_multiple_of_8_image():
    r = context_region(Rect(0, 0, 1024, 768), 1024, 768, padding=100, min_size=512)
    assert r == Rect(0, 0, 1024, 768)


def test_region_odd_image_rounds_to_8_where_room():
    bbox = Rect(200, 100, 37, 21)
    r = context_region(bbox, 517, 333, padding=5, min_size=None)
    assert r.width % 8 == 0 and r.height % 8 == 0
    assert inside_image(r, 517, 333) and contains(r, bbox)


def test_region_odd_image_falls_back_to_image_side_when_no_room():
    # 510 wide selection on a 517 wide image: 512 would fit, 520 would not; rounding
    # up is impossible so the side is the image's.
    bbox = Rect(3, 10, 510, 20)
    r = context_region(bbox, 517, 333, padding=0, min_size=None)
    assert r.width == 512 and contains(r, bbox)
    bbox = Rect(2, 10, 513, 20)
    r = context_region(bbox, 517, 333, padding=0, min_size=None)
    assert (r.x, r.width) == (0, 517)


def test_region_multiple_one_keeps_exact_padded_size():
    r = context_region(Rect(10, 10, 13, 7), 100, 100, padding=3, min_size=None, multiple=1)
    assert (r.width, r.height) == (19, 13)


def test_region_one_pixel_image():
    r = context_region(Rect(0, 0, 1, 1), 1, 1, padding=32, min_size=512)
    assert r == Rect(0, 0, 1, 1)


# --- context_region: properties ----------------------------------------------------------


@st.composite
def image_and_bbox(draw):
    w = draw(st.integers(1, 3000))
    h = draw(st.integers(1, 3000))
    x = draw(st.integers(0, w - 1))
    y = draw(st.integers(0, h - 1))
    bw = draw(st.integers(1, w - x))
    bh = draw(st.integers(1, h - y))
    return w, h, Rect(x, y, bw, bh)


region_args = dict(
    padding=st.integers(-5, 600),
    min_size=st.one_of(st.none(), st.sampled_from([0, 64, 256, 512, 768, 1024])),
    multiple=st.sampled_from([1, 2, 8, 64]),
)


@settings(max_examples=120, deadline=None)
@given(ib=image_and_bbox(), **region_args)
def test_prop_region_contains_bbox_and_lies_in_image(ib, padding, min_size, multiple):
    w, h, bbox = ib
    r = context_region(bbox, w, h, padding, min_size, multiple)
    assert contains(r, bbox)
    assert inside_image(r, w, h)
    assert not r.empty


@settings(max_examples=120, deadline=None)
@given(ib=image_and_bbox(), **region_args)
def test_prop_region_contains_padded_bbox_clipped(ib, padding, min_size, multiple):
    w, h, bbox = ib
    r = context_region(bbox, w, h, padding, min_size, multiple)
    padded = bbox.expand(max(0, padding)).intersect(Rect(0, 0, w, h))
    assert contains(r, padded)


@settings(max_examples=120, deadline=None)
@given(ib=image_and_bbox(), **region_args)
def test_prop_region_at_least_min_size_where_image_allows(ib, padding, min_size, multiple):
    w, h, bbox = ib
    r = context_region(bbox, w, h, padding, min_size, multiple)
    m = min_size or 0
    assert r.width >= min(m, w)
    assert r.height >= min(m, h)


@settings(max_examples=120, deadline=None)
@given(ib=image_and_bbox(), **region_args)
def test_prop_region_multiple_where_image_allows(ib, padding, min_size, multiple):
    w, h, bbox = ib
    r = context_region(bbox, w, h, padding, min_size, multiple)
    for side, limit in ((r.width, w), (r.height, h)):
        assert side % multiple == 0 or side == limit
    # and it is the smallest such side: never more than one `multiple` above what is needed
    padded = bbox.expand(max(0, padding)).intersect(Rect(0, 0, w, h))
    need_w = max(padded.width, min_size or 0)
    need_h = max(padded.height, min_size or 0)
    assert r.width == min(w, math.ceil(need_w / multiple) * multiple)
    assert r.height == min(h, math.ceil(need_h / multiple) * multiple)


@settings(max_examples=100, deadline=None)
@given(image_and_bbox(), st.integers(0, 200), st.sampled_from([256, 512]))
def test_prop_region_roughly_centered_when_not_clamped(ib, padding, min_size):
    w, h, bbox = ib
    r = context_region(bbox, w, h, padding, min_size)
    if r.x > 0 and r.right < w:
        padded = bbox.expand(padding).intersect(Rect(0, 0, w, h))
        left, right = padded.x - r.x, r.right - padded.right
        assert abs(left - right) <= 1


# --- processing_size ---------------------------------------------------------------------


def test_processing_size_none_native_is_identity():
    assert processing_size(Rect(5, 7, 517, 333), None) == (517, 333)


def test_processing_size_none_native_ignores_multiple():
    assert processing_size(Rect(0, 0, 13, 7), None, multiple=64) == (13, 7)


def test_processing_size_square_region_is_native():
    assert processing_size(Rect(0, 0, 2048, 2048), 512) == (512, 512)
    assert processing_size(Rect(0, 0, 100, 100), 1024) == (1024, 1024)


def test_processing_size_known_rectangle():
    # 1024 x 512 at native 512: scale = 512 / sqrt(524288) = 0.7071
    assert processing_size(Rect(0, 0, 1024, 512), 512) == (728, 360)


@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 8000),
    st.integers(1, 8000),
    st.sampled_from([256, 512, 768, 1024]),
    st.sampled_from([8, 16, 64]),
)
def test_prop_processing_size(rw, rh, native, multiple):
    w, h = processing_size(Rect(0, 0, rw, rh), native, multiple)
    assert w % multiple == 0 and h % multiple == 0
    assert w >= multiple and h >= multiple
    # aspect preserved within rounding (each side is off by at most multiple/2 from exact)
    scale = native / math.sqrt(rw * rh)
    assert abs(w - rw * scale) <= multiple / 2 + 1e-6 or w == multiple
    assert abs(h - rh * scale) <= multiple / 2 + 1e-6 or h == multiple


@settings(max_examples=100, deadline=None)
@given(st.integers(64, 8000), st.integers(64, 8000), st.sampled_from([512, 768, 1024]))
def test_prop_processing_size_area_about_native_squared(rw, rh, native):
    # regions from context_region are at least native square where the image allows, so
    # aspect ratios stay moderate; restrict to <= 4:1 to keep rounding meaningful
    if max(rw, rh) > 4 * min(rw, rh):
        return
    w, h = processing_size(Rect(0, 0, rw, rh), native, 8)
    assert abs(w * h / native**2 - 1) < 0.06
    assert abs((w / h) / (rw / rh) - 1) < 0.05


def test_a_coarse_shape_grid_bounds_the_shapes_a_compiled_engine_meets():
    # Every selection aspect an artist may draw, from 1:4 to 4:1, at the sizes the context
    # crop gives: a 64 px grid meets a few shapes (each compiles once), an 8 px grid hundreds.
    regions = [Rect(0, 0, w, h) for w in range(128, 2049, 7) for h in range(128, 2049, 11) if 0.25 <= w / h <= 4]
    fine = {processing_size(r, 512, 8) for r in regions}
    coarse = {processing_size(r, 512, 64) for r in regions}
    assert len(fine) > 150 and len(coarse) <= 25
    for r in regions:
        w, h = processing_size(r, 512, 64)
        assert w % 64 == 0 and h % 64 == 0
        assert 0.80 <= (w * h) / 512**2 <= 1.25  # about the native area
        # the uneven scale a coarse grid costs: the two axes' scales within 15% of each other
        # at worst (a 256 px side rounded by up to 32 px), a few % for squarish selections
        assert abs((w / r.width) / (h / r.height) - 1) <= 0.15
