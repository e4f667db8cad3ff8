"""The wire protocol, spoken by hand from protocol/PROTOCOL.md alone.

Nothing here imports protocol.client or protocol.wire: frames are built with pyzmq,
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

    def request(self, type: str, body: dict[str, Any] | None = None, buffers: list[bytes] | None = None, **kw: Any) -> tuple[dict[str, Any], list[bytes]]:
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
    assert body["default_model"] == "opencv-telea"
    ids = {m["id"] for m in body["models"]}
    assert {"opencv-telea", "opencv-ns"} <= ids
    for m in body["models"]:
        assert set(m) == {"id", "engine", "kind", "available", "native_size", "detail"}
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
    assert acc["model"] == "opencv-telea"
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
    assert res["job"] == job and res["model"] == "opencv-telea" and res["engine"] == "classical"
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
