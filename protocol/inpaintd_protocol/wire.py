"""Turning messages into ZeroMQ frames and back.

A message is `[header, buffer_1 .. buffer_n, signature]`: the header is one msgpack map,
pixel buffers travel as raw frames (never packed into msgpack, never PNG), and the last
frame is an HMAC-SHA256 of the header, or empty when no key is in use.  As in Jupyter's
kernel protocol the buffers themselves are not hashed (they would cost more than the
transfer); the header declares every buffer's byte length, so none can be swapped for one
of another size, and CURVE encryption is the answer for untrusted networks.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .bodies import Body, Error
from .messages import PROTOCOL_VERSION, Code, ProtocolError

Buffer = bytes | bytearray | memoryview

#: The header frame is metadata only (pixels travel in buffer frames), so a large one is
#: hostile or broken.  Checked before unpacking: msgpack turns a few bytes into many
#: Python objects, and an unbounded header would let one message cost gigabytes.
MAX_HEADER_BYTES = 1 << 20


@dataclass
class Message:
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    buffers: list[Buffer] = field(default_factory=list)
    job: str | None = None
    re: str | None = None  # id of the request this replies to
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)
    version: int = PROTOCOL_VERSION

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = {
            "v": self.version,
            "id": self.id,
            "type": self.type,
            "ts": self.ts,
            "body": self.body,
            "buffers": [len(memoryview(b).cast("B")) for b in self.buffers],
        }
        if self.job is not None:
            h["job"] = self.job
        if self.re is not None:
            h["re"] = self.re
        return h

    def buffer(self, index: int) -> memoryview:
        """Buffer frames are numbered from 1, as in image descriptors."""
        if not 1 <= index <= len(self.buffers):
            raise ProtocolError(Code.BAD_IMAGE, f"frame {index} does not exist; the message has {len(self.buffers)} buffer frame(s)")
        return memoryview(self.buffers[index - 1]).cast("B")


def sign(key: bytes | None, header: bytes) -> bytes:
    if not key:
        return b""
    return hmac.new(key, header, hashlib.sha256).hexdigest().encode("ascii")


def encode(msg: Message, key: bytes | None = None) -> list[Buffer]:
    header = msgpack.packb(msg.header(), use_bin_type=True)
    return [header, *msg.buffers, sign(key, header)]


def decode(frames: Sequence[Any], key: bytes | None = None, *, version: int | None = None) -> Message:
    """Parse frames (bytes or zmq.Frame) into a Message, checking shape and signature.

    Raises ProtocolError with a code that names what is wrong; the daemon turns that
    into an error reply (`details["re"]`: the message's id, where it could be read).  The
    order of the checks is PROTOCOL.md's section 8.  With `version` given (the daemon),
    `v` is checked right after the signature, before anything else in the header, so that
    a client of another version hears `version_mismatch` whatever else it does
    differently; without it `v` is returned as is.
    """
    parts = [_as_view(f) for f in frames]
    if len(parts) < 2:
        raise ProtocolError(
            Code.BAD_FRAME, f"a message has at least 2 frames (header, signature); got {len(parts)}",
            {"re": _readable_id(parts[0]) if parts else None},
        )
    if len(parts[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(
            Code.TOO_LARGE,
            f"header frame is {len(parts[0])} bytes; the limit is {MAX_HEADER_BYTES} (pixels go in buffer frames, not the header)",
            {"field": "header"},
        )
    raw_header = bytes(parts[0])
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(Code.BAD_FRAME, f"frame 0 is not a msgpack map: {type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(Code.BAD_FRAME, f"frame 0 must be a msgpack map, got {type(header).__name__}")
    msg_id = header.get("id")
    re_id = msg_id if isinstance(msg_id, str) else None
    if key:
        expected = sign(key, raw_header)
        if not hmac.compare_digest(expected, bytes(parts[-1])):
            raise ProtocolError(
                Code.BAD_SIGNATURE,
                "message signature is missing or wrong (is the client using the daemon's connection file key?)",
                {"re": re_id},
            )
    if version is not None:
        v = header.get("v")
        if "v" not in header:
            raise ProtocolError(Code.MISSING_FIELD, "header field 'v' is missing", {"field": "v", "re": re_id})
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(Code.BAD_FIELD_TYPE, f"header field 'v' must be int, got {type(v).__name__}", {"field": "v", "re": re_id})
        if v != version:
            raise ProtocolError(
                Code.VERSION_MISMATCH,
                f"this client speaks protocol version {v}; this daemon speaks version {version}",
                {"client_version": v, "daemon_version": version, "re": re_id},
            )
    for name, kind in (("v", int), ("id", str), ("type", str)):
        if name not in header:
            raise ProtocolError(Code.MISSING_FIELD, f"header field '{name}' is missing", {"field": name, "re": re_id})
        if not isinstance(header[name], kind) or isinstance(header[name], bool):
            raise ProtocolError(
                Code.BAD_FIELD_TYPE,
                f"header field '{name}' must be {kind.__name__}, got {type(header[name]).__name__}",
                {"field": name, "re": msg_id if isinstance(msg_id, str) else None},
            )
    for name in ("job", "re"):
        if name in header and not isinstance(header[name], str):
            raise ProtocolError(
                Code.BAD_FIELD_TYPE,
                f"header field '{name}' must be a string, got {type(header[name]).__name__}",
                {"field": name, "re": msg_id},
            )
    ts = header.get("ts", 0.0)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts:
        raise ProtocolError(
            Code.BAD_FIELD_TYPE,
            f"header field 'ts' must be a number (seconds since the epoch), got {type(ts).__name__} {ts!r:.40}",
            {"field": "ts", "re": msg_id},
        )
    body = header.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError(
            Code.BAD_FIELD_TYPE, f"header field 'body' must be a map, got {type(body).__name__}", {"field": "body", "re": msg_id})
    lengths = header.get("buffers", [])
    if not isinstance(lengths, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
        raise ProtocolError(
            Code.BAD_FIELD_TYPE, "header field 'buffers' must be a list of byte lengths", {"field": "buffers", "re": msg_id})
    buffers = parts[1:-1]
    if len(buffers) != len(lengths):
        raise ProtocolError(
            Code.BAD_FRAME,
            f"header declares {len(lengths)} buffer frame(s) but {len(buffers)} arrived (plus header and signature)",
            {"re": msg_id},
        )
    for i, (buf, n) in enumerate(zip(buffers, lengths, strict=True), start=1):
        if len(buf) != n:
            raise ProtocolError(Code.BAD_FRAME, f"buffer frame {i} has {len(buf)} bytes, header declares {n}", {"re": msg_id})
    return Message(
        type=header["type"],
        body=body,
        buffers=list(buffers),
        job=header.get("job"),
        re=header.get("re"),
        id=header["id"],
        ts=float(ts),
        version=header["v"],
    )


def _readable_id(frame: memoryview) -> str | None:
    """The `id` of a lone frame that is a readable header, so a refusal can name it in `re`."""
    if len(frame) > MAX_HEADER_BYTES:
        return None
    try:
        header = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=True)
    except Exception:
        return None
    msg_id = header.get("id") if isinstance(header, dict) else None
    return msg_id if isinstance(msg_id, str) else None


def _as_view(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    if buf is not None:
        return memoryview(buf).cast("B")
    return memoryview(frame).cast("B")


def message(body: Body, *, re: str | None = None, buffers: list[Buffer] | None = None) -> Message:
    """The message that carries `body`: its type, and its job in the header as in the body.
    The one way the daemon builds job events and typed replies (cf. jupyter_client's
    `Session.msg`)."""
    return Message(type=body.TYPE, body=body.to_body(), buffers=list(buffers or []), job=body.job, re=re)


def error_message(code: str, message_text: str, *, re: str | None = None, job: str | None = None, **details: Any) -> Message:
    return message(Error(code, message_text, details, job), re=re)
