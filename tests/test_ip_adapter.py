"""Style reference for SD 1.x and SDXL through IP-Adapter (`inpaintd.engines.ip_adapter`).

A tiny random IP-Adapter (`testmodel.make_test_ip_adapter`, h94/IP-Adapter's layout) loads
into the tiny SD pipelines.  With references at weight > 0 the pixels inside the mask
follow them; without references, or at weight 0, they are exactly the pixels of the same
model without an IP-Adapter; outside the mask nothing moves.  An IP-Adapter that is missing
refuses the model, naming the path.  Everything runs on CPU at 64x64.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import DaemonProcess, start_daemon  # noqa: E402

from inpaintd.engines.base import EngineError, EngineRequest  # noqa: E402
from inpaintd.engines.diffusers_engine import DiffusersEngine  # noqa: E402
from inpaintd.engines.ip_adapter import IP_ADAPTER_FILES, style_scale  # noqa: E402
from inpaintd.families import FAMILIES, Arch  # noqa: E402
from inpaintd.masks import prepare_mask  # noqa: E402
from inpaintd.models import ModelRegistry  # noqa: E402
from inpaintd.runner import JobOutput, run_job  # noqa: E402
from inpaintd.testmodel import make_test_ip_adapter, make_test_model  # noqa: E402
from inpaintd_protocol.client import Client, Job, ProtocolError  # noqa: E402
from inpaintd_protocol.messages import JobOptions  # noqa: E402

H, W = 80, 96
GROW, FEATHER = 2, 2


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_test_ip_adapter(tmp_path_factory.mktemp("ip-adapter") / "IP-Adapter", tiny_model_dir)


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Iterator[DiffusersEngine]:
    engine = DiffusersEngine(tiny_model_dir, device="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def styled(tiny_model_dir: Path, adapter: Path) -> Iterator[DiffusersEngine]:
    engine = DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter=str(adapter))
    yield engine
    engine.close()


def photo(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 17.0), 128 + 90 * np.cos((x + y) / 21.0), 100 + 80 * np.sin(y / 13.0)], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def hole() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[24:56, 32:64] = 255
    return mask


REFERENCE = photo(7, 48, 40)  # any size: the image encoder's processor scales it


def job(engine: DiffusersEngine, references: list[np.ndarray] = (), weight: float = 1.0, **options: Any) -> JobOutput:
    """One variant, 3 steps, guided (so the unconditional image embeddings are used too)."""
    settings: dict[str, Any] = dict(prompt="a red brick wall", steps=3, seed=5, grow=GROW, feather=FEATHER)
    opts = JobOptions(**{**settings, **options, "reference_weight": weight})
    return run_job(engine, photo(), hole(), opts, [5], references=list(references))


def layers(out: JobOutput) -> np.ndarray:
    return np.stack([layer.rgba for layer in out.layers])


def selection(out: JobOutput) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) of the grown selection over the result's region."""
    prepared = prepare_mask(hole(), GROW, FEATHER)
    assert prepared is not None
    local, box = prepared
    grown = np.zeros((H, W), np.uint8)
    grown[box.slices()] = local
    layer = out.layers[0]
    h, w = layer.rgba.shape[:2]
    region = grown[layer.y: layer.y + h, layer.x: layer.x + w]
    return region == 255, region == 0


def assert_outside_untouched(out: JobOutput) -> None:
    _, outside = selection(out)
    image = photo()
    for layer in out.layers:
        h, w = layer.rgba.shape[:2]
        src = image[layer.y: layer.y + h, layer.x: layer.x + w]
        assert outside.any() and np.array_equal(layer.rgba[outside][:, :3], src[outside])


def test_references_steer_the_pixels_inside_the_mask_only(plain: DiffusersEngine, styled: DiffusersEngine) -> None:
    """(a) and (c): with references at weight 1 the pixels inside the mask differ from the
    same job without references; outside it they are the picture's, as always."""
    without = job(styled)
    with_reference = job(styled, [REFERENCE])
    inside, _ = selection(with_reference)
    difference = np.abs(layers(with_reference).astype(int) - layers(without).astype(int))[:, inside, :3]
    assert difference.mean() > 5.0, difference.mean()
    assert_outside_untouched(with_reference)
    # Two references together steer it again differently.
    both = job(styled, [REFERENCE, photo(9, 30, 70)])
    assert not np.array_equal(layers(both), layers(with_reference))
    assert_outside_untouched(both)


def test_weight_zero_and_no_references_are_the_model_without_an_ip_adapter(
    plain: DiffusersEngine, styled: DiffusersEngine
) -> None:
    """(b): weight 0 ignores the references, bit for bit; and without references the IP-Adapter
    changes nothing at all (its scale is 0, so its attention is skipped)."""
    reference_free = layers(job(plain))
    assert np.array_equal(layers(job(styled)), reference_free)
    assert np.array_equal(layers(job(styled, [REFERENCE], weight=0.0)), reference_free)
    # ... also after a job that used the reference (the scale goes back to 0), and without guidance.
    job(styled, [REFERENCE], weight=1.5)
    assert np.array_equal(layers(job(styled, [REFERENCE], weight=0.0)), reference_free)
    assert np.array_equal(layers(job(styled, guidance_scale=1.0)), layers(job(plain, guidance_scale=1.0)))


def test_weight_scales_the_effect(styled: DiffusersEngine) -> None:
    without = layers(job(styled)).astype(int)
    weak, strong = (np.abs(layers(job(styled, [REFERENCE], weight=w)).astype(int) - without).mean() for w in (0.1, 1.0))
    assert 0 < weak < strong


def test_reference_embeddings_are_encoded_once_per_image(styled: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    original = styled.pipe.encode_image

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(styled.pipe, "encode_image", counting)
    fresh = photo(21, 33, 33)
    first = layers(job(styled, [fresh]))
    assert len(calls) == 1
    assert np.array_equal(layers(job(styled, [fresh])), first)  # the cached embedding gives the same pixels
    job(styled, [fresh], prompt="another prompt")
    assert len(calls) == 1
    job(styled, [fresh.copy(), photo(22, 20, 20)])
    assert len(calls) == 2  # only the new image


def test_engine_notes_say_what_was_loaded_and_what_was_ignored(
    plain: DiffusersEngine, styled: DiffusersEngine, adapter: Path
) -> None:
    assert styled.ip_adapter == str(adapter) and plain.ip_adapter is None
    assert any("IP-Adapter" in n and "models/ip-adapter_sd15.safetensors" in n for n in styled.speed_notes)
    # In-process (the daemon refuses them first): references to a model without an IP-Adapter.
    out = job(plain, [REFERENCE])
    assert any("ignored" in n and "--ip-adapter" in n for n in out.notes)
    assert not any("reference" in n for n in job(styled, [REFERENCE]).notes)


def test_the_low_memory_retry_keeps_the_ip_adapter(styled: DiffusersEngine) -> None:
    """Attention slicing would replace the IP-Adapter's attention processors: with one loaded
    the retry does without it."""
    before = {name: type(p) for name, p in styled.pipe.unet.attn_processors.items()}
    styled._set_low_memory(True)
    try:
        assert {name: type(p) for name, p in styled.pipe.unet.attn_processors.items()} == before
    finally:
        styled._set_low_memory(False)
    assert any(t.__name__.startswith("IPAdapter") for t in before.values())


def test_sdxl_takes_the_style_block_only(tmp_path: Path) -> None:
    """SDXL (InstantStyle): the weight goes to the second attention of the first up block,
    every other IP-Adapter layer stays at 0; weight 0 is the model without one."""
    model = make_test_model(tmp_path / "xl", sdxl=True)
    adapter = make_test_ip_adapter(tmp_path / "IP-Adapter", model, sdxl=True)
    assert (adapter / "sdxl_models" / "ip-adapter_sdxl.safetensors").is_file()
    plain = DiffusersEngine(model, device="cpu")
    styled = DiffusersEngine(model, device="cpu", ip_adapter=str(adapter))
    try:
        assert style_scale(styled.pipe.unet, FAMILIES[Arch.SDXL], 0.8) == {"up": {"block_0": [0.0, 0.8]}}
        reference_free = layers(job(plain))
        with_reference = job(styled, [REFERENCE])
        scales = {n: p.scale for n, p in styled.pipe.unet.attn_processors.items() if hasattr(p, "scale")}
        assert scales.pop("up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor") == [1.0]
        assert scales and all(s == [0.0] for s in scales.values())
        inside, _ = selection(with_reference)
        assert np.abs(layers(with_reference).astype(int) - reference_free.astype(int))[:, inside].mean() > 1.0
        assert_outside_untouched(with_reference)
        assert np.array_equal(layers(job(styled, [REFERENCE], weight=0.0)), reference_free)
        assert np.array_equal(layers(job(styled)), reference_free)
    finally:
        plain.close()
        styled.close()


def test_a_missing_ip_adapter_refuses_the_model_naming_the_path(
    tmp_path: Path, tiny_model_dir: Path, adapter: Path
) -> None:
    """(d): a path that is not there, or lacks a file, refuses the model (model_unavailable)
    naming the path and what is missing; so does an IP-Adapter of another family's shapes."""
    nowhere = tmp_path / "no-such-ip-adapter"
    with pytest.raises(EngineError) as err:
        DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter=str(nowhere))
    assert err.value.code == "model_unavailable" and str(nowhere) in err.value.message
    assert "no such folder" in err.value.message and "models/ip-adapter_sd15.safetensors" in err.value.message

    subfolder, weight_name = IP_ADAPTER_FILES[Arch.SD15]
    half = tmp_path / "weights-only"
    (half / subfolder).mkdir(parents=True)
    (half / subfolder / weight_name).write_bytes((adapter / subfolder / weight_name).read_bytes())
    with pytest.raises(EngineError) as err:
        DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter=str(half))
    assert err.value.code == "model_unavailable" and str(half) in err.value.message
    assert "models/image_encoder/model.safetensors" in err.value.message

    xl = make_test_ip_adapter(tmp_path / "xl-shaped", sdxl=True)  # SDXL's shapes, put where SD 1.5's go
    (xl / "sdxl_models").rename(xl / subfolder)
    (xl / subfolder / IP_ADAPTER_FILES[Arch.SDXL][1]).rename(xl / subfolder / weight_name)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter=str(xl))
    assert err.value.code == "model_unavailable" and str(xl) in err.value.message

    with pytest.raises(EngineError) as err:  # a repo id not in the (empty) cache
        DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter="h94/IP-Adapter", cache_dir=tmp_path / "hub")
    assert err.value.code == "model_unavailable" and "h94/IP-Adapter" in err.value.message
    assert "hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors" in err.value.message

    with pytest.raises(EngineError) as err:  # diffusers cannot add the IP-Adapter to a quantised UNet
        DiffusersEngine(tiny_model_dir, device="cpu", ip_adapter=str(adapter), quantize={"unet": "fp8"})
    assert err.value.code == "model_refused" and str(adapter) in err.value.message and "--quantize" in err.value.message

    registry = ModelRegistry([str(tiny_model_dir)], device="cpu", ip_adapter=str(nowhere))
    with pytest.raises(EngineError) as err:
        registry.load(str(tiny_model_dir))
    assert err.value.code == "model_unavailable" and str(nowhere) in err.value.message
    registry.close()


def test_the_registry_says_sd_models_take_references_with_an_ip_adapter(tiny_model_dir: Path, adapter: Path) -> None:
    model = str(tiny_model_dir)
    assert ModelRegistry([model], device="cpu").get(model).takes["reference_image"] is False
    registry = ModelRegistry([model], device="cpu", ip_adapter=str(adapter))
    info = registry.get(model)
    assert info.takes["reference_image"] is True and info.available
    # its memory estimates count the IP-Adapter's image encoder and weights, as they load
    from inpaintd.memory import component_weights

    plain = ModelRegistry([model], device="cpu").get(model).memory or {}
    parts = info.memory["components"] if info.memory else {}
    encoder = component_weights("image_encoder", adapter / "models" / "image_encoder")
    own = component_weights("ip_adapter", adapter / "models" / "ip-adapter_sd15.safetensors")
    assert encoder is not None and own is not None
    assert parts["image_encoder"] == encoder.params > 0 and parts["ip_adapter"] == own.params > 0, parts
    assert info.memory and info.memory["parameters"] == plain["parameters"] + encoder.params + own.params
    assert info.memory["peak"]["gpu"] > plain["peak"]["gpu"]
    try:
        engine = registry.load(model)
        assert getattr(engine, "ip_adapter", None) == str(adapter)
    finally:
        registry.close()


def test_flow_families_ignore_references_at_weight_zero() -> None:
    """FLUX.1 Kontext and FLUX.2 klein take references whole: weight 0 drops them (the same
    job without references), any other weight uses them as they are."""
    from inpaintd.engines.flow_inpaint import FlowInputs

    seen: list[list[np.ndarray]] = []

    class Engine(DiffusersEngine):
        def __init__(self) -> None:  # a stand-in: the flow branch of `generate`, no pipeline
            self.family = FAMILIES[Arch.FLUX_KONTEXT]
            self.size_multiple, self.device = 16, "cpu"
            self._prompt_cache, self._schedulers = OrderedDict({("", "", ""): "embeds"}), {"default": None}
            self.pipe = type("Pipe", (), {"scheduler": None})()
            self._references = None

            def flow(job: FlowInputs, pacer: object = None) -> np.ndarray:
                seen.append(job.references)
                return np.zeros((1, 64, 64, 3), np.uint8)

            self._flow = flow

    engine = Engine()
    request = EngineRequest(image=np.zeros((64, 64, 3), np.uint8), mask=np.full((64, 64), 255, np.uint8), prompt="",
                            negative_prompt="", seeds=[1], steps=2, guidance_scale=2.5, strength=1.0,
                            scheduler="default", references=[REFERENCE])
    for weight in (0.0, 1.0, 0.5):
        request.reference_weight = weight
        notes = engine.generate(request, lambda *a: None, lambda: False).notes
        assert (weight == 0.5) == any("reference_weight" in n for n in notes)
    assert [len(refs) for refs in seen] == [0, 1, 1]


# -- through a real daemon ------------------------------------------------------------------


@pytest.fixture(scope="module")
def styled_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, adapter: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("ip-adapter-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--ip-adapter", str(adapter))
    yield d
    d.stop()


def submit(c: Client, references: tuple[np.ndarray, ...] = (), **options: object) -> Job:
    image, mask = photo(), hole()
    refs = [(r.tobytes(), r.shape[1], r.shape[0], r.shape[2]) for r in references]
    return c.submit(image.tobytes(), W, H, 3, mask.tobytes(), JobOptions(**options), references=refs)


def layer_array(layer: Any) -> np.ndarray:
    return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4)


@pytest.mark.slow
def test_a_daemon_with_an_ip_adapter_takes_references_for_sd(styled_daemon: DaemonProcess, tiny_model_dir: Path) -> None:
    """(e): `serve --ip-adapter`: the models reply says the SD model takes reference images;
    a job with one differs inside the mask, never outside; weight 0 is the job without one;
    a classical model still refuses references."""
    with styled_daemon.client() as c:
        models = {m["id"]: m for m in c.models()}
        assert models[str(tiny_model_dir.resolve())]["takes"]["reference_image"] is True
        assert models["patchmatch"]["takes"]["reference_image"] is False
        common = dict(steps=3, seed=9, grow=GROW, feather=FEATHER)
        runs = [c.wait(submit(c, refs, reference_weight=w, **common), timeout=120).raise_for_error()
                for refs, w in (((), 1.0), ((REFERENCE,), 1.0), ((REFERENCE,), 0.0))]
        with pytest.raises(ProtocolError) as err:
            submit(c, (REFERENCE,), model="patchmatch", steps=2)
        assert "reference" in str(err.value)
    without, with_reference, weight_zero = (layer_array(j.layers[0]) for j in runs)
    layer = runs[1].layers[0]
    prepared = prepare_mask(hole(), GROW, FEATHER)
    assert prepared is not None
    local, box = prepared
    grown = np.zeros((H, W), np.uint8)
    grown[box.slices()] = local
    region = grown[layer.y: layer.y + layer.height, layer.x: layer.x + layer.width]
    inside, outside = region == 255, region == 0
    assert np.abs(with_reference.astype(int) - without.astype(int))[inside].mean() > 5.0
    assert np.array_equal(weight_zero, without)
    src = photo()[layer.y: layer.y + layer.height, layer.x: layer.x + layer.width]
    assert outside.any() and np.array_equal(with_reference[outside][:, :3], src[outside])
