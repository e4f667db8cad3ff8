"""Test images and selections, made the same way for every benchmark.

The canvas is a smooth gradient with a little noise (so OpenCV's fill has structure to
propagate and nothing compresses to nothing), the selection a soft ellipse, as an
editor's feathered lasso would send it.
"""

from __future__ import annotations

import cv2
import numpy as np


def canvas(side: int, channels: int = 4, seed: int = 0) -> np.ndarray:
    """side x side x channels uint8; built row-band by row-band so an 8192² canvas never
    needs float temporaries of its full size."""
    out = np.empty((side, side, channels), dtype=np.uint8)
    x = (np.arange(side, dtype=np.uint32) * 255 // max(side - 1, 1)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    band = 1024
    for y0 in range(0, side, band):
        rows = min(band, side - y0)
        y = ((np.arange(y0, y0 + rows, dtype=np.uint32) * 255) // max(side - 1, 1)).astype(np.uint8)
        out[y0 : y0 + rows, :, 0] = x[None, :]
        out[y0 : y0 + rows, :, 1] = y[:, None]
        out[y0 : y0 + rows, :, 2] = rng.integers(96, 160, (rows, side), dtype=np.uint8)
        if channels == 4:
            out[y0 : y0 + rows, :, 3] = 255
    return out


def ellipse_mask(side: int, selection: int, feather: int = 8) -> np.ndarray:
    """side x side uint8 with a soft ellipse filling a `selection`² box at the centre."""
    mask = np.zeros((side, side), dtype=np.uint8)
    c = side // 2
    half = selection // 2 - feather
    box = (slice(c - selection // 2, c + selection // 2),) * 2
    local = np.zeros((selection, selection), dtype=np.uint8)
    cv2.ellipse(local, (selection // 2, selection // 2), (half, half * 3 // 4), 0, 0, 360, 255, -1)
    if feather:
        local = cv2.GaussianBlur(local, (2 * feather + 1, 2 * feather + 1), feather / 2)
    mask[box] = local
    return mask
