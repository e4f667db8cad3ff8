"""Colour-cast correction of an engine's output, measured where it should not have changed.

A diffusion model repaints the whole context crop it is given, and the pixels outside the
mask come back close to the source but often with a slight colour cast (VAE round trip,
model drift); the result then shows a tinted patch inside the feathered edge.  IOPaint and
AUTOMATIC1111 offer histogram matching against the whole source for this.  Here the cast
is measured exactly where the model was meant to keep the picture (the engine mask's zeros),
as a per-channel gain and offset that maps the output's mean and spread there onto the
source's, and that correction is applied to the whole output before compositing.  An engine
that keeps those pixels as they were (the classical ones) gets the identity.
"""

from __future__ import annotations

import numpy as np

#: Fewer kept pixels than this say too little about a cast: the output is left alone.
MIN_KEPT_PIXELS = 256
#: Bounds of the per-channel gain: a cast is a small shift, not a change of contrast.
GAIN_RANGE = (0.8, 1.25)


def match_colors(output: np.ndarray, source: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`output` (H x W x 3 uint8) corrected so that where `keep` (H x W bool) is true its
    per-channel mean and standard deviation equal `source`'s (H x W x >= 3 uint8)."""
    if int(np.count_nonzero(keep)) < MIN_KEPT_PIXELS:
        return output
    got = output[keep].astype(np.float64)
    want = source[..., :3][keep].astype(np.float64)
    got_mean, want_mean = got.mean(axis=0), want.mean(axis=0)
    got_std, want_std = got.std(axis=0), want.std(axis=0)
    gain = np.ones(3)
    varied = (got_std > 1.0) & (want_std > 1.0)  # a flat area gives no spread to match
    gain[varied] = np.clip(want_std[varied] / got_std[varied], *GAIN_RANGE)
    if np.allclose(gain, 1.0) and np.allclose(got_mean, want_mean):
        return output
    corrected = (output.astype(np.float32) - got_mean.astype(np.float32)) * gain.astype(np.float32)
    corrected += want_mean.astype(np.float32)
    return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)
