"""The inpaintd daemon: a ZeroMQ ROUTER socket in front of a queue and one GPU worker.

The main thread owns the socket and answers every request at once (ping, status,
cancel and model lists never wait for a running job).  A worker thread runs jobs one at
a time on the warm model and hands its events back through an outbox, because ZeroMQ
sockets must not be shared between threads.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from typing import Any, Callable

import zmq

from protocol import wire
from protocol.connection import connection_file, write_connection_file
from protocol.messages import LIMITS, PROTOCOL_VERSION, REQUEST_TYPES, SCHEDULERS, Code, ImageDesc, Limits, ProtocolError, Type
from protocol.wire import Message

from . import __version__
from .engines.base import EngineError, JobCancelled
from .jobs import FairQueue, Finished, Job, ResultStore
from .runner import run_job, variant_seeds
from .validation import parse_submit

log = logging.getLogger("inpaintd")

REPLAY_WINDOW = 300.0  # seconds a signed message stays valid, and its id remembered
CAPABILITIES = ["progress", "cancel", "fetch", "soft_mask", "variants", "rgba", "stride", "hmac-sha256"]


class Daemon:
    def __init__(
        self,
        registry: Any,  # backend.models.ModelRegistry, or anything with its interface
        bind: str,
        *,
        key: bytes | None = None,
        limits: Limits = LIMITS,
        results_ttl: float = 600.0,
        preload: bool = True,
        write_connection: bool = True,
    ) -> None:
        self.registry = registry
        self.bind = bind
        self.key = key
        self.limits = limits
        self.instance = uuid.uuid4().hex
        self.started = time.time()
        self.device = "unknown"
        self.loaded_model: str | None = None
        self._preload = preload
        self._write_connection = write_connection
        self._queue = FairQueue()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._results = ResultStore(ttl=results_ttl)
        self._outbox: queue.SimpleQueue[tuple[bytes, Message]] = queue.SimpleQueue()
        self._seen: dict[str, float] = {}
        self._stopping = threading.Event()
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 1000)
        self._router.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        self._router.setsockopt(zmq.SNDHWM, 2000)
        self._router.setsockopt(zmq.RCVHWM, 2000)
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
        """Ask the daemon to shut down; safe from signal handlers and other threads."""
        self._stopping.set()
        with self._cond:
            if self._running:
                self._running.cancel_requested.set()
            self._cond.notify_all()

    def serve_forever(self) -> None:
        if self.key and self._write_connection:
            path = write_connection_file(self.endpoint, self.key, {"pid": os.getpid(), "instance": self.instance})
            log.info("connection file: %s", path)
        self._worker.start()
        log.info("inpaintd %s listening on %s (protocol %d, auth %s)", __version__, self.endpoint, PROTOCOL_VERSION, "on" if self.key else "off")
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
                running.cancel_requested.set()
            self._cond.notify_all()
        for job in dropped:
            job.state = "cancelled"
            self._finish(job, Message(type=Type.CANCELLED, job=job.id, body={"job": job.id, "reason": "the daemon is shutting down"}))
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
            reply = self._handle(identity, frames)
            if reply is not None:
                self._send(identity, reply)

    def _handle(self, identity: bytes, frames: list) -> Message | None:
        msg_id: str | None = None
        try:
            msg = wire.decode(frames, self.key)
            msg_id = msg.id
            if msg.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    Code.VERSION_MISMATCH,
                    f"this client speaks protocol version {msg.version}; this daemon speaks version {PROTOCOL_VERSION}",
                    {"client_version": msg.version, "daemon_version": PROTOCOL_VERSION},
                )
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
            log.warning("request refused (%s): %s", exc.code, exc.message)
            return wire.error_message(exc.code, exc.message, re=re, **details)
        except EngineError as exc:
            return wire.error_message(exc.code, exc.message, re=msg_id)
        except Exception as exc:  # a bug of ours must not take the daemon down
            log.exception("internal error while handling a request")
            return wire.error_message(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", re=msg_id)

    def _check_replay(self, msg: Message) -> None:
        now = time.time()
        if abs(now - msg.ts) > REPLAY_WINDOW:
            raise ProtocolError(Code.BAD_SIGNATURE, f"message timestamp is {now - msg.ts:.0f} s off; the window is {REPLAY_WINDOW:.0f} s")
        if msg.id in self._seen:
            raise ProtocolError(Code.BAD_SIGNATURE, f"message id {msg.id} was already used (replayed message)")
        self._seen[msg.id] = msg.ts
        if len(self._seen) > 10000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < REPLAY_WINDOW}

    def _send(self, identity: bytes, msg: Message) -> None:
        try:
            self._router.send_multipart([identity, *wire.encode(msg, self.key)], copy=False)
        except zmq.ZMQError as exc:  # peer gone or over its high-water mark: results stay fetchable
            log.warning("could not send %s to a client: %s", msg.type, exc)

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
            "schedulers": list(SCHEDULERS),
            "capabilities": CAPABILITIES,
            "limits": self.limits.to_wire(),
            "notices": list(self.registry.notices),
            "auth": bool(self.key),
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
        request = parse_submit(msg, self.limits)
        model_id = request.options.model or self.registry.default_model_id
        info = self.registry.get(model_id)  # unknown_model
        if not info.available:
            raise ProtocolError(Code.MODEL_UNAVAILABLE, f"model '{model_id}' is not available: {info.detail}", {"model": model_id})
        model_id = info.id
        seeds = variant_seeds(request.options.seed, request.options.variants)
        job = Job(owner=identity, request=request, model=model_id, seeds=seeds)
        with self._cond:
            if self._queue.count(identity) >= self.limits.max_queue_per_client:
                raise ProtocolError(Code.QUEUE_FULL, f"this client already has {self.limits.max_queue_per_client} jobs queued; wait for some to finish")
            self._queue.push(job)
            position = self._queue.position(job.id) + (1 if self._running else 0)
            self._cond.notify_all()
        log.info("job %s accepted: %dx%d, model %s, %d variant(s), position %d", job.id, request.mask.shape[1], request.mask.shape[0], model_id, len(seeds), position)
        return self._reply(msg, Type.ACCEPTED, {"job": job.id, "position": position, "seeds": seeds, "model": model_id, "instance": self.instance}, job=job.id)

    def _on_cancel(self, identity: bytes, msg: Message) -> Message:
        job_id = _job_field(msg)
        with self._cond:
            queued = self._queue.remove(job_id)
            running = self._running if self._running and self._running.id == job_id else None
            if running:
                running.cancel_requested.set()
        if queued:
            queued.state = "cancelled"
            self._finish(queued, Message(type=Type.CANCELLED, job=job_id, body={"job": job_id, "reason": "cancelled while queued"}))
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
            "running": running,
            "queued": queued,
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
                live.owner = identity  # a reconnected client takes over the job's events
                return self._reply(msg, Type.PROGRESS, {"job": job_id, "stage": live.stage, "step": live.step, "total_steps": live.total_steps, "elapsed": 0.0}, job=job_id)
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running or kept (results are kept {self._results.ttl:.0f} s)")

    def _on_shutdown(self, identity: bytes, msg: Message) -> Message:
        log.info("shutdown requested by a client")
        self.stop()
        return self._reply(msg, Type.SHUTDOWN_REPLY, {"state": "shutting_down", "policy": "the running job is cancelled; queued jobs are cancelled"})

    # -- the worker thread ------------------------------------------------------------------

    def _emit(self, owner: bytes, msg: Message) -> None:
        """Queue a message for the socket thread; wake it when called from the worker."""
        self._outbox.put((owner, msg))
        if threading.current_thread() is self._worker and self._worker_wake is not None:
            try:
                self._worker_wake.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a wake-up is already pending

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
                self._running = job
                job.state, job.started = "running", time.monotonic()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    job.request = None  # type: ignore[assignment]  # free the pixels

    def _preload_default(self) -> None:
        if not self._preload:
            return
        try:
            engine = self.registry.load(self.registry.default_model_id)
            self.device, self.loaded_model = engine.device, engine.model_id
            log.info("model %s ready on %s", engine.model_id, engine.device)
        except Exception as exc:
            log.error("could not preload the default model %s: %s", self.registry.default_model_id, exc)

    def _run(self, job: Job) -> None:
        start = time.monotonic()

        def progress(stage: str, step: int, total: int) -> None:
            job.stage, job.step, job.total_steps = stage, step, total
            self._emit(job.owner, Message(type=Type.PROGRESS, job=job.id, body={
                "job": job.id, "stage": stage, "step": step, "total_steps": total, "elapsed": round(time.monotonic() - start, 4),
            }))

        request = job.request
        try:
            if job.cancel_requested.is_set():
                raise JobCancelled()
            engine = self.registry.load(job.model, progress)
            self.device, self.loaded_model = engine.device, engine.model_id
            output = run_job(engine, request.image, request.mask, request.options, job.seeds, progress, job.cancel_requested.is_set)
        except JobCancelled:
            job.state = "cancelled"
            log.info("job %s cancelled after %.2f s", job.id, time.monotonic() - start)
            self._finish(job, Message(type=Type.CANCELLED, job=job.id, body={"job": job.id, "reason": "cancelled while running"}))
            return
        except (EngineError, ProtocolError) as exc:
            job.state = "failed"
            log.error("job %s failed: %s: %s", job.id, exc.code, exc.message)
            self._finish(job, wire.error_message(exc.code, exc.message, job=job.id))
            return
        except MemoryError as exc:
            job.state = "failed"
            self._finish(job, wire.error_message(Code.OUT_OF_MEMORY, f"out of memory: {exc}", job=job.id))
            return
        except Exception as exc:
            job.state = "failed"
            log.exception("job %s: engine failure", job.id)
            self._finish(job, wire.error_message(Code.ENGINE_FAILURE, f"engine failure: {type(exc).__name__}: {exc}", job=job.id))
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
        log.info("job %s done in %.2f s (%s)", job.id, elapsed, ", ".join(f"{k} {v:.3f}" for k, v in output.timings.items()))
        self._finish(job, Message(type=Type.RESULT, job=job.id, buffers=buffers, body={
            "job": job.id,
            "model": job.model,
            "engine": engine.name,
            "device": engine.device,
            "variants": variants,
            "region": {"x": output.region.x, "y": output.region.y, "width": output.region.width, "height": output.region.height},
            "processing_size": list(output.processing_size),
            "timings": {**{k: round(v, 4) for k, v in output.timings.items()}, "queued": round(job.started - job.submitted, 4), "elapsed": round(elapsed, 4)},
        }))


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
