"""`inpaintd serve --executor ray`: the daemon as a gateway, jobs on Ray Serve replicas.

One local Ray cluster for the module (`ray start --head --block`, with token
authentication and two fake GPUs, so that fractional placement is real), and one gateway
on it: the tiny diffusion pipeline and a classical model, two replicas of half a GPU each.
Everything is checked over the daemon's socket, as a plugin meets it; which replica ran a
job is in its result's notes (`REPLICA_NOTE`) and in the daemon's log.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DaemonProcess, free_port, start_daemon

from inpaintd_protocol.client import LOST, Client, Job
from inpaintd_protocol.messages import JobOptions

pytest.importorskip("ray", reason="the Ray executor needs ray[serve] (pip install 'inpaintd[ray]')")
pytest.importorskip("ray.serve", reason="the Ray executor needs ray[serve] (pip install 'inpaintd[ray]')")

from inpaintd.ray_executor import REPLICA_NOTE, parse_replicas  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SIZE = 64
CLASSICAL = "opencv-telea"
RAY = Path(sys.executable).with_name("ray")


def pixels(seed: int = 0) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    return image.tobytes(), mask.tobytes()


def submit(c: Client, model: str, steps: int = 2, block: bool = True, seed: int = 0, **kw) -> Job:
    image, mask = pixels(seed)
    return c.submit(image, SIZE, SIZE, 3, mask, JobOptions(model=model, steps=steps, seed=1 + seed, **kw), block=block)


def replica_of(job: Job) -> str:
    notes = [n for n in job.result.get("notes") or [] if n.startswith(REPLICA_NOTE)]
    assert len(notes) == 1, job.result
    return notes[0][len(REPLICA_NOTE):]


def wait_denoising(c: Client, job: Job, step: int = 1, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (job.stage == "denoising" and job.step >= step):
        assert time.monotonic() < deadline, f"job never got to denoising step {step}: {job}"
        assert not job.finished, job
        c.pump(0.02)


# -- the cluster and the gateway -------------------------------------------------------------------


HEADS: dict[str, subprocess.Popen] = {}  # address -> its `ray start --block`


@contextlib.contextmanager
def ray_head(num_gpus: int = 2) -> Iterator[str]:
    """A Ray head in its own session (`ray start --block`; ending the session ends the
    cluster), 4 CPUs and `num_gpus` fake GPUs, token authentication on; its address."""
    token = secrets.token_hex(32)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # the gateways started here inherit it
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Unix socket paths live under it
    port = free_port()
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=4", f"--num-gpus={num_gpus}",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    HEADS[address] = head
    try:
        deadline = time.monotonic() + 60
        while True:
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(0.2)
        yield address
    finally:
        end_session(head)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def kill_session(sid: int) -> int:
    """SIGKILL every process of session `sid` at once; how many.  (Ray's workers run in
    their own process groups within the head's session: `killpg` of the head leaves them
    running until they notice their raylet is gone, seconds later, and meanwhile they
    finish jobs.)"""
    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed += 1
    return killed


def end_session(head: subprocess.Popen) -> None:
    """End the head and every process of its session (all started by it, for this test)."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with ray_head() as address:
        yield address


def gateway_args(tiny_model_dir: Path, address: str) -> list[str]:
    return ["--model", str(tiny_model_dir), "--extra-model", CLASSICAL, "--device", "cpu", "--executor", "ray",
            "--ray-address", address, "--replicas", "2", "--gpus-per-replica", "0.5"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, cluster: str) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("ray-gateway"), *gateway_args(tiny_model_dir, cluster), ready_timeout=180)
    yield d
    d.stop()


def ray_status(address: str) -> str:
    return subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True, text=True, timeout=60).stdout


# -- tests ---------------------------------------------------------------------------------------


def test_replicas_flag() -> None:
    assert parse_replicas("2") == (2, 2) and parse_replicas("1:4") == (1, 4) and parse_replicas("0:3") == (0, 3)
    for bad in ("", "x", "3:1", "0", "1:2:3"):
        with pytest.raises(ValueError, match="--replicas"):
            parse_replicas(bad)


def test_a_local_daemon_never_imports_ray() -> None:
    code = ("import sys; from inpaintd import cli, daemon, executor; "
            "a = cli.build_parser().parse_args(['serve', '--engine', 'classical']); "
            "assert a.executor == 'local' and 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    # A Python where `import ray` fails: a stub package that raises, first on the path.
    stub = tmp_path / "ray"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('No module named ray (stub)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), INPAINTD_KEY="k" * 32)
    proc = subprocess.run([sys.executable, "-m", "inpaintd", "serve", "--engine", "classical", "--executor", "ray",
                           "--bind", f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'inpaintd[ray]'" in proc.stderr


def test_the_gateway_is_up_with_two_replicas_of_half_a_gpu(gateway: DaemonProcess, cluster: str) -> None:
    with gateway.client() as c:
        status = c.status()
        assert status["loading"] is None and status["device"].startswith("ray (2 replica(s), 0.5 GPU each)"), status
        assert {m["id"] for m in c.models()} >= {CLASSICAL}
    assert re.search(r"\b1(\.0)?/2(\.0)? GPU", ray_status(cluster)), "two replicas of 0.5 GPU should hold 1 of the 2 GPUs"


def test_eight_clients_five_jobs_each_every_job_answered_once(gateway: DaemonProcess, tiny_model_dir: Path) -> None:
    with gateway.client() as c:
        before = c.status()["stats"]
    results: dict[int, Counter[str]] = {}
    states: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with gateway.client(heartbeat=0.5) as c:
                jobs = [submit(c, str(tiny_model_dir) if (n + i) % 2 else CLASSICAL, seed=n * 10 + i, block=False) for i in range(5)]
                counts: Counter[str] = Counter()
                deadline = time.monotonic() + 150
                while not all(j.finished for j in jobs):
                    assert time.monotonic() < deadline, [j.state for j in jobs]
                    for msg in c.pump(0.1):
                        if msg.type in ("result", "error", "cancelled") and msg.job:
                            counts[msg.job] += 1
                c.pump(0.3)  # a duplicate would come right behind
                for msg in c.pump(0.0):
                    if msg.type in ("result", "error", "cancelled") and msg.job:
                        counts[msg.job] += 1
                results[n] = counts
                states[n] = [j.state for j in jobs]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert all(s == ["done"] * 5 for s in states.values()) and len(states) == 8, states
    answered = Counter()
    for counts in results.values():
        answered.update(counts)
    assert len(answered) == 40 and set(answered.values()) == {1}, answered  # none lost, none twice
    with gateway.client() as c:
        after = c.status()["stats"]
    assert after.get("jobs_done", 0) - before.get("jobs_done", 0) == 40
    assert after.get("jobs_failed", 0) == before.get("jobs_failed", 0)


def test_jobs_go_to_the_replica_that_holds_their_model(gateway: DaemonProcess, tiny_model_dir: Path) -> None:
    tiny = str(tiny_model_dir)
    with gateway.client() as c:
        for model in (tiny, CLASSICAL, tiny, CLASSICAL):  # each model settles on a replica
            c.wait(submit(c, model), timeout=60).raise_for_error()
        time.sleep(1.5)  # the replicas' model lists reach the router
        ran: dict[str, set[str]] = {tiny: set(), CLASSICAL: set()}
        for i in range(8):
            model = tiny if i % 2 else CLASSICAL
            ran[model].add(replica_of(c.wait(submit(c, model, seed=i), timeout=60).raise_for_error()))
    assert len(ran[tiny]) == 1 and len(ran[CLASSICAL]) == 1, ran
    assert ran[tiny] != ran[CLASSICAL], ran


RUNS_ON = r"job {} runs on Ray replica (\S+) on \S+ \(pid (\d+)\); before it: (\d+) job\(s\), (\d+) still running, " \
          r"(\d+) cancelled, (\d+) step\(s\) run after a cancel"


def runs_on(gateway: DaemonProcess, job_id: str) -> tuple[str, int, dict[str, int]]:
    """Where the daemon's log says `job_id` ran: replica, pid, and what that replica had done before."""
    found = re.findall(RUNS_ON.format(job_id), gateway.log())
    assert found, gateway.log()[-3000:]
    replica, pid, *counts = found[-1]
    return replica, int(pid), dict(zip(("jobs", "threads", "cancelled", "steps_after_cancel"), map(int, counts), strict=True))


def test_cancel_stops_a_running_job_within_a_step(gateway: DaemonProcess, tiny_model_dir: Path) -> None:
    tiny = str(tiny_model_dir)
    with gateway.client() as c:
        job = submit(c, tiny, steps=150, block=False)
        wait_denoising(c, job, step=3)
        reply = c.cancel(job)
        assert reply["state"] == "cancelling", reply
        at_cancel = job.step
        t0 = time.monotonic()
        while not job.finished:
            assert time.monotonic() - t0 < 5, job
            c.pump(0.01)
        assert job.state == "cancelled"
        assert job.step - at_cancel <= 5, (at_cancel, job.step)  # what was already on its way (a step is ~10 ms here)
        replica, _, before = runs_on(gateway, job.id)
        # The replica itself: its job thread ended, and at most one step ran after the cancel
        # (the one under way).  Its next job's log line says so; affinity sends it there.
        # (Had the thread gone on, the 140-odd steps left would take over a second.)
        time.sleep(0.3)
        for i in range(6):
            nxt = c.wait(submit(c, tiny, seed=i), timeout=30).raise_for_error()
            there, _, after = runs_on(gateway, nxt.id)
            if there == replica:
                break
        else:
            pytest.fail(f"no later job of the model ran on replica {replica}")
    assert after["threads"] == 0, after
    assert after["cancelled"] == before["cancelled"] + 1, (before, after)
    assert after["steps_after_cancel"] - before["steps_after_cancel"] <= 1, (before, after)


def test_a_replica_killed_mid_job_the_job_is_retried_on_another(gateway: DaemonProcess, tiny_model_dir: Path) -> None:
    with gateway.client(heartbeat=0.5) as c:
        job = submit(c, str(tiny_model_dir), steps=150, block=False)
        wait_denoising(c, job, step=2)
        victim, pid, _ = runs_on(gateway, job.id)
        os.kill(pid, signal.SIGKILL)
        c.wait(job, timeout=120)
        print(f"replica {victim} killed mid-job: the job {job.state}", job.error.message if job.error else replica_of(job))
        if job.state == "done":  # retried on the other replica, from the start
            assert not replica_of(job).startswith(victim)
            assert "retrying on another replica" in gateway.log()
        else:  # or a failure that says what happened
            assert job.state == "failed" and "replica" in job.error.message and "died" in job.error.message, job.error
        assert c.ping(timeout=5)
        # Serve replaces the dead replica; jobs keep running meanwhile
        c.wait(submit(c, CLASSICAL), timeout=120).raise_for_error()


def test_the_gateway_killed_and_restarted_a_client_reconnects(
    gateway: DaemonProcess, tiny_model_dir: Path, cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that finds the daemon by itself, through its connection file, as the plugins do.
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(gateway.runtime_dir))
    monkeypatch.setenv("INPAINTD_ENDPOINT", gateway.endpoint)
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    monkeypatch.delenv("INPAINTD_CONNECTION_FILE", raising=False)
    c = Client(heartbeat=0.5, lost_after=60.0)
    restarted: DaemonProcess | None = None
    try:
        job = submit(c, str(tiny_model_dir), steps=150, block=False)
        wait_denoising(c, job)
        old_instance = c.daemon_instance
        gateway.proc.kill()
        gateway.proc.wait()
        # the same endpoint and runtime folder, the same cluster: it takes the deployment over
        restarted = start_daemon(gateway.runtime_dir.parent, *gateway_args(tiny_model_dir, cluster), endpoint=gateway.endpoint,
                                 ready_timeout=180)
        t0 = time.monotonic()
        while not job.finished:
            c.pump(0.1)
            assert time.monotonic() - t0 < 60, "the client did not notice the restart"
        assert job.state == LOST
        nxt = c.wait(submit(c, str(tiny_model_dir)), timeout=120).raise_for_error()
        assert nxt.state == "done" and c.daemon_instance != old_instance and c.reconnects >= 1
        assert replica_of(nxt)
    finally:
        c.close()
        if restarted is not None:
            restarted.stop()



def test_the_cluster_going_away_fails_its_jobs_and_the_gateway_keeps_answering(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Its own head: this one is ended mid-job.
    with ray_head(num_gpus=0) as address:
        args = ["--model", str(tiny_model_dir), "--device", "cpu", "--executor", "ray", "--ray-address", address]
        with start_daemon(tmp_path / "g", *args, ready_timeout=180) as d, d.client(heartbeat=0.5) as c:
            # A few jobs of ~1.5 s each, one at a time on the one replica: the cluster goes
            # during the first; what is running or next fails with the reason.
            jobs = [submit(c, str(tiny_model_dir), steps=150, seed=i, block=False) for i in range(4)]
            wait_denoising(c, jobs[0])
            assert kill_session(HEADS[address].pid) >= 2  # the whole cluster at once: its session, replicas too
            for job in jobs:
                c.wait(job, timeout=60)
            assert {j.state for j in jobs} <= {"done", "failed"}, jobs
            failed = [j for j in jobs if j.state == "failed"]
            assert len(failed) >= 2 and all("Ray cluster" in j.error.message for j in failed), [j.error for j in failed]
            assert c.ping(timeout=5) and c.status()["loading"] is None
            again = c.wait(submit(c, str(tiny_model_dir)), timeout=30)
            assert again.state == "failed" and "Ray cluster" in again.error.message, again.error
            assert d.alive()



def test_autoscaling_adds_a_replica_while_jobs_queue(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`--replicas 1:2`: one replica at first; while jobs keep queueing, Serve's autoscaler
    (upscale delay 2 s) starts the second, and jobs then run on both."""
    with ray_head(num_gpus=0) as address:
        args = ["--model", str(tiny_model_dir), "--device", "cpu", "--executor", "ray", "--ray-address", address,
                "--replicas", "1:2"]
        with start_daemon(tmp_path / "g", *args, ready_timeout=180) as d, d.client(heartbeat=0.5) as c:
            assert re.search(r"1 replica\(s\) of InpaintReplica up", d.log()), d.log()[-2000:]  # MIN at start
            first = c.wait(submit(c, str(tiny_model_dir)), timeout=120).raise_for_error()
            seen = {replica_of(first)}
            deadline = time.monotonic() + 120
            while len(seen) < 2:
                assert time.monotonic() < deadline, f"no second replica after 120 s of queued jobs (seen {seen})"
                batch = [submit(c, str(tiny_model_dir), steps=20, seed=i, block=False) for i in range(6)]
                for job in batch:
                    seen.add(replica_of(c.wait(job, timeout=120).raise_for_error()))
            print(f"[ray] replicas that ran jobs: {sorted(seen)}")
