"""inpaintd's denoising loop against diffusers' stock inpaint pipelines, and its step pacer.

The loop must be a faster way to the *same* pictures: on the CPU (float32) it has to give
the stock pipeline's pixels for the same seeds, for every layout (SD 9-channel and
4-channel, SDXL), strengths below 1 (the image is encoded too), guidance off, and
schedulers that draw noise inside `step` (Euler ancestral).  And it must encode each
image once per job, where the stock pipeline encodes it once per variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from inpaintd.engines.diffusers_engine import DiffusersEngine  # noqa: E402
from inpaintd.engines.pacing import StepPacer  # noqa: E402
from inpaintd.engines.sd_inpaint import Inputs  # noqa: E402
from inpaintd.testmodel import TEST_NATIVE_SIZE, make_test_model  # noqa: E402

SIZE = TEST_NATIVE_SIZE


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, DiffusersEngine]:
    root = tmp_path_factory.mktemp("sd-inpaint-layouts")
    built = {
        "sd9": DiffusersEngine(tiny_model_dir, device="cpu"),
        "sd4": DiffusersEngine(make_test_model(root / "sd4", unet_in_channels=4), device="cpu"),
        "xl9": DiffusersEngine(make_test_model(root / "xl9", sdxl=True), device="cpu"),
        "xl4": DiffusersEngine(make_test_model(root / "xl4", sdxl=True, unet_in_channels=4), device="cpu"),
    }
    yield built
    for engine in built.values():
        engine.close()


def inputs(engine: DiffusersEngine, seeds: list[int], *, steps: int = 3, guidance: float = 7.5,
           strength: float = 1.0, height: int = SIZE, width: int = SIZE) -> Inputs:
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    mask[height // 4 - 8: height // 4, :] = 127  # soft edge just under the pipeline's 0.5 threshold
    mask[3 * height // 4: 3 * height // 4 + 8, :] = 128  # and just over it
    return Inputs(
        image=image, mask=mask, embeddings=engine._prompt_embeds("a red brick wall", "blurry"),
        generators=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        steps=steps, guidance_scale=guidance, strength=strength,
    )


def stock(engine: DiffusersEngine, job: Inputs) -> np.ndarray:
    """The stock pipeline called the way inpaintd called it before its own loop: the image
    repeated per variant so that each variant's VAE sample uses its own generator."""
    from PIL import Image

    pipe, emb, n = engine.pipe, job.embeddings, len(job.generators)
    height, width = job.mask.shape
    kwargs: dict[str, Any] = {"prompt_embeds": emb.positive, "negative_prompt_embeds": emb.negative}
    if engine.family.dual_text_encoder:
        kwargs.update(pooled_prompt_embeds=emb.pooled, negative_pooled_prompt_embeds=emb.negative_pooled)
    with torch.inference_mode():
        images = pipe(
            image=[Image.fromarray(job.image, "RGB")] * n, mask_image=[Image.fromarray(job.mask, "L")] * n,
            height=height, width=width, num_inference_steps=job.steps, guidance_scale=job.guidance_scale,
            strength=job.strength, num_images_per_prompt=n, generator=job.generators, output_type="np", **kwargs,
        ).images
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def fresh(job: Inputs, seeds: list[int]) -> Inputs:
    """The same job with new generators: a generator is consumed by a run."""
    return Inputs(**{**job.__dict__, "generators": [torch.Generator("cpu").manual_seed(s) for s in seeds]})


CASES = [
    # (layout, scheduler, strength, guidance, seeds)
    ("sd9", "default", 1.0, 7.5, [1, 2, 3]),
    ("sd9", "default", 0.6, 7.5, [4, 5]),
    ("sd9", "ddim", 1.0, 1.0, [6]),
    ("sd9", "euler_a", 1.0, 7.5, [7, 8]),
    ("sd9", "dpmpp_2m", 0.75, 5.0, [9, 10]),
    ("sd9", "euler", 1.0, 7.5, [11]),
    ("sd4", "default", 1.0, 7.5, [12, 13]),
    ("sd4", "euler", 0.7, 7.5, [14, 15]),
    ("xl9", "default", 1.0, 7.5, [16, 17]),
    ("xl9", "euler_a", 0.8, 7.5, [18]),
    ("xl4", "default", 0.9, 7.5, [19, 20]),
]


@pytest.mark.parametrize("layout,scheduler,strength,guidance,seeds", CASES, ids=lambda v: str(v))
def test_same_pixels_as_the_stock_pipeline(
    engines: dict[str, DiffusersEngine], layout: str, scheduler: str, strength: float, guidance: float, seeds: list[int]
) -> None:
    engine = engines[layout]
    engine.pipe.scheduler = engine._scheduler(scheduler)
    job = inputs(engine, seeds, strength=strength, guidance=guidance, steps=4)
    ours = engine._loop(fresh(job, seeds))
    theirs = stock(engine, fresh(job, seeds))
    assert ours.shape == theirs.shape == (len(seeds), SIZE, SIZE, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    # float32 on the same CPU: equal, but allow one level where a batch's summation
    # order differs (the stock pipeline encodes per variant, this loop once).
    assert diff.max() <= 1, f"max difference {diff.max()}, {np.count_nonzero(diff)} pixel channels differ"
    assert np.count_nonzero(diff) <= diff.size // 1000


def test_non_square_and_batch_independent(engines: dict[str, DiffusersEngine]) -> None:
    engine = engines["sd9"]
    engine.pipe.scheduler = engine._scheduler("default")
    job = inputs(engine, [3, 4], height=64, width=128)
    both = engine._loop(fresh(job, [3, 4]))
    alone = engine._loop(fresh(job, [4]))
    assert both.shape == (2, 64, 128, 3)
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 1  # a seed is a seed, batched or not


@pytest.mark.parametrize("strength,per_job", [(1.0, 1), (0.6, 2)])
def test_each_image_is_encoded_once_per_job_not_per_variant(
    engines: dict[str, DiffusersEngine], monkeypatch: pytest.MonkeyPatch, strength: float, per_job: int
) -> None:
    engine = engines["sd9"]
    engine.pipe.scheduler = engine._scheduler("default")
    vae = engine.pipe.vae
    calls: list[int] = []
    original = vae.encode

    def counting(x: Any, *a: Any, **k: Any) -> Any:
        calls.append(int(x.shape[0]))
        return original(x, *a, **k)

    monkeypatch.setattr(vae, "encode", counting)
    seeds = [1, 2, 3, 4]
    engine._loop(fresh(inputs(engine, seeds, strength=strength), seeds))
    ours = list(calls)
    calls.clear()
    stock(engine, fresh(inputs(engine, seeds, strength=strength), seeds))
    # masked image (+ the image itself below strength 1): once each, batch 1
    assert ours == [1] * per_job
    assert calls == [1] * (per_job * len(seeds))  # the stock pipeline, for comparison


def test_steps_reported_in_order_and_schedule_length(engines: dict[str, DiffusersEngine]) -> None:
    engine = engines["sd9"]
    engine.pipe.scheduler = engine._scheduler("ddim")
    seen: list[tuple[int, int]] = []
    engine._loop(inputs(engine, [1], steps=10, strength=0.5), on_step=lambda i, total: seen.append((i, total)))
    assert seen == [(i, 5) for i in range(5)]
    assert engine.pipe.num_timesteps == 5


# -- the step pacer, with stand-in device events ----------------------------------------------


class FakeEvent:
    """A device event whose completion the test controls through a shared clock."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self.index = -1

    def record(self) -> None:
        self.index = self.device.launched
        self.device.launched += 1

    def query(self) -> bool:
        return self.index < self.device.done

    def synchronize(self) -> None:
        self.device.waits += 1
        self.device.done = max(self.device.done, self.index + 1)


class FakeDevice:
    def __init__(self) -> None:
        self.launched = 0  # events recorded
        self.done = 0  # events the "GPU" has passed
        self.waits = 0


def test_pacer_reports_only_finished_steps_and_bounds_the_lead() -> None:
    dev = FakeDevice()
    seen: list[int] = []
    pacer = StepPacer(lambda step, total: seen.append(step), make_event=lambda: FakeEvent(dev), lead=2)
    pacer.launched(0, 6)
    pacer.launched(1, 6)
    assert seen == [] and dev.waits == 0  # the GPU has finished nothing yet: nothing reported, no wait
    dev.done = 1
    pacer.launched(2, 6)
    assert seen == [0] and dev.waits == 0  # step 0 done: reported by polling
    pacer.launched(3, 6)
    assert seen == [0, 1] and dev.waits == 1  # three pending > lead 2: waited for the oldest only
    dev.done = 4
    pacer.launched(4, 6)
    assert seen == [0, 1, 2, 3] and dev.waits == 1
    pacer.launched(5, 6)
    pacer.drain()
    assert seen == [0, 1, 2, 3, 4, 5] and pacer.pending == 0


def test_pacer_on_cpu_reports_at_once() -> None:
    seen: list[tuple[int, int]] = []
    pacer = StepPacer.for_device("cpu", lambda step, total: seen.append((step, total)))
    pacer.launched(0, 2)
    assert seen == [(0, 2)]
    pacer.launched(1, 2)
    pacer.drain()
    assert seen == [(0, 2), (1, 2)]


def test_pacer_stops_at_a_cancel_raised_by_the_report() -> None:
    dev = FakeDevice()

    class Cancelled(Exception):
        pass

    def report(step: int, total: int) -> None:
        if step == 1:
            raise Cancelled()

    pacer = StepPacer(report, make_event=lambda: FakeEvent(dev), lead=1)
    pacer.launched(0, 5)
    pacer.launched(1, 5)  # waits for step 0 (lead 1), reports it
    with pytest.raises(Cancelled):
        pacer.launched(2, 5)  # waits for step 1, whose report cancels
    with pytest.raises(ValueError):
        StepPacer(report, lead=0)


def test_cuda_graph_mode_runs_the_same_loop(engines: dict[str, DiffusersEngine]) -> None:
    # The CUDA-graph precautions (mark a new step, copy an un-guided UNet output that a
    # multistep scheduler keeps) must not change the arithmetic; here they run on the CPU.
    from inpaintd.engines.sd_inpaint import InpaintLoop

    engine = engines["sd9"]
    engine.pipe.scheduler = engine._scheduler("dpmpp_2m")
    job = inputs(engine, [5, 6], guidance=1.0)
    plain = engine._loop(fresh(job, [5, 6]))
    graphs = InpaintLoop(engine.pipe, "cpu", dual_text_encoder=False, cuda_graphs=True)(fresh(job, [5, 6]))
    assert np.array_equal(plain, graphs)
