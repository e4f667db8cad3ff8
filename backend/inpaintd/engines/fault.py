"""A built-in test model that fails on purpose, for fault-injection tests.

It exists only when the daemon is started with `inpaintd serve --fault-injection`; without
that flag no client can reach it (the model id is unknown).  It lets tests drive, over a
real socket, the failures a GPU engine has in real life, at a chosen step of a job:

    fault:raise@3       raise an ordinary exception at denoising step 3
    fault:oom@2         simulated CUDA out-of-memory at step 2, again on the retry
    fault:oom-once@2    simulated out-of-memory at step 2; the low-memory retry succeeds
    fault:sleep=0.05    sleep this many seconds per step (a slow job; cancel still works)
    fault:hold=64       hold this many MB while the job runs, as a model holds activations

Directives go in the prompt; `steps` sets the number of steps (default 20).  The output
is the input with the hole filled grey, so results composite like any engine's.

`inpaintd serve --fault-injection --fault-load-delay S` also makes the first load of each
model (the default model's at start-up included) take S seconds longer, as a diffusion
model's load does, so that tests can watch what a client hears while a model loads.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from .base import EngineError, EngineTask, ModelInfo, ProgressFn

FAULT_MODEL_ID = "fault-injector"
FAULT_MODEL_INFO = ModelInfo(
    FAULT_MODEL_ID, "fault-injector", "builtin", True, None,
    "test model that fails on request (daemon started with --fault-injection)",
)
#: What the low-memory retry changes; the diffusers engine does the same three things.
LOW_MEMORY_SETTINGS = "attention slicing, VAE tiling and one variant at a time"

_DIRECTIVE = re.compile(r"fault:([a-z][a-z-]*)(?:@(\d+))?(?:=([0-9.]+))?")


class InjectedFault(RuntimeError):
    """The exception `fault:raise` throws: an engine bug, as far as the daemon knows."""


class SimulatedOutOfMemoryError(RuntimeError):
    """Reads like torch.cuda.OutOfMemoryError (a RuntimeError saying "CUDA out of memory"), without torch."""

    def __init__(self, what: str) -> None:
        super().__init__(f"CUDA out of memory (simulated by fault injection) {what}")


@dataclass
class FaultPlan:
    fault: str = ""  # "", "raise", "oom", "oom-once"
    at: int = 1
    sleep: float = 0.0
    hold_mb: int = 0

    @classmethod
    def parse(cls, prompt: str) -> "FaultPlan":
        plan = cls()
        for name, at, value in _DIRECTIVE.findall(prompt or ""):
            if name in ("raise", "oom", "oom-once"):
                plan.fault, plan.at = name, int(at or 1)
            elif name == "sleep":
                plan.sleep = min(float(value or 0), 60.0)
            elif name == "hold":
                plan.hold_mb = min(int(float(value or 0)), 4096)
        return plan


class FaultInjectorEngine:
    name = "fault-injector"
    model_id = FAULT_MODEL_ID
    device = "cpu"
    native_size: int | None = None
    size_multiple = 1

    def __init__(self) -> None:
        self.held: np.ndarray | None = None  # "activations": freed whatever happens
        self.last_notes: list[str] = []
        self.failures = 0

    def generate(self, task: EngineTask) -> list[np.ndarray]:
        plan = FaultPlan.parse(task.prompt)
        self.last_notes = []
        try:
            return self._attempt(task, plan, low_memory=False)
        except SimulatedOutOfMemoryError as exc:
            self.free_memory()
            # Same policy as the diffusers engine: one retry with lower-memory settings.
            try:
                out = self._attempt(task, plan, low_memory=True)
            except SimulatedOutOfMemoryError:
                self.free_memory()
                raise EngineError(
                    "out_of_memory",
                    f"{self.device} ran out of memory at step {plan.at} ({exc}), and again after retrying "
                    f"with {LOW_MEMORY_SETTINGS}; ask for fewer variants or a smaller region",
                ) from None
            self.last_notes.append(f"ran out of memory at step {plan.at}; retried once with {LOW_MEMORY_SETTINGS}, which worked")
            return out
        finally:
            self.free_memory()

    def _attempt(self, task: EngineTask, plan: FaultPlan, low_memory: bool) -> list[np.ndarray]:
        if plan.hold_mb:
            self.held = np.ones(plan.hold_mb << 20, np.uint8)  # touched, so it counts in RSS
        total = max(task.steps, 1)
        for step in range(1, total + 1):
            task.check_cancel()
            if plan.sleep:
                deadline = time.monotonic() + plan.sleep
                while time.monotonic() < deadline:  # cancellable sleep
                    time.sleep(min(0.01, plan.sleep))
                    task.check_cancel()
            if step == plan.at and plan.fault == "raise":
                self.failures += 1
                raise InjectedFault(f"injected engine failure at step {step} of {total}")
            if step == plan.at and (plan.fault == "oom" or (plan.fault == "oom-once" and not low_memory)):
                self.failures += 1
                raise SimulatedOutOfMemoryError(f"at step {step} of {total}")
            task.progress("denoising", step, total)
        out = task.image[:, :, :3].copy()
        out[task.mask > 0] = 128
        return [out.copy() for _ in task.seeds]

    def free_memory(self) -> None:
        self.held = None

    def close(self) -> None:
        self.free_memory()


class FaultInjectionRegistry:
    """A model registry with the fault-injector model added beside the configured ones."""

    def __init__(self, inner, load_delay: float = 0.0) -> None:  # inner: inpaintd.models.ModelRegistry
        self.inner = inner
        self.engine = FaultInjectorEngine()
        self.load_delay = load_delay
        self._loaded: set[str] = set()  # models whose first (slow) load is done
        self._lock = threading.Lock()

    def __getattr__(self, name: str):  # default_model_id, notices, allow_pickle, ...
        return getattr(self.inner, name)

    def list(self) -> list[ModelInfo]:
        return [*self.inner.list(), FAULT_MODEL_INFO]

    def get(self, model_id: str) -> ModelInfo:
        return FAULT_MODEL_INFO if model_id == FAULT_MODEL_ID else self.inner.get(model_id)

    def load(self, model_id: str, progress: ProgressFn | None = None):
        with self._lock:  # one load at a time, as the real registry
            if self.load_delay and model_id not in self._loaded:
                report = progress or (lambda stage, step, total: None)
                report("loading", 0, 1)
                time.sleep(self.load_delay)
                engine = self._load(model_id, lambda stage, step, total: None)
                self._loaded.add(model_id)
                report("loading", 1, 1)
                return engine
            return self._load(model_id, progress)

    def _load(self, model_id: str, progress: ProgressFn | None):
        return self.engine if model_id == FAULT_MODEL_ID else self.inner.load(model_id, progress)

    def close(self) -> None:
        self.engine.close()
        self.inner.close()
