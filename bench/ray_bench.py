"""Figure: what the Ray executor adds to a job, and what a second replica gives.

    .venv/bin/python -m bench.ray_bench [--quick] [--tiny]     (or: python -m bench.run --only ray_bench)

A: `inpaintd serve --executor local` (torch on one thread, as in a replica); B: `inpaintd serve --executor ray` (a local Ray
cluster started by the daemon's bridge, one replica), the same tiny-pipeline job (512²,
20 steps) through `inpaintd_protocol.client.Client`, interleaved A B A B: per-job latency
p50 and p95, the goal being B/A <= 1.20 at the median.  Then throughput: the same jobs
submitted all at once by four clients to the Ray gateway with 1 and then 2 replicas (the
local executor beside them), jobs per second.  And the cluster's set-up: seconds to start
it and deploy the replicas (the daemon's log), and the memory (RSS) of the daemon's whole
process tree, local against Ray.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from inpaintd_protocol.messages import JobOptions
from tests.daemons import DaemonProcess, start_daemon

from .common import Config, Row, Section, interleaved, mib, ms, pair_row
from .daemon_proc import daemon_job
from .inputs import canvas, ellipse_mask

GOAL = 1.20


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident memory of process `pid` and all its descendants, and how many there are."""
    import psutil

    root = psutil.Process(pid)
    total, count = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
            count += 1
        except psutil.Error:
            pass
    return total, count


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def throughput(daemon: DaemonProcess, image: np.ndarray, mask: np.ndarray, options: JobOptions, jobs: int) -> float:
    """Jobs per second with `jobs` jobs submitted at once by four clients."""
    h, w, c = image.shape
    clients = [daemon.client() for _ in range(4)]
    try:
        t0 = time.perf_counter()
        submitted = [(cl, cl.submit(memoryview(image).cast("B"), w, h, c, memoryview(mask).cast("B"), options))
                     for i in range(jobs) for cl in [clients[i % 4]]]
        for cl, job in submitted:
            cl.wait(job, timeout=600).raise_for_error()
        return jobs / (time.perf_counter() - t0)
    finally:
        for cl in clients:
            cl.close()


def setup_seconds(daemon: DaemonProcess) -> tuple[float, float]:
    found = re.search(r"ray: started a local cluster in ([\d.]+) s; \d+ replica\(s\) of \w+ up in ([\d.]+) s", daemon.log())
    return (float(found.group(1)), float(found.group(2))) if found else (float("nan"), float("nan"))


def run(cfg: Config) -> Section:
    import importlib.util

    from inpaintd.testmodel import make_test_model

    if importlib.util.find_spec("ray") is None:
        return Section("ray_bench", [Row("ray executor", "", "", None, status="skipped",
                                         note="ray is not installed: pip install 'inpaintd[ray]'")])
    side = 128 if cfg.tiny else 512
    image, mask = canvas(side), ellipse_mask(side, side * 3 // 8)
    steps = 5 if cfg.tiny else 20
    reps = cfg.reps(full=20, quick=8)
    burst = 8 if (cfg.tiny or cfg.quick) else 16
    section = Section("ray_bench")
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        model = make_test_model(Path(tmp) / "tiny-inpaint")
        options = JobOptions(seed=1234, steps=steps, model=str(model))
        common = ["--model", str(model), "--device", "cpu"]

        # Ray gives each replica actor OMP_NUM_THREADS = its CPUs (1); the local daemon gets
        # the same, so that both run torch alike (with 2 threads on 2 busy cores the local
        # side ran up to 4x slower, which is not what is measured here).
        t0 = time.perf_counter()
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            local = start_daemon(Path(tmp) / "local", *common)
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        local_ready = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray1 = start_daemon(Path(tmp) / "ray1", *common, "--executor", "ray", "--replicas", "1", ready_timeout=300)
        ray_ready = time.perf_counter() - t0
        try:
            rss_local, n_local = tree_rss(local.proc.pid)
            rss_ray, n_ray = tree_rss(ray1.proc.pid)
            cluster_s, deploy_s = setup_seconds(ray1)
            with local.client() as a, ray1.client() as b:
                pair = interleaved(lambda: daemon_job(a, image, mask, options), lambda: daemon_job(b, image, mask, options),
                                   reps, warmup=2)
            section.rows.append(pair_row(
                f"ray executor latency p50, tiny pipeline {side}² {steps} steps", "local", "ray 1 replica", pair, goal=GOAL,
                note=f"+{ms(pair.b_med - pair.a_med)} per job; p95 local {ms(p95(pair.a))}, ray {ms(p95(pair.b))}; {reps} jobs each",
            ))
            section.rows.append(Row(
                f"ray executor latency p95, tiny pipeline {side}² {steps} steps", f"local {ms(p95(pair.a))}",
                f"ray 1 replica {ms(p95(pair.b))}", p95(pair.b) / p95(pair.a), None, None, status="info",
            ))
            tp_local = throughput(local, image, mask, options, burst)
            tp_ray1 = throughput(ray1, image, mask, options, burst)
        finally:
            local.stop()
            ray1.stop()
        ray2 = start_daemon(Path(tmp) / "ray2", *common, "--executor", "ray", "--replicas", "2", ready_timeout=300)
        try:
            throughput(ray2, image, mask, options, 4)  # both replicas warm
            tp_ray2 = throughput(ray2, image, mask, options, burst)
            rss_ray2, n_ray2 = tree_rss(ray2.proc.pid)
        finally:
            ray2.stop()
    section.rows.append(Row(f"ray throughput, {burst} jobs at once", f"1 replica {tp_ray1:.2f} job/s", f"2 replicas {tp_ray2:.2f} job/s",
                            tp_ray2 / tp_ray1, None, None, status="info",
                            note=f"local executor {tp_local:.2f} job/s; B/A > 1 is faster; {_cores()}"))
    section.rows.append(Row("ray throughput against the local executor", f"local {tp_local:.2f} job/s",
                            f"ray 1 replica {tp_ray1:.2f} job/s", tp_ray1 / tp_local, None, None, status="info",
                            note="B/A > 1 is faster"))
    section.rows.append(Row("daemon start to ready", f"local {local_ready:.1f} s", f"ray 1 replica {ray_ready:.1f} s",
                            ray_ready / local_ready, None, None, status="info",
                            note=f"ray.init {cluster_s:.1f} s, serve.run with the replica's model load {deploy_s:.1f} s"))
    section.rows.append(Row("memory of the daemon's process tree (RSS)", f"local {mib(rss_local)} ({n_local} proc)",
                            f"ray 1 replica {mib(rss_ray)} ({n_ray} proc)", rss_ray / rss_local, None, None, status="info",
                            note=f"2 replicas: {mib(rss_ray2)} ({n_ray2} proc); RSS counts shared pages in each process"))
    section.notes.append("ray_bench: the Ray cluster is local (one machine), so the object store is shared memory; across "
                         "machines each job also pays the network for its pixels both ways")
    return section


def _cores() -> str:
    return f"{len(os.sched_getaffinity(0))} usable cores"


def main() -> int:
    import argparse

    from .common import text_table

    p = argparse.ArgumentParser(prog="bench.ray_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    section = run(Config(quick=args.quick, tiny=args.tiny))
    print(text_table(section.rows))
    for note in section.notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
