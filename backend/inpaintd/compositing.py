"""Putting generated pixels back into the original through the soft mask.

The blend is done in integers so that where the mask is 0 the arithmetic returns the
source byte exactly: artists must be able to trust that nothing outside their selection
moved, not even by one level.
"""

from __future__ import annotations

import numpy as np


def composite(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend `generated` (H x W x 3) over `source` (H x W x 3 or 4) by `mask` (H x W,
    0..255) into a new H x W x 4 RGBA array with straight (unpremultiplied) alpha.

    The generated pixels are opaque, so this is "generated over source" with coverage m:
        alpha = a + (255 - a) * m / 255
        rgb   = (src * a * (255 - m) + gen * 255 * m) / (a * (255 - m) + 255 * m)
    Weighting the source colour by its alpha keeps the meaningless colour under
    transparent pixels out of the blend.  Where m = 0 the source bytes are copied, and
    for opaque sources this reduces to round((src * (255 - m) + gen * m) / 255).
    """
    h, w = mask.shape
    if source.shape[:2] != (h, w) or generated.shape[:2] != (h, w):
        raise ValueError(f"composite: sizes differ: source {source.shape}, generated {generated.shape}, mask {mask.shape}")
    m = mask.astype(np.uint32)[:, :, None]
    inv = 255 - m
    src = source[:, :, :3].astype(np.uint32)
    gen = generated[:, :, :3].astype(np.uint32)
    out = np.empty((h, w, 4), dtype=np.uint8)
    if source.shape[2] == 4:
        a = source[:, :, 3:4].astype(np.uint32)
        weight = a * inv  # the source's share, times 255
        den = weight + 255 * m
        safe = np.maximum(den, 1)
        rgb = (src * weight + gen * (255 * m) + safe // 2) // safe
        out[:, :, :3] = np.where(den == 0, src, rgb)
        out[:, :, 3:4] = (weight + 255 * m + 127) // 255
    else:
        out[:, :, :3] = (src * inv + gen * m + 127) // 255
        out[:, :, 3] = 255
    return out


def paste(image: np.ndarray, layer: np.ndarray, x: int, y: int) -> np.ndarray:
    """A copy of `image` (H x W x C) with RGBA `layer` written at (x, y): what an editor
    shows when it stacks the result layer over the source."""
    out = image.copy()
    h, w = layer.shape[:2]
    out[y : y + h, x : x + w] = layer[:, :, : image.shape[2]]
    return out
