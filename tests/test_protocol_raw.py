"""The wire protocol, spoken by hand from protocol/PROTOCOL.md alone.

Nothing here imports inpaintd_protocol.client or inpaintd_protocol.wire: frames are built with pyzmq,
msgpack and hmac exactly as PROTOCOL.md describes them, so a passing run shows that a
client written in another language from the document would work.  The daemon is a real
process (the `daemon` fixture of conftest.py: classical engine, auth on).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

VERSION = 1  # PROTOCOL.md: the `v` this document describes
STAGES = {"queued", "loading", "preparing", "encoding", "denoising", "decoding", "compositing"}


# -- a raw client, as PROTOCOL.md section "Framing" and "Authentication" describe ------------


class Raw:
    def __init__(self, endpoint: str, key: bytes | None) -> None:
        self.key = key
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def sign(self, header: bytes) -> bytes:
        if not self.key:
            return b""
        return hmac.new(self.key, header, hashlib.sha256).hexdigest().encode("ascii")

    def frames(
        self,
        type: str,
        body: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        *,
        id: str | None = None,
        v: int = VERSION,
        ts: float | None = None,
    ) -> tuple[str, list[bytes]]:
        buffers = buffers or []
        msg_id = id or uuid.uuid4().hex
        header = {
            "v": v,
            "id": msg_id,
            "type": type,
            "ts": time.time() if ts is None else ts,
            "body": body or {},
            "buffers": [len(b) for b in buffers],
        }
        packed = msgpack.packb(header, use_bin_type=True)
        return msg_id, [packed, *buffers, self.sign(packed)]

    def send(self, type: str, body: dict[str, Any] | None = None, buffers: list[bytes] | None = None, **kw: Any) -> str:
        msg_id, frames = self.frames(type, body, buffers, **kw)
        self.sock.send_multipart(frames)
        return msg_id

    def recv(self, timeout: float = 10.0) -> tuple[dict[str, Any], list[bytes]]:
        assert self.sock.poll(int(timeout * 1000), zmq.POLLIN), f"no message from the daemon within {timeout} s"
        frames = self.sock.recv_multipart()
        assert len(frames) >= 2, frames
        raw_header, buffers, signature = frames[0], frames[1:-1], frames[-1]
        # Every daemon message is signed with the same key, header frame only.
        assert signature == self.sign(raw_header), "daemon message carries a wrong signature"
        header = msgpack.unpackb(raw_header, raw=False)
        assert isinstance(header, dict)
        assert header["v"] == VERSION
        assert isinstance(header["id"], str) and header["id"]
        assert isinstance(header["type"], str)
        assert isinstance(header["ts"], float) and abs(header["ts"] - time.time()) < 60
        assert isinstance(header["body"], dict)
        assert header["buffers"] == [len(b) for b in buffers]
        return header, buffers

    def reply_to(self, msg_id: str, timeout: float = 10.0) -> tuple[dict[str, Any], list[bytes]]:
        """The reply whose `re` is msg_id; job events that arrive meanwhile are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            header, buffers = self.recv(max(0.01, deadline - time.monotonic()))
            if header.get("re") == msg_id:
                return header, buffers

    def request(
        self, type: str, body: dict[str, Any] | None = None, buffers: list[bytes] | None = None, **kw: Any
    ) -> tuple[dict[str, Any], list[bytes]]:
        return self.reply_to(self.send(type, body, buffers, **kw))


@pytest.fixture(scope="module")
def raw(daemon) -> Raw:
    r = Raw(daemon.endpoint, daemon.key)
    yield r
    r.close()


def assert_error(header: dict[str, Any], code: str, re_id: str | None) -> dict[str, Any]:
    assert header["type"] == "error", header
    body = header["body"]
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if re_id is not None:
        assert header.get("re") == re_id
    return body


# -- tests ---------------------------------------------------------------------------------------


def test_connection_file(daemon) -> None:
    """PROTOCOL.md "Connection files": name, location, mode 0600, fields."""
    host_port = daemon.endpoint.split("://", 1)[1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", host_port).strip("_")
    path = daemon.runtime_dir / f"connection-{safe}.json"
    assert path.is_file(), list(daemon.runtime_dir.iterdir())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["endpoint"] == daemon.endpoint
    assert data["key"].encode("ascii") == daemon.key
    assert data["signature_scheme"] == "hmac-sha256"
    assert isinstance(data["pid"], int) and isinstance(data["instance"], str)


def test_hello(raw: Raw) -> None:
    msg_id = raw.send("hello", {"client": "raw-test"})
    header, buffers = raw.reply_to(msg_id)
    assert header["type"] == "hello_reply" and header["re"] == msg_id and buffers == []
    body = header["body"]
    assert body["protocol_version"] == VERSION
    assert isinstance(body["daemon_version"], str)
    assert re.fullmatch(r"[0-9a-f]{32}", body["instance"])
    assert body["auth"] is True
    assert body["default_model"] == "patchmatch"
    ids = {m["id"] for m in body["models"]}
    assert {"opencv-telea", "opencv-ns"} <= ids
    for m in body["models"]:
        assert set(m) == {"id", "engine", "kind", "available", "native_size", "family", "detail", "label",
                          "size_multiple", "schedulers", "defaults", "takes", "memory"}
        assert set(m["takes"]) == {"negative_prompt", "reference_image", "lora", "textual_inversion"}
        assert isinstance(m["size_multiple"], int) and m["size_multiple"] >= 1
    assert "classical" in body["engines"]
    assert "default" in body["schedulers"]
    assert {"progress", "cancel", "fetch", "stride", "hmac-sha256"} <= set(body["capabilities"])
    limits = body["limits"]
    for name in ("max_side", "max_pixels", "max_variants", "max_steps", "max_prompt_chars", "max_grow",
                 "max_feather", "max_padding", "max_queue_per_client", "max_message_bytes"):
        assert isinstance(limits[name], int) and limits[name] > 0, name
    assert isinstance(body["notices"], list)
    assert "device" in body and "loaded_model" in body
    raw.instance = body["instance"]


def _source(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_submit_strided_mask_to_result(raw: Raw) -> None:
    W, H = 96, 64
    image = _source(W, H)
    image_bytes = image.tobytes()  # tight: stride W*3
    mask_stride = W + 13  # padded rows; the padding bytes must be ignored
    mask = np.full((H, mask_stride), 0xAA, dtype=np.uint8)  # garbage in the padding
    mask[:, :W] = 0
    mx, my, mw, mh = 40, 28, 16, 8
    mask[my : my + mh, mx : mx + mw] = 255
    grow, feather = 4, 4
    body = {
        "image": {"frame": 1, "width": W, "height": H, "channels": 3, "stride": W * 3},
        "mask": {"frame": 2, "width": W, "height": H, "channels": 1, "stride": mask_stride},
        "prompt": "",
        "seed": 7,
        "variants": 2,
        "grow": grow,
        "feather": feather,
        "padding": 8,
    }
    submit_id = raw.send("submit", body, [image_bytes, mask.tobytes()])

    header, _ = raw.reply_to(submit_id)
    assert header["type"] == "accepted", header
    job = header["job"]
    acc = header["body"]
    assert acc["job"] == job and re.fullmatch(r"[0-9a-f]{16}", job)
    assert isinstance(acc["position"], int) and acc["position"] >= 0
    assert acc["seeds"] == [7, 8]
    assert acc["model"] == "patchmatch"
    assert acc["instance"] == getattr(raw, "instance", acc["instance"])

    stages = []
    while True:
        header, buffers = raw.recv(30)
        assert header.get("job") == job
        assert "re" not in header  # events are not replies
        if header["type"] != "progress":
            break
        p = header["body"]
        assert p["job"] == job and p["stage"] in STAGES
        assert isinstance(p["step"], int) and isinstance(p["total_steps"], int) and 0 <= p["step"] <= p["total_steps"]
        assert isinstance(p["elapsed"], float)
        stages.append(p["stage"])
    assert header["type"] == "result", header
    assert stages[0] in ("loading", "preparing") and "preparing" in stages
    assert stages.index("preparing") < stages.index("denoising") < stages.index("compositing")
    assert stages[-1] == "compositing"

    res = header["body"]
    assert res["job"] == job and res["model"] == "patchmatch" and res["engine"] == "classical"
    region = res["region"]
    rx, ry, rw, rh = region["x"], region["y"], region["width"], region["height"]
    # the region holds the mask's box, inside the image
    assert 0 <= rx <= mx and 0 <= ry <= my and mx + mw <= rx + rw <= W and my + mh <= ry + rh <= H
    assert res["processing_size"] == [rw, rh]  # the classical engine has no native size
    for name in ("prepare", "generate", "composite", "total", "queued", "elapsed"):
        assert isinstance(res["timings"][name], float)

    assert len(res["variants"]) == 2 and len(buffers) == 2
    reach = grow + feather + 1
    for i, v in enumerate(res["variants"]):
        assert v["index"] == i and v["seed"] == 7 + i
        assert (v["x"], v["y"]) == (rx, ry)
        desc = v["image"]
        assert desc == {"frame": i + 1, "width": rw, "height": rh, "channels": 4, "stride": rw * 4}
        data = buffers[desc["frame"] - 1]
        assert len(data) == desc["stride"] * desc["height"] == header["buffers"][i]
        layer = np.frombuffer(data, dtype=np.uint8).reshape(rh, desc["stride"])[:, : rw * 4].reshape(rh, rw, 4)
        src = image[ry : ry + rh, rx : rx + rw]
        # far outside the mask (beyond grow + feather) the layer is the source, bit for bit
        ys, xs = np.mgrid[ry : ry + rh, rx : rx + rw]
        far = (xs < mx - reach) | (xs >= mx + mw + reach) | (ys < my - reach) | (ys >= my + mh + reach)
        assert far.any()
        assert np.array_equal(layer[..., :3][far], src[far])
        assert (layer[..., 3] == 255).all()  # an RGB source gives an opaque layer
        # inside the selection the pixels were regenerated
        inside = (slice(my - ry, my - ry + mh), slice(mx - rx, mx - rx + mw))
        assert not np.array_equal(layer[inside][..., :3], src[inside])

    # results are kept: fetch sends the terminal event again, as a reply
    fetch_id = raw.send("fetch", {"job": job})
    header, buffers = raw.reply_to(fetch_id)
    assert header["type"] == "result" and header["job"] == job and header["body"]["variants"] == res["variants"]
    assert len(buffers) == 2
    # cancelling a finished job changes nothing
    header, _ = raw.request("cancel", {"job": job})
    assert header["type"] == "cancel_reply" and header["body"] == {"job": job, "state": "finished"}


def test_submit_rejections(raw: Raw) -> None:
    W, H = 16, 8
    image = bytes(W * H * 3)
    mask = bytes([255]) * (W * H)
    good_image = {"frame": 1, "width": W, "height": H, "channels": 3}
    good_mask = {"frame": 2, "width": W, "height": H, "channels": 1}

    # stride shorter than a row
    header, _ = raw.request("submit", {"image": good_image, "mask": {**good_mask, "stride": W - 1}}, [image, mask])
    assert assert_error(header, "bad_value", None)["details"] == {"field": "mask.stride"}
    # frame bytes do not match the descriptor
    header, _ = raw.request("submit", {"image": good_image, "mask": good_mask}, [image, mask[:-1]])
    assert_error(header, "bad_image", None)
    # an option out of range names the field
    header, _ = raw.request("submit", {"image": good_image, "mask": good_mask, "variants": 9}, [image, mask])
    assert assert_error(header, "bad_value", None)["details"] == {"field": "variants"}
    header, _ = raw.request("submit", {"image": good_image, "mask": good_mask, "steps": 2.5}, [image, mask])
    assert_error(header, "bad_field_type", None)
    # nothing selected
    header, _ = raw.request("submit", {"image": good_image, "mask": good_mask}, [image, bytes(W * H)])
    assert_error(header, "empty_mask", None)
    # missing mask
    header, _ = raw.request("submit", {"image": good_image}, [image])
    assert_error(header, "missing_field", None)
    # unknown model
    header, _ = raw.request("submit", {"image": good_image, "mask": good_mask, "model": "no-such-model"}, [image, mask])
    assert_error(header, "unknown_model", None)
    # header declares a buffer that did not come
    msg_id, frames = raw.frames("submit", {"image": good_image, "mask": good_mask}, [image, mask])
    raw.sock.send_multipart([frames[0], frames[1], frames[-1]])
    header, _ = raw.reply_to(msg_id)
    assert_error(header, "bad_frame", msg_id)
    # no such job
    header, _ = raw.request("cancel", {"job": "0123456789abcdef"})
    assert_error(header, "not_found", None)


def test_bad_signature(raw: Raw) -> None:
    msg_id, frames = raw.frames("ping")
    frames[-1] = b"0" * 64
    raw.sock.send_multipart(frames)
    header, _ = raw.reply_to(msg_id)
    assert_error(header, "bad_signature", msg_id)
    # no signature at all (auth is on)
    msg_id, frames = raw.frames("ping")
    frames[-1] = b""
    raw.sock.send_multipart(frames)
    header, _ = raw.reply_to(msg_id)
    assert_error(header, "bad_signature", msg_id)


def test_replayed_message(raw: Raw) -> None:
    msg_id, frames = raw.frames("ping")
    raw.sock.send_multipart(frames)
    header, _ = raw.reply_to(msg_id)
    assert header["type"] == "pong"
    raw.sock.send_multipart(frames)  # the same signed message again
    header, _ = raw.reply_to(msg_id)
    body = assert_error(header, "bad_signature", msg_id)
    assert "already used" in body["message"]
    # a correctly signed message from outside the replay window
    header, _ = raw.request("ping", ts=time.time() - 3600)
    assert_error(header, "bad_signature", None)


def test_version_mismatch(raw: Raw) -> None:
    msg_id = raw.send("ping", v=VERSION + 1)
    header, _ = raw.reply_to(msg_id)
    body = assert_error(header, "version_mismatch", msg_id)
    assert str(VERSION + 1) in body["message"] and str(VERSION) in body["message"]
    assert body["details"] == {"client_version": VERSION + 1, "daemon_version": VERSION}
    assert header["v"] == VERSION


def test_version_is_checked_right_after_the_signature(raw: Raw) -> None:
    """Section 4 and 8: nothing in the header but its signature is judged before `v`; a
    client of another version, whose frames this version would not understand, hears so."""
    header = {"v": VERSION + 1, "id": uuid.uuid4().hex, "type": "ping", "ts": time.time(), "body": {}, "buffers": [5]}
    packed = msgpack.packb(header, use_bin_type=True)
    raw.sock.send_multipart([packed, raw.sign(packed)])  # declares a buffer frame that is not there
    reply, _ = raw.reply_to(header["id"])
    assert assert_error(reply, "version_mismatch", header["id"])["details"] == {"client_version": VERSION + 1, "daemon_version": VERSION}
    # and with version 1, the same frames are a bad frame
    header = {**header, "v": VERSION, "id": uuid.uuid4().hex}
    packed = msgpack.packb(header, use_bin_type=True)
    raw.sock.send_multipart([packed, raw.sign(packed)])
    reply, _ = raw.reply_to(header["id"])
    assert_error(reply, "bad_frame", header["id"])


def test_a_lone_header_frame_gets_bad_frame_naming_it(raw: Raw) -> None:
    """Section 8: `bad_frame` carries `re` whenever the header's id could be read, also when
    the signature frame is missing altogether."""
    msg_id, frames = raw.frames("ping")
    raw.sock.send_multipart(frames[:1])
    header, _ = raw.recv()
    assert_error(header, "bad_frame", msg_id)
    assert header["re"] == msg_id
    # a lone frame that is no header gets no `re`
    raw.sock.send_multipart([b"\xc1"])
    header, _ = raw.recv()
    assert_error(header, "bad_frame", None)
    assert "re" not in header


def test_unknown_type(raw: Raw) -> None:
    msg_id = raw.send("paint_me_a_picture")
    header, _ = raw.reply_to(msg_id)
    body = assert_error(header, "unknown_type", msg_id)
    assert "paint_me_a_picture" in body["message"]
    # replies are not requests
    header, _ = raw.request("pong")
    assert_error(header, "unknown_type", None)


def test_undecodable_header(raw: Raw) -> None:
    raw.sock.send_multipart([b"\xc1 not msgpack", b""])
    header, _ = raw.recv()
    assert_error(header, "bad_frame", None)
    assert "re" not in header


def test_daemon_still_answers(raw: Raw, daemon) -> None:
    msg_id = raw.send("ping")
    header, _ = raw.reply_to(msg_id)
    assert header["type"] == "pong"
    body = header["body"]
    assert body["instance"] == getattr(raw, "instance", body["instance"])
    assert isinstance(body["time"], float) and isinstance(body["uptime"], float)
    header, _ = raw.request("status")
    assert header["type"] == "status_reply"
    assert header["body"]["running"] == [] and header["body"]["queued"] == []
    assert daemon.alive()


# -- a daemon of their own: slow start, slow jobs (fault injection, tests/faults.py) --------------

DOC = (Path(__file__).resolve().parent.parent / "protocol" / "PROTOCOL.md").read_text(encoding="utf-8")


def _small_submit(**options: Any) -> tuple[dict[str, Any], list[bytes]]:
    W, H = 64, 48
    mask = np.zeros((H, W), np.uint8)
    mask[16:32, 24:40] = 255
    body = {"image": {"frame": 1, "width": W, "height": H, "channels": 3},
            "mask": {"frame": 2, "width": W, "height": H, "channels": 1}, **options}
    return body, [_source(W, H).tobytes(), mask.tobytes()]


def _events(r: Raw, job: str, until: str = "", timeout: float = 30.0) -> list[dict[str, Any]]:
    """The job's events (headers) up to its terminal one, or up to a progress of stage `until`."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        header, _ = r.recv(max(0.01, deadline - time.monotonic()))
        if header.get("job") != job or "re" in header:
            continue
        seen.append(header)
        if header["type"] != "progress" or header["body"]["stage"] == until:
            return seen


def _waited_for_a_load(events: list[dict[str, Any]]) -> list[tuple[str, int, int, float]]:
    """The job's progress, checked for one model load: `loading` 0/1 first, again about
    every second with `elapsed` growing, then 1/1, then `preparing`, on one clock."""
    progress = [(e["body"]["stage"], e["body"]["step"], e["body"]["total_steps"], e["body"]["elapsed"])
                for e in events if e["type"] == "progress" and e["body"]["stage"] != "queued"]
    waiting = [p for p in progress if p[:3] == ("loading", 0, 1)]
    assert progress[: len(waiting)] == waiting, progress  # the first events, before anything else
    assert len(waiting) >= 2, progress  # again after about a second
    assert waiting[0][3] < 0.5 and 0.8 < waiting[1][3] - waiting[0][3] < 1.6, progress
    assert progress[len(waiting)][:3] == ("loading", 1, 1), progress
    assert progress[len(waiting) + 1][0] == "preparing", progress
    elapsed = [p[3] for p in progress]
    assert elapsed == sorted(elapsed), progress  # one clock, counting on
    return progress


@pytest.mark.slow
def test_jobs_waiting_for_a_model_load_hear_loading(tmp_path, tiny_model_dir) -> None:
    """Section 9.14: a daemon still loading its default model says so (`loading` in status
    and hello), accepts jobs, and the job next in line hears `loading` with its elapsed time
    about every second until the model is ready; the job behind it hears only its place,
    then, as it loads a model of its own, `loading` about every second too (6.1)."""
    from daemons import start_daemon

    delay = 2.2
    with start_daemon(tmp_path, "--engine", "classical", faults=tiny_model_dir, fault_load_delay=delay, wait_loaded=False) as d:
        r = Raw(d.endpoint, d.key)
        try:
            t0 = time.monotonic()
            status, _ = r.request("status")
            assert status["body"]["loading"] == "patchmatch" and status["body"]["loaded_model"] is None
            hello, _ = r.request("hello")
            assert hello["body"]["loading"] == "patchmatch"
            body, buffers = _small_submit()
            other, other_buffers = _small_submit(model="fault-injector", steps=2)
            # pipelined, and every message read: a job's first event may come before the next reply
            ids = [r.send("submit", body, buffers), r.send("submit", other, other_buffers), r.send("submit", body, buffers)]
            messages: list[dict[str, Any]] = []
            took = 0.0  # until the first result
            while sum(m["type"] == "result" for m in messages) < 3:
                header, _ = r.recv(30)
                messages.append(header)
                took = took or (time.monotonic() - t0 if header["type"] == "result" else 0.0)
            accepted = [next(m for m in messages if m.get("re") == i) for i in ids]
            assert [a["type"] for a in accepted] == ["accepted"] * 3, accepted
            assert [a["body"]["position"] for a in accepted] == [0, 1, 2]
            first, second, third = ([m for m in messages if m.get("job") == a["job"] and "re" not in m] for a in accepted)
            assert first[-1]["type"] == "result", first[-1]
            assert _waited_for_a_load(first)[-1][3] >= delay - 0.5
            timings = first[-1]["body"]["timings"]
            assert timings["queued"] + timings["elapsed"] <= took
            # the second job loads its own model, slowly
            assert second[-1]["type"] == "result", second[-1]
            assert _waited_for_a_load(second)[-1][3] >= delay
            # the third one's model is warm: no `loading` at all
            assert third[-1]["type"] == "result"
            assert "loading" not in [e["body"].get("stage") for e in third[:-1]]
            status, _ = r.request("status")
            assert status["body"]["loading"] is None and status["body"]["loaded_model"] == "patchmatch"
        finally:
            r.close()


def test_cancelled_events_carry_the_documented_code_and_reason(tmp_path, tiny_model_dir) -> None:
    """Section 6.3: `code` says why (queued, running, shutdown); `reason` is the text of the
    document's table for that code."""
    from daemons import start_daemon

    table = dict(re.findall(r'^\| `([a-z_]+)` \| [^|]+ \| `"([^"]+)"` \|$', DOC.split("### 6.3", 1)[1].split("###", 1)[0], re.M))
    assert set(table) == {"queued", "running", "shutdown"}, table
    with start_daemon(tmp_path, "--engine", "classical", faults=tiny_model_dir) as d:
        r = Raw(d.endpoint, d.key)
        try:
            body, buffers = _small_submit(model="fault-injector", prompt="fault:sleep=0.05", steps=100)
            running, _ = r.request("submit", body, buffers)
            _events(r, running["job"], until="denoising")
            queued, _ = r.request("submit", body, buffers)
            for job, state, code in ((queued["job"], "cancelled", "queued"), (running["job"], "cancelling", "running")):
                cancel_id = r.send("cancel", {"job": job})
                reply = ended = None
                while reply is None or ended is None:  # a queued job's event comes first (5.5)
                    header, _ = r.recv()
                    if header.get("re") == cancel_id:
                        reply = header
                    elif header.get("job") == job and header["type"] != "progress":
                        ended = header
                assert reply["body"]["state"] == state, reply
                assert ended["type"] == "cancelled", ended
                assert ended["body"] == {"job": job, "code": code, "reason": table[code]}
            running, _ = r.request("submit", body, buffers)
            _events(r, running["job"], until="denoising")
            queued, _ = r.request("submit", body, buffers)
            r.request("shutdown")
            for job in (queued["job"], running["job"]):
                ended = _events(r, job)[-1]
                assert ended["type"] == "cancelled" and ended["body"] == {"job": job, "code": "shutdown", "reason": table["shutdown"]}
        finally:
            r.close()
