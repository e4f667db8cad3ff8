"""Figure 3: a small selection costs the same on a small and on a huge canvas.

The same 256² feathered ellipse is inpainted on a 1024² and on an 8192² RGBA canvas.
Only the context region around the selection should be processed, so time and memory
should stay flat; what cannot stay flat is scanning the mask once (its bounding box) and,
through the daemon, moving the canvas (256 MiB of RGBA + 64 MiB of mask).

- time in-process: `run_job`, 1024² and 8192² interleaved.
- peak memory in-process: tracemalloc's peak over one job, in a fresh process per canvas
  size after one warm-up job.  It sees every numpy array (numpy reports its allocations
  to tracemalloc, and OpenCV's Python binding allocates its outputs through numpy), but
  not OpenCV's internal scratch buffers, which scale with the processed region, not the
  canvas.  The resident-set high-water mark was tried and dropped: the process reuses
  memory freed while building the canvas, so its rise under-counts (it read 0 at 8192²).
- time through the daemon: wall time at the client, and the daemon's own run_job time
  (reported in the result), so the transfer is visible separately from the processing.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from inpaintd.engines.base import Engine
from inpaintd.models import ModelRegistry
from inpaintd.runner import run_job
from inpaintd_protocol.messages import JobOptions
from tests.daemons import DaemonProcess, start_daemon

from .common import Config, Pair, Row, Section, interleaved, mib, ms, pair_row
from .daemon_proc import daemon_job
from .inputs import canvas, ellipse_mask

GOAL = 1.3
SELECTION = 256
TINY_SELECTION = 64  # --tiny: canvases of 256² and 1024²


def _memory_child(side: int, selection: int, model: str, model_dir: str | None, conn: Any) -> None:
    """Runs in a fresh process: one warm-up job, then three measured jobs."""
    registry = ModelRegistry([model_dir] if model_dir else [], device="cpu")
    engine = registry.load(model)
    image, mask = canvas(side), ellipse_mask(side, selection)
    options = JobOptions(seed=7, steps=5, model=model)
    run_job(engine, image, mask, options, [7])
    peaks = []
    for _ in range(3):  # the median of three: a ~8 MiB transient, the same at any canvas size, comes and goes
        tracemalloc.start()
        run_job(engine, image, mask, options, [7])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    conn.send({"tracemalloc": sorted(peaks)[1]})


def measure_memory(side: int, selection: int, model: str, model_dir: str | None) -> dict[str, int]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_memory_child, args=(side, selection, model, model_dir, child))
    proc.start()
    result = parent.recv()
    proc.join(60)
    return result


def _memory_rows(label: str, sizes: tuple[int, int], selection: int, model: str, model_dir: str | None) -> list[Row]:
    small, large = sizes
    a, b = measure_memory(small, selection, model, model_dir), measure_memory(large, selection, model, model_dir)
    return [Row(
        f"canvas peak memory (tracemalloc), {label}",
        f"{small}² {mib(a['tracemalloc'])}", f"{large}² {mib(b['tracemalloc'])}",
        b["tracemalloc"] / a["tracemalloc"], None, GOAL,
        note="numpy/Python allocations during one job",
    )]


def _inprocess(engine: Engine, sizes: tuple[int, int], selection: int, options: JobOptions, reps: int) -> Pair:
    (ia, ma), (ib, mb) = [(canvas(s), ellipse_mask(s, selection)) for s in sizes]
    return interleaved(
        lambda: run_job(engine, ia, ma, options, [options.seed]),
        lambda: run_job(engine, ib, mb, options, [options.seed]),
        reps, warmup=1,
    )


def _through_daemon(daemon: DaemonProcess, sizes: tuple[int, int], selection: int, options: JobOptions, reps: int) -> tuple[Pair, Pair]:
    """Client wall time and the daemon's own run_job time, for each size, interleaved."""
    inputs = [(canvas(s), ellipse_mask(s, selection)) for s in sizes]
    wall: tuple[list[float], list[float]] = ([], [])
    inside: tuple[list[float], list[float]] = ([], [])
    with daemon.client() as client:
        for i in range(reps + 1):
            for k, (image, mask) in enumerate(inputs):
                t0 = time.perf_counter()
                job = daemon_job(client, image, mask, options)
                t = time.perf_counter() - t0
                if i:  # the first round is warm-up
                    wall[k].append(t)
                    inside[k].append(job.result["timings"]["total"])
    return Pair(*wall), Pair(*inside)


def run(cfg: Config) -> Section:
    sizes = (256, 1024) if cfg.tiny else (1024, 8192)
    small, large = sizes
    sel = TINY_SELECTION if cfg.tiny else SELECTION
    section = Section("canvas")
    classical = JobOptions(seed=7, model="opencv-telea")
    registry = ModelRegistry(device="cpu")
    engine = registry.load("opencv-telea")
    pair = _inprocess(engine, sizes, sel, classical, cfg.reps(full=9, quick=3))
    section.rows.append(pair_row(f"canvas {sel}² selection, classical, in-process", f"{small}²", f"{large}²", pair, GOAL))
    section.rows += _memory_rows("classical", sizes, sel, "opencv-telea", None)

    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        if not cfg.quick or cfg.tiny:
            from inpaintd.testmodel import make_test_model

            model_dir = str(make_test_model(Path(tmp) / "tiny-inpaint"))
            tiny_registry = ModelRegistry([model_dir], default=model_dir, device="cpu")
            tiny = JobOptions(seed=7, steps=5, model=tiny_registry.default_model_id)
            pair = _inprocess(tiny_registry.load(tiny.model), sizes, sel, tiny, cfg.reps(full=5, quick=2))
            section.rows.append(pair_row(f"canvas {sel}² selection, tiny pipeline 5 steps, in-process", f"{small}²", f"{large}²",
                                         pair, GOAL))
            section.rows += _memory_rows("tiny pipeline", sizes, sel, tiny.model, model_dir)
            tiny_registry.close()

        with start_daemon(Path(tmp) / "daemon", "--engine", "classical") as daemon:
            wall, inside = _through_daemon(daemon, sizes, sel, classical, cfg.reps(full=5, quick=2))
        transfer = wall.b_med - inside.b_med
        section.rows.append(pair_row(
            f"canvas {sel}² selection, classical, daemon: run_job inside the daemon", f"{small}²", f"{large}²", inside, GOAL,
            note="the daemon's own processing time, from the result's timings",
        ))
        section.rows.append(pair_row(
            f"canvas {sel}² selection, classical, daemon: client wall time", f"{small}²", f"{large}²", wall, None,
            note=f"includes sending {mib(large * large * 5)} of canvas + mask: about {ms(transfer)} at {large}² "
                 f"({large * large * 5 / 2**30 / max(transfer, 1e-9):.2f} GiB/s incl. validation and queueing)",
        ))
    registry.close()
    return section
