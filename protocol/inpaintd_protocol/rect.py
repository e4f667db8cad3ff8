"""The axis-aligned pixel rectangle that the daemon and both editor plug-ins share.

It lives in the protocol package because layer placement is part of the protocol: result
layers carry x/y/width/height, and the daemon's context crop and the plug-ins' sent
crops are rectangles in the same pixel grid.  The plug-ins run inside Krita's and GIMP's
own Python with no numpy and no backend package, but they carry a copy of protocol/, so
this module must stay stdlib only and import nothing else from the package (the plug-ins
load it without running protocol/inpaintd_protocol/__init__.py, which needs pyzmq and msgpack).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """An axis-aligned pixel rectangle, x/y at the top-left; empty when width or height is
    not positive.  Which coordinates (image, layer, crop) is up to the caller."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def area(self) -> int:
        return 0 if self.empty else self.width * self.height

    def intersect(self, other: Rect) -> Rect:
        """The pixels both cover; empty (zero-sized) where they do not overlap."""
        x, y = max(self.x, other.x), max(self.y, other.y)
        return Rect(x, y, max(0, min(self.right, other.right) - x), max(0, min(self.bottom, other.bottom) - y))

    def expand(self, by: int) -> Rect:
        """`by` pixels more on every side (fewer where `by` is negative)."""
        return Rect(self.x - by, self.y - by, self.width + 2 * by, self.height + 2 * by)

    def translate(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.width, self.height)

    def contains(self, other: Rect) -> bool:
        return other.x >= self.x and other.y >= self.y and other.right <= self.right and other.bottom <= self.bottom

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices for indexing an H x W array."""
        return slice(self.y, self.bottom), slice(self.x, self.right)
