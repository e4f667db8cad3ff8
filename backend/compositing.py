"""Putting generated pixels back into the original through the soft mask.

The blend is done in integers so that where the mask is 0 the arithmetic returns the
source byte exactly: artists must be able to trust that nothing outside their selection
moved, not even by one level.
"""

from __future__ import annotations

import numpy as np


def composite(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend `generated` (H x W x 3) over `source` (H x W x 3 or 4) by `mask` (H x W,
    0..255) into a new H x W x 4 RGBA array.

    out = (src * (255 - m) + gen * m + 127) // 255, which is src exactly at m = 0 and
    gen exactly at m = 255.  Alpha blends towards opaque: inpainting fills holes.
    """
    h, w = mask.shape
    if source.shape[:2] != (h, w) or generated.shape[:2] != (h, w):
        raise ValueError(f"composite: sizes differ: source {source.shape}, generated {generated.shape}, mask {mask.shape}")
    m = mask.astype(np.uint16)[:, :, None]
    inv = 255 - m
    out = np.empty((h, w, 4), dtype=np.uint8)
    rgb = source[:, :, :3].astype(np.uint16)
    out[:, :, :3] = (rgb * inv + generated.astype(np.uint16) * m + 127) // 255
    if source.shape[2] == 4:
        alpha = source[:, :, 3:4].astype(np.uint16)
        out[:, :, 3:4] = (alpha * inv + 255 * m + 127) // 255
    else:
        out[:, :, 3] = 255
    return out


def paste(image: np.ndarray, layer: np.ndarray, x: int, y: int) -> np.ndarray:
    """A copy of `image` (H x W x C) with RGBA `layer` written at (x, y): what an editor
    shows when it stacks the result layer over the source."""
    out = image.copy()
    h, w = layer.shape[:2]
    out[y : y + h, x : x + w] = layer[:, :, : image.shape[2]]
    return out
