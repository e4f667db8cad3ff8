"""The daemon's socket: one ZeroMQ ROUTER, who may speak to it, and what goes out.

Everything here runs on the daemon's main thread, the only one that touches the socket
(ZeroMQ sockets must not be shared between threads).  Other threads reach it in two
thread-safe ways: `post` puts a message in the outbox, and `wake` cuts the poll short so
the loop flushes it at once.

Trust, in brief (PROTOCOL.md section 12 has the whole policy): every request is
HMAC-signed with the key of the 0600 connection file and checked against a replay
window; the ROUTER refuses messages over the size limit before they reach Python; a peer
that stops reading is dropped by ZeroMQ heartbeats, and what it missed is dropped here
(counted) rather than queued without bound.
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import zmq

from inpaintd_protocol import wire
from inpaintd_protocol.connection import connection_file, is_loopback, write_connection_file
from inpaintd_protocol.messages import PROTOCOL_VERSION, Code, Limits, ProtocolError
from inpaintd_protocol.wire import Message

log = logging.getLogger("inpaintd")

REPLAY_WINDOW = 300.0  # seconds a signed message stays valid, and its id remembered
#: Messages ZeroMQ queues per peer in each direction.  Past it, events for a peer that does
#: not read are dropped (results stay fetchable), so a stuck client costs bounded memory.
PEER_HWM = 1000
#: Error messages echo what the client sent; keep them readable and small.
MAX_ERROR_CHARS = 2000
#: At most this many refusals are logged per 10 s; the rest are counted and summarised.
REFUSALS_LOGGED_PER_WINDOW = 20
#: How long the loop sleeps in poll when nothing happens; `tick` runs at least this often.
POLL_MS = 250

#: Answers one verified request: the reply, or None for no reply.
Dispatch = Callable[[bytes, Message], "Message | None"]


def short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


class ReplayWindow:
    """A signed message is valid once, within `window` seconds of its timestamp.

    Ids are remembered for the window from their arrival; a message older than that fails
    the timestamp test anyway, so forgetting it then is safe."""

    def __init__(self, window: float = REPLAY_WINDOW) -> None:
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()  # message id -> arrival, oldest first

    def check(self, msg: Message) -> None:
        now = time.time()
        while self._seen:
            first_id, arrived = next(iter(self._seen.items()))
            if now - arrived <= self.window:
                break
            del self._seen[first_id]
        if not abs(now - msg.ts) <= self.window:
            raise ProtocolError(
                Code.BAD_SIGNATURE,
                f"message timestamp 'ts' is {now - msg.ts:.0f} s off the daemon's clock; the window is {self.window:.0f} s",
            )
        if msg.id in self._seen:
            raise ProtocolError(Code.BAD_SIGNATURE, f"message id {short(msg.id, 80)} was already used (replayed message)")
        self._seen[msg.id] = now


class RefusalLog:
    """Counts refused requests and logs them; a flood is summarised, not written line by line."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        self._window = (0.0, 0)  # (window start, refusals logged in it)
        self._unlogged = 0

    def refused(self, code: str, message: str, identity: bytes) -> None:
        self.stats["refused_" + code] += 1
        now = time.monotonic()
        start, logged = self._window
        if now - start > 10.0:
            if self._unlogged:
                log.warning("%d more requests refused in the last 10 s (not logged one by one)", self._unlogged)
            start, logged, self._unlogged = now, 0, 0
        if logged < REFUSALS_LOGGED_PER_WINDOW:
            log.warning("request refused (%s) from peer %s: %s", code, identity.hex()[:10], short(message, 300))
            logged += 1
        else:
            self._unlogged += 1
        self._window = (start, logged)


class Waker:
    """Wakes the poll loop from any thread or a signal handler: one byte on a socket pair
    (a plain socket, so no ZeroMQ socket is shared between threads)."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    def clear(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class Server:
    def __init__(
        self, bind: str, *, key: bytes | None, limits: Limits, curve: bool, peer_timeout: float, stats: Counter[str],
    ) -> None:
        """`peer_timeout`: seconds a connected peer may leave ZeroMQ heartbeats unanswered
        (a frozen or vanished process) before its connection and queued events are dropped."""
        if not key and not is_loopback(bind):
            raise ValueError(f"refusing to listen on {bind} without authentication: only loopback may go unsigned")
        self.key = key
        self.stats = stats
        self.refusals = RefusalLog(stats)
        self.replay = ReplayWindow()
        self._outbox: queue.SimpleQueue[tuple[bytes, Message]] = queue.SimpleQueue()
        self._waker = Waker()
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 1000)
        # Over-long messages are refused by libzmq itself (the peer is disconnected), before
        # a byte of them is handed to Python.
        self._router.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        self._router.setsockopt(zmq.SNDHWM, PEER_HWM)
        self._router.setsockopt(zmq.RCVHWM, PEER_HWM)
        # Tell us (EAGAIN / EHOSTUNREACH) instead of silently dropping, so drops are counted.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        ivl = max(int(peer_timeout * 1000 / 4), 100)
        self._router.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        self._router.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(int(peer_timeout * 1000), ivl))
        self.curve_public_key: bytes | None = None
        if curve:
            if not zmq.has("curve"):
                raise ValueError("this libzmq was built without CURVE (libsodium); --curve is not available")
            self.curve_public_key, secret = zmq.curve_keypair()
            self._router.setsockopt(zmq.CURVE_SERVER, 1)
            self._router.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.endpoint = self._bind(bind)
        self._connection_file = False

    def _bind(self, endpoint: str) -> str:
        try:
            self._router.bind(endpoint)
        except zmq.ZMQError as exc:
            raise SystemExit(f"inpaintd: cannot bind {endpoint}: {exc} (is another daemon running there?)") from None
        return self._router.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    def write_connection_file(self, extra: dict[str, Any]) -> None:
        """Tell clients on this machine where we are and the key (only when there is one)."""
        if not self.key:
            return
        if self.curve_public_key:
            extra = {**extra, "curve_server_key": self.curve_public_key.decode("ascii")}
        path = write_connection_file(self.endpoint, self.key, extra)
        self._connection_file = True
        log.info("connection file: %s", path)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self, dispatch: Dispatch, tick: Callable[[], None], stopping: Callable[[], bool]) -> None:
        """Answer requests and send what was posted until `stopping()`; `tick()` runs after
        every wake-up (requests read, a `wake`, or POLL_MS of quiet)."""
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._waker, zmq.POLLIN)
        while not stopping():
            ready = dict(poller.poll(POLL_MS))
            if self._router in ready:
                self._read_requests(dispatch)
            if self._waker.fileno() in ready:  # (Poller reports a plain socket by its fd)
                self._waker.clear()
            tick()
            self.flush()

    def wake(self) -> None:
        """Cut the loop's poll short; safe from any thread and from signal handlers."""
        self._waker.wake()

    def _read_requests(self, dispatch: Dispatch) -> None:
        for _ in range(100):  # bounded, so events keep flowing under a flood of requests
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, frames = frames[0].bytes, frames[1:]
            self.stats["requests"] += 1
            reply = self._answer(identity, frames, dispatch)
            if reply is not None:
                self.send(identity, reply)

    def _answer(self, identity: bytes, frames: list, dispatch: Dispatch) -> Message | None:
        msg_id: str | None = None
        try:
            # Frames, signature, version (before anything else it might do differently),
            # header fields, buffers: PROTOCOL.md section 8's order.
            msg = wire.decode(frames, self.key, version=PROTOCOL_VERSION)
            msg_id = msg.id
            if self.key:
                self.replay.check(msg)
            return dispatch(identity, msg)
        except ProtocolError as exc:
            re = msg_id or (exc.details.get("re") if isinstance(exc.details.get("re"), str) else None)
            details = {k: v for k, v in exc.details.items() if k != "re"}
            self.refusals.refused(exc.code, exc.message, identity)
            return wire.error_message(exc.code, short(exc.message), re=re, **details)
        except Exception as exc:  # a bug of ours must not take the daemon down
            self.stats["refused_" + Code.INTERNAL] += 1
            log.exception("internal error while handling a request")
            return wire.error_message(Code.INTERNAL, short(f"internal error: {type(exc).__name__}: {exc}"), re=msg_id)

    # -- sending ----------------------------------------------------------------------------

    def post(self, identity: bytes, msg: Message) -> None:
        """Queue `msg` for `identity`; it goes out at the next `flush` (thread-safe)."""
        self._outbox.put((identity, msg))

    def flush(self) -> None:
        while True:
            try:
                identity, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            self.send(identity, msg)

    def send(self, identity: bytes, msg: Message) -> None:
        try:
            self._router.send_multipart([identity, *wire.encode(msg, self.key)], zmq.NOBLOCK, copy=False)
            self.stats["sent"] += 1
        except zmq.Again:
            # The peer does not read and its queue is full: drop, never block the daemon.
            # Terminal events stay in the result store, so the client can still fetch them.
            self.stats["dropped_peer_full"] += 1
            if self.stats["dropped_peer_full"] in (1, 10, 100, 1000) or self.stats["dropped_peer_full"] % 10000 == 0:
                log.warning("peer %s is not reading; dropped %s (%d dropped so far; results stay fetchable)",
                            identity.hex()[:10], msg.type, self.stats["dropped_peer_full"])
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer disconnected; results stay fetchable
            self.stats["dropped_peer_gone"] += 1
            log.debug("could not send %s to peer %s: %s", msg.type, identity.hex()[:10], exc)

    def close(self) -> None:
        self._router.close(linger=500)
        self._waker.close()
        self._ctx.term()
        if self._connection_file:
            try:
                connection_file(self.endpoint).unlink()
            except OSError:
                pass
