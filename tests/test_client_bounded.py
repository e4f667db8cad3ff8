"""Nothing a client does waits for ever (issue 17, part 2).

The hang these guard against: a DEALER whose CURVE handshake failed (the client had no
server key yet, or an old one) has no usable connection, and a blocking send on it never
returns.  `start_daemon(..., "--curve")` hung the suite on exactly that.  Every test here
has a tight timeout, so a recurrence fails naming the test instead of eating CI's time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import DaemonProcess, start_daemon

from inpaintd_protocol.client import Client, DaemonUnavailable
from inpaintd_protocol.messages import JobOptions

pytestmark = [
    pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE (built without libsodium)"),
    pytest.mark.timeout(60),
]

IMAGE = bytes(64 * 64 * 3)
MASK = b"\xff" * (64 * 64)


@pytest.fixture(scope="module")
def curve_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("curve"), "--engine", "classical", "--curve")
    yield d
    d.stop()


def _timed(call) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_no_server_key_fails_in_time_every_time_and_says_why(curve_daemon: DaemonProcess) -> None:
    """The exact hang: after the first attempt libzmq has dropped the connection's queue,
    and the second send used to block for ever."""
    with Client(curve_daemon.endpoint, key=curve_daemon.key, curve_server_key=None) as c:
        for _ in range(3):
            took, exc = _timed(lambda: c.ping(timeout=1.0))
            assert isinstance(exc, DaemonUnavailable), exc
            assert took < 3.0
        assert "CURVE" in str(exc) and "no server key" in str(exc)
        took, exc = _timed(lambda: c.submit(IMAGE, 64, 64, 3, MASK, JobOptions(), timeout=1.5))
        assert isinstance(exc, DaemonUnavailable) and took < 3.5
        # an editor's non-blocking submit never waits: the job is lost at once, with the reason
        start = time.monotonic()
        job = c.submit(IMAGE, 64, 64, 3, MASK, JobOptions(), block=False)
        assert time.monotonic() - start < 0.5
        assert job.state == "lost" and isinstance(job.error, DaemonUnavailable)
        assert not c.cancel_nowait("no-such-job")  # cannot go out: says so instead of blocking
        assert c.pump(0.1) == []


def test_stale_server_key_fails_in_time_and_says_why(curve_daemon: DaemonProcess) -> None:
    stale = zmq.curve_keypair()[0]
    with Client(curve_daemon.endpoint, key=curve_daemon.key, curve_server_key=stale) as c:
        for _ in range(2):
            took, exc = _timed(lambda: c.ping(timeout=1.0))
            assert isinstance(exc, DaemonUnavailable) and took < 3.0
        assert "not the daemon's" in str(exc)


def test_client_recovers_once_the_connection_file_has_the_key(
    curve_daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client started before the daemon wrote its file (or with an old file) connects by
    itself once the right file is there: each request re-reads it while it gets no answer."""
    written = next(curve_daemon.runtime_dir.glob("connection-*.json"))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    monkeypatch.delenv("INPAINTD_CONNECTION_FILE", raising=False)
    stale = json.loads(written.read_text())
    stale["curve_server_key"] = zmq.curve_keypair()[0].decode("ascii")
    (runtime / written.name).write_text(json.dumps(stale))  # an old daemon's file
    with Client(curve_daemon.endpoint) as c:
        took, exc = _timed(lambda: c.ping(timeout=1.0))
        assert isinstance(exc, DaemonUnavailable) and took < 3.0
        shutil.copy(written, runtime / written.name)  # the daemon (re)writes its file
        assert c.ping(timeout=5.0) < 5.0
        assert c.reconnects >= 1
        job = c.wait(c.submit(IMAGE, 64, 64, 3, MASK, JobOptions()), timeout=30).raise_for_error()
        assert job.state == "done"


def test_start_daemon_with_curve_comes_up(tmp_path: Path) -> None:
    """The call that hung on a fresh clone, with no runtime folder set in the test's environment."""
    d = start_daemon(tmp_path / "d", "--engine", "classical", "--curve", ready_timeout=40)
    try:
        with d.client() as c:
            assert c.hello()["curve"] is True
    finally:
        d.stop()


def test_no_daemon_at_all_is_bounded(tmp_path: Path) -> None:
    from daemons import free_port

    with Client(f"tcp://127.0.0.1:{free_port()}", key=b"k" * 32, curve_server_key=None) as c:
        for _ in range(2):
            took, exc = _timed(lambda: c.ping(timeout=0.5))
            assert isinstance(exc, DaemonUnavailable) and took < 2.0
            assert "start one with `inpaintd serve`" in str(exc)
