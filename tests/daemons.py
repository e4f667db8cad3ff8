"""Start a real daemon in its own process and wait until it is warm.

Tests and benchmarks both need a daemon exactly as a plugin meets one: its own process,
port, runtime folder and signing key, the default model loaded.  This is that one helper,
importable without pytest (the benchmarks import it as `tests.daemons`, from the
checkout's root).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from inpaintd_protocol.client import Client, DaemonUnavailable

ROOT = Path(__file__).resolve().parents[1]  # the checkout: tests/ is one level down
FAULTS = Path(__file__).resolve().with_name("faults.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaemonProcess:
    endpoint: str
    key: bytes
    runtime_dir: Path
    log_path: Path
    proc: subprocess.Popen
    args: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a client process (CLI, editor) needs to find and talk to this daemon."""
        return {
            "INPAINTD_ENDPOINT": self.endpoint,
            "INPAINTD_KEY": self.key.decode("ascii"),
            "INPAINTD_RUNTIME_DIR": str(self.runtime_dir),
        }

    def curve_server_key(self) -> bytes | None:
        """The CURVE key from the connection file this daemon wrote (None before it is written,
        or for a daemon without --curve)."""
        for path in self.runtime_dir.glob("connection-*.json"):
            try:
                value = json.loads(path.read_text()).get("curve_server_key")
            except (OSError, ValueError):
                continue
            if value:
                return value.encode("ascii")
        return None

    def client(self, **kwargs) -> Client:
        kwargs.setdefault("curve_server_key", self.curve_server_key())
        return Client(self.endpoint, key=self.key, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(
    workdir: Path, *serve_args: str, ready_timeout: float = 120.0, endpoint: str | None = None, wait_loaded: bool = True,
    faults: Path | str | None = None, fault_load_delay: float = 0.0,
) -> DaemonProcess:
    """`inpaintd serve` in a subprocess, returned once it answers and (unless `wait_loaded`
    is false) it is ready: its default model's load is over (PROTOCOL.md 9.14).

    `faults`: a (diffusion) model for the "fault-injector" test model to wrap, served as
    an extra model if it is not one already (tests/faults.py); `fault_load_delay` with it:
    each model's first load takes that many seconds longer."""
    workdir.mkdir(parents=True, exist_ok=True)
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    key = secrets.token_hex(16).encode("ascii")
    runtime = workdir / "runtime"
    log_path = workdir / "daemon.log"
    env = dict(os.environ, INPAINTD_KEY=key.decode(), INPAINTD_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1",
               INPAINTD_DATA_DIR=str(workdir / "data"))
    env.pop("INPAINTD_ENDPOINT", None)
    serve = ["serve", "--bind", endpoint, *serve_args]
    if faults is None:
        args = [sys.executable, "-m", "inpaintd", *serve]
    else:
        args = [sys.executable, str(FAULTS), "--fault-model", str(faults), "--fault-load-delay", str(fault_load_delay), *serve]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    daemon = DaemonProcess(endpoint, key, runtime, log_path, proc, args)
    deadline = time.monotonic() + ready_timeout
    while True:
        if not daemon.alive():
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
        # A --curve daemon can be talked to only once its connection file (with the CURVE
        # key) is written, after it binds: a fresh client each try picks the key up.
        with daemon.client() as c:
            try:
                c.ping(timeout=1.0)
                break
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    daemon.stop()
                    raise RuntimeError(f"daemon did not answer within {ready_timeout} s:\n{daemon.log()}") from None
    if not wait_loaded:
        return daemon
    with daemon.client() as c:
        # Wait until the worker has the default model warm, so timings see a warm daemon.
        while c.status()["loading"] is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    return daemon
