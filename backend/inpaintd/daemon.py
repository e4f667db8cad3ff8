"""The inpaintd daemon: a ZeroMQ ROUTER socket in front of a queue and one GPU worker.

The main thread owns the socket and answers every request at once (ping, status,
cancel and model lists never wait for a running job).  A worker thread runs jobs one at
a time on the warm model and hands its events back through an outbox, because ZeroMQ
sockets must not be shared between threads.

Trust, in brief (PROTOCOL.md has the whole policy): every request is HMAC-signed with the
key of the 0600 connection file and checked against a replay window; the ROUTER refuses
messages over the size limit before they reach Python; only configured models can be
named; a peer that stops reading is dropped by ZeroMQ heartbeats, and what it missed stays
fetchable by job id; an engine failure fails one job, not the daemon.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import zmq

from inpaintd_protocol import wire
from inpaintd_protocol.connection import connection_file, is_loopback, write_connection_file
from inpaintd_protocol.messages import (
    CANCEL_REASONS, LIMITS, PROTOCOL_VERSION, REQUEST_TYPES, SCHEDULERS, CancelCode, Code, ImageDesc, Limits, ProtocolError, Stage,
    Type,
)
from inpaintd_protocol.wire import Message

from . import __version__
from .engines.base import EngineError, JobCancelled, is_out_of_memory
from .jobs import FairQueue, Finished, Job, ResultStore
from .models import PICKLE_SUFFIXES
from .runner import run_job, variant_seeds
from .validation import parse_submit

log = logging.getLogger("inpaintd")

REPLAY_WINDOW = 300.0  # seconds a signed message stays valid, and its id remembered
CAPABILITIES = ["progress", "cancel", "fetch", "soft_mask", "variants", "rgba", "stride", "hmac-sha256",
                "queue_position", "color_match", "outpaint"]
#: Messages ZeroMQ queues per peer in each direction.  Past it, events for a peer that does
#: not read are dropped (results stay fetchable), so a stuck client costs bounded memory.
PEER_HWM = 1000
#: Jobs queued for all clients together (the per-client limit is in Limits).
MAX_QUEUE_TOTAL = 1024
#: Longest model name looked up: a model id is a repo id or a configured path, never more.
MAX_MODEL_CHARS = 4096
#: Error messages echo what the client sent; keep them readable and small.
MAX_ERROR_CHARS = 2000
#: At most this many refusals are logged per 10 s; the rest are counted and summarised.
REFUSALS_LOGGED_PER_WINDOW = 20
#: While a model loads, the job waiting for it hears `loading` again this often (seconds),
#: with the time it has waited, so that a client can tell a slow load from a dead daemon.
LOADING_TICK = 1.0


def rss_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Daemon:
    def __init__(
        self,
        registry: Any,  # inpaintd.models.ModelRegistry, or anything with its interface
        bind: str,
        *,
        key: bytes | None = None,
        limits: Limits = LIMITS,
        results_ttl: float = 600.0,
        results_max_bytes: int = 1 << 30,
        preload: bool = True,
        write_connection: bool = True,
        curve: bool = False,
        fault_injection: bool = False,
        fault_load_delay: float = 0.0,
        peer_timeout: float = 30.0,
    ) -> None:
        """`peer_timeout`: seconds a connected peer may leave ZeroMQ heartbeats unanswered
        (a frozen or vanished process) before its connection and queued events are dropped.
        `fault_injection` adds the "fault-injector" test model; never on unless asked.
        `fault_load_delay` (with it): each model's first load takes this much longer."""
        if not key and not is_loopback(bind):
            raise ValueError(f"refusing to listen on {bind} without authentication: only loopback may go unsigned")
        if fault_injection:
            from .engines.fault import FaultInjectionRegistry

            registry = FaultInjectionRegistry(registry, load_delay=fault_load_delay)
            log.warning("fault injection is ON: the 'fault-injector' model fails on request; never use this in production")
        self.registry = registry
        self.bind = bind
        self.key = key
        self.limits = limits
        self.fault_injection = fault_injection
        self.instance = uuid.uuid4().hex
        self.started = time.time()
        self.device = "unknown"
        self.loaded_model: str | None = None
        self._preload = preload
        # (model id, monotonic start) while the worker loads a model.  Set from the start
        # when the default model is to be preloaded, so that no status or hello answered
        # before the worker begins says the daemon is ready (PROTOCOL.md 9.14).
        self._loading: tuple[str, float] | None = (registry.default_model_id, time.monotonic()) if preload else None
        self._write_connection = write_connection
        self._queue = FairQueue()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._results = ResultStore(ttl=results_ttl, max_bytes=results_max_bytes)
        self._outbox: queue.SimpleQueue[tuple[bytes, Message]] = queue.SimpleQueue()
        self._seen: OrderedDict[str, float] = OrderedDict()  # message id -> arrival, oldest first
        self._stopping = threading.Event()
        self._seq = 0
        self.stats: Counter[str] = Counter()
        self._refusal_window = (0.0, 0)  # (window start, refusals logged in it)
        self._unlogged_refusals = 0
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
        self._wake_addr = f"inproc://wake-{self.instance}"
        self._wake = self._ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_addr)
        self.endpoint = self._bind(bind)
        self._handlers: dict[str, Callable[[bytes, Message], Message | None]] = {
            Type.HELLO: self._on_hello,
            Type.PING: self._on_ping,
            Type.LIST_MODELS: self._on_list_models,
            Type.SUBMIT: self._on_submit,
            Type.CANCEL: self._on_cancel,
            Type.STATUS: self._on_status,
            Type.FETCH: self._on_fetch,
            Type.SHUTDOWN: self._on_shutdown,
        }
        self._worker = threading.Thread(target=self._work, name="inpaintd-worker", daemon=True)
        self._worker_wake: zmq.Socket | None = None

    def _bind(self, endpoint: str) -> str:
        try:
            self._router.bind(endpoint)
        except zmq.ZMQError as exc:
            raise SystemExit(f"inpaintd: cannot bind {endpoint}: {exc} (is another daemon running there?)") from None
        return self._router.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    # -- life cycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to shut down; safe from signal handlers and other threads.

        Policy: the running job is cancelled at its next step (its client gets `cancelled`
        with the reason), queued jobs are cancelled, then the daemon exits with status 0."""
        self._stopping.set()
        # No lock here: a signal handler runs on the main thread, which may hold it.
        running = self._running
        if running:
            running.cancel_code = CancelCode.SHUTDOWN
            running.cancel_requested.set()

    def serve_forever(self) -> None:
        if self.key and self._write_connection:
            extra: dict[str, Any] = {"pid": os.getpid(), "instance": self.instance}
            if self.curve_public_key:
                extra["curve_server_key"] = self.curve_public_key.decode("ascii")
            path = write_connection_file(self.endpoint, self.key, extra)
            log.info("connection file: %s", path)
        self._worker.start()
        log.info(
            "inpaintd %s listening on %s (protocol %d, auth %s, curve %s)", __version__, self.endpoint,
            PROTOCOL_VERSION, "on" if self.key else "off", "on" if self.curve_public_key else "off",
        )
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll(250))
                if self._router in ready:
                    self._read_requests()
                if self._wake in ready:
                    while self._wake.poll(0):
                        self._wake.recv()
                self._tell_loading()
                self._flush_outbox()
            self._shutdown()
        finally:
            self._router.close(linger=500)
            self._wake.close(0)
            self._ctx.term()
            if self.key and self._write_connection:
                try:
                    connection_file(self.endpoint).unlink()
                except OSError:
                    pass
            log.info("inpaintd stopped")

    def _shutdown(self) -> None:
        with self._cond:
            dropped = self._queue.drain()
            running = self._running
            if running:
                running.cancel_code = running.cancel_code or CancelCode.SHUTDOWN
                running.cancel_requested.set()
            self._cond.notify_all()
        for job in dropped:
            job.state = "cancelled"
            self.stats["jobs_cancelled"] += 1
            self._finish(job, _cancelled(job.id, CancelCode.SHUTDOWN))
        self._worker.join(timeout=30)
        self._flush_outbox()
        self.registry.close()

    # -- the socket side (main thread) -----------------------------------------------------

    def _read_requests(self) -> None:
        for _ in range(100):  # bounded, so events keep flowing under a flood of requests
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, frames = frames[0].bytes, frames[1:]
            self.stats["requests"] += 1
            reply = self._handle(identity, frames)
            if reply is not None:
                self._send(identity, reply)

    def _handle(self, identity: bytes, frames: list) -> Message | None:
        msg_id: str | None = None
        try:
            # Frames, signature, version (before anything else it might do differently),
            # header fields, buffers: PROTOCOL.md section 8's order.
            msg = wire.decode(frames, self.key, version=PROTOCOL_VERSION)
            msg_id = msg.id
            if self.key:
                self._check_replay(msg)
            handler = self._handlers.get(msg.type)
            if handler is None:
                raise ProtocolError(
                    Code.UNKNOWN_TYPE,
                    f"unknown message type '{msg.type}'; requests are: {', '.join(sorted(REQUEST_TYPES))}",
                )
            return handler(identity, msg)
        except ProtocolError as exc:
            re = msg_id or (exc.details.get("re") if isinstance(exc.details.get("re"), str) else None)
            details = {k: v for k, v in exc.details.items() if k != "re"}
            self._refused(exc.code, exc.message, identity)
            return wire.error_message(exc.code, _short(exc.message), re=re, **details)
        except EngineError as exc:
            self._refused(exc.code, exc.message, identity)
            return wire.error_message(exc.code, _short(exc.message), re=msg_id)
        except Exception as exc:  # a bug of ours must not take the daemon down
            self.stats["refused_" + Code.INTERNAL] += 1
            log.exception("internal error while handling a request")
            return wire.error_message(Code.INTERNAL, _short(f"internal error: {type(exc).__name__}: {exc}"), re=msg_id)

    def _refused(self, code: str, message: str, identity: bytes) -> None:
        """Count and log a refused request; a flood is summarised, not written line by line."""
        self.stats["refused_" + code] += 1
        now = time.monotonic()
        start, logged = self._refusal_window
        if now - start > 10.0:
            if self._unlogged_refusals:
                log.warning("%d more requests refused in the last 10 s (not logged one by one)", self._unlogged_refusals)
            start, logged, self._unlogged_refusals = now, 0, 0
        if logged < REFUSALS_LOGGED_PER_WINDOW:
            log.warning("request refused (%s) from peer %s: %s", code, identity.hex()[:10], _short(message, 300))
            logged += 1
        else:
            self._unlogged_refusals += 1
        self._refusal_window = (start, logged)

    def _check_replay(self, msg: Message) -> None:
        """A signed message is valid once, within REPLAY_WINDOW seconds of its timestamp.

        Ids are remembered for the window from their arrival; a message older than that
        fails the timestamp test anyway, so forgetting it then is safe."""
        now = time.time()
        while self._seen:
            first_id, arrived = next(iter(self._seen.items()))
            if now - arrived <= REPLAY_WINDOW:
                break
            del self._seen[first_id]
        if not abs(now - msg.ts) <= REPLAY_WINDOW:
            raise ProtocolError(Code.BAD_SIGNATURE, f"message timestamp 'ts' is {now - msg.ts:.0f} s off the daemon's clock; the window is {REPLAY_WINDOW:.0f} s")
        if msg.id in self._seen:
            raise ProtocolError(Code.BAD_SIGNATURE, f"message id {_short(msg.id, 80)} was already used (replayed message)")
        self._seen[msg.id] = now

    def _send(self, identity: bytes, msg: Message) -> None:
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

    def _flush_outbox(self) -> None:
        while True:
            try:
                identity, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(identity, msg)

    # -- request handlers -------------------------------------------------------------------

    def _reply(self, msg: Message, type: str, body: dict[str, Any], job: str | None = None) -> Message:
        return Message(type=type, body=body, re=msg.id, job=job)

    def _on_hello(self, identity: bytes, msg: Message) -> Message:
        return self._reply(msg, Type.HELLO_REPLY, {
            "daemon_version": __version__,
            "protocol_version": PROTOCOL_VERSION,
            "instance": self.instance,
            "engines": sorted({m.engine for m in self.registry.list()}),
            "models": [m.to_wire() for m in self.registry.list()],
            "default_model": self.registry.default_model_id,
            "loaded_model": self.loaded_model,
            "device": self.device,
            "loading": self._loading[0] if self._loading else None,
            "schedulers": list(SCHEDULERS),
            "capabilities": CAPABILITIES,
            "limits": self.limits.to_wire(),
            "notices": [*self.registry.notices, *self.registry.engine_notes],
            "auth": bool(self.key),
            "curve": bool(self.curve_public_key),
            "results_ttl": self._results.ttl,
        })

    def _on_ping(self, identity: bytes, msg: Message) -> Message:
        return self._reply(msg, Type.PONG, {"instance": self.instance, "time": time.time(), "uptime": time.time() - self.started})

    def _on_list_models(self, identity: bytes, msg: Message) -> Message:
        return self._reply(msg, Type.MODELS, {
            "models": [m.to_wire() for m in self.registry.list()],
            "default": self.registry.default_model_id,
            "loaded": self.loaded_model,
        })

    def _on_submit(self, identity: bytes, msg: Message) -> Message:
        if self._stopping.is_set():
            raise ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down and takes no new jobs")
        for name in ("guidance_scale", "strength"):  # NaN passes any range test
            value = msg.body.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ProtocolError(Code.BAD_VALUE, f"'{name}' is {value}; it must be a finite number", {"field": name})
        request = parse_submit(msg, self.limits)
        model_id = self._allowed_model(request.options.model or self.registry.default_model_id)
        info = self.registry.get(model_id)
        seeds = variant_seeds(request.options.seed, request.options.variants)
        job = Job(owner=identity, request=request, model=model_id, seeds=seeds)
        with self._cond:
            if self._queue.count(identity) >= self.limits.max_queue_per_client:
                raise ProtocolError(Code.QUEUE_FULL, f"this client already has {self.limits.max_queue_per_client} jobs queued; wait for some to finish")
            if len(self._queue) >= MAX_QUEUE_TOTAL:
                raise ProtocolError(Code.QUEUE_FULL, f"the daemon already has {MAX_QUEUE_TOTAL} jobs queued; try again later")
            self._queue.push(job)
            position = job.position = self._queue.position(job.id) + (1 if self._running else 0)
            self._announce_positions()  # round-robin may have put it ahead of others' jobs
            self._cond.notify_all()
        log.info("job %s accepted: %dx%d, model %s, %d variant(s), position %d", job.id, request.mask.shape[1], request.mask.shape[0], model_id, len(seeds), position)
        return self._reply(msg, Type.ACCEPTED, {"job": job.id, "position": position, "seeds": seeds, "model": model_id, "instance": self.instance}, job=job.id)

    def _allowed_model(self, model_id: str) -> str:
        """The registry id of a model the daemon was configured with, or a typed refusal.

        Only ids the registry lists are accepted (repo ids and paths given on the daemon's
        command line, and the built-in engines): a path sent over the wire is never opened
        unless it names one of those.  Pickle checkpoints are refused without --allow-pickle."""
        if len(model_id) > MAX_MODEL_CHARS:
            raise ProtocolError(Code.UNKNOWN_MODEL, f"model name is {len(model_id)} characters; no configured model is that long", {"field": "model"})
        try:
            info = self.registry.get(model_id)
        except EngineError:
            raise
        except (ValueError, OSError) as exc:  # e.g. a NUL byte or an over-long path component
            raise ProtocolError(Code.UNKNOWN_MODEL, f"unknown model {model_id!r:.200}: {exc}", {"field": "model"}) from None
        if not info.available:
            if info.kind == "single_file" and Path(info.id).suffix.lower() in PICKLE_SUFFIXES and not getattr(self.registry, "allow_pickle", False):
                raise ProtocolError(Code.MODEL_REFUSED, f"model '{info.id}' is refused: {info.detail}", {"model": info.id})
            raise ProtocolError(Code.MODEL_UNAVAILABLE, f"model '{model_id}' is not available: {info.detail}", {"model": model_id})
        return info.id

    def _on_cancel(self, identity: bytes, msg: Message) -> Message:
        job_id = _job_field(msg)
        with self._cond:
            queued = self._queue.remove(job_id)
            if queued:
                self._announce_positions()
            # A job whose terminal event is already out counts as finished, even if the
            # worker has not yet let go of it.
            running = self._running if self._running and self._running.id == job_id and self._running.state == "running" else None
            if running:
                running.cancel_code = CancelCode.RUNNING
                running.cancel_requested.set()
        if queued:
            queued.state = "cancelled"
            self.stats["jobs_cancelled"] += 1
            self._finish(queued, _cancelled(job_id, CancelCode.QUEUED))
            self._flush_outbox()
            return self._reply(msg, Type.CANCEL_REPLY, {"job": job_id, "state": "cancelled"}, job=job_id)
        if running:
            return self._reply(msg, Type.CANCEL_REPLY, {"job": job_id, "state": "cancelling"}, job=job_id)
        if self._results.get(job_id):
            return self._reply(msg, Type.CANCEL_REPLY, {"job": job_id, "state": "finished"}, job=job_id)
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running or recently finished")

    def _on_status(self, identity: bytes, msg: Message) -> Message:
        with self._cond:
            running = [self._running.summary()] if self._running else []
            queued = [j.summary() for j in self._queue.order()]
        return self._reply(msg, Type.STATUS_REPLY, {
            "instance": self.instance,
            "daemon_version": __version__,
            "uptime": time.time() - self.started,
            "device": self.device,
            "default_model": self.registry.default_model_id,
            "loaded_model": self.loaded_model,
            "loading": self._loading[0] if self._loading else None,
            "running": running,
            "queued": queued,
            "stats": dict(self.stats),
            "results_kept": len(self._results),
            "results_kept_bytes": self._results.nbytes,
            "rss_bytes": rss_bytes(),
        })

    def _on_fetch(self, identity: bytes, msg: Message) -> Message:
        job_id = _job_field(msg)
        done = self._results.get(job_id)
        if done:
            again = done.message
            return Message(type=again.type, body=again.body, buffers=again.buffers, job=job_id, re=msg.id)
        with self._cond:
            live = self._running if self._running and self._running.id == job_id else None
            live = live or next((j for j in self._queue.order() if j.id == job_id), None)
            if live:
                # A reconnected client takes over the job's events, and its turn in the queue.
                if live is not self._running and self._queue.remove(job_id) is not None:
                    live.owner = identity
                    self._queue.push(live)
                    self._announce_positions()
                live.owner = identity
                body = {"job": job_id, "stage": live.stage, "step": live.step, "total_steps": live.total_steps, "elapsed": 0.0}
                if live is not self._running:
                    body["position"] = live.position
                return self._reply(msg, Type.PROGRESS, body, job=job_id)
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running or kept (results are kept {self._results.ttl:.0f} s)")

    def _on_shutdown(self, identity: bytes, msg: Message) -> Message:
        log.info("shutdown requested by a client")
        self.stop()
        return self._reply(msg, Type.SHUTDOWN_REPLY, {
            "state": "shutting_down",
            "policy": "the running job is cancelled at its next step; queued jobs are cancelled; their clients get 'cancelled'",
        })

    # -- the worker thread ------------------------------------------------------------------

    def _emit(self, owner: bytes, msg: Message) -> None:
        """Queue a message for the socket thread; wake it when called from the worker."""
        self._outbox.put((owner, msg))
        if threading.current_thread() is self._worker:
            self._wake_socket_thread()

    def _announce_positions(self) -> None:
        """Tell each queued job's client its new place in the queue, when it changed.

        Called with `_cond` held wherever the order changes: a job starts, a queued job is
        cancelled, a submit lands ahead of other clients' jobs (round-robin).  Positions
        count a running job, as `accepted.position` does.
        """
        ahead = 1 if self._running else 0
        for index, job in enumerate(self._queue.order()):
            position = index + ahead
            if job.position != position:
                job.position = position
                if position:  # no longer next in line: it waits for jobs again, not for a load
                    job.stage, job.step, job.total_steps, job.clock, job.loading_told = Stage.QUEUED, 0, 0, 0.0, 0.0
                self._emit(job.owner, Message(type=Type.PROGRESS, job=job.id, body={
                    "job": job.id, "stage": Stage.QUEUED, "step": 0, "total_steps": 0, "position": position, "elapsed": 0.0,
                }))

    def _tell_loading(self) -> None:
        """While the worker loads a model, tell the job that waits for it, about every
        LOADING_TICK seconds: `loading` 0/1 with the seconds it has waited so far.

        That job is the running one when it loads its own model, else (the default model
        loading at start-up) the job next in line, whose `elapsed` then counts from the
        moment it began to wait and goes on counting when it starts (`Job.clock`)."""
        with self._cond:
            if self._loading is None:
                return
            job = self._running or next(self._queue.order(), None)
            now = time.monotonic()
            if job is None or now - job.loading_told < LOADING_TICK:
                return
            job.clock = job.clock or now
            job.loading_told = now
            job.stage, job.step, job.total_steps = Stage.LOADING, 0, 1
            self._emit(job.owner, Message(type=Type.PROGRESS, job=job.id, body={
                "job": job.id, "stage": Stage.LOADING, "step": 0, "total_steps": 1, "elapsed": round(now - job.clock, 4),
            }))

    def _finish(self, job: Job, msg: Message) -> None:
        self._results.put(Finished(job.id, job.owner, msg))
        self._emit(job.owner, msg)

    def _work(self) -> None:
        self._worker_wake = self._ctx.socket(zmq.PUSH)
        self._worker_wake.setsockopt(zmq.LINGER, 0)
        self._worker_wake.setsockopt(zmq.SNDHWM, 1)
        self._worker_wake.connect(self._wake_addr)
        try:
            self._work_loop()
        finally:
            self._worker_wake.close(0)

    def _work_loop(self) -> None:
        self._preload_default()
        while True:
            with self._cond:
                while not self._stopping.is_set() and len(self._queue) == 0:
                    self._cond.wait(0.5)
                if self._stopping.is_set():
                    break
                job = self._queue.pop()
                if job is None:
                    continue
                self._seq += 1
                job.seq = self._seq
                self._running = job
                job.state, job.started = "running", time.monotonic()
                job.clock = job.clock or job.started  # earlier if it waited for the start-up load
                self._announce_positions()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    job.request = None  # type: ignore[assignment]  # free the pixels

    def _preload_default(self) -> None:
        """Load the default model before the first job; the daemon is ready after this."""
        if not self._preload:
            return
        try:
            engine = self.registry.load(self.registry.default_model_id)
            self.device, self.loaded_model = engine.device, engine.model_id
            log.info("model %s ready on %s", engine.model_id, engine.device)
        except Exception as exc:
            log.error("could not preload the default model %s: %s", self.registry.default_model_id, exc)
        finally:
            with self._cond:
                self._loading = None
            self._wake_socket_thread()

    def _loading_progress(self, job: Job, progress: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
        """`progress` for the load of a job's model, which also marks the load as under way
        between its 0/1 and 1/1 (for `_tell_loading`, and `loading` in status and hello)."""

        def report(stage: str, step: int, total: int) -> None:
            if stage == Stage.LOADING:
                with self._cond:
                    now = time.monotonic()
                    self._loading = (job.model, now) if step < total else None
                    job.loading_told = now
            progress(stage, step, total)

        return report

    def _wake_socket_thread(self) -> None:
        """Have the socket thread flush the outbox now; only from the worker thread."""
        if self._worker_wake is not None:
            try:
                self._worker_wake.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a wake-up is already pending

    def _run(self, job: Job) -> None:
        start = job.clock or time.monotonic()

        def progress(stage: str, step: int, total: int) -> None:
            job.stage, job.step, job.total_steps = stage, step, total
            self._emit(job.owner, Message(type=Type.PROGRESS, job=job.id, body={
                "job": job.id, "stage": stage, "step": step, "total_steps": total, "elapsed": round(time.monotonic() - start, 4),
            }))

        request = job.request
        engine: Any = None
        try:
            if job.cancel_requested.is_set():
                raise JobCancelled()
            try:
                engine = self.registry.load(job.model, self._loading_progress(job, progress))
            finally:
                with self._cond:
                    self._loading = None
            if job.stage == Stage.LOADING and job.step < job.total_steps:
                progress(Stage.LOADING, 1, 1)  # it waited for the start-up load, which is done
            self.device, self.loaded_model = engine.device, engine.model_id
            output = run_job(engine, request.image, request.mask, request.options, job.seeds, progress, job.cancel_requested.is_set)
        except JobCancelled:
            job.state = "cancelled"
            self.stats["jobs_cancelled"] += 1
            code = job.cancel_code or CancelCode.RUNNING
            log.info("job %s cancelled after %.2f s: %s", job.id, time.monotonic() - start, CANCEL_REASONS[code])
            self._finish(job, _cancelled(job.id, code))
            return
        except Exception as exc:
            # One job fails, not the daemon: the client hears what broke, the engine gives
            # back what it held, and the worker takes the next job on the same warm model.
            job.state = "failed"
            self.stats["jobs_failed"] += 1
            if isinstance(exc, (EngineError, ProtocolError)):
                code, text = exc.code, exc.message
                log.error("job %s failed: %s: %s", job.id, code, text)
            elif is_out_of_memory(exc):
                code, text = Code.OUT_OF_MEMORY, f"out of memory: {type(exc).__name__}: {exc}"
                log.error("job %s: %s", job.id, text)
            else:
                code, text = Code.ENGINE_FAILURE, f"engine failure: {type(exc).__name__}: {exc}"
                log.exception("job %s: engine failure", job.id)
            self.stats["jobs_failed_" + code] += 1
            self._free_engine_memory(engine)
            self._finish(job, wire.error_message(code, _short(text), job=job.id))
            return
        variants = []
        buffers = []
        for layer in output.layers:
            h, w = layer.rgba.shape[:2]
            buffers.append(memoryview(layer.rgba).cast("B"))
            variants.append({
                "index": layer.index, "seed": layer.seed, "x": layer.x, "y": layer.y,
                "image": ImageDesc(len(buffers), w, h, 4).to_wire(),
            })
        elapsed = time.monotonic() - start
        job.state = "done"
        self.stats["jobs_done"] += 1
        notes = [str(n) for n in (getattr(engine, "last_notes", None) or [])]
        log.info("job %s done in %.2f s (%s)", job.id, elapsed, ", ".join(f"{k} {v:.3f}" for k, v in output.timings.items()))
        self._finish(job, Message(type=Type.RESULT, job=job.id, buffers=buffers, body={
            "job": job.id,
            "model": job.model,
            "engine": engine.name,
            "device": engine.device,
            "variants": variants,
            "region": {"x": output.region.x, "y": output.region.y, "width": output.region.width, "height": output.region.height},
            "processing_size": list(output.processing_size),
            "seq": job.seq,
            "notes": notes,
            "timings": {**{k: round(v, 4) for k, v in output.timings.items()}, "queued": round(start - job.submitted, 4), "elapsed": round(elapsed, 4)},
        }))


    def _free_engine_memory(self, engine: Any) -> None:
        """After a failure, give back what the engine held (caches, CUDA blocks)."""
        gc.collect()
        free = getattr(engine, "free_memory", None)
        if callable(free):
            try:
                free()
            except Exception:
                log.exception("engine could not free its memory")


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def _cancelled(job_id: str, code: str) -> Message:
    """A job's `cancelled` event: the code to compare, the reason to show."""
    return Message(type=Type.CANCELLED, job=job_id, body={"job": job_id, "code": code, "reason": CANCEL_REASONS[code]})


def _job_field(msg: Message) -> str:
    job_id = msg.body.get("job", msg.job)
    if job_id is None:
        raise ProtocolError(Code.MISSING_FIELD, f"'{msg.type}' needs the field 'job' (a job id)", {"field": "job"})
    if not isinstance(job_id, str):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'job' must be a string, got {type(job_id).__name__}", {"field": "job"})
    return job_id


def install_signal_handlers(daemon: Daemon) -> None:
    def handle(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
