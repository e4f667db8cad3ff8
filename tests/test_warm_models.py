"""Several diffusion models warm at once (issue #11): the registry's LRU policy on stand-in
engines in-process, then two tiny pipelines behind real daemons, `--warm-models 2` keeping
both and `--warm-models 1` swapping at every change of model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemons import DaemonProcess, start_daemon

from inpaintd.engines.base import EngineError
from inpaintd.models import ModelRegistry, WarmSet, engine_bytes
from inpaintd_protocol.messages import JobOptions

pytestmark = pytest.mark.timeout(180)


# -- the policy, on stand-in engines ---------------------------------------------------


class FakeEngine:
    name = "diffusers"
    caps: Any = None

    def __init__(self, model_id: str, nbytes: int, registry: Any) -> None:
        self.model_id = model_id
        self.device = "cpu"
        self.nbytes = nbytes
        self.closed = False
        # what else was warm (and open) the moment this one was made
        self.warm_at_birth = [e.model_id for e in registry.made if not e.closed]

    def generate(self, request: Any, on_progress: Any, cancelled: Any) -> Any:
        raise AssertionError("not used here")

    def free_memory(self) -> None:
        pass

    def close(self) -> None:
        assert not self.closed, f"{self.model_id} closed twice"
        self.closed = True


class FakeRegistry(ModelRegistry):
    """The real registry, with stand-in engines of given sizes and no weights to check."""

    def __init__(self, sizes: dict[str, int], **kwargs: Any) -> None:
        super().__init__(list(sizes), **kwargs)
        self.sizes = sizes
        self.made: list[FakeEngine] = []
        self.gate: threading.Event | None = None

    def admit(self, model_id: str) -> Any:
        return self.get(model_id)

    def _make_engine(self, spec: Any) -> Any:
        if self.gate is not None:
            assert self.gate.wait(10)
        engine = FakeEngine(spec.id, self.sizes[spec.id], self)
        self.made.append(engine)
        return engine


SIZES = {"org/a": 100, "org/b": 100, "org/c": 100}


def loads(registry: FakeRegistry) -> list[str]:
    return [e.model_id for e in registry.made]


def warm_ids(registry: ModelRegistry) -> list[str]:
    return [str(w["model"]) for w in registry.warm()]


def test_one_warm_model_is_todays_swap() -> None:
    registry = FakeRegistry(SIZES)
    for model in ["org/a", "org/b", "org/a", "org/b"]:
        assert registry.load(model).model_id == model
    assert loads(registry) == ["org/a", "org/b", "org/a", "org/b"]
    # the warm one is closed before the next is made: two never live together
    assert all(e.warm_at_birth == [] for e in registry.made)
    assert [e.closed for e in registry.made] == [True, True, True, False]
    assert warm_ids(registry) == ["org/b"]
    assert registry._diffusion is registry.made[-1]


def test_two_warm_models_alternate_without_reloading() -> None:
    registry = FakeRegistry(SIZES, warm_models=2)
    engines = [registry.load(m) for m in ["org/a", "org/b", "org/a", "org/b"]]
    assert loads(registry) == ["org/a", "org/b"]
    assert engines[0] is engines[2] and engines[1] is engines[3]
    assert not any(e.closed for e in registry.made)
    assert warm_ids(registry) == ["org/b", "org/a"]  # most recently used first
    assert {w["model"]: w["loads"] for w in registry.warm()} == {"org/a": 1, "org/b": 1}


def test_the_least_recently_used_goes_first() -> None:
    registry = FakeRegistry(SIZES, warm_models=2)
    a = registry.load("org/a")
    b = registry.load("org/b")
    registry.load("org/a")  # a is now the more recently used
    c = registry.load("org/c")
    assert b.closed and not a.closed and not c.closed
    assert c.warm_at_birth == ["org/a"]  # b went before c was made
    assert warm_ids(registry) == ["org/c", "org/a"]
    registry.load("org/b")  # a is the least recently used now
    assert a.closed
    assert warm_ids(registry) == ["org/b", "org/c"]
    assert {w["model"]: w["loads"] for w in registry.warm()} == {"org/b": 2, "org/c": 1}


def test_classical_models_neither_count_nor_touch_the_order() -> None:
    registry = FakeRegistry(SIZES, warm_models=2)
    a = registry.load("org/a")
    registry.load("org/b")
    registry.load("opencv-telea")
    assert warm_ids(registry) == ["org/b", "org/a"] and not a.closed


def test_memory_budget_evicts_before_loading_what_would_not_fit() -> None:
    registry = FakeRegistry(SIZES, warm_models=5, memory_budget_bytes=250)
    a = registry.load("org/a")
    b = registry.load("org/b")
    c = registry.load("org/c")  # 100 more would make 300: a goes first
    assert a.closed and not b.closed
    assert c.warm_at_birth == ["org/b"]
    assert warm_ids(registry) == ["org/c", "org/b"]
    assert sum(int(str(w["bytes"])) for w in registry.warm()) == 200


def test_memory_budget_measures_after_loading_too() -> None:
    # b's size is unknown before its first load (the estimate is a's 100); measured at 200 it
    # does not fit beside a, which then goes.  The second time, its size is known up front.
    registry = FakeRegistry({"org/a": 100, "org/b": 200}, warm_models=5, memory_budget_bytes=250)
    a = registry.load("org/a")
    b = registry.load("org/b")
    assert b.warm_at_birth == ["org/a"] and a.closed
    a2 = registry.load("org/a")
    assert b.closed and a2.warm_at_birth == []  # 100 + 200 > 250, known before loading
    assert warm_ids(registry) == ["org/a"]


def test_a_model_larger_than_the_budget_still_loads_alone() -> None:
    registry = FakeRegistry({"org/a": 100, "org/b": 1000}, warm_models=3, memory_budget_bytes=500)
    a = registry.load("org/a")
    registry.load("org/b")
    assert a.closed and warm_ids(registry) == ["org/b"]
    assert registry.load("org/b") is registry.made[-1]  # and stays warm


def test_a_held_model_is_never_evicted() -> None:
    registry = FakeRegistry(SIZES, warm_models=1)
    a = registry.load("org/a")
    with registry.in_use("org/a"):  # a job runs on it
        b = registry.load("org/b")
        assert not a.closed and warm_ids(registry) == ["org/b", "org/a"]  # over the limit for now
    registry.load("org/c")
    assert a.closed and b.closed and warm_ids(registry) == ["org/c"]


def test_last_used_counts_seconds_since_a_job_asked() -> None:
    registry = FakeRegistry(SIZES, warm_models=2)
    now = [1000.0]
    registry._warm.clock = lambda: now[0]
    registry.load("org/a")
    now[0] += 5
    registry.load("org/b")
    now[0] += 2
    assert {w["model"]: w["last_used"] for w in registry.warm()} == {"org/a": 7.0, "org/b": 2.0}
    registry.load("org/a")  # warm: no load, but used now
    assert registry.warm()[0] == {"model": "org/a", "device": "cpu", "bytes": 100, "last_used": 0.0, "loads": 1}


def test_warm_answers_while_a_load_is_under_way() -> None:
    """status reads the warm list from the socket thread: it must not wait for a load."""
    registry = FakeRegistry(SIZES, warm_models=2)
    registry.load("org/a")
    registry.gate = threading.Event()
    loader = threading.Thread(target=registry.load, args=("org/b",))
    loader.start()
    try:
        time.sleep(0.1)
        started = time.monotonic()
        assert warm_ids(registry) == ["org/a"]
        assert time.monotonic() - started < 1.0
    finally:
        registry.gate.set()
        loader.join(10)
    assert warm_ids(registry) == ["org/b", "org/a"]


def test_close_closes_every_warm_engine() -> None:
    registry = FakeRegistry(SIZES, warm_models=3)
    for model in SIZES:
        registry.load(model)
    registry.close()
    assert all(e.closed for e in registry.made) and registry.warm() == []


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WarmSet(0)
    with pytest.raises(ValueError, match="positive"):
        WarmSet(1, 0)


def test_unknown_model_loads_nothing() -> None:
    registry = FakeRegistry(SIZES, warm_models=2)
    registry.load("org/a")
    with pytest.raises(EngineError):
        registry.load("org/nope")
    assert warm_ids(registry) == ["org/a"] and loads(registry) == ["org/a"]


def test_engine_bytes_sums_each_tensor_of_the_pipeline_once() -> None:
    torch = pytest.importorskip("torch")

    class Pipe:
        def __init__(self) -> None:
            self.unet = torch.nn.Linear(4, 4)  # 16 + 4 float32
            self.text_encoder = torch.nn.Sequential(self.unet, torch.nn.Linear(2, 2).half())  # shared + 4 + 2 halves
            self.text_encoder.register_buffer("pos", torch.zeros(3, dtype=torch.int64))
            self.components = {"unet": self.unet, "text_encoder": self.text_encoder, "tokenizer": object(), "x": None}

    class Engine:
        pipe = Pipe()

    assert engine_bytes(Engine()) == 20 * 4 + 6 * 2 + 3 * 8
    assert engine_bytes(object()) == 0


# -- two tiny pipelines behind real daemons ------------------------------------------------


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from inpaintd.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("models") / "tiny-inpaint-b")


def _daemon(tmp_path_factory: pytest.TempPathFactory, a: Path, b: Path, *extra: str) -> DaemonProcess:
    return start_daemon(tmp_path_factory.mktemp("warm-daemon"), "--model", str(a), "--extra-model", str(b),
                        "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def two_warm(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, second_model_dir: Path) -> Iterator[DaemonProcess]:
    d = _daemon(tmp_path_factory, tiny_model_dir, second_model_dir, "--warm-models", "2")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def one_warm(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, second_model_dir: Path) -> Iterator[DaemonProcess]:
    # a budget far below one tiny pipeline: each load leaves only itself warm
    d = _daemon(tmp_path_factory, tiny_model_dir, second_model_dir, "--warm-models", "2", "--memory-budget-gb", "0.000001")
    yield d
    d.stop()


def alternate(daemon: DaemonProcess, a: Path, b: Path) -> tuple[list[int], dict[str, Any]]:
    """Jobs on A, B, A, B; the number of `loading` progress events each heard, and status."""
    image = np.full((64, 64, 3), 120, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    heard: list[int] = []
    with daemon.client() as c:
        for model in [a, b, a, b]:
            stages: list[str] = []
            job = c.inpaint(image.tobytes(), 64, 64, 3, mask.tobytes(), JobOptions(model=str(model), steps=2),
                            on_event=lambda job, msg, stages=stages: stages.append(str(msg.body.get("stage"))), timeout=120)
            assert job.result["model"] == str(model.resolve())
            heard.append(stages.count("loading"))
        return heard, c.status()


@pytest.mark.slow
def test_two_warm_models_load_each_once(two_warm: DaemonProcess, tiny_model_dir: Path, second_model_dir: Path) -> None:
    a, b = str(tiny_model_dir.resolve()), str(second_model_dir.resolve())
    heard, status = alternate(two_warm, tiny_model_dir, second_model_dir)
    assert heard[0] == 0 and heard[1] > 0 and heard[2:] == [0, 0]  # A was loaded at start, B once
    warm = status["warm_models"]
    assert [w["model"] for w in warm] == [b, a]
    assert [w["loads"] for w in warm] == [1, 1]
    assert all(w["device"] == "cpu" and w["bytes"] > 0 and 0 <= w["last_used"] < 120 for w in warm)
    assert status["loaded_model"] == b
    with two_warm.client() as c:
        assert [w["model"] for w in c.hello()["warm_models"]] == [b, a]
    assert two_warm.log().count("to make room") == 0


@pytest.mark.slow
def test_a_budget_that_fits_one_reloads_at_each_change(one_warm: DaemonProcess, tiny_model_dir: Path,
                                                       second_model_dir: Path) -> None:
    b = str(second_model_dir.resolve())
    heard, status = alternate(one_warm, tiny_model_dir, second_model_dir)
    assert heard[0] == 0 and all(n > 0 for n in heard[1:])
    warm = status["warm_models"]
    assert [(w["model"], w["loads"]) for w in warm] == [(b, 2)]
    assert status["loaded_model"] == b
    assert one_warm.log().count("to make room") == 3


def test_cli_status_lists_the_warm_models(two_warm: DaemonProcess, second_model_dir: Path) -> None:
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "inpaintd", "status"], env=dict(os.environ, **two_warm.env),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "warm" in out and "MB" in out
