"""Teaching the daemon a subject (#12, second half): `train` jobs on the tiny SD pipeline.

A synthetic subject (an orange ball on a dark ground, a little shifted in each picture) is
trained at 64 px through a real daemon: the loss goes down, the LoRA it writes is listed
at once and changes an inpaint job's pixels inside the mask (weight 0: not at all), the
base model is exactly as before, a cancel stops it, an inpaint job submitted meanwhile
starts within one training step, a daemon killed mid-training resumes from its last
checkpoint, and bad requests are refused with the field named.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemons import DaemonProcess, start_daemon

from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import ImageDesc, JobOptions, ProtocolError
from inpaintd_protocol.wire import Message

pytest.importorskip("peft")

W = H = 64


def subject(i: int, side: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    image = np.full((side, side, 3), 40, np.uint8)
    image[(x - side // 2 - 3 * i) ** 2 + (y - side // 2) ** 2 < (side // 3) ** 2] = (230, 120, 30)
    return image


PICTURES = [subject(i) for i in range(4)]


def _inpaint_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 16:48] = 255
    return image, mask


IMAGE, MASK = _inpaint_inputs()


def images_arg(pictures: list[np.ndarray]) -> list[tuple[bytes, int, int, int]]:
    return [(p.tobytes(), p.shape[1], p.shape[0], p.shape[2]) for p in pictures]


def inpaint(c: Client, loras: tuple[tuple[str, float], ...] = ()) -> np.ndarray:
    job = c.wait(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(),
                          JobOptions(prompt="a photo of sks ball", seed=3, steps=3, grow=0, feather=0), loras=loras), 120)
    job.raise_for_error()
    layer = job.layers[0]
    return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4).astype(int)


class Recorder:
    """A job's progress events as they arrive: (arrival time, body)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []

    def __call__(self, job: Job, msg: Message) -> None:
        if msg.type == "progress":
            self.events.append((time.monotonic(), dict(msg.body)))

    def training(self) -> list[dict[str, Any]]:
        return [b for _, b in self.events if b["stage"] == "training"]


def train(c: Client, name: str, *, pictures: list[np.ndarray] = PICTURES, **settings: Any) -> Job:
    settings.setdefault("resolution", 64)
    return c.train(images_arg(pictures), "sks", "ball", name, **settings)


def wait_for_step(c: Client, job: Job, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while job.step < step or job.stage != "training":
        assert not job.finished, (job.state, job.error)
        assert time.monotonic() < deadline, f"training did not reach step {step}"
        c.pump(0.1)


@pytest.fixture(scope="module")
def train_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("train-daemon"), "--model", str(tiny_model_dir), "--device", "cpu")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def before(train_daemon: DaemonProcess) -> np.ndarray:
    """The base model's pixels for the test inpaint job, before any training."""
    with train_daemon.client() as c:
        return inpaint(c)


@pytest.fixture(scope="module")
def trained(train_daemon: DaemonProcess, before: np.ndarray) -> dict[str, Any]:
    """The same 60 steps twice: at a learning rate that learns, and at one that does not
    (the same pictures, masks, noise and timesteps each step: the losses pair up)."""
    runs: dict[str, Any] = {}
    with train_daemon.client() as c:
        for name, lr in (("flat", 1e-8), ("ball", 1e-2)):
            rec = Recorder()
            job = c.wait(train(c, name, steps=60, learning_rate=lr, checkpoint_every=0), 300, on_event=rec)
            job.raise_for_error()
            runs[name] = (job, [b["loss"] for b in rec.training()], rec)
    return runs


def test_training_lowers_the_loss_and_writes_a_usable_lora(train_daemon: DaemonProcess, trained: dict[str, Any]) -> None:
    job, losses, rec = trained["ball"]
    _, flat, _ = trained["flat"]
    n = 10
    first, last, untrained = (statistics.mean(x) for x in (losses[:n], losses[-n:], flat[-n:]))
    print(f"\n[training] loss, mean of {n} steps: first {first:.4f}, last {last:.4f}; the same last steps without "
          f"learning {untrained:.4f} ({(1 - last / untrained) * 100:.1f}% lower)")
    print("[training] loss curve:", " ".join(f"{x:.3f}" for x in losses))
    steps = [b["step"] for b in rec.training()]
    assert steps == list(range(1, 61)) and all(b["total_steps"] == 60 for b in rec.training())
    assert all(isinstance(b["remaining"], float) and b["remaining"] >= 0 for b in rec.training())
    assert last < first and last < 0.97 * untrained
    made = job.result["trained"]
    assert made["name"] == "ball" and made["steps"] == 60 and made["path"].endswith("ball.safetensors")
    assert abs(made["final_loss"] - statistics.mean(losses[-10:])) < 1e-3
    assert job.result["variants"] == [] and job.layers == []
    with train_daemon.client() as c:
        listed = {a["name"]: a for a in c.request("loras").body["loras"]}
    assert listed["ball"]["family"] == "sd15" and listed["ball"]["format"] == "diffusers" and not listed["ball"]["problem"]
    assert listed["ball"]["trigger_words"] == ["sks ball"]
    from safetensors import safe_open

    with safe_open(made["path"], "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["inpaintd.token"] == "sks"
    assert meta["inpaintd.class"] == "ball" and meta["inpaintd.steps"] == "60" and len(eval(meta["inpaintd.image_hashes"])) == 4


def test_the_lora_changes_pixels_inside_the_mask_and_the_base_model_is_as_before(
        train_daemon: DaemonProcess, trained: dict[str, Any], before: np.ndarray) -> None:
    with train_daemon.client() as c:
        base = inpaint(c)
        with_lora = inpaint(c, (("ball", 1.0),))
        zero = inpaint(c, (("ball", 0.0),))
        after = inpaint(c)
    inside = MASK == 255
    change = float(np.abs(with_lora - base)[inside].mean())
    print(f"\n[training] mean |difference| inside the mask, LoRA weight 1 vs none: {change:.2f} of 255")
    assert np.array_equal(base, before) and np.array_equal(after, before)  # training left the base model as it was
    assert change > 0 and np.array_equal(zero, base)
    assert np.array_equal(with_lora[~inside], base[~inside])


def test_class_images_are_made_once_and_kept(train_daemon: DaemonProcess) -> None:
    with train_daemon.client() as c:
        rec = Recorder()
        job = c.wait(train(c, "with_prior", steps=3, prior_images=2, checkpoint_every=0), 300, on_event=rec)
        job.raise_for_error()
    preparing = [b["step"] for _, b in rec.events if b["stage"] == "preparing"]
    assert preparing == [1, 2] and [b["step"] for b in rec.training()] == [1, 2, 3]
    kept = list((train_daemon.runtime_dir.parent / "data" / "training" / "class-images").rglob("*.png"))
    assert len(kept) == 2


def test_a_training_job_can_be_cancelled(train_daemon: DaemonProcess) -> None:
    with train_daemon.client() as c:
        job = train(c, "cancelled", steps=5000, seed=7)
        wait_for_step(c, job, 3)
        assert c.status()["running"][0]["kind"] == "train"
        # another training that would write the same LoRA (its file does not exist yet) is refused
        with pytest.raises(ProtocolError) as err:
            train(c, "Cancelled", steps=10, seed=99)
        assert err.value.code == "bad_value" and err.value.details.get("field") == "name", err.value
        assert job.id in err.value.message and "will write" in err.value.message
        assert c.cancel(job)["state"] == "cancelling"
        c.wait(job, 30)
        assert job.state == "cancelled" and job.cancel_code == "running"
        assert not c.status()["running"]
        assert inpaint(c).shape == (H, W, 4)  # still serving


def test_an_inpaint_job_starts_within_one_training_step(train_daemon: DaemonProcess) -> None:
    with train_daemon.client() as c:
        rec = Recorder()
        job = train(c, "busy", steps=5000, seed=8)
        deadline = time.monotonic() + 120
        while len([b for b in rec.training() if b["step"] >= 6]) == 0:
            assert time.monotonic() < deadline and not job.finished
            for msg in c.pump(0.1):
                if msg.job == job.id:
                    rec(job, msg)
        sent = time.monotonic()
        other = c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(prompt="x", seed=1, steps=3))
        started = None
        while not other.finished:
            for msg in c.pump(0.05):
                if msg.job == other.id and msg.type == "progress" and msg.body["stage"] != "queued" and started is None:
                    started = time.monotonic()
                elif msg.job == job.id:
                    rec(job, msg)
        other.raise_for_error()
        steps_after = len(rec.training())
        wait_for_step(c, job, rec.training()[-1]["step"] + 2)  # training resumed after the job
        c.cancel(job)
        c.wait(job, 30)
    assert started is not None
    times = [t for t, b in rec.events if b["stage"] == "training"]
    step_time = statistics.median(b - a for a, b in zip(times[:steps_after], times[1:steps_after], strict=False))
    latency = started - sent
    print(f"\n[training] preemption latency (inpaint submit during training -> its first progress event): "
          f"{latency * 1000:.0f} ms; a training step takes {step_time * 1000:.0f} ms (median)")
    assert latency < step_time + 1.0


def _raw(c: Client, body: dict[str, Any], buffers: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        c.request("train", body, buffers)
    return err.value


def test_bad_train_requests_are_refused_and_the_daemon_serves_on(train_daemon: DaemonProcess, trained: dict) -> None:
    pics = [p.tobytes() for p in PICTURES[:3]]
    descs = [ImageDesc(i + 1, 80, 80, 3).to_wire() for i in range(3)]
    good = {"images": descs, "token": "sks", "class_noun": "ball", "name": "fresh", "resolution": 64}
    mask = np.zeros((80, 80), np.uint8)
    cases: list[tuple[dict[str, Any], list[bytes], str, str, str]] = [
        ({**good, "images": descs[:2]}, pics[:2], "bad_value", "images", "3 to 30"),
        ({k: v for k, v in good.items() if k != "images"}, [], "missing_field", "images", "images"),
        ({**good, "images": "x"}, pics, "bad_field_type", "images", "list"),
        ({**good, "images": [*descs[:2], ImageDesc(3, 80, 80, 2).to_wire()]}, pics, "bad_value", "images[2].channels", "3, 4"),
        ({**good, "images": [*descs[:2], ImageDesc(3, 81, 80, 3).to_wire()]}, pics, "bad_image", "images[2]", "needs"),
        ({**good, "masks": [None]}, pics, "bad_value", "masks", "one per image"),
        ({**good, "masks": [None, None, ImageDesc(4, 40, 40, 1).to_wire()]}, [*pics, bytes(1600)], "size_mismatch",
         "masks[2]", "same size"),
        ({**good, "masks": [None, None, ImageDesc(4, 80, 80, 1).to_wire()]}, [*pics, mask.tobytes()], "empty_mask",
         "masks[2]", "selects nothing"),
        ({**good, "token": ""}, pics, "bad_value", "token", "one word"),
        ({**good, "token": "s k s"}, pics, "bad_value", "token", "one word"),
        ({k: v for k, v in good.items() if k != "token"}, pics, "missing_field", "token", "token"),
        ({**good, "class_noun": " "}, pics, "bad_value", "class_noun", "empty"),
        ({**good, "name": "../evil"}, pics, "bad_value", "name", "letters"),
        ({**good, "name": "ball"}, pics, "bad_value", "name", "already in"),
        ({**good, "steps": 0}, pics, "bad_value", "steps", "allowed range"),
        ({**good, "steps": 1.5}, pics, "bad_field_type", "steps", "int"),
        ({**good, "rank": 1000}, pics, "bad_value", "rank", "allowed range"),
        ({**good, "learning_rate": "fast"}, pics, "bad_field_type", "learning_rate", "float"),
        ({**good, "learning_rate": 0}, pics, "bad_value", "learning_rate", "allowed range"),
        ({**good, "resolution": 100}, pics, "bad_value", "resolution", "multiple of 64"),
        ({**good, "prior_images": -1}, pics, "bad_value", "prior_images", "allowed range"),
        ({**good, "checkpoint_every": -1}, pics, "bad_value", "checkpoint_every", "allowed range"),
        ({**good, "model": "opencv-telea"}, pics, "bad_value", "model", "SD 1.x or SDXL"),
        ({**good, "model": "nope"}, pics, "unknown_model", "model", "unknown model"),
    ]
    with train_daemon.client() as c:
        for body, buffers, code, field, says in cases:
            err = _raw(c, body, buffers)
            assert err.code == code and err.details.get("field") == field and says in err.message, (body, err)
        assert inpaint(c).shape == (H, W, 4)
        assert not c.status()["running"]


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    work = tmp_path / "resume"
    args = ("--model", str(tiny_model_dir), "--device", "cpu")
    d = start_daemon(work, *args)
    try:
        with d.client() as c:
            job = train(c, "resumed", steps=40, checkpoint_every=5, seed=4)
            wait_for_step(c, job, 12)
            d.proc.kill()  # SIGKILL: no shutdown, no last words
            d.proc.wait()
    finally:
        d.stop()
    (checkpoint,) = (work / "data" / "training" / "runs").glob("*/checkpoint.pt")
    saved = int(torch.load(checkpoint, weights_only=True)["step"])
    assert saved >= 10 and saved % 5 == 0
    d = start_daemon(work, *args)
    try:
        with d.client() as c:
            rec = Recorder()
            job = c.wait(train(c, "resumed", steps=40, checkpoint_every=5, seed=4), 300, on_event=rec)
            job.raise_for_error()
    finally:
        d.stop()
    steps = [b["step"] for b in rec.training()]
    print(f"\n[training] killed after step >= 12; checkpoint at step {saved}; the resubmitted job ran steps "
          f"{steps[0]}..{steps[-1]}")
    assert steps == list(range(saved + 1, 41))  # no step before the checkpoint again
    assert job.result["notes"] == [f"resumed from the checkpoint at step {saved}"]
    assert not checkpoint.exists()  # a finished training forgets its checkpoints


def test_the_cli_trains_from_a_folder_and_says_where_the_lora_went(train_daemon: DaemonProcess, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from PIL import Image

    for i, picture in enumerate(PICTURES[:3]):
        Image.fromarray(picture).save(tmp_path / f"ball{i}.png")
    Image.fromarray(np.where(PICTURES[0][:, :, 0] > 100, 255, 0).astype(np.uint8)).save(tmp_path / "ball0.mask.png")
    proc = subprocess.run(
        [sys.executable, "-m", "inpaintd", "train", "--images", str(tmp_path), "--token", "sks", "--class", "ball",
         "--out", "from_cli", "--steps", "3", "--resolution", "64", "--lr", "1e-3"],
        env={**os.environ, **train_daemon.env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA 'from_cli' written to" in proc.stdout and "from_cli.safetensors" in proc.stdout, proc.stdout
    assert "3 pictures" in proc.stderr
