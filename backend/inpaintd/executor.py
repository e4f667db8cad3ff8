"""Where jobs run: the seam between the daemon and the engines.

The daemon keeps the fair queue, the result store and the protocol.  It hands a job to
its executor when the executor has room (`capacity`), asks it to `cancel` one, and
learns what happened from events: the executor queues them and calls the `wake` it was
given at `start`, and the daemon drains them (`events()`) on its socket thread.  Nothing
here knows a socket, a client or the queue, so jobs can run anywhere: `LocalExecutor`
runs them one at a time on a worker thread with the model registry; an executor over a
cluster (Ray Serve, say) would send the same `JobRequest` to a replica and turn the
progress it streams back into the same events.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from inpaintd_protocol.messages import Code, JobOptions, ProtocolError, Stage

from .engines.base import Engine, EngineError, JobCancelled, ModelCaps, ProgressFn, check_cancel, is_out_of_memory
from .runner import JobOutput, run_job

log = logging.getLogger("inpaintd")


@dataclass
class JobRequest:
    """One job as an executor sees it: plain values and arrays, nothing live."""

    job_id: str
    model: str  # a registry id the daemon admitted
    image: np.ndarray  # H x W x 3|4 uint8
    mask: np.ndarray  # H x W uint8
    options: JobOptions
    seeds: list[int]
    #: Reference images (protocol `references`), each h x w x 3|4 uint8; most jobs have none.
    references: list[np.ndarray] = field(default_factory=list)
    #: LoRAs (name, path, weight) and textual-inversion embeddings (token, path) the job uses.
    loras: list[tuple[str, str, float]] = field(default_factory=list)
    embeddings: list[tuple[str, str]] = field(default_factory=list)


# -- events, executor -> daemon ---------------------------------------------------------------
# `at` is when it happened on the daemon's monotonic clock; an executor on other machines
# stamps them as they arrive.


@dataclass(frozen=True, kw_only=True)
class Progressed:
    """A job moved on: `stage` step/total (PROTOCOL.md 6.1), model loads included."""

    job_id: str
    stage: Stage | str
    step: int
    total: int
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class LoadStarted:
    """A model began to load, for `job_id`, or ahead of any job (None: at start-up)."""

    job_id: str | None
    model: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class LoadEnded:
    """A model load is over (also sent, without a LoadStarted, when a job's model was warm):
    `device` where it lives, None when the load failed."""

    job_id: str | None
    model: str
    device: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class Succeeded:
    job_id: str
    output: JobOutput
    engine: str  # engine kind, "diffusers" or "classical"
    device: str
    notes: list[str]
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class Failed:
    job_id: str
    code: Code | str
    message: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class Cancelled:
    """The job stopped because `cancel` was called for it."""

    job_id: str
    at: float = field(default_factory=time.monotonic)
    #: Denoising steps reported after the cancel flag was set (the step under way: 0 or 1),
    #: where the executor counts them (None: it does not): what "cancel within a step" means.
    steps_after_cancel: int | None = None


Event = Progressed | LoadStarted | LoadEnded | Succeeded | Failed | Cancelled
#: Every job handed over ends with exactly one of these.
TERMINAL = (Succeeded, Failed, Cancelled)


class Executor(Protocol):
    """What the daemon needs of whatever runs its jobs."""

    @property
    def capacity(self) -> int:
        """How many jobs it can hold now, handed over and not yet ended (0 while starting)."""
        ...

    def start(self, wake: Callable[[], None]) -> None:
        """Begin; call `wake()` (from any thread) whenever events are waiting."""
        ...

    def submit(self, request: JobRequest) -> None:
        """Run `request`; only called while the daemon holds fewer jobs there than `capacity`."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop the job at its next step; it ends with `Cancelled` (or its result, if too late)."""
        ...

    def events(self) -> list[Event]:
        """What happened since the last call, in order; never blocks."""
        ...

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs, wait up to `timeout` s for it to end (its events stay
        drainable), and let go of workers.  Models belong to the registry's owner."""
        ...


def drain(events: queue.SimpleQueue[Event]) -> list[Event]:
    """Everything waiting in an executor's event queue, in order, without blocking."""
    out: list[Event] = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


def failure(exc: BaseException) -> tuple[Code | str, str]:
    """The code and text a client hears for a job that raised `exc`."""
    if isinstance(exc, (EngineError, ProtocolError)):
        return exc.code, exc.message
    if is_out_of_memory(exc):
        return Code.OUT_OF_MEMORY, f"out of memory: {type(exc).__name__}: {exc}"
    return Code.ENGINE_FAILURE, f"engine failure: {type(exc).__name__}: {exc}"


class Models(Protocol):
    """What an executor needs of the model registry (`inpaintd.models.ModelRegistry`)."""

    def load(self, model_id: str, progress: ProgressFn | None = None) -> Engine: ...

    def caps(self, model_id: str) -> ModelCaps: ...


class GpuTurns:
    """Who has the GPU now: inpaint jobs or the trainer (`training.py`), which share it.

    Not a lock that whoever asks first gets: an inpaint job that wants the GPU sets its
    flag and waits only for the training step under way to end; the trainer takes a turn
    for each step and waits while any inpaint job wants the GPU or has it.  So training
    pauses between two steps while the artist's jobs run, and resumes after them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inpaint = 0  # inpaint jobs that want the GPU or have it
        self._training = False  # a training step runs now

    @contextmanager
    def inpaint(self) -> Iterator[None]:
        """Around an inpaint job: waits for the running training step (if any) to end."""
        with self._cond:
            self._inpaint += 1
            while self._training:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._inpaint -= 1
                self._cond.notify_all()

    @contextmanager
    def training_step(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Around one training step (or another short piece of training work): waits while
        inpaint jobs want the GPU; raises JobCancelled if `cancelled` turns true meanwhile."""
        with self._cond:
            while self._inpaint:
                self._cond.wait(0.1)
                check_cancel(cancelled)
            self._training = True
        try:
            yield
        finally:
            with self._cond:
                self._training = False
                self._cond.notify_all()

    @property
    def inpaint_waiting(self) -> bool:
        return self._inpaint > 0


class LocalExecutor:
    """One job at a time on a worker thread, on the warm model of a ModelRegistry."""

    def __init__(self, registry: Models, *, preload: str | None = None) -> None:
        """`registry`: an inpaintd.models.ModelRegistry (or a test's stand-in for it).
        `preload`: a model to load before the first job (the daemon is ready after it)."""
        self.registry = registry
        self.preload = preload
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[JobRequest | None] = queue.SimpleQueue()
        self._cancels: dict[str, threading.Event] = {}  # job id -> its cancel flag, from submit to its end
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._wake: Callable[[], None] = lambda: None
        self._thread = threading.Thread(target=self._work, name="inpaintd-worker", daemon=True)
        #: Shared with a trainer (the daemon sets it): each job takes the GPU from training
        #: at its next step boundary and gives it back when it ends.  None: no training.
        self.turns: GpuTurns | None = None

    @property
    def capacity(self) -> int:
        return 1 if self._ready.is_set() and not self._closing.is_set() else 0

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        if self.preload:
            self._post(LoadStarted(job_id=None, model=self.preload))
        else:
            self._ready.set()
        self._thread.start()

    def submit(self, request: JobRequest) -> None:
        self._cancels[request.job_id] = threading.Event()
        self._inbox.put(request)

    def cancel(self, job_id: str) -> None:
        flag = self._cancels.get(job_id)
        if flag is not None:
            flag.set()

    def events(self) -> list[Event]:
        return drain(self._events)

    def close(self, timeout: float = 30.0) -> None:
        self._closing.set()
        for flag in list(self._cancels.values()):
            flag.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------------

    def _post(self, event: Event) -> None:
        self._events.put(event)
        self._wake()

    def _work(self) -> None:
        self._preload()
        while not self._closing.is_set():
            request = self._inbox.get()
            if request is None:
                break
            try:
                self._run(request)
            finally:
                self._cancels.pop(request.job_id, None)
        # Jobs handed over but never started end too: every job gets its terminal event.
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                self._cancels.pop(request.job_id, None)
                self._post(Cancelled(job_id=request.job_id))

    def _preload(self) -> None:
        """Load the default model before the first job; the daemon is ready after this."""
        if not self.preload:
            return
        device = None
        try:
            engine = self.registry.load(self.preload)
            device = engine.device
            log.info("model %s ready on %s", engine.model_id, engine.device)
        except Exception as exc:
            log.error("could not preload the default model %s: %s", self.preload, exc)
            engine = None
        self._ready.set()
        self._post(LoadEnded(job_id=None, model=engine.model_id if engine else self.preload, device=device))

    def _load(self, request: JobRequest, progress: ProgressFn) -> Engine:
        """The job's engine, with `LoadStarted` / `LoadEnded` around a load."""
        job_id = request.job_id

        def report(stage: str, step: int, total: int) -> None:
            if stage == Stage.LOADING and step < total:
                self._post(LoadStarted(job_id=job_id, model=request.model))
            progress(stage, step, total)

        engine = None
        try:
            engine = self.registry.load(request.model, report)
            return engine
        finally:
            model = engine.model_id if engine is not None else request.model
            self._post(LoadEnded(job_id=job_id, model=model, device=engine.device if engine is not None else None))

    def _run(self, request: JobRequest) -> None:
        job_id = request.job_id
        cancelled = self._cancels[job_id].is_set
        after_cancel = [0]

        def progress(stage: str, step: int, total: int) -> None:
            if stage == Stage.DENOISING and cancelled():
                after_cancel[0] += 1
            self._post(Progressed(job_id=job_id, stage=stage, step=step, total=total))

        engine: Engine | None = None
        try:
            check_cancel(cancelled)
            with self.turns.inpaint() if self.turns is not None else nullcontext():  # training pauses meanwhile
                engine = self._load(request, progress)
                # prepare -> generate -> finish (runner.run_job), prepared from the model's
                # description (registry.caps), not from the loaded engine: an executor for a
                # cluster prepares here and sends the request to a replica's engine.
                caps = self.registry.caps(request.model)
                output = run_job(engine, request.image, request.mask, request.options, request.seeds, progress, cancelled,
                                 caps, references=request.references, loras=request.loras, embeddings=request.embeddings)
        except JobCancelled:
            self._post(Cancelled(job_id=job_id, steps_after_cancel=after_cancel[0]))
            return
        except Exception as exc:
            # One job fails, not the daemon: the client hears what broke, the engine gives
            # back what it held, and the worker takes the next job on the same warm model.
            code, text = failure(exc)
            if isinstance(exc, (EngineError, ProtocolError)):
                log.error("job %s failed: %s: %s", job_id, code, text)
            elif code == Code.OUT_OF_MEMORY:
                log.error("job %s: %s", job_id, text)
            else:
                log.exception("job %s: engine failure", job_id)
            self._free_memory(engine)
            self._post(Failed(job_id=job_id, code=code, message=text))
            return
        self._post(Succeeded(job_id=job_id, output=output, engine=engine.name, device=engine.device, notes=output.notes))

    @staticmethod
    def _free_memory(engine: Engine | None) -> None:
        """After a failure, give back what the engine held (caches, CUDA blocks)."""
        gc.collect()
        if engine is not None:
            try:
                engine.free_memory()
            except Exception:
                log.exception("engine could not free its memory")
