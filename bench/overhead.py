"""Figure 2: what the daemon adds to a job, against the same engine called in-process.

A: `inpaintd.runner.run_job` in this process, on an engine from `ModelRegistry.load`.
B: the same image, mask and options (same seeds and steps) submitted to a real daemon
process through `inpaintd_protocol.client.Client`, timed from submit to the result in hand.
B - A is the daemon's cost: transfer both ways, validation, queueing, progress events,
the worker hand-off.  Both sides' outputs are compared, so the figure is of equal work.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inpaintd.models import ModelRegistry
from inpaintd.runner import run_job, variant_seeds
from inpaintd_protocol.messages import JobOptions
from tests.daemons import start_daemon

from .common import Config, Pair, Section, interleaved, ms, pair_row
from .daemon_proc import daemon_job
from .inputs import canvas, ellipse_mask

GOAL = 1.10


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by every thread of process `pid` (Linux schedstat, ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def cpu_timed(fn: Callable[[], Any], out: list[float], other_pid: int | None = None) -> Callable[[], Any]:
    """Wrap `fn` to record the CPU seconds it costs this process (and `other_pid`)."""

    def call() -> Any:
        c0, o0 = time.process_time(), process_cpu(other_pid) if other_pid else 0.0
        result = fn()
        out.append(time.process_time() - c0 + (process_cpu(other_pid) - o0 if other_pid else 0.0))
        return result

    return call


def run(cfg: Config) -> Section:
    from inpaintd.testmodel import make_test_model

    side = 128 if cfg.tiny else 512
    selection = side * 3 // 8
    image, mask = canvas(side), ellipse_mask(side, selection)
    section = Section("overhead")
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        model_dir = make_test_model(Path(tmp) / "tiny-inpaint")
        registry = ModelRegistry([str(model_dir)], default=str(model_dir), device="cpu")
        cases = [
            ("tiny pipeline", registry.default_model_id, JobOptions(seed=1234, steps=5 if cfg.tiny else 20), GOAL),
            ("classical", "opencv-telea", JobOptions(seed=1234, model="opencv-telea"), None),
        ]
        with start_daemon(Path(tmp) / "daemon", "--model", str(model_dir), "--device", "cpu") as daemon, daemon.client() as client:
            for label, model_id, options, goal in cases:
                options.model = model_id
                engine = registry.load(model_id)
                seeds = variant_seeds(options.seed, options.variants)
                local = run_job(engine, image, mask, options, seeds)
                remote = daemon_job(client, image, mask, options)
                same = np.array_equal(np.frombuffer(remote.layers[0].data, np.uint8), local.layers[0].rgba.reshape(-1))
                cpu_a: list[float] = []
                cpu_b: list[float] = []
                pair = interleaved(
                    cpu_timed(partial(run_job, engine, image, mask, options, seeds), cpu_a),
                    cpu_timed(partial(daemon_job, client, image, mask, options), cpu_b, daemon.proc.pid),
                    cfg.reps(full=15, quick=5),
                    warmup=1,
                )
                section.rows.append(pair_row(
                    f"daemon overhead, {label}, {side}² RGBA",
                    "in-process", "daemon", pair, goal=goal,
                    note=f"+{ms(pair.b_med - pair.a_med)} per job; processed {local.processing_size[0]}x"
                         f"{local.processing_size[1]}; pixels {'identical' if same else 'DIFFER'}",
                ))
                cpu = Pair(cpu_a[1:], cpu_b[1:])  # the first entries are the warm-up
                section.rows.append(pair_row(
                    f"daemon overhead, {label}, {side}² RGBA, CPU time", "in-process", "daemon+client", cpu,
                    note=f"+{ms(cpu.b_med - cpu.a_med)} CPU per job; CPU time is less disturbed by other load than wall time",
                ))
        registry.close()
    return section
