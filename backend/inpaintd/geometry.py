"""Where in the image a job works: the context crop.

The best editor plugins never send a whole canvas through the model: they take the
mask's bounding box, add context around it, make it at least the model's native size
where the image allows, and scale that crop to the resolution the model was trained at.
All of that is integer geometry, kept here so it can be tested without pixels.
"""

from __future__ import annotations

import math

from inpaintd_protocol.rect import Rect


def auto_padding(bbox: Rect) -> int:
    """Context to add when the client leaves it to us: a quarter of the selection's
    larger side, at least 32 px, so small touch-ups still see their surroundings."""
    return max(32, round(0.25 * max(bbox.width, bbox.height)))


def context_region(bbox: Rect, image_width: int, image_height: int, padding: int, min_size: int | None, multiple: int = 8) -> Rect:
    """The crop a job processes: `bbox` plus `padding`, at least `min_size` square where
    the image allows, sides rounded up to `multiple` where the image allows, and moved
    (not shrunk) to lie inside the image."""
    image = Rect(0, 0, image_width, image_height)
    grown = bbox.expand(max(0, padding)).intersect(image)
    xs = _grow_span(grown.x, grown.width, min_size or 0, multiple, image_width)
    ys = _grow_span(grown.y, grown.height, min_size or 0, multiple, image_height)
    return Rect(xs[0], ys[0], xs[1], ys[1])


def _grow_span(start: int, length: int, at_least: int, multiple: int, limit: int) -> tuple[int, int]:
    target = max(length, at_least)
    if multiple > 1:
        target = math.ceil(target / multiple) * multiple
    target = min(target, limit)
    extra = target - length
    new_start = start - extra // 2
    new_start = min(max(new_start, 0), limit - target)
    return new_start, target


def processing_size(region: Rect, native: int | None, multiple: int = 8) -> tuple[int, int]:
    """The (width, height) the engine sees: the region's aspect at about native x native
    pixels (down- or up-scaled), sides multiples of `multiple`.  Engines with no native
    size work on the region as it is."""
    if native is None:
        return region.width, region.height
    scale = native / math.sqrt(region.width * region.height)
    w = max(multiple, round(region.width * scale / multiple) * multiple)
    h = max(multiple, round(region.height * scale / multiple) * multiple)
    return w, h
