"""The executor seam, in process: what LocalExecutor tells the daemon, in what order.

A stub engine stands in for a model (it blocks until released or cancelled, or fails as
told); the registry and the runner are real.  What the daemon makes of these events is
tested over real sockets (test_daemon.py, test_protocol_raw.py, test_trust_faults.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from inpaintd.engines.base import EngineError, EngineOutput, EngineRequest, ModelCaps
from inpaintd.engines.classical import caps_of
from inpaintd.executor import (
    Cancelled,
    Event,
    Failed,
    JobRequest,
    LoadEnded,
    LoadStarted,
    LocalExecutor,
    Progressed,
    Succeeded,
)
from inpaintd_protocol.messages import Code, JobOptions


class StubEngine:
    name = "classical"
    device = "cpu"
    model_id = "stub"
    caps = caps_of("opencv-telea")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fail: BaseException | None = None
        self.freed = 0

    def generate(self, request: EngineRequest, on_progress: Any, cancelled: Any) -> EngineOutput:
        on_progress("denoising", 0, 1)
        while not self.release.wait(0.01):
            if cancelled():
                from inpaintd.engines.base import JobCancelled

                raise JobCancelled()
        if self.fail is not None:
            raise self.fail
        on_progress("denoising", 1, 1)
        return EngineOutput([request.image.copy() for _ in request.seeds], ["a note"])

    def free_memory(self) -> None:
        self.freed += 1


class StubRegistry:
    def __init__(self, load_seconds: float = 0.0) -> None:
        self.engine = StubEngine()
        self.load_seconds = load_seconds
        self.loaded = False

    def load(self, model_id: str, progress: Any = None) -> StubEngine:
        if not self.loaded:
            if progress:
                progress("loading", 0, 1)
            time.sleep(self.load_seconds)
            self.loaded = True
            if progress:
                progress("loading", 1, 1)
        return self.engine

    def caps(self, model_id: str) -> ModelCaps:
        return self.engine.caps  # the stub's description; a real registry reads the model's


def request(job_id: str = "j1") -> JobRequest:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    return JobRequest(job_id, "stub", np.full((16, 16, 3), 100, np.uint8), mask, JobOptions(variants=2), [1, 2])


def collect(ex: LocalExecutor, until: type, timeout: float = 10.0) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not any(isinstance(e, until) for e in events):
        assert time.monotonic() < deadline, events
        events += ex.events()
        time.sleep(0.005)
    return events


@pytest.fixture
def woken() -> list[int]:
    return []


def test_preload_then_a_job_start_to_finish(woken: list[int]) -> None:
    registry = StubRegistry(load_seconds=0.05)
    ex = LocalExecutor(registry, preload="stub")
    assert ex.capacity == 0
    ex.start(lambda: woken.append(1))
    events = collect(ex, LoadEnded)
    assert [type(e) for e in events] == [LoadStarted, LoadEnded]
    started, ended = events
    assert isinstance(ended, LoadEnded) and started.job_id is None and ended.device == "cpu" and ex.capacity == 1
    ex.submit(request())
    registry.engine.release.set()
    events = collect(ex, Succeeded)
    ex.close()
    # the model was warm: no load events, only its end, then the runner's and engine's stages
    assert isinstance(events[0], LoadEnded) and events[0].job_id == "j1"
    stages = [(e.stage, e.step, e.total) for e in events if isinstance(e, Progressed)]
    assert stages[0] == ("preparing", 0, 1) and ("denoising", 1, 1) in stages and stages[-1] == ("compositing", 0, 1)
    done = events[-1]
    assert isinstance(done, Succeeded) and len(done.output.layers) == 2 and done.notes == ["a note"]
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert woken  # every event woke the daemon


def test_a_job_that_loads_its_model_hears_the_load(woken: list[int]) -> None:
    registry = StubRegistry()
    ex = LocalExecutor(registry)
    ex.start(lambda: woken.append(1))
    assert ex.capacity == 1
    ex.submit(request())
    registry.engine.release.set()
    events = collect(ex, Succeeded)
    ex.close()
    kinds = [(type(e).__name__, getattr(e, "stage", "")) for e in events[:4]]
    assert kinds == [("LoadStarted", ""), ("Progressed", "loading"), ("Progressed", "loading"), ("LoadEnded", "")]


def test_cancel_of_a_running_job() -> None:
    ex = LocalExecutor(StubRegistry())
    ex.start(lambda: None)
    ex.submit(request())
    collect(ex, Progressed)
    ex.cancel("j1")
    events = collect(ex, Cancelled)
    ex.close()
    assert isinstance(events[-1], Cancelled) and events[-1].job_id == "j1"


@pytest.mark.parametrize("exc,code", [
    (MemoryError("host"), Code.OUT_OF_MEMORY),
    (RuntimeError("CUDA out of memory. Tried to allocate"), Code.OUT_OF_MEMORY),
    (EngineError("bad_value", "no"), "bad_value"),
    (ValueError("a bug"), Code.ENGINE_FAILURE),
])
def test_a_failure_fails_the_job_names_it_and_frees_memory(exc: BaseException, code: str) -> None:
    registry = StubRegistry()
    registry.engine.fail = exc
    registry.engine.release.set()
    ex = LocalExecutor(registry)
    ex.start(lambda: None)
    ex.submit(request())
    failed = collect(ex, Failed)[-1]
    ex.close()
    assert isinstance(failed, Failed) and failed.code == code and str(exc) in failed.message
    assert registry.engine.freed == 1


def test_close_ends_every_job_handed_over() -> None:
    """Shutdown: the running job and one handed over but not started both end, cancelled."""
    ex = LocalExecutor(StubRegistry())
    ex.start(lambda: None)
    ex.submit(request("a"))
    collect(ex, Progressed)
    ex.submit(request("b"))
    ex.close(timeout=10)
    ended = {e.job_id for e in ex.events() if isinstance(e, Cancelled)}
    assert ended == {"a", "b"} and ex.capacity == 0
