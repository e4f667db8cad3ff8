"""The daemon's record of each job, the queue that orders them, and the kept results.

The daemon hands jobs to its executor as it has room (one at a time on one GPU: the GPU
is the bottleneck and a model is warm for it); the queue takes turns between clients, so
one client with twenty jobs cannot starve another with one.  Finished results are kept
for a while so a client that lost its connection can fetch them again by job id.

(`QueuedJob` is the daemon's bookkeeping; the client library's `Job` is the client's.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from inpaintd_protocol.messages import CancelCode, JobState, Stage
from inpaintd_protocol.wire import Message

from .validation import SubmitRequest


@dataclass
class QueuedJob:
    """A job from accept to its terminal event: queued, then handed to the executor."""

    owner: bytes  # ZeroMQ identity of the connection its events go to (the submitter, or the last to fetch it)
    request: SubmitRequest
    model: str
    seeds: list[int]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = JobState.QUEUED  # queued, running, then done, failed or cancelled
    submitted: float = field(default_factory=time.monotonic)
    started: float = 0.0
    stage: Stage | str = Stage.QUEUED
    step: int = 0
    total_steps: int = 0
    seq: int = 0  # order in which the executor was handed it (1, 2, ...): fairness is checked on this
    cancel_code: CancelCode | None = None  # set when a cancel of the running job is asked for
    position: int = -1  # jobs that start before it (a running one included), as last told to the client
    clock: float = 0.0  # where its `elapsed` counts from: its start, or when it began to wait for a model load
    loading_told: float = 0.0  # when it last heard `loading` (repeated while a load lasts)
    #: Where this job's image sits on the artist's canvas: (0, 0) for a submit; a `vary` or
    #: `rerun` runs on a kept region, whose result layers are put back at its place.
    origin: tuple[int, int] = (0, 0)
    #: The canvas size the history records (None: the job's own image's).
    canvas: tuple[int, int] | None = None
    kind: str = "inpaint"  # "inpaint", "vary" or "rerun" (the history's `kind`)
    parent: str = ""  # the job a vary or rerun started from
    parent_variant: int = -1

    def summary(self) -> dict[str, Any]:
        opts = self.request.options
        h, w = self.request.mask.shape
        return {
            "job": self.id,
            "state": self.state,
            "model": self.model,
            "prompt": opts.prompt,
            "variants": opts.variants,
            "width": w,
            "height": h,
            "stage": self.stage,
            "step": self.step,
            "total_steps": self.total_steps,
            "waited": round((self.started or time.monotonic()) - self.submitted, 3),
        }


class FairQueue:
    """FIFO per client, clients served round-robin.  Not thread-safe: the daemon guards it."""

    def __init__(self) -> None:
        self._queues: OrderedDict[bytes, deque[QueuedJob]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def count(self, owner: bytes) -> int:
        return len(self._queues.get(owner, ()))

    def push(self, job: QueuedJob) -> None:
        self._queues.setdefault(job.owner, deque()).append(job)

    def pop(self) -> QueuedJob | None:
        """Take the next job: the first client in turn gives one, then goes to the back."""
        for owner in list(self._queues):
            queue = self._queues.pop(owner)
            if not queue:
                continue
            job = queue.popleft()
            if queue:
                self._queues[owner] = queue
            return job
        return None

    def remove(self, job_id: str) -> QueuedJob | None:
        for owner, queue in self._queues.items():
            for job in queue:
                if job.id == job_id:
                    queue.remove(job)
                    if not queue:
                        del self._queues[owner]
                    return job
        return None

    def order(self) -> Iterator[QueuedJob]:
        """The jobs in the order they will run."""
        queues = [list(q) for q in self._queues.values()]
        depth = 0
        while any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q):
                    yield q[depth]
            depth += 1

    def position(self, job_id: str) -> int:
        for i, job in enumerate(self.order()):
            if job.id == job_id:
                return i
        return -1

    def drain(self) -> list[QueuedJob]:
        jobs = list(self.order())
        self._queues.clear()
        return jobs


@dataclass
class Finished:
    job_id: str
    owner: bytes
    message: Message  # the terminal event (result, error or cancelled), ready to send again
    at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return sum(len(memoryview(b).cast("B")) for b in self.message.buffers) + 1024


class ResultStore:
    """Terminal events of recent jobs, by job id, bounded in age, count and bytes.

    Kept so that a client that lost its connection, restarted, or was too slow to read
    its events can `fetch` the outcome by job id.  The byte bound is what keeps a flood of
    big results from growing the daemon without limit: past it, the oldest go first.
    """

    def __init__(self, ttl: float = 600.0, max_items: int = 512, max_bytes: int = 1 << 30) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Finished] = OrderedDict()
        self._bytes = 0
        self.evicted = 0  # dropped for room before their time was up
        # The daemon uses it from its socket thread only; the lock keeps it safe from any other.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, item: Finished) -> None:
        with self._lock:
            self._put(item)

    def _put(self, item: Finished) -> None:
        old = self._items.pop(item.job_id, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._items[item.job_id] = item
        self._bytes += item.nbytes
        self.expire()
        while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes
            self.evicted += 1

    def get(self, job_id: str) -> Finished | None:
        with self._lock:
            self.expire()
            return self._items.get(job_id)

    def expire(self) -> None:
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items:
            key, first = next(iter(self._items.items()))
            if now - first.at <= self.ttl:
                break  # insertion order is age order
            del self._items[key]
            self._bytes -= first.nbytes


@dataclass
class TrainJob:
    """A `train` job (PROTOCOL.md 5.14) from accept to its terminal event.  It runs on the
    trainer's own thread (`training.Trainer`), not on the executor: one at a time, the
    others waiting in line in the order they came."""

    owner: bytes
    request: Any  # training.TrainRequest (let go when the job ends)
    model: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = JobState.QUEUED
    submitted: float = field(default_factory=time.monotonic)
    started: float = 0.0
    stage: Stage | str = Stage.QUEUED
    step: int = 0
    total_steps: int = 0
    seq: int = 0
    cancel_code: CancelCode | None = None
    position: int = -1
    clock: float = 0.0
    kind: str = "train"
    name: str = ""  # the LoRA it makes
    key: str = ""  # the hash of its images and settings: where its checkpoints are
    family: str = ""  # the model's family (`families.Arch` value)
    resolution: int = 0  # the side its pictures are trained at

    def summary(self) -> dict[str, Any]:
        return {
            "job": self.id, "state": self.state, "kind": self.kind, "model": self.model, "name": self.name,
            "stage": self.stage, "step": self.step, "total_steps": self.total_steps,
            "waited": round((self.started or time.monotonic()) - self.submitted, 3),
        }
