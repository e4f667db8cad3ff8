"""Fault injection for the test suite: a model that fails on request, over a real socket.

The daemon knows nothing of it.  The tests start it through this file's entry point
(`daemons.start_daemon(..., faults=MODEL)`), which runs `inpaintd serve` with the model
registry wrapped: the model "fault-injector" is added beside the configured ones.  It is
the real engine of MODEL (the tiny diffusion pipeline, in the tests) with faults slipped
into its progress reports, so that an injected out-of-memory error is raised from inside
the engine's own denoising loop and the engine's real low-memory retry handles it.

Directives go in the prompt, a step counted as the engine reports `denoising` steps:

    fault:raise@3       raise an ordinary exception at step 3
    fault:oom@2         CUDA-style out-of-memory at step 2, on the first try and on the retry
    fault:oom-once@2    out-of-memory at step 2 on the first try only; the retry succeeds
    fault:sleep=0.05    sleep this many seconds per step (a slow job; cancel still works)
    fault:hold=64       hold this many MB while the job runs, as a model holds activations

`--fault-load-delay S` also makes the first load of each model (the default model's at
start-up included) take S seconds longer, as a diffusion model's load does, so that
tests can watch what a client hears while a model loads.

    python tests/faults.py --fault-model DIR [--fault-load-delay S] serve ARGS...
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inpaintd.engines.base import EngineRequest, JobCancelled, ModelInfo, ProgressFn

FAULT_MODEL_ID = "fault-injector"

_DIRECTIVE = re.compile(r"fault:([a-z][a-z-]*)(?:@(\d+))?(?:=([0-9.]+))?")


class InjectedFault(RuntimeError):
    """The exception `fault:raise` throws: an engine bug, as far as the daemon knows."""


def out_of_memory(what: str) -> BaseException:
    """The error torch raises when CUDA memory runs out (torch is loaded: the engine is a diffusion one)."""
    import torch

    return torch.OutOfMemoryError(f"CUDA out of memory (simulated by fault injection) {what}")


@dataclass
class FaultPlan:
    fault: str = ""  # "", "raise", "oom", "oom-once"
    at: int = 1
    sleep: float = 0.0
    hold_mb: int = 0

    @classmethod
    def parse(cls, prompt: str) -> FaultPlan:
        plan = cls()
        for name, at, value in _DIRECTIVE.findall(prompt or ""):
            if name in ("raise", "oom", "oom-once"):
                plan.fault, plan.at = name, int(at or 1)
            elif name == "sleep":
                plan.sleep = min(float(value or 0), 60.0)
            elif name == "hold":
                plan.hold_mb = min(int(float(value or 0)), 4096)
        return plan


class FaultEngine:
    """A real engine with faults slipped into its progress reports.  Everything else (the
    kind, device, caps, the pixels, the retry) is the wrapped engine's own."""

    model_id = FAULT_MODEL_ID

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.held: np.ndarray | None = None  # "activations": freed whatever happens

    def __getattr__(self, name: str) -> Any:  # name, device, caps, speed_notes, ...
        return getattr(self.inner, name)

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: Any) -> Any:
        plan = FaultPlan.parse(request.prompt)
        ooms = 0

        def progress(stage: str, step: int, total: int) -> None:
            nonlocal ooms
            if stage == "denoising":
                deadline = time.monotonic() + plan.sleep
                while time.monotonic() < deadline:  # a cancellable sleep
                    time.sleep(min(0.01, plan.sleep))
                    if cancelled():
                        raise JobCancelled()
                if step == plan.at and plan.fault == "raise":
                    raise InjectedFault(f"injected engine failure at step {step} of {total}")
                if step == plan.at and (plan.fault == "oom" or (plan.fault == "oom-once" and not ooms)):
                    ooms += 1
                    raise out_of_memory(f"at step {step} of {total}")
            on_progress(stage, step, total)

        if plan.hold_mb:
            self.held = np.ones(plan.hold_mb << 20, np.uint8)  # touched, so it counts in RSS
        try:
            return self.inner.generate(request, progress, cancelled)
        finally:
            self.held = None

    def free_memory(self) -> None:
        self.held = None
        self.inner.free_memory()

    def close(self) -> None:
        self.held = None  # the wrapped engine is the registry's to close


class FaultInjectionRegistry:
    """A model registry with "fault-injector" added: `target`'s engine, wrapped."""

    def __init__(self, inner: Any, target: str, load_delay: float = 0.0) -> None:
        """`inner`: an inpaintd.models.ModelRegistry; `target`: one of its model ids."""
        self.inner = inner
        self.target = inner.get(target).id
        self.load_delay = load_delay
        self._loaded: set[str] = set()  # models whose first (slow) load is done
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # default_model_id, notices, engine_notes, ...
        return getattr(self.inner, name)

    def _id(self, model_id: str) -> str:
        return self.target if model_id == FAULT_MODEL_ID else model_id

    def list(self) -> list[ModelInfo]:
        info = self.inner.get(self.target)
        fault = ModelInfo(FAULT_MODEL_ID, info.engine, "builtin", info.available, info.native_size,
                          f"test model that fails on request: {info.id} with faults (tests/faults.py)", info.family)
        return [*self.inner.list(), fault]

    def get(self, model_id: str) -> ModelInfo:
        return next(m for m in self.list() if m.id == FAULT_MODEL_ID) if model_id == FAULT_MODEL_ID else self.inner.get(model_id)

    def admit(self, model_id: str) -> ModelInfo:
        if model_id == FAULT_MODEL_ID:
            self.inner.admit(self.target)
            return self.get(model_id)
        return self.inner.admit(model_id)

    def caps(self, model_id: str) -> Any:
        return self.inner.caps(self._id(model_id))

    def load(self, model_id: str, progress: ProgressFn | None = None) -> Any:
        with self._lock:  # one load at a time, as the real registry
            if self.load_delay and model_id not in self._loaded:
                report = progress or (lambda stage, step, total: None)
                report("loading", 0, 1)
                time.sleep(self.load_delay)
                engine = self._load(model_id, None)
                self._loaded.add(model_id)
                report("loading", 1, 1)
                return engine
            return self._load(model_id, progress)

    def _load(self, model_id: str, progress: ProgressFn | None) -> Any:
        engine = self.inner.load(self._id(model_id), progress)
        return FaultEngine(engine) if model_id == FAULT_MODEL_ID else engine

    def close(self) -> None:
        self.inner.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`inpaintd serve ARGS` with the fault-injector model wrapping `--fault-model`'s engine."""
    parser = argparse.ArgumentParser(prog="tests/faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault-model", required=True, help="the model whose engine the fault-injector wraps (a diffusion one)")
    parser.add_argument("--fault-load-delay", type=float, default=0.0, metavar="S")
    own, serve_argv = parser.parse_known_args(argv)
    from inpaintd import cli

    args = cli.build_parser().parse_args(serve_argv)
    if args.command != "serve":
        parser.error("the command is `serve ARGS...`")
    if own.fault_model not in [args.model, *args.extra_model]:
        args.extra_model.append(own.fault_model)  # the model must be a configured one
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def wrap(registry: Any) -> FaultInjectionRegistry:
        logging.getLogger("inpaintd").warning(
            "fault injection is ON: the 'fault-injector' model fails on request; never use this in production")
        faulty = FaultInjectionRegistry(registry, own.fault_model, own.fault_load_delay)
        registry.load(faulty.target)  # warm before serving, so that fault jobs time alike from the first
        return faulty

    return cli.cmd_serve(args, wrap_registry=wrap)


if __name__ == "__main__":
    sys.exit(main())
