"""Out-of-memory on the diffusion engine: one retry with lower-memory settings, and saying so.

A real CUDA OOM needs a GPU and a model too big for it; what matters here is the engine's
reaction, so the tiny pipeline runs on CPU and its denoising loop is made to raise the very error
torch raises (torch.OutOfMemoryError) when it is asked to.  Everything else is real: the
pipeline, the slicing and tiling switches, the seeds and the pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine_calls import Call, call, generate, run  # noqa: E402

from inpaintd.engines.base import EngineError  # noqa: E402
from inpaintd.engines.diffusers_engine import LOW_MEMORY_SETTINGS, DiffusersEngine  # noqa: E402
from inpaintd.testmodel import TEST_NATIVE_SIZE  # noqa: E402


class OomLoop:
    """Stands in for the engine's denoising loop: raises CUDA-style OOM on the calls listed,
    else delegates, and records the memory settings in force at each call."""

    def __init__(self, loop: Any, fail_calls: set[int]) -> None:
        self.loop = loop
        self.pipe = loop.pipe
        self.fail_calls = fail_calls
        self.calls: list = []  # (batch size, attention slicing on, vae tiling on)

    def __call__(self, job: Any, **kwargs: Any) -> Any:
        unet_proc = type(next(iter(self.pipe.unet.attn_processors.values()))).__name__
        self.calls.append((len(job.generators), "Sliced" in unet_proc, bool(getattr(self.pipe.vae, "use_tiling", False))))
        if len(self.calls) in self.fail_calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.loop(job, **kwargs)


def task(seeds: list[int], events: list) -> Call:
    size = TEST_NATIVE_SIZE
    rng = np.random.default_rng(3)
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    return call(
        image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mask=mask, prompt="a wall",
        negative_prompt="", seeds=seeds, steps=3, guidance_scale=7.5, strength=1.0, scheduler="ddim",
        progress=lambda stage, step, total: events.append((stage, step, total)),
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> DiffusersEngine:
    eng = DiffusersEngine(tiny_model_dir, device="cpu")
    yield eng
    eng.close()


def test_oom_is_retried_once_with_low_memory_settings_and_reported(engine: DiffusersEngine) -> None:
    clean = run(engine, task([11, 12, 13], [])).images
    real = engine._loop
    fake = OomLoop(real, fail_calls={1})
    engine._loop = fake
    events: list = []
    try:
        output = run(engine, task([11, 12, 13], events))
    finally:
        engine._loop = real
    # first the whole batch, then one variant per call with slicing and tiling on
    assert fake.calls == [(3, False, False), (1, True, True), (1, True, True), (1, True, True)]
    out = output.images
    assert len(out) == 3 and all(o.shape == (TEST_NATIVE_SIZE, TEST_NATIVE_SIZE, 3) for o in out)
    # each variant still follows its own seed (batched vs. one at a time: float noise only)
    for a, b in zip(out, clean, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    assert len(output.notes) == 1 and LOW_MEMORY_SETTINGS in output.notes[0]
    assert "out of memory" in output.notes[0]
    note = output.notes[0]
    # progress after the retry runs over all three calls, ending at the total
    denoise = [(s, t) for stage, s, t in events if stage == "denoising"]
    assert denoise[-1][0] == denoise[-1][1] and denoise[-1][1] >= 9
    # the settings are back to normal for the next job
    nxt = OomLoop(real, fail_calls=set())
    engine._loop = nxt
    try:
        after = run(engine, task([5], []))
    finally:
        engine._loop = real
    assert nxt.calls == [(1, False, False)] and after.notes == []
    print(f"\n[trust] OOM retry: 1 injected OOM, {len(fake.calls) - 1} low-memory calls, note: {note}", file=sys.stderr)


def test_oom_twice_gives_up_with_out_of_memory_naming_the_retry(engine: DiffusersEngine) -> None:
    real = engine._loop
    fake = OomLoop(real, fail_calls={1, 2})
    engine._loop = fake
    try:
        with pytest.raises(EngineError) as err:
            generate(engine, task([1, 2], []))
    finally:
        engine._loop = real
    assert err.value.code == "out_of_memory"
    assert "again after retrying with" in err.value.message and LOW_MEMORY_SETTINGS in err.value.message
    assert len(fake.calls) == 2  # one batch call, one low-memory call, then it gave up
    # and the engine works for the next job, with normal settings
    assert len(generate(engine, task([4], []))) == 1
    assert type(next(iter(real.pipe.unet.attn_processors.values()))).__name__.find("Sliced") < 0


def test_non_oom_failures_are_not_retried(engine: DiffusersEngine) -> None:
    class Boom(OomLoop):
        def __call__(self, job: Any, **kwargs: Any) -> Any:
            self.calls.append(1)
            raise ValueError("a bug in a pipeline")

    real = engine._loop
    fake = Boom(real, set())
    engine._loop = fake
    try:
        with pytest.raises(ValueError):
            generate(engine, task([1], []))
    finally:
        engine._loop = real
    assert fake.calls == [1]


def test_oom_steps_down_one_memory_mode_and_says_so(tiny_model_dir: Path) -> None:
    """The memory-mode ladder (gpu -> offload -> group -> sequential): an out-of-memory
    error moves the model one mode leaner for the retry, the registry hears of it (a reload
    keeps the mode), and the note names both modes.  On this CPU the offload hooks run with
    the CPU as their device: wiring, with real pixels."""
    heard: list[str] = []
    eng = DiffusersEngine(tiny_model_dir, device="cpu", memory="gpu", on_memory_mode=heard.append)
    try:
        clean = run(eng, task([21], [])).images
        real = eng._loop
        fake = OomLoop(real, fail_calls={1})
        eng._loop = fake
        try:
            output = run(eng, task([21], []))
        finally:
            eng._loop = real
        assert eng.memory_mode == "offload" and heard == ["offload"]
        assert "memory mode offload (was gpu" in output.notes[0] and LOW_MEMORY_SETTINGS in output.notes[0]
        assert np.abs(output.images[0].astype(int) - clean[0].astype(int)).mean() < 2.0
        # a second out-of-memory error steps down once more: group offloading
        fake = OomLoop(real, fail_calls={1})
        eng._loop = fake
        try:
            again = run(eng, task([21], []))
        finally:
            eng._loop = real
        assert eng.memory_mode == "group" and heard == ["offload", "group"]
        assert "memory mode group (was offload" in again.notes[0]
        assert np.abs(again.images[0].astype(int) - clean[0].astype(int)).mean() < 2.0
        print(f"\n[trust] OOM ladder: gpu -> {heard}; note: {again.notes[0]}", file=sys.stderr)
    finally:
        eng.close()
