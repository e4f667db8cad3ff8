"""Turning an editor's selection into the mask a job blends through.

Selections arrive soft (feathered in the editor).  The job grows them, to cover the seam
that inpainting models leave at a hard edge, and feathers them outward, so the new pixels
fade into the old.  Only a window around the selection is touched, so a small selection
on a huge canvas costs what a small image costs.
"""

from __future__ import annotations

import cv2
import numpy as np

from inpaintd_protocol.rect import Rect


def bounding_box(mask: np.ndarray) -> Rect | None:
    """Bounding box of the non-zero pixels, or None for an all-zero mask."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask))
    if w == 0 or h == 0:
        return None
    return Rect(int(x), int(y), int(w), int(h))


def reach(grow: int, feather: int) -> int:
    """How far outside the selection grow + feather can change the mask."""
    return grow + _blur_radius(feather) + 1


def _blur_radius(feather: int) -> int:
    return 0 if feather <= 0 else feather


def grow_mask(mask: np.ndarray, grow: int) -> np.ndarray:
    """Dilate by `grow` px with a round kernel; soft values grow with the max."""
    if grow <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def feather_mask(mask: np.ndarray, feather: int) -> np.ndarray:
    """Blur so the edge fades out over about `feather` px outside the selection, while
    everything the user selected stays at least as selected as it was."""
    if feather <= 0:
        return mask
    radius = _blur_radius(feather)
    sigma = max(radius / 3.0, 0.5)
    blurred = cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.maximum(blurred, mask)


def prepare_mask(mask: np.ndarray, grow: int, feather: int) -> tuple[np.ndarray, Rect] | None:
    """Grow and feather `mask` (full image size, uint8) inside a window around its
    selection.  Returns (final mask of the window, window box in image coordinates),
    or None when the mask selects nothing."""
    bbox = bounding_box(mask)
    if bbox is None:
        return None
    height, width = mask.shape
    window = bbox.expand(reach(grow, feather)).intersect(Rect(0, 0, width, height))
    rows, cols = window.slices()
    # Pad with zeros so dilation and blur see "unselected" beyond the canvas edge, as
    # they would if the canvas went on.
    local = np.ascontiguousarray(mask[rows, cols])
    final = feather_mask(grow_mask(local, grow), feather)
    return final, window
