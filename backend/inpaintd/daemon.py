"""The inpaintd daemon: a fair queue between a socket and an executor.

It is built of three rooms: the `server` (the ROUTER socket, signatures, replay window,
outbox), the `handlers` (one function per request type) and the `executor` (where jobs
run; `LocalExecutor` is one worker thread on the warm model).  The daemon keeps what the
protocol promises across them: the fair queue and when the next job goes to the
executor, each job's record and the events its client hears, the results kept for
`fetch`, the loading state, the shutdown policy and the statistics.

All of it runs on the main thread, the socket's: the executor's events are drained there
(`_tick`), so the queue and the job records need no lock.  An engine failure fails one
job, not the daemon.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

from inpaintd_protocol import wire
from inpaintd_protocol.bodies import Cancelled, CancelOutcome, Progress, Result, Variant
from inpaintd_protocol.messages import LIMITS, PROTOCOL_VERSION, CancelCode, Code, ImageDesc, JobState, Limits, ProtocolError, Stage
from inpaintd_protocol.rect import Rect
from inpaintd_protocol.wire import Message

from . import __version__
from . import executor as ex
from .handlers import CAPABILITIES, dispatch  # noqa: F401  (CAPABILITIES: documented in PROTOCOL.md)
from .history import Entry, History, Record, VariantEntry, thumbnail
from .jobs import FairQueue, Finished, QueuedJob, ResultStore, TrainJob
from .loras import Library
from .models import ModelRegistry
from .paths import data_dir as default_data_dir
from .runner import JobOutput
from .server import REPLAY_WINDOW, Server, short  # noqa: F401  (REPLAY_WINDOW: documented in PROTOCOL.md)
from .styles import Styles
from .training import Trained, Trainer, TrainEvent, TrainProgress, TrainRequest
from .validation import SubmitRequest

log = logging.getLogger("inpaintd")

#: Jobs queued for all clients together (the per-client limit is in Limits).
MAX_QUEUE_TOTAL = 1024
#: While a model loads, the job waiting for it hears `loading` again this often (seconds),
#: with the time it has waited, so that a client can tell a slow load from a dead daemon.
LOADING_TICK = 1.0
#: The counter in `stats` of each way a job ends.
_COUNTERS = {JobState.DONE: "jobs_done", JobState.FAILED: "jobs_failed", JobState.CANCELLED: "jobs_cancelled"}


class Daemon:
    def __init__(
        self,
        registry: ModelRegistry,  # or a test's wrapper with its interface
        bind: str,
        *,
        key: bytes | None = None,
        limits: Limits = LIMITS,
        results_ttl: float = 600.0,
        results_max_bytes: int = 1 << 30,
        preload: bool = True,
        write_connection: bool = True,
        curve: bool = False,
        peer_timeout: float = 30.0,
        executor: ex.Executor | None = None,
        history: History | None = None,
        styles: Styles | None = None,
        vary_strengths: tuple[float, float] = (0.35, 0.7),
        library: Library | None = None,
        data_dir: Path | None = None,
    ) -> None:
        """`preload`: load the default model before the first job (with the default executor).
        `executor`: where jobs run; by default a LocalExecutor on `registry`.
        `peer_timeout`: see Server.  `history`: where finished jobs are kept (None: not kept;
        `vary` and `rerun` then need the client's pixels).  `styles`: the style presets
        (None: jobs may name none).  `vary_strengths`: the strength of Vary Subtle and Vary
        Strong.  `data_dir`: where training keeps its checkpoints and class images (None:
        `paths.data_dir()`)."""
        self.stats: Counter[str] = Counter()
        self.server = Server(bind, key=key, limits=limits, curve=curve, peer_timeout=peer_timeout, stats=self.stats)
        self.registry = registry
        self.limits = limits
        self.instance = uuid.uuid4().hex
        self.started = time.time()
        self.device = "unknown"
        self.loaded_model: str | None = None
        #: The model being loaded now (`loading` in hello and status; PROTOCOL.md 9.14), and
        #: the job it is for (None: ahead of any job, the default model at start-up).
        self.loading: str | None = None
        self._loading_job: str | None = None
        self.executor: ex.Executor = executor or ex.LocalExecutor(registry, preload=registry.default_model_id if preload else None)
        self._write_connection = write_connection
        self.queue = FairQueue()
        self.running: dict[str, QueuedJob] = {}  # handed to the executor, not ended yet
        self.results = ResultStore(ttl=results_ttl, max_bytes=results_max_bytes)
        self.history = history
        self.styles = styles
        self.library = library  # LoRAs and embeddings (None: jobs may use none)
        self.vary_strengths = {"subtle": vary_strengths[0], "strong": vary_strengths[1]}
        self._stopping = threading.Event()
        self._seq = 0
        # Training (`train` jobs, PROTOCOL.md 5.14): one at a time on its own thread, which
        # takes turns on the GPU with the executor's jobs (a local executor's; jobs elsewhere
        # need no turns).
        self.data_dir = data_dir
        self.turns = ex.GpuTurns()
        if isinstance(self.executor, ex.LocalExecutor):
            self.executor.turns = self.turns
        self.trainings: deque[TrainJob] = deque()  # waiting for the trainer
        self.training: TrainJob | None = None  # training now
        self.trainer: Trainer | None = None
        self._train_events: queue.SimpleQueue[TrainEvent] = queue.SimpleQueue()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- life cycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to shut down; safe from signal handlers and other threads.

        Policy: the running job is cancelled at its next step (its client gets `cancelled`
        with the reason), queued jobs are cancelled, then the daemon exits with status 0."""
        self._stopping.set()
        self.server.wake()

    def serve_forever(self) -> None:
        if self._write_connection:
            self.server.write_connection_file({"pid": os.getpid(), "instance": self.instance})
        self.executor.start(self.server.wake)
        self._tick()  # a start-up load is known before the first request is answered
        log.info(
            "inpaintd %s listening on %s (protocol %d, auth %s, curve %s)", __version__, self.endpoint,
            PROTOCOL_VERSION, "on" if self.server.key else "off", "on" if self.server.curve_public_key else "off",
        )
        try:
            self.server.serve(lambda identity, msg: dispatch(self, identity, msg), self._tick, self._stopping.is_set)
            self._shutdown()
        finally:
            self.server.close()
            log.info("inpaintd stopped")

    def _shutdown(self) -> None:
        """Queued jobs are cancelled first (their events go out first), then the running ones."""
        for job in self.queue.drain():
            self._end(job, JobState.CANCELLED, wire.message(Cancelled.because(job.id, CancelCode.SHUTDOWN)))
        while self.trainings:
            waiting = self.trainings.popleft()
            self._end(waiting, JobState.CANCELLED, wire.message(Cancelled.because(waiting.id, CancelCode.SHUTDOWN)))
        for job in self.running.values():
            job.cancel_code = CancelCode.SHUTDOWN
            self.executor.cancel(job.id)
        trainer = self.trainer
        if trainer is not None and self.training is not None:
            self.training.cancel_code = CancelCode.SHUTDOWN
            trainer.cancel()
        self.executor.close(timeout=30)
        for event in self.executor.events():
            self._on_event(event)
        if trainer is not None:
            trainer.join(30)
            self._drain_training()
        self.server.flush()
        self.registry.close()
        if self.history is not None:
            self.history.close()

    # -- what handlers ask of the queue ---------------------------------------------------------

    def enqueue(self, owner: bytes, request: SubmitRequest, model: str, seeds: list[int], **lineage: Any) -> QueuedJob:
        """Queue a job, or refuse with `queue_full`; its `position` is set.  `lineage`: where a
        `vary` or `rerun` comes from (QueuedJob's origin, canvas, kind, parent, parent_variant)."""
        if self.queue.count(owner) >= self.limits.max_queue_per_client:
            raise ProtocolError(
                Code.QUEUE_FULL, f"this client already has {self.limits.max_queue_per_client} jobs queued; wait for some to finish")
        if len(self.queue) >= MAX_QUEUE_TOTAL:
            raise ProtocolError(Code.QUEUE_FULL, f"the daemon already has {MAX_QUEUE_TOTAL} jobs queued; try again later")
        job = QueuedJob(owner=owner, request=request, model=model, seeds=seeds, **lineage)
        self.queue.push(job)
        job.position = self.queue.position(job.id) + len(self.running)
        self._announce_positions()  # round-robin may have put it ahead of others' jobs
        h, w = request.mask.shape
        log.info("job %s accepted: %dx%d, model %s, %d variant(s), position %d", job.id, w, h, model, len(seeds), job.position)
        self._schedule()
        return job

    def enqueue_training(self, owner: bytes, request: TrainRequest, model: str, family: str, resolution: int) -> TrainJob:
        """Queue a `train` job behind the trainings already waiting (one trains at a time), or
        refuse: the same pictures and settings already queued or training (they would share
        a checkpoint), a LoRA name another queued or running training will write (the file
        is checked at admission, but it does not exist until that one ends), or too many waiting."""
        key = request.key(model, resolution)
        for other in [*self.trainings, *([self.training] if self.training else [])]:
            if other.key == key:
                raise ProtocolError(Code.BAD_VALUE, f"the same training (pictures and settings) is already job "
                                                    f"{other.id}; wait for it or cancel it", {"field": "images"})
            if other.name.lower() == request.name.lower():
                raise ProtocolError(Code.BAD_VALUE, f"training job {other.id} will write a LoRA '{other.name}' already; "
                                                    "pick another name, or cancel that job", {"field": "name"})
        if len(self.trainings) >= self.limits.max_queue_per_client:
            raise ProtocolError(Code.QUEUE_FULL, f"{len(self.trainings)} trainings are already waiting; try again later")
        job = TrainJob(owner=owner, request=request, model=model, name=request.name, key=key, family=family,
                       resolution=resolution)
        self.trainings.append(job)
        job.position = len(self.trainings) - 1 + (1 if self.training else 0)
        log.info("training job %s accepted: %d pictures of '%s %s', %d steps, model %s, LoRA '%s', position %d",
                 job.id, len(request.images), request.token, request.class_noun, request.steps, model, request.name,
                 job.position)
        self._start_training()
        return job

    def cancel(self, job_id: str) -> CancelOutcome | None:
        """Cancel a queued job at once or a running one at its next step; None: no such job."""
        waiting = next((j for j in self.trainings if j.id == job_id), None)
        if waiting is not None:
            self.trainings.remove(waiting)
            self._end(waiting, JobState.CANCELLED, wire.message(Cancelled.because(job_id, CancelCode.QUEUED)))
            self.server.flush()
            return CancelOutcome.CANCELLED
        if self.training is not None and self.training.id == job_id and self.trainer is not None:
            self.training.cancel_code = CancelCode.RUNNING
            self.trainer.cancel()
            return CancelOutcome.CANCELLING
        queued = self.queue.remove(job_id)
        if queued:
            self._announce_positions()
            self._end(queued, JobState.CANCELLED, wire.message(Cancelled.because(job_id, CancelCode.QUEUED)))
            self.server.flush()  # its `cancelled` goes out before the reply
            return CancelOutcome.CANCELLED
        running = self.running.get(job_id)
        if running:
            running.cancel_code = CancelCode.RUNNING
            self.executor.cancel(job_id)
            return CancelOutcome.CANCELLING
        return CancelOutcome.FINISHED if self.results.get(job_id) else None

    def reattach(self, job_id: str, owner: bytes) -> Progress | None:
        """Send a live job's events to `owner` from now on (a reconnected client takes over
        its job, and its turn in the queue); where the job is now, or None if it is not live."""
        training = next((j for j in [*self.trainings, *([self.training] if self.training else [])] if j.id == job_id), None)
        if training is not None:
            training.owner = owner
            position = training.position if training.state == JobState.QUEUED else None
            return Progress(job_id, training.stage, training.step, training.total_steps, 0.0, position=position)
        job = self.running.get(job_id) or next((j for j in self.queue.order() if j.id == job_id), None)
        if job is None:
            return None
        if job.id not in self.running and job.owner != owner:
            # Its turn moves to the new connection's line.  (Its own client re-asking, as
            # the client library does after 3 s of silence, keeps the job where it is.)
            self.queue.remove(job_id)
            job.owner = owner
            self.queue.push(job)
            self._announce_positions()
        job.owner = owner
        position = None if job.id in self.running else job.position
        return Progress(job_id, job.stage, job.step, job.total_steps, 0.0, position=position)

    # -- scheduling and what clients hear --------------------------------------------------------

    def _tick(self) -> None:
        """After every wake-up of the socket loop: executor events, next jobs, load ticks."""
        for event in self.executor.events():
            self._on_event(event)
        self._drain_training()
        self._schedule()
        self._tell_loading()

    # -- training ---------------------------------------------------------------------------

    def _start_training(self) -> None:
        """Start the next waiting training when none runs."""
        if self.stopping or self.trainer is not None or not self.trainings:
            return
        job = self.trainings.popleft()
        self._seq += 1
        job.seq, job.state, job.started = self._seq, JobState.RUNNING, time.monotonic()
        job.clock = job.started
        self.training = job
        folder = self.data_dir or default_data_dir()
        assert self.library is not None  # admitted only with a LoRA folder

        def post(event: TrainEvent) -> None:
            self._train_events.put(event)
            self.server.wake()

        self.trainer = Trainer(job.id, job.request, model=job.model, family=job.family, resolution=job.resolution,
                               registry=self.registry, turns=self.turns, data_dir=folder,
                               lora_dir=self.library.lora_dir, post=post)
        self.trainer.start()
        for index, waiting in enumerate(self.trainings):
            if waiting.position != index + 1:
                waiting.position = index + 1
                self._post(waiting, wire.message(Progress(waiting.id, Stage.QUEUED, 0, 0, 0.0, position=index + 1)))

    def _drain_training(self) -> None:
        while True:
            try:
                event = self._train_events.get_nowait()
            except queue.Empty:
                return
            self._on_training_event(event)

    def _on_training_event(self, event: TrainEvent) -> None:
        job = self.training
        if job is None or job.id != event.job_id:
            return
        if isinstance(event, TrainProgress):
            job.stage, job.step, job.total_steps = event.stage, event.step, event.total
            self._post(job, wire.message(Progress(job.id, event.stage, event.step, event.total,
                                                  round(event.at - job.clock, 4), loss=event.loss,
                                                  remaining=event.remaining)))
            return
        if isinstance(event, Trained):
            elapsed = event.at - job.clock
            notes = [f"resumed from the checkpoint at step {event.resumed_from}"] if event.resumed_from else []
            result = Result(job.id, job.model, "diffusers", event.device, [], Rect(0, 0, 0, 0),
                            (job.resolution, job.resolution), job.seq, notes,
                            {"queued": round(job.started - job.submitted, 4), "elapsed": round(elapsed, 4)},
                            trained={"name": event.name, "path": event.path, "steps": event.steps,
                                     "final_loss": event.final_loss})
            log.info("training job %s done in %.1f s: LoRA %s", job.id, elapsed, event.path)
            msg = wire.message(result)
            state = JobState.DONE
        elif isinstance(event, ex.Failed):
            self.stats["jobs_failed_" + event.code] += 1
            msg, state = wire.error_message(event.code, short(event.message), job=job.id), JobState.FAILED
        else:
            code = job.cancel_code or CancelCode.RUNNING
            log.info("training job %s cancelled at step %d", job.id, job.step)
            msg, state = wire.message(Cancelled.because(job.id, code)), JobState.CANCELLED
        if self.trainer is not None:
            self.trainer.join(5)
        self.trainer = self.training = None
        self._end(job, state, msg)
        self._start_training()

    def _schedule(self) -> None:
        """Hand queued jobs to the executor, in the fair queue's order, while it has room."""
        while not self.stopping and len(self.running) < self.executor.capacity:
            job = self.queue.pop()
            if job is None:
                return
            self._seq += 1
            job.seq = self._seq
            self.running[job.id] = job
            job.state, job.started = JobState.RUNNING, time.monotonic()
            job.clock = job.clock or job.started  # earlier if it waited for the start-up load
            self._announce_positions()
            r = job.request
            self.executor.submit(ex.JobRequest(job.id, job.model, r.image, r.mask, r.options, job.seeds, r.references,
                                               r.loras, r.embeddings))

    def _post(self, job: QueuedJob | TrainJob, msg: Message) -> None:
        self.server.post(job.owner, msg)

    def _progress(self, job: QueuedJob, stage: Stage | str, step: int, total: int, at: float) -> None:
        job.stage, job.step, job.total_steps = stage, step, total
        self._post(job, wire.message(Progress(job.id, stage, step, total, round(at - job.clock, 4))))

    def _announce_positions(self) -> None:
        """Tell each queued job's client its new place in the queue, when it changed.

        Called wherever the order changes: a job starts, a queued job is cancelled, a submit
        lands ahead of other clients' jobs (round-robin).  Positions count running jobs, as
        `accepted.position` does."""
        ahead = len(self.running)
        for index, job in enumerate(self.queue.order()):
            position = index + ahead
            if job.position != position:
                job.position = position
                if position:  # no longer next in line: it waits for jobs again, not for a load
                    job.stage, job.step, job.total_steps, job.clock, job.loading_told = Stage.QUEUED, 0, 0, 0.0, 0.0
                self._post(job, wire.message(Progress(job.id, Stage.QUEUED, 0, 0, 0.0, position=position)))

    def _tell_loading(self) -> None:
        """While a model loads, tell the job that waits for it, about every LOADING_TICK
        seconds: `loading` 0/1 with the seconds it has waited so far.

        That job is the one the load is for, else (the default model loading at start-up)
        the job next in line, whose `elapsed` then counts from the moment it began to wait
        and goes on counting when it starts (`QueuedJob.clock`)."""
        if self.loading is None:
            return
        job = self.running.get(self._loading_job) if self._loading_job else next(self.queue.order(), None)
        now = time.monotonic()
        if job is None or now - job.loading_told < LOADING_TICK:
            return
        job.clock = job.clock or now
        job.loading_told = now
        self._progress(job, Stage.LOADING, 0, 1, now)

    def _on_event(self, event: ex.Event) -> None:
        job = self.running.get(event.job_id) if event.job_id else None
        if isinstance(event, ex.LoadStarted):
            self.loading, self._loading_job = event.model, event.job_id
            if job:
                job.loading_told = event.at
        elif isinstance(event, ex.LoadEnded):
            self.loading = self._loading_job = None
            if event.device:
                self.device, self.loaded_model = event.device, event.model
            if job and job.stage == Stage.LOADING and job.step < job.total_steps:
                self._progress(job, Stage.LOADING, 1, 1, event.at)  # it waited for the start-up load, which is done
        elif job is None:
            return  # an event for a job that has ended (none should come)
        elif isinstance(event, ex.Progressed):
            if event.stage == Stage.LOADING:
                job.loading_told = event.at
                if event.step >= event.total:
                    self.loading = self._loading_job = None
            self._progress(job, event.stage, event.step, event.total, event.at)
        elif isinstance(event, ex.Succeeded):
            self._succeeded(job, event)
        elif isinstance(event, ex.Failed):
            self.stats["jobs_failed_" + event.code] += 1
            self._end(job, JobState.FAILED, wire.error_message(event.code, short(event.message), job=job.id))
        elif isinstance(event, ex.Cancelled):
            code = job.cancel_code or CancelCode.RUNNING
            after = "" if event.steps_after_cancel is None else f"; {event.steps_after_cancel} step(s) ran after the cancel"
            log.info("job %s cancelled after %.2f s: %s%s", job.id, event.at - job.clock, Cancelled.because(job.id, code).reason,
                     after)
            self._end(job, JobState.CANCELLED, wire.message(Cancelled.because(job.id, code)))

    def _succeeded(self, job: QueuedJob, event: ex.Succeeded) -> None:
        output = event.output
        buffers: list[wire.Buffer] = [layer.rgba.data.cast("B") for layer in output.layers]  # C-contiguous RGBA
        ox, oy = job.origin  # a vary or rerun: its layers go back where its region sits on the canvas
        variants = [
            Variant(layer.index, layer.seed, layer.x + ox, layer.y + oy,
                    ImageDesc(frame, layer.rgba.shape[1], layer.rgba.shape[0], 4))
            for frame, layer in enumerate(output.layers, start=1)
        ]
        region = Rect(output.region.x + ox, output.region.y + oy, output.region.width, output.region.height)
        if self.history is not None:
            self._keep(job, output, region, event.engine)
        elapsed = event.at - job.clock
        timings = {**{k: round(v, 4) for k, v in output.timings.items()},
                   "queued": round(job.clock - job.submitted, 4), "elapsed": round(elapsed, 4)}
        log.info("job %s done in %.2f s (%s)", job.id, elapsed, ", ".join(f"{k} {v:.3f}" for k, v in output.timings.items()))
        result = Result(job.id, job.model, event.engine, event.device, variants, region,
                        (output.processing_size[0], output.processing_size[1]), job.seq, event.notes, timings)
        self._end(job, JobState.DONE, wire.message(result, buffers=buffers))

    def _keep(self, job: QueuedJob, output: JobOutput, region: Rect, engine: str) -> None:
        """Hand a finished job to the history: its options as sent, seeds and place, the
        variants' pixels and thumbnails, and the region it started from with its mask."""
        assert self.history is not None
        r = job.request
        local = output.region
        h, w = r.mask.shape
        given = r.given or r.options
        entry = Entry(
            job.id, time.time(), job.kind, job.model, given.to_wire(), list(job.seeds),
            (region.x, region.y, region.width, region.height), job.canvas or (w, h),
            [VariantEntry(layer.index, layer.seed, layer.rgba.shape[1], layer.rgba.shape[0], thumbnail(layer.rgba))
             for layer in output.layers],
            job.parent, job.parent_variant, engine, loras=list(r.lora_requests), references=len(r.references),
        )
        rows, cols = slice(local.y, local.y + local.height), slice(local.x, local.x + local.width)
        try:
            self.history.record(Record(entry, [layer.rgba for layer in output.layers],
                                       np.ascontiguousarray(r.image[rows, cols]), np.ascontiguousarray(r.mask[rows, cols]),
                                       [np.ascontiguousarray(ref) for ref in r.references]))
        except Exception:  # the history is a convenience: it never fails a job
            log.exception("history: could not record job %s", job.id)

    def _end(self, job: QueuedJob | TrainJob, state: JobState, msg: Message) -> None:
        """A job's terminal event: counted, kept for `fetch`, sent; the job's pixels let go."""
        self.running.pop(job.id, None)
        job.state = state
        self.stats[_COUNTERS[state]] += 1
        self.results.put(Finished(job.id, job.owner, msg))
        self._post(job, msg)
        if isinstance(job, QueuedJob):
            job.request = None  # type: ignore[assignment]
        else:
            job.request = None


def install_signal_handlers(daemon: Daemon) -> None:
    def handle(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
