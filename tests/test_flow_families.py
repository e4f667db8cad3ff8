"""SD 3.5, FLUX.1 Fill and Kontext, FLUX.2 klein, Qwen-Image-Edit, Z-Image and Chroma end to end, on tiny random
pipelines built offline (#11).

One daemon per family, over a real socket: the `models` reply names the family, pixels
outside the grown and feathered mask come back bit-identical, a seed means the same pixels,
every denoising step is reported, a cancel stops the job within a step, and reference images
reach the families that take them (and are refused by the others).  Plus what the engine and
the registry do with these folders in-process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torch")

from daemons import DaemonProcess, start_daemon  # noqa: E402

from inpaintd.engines.base import EngineError, EngineRequest, JobCancelled  # noqa: E402
from inpaintd.families import family as family_row  # noqa: E402
from inpaintd.masks import prepare_mask  # noqa: E402
from inpaintd.models import ModelRegistry  # noqa: E402
from inpaintd.testmodel import (  # noqa: E402
    TEST_NATIVE_SIZE,
    install_in_hub_cache,
    make_family_test_model,
    make_sd3_test_model,
)
from inpaintd_protocol.client import Client, Job  # noqa: E402
from inpaintd_protocol.messages import CancelCode, JobOptions, ProtocolError  # noqa: E402

FAMILIES = ("sd3", "flux-fill", "flux-kontext", "flux2-klein", "qwen-edit", "z-image", "chroma")
W, H = 96, 80
GROW, FEATHER = 8, 16  # the option defaults


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-models")
    return {family: make_family_test_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def flow_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, flow_models: dict[str, Path]
) -> Iterator[tuple[str, DaemonProcess]]:
    family = request.param
    d = start_daemon(tmp_path_factory.mktemp(f"{family}-daemon"), "--model", str(flow_models[family]), "--device", "cpu")
    yield family, d
    d.stop()


def photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 17.0), 128 + 90 * np.cos((x + y) / 21.0), 100 + 80 * np.sin(y / 13.0)], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def hole() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[28:52, 36:60] = 255
    return mask


def submit(c: Client, image: np.ndarray, mask: np.ndarray, references: tuple[np.ndarray, ...] = (), **options) -> Job:
    h, w, ch = image.shape
    refs = [(r.tobytes(), r.shape[1], r.shape[0], r.shape[2]) for r in references]
    return c.submit(image.tobytes(), w, h, ch, mask.tobytes(), JobOptions(**options), references=refs)


def layer_array(layer) -> np.ndarray:
    return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4)


def assert_outside_identical(image: np.ndarray, mask: np.ndarray, layer) -> None:
    arr = layer_array(layer)
    h, w = arr.shape[:2]
    prepared = prepare_mask(mask, GROW, FEATHER)
    assert prepared is not None
    local, box = prepared
    grown = np.zeros_like(mask)
    grown[box.slices()] = local
    region = grown[layer.y : layer.y + h, layer.x : layer.x + w]
    src = image[layer.y : layer.y + h, layer.x : layer.x + w]
    src = np.concatenate([src, np.full((h, w, 1), 255, np.uint8)], -1)
    outside, inside = region == 0, region == 255
    assert outside.any() and np.array_equal(arr[outside], src[outside])
    assert inside.any() and not np.array_equal(arr[inside], src[inside])


# -- through the daemon ------------------------------------------------------------------


def test_models_reply_names_the_family(flow_daemon: tuple[str, DaemonProcess]) -> None:
    family, d = flow_daemon
    with d.client() as c:
        hello = c.hello()
        models = {m["id"]: m for m in c.models()}
    loaded = models[hello["loaded_model"]]
    assert loaded["family"] == family and loaded["available"] and loaded["native_size"] == TEST_NATIVE_SIZE
    assert loaded["engine"] == "diffusers" and loaded["kind"] == "folder"


@pytest.mark.slow
def test_job_keeps_outside_pixels_and_reports_every_step(flow_daemon: tuple[str, DaemonProcess]) -> None:
    family, d = flow_daemon
    image, mask = photo(), hole()
    steps_seen: list[tuple[int, int]] = []

    def on_event(job: Job, m) -> None:
        if m.body.get("stage") == "denoising":
            steps_seen.append((m.body["step"], m.body["total_steps"]))

    with d.client() as c:
        job = submit(c, image, mask, steps=5, variants=2, seed=42, prompt="a red apple", negative_prompt="blurry")
        c.wait(job, timeout=120, on_event=on_event).raise_for_error()
    assert job.result["engine"] == "diffusers"
    assert [layer.seed for layer in job.layers] == [42, 43]
    # one event per step of each variant (one pipeline call per seed), in order
    assert steps_seen == [(i, 10) for i in range(1, 11)]
    for layer in job.layers:
        assert_outside_identical(image, mask, layer)
    a, b = (layer_array(layer) for layer in job.layers)
    assert not np.array_equal(a, b), "variants of one job must differ"
    if not family_row(family).negative_prompt:  # guidance-distilled: the negative prompt is dropped, and said so
        assert any("negative prompt" in n for n in job.result.get("notes", [])), job.result


@pytest.mark.slow
def test_a_seed_means_the_same_pixels(flow_daemon: tuple[str, DaemonProcess]) -> None:
    _, d = flow_daemon
    image, mask = photo(1), hole()
    with d.client() as c:
        runs = [c.wait(submit(c, image, mask, steps=3, seed=s, variants=n), timeout=120).raise_for_error()
                for s, n in ((5, 1), (5, 1), (6, 1), (4, 2))]
    first, again, other, pair = runs
    assert np.array_equal(layer_array(first.layers[0]), layer_array(again.layers[0]))
    assert not np.array_equal(layer_array(first.layers[0]), layer_array(other.layers[0]))
    # variant 2 of a job with seed 4 is seed 5's picture (PROTOCOL.md 9.7)
    assert np.array_equal(layer_array(pair.layers[1]), layer_array(first.layers[0]))


@pytest.mark.slow
def test_cancel_stops_within_a_step(flow_daemon: tuple[str, DaemonProcess]) -> None:
    _, d = flow_daemon
    image, mask = photo(), hole()
    with d.client() as c:
        job = submit(c, image, mask, steps=150, variants=2)
        while not (job.stage == "denoising" and job.step >= 2):
            c.pump(0.05)
            assert not job.finished, job.error
        reply = c.cancel(job)
        assert reply["state"] == "cancelling"
        step_at_cancel = job.step
        c.wait(job, timeout=30)
        assert job.state == "cancelled" and job.cancel_code == CancelCode.RUNNING
        # What the client saw may lag the daemon by the events already on their way (a tiny
        # model's step takes milliseconds); the daemon says how many steps ran after the
        # cancel reached the job: the one under way at most.
        assert job.step < step_at_cancel + 40 < 2 * 150
        found = re.findall(rf"job {job.id} cancelled after .*; (\d+) step\(s\) ran after the cancel", d.log())
        assert found and int(found[-1]) <= 1, (found, d.log()[-2000:])
        nxt = c.wait(submit(c, image, mask, steps=2), timeout=60)
        assert nxt.state == "done"


def test_reference_images_reach_the_families_that_take_them(flow_daemon: tuple[str, DaemonProcess]) -> None:
    """Kontext and klein condition on a reference (`image_reference`): it changes the pixels
    inside the mask, never outside, and the same job without one gives the very pixels it
    gave before (nothing of the reference stays behind).  The other families refuse one."""
    family, d = flow_daemon
    image, mask = photo(2), hole()
    reference = photo(7)[:48, :40].copy()  # any size: the loop scales and rounds it
    with d.client() as c:
        if not family_row(family).reference_image:
            with pytest.raises(ProtocolError) as err:
                submit(c, image, mask, references=(reference,), steps=2)
            assert "reference" in str(err.value)
            return
        runs = [c.wait(submit(c, image, mask, references=refs, steps=3, seed=9), timeout=120).raise_for_error()
                for refs in ((), (reference,), ())]
    before, with_reference, after = (layer_array(job.layers[0]) for job in runs)
    assert not np.array_equal(before, with_reference)
    assert np.array_equal(before, after)
    assert_outside_identical(image, mask, runs[1].layers[0])


@pytest.mark.slow
def test_new_families_stay_warm_together_and_the_least_recently_used_goes(
    tmp_path_factory: pytest.TempPathFactory, flow_models: dict[str, Path]
) -> None:
    """One daemon, SD 3, FLUX.1 Fill and FLUX.2 klein, `--warm-models 2`: alternating SD 3 and
    FLUX jobs load each once; klein then closes SD 3, the least recently used.  Under a
    memory budget smaller than two of them (`--memory-budget-gb`), each load closes the other."""
    sd3, fill, klein = (str(flow_models[f]) for f in ("sd3", "flux-fill", "flux2-klein"))
    image, mask = photo(), hole()

    def run(c: Client, model: str) -> None:
        job = c.wait(submit(c, image, mask, model=model, steps=2, seed=1, grow=GROW, feather=FEATHER), timeout=120)
        job.raise_for_error()
        assert_outside_identical(image, mask, job.layers[0])

    def warm(c: Client) -> dict[str, int]:
        return {w["model"]: w["loads"] for w in c.status()["warm_models"]}

    d = start_daemon(tmp_path_factory.mktemp("warm-two"), "--model", sd3, "--extra-model", fill, "--extra-model", klein,
                     "--warm-models", "2", "--device", "cpu")
    try:
        with d.client() as c:
            for model in (sd3, fill, sd3, fill):
                run(c, model)
            assert warm(c) == {sd3: 1, fill: 1}
            run(c, klein)
            assert warm(c) == {klein: 1, fill: 1}
            run(c, sd3)  # fill is the least recently used now
            assert warm(c) == {sd3: 2, klein: 1}
    finally:
        d.stop()
    sizes = [ModelRegistry([m], device="cpu").get(m).memory["bytes"]["fp32"] for m in (sd3, fill)]
    budget = max(sizes) * 1.5 / (1 << 30)  # the weights of one fit, not of both
    d = start_daemon(tmp_path_factory.mktemp("warm-budget"), "--model", sd3, "--extra-model", fill, "--warm-models", "2",
                     "--memory-budget-gb", f"{budget:.6f}", "--device", "cpu")
    try:
        with d.client() as c:
            for model in (sd3, fill, sd3):
                run(c, model)
            assert warm(c) == {sd3: 2}
    finally:
        d.stop()


def test_a_unet_scheduler_is_refused_by_name(flow_daemon: tuple[str, DaemonProcess]) -> None:
    _, d = flow_daemon
    with d.client() as c:
        job = c.wait(submit(c, photo(), hole(), steps=2, scheduler="ddim"), timeout=60)
    assert job.state == "failed" and "ddim" in str(job.error) and "euler" in str(job.error)


# -- in-process ----------------------------------------------------------------------------


def _request(**overrides) -> EngineRequest:
    size = TEST_NATIVE_SIZE
    image = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    fields = dict(image=image, mask=mask, prompt="a cat", negative_prompt="", seeds=[1], steps=10,
                  guidance_scale=4.0, strength=0.3, scheduler="euler")
    fields.update(overrides)
    return EngineRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.slow
def test_sd3_without_t5_and_exact_step_counts(tmp_path: Path) -> None:
    """An SD 3 folder without its T5 encoder (people skip the 9.5 GB) loads and runs; below
    strength 1 exactly int(steps x strength) steps run (10 x 0.3 is 3.0000000000000004)."""
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    folder = make_sd3_test_model(tmp_path / "sd3-no-t5", with_t5=False)
    engine = DiffusersEngine(folder, device="cpu")
    try:
        assert engine.pipe.text_encoder_3 is None and engine.caps.family == "sd3"
        assert engine.caps.size_multiple == 16 and engine.caps.default_steps == 28
        seen: list[tuple[int, int]] = []
        out = engine.generate(_request(), lambda stage, step, total: stage == "denoising" and seen.append((step, total)),
                              lambda: False)
        assert len(out.images) == 1 and out.images[0].shape == (TEST_NATIVE_SIZE, TEST_NATIVE_SIZE, 3)
        assert seen == [(1, 3), (2, 3), (3, 3)]
        with pytest.raises(EngineError, match="multiple of 16"):
            engine.generate(_request(image=np.zeros((56, 64, 3), np.uint8), mask=np.zeros((56, 64), np.uint8)),
                            lambda *a: None, lambda: False)
        with pytest.raises(JobCancelled):  # raised from the step callback, out of the stock pipeline
            engine.generate(_request(strength=1.0), lambda *a: None, lambda: seen.append((0, 0)) or len(seen) > 6)
    finally:
        engine.close()


@pytest.mark.slow
def test_drop_t5_leaves_sd3s_t5_out_and_says_what_it_costs(flow_models: dict[str, Path]) -> None:
    """`serve --drop-t5`: SD 3 loads without its T5 (the pixels then differ: the tiny T5 is
    part of the prompt), the notices say what prompts lose, the memory estimate leaves its
    weights out; FLUX keeps its T5, which its prompt needs."""
    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.models import ModelRegistry

    folder = str(flow_models["sd3"])
    with_t5 = DiffusersEngine(folder, device="cpu")
    try:
        assert with_t5.pipe.text_encoder_3 is not None
        want = with_t5.generate(_request(strength=1.0, steps=3), lambda *a: None, lambda: False).images[0]
    finally:
        with_t5.close()
    dropped = DiffusersEngine(folder, device="cpu", drop_t5=True)
    try:
        assert dropped.pipe.text_encoder_3 is None and dropped.pipe.tokenizer_3 is None
        assert any("without text_encoder_3 (--drop-t5): prompts are read by the two CLIP encoders alone" in n
                   for n in dropped.speed_notes), dropped.speed_notes
        got = dropped.generate(_request(strength=1.0, steps=3), lambda *a: None, lambda: False).images[0]
        assert not np.array_equal(got, want)
    finally:
        dropped.close()
    flux = DiffusersEngine(flow_models["flux-fill"], device="cpu", drop_t5=True)
    try:
        assert flux.pipe.text_encoder_2 is not None and not any("--drop-t5" in n for n in flux.speed_notes)
    finally:
        flux.close()
    full, lean = (ModelRegistry([folder], device="cpu", drop_t5=drop).get(folder).memory for drop in (False, True))
    assert "text_encoder_3" in full["components"] and "text_encoder_3" not in lean["components"]
    assert lean["parameters"] == full["parameters"] - full["components"]["text_encoder_3"]


@pytest.mark.parametrize(
    ("repo", "family", "steps"),
    [
        ("black-forest-labs/FLUX.1-Fill-dev", "flux-fill", 50),
        ("black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext", 28),
        ("black-forest-labs/FLUX.2-klein-4B", "flux2-klein", 4),
        ("Qwen/Qwen-Image-Edit", "qwen-edit", 50),
        ("Tongyi-MAI/Z-Image-Turbo", "z-image", 8),
        ("lodestones/Chroma1-HD", "chroma", 40),
    ],
)
def test_a_cached_snapshot_is_listed_with_its_family(tmp_path: Path, flow_models: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      repo: str, family: str, steps: int) -> None:
    from inpaintd.models import ModelRegistry

    install_in_hub_cache(flow_models[family], tmp_path / "hub", repo)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    registry = ModelRegistry([repo], default=repo)
    info = registry.get(repo)
    assert info.available and info.family == family and info.kind == "hub"
    caps = registry.caps(repo)
    assert caps.size_multiple == 16 and caps.native_size == TEST_NATIVE_SIZE and caps.default_steps == steps


def test_kontext_keeps_the_size_it_is_given(flow_models: dict[str, Path]) -> None:
    """Kontext's pipeline snaps its input to one of its preferred resolutions (about a
    megapixel) unless told not to; the runner's size must be the one that comes back."""
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(flow_models["flux-kontext"], device="cpu")
    try:
        assert engine.caps.family == "flux-kontext" and engine.caps.default_guidance == 2.5
        image = np.random.default_rng(4).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        mask = np.zeros((48, 80), np.uint8)
        mask[8:40, 16:64] = 255
        seen: list[tuple[int, int]] = []
        out = engine.generate(_request(image=image, mask=mask, steps=4, strength=1.0, guidance_scale=2.5),
                              lambda stage, step, total: stage == "denoising" and seen.append((step, total)),
                              lambda: False)
        assert [i.shape for i in out.images] == [(48, 80, 3)]
        assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    finally:
        engine.close()


def _engine_pixels(engine: Any, image: np.ndarray, mask: np.ndarray, negative: str, guidance: float) -> np.ndarray:
    """The engine's first variant for a 3-step job on `image` with this negative prompt and guidance."""
    out = engine.generate(_request(image=image, mask=mask, steps=3, strength=1.0, guidance_scale=guidance,
                                   negative_prompt=negative), lambda *a: None, lambda: False)
    assert not out.notes and out.images[0].shape == image.shape
    return out.images[0]


def _assert_the_negative_prompt_counts_only_when_guided(engine: Any, image: np.ndarray, mask: np.ndarray, *,
                                                       off: float, on: float) -> None:
    """At guidance `off` the negative prompt changes nothing; at `on` it changes the pixels, and
    so does guiding at all."""
    unguided = _engine_pixels(engine, image, mask, "", off)
    assert np.array_equal(unguided, _engine_pixels(engine, image, mask, "blurry", off))
    guided_plain, guided_negative = _engine_pixels(engine, image, mask, "", on), _engine_pixels(engine, image, mask, "blurry", on)
    assert not np.array_equal(guided_plain, guided_negative) and not np.array_equal(unguided, guided_plain)


def _assert_the_loop_paints_the_pipelines_pixels(engine: Any, image: np.ndarray, mask: np.ndarray,
                                                 cases: tuple[tuple[float, str | None], ...]) -> None:
    """The loop (its prompt handling and its own decoding) gives the stock pipeline's pixels,
    within a level, for each (guidance, negative prompt)."""
    import torch
    from PIL import Image

    from inpaintd.engines.flow_inpaint import FlowInputs

    h, w = mask.shape
    for guidance, negative in cases:
        emb = engine._flow.encode("a cat", negative or "")
        ours = engine._flow(FlowInputs(image=image, mask=mask, prompt=emb, generators=[torch.Generator().manual_seed(9)],
                                       steps=3, guidance_scale=guidance, strength=1.0), pacer=None)[0]
        given = {"negative_prompt": negative} if negative is not None else {}  # klein's pipeline takes none
        with torch.inference_mode():
            theirs = engine.pipe(image=Image.fromarray(image), mask_image=Image.fromarray(mask, mode="L"), prompt="a cat",
                                 height=h, width=w, strength=1.0, num_inference_steps=3, guidance_scale=guidance,
                                 generator=[torch.Generator().manual_seed(9)], output_type="np", return_dict=False,
                                 **given)[0][0]
        assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1, guidance


@pytest.mark.slow
def test_klein_guidance_negative_prompt_and_decoding(flow_models: dict[str, Path]) -> None:
    """FLUX.2 klein through the loop: no pooled embedding; a Base checkpoint (not distilled)
    runs classifier-free guidance with the negative prompt, which changes the pixels; and the
    loop's own decoding gives the pipeline's own pixels (FLUX.2's VAE has no scale or shift:
    the pipeline hands back latents with its batch norm undone)."""

    from inpaintd.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(flow_models["flux2-klein"], device="cpu")
    try:
        pipe = engine.pipe
        assert engine.caps.family == "flux2-klein" and engine.caps.default_steps == 4 and pipe.config.is_distilled
        image = np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        mask = np.zeros((48, 80), np.uint8)
        mask[8:40, 16:64] = 255

        def run(negative: str, guidance: float) -> np.ndarray:
            return _engine_pixels(engine, image, mask, negative, guidance)

        # distilled (the 4B): guidance and the negative prompt change nothing
        assert np.array_equal(run("", 1.0), run("blurry", 4.0))
        pipe.register_to_config(is_distilled=False)  # a Base checkpoint
        assert not np.array_equal(run("", 4.0), run("blurry", 4.0))

        emb = engine._flow.encode("a cat", "")
        assert emb.pooled is None and emb.negative is not None
        _assert_the_loop_paints_the_pipelines_pixels(engine, image, mask, ((4.0, None),))
    finally:
        engine.close()


@pytest.mark.slow
def test_z_image_prompt_lists_guidance_and_decoding(flow_models: dict[str, Path]) -> None:
    """Z-Image through the loop: its `encode_prompt` gives lists (one variable-length tensor per
    prompt) and its `__call__` takes them, a variant per element, the negative list only when it
    guides; at Turbo's guidance 0 the negative prompt changes nothing, above 0 it does (the
    pipeline's CFG); and the loop's own decoding (FLUX.1's VAE: scale and shift) gives the
    pipeline's own pixels."""
    from PIL import Image

    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.engines.flow_inpaint import FlowInputs

    engine = DiffusersEngine(flow_models["z-image"], device="cpu")
    try:
        pipe = engine.pipe
        assert engine.caps.family == "z-image" and engine.caps.default_steps == 8 and engine.caps.default_guidance == 0.0
        assert pipe.vae.config.shift_factor and pipe.vae.config.scaling_factor != 1.0  # both matter in `_decode`
        image = np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        mask = np.zeros((48, 80), np.uint8)
        mask[8:40, 16:64] = 255

        emb = engine._flow.encode("a cat", "blurry")
        assert emb.pooled is None and emb.positive is not None and emb.negative is not None
        # the prompt's real tokens only (chat template included), tokens x the Qwen3 width
        assert emb.positive.ndim == 2 and emb.positive.shape[1] == pipe.transformer.config.cap_feat_dim
        assert emb.positive.shape[0] != emb.negative.shape[0]
        job = FlowInputs(image=image, mask=mask, prompt=emb, generators=[], steps=3, guidance_scale=0.0, strength=1.0)
        picture = Image.fromarray(image)
        plain = engine._flow._prompt_kwargs(job, picture, 2)
        assert set(plain) == {"prompt_embeds"} and plain["prompt_embeds"] == [emb.positive, emb.positive]
        job.guidance_scale = 4.0
        guided = engine._flow._prompt_kwargs(job, picture, 2)
        assert isinstance(guided["negative_prompt_embeds"], list) and len(guided["negative_prompt_embeds"]) == 2

        _assert_the_negative_prompt_counts_only_when_guided(engine, image, mask, off=0.0, on=4.0)
        _assert_the_loop_paints_the_pipelines_pixels(engine, image, mask, ((0.0, None), (4.0, "blurry")))
    finally:
        engine.close()


@pytest.mark.slow
def test_chroma_prompt_masks_guidance_and_decoding(flow_models: dict[str, Path]) -> None:
    """Chroma through the loop: its `encode_prompt` gives T5 embeddings padded to a fixed length
    with a mask of the real tokens and one padding token, and the loop hands both to its
    `__call__`, a row per variant, the negative side (with its mask) only where it guides (above
    1); at guidance 1 the negative prompt changes nothing, above 1 it does; the loop supplies the
    `guidance_embeds` the pipeline reads and the tiny config (diffusers' own) lacks; and its own
    decoding (packed latents, FLUX.1's VAE scale and shift) gives the pipeline's own pixels."""
    from PIL import Image

    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.engines.flow_inpaint import FlowInputs

    config = (flow_models["chroma"] / "transformer" / "config.json").read_text()
    assert "guidance_embeds" not in config
    engine = DiffusersEngine(flow_models["chroma"], device="cpu")
    try:
        pipe = engine.pipe
        assert engine.caps.family == "chroma" and engine.caps.default_steps == 40 and engine.caps.default_guidance == 3.0
        assert pipe.transformer.config.guidance_embeds is False and engine._flow.packed
        assert pipe.vae.config.shift_factor and pipe.vae.config.scaling_factor != 1.0  # both matter in `_decode`
        image = np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        mask = np.zeros((48, 80), np.uint8)
        mask[8:40, 16:64] = 255

        emb = engine._flow.encode("a cat", "blurry")
        assert emb.pooled is None and emb.positive is not None and emb.negative is not None
        assert emb.mask is not None and emb.negative_mask is not None
        assert emb.positive.shape[:2] == emb.mask.shape and emb.positive.shape[2] == pipe.transformer.config.joint_attention_dim
        real = int(pipe.tokenizer("a cat", return_tensors="pt").attention_mask.sum())
        assert emb.mask.tolist() == [[1.0] * (real + 1) + [0.0] * (emb.mask.shape[1] - real - 1)]
        assert int(emb.negative_mask.sum()) == int(pipe.tokenizer("blurry", return_tensors="pt").attention_mask.sum()) + 1
        job = FlowInputs(image=image, mask=mask, prompt=emb, generators=[], steps=3, guidance_scale=1.0, strength=1.0)
        picture = Image.fromarray(image)
        plain = engine._flow._prompt_kwargs(job, picture, 2)
        assert set(plain) == {"prompt_embeds", "prompt_attention_mask"} and plain["prompt_attention_mask"].shape[0] == 2
        job.guidance_scale = 3.0
        guided = engine._flow._prompt_kwargs(job, picture, 2)
        assert set(guided) == {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                               "negative_prompt_attention_mask"}
        assert guided["negative_prompt_embeds"].shape[0] == guided["negative_prompt_attention_mask"].shape[0] == 2

        _assert_the_negative_prompt_counts_only_when_guided(engine, image, mask, off=1.0, on=3.0)
        _assert_the_loop_paints_the_pipelines_pixels(engine, image, mask, ((1.0, None), (3.0, "blurry")))
    finally:
        engine.close()


@pytest.mark.slow
def test_klein_above_a_megapixel_comes_back_at_the_job_size(flow_models: dict[str, Path]) -> None:
    """FLUX.2 klein's pipeline scales any input above 1024^2 pixels down itself (1040x1024
    runs at 1024x1008), and the runner's sizes round to just above a megapixel often; the
    loop scales the output back (the row's max_pixels)."""
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(flow_models["flux2-klein"], device="cpu")
    try:
        image = np.random.default_rng(6).integers(0, 256, (1024, 1040, 3), dtype=np.uint8)
        mask = np.zeros((1024, 1040), np.uint8)
        mask[256:768, 256:768] = 255
        out = engine.generate(_request(image=image, mask=mask, steps=1, strength=1.0), lambda *a: None, lambda: False)
        assert [i.shape for i in out.images] == [(1024, 1040, 3)]
    finally:
        engine.close()


@pytest.mark.slow
def test_kontext_and_klein_hand_references_to_their_pipelines(flow_models: dict[str, Path]) -> None:
    """A job's references reach `image_reference` as the loop prepares them (RGB, sides rounded
    to 16): Kontext's output equals its own pipeline's given the same reference, and without
    one its pipeline's without; klein appends every reference (two give other pixels than one)."""
    import torch
    from PIL import Image

    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.engines.flow_inpaint import reference_picture

    image = np.random.default_rng(8).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    mask = np.zeros((48, 80), np.uint8)
    mask[8:40, 16:64] = 255
    first = np.random.default_rng(9).integers(0, 256, (40, 56, 3), dtype=np.uint8)  # runs at 32x48
    second = np.random.default_rng(10).integers(0, 256, (64, 64, 4), dtype=np.uint8)  # alpha dropped
    assert reference_picture(first).size == (48, 32) and reference_picture(second).mode == "RGB"

    def ours(engine: DiffusersEngine, *refs: np.ndarray) -> np.ndarray:
        out = engine.generate(_request(image=image, mask=mask, steps=3, strength=1.0, guidance_scale=2.5,
                                       references=list(refs)), lambda *a: None, lambda: False)
        assert not out.notes and out.images[0].shape == (48, 80, 3)
        return out.images[0]

    engine = DiffusersEngine(flow_models["flux-kontext"], device="cpu")
    try:
        def theirs(**extra) -> np.ndarray:
            with torch.inference_mode():
                pixels = engine.pipe(
                    image=Image.fromarray(image), mask_image=Image.fromarray(mask, mode="L"), prompt="a cat",
                    height=48, width=80, strength=1.0, num_inference_steps=3, guidance_scale=2.5,
                    generator=[torch.Generator().manual_seed(1)], output_type="np", return_dict=False,
                    _auto_resize=False, max_area=48 * 80, **extra,
                )[0][0]
            return np.round(pixels * 255).astype(int)

        plain, referenced = ours(engine), ours(engine, first)
        assert not np.array_equal(plain, referenced)
        assert np.abs(plain.astype(int) - theirs()).max() <= 1
        assert np.abs(referenced.astype(int) - theirs(image_reference=reference_picture(first))).max() <= 1
        assert engine._flow.reference_note(1) is None and "at most 1" in str(engine._flow.reference_note(2))
    finally:
        engine.close()

    engine = DiffusersEngine(flow_models["flux2-klein"], device="cpu")
    try:
        one, two = ours(engine, first), ours(engine, first, second)
        assert not np.array_equal(one, two) and not np.array_equal(one, ours(engine))
    finally:
        engine.close()


@pytest.mark.slow
def test_qwen_edit_through_the_loop(flow_models: dict[str, Path]) -> None:
    """Qwen-Image-Edit: the loop gives its pipeline's own pixels (prompt read with the picture
    by the Qwen2.5-VL encoder, true CFG with the negative prompt, packed latents, the 3D VAE's
    per-channel mean and std) at the runner's size, which the stock pipeline would replace by
    1024^2 pixels; the picture-dependent embeddings are reused only for the same pixels."""
    import sys

    import torch
    from PIL import Image

    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.engines.flow_inpaint import QwenVLProcessor, pinned_size

    engine = DiffusersEngine(flow_models["qwen-edit"], device="cpu")
    try:
        pipe = engine.pipe
        caps = engine.caps
        assert caps.family == "qwen-edit" and caps.default_steps == 50 and caps.default_guidance == 4.0
        assert caps.size_multiple == 16 and caps.native_size == TEST_NATIVE_SIZE
        assert isinstance(pipe.processor, QwenVLProcessor)  # saved without one (no torchvision here)
        sizing = sys.modules[type(pipe).__module__].calculate_dimensions
        assert sizing(1024 * 1024, 80 / 48)[:2] != (80, 48)  # the stock choice: about a megapixel
        with pinned_size(80, 48):
            assert sizing(1024 * 1024, 80 / 48)[:2] == (80, 48)

        encoded: list[str] = []
        encode = pipe.encode_prompt

        def counting(**kwargs):
            if kwargs.get("prompt") is not None:  # the pipeline's own pass-through of our embeddings is no encode
                encoded.append(kwargs["prompt"])
            return encode(**kwargs)

        pipe.encode_prompt = counting
        rng = np.random.default_rng(11)
        image, other = (rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(2))
        mask = np.zeros((48, 80), np.uint8)
        mask[8:40, 16:64] = 255

        def run(picture: np.ndarray, guidance: float = 4.0, seeds: tuple[int, ...] = (1,)) -> list[np.ndarray]:
            out = engine.generate(_request(image=picture, mask=mask, steps=3, strength=1.0, guidance_scale=guidance,
                                           negative_prompt="blurry", seeds=list(seeds)), lambda *a: None, lambda: False)
            assert not out.notes and all(i.shape == (48, 80, 3) for i in out.images)
            return out.images

        ours = run(image)[0]
        assert encoded == ["a cat", "blurry"]  # the negative side too: CFG at 4
        assert np.array_equal(run(image, seeds=(0, 1))[1], ours) and len(encoded) == 2  # same pixels: reused
        run(other)
        assert encoded[2:] == ["a cat", "blurry"]  # another picture: encoded again
        cache = engine._flow._vision_cache
        by_picture = [emb for (text, _), (emb, _mask) in cache.items() if text == "a cat"]
        assert len(by_picture) == 2 and not torch.equal(*by_picture)
        assert not np.array_equal(run(image, guidance=1.0)[0], ours)  # no CFG ...
        assert len(encoded) == 4  # ... and no negative to encode (the positive is cached)

        pipe.encode_prompt = encode
        with torch.inference_mode(), pinned_size(80, 48):
            theirs = pipe(image=Image.fromarray(image), mask_image=Image.fromarray(mask, mode="L"), prompt="a cat",
                          negative_prompt="blurry", true_cfg_scale=4.0, strength=1.0, num_inference_steps=3,
                          generator=[torch.Generator().manual_seed(1)], output_type="np", return_dict=False)[0][0]
        assert theirs.shape == (48, 80, 3)
        assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    finally:
        engine.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_vae_encodes_each_picture_once_per_job(flow_models: dict[str, Path], family: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine runs one pipeline call per variant, and the stock pipelines encode the
    picture (and the masked picture) in each; `encode_once` runs each distinct input once per
    job, and the pixels are those
    of encoding every time (only the sampling from the latent distribution uses each
    variant's generator, and that still happens per variant)."""
    from contextlib import contextmanager

    from inpaintd.engines import diffusers_engine
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(flow_models[family], device="cpu")
    try:
        request = _request(seeds=[1, 2, 3], steps=2, strength=1.0)
        once = engine.generate(request, lambda *a: None, lambda: False).images
        run, spared = engine.vae_encodes
        print(f"\n[vae] {family}: 3 variants, {run} encode(s) run, {spared} spared")
        assert run <= 2 and spared >= 2, (run, spared)

        @contextmanager
        def every_time(vae):  # the stock behaviour: no sharing
            yield [0, 0]

        monkeypatch.setattr(diffusers_engine, "encode_once", every_time)
        again = engine.generate(request, lambda *a: None, lambda: False).images
        assert len(once) == len(again) == 3
        assert all(np.array_equal(a, b) for a, b in zip(once, again, strict=True))
        assert not np.array_equal(once[0], once[1])  # each variant still its own
    finally:
        engine.close()
