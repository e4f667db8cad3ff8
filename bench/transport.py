"""Figure 1: moving an RGBA layer through the protocol against a bare ZeroMQ echo.

The daemon has no echo request, so the protocol side is an echo peer built from the
same code the daemon runs: a ROUTER that `wire.decode`s each signed message (signature,
frame count and buffer lengths checked), wraps the pixel frame as a numpy array the way
`inpaintd.validation` does, and `wire.encode`s a signed reply carrying that array back,
the way the daemon sends a result.  The client is a DEALER using `wire.encode/decode`
with the same key, as `inpaintd_protocol.client.Client` does.  The bare side sends the same
bytes as one frame over a raw DEALER/ROUTER pair.  Both sides use `copy=False`
everywhere, and the peer runs in its own process, as the daemon does.
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inpaintd_protocol import wire
from inpaintd_protocol.wire import Message

from .common import Config, Section, interleaved, mib, pair_row

KEY = secrets.token_hex(32).encode("ascii")
GOAL_SIDE = 2048
GOAL = 1.25


def _echo_peer(endpoints: dict[str, str], key: bytes, conn: Any) -> None:
    """Bind one protocol ROUTER and one bare ROUTER per transport; echo until told to stop."""
    ctx = zmq.Context()
    protocol_socks: list[zmq.Socket] = []
    bare_socks: list[zmq.Socket] = []
    bound: dict[str, str] = {}
    for name, endpoint in endpoints.items():
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        bound[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        (protocol_socks if name.startswith("protocol") else bare_socks).append(sock)
    conn.send(bound)
    poller = zmq.Poller()
    for sock in protocol_socks + bare_socks:
        poller.register(sock, zmq.POLLIN)
    while not conn.poll(0):
        for sock, _ in poller.poll(100):
            frames = sock.recv_multipart(copy=False)
            identity, rest = frames[0], frames[1:]
            if sock in bare_socks:
                sock.send_multipart([identity, *rest], copy=False)
                continue
            msg = wire.decode(rest, key)
            desc = msg.body["image"]
            pixels = np.frombuffer(msg.buffer(desc["frame"]), dtype=np.uint8).reshape(desc["height"], desc["width"], 4)
            reply = Message(type="result", re=msg.id, body={"image": desc}, buffers=[memoryview(pixels).cast("B")])
            sock.send_multipart([identity, *wire.encode(reply, key)], copy=False)
    ctx.destroy(0)


class EchoPair:
    """A peer process plus connected DEALERs to its protocol and bare ROUTERs."""

    def __init__(self, transport: str, tmp: Path) -> None:
        if transport == "tcp":
            endpoints = {"protocol": "tcp://127.0.0.1:*", "bare": "tcp://127.0.0.1:*"}
        else:
            endpoints = {"protocol": f"ipc://{tmp}/protocol.ipc", "bare": f"ipc://{tmp}/bare.ipc"}
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_echo_peer, args=(endpoints, KEY, child), daemon=True)
        self._proc.start()
        bound = self._conn.recv()
        self._ctx = zmq.Context()
        self.protocol = self._dealer(bound["protocol"])
        self.bare = self._dealer(bound["bare"])

    def _dealer(self, endpoint: str) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        self._ctx.destroy(0)


def protocol_round_trip(sock: zmq.Socket, pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    desc = {"frame": 1, "width": w, "height": h, "channels": 4, "stride": w * 4}
    msg = Message(type="submit", body={"image": desc}, buffers=[memoryview(pixels).cast("B")])
    sock.send_multipart(wire.encode(msg, KEY), copy=False)
    reply = wire.decode(sock.recv_multipart(copy=False), KEY)
    assert reply.re == msg.id
    d = reply.body["image"]
    return np.frombuffer(reply.buffer(d["frame"]), dtype=np.uint8).reshape(d["height"], d["width"], 4)


def bare_round_trip(sock: zmq.Socket, pixels: np.ndarray) -> memoryview:
    sock.send(memoryview(pixels).cast("B"), copy=False)
    return sock.recv(copy=False).buffer


def run(cfg: Config) -> Section:
    sides = (64, 256) if cfg.tiny else (512, 2048) if cfg.quick else (512, 2048, 4096)
    section = Section("transport")
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        for transport in ("tcp", "ipc"):
            pair = EchoPair(transport, Path(tmp))
            try:
                for side in sides:
                    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 4), dtype=np.uint8)
                    check = protocol_round_trip(pair.protocol, pixels)
                    assert np.array_equal(check, pixels) and bytes(bare_round_trip(pair.bare, pixels)) == pixels.tobytes()
                    reps = cfg.reps(full=31 if side <= 2048 else 15, quick=9)
                    timing = interleaved(
                        partial(bare_round_trip, pair.bare, pixels),
                        partial(protocol_round_trip, pair.protocol, pixels),
                        reps,
                        warmup=3,
                    )
                    mb = pixels.nbytes / 2**20
                    section.rows.append(pair_row(
                        f"transport {transport} {side}² RGBA ({mib(pixels.nbytes)}) round trip",
                        "bare zmq", "protocol", timing,
                        goal=GOAL if side == GOAL_SIDE else None,
                        note=f"protocol {2 * mb / timing.b_med / 1024:.2f} GiB/s",
                    ))
            finally:
                pair.close()
    section.notes.append(
        "transport: the protocol side is an echo peer built from inpaintd_protocol.wire (decode with HMAC check, "
        "numpy view of the frame, encode a signed reply), since the daemon has no echo request."
    )
    return section
