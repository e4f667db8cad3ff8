"""The model registry: listing without weights, fallback, refusals, and loading from disk/cache.

The Hugging Face cache is redirected to a temporary folder for every test, so results do
not depend on what happens to be cached on the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_calls import Call, call, generate, run

from inpaintd.engines.base import EngineError
from inpaintd.models import BUILTIN_MODELS, DEFAULT_MODEL, FALLBACK_MODEL, ModelRegistry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hf-home" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(hub.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return hub


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from inpaintd.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("tiny-sd-inpaint"))


def small_task(**overrides) -> Call:
    image = np.full((64, 64, 3), 90, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 20:44] = 255
    fields = dict(
        image=image, mask=mask, prompt="grass", negative_prompt="", seeds=[1, 2],
        steps=3, guidance_scale=5.0, strength=1.0, scheduler="default",
    )
    fields.update(overrides)
    return call(**fields)


# -- listing -------------------------------------------------------------------------


def test_lists_builtins_and_default() -> None:
    registry = ModelRegistry()
    infos = {info.id: info for info in registry.list()}
    for builtin in BUILTIN_MODELS:
        assert infos[builtin].available
        assert infos[builtin].engine == "classical"
        assert infos[builtin].kind == "builtin"
    assert infos[DEFAULT_MODEL].kind == "hub"
    assert infos[DEFAULT_MODEL].engine == "diffusers"
    assert all(isinstance(info.to_wire(), dict) for info in infos.values())


def test_falls_back_to_classical_when_default_not_cached() -> None:
    registry = ModelRegistry()
    assert registry.default_model_id == FALLBACK_MODEL
    info = registry.get(DEFAULT_MODEL)
    assert not info.available
    assert "hf download" in info.detail and "--allow-download" in info.detail
    assert len(registry.notices) == 1
    notice = registry.notices[0]
    assert DEFAULT_MODEL in notice and FALLBACK_MODEL in notice and "hf download" in notice


def test_requested_default_that_is_missing_falls_back_too(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    registry = ModelRegistry(default=str(missing))
    assert registry.default_model_id == FALLBACK_MODEL
    assert str(missing) in registry.notices[0]


def test_classical_default_needs_no_notice() -> None:
    registry = ModelRegistry(default="opencv-ns")
    assert registry.default_model_id == "opencv-ns"
    assert registry.notices == []


def test_allow_download_counts_hub_models_as_available() -> None:
    registry = ModelRegistry(allow_download=True)
    assert registry.default_model_id == DEFAULT_MODEL
    assert registry.notices == []
    assert "downloaded" in registry.get(DEFAULT_MODEL).detail


def test_unknown_model() -> None:
    registry = ModelRegistry()
    with pytest.raises(EngineError) as err:
        registry.get("no-such/model")
    assert err.value.code == "unknown_model"
    assert "no-such/model" in err.value.message and "opencv-telea" in err.value.message
    with pytest.raises(EngineError) as err:
        registry.load("no-such/model")
    assert err.value.code == "unknown_model"


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, suffix: str) -> None:
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"not really a pickle")
    registry = ModelRegistry([str(checkpoint)])
    info = registry.get(str(checkpoint))
    assert not info.available and "--allow-pickle" in info.detail
    with pytest.raises(EngineError) as err:
        registry.load(str(checkpoint))
    assert err.value.code == "model_refused"


def test_allow_pickle_lifts_the_refusal(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"x")
    info = ModelRegistry([str(checkpoint)], allow_pickle=True).get(str(checkpoint))
    assert info.available and info.kind == "single_file"


def test_missing_folder_is_listed_unavailable(tmp_path: Path) -> None:
    registry = ModelRegistry([str(tmp_path / "gone")])
    info = registry.get(str(tmp_path / "gone"))
    assert not info.available and info.kind == "folder"
    with pytest.raises(EngineError) as err:
        registry.load(str(tmp_path / "gone"))
    assert err.value.code == "model_unavailable"
    assert "gone" in err.value.message


def test_uncached_repo_fails_to_load_with_advice() -> None:
    registry = ModelRegistry(["someorg/some-inpainting"])
    with pytest.raises(EngineError) as err:
        registry.load("someorg/some-inpainting")
    assert err.value.code == "model_unavailable"
    assert "someorg/some-inpainting" in err.value.message and "hf download" in err.value.message


def test_single_file_without_cached_config_explains(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    checkpoint = tmp_path / "my-inpaint.safetensors"
    weight = np.zeros((8, 9, 3, 3), np.float32)
    safetensors_numpy.save_file({"model.diffusion_model.input_blocks.0.0.weight": weight}, str(checkpoint))
    registry = ModelRegistry([str(checkpoint)])
    info = registry.get(str(checkpoint))
    assert info.kind == "single_file" and not info.available
    assert DEFAULT_MODEL in info.detail  # the 9-channel layout is SD 1.5 inpainting's
    with pytest.raises(EngineError) as err:
        registry.load(str(checkpoint))
    assert err.value.code == "model_unavailable"


def test_listing_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from inpaintd.models import ModelRegistry; "
        f"r = ModelRegistry([{str(tmp_path)!r}, 'a/b']); r.list(); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- loading -------------------------------------------------------------------------


def test_classical_engines_load_and_run() -> None:
    registry = ModelRegistry()
    engine = registry.load("opencv-telea")
    assert engine is registry.load("opencv-telea")
    out = run(engine, small_task())  # deterministic: one image for the two seeds, and a note
    assert len(out.images) == 1 and out.images[0].shape == (64, 64, 3) and "1 variant instead of 2" in out.notes[0]
    seeded = registry.load("patchmatch")
    out = run(seeded, small_task())
    assert len(out.images) == 2 and out.images[0].shape == (64, 64, 3) and out.notes == []
    registry.close()


def test_folder_model_loads_and_stays_warm(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry([str(tiny_model_dir)], default=str(tiny_model_dir), device="cpu")
    model_id = str(tiny_model_dir.resolve())
    assert registry.default_model_id == model_id
    info = registry.get(model_id)
    assert info.available and info.kind == "folder" and info.native_size == 64

    events: list[tuple[str, int, int]] = []
    engine = registry.load(str(tiny_model_dir), progress=lambda *e: events.append(e))
    assert events == [("loading", 0, 1), ("loading", 1, 1)]
    assert engine.name == "diffusers" and engine.model_id == model_id and engine.caps.native_size == 64
    assert registry.caps(model_id) == engine.caps  # the description and the loaded engine agree
    assert registry.load(model_id) is engine  # warm: no reload
    # What status reports: the weights' bytes, every tensor of the pipeline's modules once.
    params = {id(t): t.numel() * t.element_size() for m in engine.pipe.components.values()
              if hasattr(m, "parameters") for t in [*m.parameters(), *m.buffers()]}
    [warm] = registry.warm()
    assert warm["model"] == model_id and warm["device"] == "cpu" and warm["loads"] == 1
    assert warm["bytes"] == sum(params.values()) > 0

    # A path given relative to the working directory names the same model.
    monkeypatch.chdir(tiny_model_dir.parent)
    assert registry.load(tiny_model_dir.name) is engine

    out = generate(engine, small_task())
    assert len(out) == 2 and out[0].shape == (64, 64, 3) and out[0].dtype == np.uint8
    registry.close()
    assert engine.pipe is None


def test_repo_id_from_hub_cache(tiny_model_dir: Path, empty_hf_cache: Path) -> None:
    from inpaintd.testmodel import install_in_hub_cache

    install_in_hub_cache(tiny_model_dir, empty_hf_cache, DEFAULT_MODEL)
    install_in_hub_cache(tiny_model_dir, empty_hf_cache, "someorg/other-inpainting")
    registry = ModelRegistry(["someorg/other-inpainting"], device="cpu")
    # With the default cached, there is no fallback.
    assert registry.default_model_id == DEFAULT_MODEL and registry.notices == []
    info = registry.get("someorg/other-inpainting")
    assert info.available and info.native_size == 64 and str(empty_hf_cache) in info.detail

    first = registry.load(DEFAULT_MODEL)
    assert generate(first, small_task(seeds=[4]))[0].shape == (64, 64, 3)
    # Only one diffusion model is kept warm: loading another frees the first.
    second = registry.load("someorg/other-inpainting")
    assert second is not first and first.pipe is None
    assert generate(second, small_task(seeds=[4]))[0].shape == (64, 64, 3)
    # Classical engines do not evict the diffusion model.
    registry.load("opencv-ns")
    assert registry.load("someorg/other-inpainting") is second
    registry.close()


def test_a_folder_of_another_family_is_listed_unavailable_by_name(tmp_path: Path) -> None:
    """No class-name guessing: a FLUX text-to-image folder (a family with no row) is not
    loaded into another family's pipeline."""
    folder = tmp_path / "flux-dev"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (folder / "transformer" / "config.json").write_text('{"sample_size": 128}')
    registry = ModelRegistry([str(folder)], default="opencv-telea")
    info = registry.get(str(folder))
    assert not info.available and "FluxPipeline" in info.detail and info.family == ""
    with pytest.raises(EngineError) as err:
        registry.admit(str(folder))
    assert err.value.code == "model_unavailable" and "FluxPipeline" in err.value.message


def test_admission_and_description_come_from_the_registry(tiny_model_dir: Path) -> None:
    registry = ModelRegistry([str(tiny_model_dir)], default="opencv-telea", compile="reduce-overhead")
    info = registry.admit(str(tiny_model_dir))
    assert info.family == "sd15" and info.to_wire()["family"] == "sd15"
    caps = registry.caps(str(tiny_model_dir))  # no engine loaded: from the configs and the family row
    assert registry._diffusion is None
    assert (caps.engine, caps.native_size, caps.size_multiple, caps.shape_multiple) == ("diffusers", 64, 8, 64)
    assert registry.caps("patchmatch").seeded and not registry.caps("opencv-telea").seeded
    for bad, code in (("x" * 5000, "unknown_model"), ("a\x00b", "unknown_model"), ("nope/nope", "unknown_model")):
        with pytest.raises(EngineError) as err:
            registry.admit(bad)
        assert err.value.code == code
