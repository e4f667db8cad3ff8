"""The inpaintd client library: pyzmq and msgpack only, so it runs inside an editor.

It works two ways over the same socket:
- blocking, for scripts and tests: `client.inpaint(...)` or `submit` then `wait`;
- non-blocking, for an editor's GUI timer: `submit(..., block=False)`, then call
  `pump()` every few tens of milliseconds and read the `Job` objects it updates.

A socket is not thread-safe: use one Client from one thread.  The client watches the
daemon's heartbeat while jobs are in flight; a daemon that stops answering, or one that
restarted (its instance id changed), turns the jobs into state "lost" instead of leaving
the caller waiting forever.  ZeroMQ reconnects the socket by itself; when the daemon
comes back with a new key (a new connection file), the client re-reads the file and
rebuilds its socket, so the next request works without the caller doing anything.

While jobs are pending and the daemon has been quiet for `heartbeat` seconds, the client
pings and re-asks (`fetch`) for each pending job: a result that was dropped on the way
(the daemon drops events for a client that stopped reading) or sent to the client's
previous connection is fetched again, and a job the daemon no longer knows turns "lost".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import wire
from .bodies import Accepted, Cancelled, Error, Progress, Result
from .connection import connection_file, find_curve_server_key, find_key, resolve_endpoint
from .messages import FINISHED_STATES, JOB_EVENTS, Code, ImageDesc, JobOptions, JobState, ProtocolError, Stage, Type
from .wire import Message

LOST = JobState.LOST
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
    state: JobState | str = JobState.SUBMITTING
    position: int | None = None
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    elapsed: float = 0.0
    layers: list[Layer] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: ProtocolError | None = None
    events: int = 0
    #: Why a cancelled job was cancelled: a `CancelCode` (compare this) and the text for people.
    cancel_code: str = ""
    cancel_reason: str = ""
    #: A `train` job's last step loss and the seconds it still expects (None otherwise).
    loss: float | None = None
    remaining: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def notes_for_user(self, prompt: str = "") -> list[str]:
        """What an artist should hear about a finished job: the daemon's notes (e.g. an
        out-of-memory retry), and that a classical engine filled the area without the prompt
        (which happens silently when the daemon found no diffusion model and fell back)."""
        notes = [str(n) for n in self.result.get("notes") or []]
        if self.result.get("engine") == "classical" and prompt.strip():
            notes.append(
                f"The prompt was not used: the daemon filled the area with its classical engine "
                f"('{self.result.get('model', '?')}'), which works from the surroundings only. Pick a diffusion "
                "model, or see `inpaintd models` for why none is available."
            )
        return notes

    def raise_for_error(self) -> Job:
        if self.state in (JobState.FAILED, JobState.LOST) and self.error:
            raise self.error
        if self.state == JobState.CANCELLED:
            raise ProtocolError(JobState.CANCELLED, f"job {self.id} was cancelled")
        return self


class DaemonUnavailable(ProtocolError):
    def __init__(self, endpoint: str, waited: float, why: str = "") -> None:
        message = (
            f"could not talk to the inpaintd daemon at {endpoint} (waited {waited:.1f} s): {why}" if why
            else f"no inpaintd daemon answered at {endpoint} within {waited:.1f} s; start one with `inpaintd serve`"
        )
        super().__init__(DAEMON_UNAVAILABLE, message)


def _handshake_advice(endpoint: str, event: int, has_curve_key: bool) -> str:
    """Why a connection's security handshake failed, in words an artist can act on."""
    if not has_curve_key:
        return (
            f"a daemon is there but refused the connection's handshake: it uses CURVE encryption and this client "
            f"has no server key (copy its connection file, {connection_file(endpoint)}, or point "
            "INPAINTD_CONNECTION_FILE at a copy)"
        )
    return (
        f"a daemon is there but refused the connection's handshake ({zmq.Event(event).name}): the CURVE server key "
        f"this client has is not the daemon's (an old connection file?), or the daemon does not use CURVE; "
        f"read the daemon's current connection file ({connection_file(endpoint)})"
    )



def _add_addons(body: dict[str, Any], buffers: list[bytes | bytearray | memoryview],
                loras: Sequence[tuple[str, float]] | None,
                references: Sequence[tuple[bytes | memoryview, int, int, int]] | None) -> None:
    """A job request's `loras` and `references` (None: the field is left out), the
    references' pixels in the buffer frames after those already there."""
    if loras is not None:
        body["loras"] = [{"name": name, "weight": float(weight)} for name, weight in loras]
    if references is not None:
        first = len(buffers) + 1
        body["references"] = [ImageDesc(first + i, w, h, c).to_wire() for i, (_pixels, w, h, c) in enumerate(references)]
        buffers += [pixels for pixels, _w, _h, _c in references]

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
        curve_server_key: bytes | str | None = "auto",
    ) -> None:
        """`key` and `curve_server_key` "auto": read them from the daemon's connection file
        (or INPAINTD_KEY), and read them again if the daemon restarts with new ones."""
        self.endpoint = resolve_endpoint(endpoint)
        self._auto_key = key == "auto"
        self._auto_curve = curve_server_key == "auto"
        self.key: bytes | None = find_key(self.endpoint) if self._auto_key else _as_bytes(key)
        self.curve_server_key: bytes | None = (
            find_curve_server_key(self.endpoint) if self._auto_curve else _as_bytes(curve_server_key)
        )
        self.name = name
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self._ctx = context or zmq.Context.instance()
        self._sock = self._make_socket()
        self.reconnects = 0
        self._replies: dict[str, Message] = {}
        self._awaiting: set[str] = set()  # request ids a caller waits on; other replies are not kept
        self._background: dict[str, Job | None] = {}  # heartbeat pings and fetches -> the job they re-ask for
        self._held_events: list[Message] = []  # job events read while waiting for a reply
        self._bad_signatures = 0  # messages that failed the signature check: a key mismatch
        self._by_request: dict[str, Job] = {}
        self.jobs: dict[str, Job] = {}
        self.daemon_instance: str | None = None
        self._last_heard = time.monotonic()
        self._last_ping = 0.0

    # -- plumbing ------------------------------------------------------------------

    def _make_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # never drop our own job events
        if self.curve_server_key:
            public, secret = zmq.curve_keypair()  # a fresh client key: the HMAC key is the credential
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve_server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        # Handshake failures are the one way a socket with the right endpoint can never send:
        # libzmq drops the connection's queue and keeps retrying, so a blocking send would
        # wait for ever.  Watch for them to say what is wrong instead of only "no answer".
        self._monitor = sock.get_monitor_socket(
            zmq.Event.HANDSHAKE_FAILED_NO_DETAIL | zmq.Event.HANDSHAKE_FAILED_PROTOCOL
            | zmq.Event.HANDSHAKE_FAILED_AUTH | zmq.Event.HANDSHAKE_SUCCEEDED
        )
        self._handshake_failed: int | None = None
        sock.connect(self.endpoint)
        return sock

    def _close_socket(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)
        self._sock.close(0)

    def _watch_handshakes(self) -> None:
        """Read the socket's monitor: remember the last handshake failure (cleared by a success)."""
        while self._monitor.poll(0, zmq.POLLIN):
            frames = self._monitor.recv_multipart()
            event = int.from_bytes(frames[0][:2], "little")  # ZMQ event frame: uint16 event, uint32 value
            self._handshake_failed = None if event == zmq.Event.HANDSHAKE_SUCCEEDED else event

    def _unavailable(self, waited: float) -> DaemonUnavailable:
        self._watch_handshakes()
        why = ""
        if self._handshake_failed is not None:
            why = _handshake_advice(self.endpoint, self._handshake_failed, self.curve_server_key is not None)
        return DaemonUnavailable(self.endpoint, waited, why)

    def _refresh_connection(self) -> bool:
        """Re-read the connection file; if the daemon's key changed (it restarted), take
        the new one and rebuild the socket.  True when something changed."""
        key = find_key(self.endpoint) if self._auto_key else self.key
        curve = find_curve_server_key(self.endpoint) if self._auto_curve else self.curve_server_key
        if key == self.key and curve == self.curve_server_key:
            return False
        if key is None and self.key is not None:
            return False  # the file is gone (daemon stopped): keep the old key until a new one appears
        self.key, self.curve_server_key = key, curve
        # A fresh socket: a new CURVE key needs a new handshake, and a new identity costs
        # nothing since pending jobs are re-asked for by id.
        self._close_socket()
        self._sock = self._make_socket()
        self.reconnects += 1
        return True

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message, timeout: float = 0.0) -> str:
        """Send `msg`, waiting at most `timeout` s for the socket to take it.

        A send never blocks beyond that: a socket whose connection has no usable peer (no
        daemon, or a security handshake that failed: a CURVE server key missing or out of
        date) cannot take a message.  While waiting, the connection file is read again about
        once a second; a new key rebuilds the socket and the message goes out signed anew.
        Raises DaemonUnavailable when it could not go out in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._can_send(int(min(max(deadline - time.monotonic(), 0), 1.0) * 1000)):
                try:
                    self._sock.send_multipart(wire.encode(msg, self.key), flags=zmq.NOBLOCK, copy=False)
                    return msg.id
                except zmq.Again:
                    pass  # the peer went away between the poll and the send
            if self._refresh_connection():
                continue  # a new key and a new socket: try it at once
            if time.monotonic() >= deadline:
                raise self._unavailable(timeout)

    def _can_send(self, wait_ms: int) -> bool:
        """Whether a message can go out now, waiting up to `wait_ms` for it.

        POLLOUT alone flickers on a connection whose handshake keeps failing: libzmq makes
        the connection's queue again at each reconnect, before the handshake fails again.
        So a failed handshake, not followed by a successful one, counts as "cannot send"."""
        self._watch_handshakes()
        if self._handshake_failed is None:
            return bool(self._sock.poll(wait_ms, zmq.POLLOUT))
        if self._monitor.poll(wait_ms, zmq.POLLIN):  # wait for the next handshake's outcome
            self._watch_handshakes()
        return self._handshake_failed is None and bool(self._sock.poll(0, zmq.POLLOUT))

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
            except ProtocolError as exc:
                # Wrongly signed: most likely a restarted daemon with a new key.  Re-read
                # the connection file; the message itself is not trusted either way.
                if exc.code == Code.BAD_SIGNATURE:
                    self._bad_signatures += 1
                    if self._refresh_connection():
                        break  # the socket was rebuilt; what the old one held is gone
                continue  # a daemon never sends malformed frames; ignore rather than crash an editor
            self._last_heard = time.monotonic()
            if msg.re is not None and msg.re in self._background:
                self._apply_background(msg)
            elif msg.re is not None:  # a reply to one of our requests (fetch replies carry job events too)
                if msg.re in self._awaiting:
                    self._replies[msg.re] = msg
                self._apply_reply(msg)
            elif msg.type in JOB_EVENTS and msg.job:
                self._apply_event(msg)
                events.append(msg)
        self._check_heartbeat()
        return events

    def request(self, type: str, body: dict[str, Any] | None = None, buffers: list | None = None, timeout: float = 10.0) -> Message:
        """Send a request and wait for its reply; events that arrive meanwhile are kept."""
        msg = Message(type=type, body=body or {}, buffers=buffers or [])
        start = time.monotonic()
        msg_id = self.send(msg, timeout)
        reply = self._await_reply(msg_id, max(timeout - (time.monotonic() - start), 0.0), resend=msg,
                                  waited_before=time.monotonic() - start)
        if reply.type == Type.ERROR:
            raise _error_from(reply)
        return reply

    def _await_reply(self, msg_id: str, timeout: float, resend: Message | None = None, waited_before: float = 0.0) -> Message:
        """Wait for the reply to `msg_id`.  While no answer comes, look at the connection
        file about once a second (and once more before giving up): a daemon that (re)started
        with a new key or CURVE key could not read the request, so it is sent again, signed
        anew, on a new socket."""
        deadline = time.monotonic() + timeout
        next_look = time.monotonic() + min(1.0, timeout / 2)
        bad_before = self._bad_signatures
        self._awaiting.add(msg_id)
        try:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._bad_signatures > bad_before:
                        raise ProtocolError(
                            Code.BAD_SIGNATURE,
                            f"the daemon at {self.endpoint} answers, but signs with another key than this client's "
                            f"({'INPAINTD_KEY' if os.environ.get('INPAINTD_KEY') else connection_file(self.endpoint)}); "
                            "use the key from the daemon's connection file",
                        )
                    raise self._unavailable(timeout + waited_before)
                self._held_events.extend(self._read(min(left, 0.5)))
                if resend is not None and msg_id not in self._replies and time.monotonic() > next_look:
                    next_look = time.monotonic() + 1.0
                    if self._refresh_connection():
                        self.send(resend, max(deadline - time.monotonic(), 0.0))
            return self._replies.pop(msg_id)
        finally:
            self._awaiting.discard(msg_id)

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

    def _send_nowait(self, msg: Message) -> bool:
        try:
            self.send(msg, 0.0)
            return True
        except DaemonUnavailable:
            return False

    def cancel_nowait(self, job: Job | str) -> bool:
        """Ask for a cancel without waiting for the reply, for a GUI thread: the daemon
        confirms with the job's `cancelled` event.  False when it cannot go out now."""
        job_id = job.id if isinstance(job, Job) else job
        return self._send_nowait(Message(type=Type.CANCEL, body={"job": job_id}))

    def cancel(self, job: Job | str, timeout: float = 5.0) -> dict[str, Any]:
        job_id = job.id if isinstance(job, Job) else job
        return self.request(Type.CANCEL, {"job": job_id}, timeout=timeout).body

    def shutdown(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.request(Type.SHUTDOWN, timeout=timeout).body

    def fetch(self, job_id: str, timeout: float = 30.0) -> Job:
        """Ask again for a finished job's result (kept by the daemon for a while)."""
        job = Job(request_id="", id=job_id, state=JobState.QUEUED)
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
        references: Sequence[tuple[bytes | memoryview, int, int, int]] = (),
        loras: Sequence[tuple[str, float]] = (),
        block: bool = True,
        timeout: float = 30.0,
    ) -> Job:
        """Send an inpaint job.  `image` is 8-bit RGB or RGBA, `mask` 8-bit gray of the
        same size (0 keep, 255 regenerate).  `references`: (pixels, width, height, channels)
        of each reference image, RGB or RGBA, tightly packed (models whose entry says
        `takes.reference_image`).  With block=False the Job starts in state "submitting" and
        `pump()` fills in its id when the daemon accepts it."""
        opts = options.to_wire() if isinstance(options, JobOptions) else dict(options or {})
        body = dict(opts)
        body["image"] = ImageDesc(1, width, height, channels, image_stride).to_wire()
        body["mask"] = ImageDesc(2, width, height, 1, mask_stride).to_wire()
        buffers: list[bytes | bytearray | memoryview] = [image, mask]
        _add_addons(body, buffers, loras if loras else None, references if references else None)
        return self._send_job(Message(type=Type.SUBMIT, body=body, buffers=buffers), block, timeout)

    def _send_job(self, msg: Message, block: bool, timeout: float) -> Job:
        """Send a request that starts a job (`submit`, `vary`, `rerun`; each answered by
        `accepted`) and track its job."""
        job = Job(request_id=msg.id)
        self._by_request[msg.id] = job
        if block:
            self._awaiting.add(msg.id)  # before sending: the reply may be read by anyone's _read
        start = time.monotonic()
        try:
            # Non-blocking callers (an editor's GUI thread) never wait for the socket: a job
            # that cannot go out at once is lost now, with the reason, rather than freezing.
            self.send(msg, timeout if block else 0.0)
        except DaemonUnavailable as exc:
            self._awaiting.discard(msg.id)
            self._by_request.pop(msg.id, None)
            job.state, job.error = LOST, exc
            if block:
                raise
            return job
        self._last_heard = max(self._last_heard, time.monotonic() - self.heartbeat)
        if block:
            try:
                reply = self._await_reply(msg.id, max(timeout - (time.monotonic() - start), 0.0), waited_before=time.monotonic() - start)
            except DaemonUnavailable as exc:
                job.state, job.error = LOST, exc
                raise
            if reply.type == Type.ERROR:
                raise _error_from(reply)
        return job

    # -- the artist's loop (PROTOCOL.md 5.9-5.12) -------------------------------------

    def vary(
        self,
        job_id: str,
        variant: int = 0,
        *,
        preset: str = "subtle",
        strength: float | None = None,
        options: dict[str, Any] | None = None,
        pixels: tuple[bytes | memoryview, int, int, int, bytes | memoryview, int, int] | None = None,
        loras: Sequence[tuple[str, float]] | None = None,
        references: Sequence[tuple[bytes | memoryview, int, int, int]] | None = None,
        block: bool = True,
        timeout: float = 30.0,
    ) -> Job:
        """New variants of variant `variant` of job `job_id`, inside the same mask: `preset`
        "subtle" or "strong" (or an explicit `strength`), new seeds; `options` changes any job
        option (a new prompt: Remix).  `pixels` = (image, width, height, channels, mask, x, y)
        sends the variant's pixels and mask where the daemon no longer keeps them (it says
        `expired`); x, y: where they sit on the canvas.  `loras`, `references` (as in
        `submit`) replace those of the job; None keeps them, an empty list drops them."""
        body: dict[str, Any] = {"job": job_id, "variant": variant, "preset": preset}
        if strength is not None:
            body["strength"] = strength
        if options:
            body["options"] = dict(options)
        buffers: list[bytes | bytearray | memoryview] = []
        if pixels is not None:
            image, width, height, channels, mask, x, y = pixels
            body["image"] = ImageDesc(1, width, height, channels).to_wire()
            body["mask"] = ImageDesc(2, width, height, 1).to_wire()
            body["x"], body["y"] = x, y
            buffers = [image, mask]
        _add_addons(body, buffers, loras, references)
        return self._send_job(Message(type=Type.VARY, body=body, buffers=buffers), block, timeout)

    def rerun(self, job_id: str, options: dict[str, Any] | None = None, *,
              loras: Sequence[tuple[str, float]] | None = None,
              references: Sequence[tuple[bytes | memoryview, int, int, int]] | None = None,
              block: bool = True, timeout: float = 30.0) -> Job:
        """Job `job_id` again from the history: the same region, mask, options, seeds, LoRAs
        and references (the same pixels), or with `options` changed; `loras`, `references`
        replace the job's (an empty list drops them)."""
        body: dict[str, Any] = {"job": job_id}
        if options:
            body["options"] = dict(options)
        buffers: list[bytes | bytearray | memoryview] = []
        _add_addons(body, buffers, loras, references)
        return self._send_job(Message(type=Type.RERUN, body=body, buffers=buffers), block, timeout)

    def train(
        self,
        images: Sequence[tuple[bytes | memoryview, int, int, int]],
        token: str,
        class_noun: str,
        name: str,
        *,
        masks: Sequence[bytes | memoryview | None] = (),
        block: bool = True,
        timeout: float = 30.0,
        **settings: Any,
    ) -> Job:
        """Teach the daemon a subject (PROTOCOL.md 5.14): a LoRA named `name`, trained on
        `images` ((pixels, width, height, channels), RGB or RGBA, tightly packed) of the
        subject, called "`token` `class_noun`" in prompts.  `masks`: per image, 8-bit gray
        of its size (the subject is learned where it is not 0) or None; empty: none.
        `settings`: `steps`, `rank`, `learning_rate`, `resolution`, `prior_images`, `seed`,
        `model`, `checkpoint_every`.  The Job's events are `progress` (stage `training`,
        with `loss` and `remaining`) and a `result` whose `trained` names the LoRA."""
        body: dict[str, Any] = {"token": token, "class_noun": class_noun, "name": name, **settings}
        buffers: list[bytes | bytearray | memoryview] = []
        descs = []
        for pixels, width, height, channels in images:
            buffers.append(pixels)
            descs.append(ImageDesc(len(buffers), width, height, channels).to_wire())
        body["images"] = descs
        if masks:
            mask_descs: list[dict[str, int] | None] = []
            for mask, (_pixels, width, height, _channels) in zip(masks, images, strict=False):
                if mask is None:
                    mask_descs.append(None)
                    continue
                buffers.append(mask)
                mask_descs.append(ImageDesc(len(buffers), width, height, 1).to_wire())
            body["masks"] = mask_descs
        return self._send_job(Message(type=Type.TRAIN, body=body, buffers=buffers), block, timeout)

    def history(self, query: str = "", *, offset: int = 0, limit: int = 20, starred: bool = False,
                timeout: float = 10.0) -> dict[str, Any]:
        """A page of the daemon's history, newest first: the `history_reply` body, each
        variant's `thumbnail` descriptor with its RGBA bytes added as `thumbnail["pixels"]`."""
        reply = self.request(Type.HISTORY, {"query": query, "offset": offset, "limit": limit, "starred": starred},
                             timeout=timeout)
        for entry in reply.body.get("entries", []):
            _attach_thumbnails(reply, entry)
        return dict(reply.body)

    def star(self, job_id: str, starred: bool = True, timeout: float = 10.0) -> dict[str, Any]:
        """Star (kept whatever the history's budget) or unstar a history entry; the entry."""
        reply = self.request(Type.HISTORY_STAR, {"job": job_id, "starred": starred}, timeout=timeout)
        return _attach_thumbnails(reply, dict(reply.body.get("entry", {})))

    def styles(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        return list(self.request(Type.STYLES, timeout=timeout).body.get("styles", []))

    def save_style(self, name: str, style: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Save a user style on the daemon (its fields: PROTOCOL.md 5.12)."""
        return dict(self.request(Type.STYLE_SAVE, {"name": name, "style": style}, timeout=timeout).body.get("style", {}))

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
            accepted = Accepted.from_body(msg.body)
            job.id = msg.job or accepted.job
            job.position = accepted.position
            job.state = JobState.QUEUED if job.state == JobState.SUBMITTING else job.state
            if job.id:
                self.jobs[job.id] = job
            self._note_instance(msg.body.get("instance"))
        elif msg.type == Type.ERROR:
            job.state, job.error = JobState.FAILED, _error_from(msg)

    def _apply_event(self, msg: Message, job: Job | None = None) -> None:
        job = job or self.jobs.get(msg.job or "")
        if job is None:
            return
        job.events += 1
        if msg.type == Type.PROGRESS:
            progress = Progress.from_body(msg.body)
            job.state = JobState.QUEUED if progress.stage == Stage.QUEUED else JobState.RUNNING
            job.stage, job.step, job.total_steps, job.elapsed = progress.stage, progress.step, progress.total_steps, progress.elapsed
            if progress.position is not None:
                job.position = progress.position
            if progress.loss is not None:
                job.loss, job.remaining = progress.loss, progress.remaining
        elif msg.type == Type.RESULT:
            job.state = JobState.DONE
            job.result = msg.body  # as sent: callers read its fields (notes, engine, timings, ...)
            job.layers = [
                Layer(index=v.index, seed=v.seed, x=v.x, y=v.y, width=v.image.width, height=v.image.height,
                      stride=v.image.stride, data=msg.buffer(v.image.frame))
                for v in Result.from_body(msg.body).variants
            ]
        elif msg.type == Type.CANCELLED:
            cancelled = Cancelled.from_body(msg.body)
            job.state = JobState.CANCELLED
            job.cancel_code, job.cancel_reason = cancelled.code, cancelled.reason
        elif msg.type == Type.ERROR:
            job.state, job.error = JobState.FAILED, _error_from(msg)

    def _note_instance(self, instance: Any) -> None:
        if not isinstance(instance, str):
            return
        if self.daemon_instance and instance != self.daemon_instance:
            self._lose_jobs("the daemon restarted; jobs it had were lost")
        self.daemon_instance = instance

    def _apply_background(self, msg: Message) -> None:
        """A reply to a heartbeat: a pong, or the answer to re-asking for a pending job."""
        job = self._background.pop(msg.re or "", None)
        if msg.type == Type.PONG:
            self._note_instance(msg.body.get("instance"))
            return
        if job is None or job.finished:
            return
        error = Error.from_body(msg.body) if msg.type == Type.ERROR else None
        if error is not None and error.code == Code.NOT_FOUND:
            job.state = LOST
            job.error = ProtocolError(LOST, f"job {job.id} lost: the daemon no longer knows it ({error.message})")
        elif msg.type in JOB_EVENTS:
            self._apply_event(msg, job)

    def _check_heartbeat(self) -> None:
        pending = [j for j in list(self.jobs.values()) + list(self._by_request.values()) if not j.finished]
        if not pending:
            self._background.clear()
            return
        now = time.monotonic()
        silent = now - self._last_heard
        if silent > self.lost_after:
            self._lose_jobs(f"no word from the daemon at {self.endpoint} for {silent:.0f} s")
        elif silent > self.heartbeat and now - self._last_ping > self.heartbeat:
            self._last_ping = now
            if self._refresh_connection():
                pass  # new key: the daemon restarted; the pong below tells us its instance
            if len(self._background) > 1000:  # unanswered re-asks of a daemon that is away
                self._background.clear()
            ping = Message(type=Type.PING)
            if not self._send_nowait(ping):
                return  # nothing can go out now; silence keeps counting towards lost_after
            self._background[ping.id] = None
            for job in pending:
                if job.id:  # re-ask: fetches a dropped result, re-attaches us to a live job
                    ask = Message(type=Type.FETCH, body={"job": job.id})
                    if self._send_nowait(ask):
                        self._background[ask.id] = job

    def _lose_jobs(self, why: str) -> None:
        for job in list(self.jobs.values()) + list(self._by_request.values()):
            if not job.finished:
                job.state, job.error = LOST, ProtocolError(LOST, f"job {job.id or '(unsent)'} lost: {why}")
        self._by_request.clear()
        self._background.clear()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode("ascii") if isinstance(value, str) else value


def _attach_thumbnails(msg: Message, entry: dict[str, Any]) -> dict[str, Any]:
    for v in entry.get("variants", []):
        thumb = v.get("thumbnail")
        if isinstance(thumb, dict):
            thumb["pixels"] = bytes(msg.buffer(int(thumb.get("frame", 0))))
    return entry


def _error_from(msg: Message) -> ProtocolError:
    return Error.from_body(msg.body).exception()
