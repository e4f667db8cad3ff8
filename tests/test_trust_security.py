"""Security: who may bind where, connection files, CURVE, models from the wire, bad signatures.

Real daemon processes throughout; clients find keys the way plugins do (connection file).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import ROOT, DaemonProcess, free_port, start_daemon

from inpaintd_protocol import wire
from inpaintd_protocol.client import Client, DaemonUnavailable
from inpaintd_protocol.messages import Code, JobOptions, ProtocolError, Type
from inpaintd_protocol.wire import Message


def serve(tmp_path: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, INPAINTD_RUNTIME_DIR=str(tmp_path / "rt"))
    env.pop("INPAINTD_KEY", None)
    return subprocess.run([sys.executable, "-m", "inpaintd", "serve", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_binding_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    out = serve(tmp_path, "--bind", f"tcp://0.0.0.0:{free_port()}", "--no-auth", "--engine", "classical")
    assert out.returncode == 2 and "refusing to listen" in out.stderr
    from inpaintd.daemon import Daemon  # the class refuses too, not only the CLI

    with pytest.raises(ValueError, match="without authentication"):
        Daemon(object(), f"tcp://0.0.0.0:{free_port()}", key=None)


def test_connection_file_is_private_and_found_by_clients(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    files = list(daemon.runtime_dir.glob("connection-*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.runtime_dir.stat().st_mode) & 0o077 == 0
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(daemon.runtime_dir))
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    with Client(daemon.endpoint) as c:  # no key given: read from the file
        assert c.key == daemon.key and c.ping() < 1.0
    with Client(daemon.endpoint.replace("127.0.0.1", "localhost")) as c:
        assert c.key == daemon.key and c.ping() < 1.0
    with Client(daemon.endpoint, key=b"wrong") as c, pytest.raises(ProtocolError) as err:
        c.ping(timeout=1.0)  # the daemon's answer cannot be verified with a wrong key...
    assert err.value.code == Code.BAD_SIGNATURE and "another key" in err.value.message  # ...and is not taken for silence


def test_unsigned_wrongly_signed_and_replayed_messages_are_refused_and_logged(daemon: DaemonProcess) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        codes = []
        ping = Message(type=Type.PING)
        signed = wire.encode(ping, daemon.key)
        for frames in (wire.encode(Message(type=Type.SHUTDOWN), None), wire.encode(Message(type=Type.SHUTDOWN), b"guess"),
                       signed, signed):
            sock.send_multipart(frames)
            assert sock.poll(5000)
            reply = wire.decode(sock.recv_multipart(), daemon.key)
            codes.append(reply.body.get("code", reply.type))
        assert codes == [Code.BAD_SIGNATURE, Code.BAD_SIGNATURE, Type.PONG, Code.BAD_SIGNATURE]
    finally:
        sock.close(0)
        ctx.term()
    assert daemon.alive()
    time.sleep(0.2)
    log = daemon.log()
    assert "refused (bad_signature)" in log and "replayed" in log


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE (built without libsodium)")
def test_curve_encryption_over_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest's own readiness client finds the CURVE key in the connection file once written
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path / "curve" / "runtime"))
    d = start_daemon(tmp_path / "curve", "--engine", "classical", "--curve")
    try:
        files = list(d.runtime_dir.glob("connection-*.json"))
        import json

        info = json.loads(files[0].read_text())
        assert len(info["curve_server_key"]) == 40  # Z85 of 32 bytes
        monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(d.runtime_dir))
        monkeypatch.delenv("INPAINTD_KEY", raising=False)
        image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        with Client(d.endpoint) as c:  # reads key and CURVE server key from the file
            assert c.curve_server_key is not None
            assert c.hello()["curve"] is True
            job = c.wait(c.submit(image.tobytes(), 64, 64, 3, mask.tobytes(), JobOptions()), timeout=30).raise_for_error()
            assert job.state == "done"
        # a plain-text client (right HMAC key, no CURVE) gets nowhere
        with Client(d.endpoint, key=d.key, curve_server_key=None) as plain, pytest.raises(DaemonUnavailable):
            plain.ping(timeout=1.5)
        # the environment variable route a remote client uses
        monkeypatch.setenv("INPAINTD_CONNECTION_FILE", str(files[0]))
        monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path / "elsewhere"))
        with Client() as remote:
            assert remote.endpoint == d.endpoint and remote.ping() < 1.0
    finally:
        d.stop()


def test_models_only_from_the_allowlist_and_pickles_refused(tmp_path: Path, daemon: DaemonProcess) -> None:
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    image = np.zeros((32, 32, 3), np.uint8).tobytes()
    mask = np.full((32, 32), 255, np.uint8).tobytes()
    with daemon.client() as c:
        for name in (str(ckpt), "/etc/passwd", "../../../etc/passwd", "some/repo", "x" * 5000, "a\x00b"):
            with pytest.raises(ProtocolError) as err:
                c.submit(image, 32, 32, 3, mask, JobOptions(model=name))
            assert err.value.code == Code.UNKNOWN_MODEL, (name, err.value)
    d = start_daemon(tmp_path / "pickle", "--engine", "classical", "--extra-model", str(ckpt))
    try:
        with d.client() as c:
            listed = {m["id"]: m for m in c.models()}
            assert listed[str(ckpt)]["available"] is False and "--allow-pickle" in listed[str(ckpt)]["detail"]
            with pytest.raises(ProtocolError) as err:
                c.submit(image, 32, 32, 3, mask, JobOptions(model=str(ckpt)))
        assert err.value.code == Code.MODEL_REFUSED and "pickle" in err.value.message
    finally:
        d.stop()
    out = serve(tmp_path, "--bind", f"tcp://127.0.0.1:{free_port()}", "--model", str(ckpt))
    assert out.returncode == 2 and "--allow-pickle" in out.stderr
