"""Calling an engine directly in tests: a request and its two callbacks as one value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inpaintd.engines.base import CancelledFn, EngineOutput, EngineRequest, ProgressFn


def _no_progress(stage: str, step: int, total: int) -> None:
    pass


@dataclass
class Call:
    request: EngineRequest
    progress: ProgressFn = field(default=_no_progress)
    cancelled: CancelledFn = field(default=lambda: False)


def call(progress: ProgressFn = _no_progress, cancelled: CancelledFn = lambda: False, **fields: Any) -> Call:
    return Call(EngineRequest(**fields), progress, cancelled)


def run(engine: Any, c: Call) -> EngineOutput:
    return engine.generate(c.request, c.progress, c.cancelled)


def generate(engine: Any, c: Call) -> list[np.ndarray]:
    """The images only, for tests about pixels."""
    return run(engine, c).images
