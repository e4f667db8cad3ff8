"""A waiting job hears its place in the queue whenever it changes, over real sockets.

The daemon runs with fault injection so that a job can be made slow on purpose
(`fault:sleep=` in the prompt, see tests/faults.py); everything else is the real daemon,
queue and client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemons import ROOT, DaemonProcess, start_daemon

from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import JobOptions, Type


@pytest.fixture(scope="module")
def slow_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("queue-daemon"), "--engine", "classical", faults=tiny_model_dir)
    yield d
    d.stop()


def submit(client: Client, prompt: str, steps: int = 8) -> Job:
    image = np.full((48, 64, 3), 90, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    return client.submit(image.tobytes(), 64, 48, 3, mask.tobytes(),
                         JobOptions(prompt=prompt, model="fault-injector", steps=steps))


def follow(clients: list[Client], jobs: list[Job], timeout: float = 60) -> dict[str, list[int]]:
    """Pump every client until `jobs` are finished; the queued positions each job was told."""
    told: dict[str, list[int]] = {job.id: [] for job in jobs}
    deadline = time.monotonic() + timeout
    while not all(job.finished for job in jobs):
        assert time.monotonic() < deadline, [(j.id, j.state) for j in jobs]
        for client in clients:
            for msg in client.pump(0.02):
                if msg.type == Type.PROGRESS and msg.body.get("stage") == "queued" and msg.job in told:
                    told[msg.job].append(msg.body["position"])
    return told


def wait_running(client: Client, job: Job) -> None:
    deadline = time.monotonic() + 30
    while job.state != "running":
        assert time.monotonic() < deadline, job.state
        client.pump(0.02)


def test_positions_count_down_and_follow_round_robin(slow_daemon: DaemonProcess) -> None:
    with slow_daemon.client() as a, slow_daemon.client() as b, slow_daemon.client() as c:
        first = submit(a, "fault:sleep=0.05")  # runs ~0.4 s
        wait_running(a, first)
        b1 = submit(b, "fault:sleep=0.02")
        b2 = submit(b, "")
        assert (b1.position, b2.position) == (1, 2)
        c1 = submit(c, "fault:sleep=0.02")  # round-robin: C's first job goes before B's second
        assert c1.position == 2
        told = follow([a, b, c], [first, b1, b2, c1])
        for job in (first, b1, b2, c1):
            job.raise_for_error()
    assert told[first.id] == [] and told[b1.id] == []  # running at once / never moved
    assert told[c1.id] == [1]  # when b1 started
    assert told[b2.id] == [3, 2, 1]  # pushed back by c1, then one step per start
    assert b2.result["seq"] > c1.result["seq"] > b1.result["seq"] > first.result["seq"]
    assert b2.position == 1  # the client library keeps the last position it was told


def test_a_cancel_ahead_moves_the_jobs_behind_forward(slow_daemon: DaemonProcess) -> None:
    with slow_daemon.client() as a:
        running = submit(a, "fault:sleep=0.05", steps=20)
        wait_running(a, running)
        ahead = submit(a, "")
        behind = submit(a, "")
        assert (ahead.position, behind.position) == (1, 2)
        a.cancel(ahead.id)
        told = follow([a], [running, ahead, behind])
    assert ahead.state == "cancelled" and behind.state == "done"
    assert told[behind.id] == [1]  # moved up when the job ahead was cancelled, not again
    assert told[ahead.id] == []


def test_the_command_line_client_shows_its_place_in_the_queue(slow_daemon: DaemonProcess, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from PIL import Image


    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "in.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (20, 10, 40, 30))
    mask.save(tmp_path / "mask.png")
    with slow_daemon.client() as a:
        running = submit(a, "fault:sleep=0.05", steps=16)
        wait_running(a, running)
        queued = submit(a, "fault:sleep=0.02")
        cli = subprocess.run(
            [sys.executable, "-m", "inpaintd", "inpaint", "--image", str(tmp_path / "in.png"), "--mask",
             str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png"), "--model", "fault-injector", "--prompt", ""],
            cwd=ROOT, env=dict(os.environ, **slow_daemon.env), capture_output=True, text=True, timeout=120,
        )
        follow([a], [running, queued])
    assert cli.returncode == 0, cli.stderr
    assert "(queue position 2)" in cli.stderr and "queued, 1 job(s) ahead" in cli.stderr, cli.stderr
    assert (tmp_path / "out.png").is_file()


def test_a_fetch_by_the_jobs_own_connection_keeps_its_place(slow_daemon: DaemonProcess) -> None:
    """Re-asking for a queued job, as the client library does after 3 s of silence, moves
    nothing (PROTOCOL.md 5.7); only another connection's fetch takes the job into its line."""
    with slow_daemon.client() as a, slow_daemon.client() as b:
        running = submit(a, "fault:sleep=0.05", steps=20)
        wait_running(a, running)
        first, second = submit(a, ""), submit(a, "")
        a.request(Type.FETCH, {"job": first.id})
        kept = [j["job"] for j in a.status()["queued"]]
        b.request(Type.FETCH, {"job": first.id})
        moved = [j["job"] for j in a.status()["queued"]]
        a.cancel(running.id)
        follow([a], [running, second])
    assert kept == [first.id, second.id]
    assert moved == [second.id, first.id]  # b's line comes after a's
