"""Jobs through the daemon the benchmarks start with `tests.daemons.start_daemon` (the same
subprocess the tests start), so a benchmarked daemon is what a plugin talks to."""

from __future__ import annotations

import numpy as np

from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import JobOptions


def daemon_job(client: Client, image: np.ndarray, mask: np.ndarray, options: JobOptions) -> Job:
    """Submit and wait, zero-copy from the arrays: what an editor plugin does."""
    h, w, c = image.shape
    return client.inpaint(memoryview(image).cast("B"), w, h, c, memoryview(mask).cast("B"), options, timeout=600)
