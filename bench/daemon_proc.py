"""A real daemon in its own process, started the way tests/conftest.py starts one.

Copied rather than imported so that benchmarks need neither pytest nor the tests folder;
the approach (own port, runtime folder and signing key; wait until the default model is
warm) is the same, so a benchmarked daemon is what a plugin talks to.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from protocol.client import Client, DaemonUnavailable, Job
from protocol.messages import JobOptions

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, workdir: Path, *serve_args: str, ready_timeout: float = 120.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.key = secrets.token_hex(16).encode("ascii")
        self.log_path = workdir / "daemon.log"
        env = dict(os.environ, INPAINTD_KEY=self.key.decode(), INPAINTD_RUNTIME_DIR=str(workdir / "runtime"), PYTHONUNBUFFERED="1")
        env.pop("INPAINTD_ENDPOINT", None)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backend", "serve", "--bind", self.endpoint, *serve_args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        with self.client() as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
                try:
                    c.ping(timeout=1.0)
                    break
                except DaemonUnavailable:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"daemon did not answer within {ready_timeout} s")
            while c.status()["loaded_model"] is None and time.monotonic() < deadline:
                time.sleep(0.1)

    def client(self) -> Client:
        return Client(self.endpoint, key=self.key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def daemon_job(client: Client, image: np.ndarray, mask: np.ndarray, options: JobOptions) -> Job:
    """Submit and wait, zero-copy from the arrays: what an editor plugin does."""
    h, w, c = image.shape
    job = client.inpaint(memoryview(image).cast("B"), w, h, c, memoryview(mask).cast("B"), options, timeout=600)
    return job
