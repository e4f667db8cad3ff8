"""What a diffusion job starts from inside the hole (job option `fill`).

Below strength 1 a diffusion engine does not start from noise but from the encoded picture,
re-noised part of the way: whatever is under the selection shapes the result.  Keeping it
(`none`) reworks what is there, which is what lowering the strength usually asks for (paint
a crude shape, refine it).  To remove something instead, the hole is filled first and the
model refines the fill, as krita-ai-diffusion's fill modes do:

- `neutral`: mid grey, a blank start that takes the surroundings' light from the model;
- `blur`: the surroundings' colours pulled smoothly into the hole (a pyramid fill);
- `classical`: the daemon's classical default (PatchMatch where installed), so the model
  starts from plausible texture.

`auto` (the default) keeps the picture (`none`), except where the picture has no pixels:
fully transparent pixels, as on a canvas extended for outpainting, get `classical`, since
their colour means nothing.  The fill is soft: it replaces the picture in proportion to the
engine mask, as the composite will.  At strength 1 the start is pure noise and the fill has
no effect; classical engines fill the hole themselves and ignore it.
"""

from __future__ import annotations

import cv2
import numpy as np

from inpaintd_protocol.messages import FILL_MODES  # noqa: F401  (the names, for callers)


def blur_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Known pixels pulled into the hole, smoothly: a pull-push pyramid.  Each level halves
    the size, averaging only known pixels, until nothing is unknown; going back up, the
    hole takes the coarser level's colours, blurred."""
    known = (hole == 0).astype(np.float32)
    if not known.any():
        return np.full_like(image, 127)
    levels = [(image.astype(np.float32) * known[:, :, None], known)]
    while (levels[-1][1] == 0).any() and min(levels[-1][1].shape) > 1:
        colour, weight = levels[-1]
        size = (max(1, colour.shape[1] // 2), max(1, colour.shape[0] // 2))
        levels.append((cv2.resize(colour, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1),
                       cv2.resize(weight, size, interpolation=cv2.INTER_AREA)))
    colour, weight = levels[-1]
    filled = colour / np.maximum(weight, 1e-6)[:, :, None]
    if (weight == 0).any():  # a 1-px level with nothing known at all cannot happen, but be safe
        filled[weight == 0] = filled[weight > 0].mean(axis=0) if (weight > 0).any() else 127
    for colour, weight in reversed(levels[:-1]):
        up = cv2.resize(filled, (colour.shape[1], colour.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = cv2.GaussianBlur(up.reshape(colour.shape), (5, 5), 0).reshape(colour.shape)
        w = np.clip(weight, 0, 1)[:, :, None]
        mean = colour / np.maximum(weight, 1e-6)[:, :, None]
        filled = np.where(w > 0, mean * w + up * (1 - w), up)
    return np.clip(filled + 0.5, 0, 255).astype(np.uint8)


def fill_pixels(image: np.ndarray, hole: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """`image` (H x W x 3 uint8) filled by `mode` where `hole` > 0, hard-edged."""
    if mode == "neutral":
        return np.where(hole[:, :, None] > 0, np.uint8(127), image)
    if mode == "blur":
        return blur_fill(image, hole)
    if mode == "classical":
        from .engines.classical import default_method, fill

        return fill(default_method(), image, hole, seed)
    raise ValueError(f"unknown fill mode {mode!r}")


def prefill(image: np.ndarray, mask: np.ndarray, empty: np.ndarray | None, mode: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """The picture a diffusion engine should encode, and what was done ("" for nothing).

    `mask` is the engine mask (0 keep .. 255 regenerate), `empty` marks pixels without a
    picture (or None), `mode` one of FILL_MODES; the caller has checked strength < 1."""
    if mode == "none":
        return image, ""
    if mode == "auto":
        if empty is None or not empty.any():
            return image, ""
        filled = fill_pixels(image, empty.astype(np.uint8), "classical", seed)
        return filled, "auto: transparent pixels pre-filled classically"
    filled = fill_pixels(image, mask, mode, seed)
    weight = mask.astype(np.float32)[:, :, None] / 255.0
    out = image.astype(np.float32) * (1 - weight) + filled.astype(np.float32) * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mode
