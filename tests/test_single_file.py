"""Single-file checkpoints in the original Stable Diffusion (LDM) layout, loaded for real.

Most checkpoints users have are one `.safetensors` file with keys such as
`model.diffusion_model.input_blocks.0.0.weight`, which diffusers converts on load using the
configs of a reference repo.  The tiny pipeline is written in that layout
(`inpaintd.testmodel.save_single_file`) and loaded through `DiffusersEngine` with a config
folder and with the reference configs found in an offline hub cache.  Loaded weights must
equal the source pipeline's tensor for tensor (so the key mapping round-trips both ways) and
the same seeds must give the same pixels as the diffusers folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")

from engine_calls import Call, call, generate  # noqa: E402

from inpaintd.engines.base import EngineError  # noqa: E402
from inpaintd.engines.diffusers_engine import DiffusersEngine  # noqa: E402
from inpaintd.families import FAMILIES, Arch, inspect_single_file, safetensors_header  # noqa: E402

SD15_INPAINT_REPO = FAMILIES[Arch.SD15].reference_repos[0]


def reference_repo_for(path: Path) -> str | None:
    inspected = inspect_single_file(path)
    return inspected.reference_repo if inspected else None
from inpaintd.testmodel import (  # noqa: E402
    TEST_NATIVE_SIZE,
    install_in_hub_cache,
    make_test_model,
    save_single_file,
)

SIZE = TEST_NATIVE_SIZE
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, while on a busy 2-core machine OpenMP's
    spinning workers made this file take 25-33 s instead of 9-11 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# `tiny_model_dir` (conftest.py): the 9-channel tiny pipeline as a diffusers folder, built
# once per session.


@pytest.fixture(scope="module")
def tiny_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "tiny-inpaint.safetensors")


@pytest.fixture(scope="module")
def folder_engine(tiny_model_dir: Path) -> DiffusersEngine:
    eng = DiffusersEngine(tiny_model_dir, device="cpu")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def folder_pixels(folder_engine: DiffusersEngine) -> list[np.ndarray]:
    """What the diffusers folder makes of `make_task()`; computed once, jobs are the slow part."""
    return generate(folder_engine, make_task())


def configs_only(model_dir: Path, dest: Path) -> Path:
    """A copy of `model_dir` without weights, as `hf download REPO --include '*.json' '*.txt'`
    leaves it; so every weight the engine ends up with must have come from the single file."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def like_the_reference_repo(configs: Path, class_name: str) -> Path:
    """Make a configs-only folder look like the real reference repo's: its pipeline class, and
    safety checker and feature extractor entries (the engine asks for no safety checker)."""
    index_file = configs / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    index.update(
        _class_name=class_name,
        requires_safety_checker=True,
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
    )
    index_file.write_text(json.dumps(index), encoding="utf-8")
    (configs / "feature_extractor").mkdir()
    (configs / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": 224, "do_center_crop": True, "do_resize": True, "size": 224}),
        encoding="utf-8",
    )
    return configs


def make_task(**overrides) -> Call:
    rng = np.random.default_rng(3)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    fields = dict(
        image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        mask=mask,
        prompt="a stone bridge",
        negative_prompt="blurry",
        seeds=[1, 2],
        steps=2,  # few steps and no guidance: the file is under test, not the sampler
        guidance_scale=1.0,
        strength=1.0,
        scheduler="ddim",
    )
    fields.update(overrides)
    return call(**fields)


def assert_same_weights(loaded: DiffusersEngine, source: DiffusersEngine) -> None:
    for name in COMPONENTS:
        got = getattr(loaded.pipe, name).state_dict()
        want = getattr(source.pipe, name).state_dict()
        assert sorted(got) == sorted(want), name
        differing = [k for k in want if not torch.equal(got[k], want[k])]
        assert differing == [], f"{name}: {differing[:5]}"


def assert_same_pixels(loaded: DiffusersEngine, want: list[np.ndarray], **task) -> None:
    got = generate(loaded, make_task(**task))
    assert len(got) == len(want) == 2
    assert not np.array_equal(want[0], want[1])  # the seeds matter, so equality means something
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# -- the file ----------------------------------------------------------------------


def test_file_has_the_original_layout(tiny_file: Path, tiny_model_dir: Path) -> None:
    from safetensors import safe_open

    header = safetensors_header(tiny_file)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in header)
    assert not [k for k in header if any(d in k for d in ("down_blocks", "up_blocks", "mid_block."))]
    assert header["model.diffusion_model.input_blocks.0.0.weight"]["shape"][1] == 9
    assert header["first_stage_model.encoder.mid.attn_1.q.weight"]["shape"][2:] == [1, 1]  # 1x1 conv
    # Every source tensor is in the file (plus CLIP's position ids, as in real files).
    source = 0
    for name in COMPONENTS:
        (weights,) = (tiny_model_dir / name).glob("*.safetensors")
        with safe_open(str(weights), "pt") as f:
            source += len(list(f.keys()))
    assert len(header) == source + 1
    assert reference_repo_for(tiny_file) == SD15_INPAINT_REPO
    inspected = inspect_single_file(tiny_file)
    assert inspected is not None and inspected.family.arch == Arch.SD15 and inspected.inpainting


def test_sdxl_is_not_written(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"text_encoder_2": ["transformers", "X"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="SDXL"):
        save_single_file(tmp_path, tmp_path / "x.safetensors")


# -- loading -------------------------------------------------------------------------


def test_loads_with_a_config_folder(
    tiny_file: Path,
    tiny_model_dir: Path,
    folder_engine: DiffusersEngine,
    folder_pixels: list[np.ndarray],
    tmp_path: Path,
) -> None:
    config = configs_only(tiny_model_dir, tmp_path / "configs")
    eng = DiffusersEngine(tiny_file, device="cpu", config=config)
    try:
        assert eng.unet_in_channels == 9 and eng.caps.family == "sd15" and eng.caps.native_size == SIZE
        assert_same_weights(eng, folder_engine)
        assert_same_pixels(eng, folder_pixels)
    finally:
        eng.close()


def test_loads_with_the_reference_configs_from_the_hub_cache(
    tiny_file: Path,
    tiny_model_dir: Path,
    folder_engine: DiffusersEngine,
    folder_pixels: list[np.ndarray],
    tmp_path: Path,
) -> None:
    hub = tmp_path / "hub"
    configs = configs_only(tiny_model_dir, tmp_path / "configs")
    like_the_reference_repo(configs, "StableDiffusionInpaintPipeline")
    install_in_hub_cache(configs, hub, reference_repo_for(tiny_file))
    eng = DiffusersEngine(tiny_file, device="cpu", cache_dir=hub)
    try:
        assert eng.unet_in_channels == 9 and eng.caps.family == "sd15"
        assert_same_weights(eng, folder_engine)
        assert_same_pixels(eng, folder_pixels)
    finally:
        eng.close()


def test_four_channel_single_file(tmp_path: Path) -> None:
    folder = make_test_model(tmp_path / "tiny-4ch", unet_in_channels=4)
    checkpoint = save_single_file(folder, tmp_path / "tiny-4ch.safetensors")
    assert reference_repo_for(checkpoint) == SD15_REPO
    # The reference is SD 1.5's text-to-image repo; its components load into the inpaint pipeline.
    configs = like_the_reference_repo(configs_only(folder, tmp_path / "configs"), "StableDiffusionPipeline")
    install_in_hub_cache(configs, tmp_path / "hub", SD15_REPO)
    source = DiffusersEngine(folder, device="cpu")
    try:
        eng = DiffusersEngine(checkpoint, device="cpu", cache_dir=tmp_path / "hub")
        try:
            assert eng.unet_in_channels == 4
            assert_same_weights(eng, source)
            assert_same_pixels(eng, generate(source, make_task(strength=0.5)), strength=0.5)
        finally:
            eng.close()
    finally:
        source.close()


def test_registry_loads_a_single_file_from_the_hub_cache(
    tiny_file: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's path: the registry finds the reference configs in the cache it is given."""
    from inpaintd.models import ModelRegistry

    hub = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(hub.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    install_in_hub_cache(configs_only(tiny_model_dir, tmp_path / "configs"), hub, SD15_INPAINT_REPO)
    registry = ModelRegistry([str(tiny_file)], device="cpu")
    try:
        info = registry.get(str(tiny_file))
        assert info.available and info.kind == "single_file", info.detail
        engine = registry.load(str(tiny_file))
        assert engine.unet_in_channels == 9 and engine.caps.native_size == SIZE
    finally:
        registry.close()


# -- refusals --------------------------------------------------------------------------


def test_without_reference_configs_the_engine_says_what_to_download(tiny_file: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError) as err:
        DiffusersEngine(tiny_file, device="cpu", cache_dir=tmp_path / "empty-hub")
    assert err.value.code == "model_unavailable"
    assert SD15_INPAINT_REPO in err.value.message and "hf download" in err.value.message


def test_the_engine_itself_refuses_pickle_checkpoints(tmp_path: Path) -> None:
    """The registry refuses pickles first (tests/test_models.py); this is the engine's own
    guard, for callers that construct it directly."""
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not really a pickle")
    with pytest.raises(EngineError) as err:
        DiffusersEngine(checkpoint, device="cpu")
    assert err.value.code == "model_refused" and "--allow-pickle" in err.value.message


# -- weights missing or pickled: clear refusals, no fallback to pickles ---------------------


def test_a_configs_only_snapshot_is_not_a_loadable_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    install_in_hub_cache(configs_only(tiny_model_dir, tmp_path / "configs"), hub, SD15_INPAINT_REPO)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(SD15_INPAINT_REPO, device="cpu", cache_dir=hub)
    assert err.value.code == "model_unavailable"
    assert "weights are missing" in err.value.message and f"hf download {SD15_INPAINT_REPO}" in err.value.message


def test_configs_for_a_single_file_do_not_make_the_default_model_available(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inpaintd.models import FALLBACK_MODEL, ModelRegistry

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    install_in_hub_cache(configs_only(tiny_model_dir, tmp_path / "configs"), hub, SD15_INPAINT_REPO)
    registry = ModelRegistry([], device="cpu")
    assert not registry.get(SD15_INPAINT_REPO).available
    assert registry.default_model_id == FALLBACK_MODEL


def test_a_folder_with_pickled_weights_needs_allow_pickle(
    folder_engine: DiffusersEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "pickled"
    folder_engine.pipe.save_pretrained(str(folder), safe_serialization=False)
    # transformers writes the text encoder as safetensors regardless; the UNet and VAE are pickles.
    unet = folder / "unet"
    assert (unet / "diffusion_pytorch_model.bin").is_file() and not list(unet.glob("*.safetensors"))
    with pytest.raises(EngineError) as err:
        DiffusersEngine(folder, device="cpu")
    assert err.value.code == "model_unavailable"
    assert "weights are pickle files (" in err.value.message and "--allow-pickle" in err.value.message
    assert "unet/diffusion_pytorch_model.bin" in err.value.message
    # and with permission they load
    DiffusersEngine(folder, device="cpu", allow_pickle=True).close()
