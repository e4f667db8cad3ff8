"""The classical engine: OpenCV's inpainting, which needs no weights.

It is the embedded default on a machine without diffusion weights, so the daemon always
has something real to offer, and it is the fast engine for small retouching.  Prompts and
seeds mean nothing to it; every variant is the same fill, and the result says so through
its seed list staying as asked.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import EngineTask

#: model id -> OpenCV flag
METHODS = {
    "opencv-telea": cv2.INPAINT_TELEA,
    "opencv-ns": cv2.INPAINT_NS,
}


class ClassicalEngine:
    name = "classical"
    device = "cpu"
    native_size: int | None = None
    size_multiple = 1

    def __init__(self, model_id: str = "opencv-telea", radius: int = 5) -> None:
        if model_id not in METHODS:
            raise ValueError(f"unknown classical model {model_id!r}; known: {sorted(METHODS)}")
        self.model_id = model_id
        self.radius = radius

    def generate(self, task: EngineTask) -> list[np.ndarray]:
        task.progress("denoising", 0, 1)
        task.check_cancel()
        # Every pixel that the runner will blend in (mask > 0) must be filled, so the
        # hole is the whole non-zero part of the soft mask.
        hole = (task.mask > 0).astype(np.uint8) * 255
        bgr = np.ascontiguousarray(task.image[:, :, ::-1])
        filled = cv2.inpaint(bgr, hole, self.radius, METHODS[self.model_id])
        task.progress("denoising", 1, 1)
        rgb = np.ascontiguousarray(filled[:, :, ::-1])
        return [rgb.copy() for _ in task.seeds]

    def close(self) -> None:
        pass
