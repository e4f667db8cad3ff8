"""Hostile input: at least 10,000 malformed messages over a real socket to a real daemon.

Hypothesis draws batches of broken messages: random frames, truncated and oversized
msgpack, a wrong type in each header and submit field, out-of-range values, wrong pixel
byte counts, absurd dimensions, bad signatures, stale and replayed messages.  Every one
is built from a valid message by breaking exactly one thing, so the test knows what the
daemon's answer must name.  Properties checked for every message: exactly one reply, an
`error` with a known code (never `internal`), naming the broken field; the daemon stays
up; a valid job afterwards succeeds.  A failing batch is shrunk to the message at fault.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

hypothesis = pytest.importorskip("hypothesis")
from conftest import DaemonProcess, start_daemon  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from trust_helpers import record, rss  # noqa: E402

from inpaintd_protocol.messages import LIMITS, OPTION_RULES, Code, JobOptions  # noqa: E402

TARGET = 10_000
BATCH = 25
CODES = set(Code) - {Code.INTERNAL}
W, H = 8, 6
IMAGE = bytes(range(W * H * 3))
MASK = bytes([0, 255] * (W * H // 2))


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("fuzz-daemon"), "--engine", "classical", "--max-message-mb", "8")
    yield d
    d.stop()


# -- building messages ----------------------------------------------------------------------


class Case:
    """One malformed message and what the daemon must say about it."""

    def __init__(self, frames: list[bytes], *, re: str | None, names: str | None = None,
                 codes: set[str] | None = None, expect: str = "error") -> None:
        self.frames, self.re, self.names, self.codes, self.expect = frames, re, names, codes, expect

    def __repr__(self) -> str:
        return f"Case(re={self.re}, names={self.names!r}, codes={self.codes}, frames={[f[:120] for f in self.frames]!r})"


def sign(key: bytes, header: bytes) -> bytes:
    return hmac.new(key, header, hashlib.sha256).hexdigest().encode("ascii")


def base_header(type_: str = "submit", body: dict | None = None, buffers: list[bytes] | None = None) -> dict[str, Any]:
    if body is None and type_ == "submit":
        body = {"prompt": "x", "image": {"frame": 1, "width": W, "height": H, "channels": 3, "stride": W * 3},
                "mask": {"frame": 2, "width": W, "height": H, "channels": 1, "stride": W}}
    return {"v": 1, "id": uuid.uuid4().hex, "type": type_, "ts": time.time(), "body": body or {},
            "buffers": [len(b) for b in (buffers if buffers is not None else [IMAGE, MASK])]}


def packed(key: bytes, header: dict, buffers: list[bytes]) -> list[bytes]:
    raw = msgpack.packb(header, use_bin_type=True)
    return [raw, *buffers, sign(key, raw)]


I64 = st.integers(-2**63, 2**64 - 1)
NON_INT = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.floats(allow_nan=True),
                    st.binary(max_size=8), st.lists(I64, max_size=2), st.dictionaries(st.text(max_size=3), I64, max_size=2))
NON_STR = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.binary(max_size=8),
                    st.lists(I64, max_size=2), st.dictionaries(st.text(max_size=3), I64, max_size=2))
NON_NUM = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.binary(max_size=8), st.lists(I64, max_size=2),
                    st.dictionaries(st.text(max_size=3), I64, max_size=2))
NON_BOOL = st.one_of(st.none(), I64, st.text(max_size=8), st.floats(allow_nan=True), st.binary(max_size=8),
                     st.lists(st.booleans(), max_size=2))
NON_MAP = st.one_of(st.none(), st.booleans(), I64, st.text(max_size=8), st.lists(I64, max_size=2))
ABSURD = st.one_of(st.sampled_from([0, -1, -2**63, 2**63 - 1, 2**64 - 1, 2**32, LIMITS.max_side + 1, 10**9]),
                   st.integers(-2**63, 0), st.integers(LIMITS.max_side + 1, 2**64 - 1))


@st.composite
def random_frames(draw: Any, key: bytes) -> Case:
    frames = draw(st.lists(st.binary(max_size=48), min_size=1, max_size=5))
    return Case(frames, re=None, codes={Code.BAD_FRAME, Code.BAD_SIGNATURE, Code.MISSING_FIELD, Code.BAD_FIELD_TYPE})


@st.composite
def truncated(draw: Any, key: bytes) -> Case:
    raw = msgpack.packb(base_header(), use_bin_type=True)
    cut = draw(st.integers(0, len(raw) - 1))
    resign = draw(st.booleans())
    head = raw[:cut]
    return Case([head, IMAGE, MASK, sign(key, head) if resign else b"0" * 64], re=None, codes={Code.BAD_FRAME})


@st.composite
def oversized_msgpack(draw: Any, key: bytes) -> Case:
    """Headers whose msgpack declares far more data than there is, or nests too deep."""
    prefix = draw(st.sampled_from([b"\xdb\x7f\xff\xff\xff", b"\xdd\x7f\xff\xff\xff", b"\xdf\x7f\xff\xff\xff",
                                   b"\xc6\x7f\xff\xff\xff", b"\xdc\xff\xff", b"\x91" * 5000, b"\x81\xa1a" * 3000]))
    tail = draw(st.binary(max_size=16))
    head = prefix + tail
    return Case([head, sign(key, head)], re=None, codes={Code.BAD_FRAME})


HEADER_FIELDS = {"v": NON_INT, "id": NON_STR, "type": NON_STR, "ts": NON_NUM, "body": NON_MAP,
                 "buffers": st.one_of(NON_MAP.filter(lambda x: not isinstance(x, list)), st.lists(NON_INT, min_size=1, max_size=2)),
                 "job": NON_STR, "re": NON_STR}


@st.composite
def wrong_header_type(draw: Any, key: bytes) -> Case:
    field = draw(st.sampled_from(sorted(HEADER_FIELDS)))
    value = draw(HEADER_FIELDS[field])
    header = base_header()
    header[field] = value
    return Case(packed(key, header, [IMAGE, MASK]), re=header["id"] if field != "id" else None, names=field,
                codes={Code.BAD_FIELD_TYPE, Code.BAD_FRAME})


def _wrong_for(types: tuple[type, ...]) -> Any:
    if bool in types:  # 0 and 1 are wrong too: a flag is a msgpack boolean
        return NON_BOOL
    if str in types:
        return NON_STR
    if float in types:
        return NON_NUM
    return NON_INT


@st.composite
def wrong_body_type(draw: Any, key: bytes) -> Case:
    """A wrong type in one submit field: an option, a descriptor, or a descriptor's member."""
    header = base_header()
    body = header["body"]
    target = draw(st.sampled_from(sorted(OPTION_RULES) + ["image", "mask"] +
                                  [f"{d}.{k}" for d in ("image", "mask") for k in ("frame", "width", "height", "channels", "stride")]))
    if target in OPTION_RULES:
        body[target] = draw(_wrong_for(OPTION_RULES[target][0]))
    elif target in ("image", "mask"):
        body[target] = draw(NON_MAP)
    else:
        d, k = target.split(".")
        body[d][k] = draw(NON_INT.filter(lambda v: v is not None) if k == "stride" else NON_INT)  # nil stride = absent
    names = target if "." in target or target in OPTION_RULES else target
    return Case(packed(key, header, [IMAGE, MASK]), re=header["id"], names=names,
                codes={Code.BAD_FIELD_TYPE, Code.MISSING_FIELD})


@st.composite
def out_of_range(draw: Any, key: bytes) -> Case:
    header = base_header()
    name = draw(st.sampled_from([n for n, (t, lo, hi) in OPTION_RULES.items() if lo is not None]))
    types, low, high = OPTION_RULES[name]
    if float in types:
        value = draw(st.one_of(st.floats(max_value=low, exclude_max=True, allow_nan=False),
                               st.floats(min_value=high, exclude_min=True, allow_nan=False), st.just(float("nan"))))
    else:
        value = draw(st.one_of(st.integers(-2**63, int(low) - 1), st.integers(int(high) + 1, 2**63 - 1)))
    header["body"][name] = value
    return Case(packed(key, header, [IMAGE, MASK]), re=header["id"], names=name, codes={Code.BAD_VALUE})


@st.composite
def long_text(draw: Any, key: bytes) -> Case:
    header = base_header()
    name = draw(st.sampled_from(["prompt", "negative_prompt", "model", "scheduler"]))
    header["body"][name] = "z" * draw(st.integers(LIMITS.max_prompt_chars + 1, 20_000))
    codes = {Code.TOO_LARGE} if "prompt" in name else {Code.BAD_VALUE, Code.UNKNOWN_MODEL}
    return Case(packed(key, header, [IMAGE, MASK]), re=header["id"], names=name if name != "model" else None, codes=codes)


@st.composite
def wrong_pixel_bytes(draw: Any, key: bytes) -> Case:
    which = draw(st.sampled_from(["image", "mask"]))
    delta = draw(st.integers(-len(MASK), 64).filter(lambda d: d != 0))
    image, mask = IMAGE, MASK
    if which == "image":
        image = IMAGE[: len(IMAGE) + delta] if delta < 0 else IMAGE + bytes(delta)
    else:
        mask = MASK[: len(MASK) + delta] if delta < 0 else MASK + bytes(delta)
    lie = draw(st.booleans())  # declare the true lengths, or the expected ones
    header = base_header(buffers=[IMAGE, MASK] if lie else [image, mask])
    if lie:
        return Case(packed(key, header, [image, mask]), re=header["id"], codes={Code.BAD_FRAME})
    return Case(packed(key, header, [image, mask]), re=header["id"], names=which, codes={Code.BAD_IMAGE})


@st.composite
def absurd_dimensions(draw: Any, key: bytes) -> Case:
    header = base_header()
    which = draw(st.sampled_from(["image", "mask"]))
    member = draw(st.sampled_from(["width", "height", "stride", "frame", "channels"]))
    value = draw(ABSURD.filter(lambda v: v != 0) if member == "stride" else ABSURD)  # stride 0 = tight rows
    header["body"][which][member] = value
    return Case(packed(key, header, [IMAGE, MASK]), re=header["id"], names=which,
                codes={Code.BAD_VALUE, Code.TOO_LARGE, Code.BAD_IMAGE, Code.SIZE_MISMATCH})


@st.composite
def bad_auth(draw: Any, key: bytes) -> Case:
    kind = draw(st.sampled_from(["unsigned", "wrong_key", "garbled", "stale", "future"]))
    msg_type = draw(st.sampled_from(["ping", "status", "shutdown", "submit", "cancel"]))
    header = base_header(msg_type, buffers=[])
    if kind == "stale":
        header["ts"] = time.time() - draw(st.floats(400, 1e9))
    elif kind == "future":
        header["ts"] = time.time() + draw(st.floats(400, 1e9))
    raw = msgpack.packb(header, use_bin_type=True)
    sig = {"unsigned": b"", "wrong_key": sign(b"not-the-key", raw), "garbled": sign(key, raw)[::-1]}.get(kind, sign(key, raw))
    return Case([raw, sig], re=header["id"], names="ts" if kind in ("stale", "future") else None, codes={Code.BAD_SIGNATURE})


@st.composite
def junk_requests(draw: Any, key: bytes) -> Case:
    """Well-signed requests of other types with missing, wrong or unknown parts."""
    kind = draw(st.sampled_from(["unknown_type", "cancel_missing", "cancel_unknown", "fetch_unknown", "fetch_wrong", "version"]))
    if kind == "unknown_type":
        known = ("hello", "ping", "list_models", "submit", "cancel", "status", "fetch", "shutdown")
        t = draw(st.text(min_size=1, max_size=20).filter(lambda x: x not in known))
        header = base_header(t, body={}, buffers=[])
        return Case(packed(key, header, []), re=header["id"], codes={Code.UNKNOWN_TYPE})
    if kind == "version":
        header = base_header("ping", body={}, buffers=[])
        header["v"] = draw(st.integers(-2**63, 2**63 - 1).filter(lambda v: v != 1))
        return Case(packed(key, header, []), re=header["id"], codes={Code.VERSION_MISMATCH})
    t = "cancel" if kind.startswith("cancel") else "fetch"
    body = {} if kind == "cancel_missing" else {"job": draw(NON_STR) if kind == "fetch_wrong" else draw(st.text(max_size=40))}
    header = base_header(t, body=body, buffers=[])
    codes = {"cancel_missing": {Code.MISSING_FIELD}, "fetch_wrong": {Code.BAD_FIELD_TYPE, Code.MISSING_FIELD}}.get(kind, {Code.NOT_FOUND})
    return Case(packed(key, header, []), re=header["id"], names="job", codes=codes)


def any_case(key: bytes) -> Any:
    return st.one_of(random_frames(key), truncated(key), oversized_msgpack(key), wrong_header_type(key),
                     wrong_body_type(key), out_of_range(key), long_text(key), wrong_pixel_bytes(key),
                     absurd_dimensions(key), bad_auth(key), junk_requests(key))


# -- the storm ----------------------------------------------------------------------------------


class Storm:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.key = daemon.key
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(daemon.endpoint)
        self.sent = 0
        self.dirty = False
        self.codes: dict[str, int] = {}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def run(self, cases: list[Case]) -> None:
        if self.dirty:  # a failed batch (being shrunk by hypothesis) may have left replies
            while self.sock.poll(300):
                self.sock.recv_multipart()
        self.dirty = True
        for case in cases:
            self.sock.send_multipart(case.frames)
        self.sent += len(cases)
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(replies) < len(cases):
            assert self.sock.poll(max(int((deadline - time.monotonic()) * 1000), 1)), (
                f"only {len(replies)} replies to {len(cases)} messages; first cases: {cases[:3]}")
            frames = self.sock.recv_multipart()
            head = msgpack.unpackb(frames[0], raw=False)
            assert hmac.compare_digest(sign(self.key, frames[0]), frames[-1]), "daemon reply not signed"
            replies.append(head)
        assert not self.sock.poll(0), "more replies than messages"
        by_re = {r.get("re"): r for r in replies if r.get("re")}
        anonymous = [r for r in replies if not r.get("re")]
        assert len(by_re) + len(anonymous) == len(cases)
        used_anon = 0
        for case in cases:
            if case.re is not None and case.re in by_re:
                reply = by_re.pop(case.re)
            else:
                assert case.re is None, f"no reply naming request {case.re}: {case}"
                reply = anonymous[used_anon]
                used_anon += 1
            body = reply.get("body", {})
            assert reply["type"] == "error", f"{case} was answered {reply['type']}: {body}"
            code = body.get("code")
            self.codes[code] = self.codes.get(code, 0) + 1
            assert code in CODES, f"{case} -> {code}: {body.get('message')}"
            if case.re is not None and case.codes is not None:
                assert code in case.codes, f"{case} -> {code}: {body.get('message')}"
            assert len(body.get("message", "")) > 10
            if case.names and case.re is not None and code in case.codes:
                said = body.get("message", "") + " " + str(body.get("details", {}).get("field", ""))
                assert case.names.split(".")[0] in said, f"{case}: '{body.get('message')}' does not name {case.names}"
        self.dirty = False


def test_ten_thousand_malformed_messages(fuzz_daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    storm = Storm(fuzz_daemon)
    rss_before = rss(fuzz_daemon.proc.pid)
    t0 = time.perf_counter()
    try:
        @settings(max_examples=TARGET // BATCH + 20, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(any_case(fuzz_daemon.key), min_size=BATCH, max_size=BATCH))
        def storm_batch(cases: list[Case]) -> None:
            storm.run(cases)

        while storm.sent < TARGET:
            storm_batch()
        # messages the size limits catch: a header over 1 MiB, a message over ZMQ_MAXMSGSIZE
        big_header = base_header()
        big_header["body"]["prompt"] = "x" * (1 << 20)
        storm.run([Case(packed(fuzz_daemon.key, big_header, [IMAGE, MASK]), re=None, codes={Code.TOO_LARGE})])
        assert storm.codes.get(Code.TOO_LARGE)
    finally:
        storm.close()
    elapsed = time.perf_counter() - t0
    assert fuzz_daemon.alive(), fuzz_daemon.log()[-3000:]

    # over ZMQ_MAXMSGSIZE (8 MB here): libzmq drops the connection before Python sees a byte
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fuzz_daemon.endpoint)
    sock.send_multipart(packed(fuzz_daemon.key, base_header(buffers=[bytes(9 << 20), MASK]), [bytes(9 << 20), MASK]))
    assert not sock.poll(1500), "an over-size message got an answer; it should have been dropped at the socket"
    sock.close(0)
    ctx.term()

    # the daemon is up, answers, and a valid job succeeds
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    with fuzz_daemon.client() as c:
        assert c.ping() < 1.0
        job = c.wait(c.submit(image.tobytes(), 64, 64, 3, mask.tobytes(), JobOptions()), timeout=60).raise_for_error()
        status = c.status()
    assert job.state == "done" and job.layers
    rss_after = rss(fuzz_daemon.proc.pid)
    refused = sum(v for k, v in status["stats"].items() if k.startswith("refused_"))
    assert refused >= storm.sent
    assert status["stats"].get("refused_internal", 0) == 0
    log = fuzz_daemon.log()
    assert "request refused (" in log  # logged, and a flood summarised rather than written line by line
    record(tmp_path_factory, "fuzz", {
        "messages_sent": storm.sent + 1, "seconds": round(elapsed, 1), "rate_per_s": round(storm.sent / elapsed),
        "error_codes": dict(sorted(storm.codes.items())), "daemon_refused": refused,
        "daemon_rss_mb_before": round(rss_before / 2**20, 1), "daemon_rss_mb_after": round(rss_after / 2**20, 1),
        "valid_job_after_storm": job.state,
    })
