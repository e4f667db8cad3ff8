"""The inpaintd client library: pyzmq and msgpack only, so it runs inside an editor.

It works two ways over the same socket:
- blocking, for scripts and tests: `client.inpaint(...)` or `submit` then `wait`;
- non-blocking, for an editor's GUI timer: `submit(..., block=False)`, then call
  `pump()` every few tens of milliseconds and read the `Job` objects it updates.

A socket is not thread-safe: use one Client from one thread.  The client watches the
daemon's heartbeat while jobs are in flight; a daemon that stops answering, or one that
restarted (its instance id changed), turns the jobs into state "lost" instead of leaving
the caller waiting forever.  ZeroMQ reconnects the socket by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import zmq

from . import wire
from .connection import find_key, resolve_endpoint
from .messages import TERMINAL_EVENTS, Code, ImageDesc, JobOptions, ProtocolError, Type
from .wire import Message

LOST = "lost"
DAEMON_UNAVAILABLE = "daemon_unavailable"


@dataclass
class Layer:
    """One variant: RGBA pixels of the processed region, placed at (x, y) in the image."""

    index: int
    seed: int
    x: int
    y: int
    width: int
    height: int
    stride: int
    data: memoryview  # RGBA, `stride` bytes per row

    def rows(self) -> Iterable[memoryview]:
        for r in range(self.height):
            yield self.data[r * self.stride : r * self.stride + self.width * 4]

    def tight_bytes(self) -> bytes:
        """The pixels with no row padding, as editors' pixel APIs want them."""
        if self.stride == self.width * 4:
            return bytes(self.data)
        return b"".join(bytes(r) for r in self.rows())


@dataclass
class Job:
    request_id: str
    id: str | None = None
    state: str = "submitting"  # submitting, queued, running, done, failed, cancelled, lost
    position: int | None = None
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    elapsed: float = 0.0
    layers: list[Layer] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: ProtocolError | None = None
    events: int = 0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled", LOST)

    def raise_for_error(self) -> "Job":
        if self.state in ("failed", LOST) and self.error:
            raise self.error
        if self.state == "cancelled":
            raise ProtocolError("cancelled", f"job {self.id} was cancelled")
        return self


class DaemonUnavailable(ProtocolError):
    def __init__(self, endpoint: str, waited: float) -> None:
        super().__init__(
            DAEMON_UNAVAILABLE,
            f"no inpaintd daemon answered at {endpoint} within {waited:.0f} s; start one with `inpaintd serve`",
        )


class Client:
    def __init__(
        self,
        endpoint: str | None = None,
        *,
        key: bytes | str | None = "auto",
        name: str = "inpaintd-python",
        heartbeat: float = 3.0,
        lost_after: float = 20.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.key: bytes | None = find_key(self.endpoint) if key == "auto" else (key.encode() if isinstance(key, str) else key)
        self.name = name
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # never drop our own job events
        self._sock.connect(self.endpoint)
        self._replies: dict[str, Message] = {}
        self._held_events: list[Message] = []  # job events read while waiting for a reply
        self._by_request: dict[str, Job] = {}
        self.jobs: dict[str, Job] = {}
        self.daemon_instance: str | None = None
        self._last_heard = time.monotonic()
        self._last_ping = 0.0

    # -- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message) -> str:
        self._sock.send_multipart(wire.encode(msg, self.key), copy=False)
        return msg.id

    def pump(self, timeout: float = 0.0) -> list[Message]:
        """Read everything that has arrived (waiting up to `timeout` s for the first
        message), update jobs, keep the heartbeat, and return the job events read since
        the last call (those read while waiting for a reply included)."""
        events, self._held_events = self._held_events, []
        return events + self._read(0.0 if events else timeout)

    def _read(self, timeout: float) -> list[Message]:
        events: list[Message] = []
        wait_ms = int(timeout * 1000)
        while self._sock.poll(wait_ms, zmq.POLLIN):
            wait_ms = 0
            frames = self._sock.recv_multipart(copy=False)
            try:
                msg = wire.decode(frames, self.key)
            except ProtocolError:
                continue  # a daemon never sends malformed frames; ignore rather than crash an editor
            self._last_heard = time.monotonic()
            if msg.re is not None:  # a reply to one of our requests (fetch replies carry job events too)
                self._replies[msg.re] = msg
                self._apply_reply(msg)
            elif msg.type in (Type.PROGRESS, Type.RESULT, Type.CANCELLED, Type.ERROR) and msg.job:
                self._apply_event(msg)
                events.append(msg)
        self._check_heartbeat()
        return events

    def request(self, type: str, body: dict[str, Any] | None = None, buffers: list | None = None, timeout: float = 10.0) -> Message:
        """Send a request and wait for its reply; events that arrive meanwhile are kept."""
        msg_id = self.send(Message(type=type, body=body or {}, buffers=buffers or []))
        reply = self._await_reply(msg_id, timeout)
        if reply.type == Type.ERROR:
            raise _error_from(reply)
        return reply

    def _await_reply(self, msg_id: str, timeout: float) -> Message:
        deadline = time.monotonic() + timeout
        while msg_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonUnavailable(self.endpoint, timeout)
            self._held_events.extend(self._read(min(left, 0.5)))
        return self._replies.pop(msg_id)

    # -- requests ------------------------------------------------------------------

    def hello(self, timeout: float = 10.0) -> dict[str, Any]:
        reply = self.request(Type.HELLO, {"client": self.name}, timeout=timeout)
        self._note_instance(reply.body.get("instance"))
        return reply.body

    def ping(self, timeout: float = 5.0) -> float:
        start = time.perf_counter()
        reply = self.request(Type.PING, timeout=timeout)
        self._note_instance(reply.body.get("instance"))
        return time.perf_counter() - start

    def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        return list(self.request(Type.LIST_MODELS, timeout=timeout).body.get("models", []))

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request(Type.STATUS, timeout=timeout).body

    def cancel(self, job: Job | str, timeout: float = 5.0) -> dict[str, Any]:
        job_id = job.id if isinstance(job, Job) else job
        return self.request(Type.CANCEL, {"job": job_id}, timeout=timeout).body

    def shutdown(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.request(Type.SHUTDOWN, timeout=timeout).body

    def fetch(self, job_id: str, timeout: float = 30.0) -> Job:
        """Ask again for a finished job's result (kept by the daemon for a while)."""
        job = Job(request_id="", id=job_id, state="queued")
        reply = self.request(Type.FETCH, {"job": job_id}, timeout=timeout)
        self._apply_event(reply, job)
        return job

    def submit(
        self,
        image: bytes | memoryview,
        width: int,
        height: int,
        channels: int,
        mask: bytes | memoryview,
        options: JobOptions | dict[str, Any] | None = None,
        *,
        image_stride: int = 0,
        mask_stride: int = 0,
        block: bool = True,
        timeout: float = 30.0,
    ) -> Job:
        """Send an inpaint job.  `image` is 8-bit RGB or RGBA, `mask` 8-bit gray of the
        same size (0 keep, 255 regenerate).  With block=False the Job starts in state
        "submitting" and `pump()` fills in its id when the daemon accepts it."""
        opts = options.to_wire() if isinstance(options, JobOptions) else dict(options or {})
        body = dict(opts)
        body["image"] = ImageDesc(1, width, height, channels, image_stride).to_wire()
        body["mask"] = ImageDesc(2, width, height, 1, mask_stride).to_wire()
        msg = Message(type=Type.SUBMIT, body=body, buffers=[image, mask])
        job = Job(request_id=msg.id)
        self._by_request[msg.id] = job
        self.send(msg)
        self._last_heard = max(self._last_heard, time.monotonic() - self.heartbeat)
        if block:
            try:
                reply = self._await_reply(msg.id, timeout)
            except DaemonUnavailable as exc:
                job.state, job.error = LOST, exc
                raise
            if reply.type == Type.ERROR:
                raise _error_from(reply)
        return job

    def wait(self, job: Job, timeout: float | None = None, on_event: Callable[[Job, Message], None] | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} did not finish within {timeout} s (state {job.state})")
            for ev in self.pump(0.2):
                if on_event and (ev.job == job.id):
                    on_event(job, ev)
        return job

    def inpaint(self, image: bytes, width: int, height: int, channels: int, mask: bytes,
                options: JobOptions | dict[str, Any] | None = None,
                on_event: Callable[[Job, Message], None] | None = None, timeout: float | None = None) -> Job:
        job = self.submit(image, width, height, channels, mask, options)
        return self.wait(job, timeout, on_event).raise_for_error()

    # -- state -----------------------------------------------------------------------

    def _apply_reply(self, msg: Message) -> None:
        job = self._by_request.pop(msg.re, None) if msg.re else None
        if msg.type == Type.PONG or msg.type == Type.HELLO_REPLY:
            self._note_instance(msg.body.get("instance"))
        if job is None:
            return
        if msg.type == Type.ACCEPTED:
            job.id = msg.job or msg.body.get("job")
            job.position = msg.body.get("position")
            job.state = "queued" if job.state == "submitting" else job.state
            if job.id:
                self.jobs[job.id] = job
            self._note_instance(msg.body.get("instance"))
        elif msg.type == Type.ERROR:
            job.state, job.error = "failed", _error_from(msg)

    def _apply_event(self, msg: Message, job: Job | None = None) -> None:
        job = job or self.jobs.get(msg.job or "")
        if job is None:
            return
        job.events += 1
        body = msg.body
        if msg.type == Type.PROGRESS:
            job.state = "running" if body.get("stage") != "queued" else "queued"
            job.stage = body.get("stage", job.stage)
            job.step = body.get("step", job.step)
            job.total_steps = body.get("total_steps", job.total_steps)
            job.elapsed = body.get("elapsed", job.elapsed)
            if "position" in body:
                job.position = body["position"]
        elif msg.type == Type.RESULT:
            job.state = "done"
            job.result = body
            job.layers = [
                Layer(
                    index=v["index"], seed=v["seed"], x=v["x"], y=v["y"], width=v["image"]["width"],
                    height=v["image"]["height"], stride=v["image"]["stride"], data=msg.buffer(v["image"]["frame"]),
                )
                for v in body.get("variants", [])
            ]
        elif msg.type == Type.CANCELLED:
            job.state = "cancelled"
        elif msg.type == Type.ERROR:
            job.state, job.error = "failed", _error_from(msg)

    def _note_instance(self, instance: Any) -> None:
        if not isinstance(instance, str):
            return
        if self.daemon_instance and instance != self.daemon_instance:
            self._lose_jobs("the daemon restarted; jobs it had were lost")
        self.daemon_instance = instance

    def _check_heartbeat(self) -> None:
        pending = [j for j in list(self.jobs.values()) + list(self._by_request.values()) if not j.finished]
        if not pending:
            return
        now = time.monotonic()
        silent = now - self._last_heard
        if silent > self.lost_after:
            self._lose_jobs(f"no word from the daemon at {self.endpoint} for {silent:.0f} s")
        elif silent > self.heartbeat and now - self._last_ping > self.heartbeat:
            self._last_ping = now
            self.send(Message(type=Type.PING))

    def _lose_jobs(self, why: str) -> None:
        for job in list(self.jobs.values()) + list(self._by_request.values()):
            if not job.finished:
                job.state, job.error = LOST, ProtocolError(LOST, f"job {job.id or '(unsent)'} lost: {why}")
        self._by_request.clear()


def _error_from(msg: Message) -> ProtocolError:
    body = msg.body
    return ProtocolError(str(body.get("code", Code.INTERNAL)), str(body.get("message", "")), dict(body.get("details", {}) or {}))
