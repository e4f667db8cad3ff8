"""LoRAs and textual-inversion embeddings in every job (#12, first half), on the tiny SD pipeline.

Random LoRAs and embeddings are built offline (`testmodel.make_test_lora`,
`make_test_embedding`); their family is named in their ModelSpec metadata, as real files
carry it (the tiny model's widths are no real family's).  Family detection from the tensors
alone is tested on headers with real widths.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemons import DaemonProcess, start_daemon

from inpaintd.loras import Library, describe, lora_family, split_prompt
from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import JobOptions, ProtocolError

pytest.importorskip("peft")

W = H = 64


def _pixels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 16:48] = 255
    return image, mask


IMAGE, MASK = _pixels()


def _header_file(path: Path, tensors: dict[str, list[int]], metadata: dict[str, str] | None = None) -> Path:
    header: dict = {k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in tensors.items()}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize(
    ("keys", "family", "fmt"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 768]}, "sd15", "kohya"),
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 1024]}, "sd2", "kohya"),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 2048],
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 1280]}, "sdxl", "kohya"),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 2048]}, "sdxl", "diffusers"),
        ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": [4, 768]}, "sd15", "diffusers"),
        ({"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": [16, 3072]}, "flux", "diffusers"),
        ({"transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight": [16, 1536]}, "sd3", "diffusers"),
        # Z-Image: diffusers' names, ai-toolkit's ComfyUI prefix, kohya's (musubi-tuner's)
        ({"transformer.layers.0.attention.to_q.lora_A.weight": [16, 3840]}, "z-image", "diffusers"),
        ({"diffusion_model.layers.12.feed_forward.w1.lora_A.weight": [16, 3840]}, "z-image", "diffusers"),
        ({"lora_unet_layers_3_attention_to_k.lora_down.weight": [16, 3840]}, "z-image", "kohya"),
        # Chroma: one that trains the approximator too (diffusers' names, kohya's)
        ({"transformer.distilled_guidance_layer.layers.0.linear_1.lora_A.weight": [16, 5120],
          "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": [16, 3072]}, "chroma", "diffusers"),
        ({"lora_unet_distilled_guidance_layer_layers_0_in_layer.lora_down.weight": [16, 5120]}, "chroma", "kohya"),
        # a CLIP text-encoder LoRA's `layers.N.self_attn` is not Z-Image's `layers.N.attention`
        ({"lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": [8, 768]}, "", "kohya"),
    ],
)
def test_a_loras_family_is_read_from_its_tensors(keys: dict, family: str, fmt: str, tmp_path: Path) -> None:
    assert lora_family({k: {"shape": s} for k, s in keys.items()}) == (family, fmt)
    # named as another family's, it is still what its tensors say
    addon = describe(_header_file(tmp_path / "flux_dev_lora.safetensors", keys), "lora", False)
    assert addon.family == family and bool(addon.problem) == (not family)


def test_chroma_takes_loras_of_the_blocks_it_shares_with_flux(tmp_path: Path) -> None:
    """Chroma keeps FLUX.1's block names: a LoRA of them alone (FLUX's by its tensors) serves
    FLUX.1 and Chroma models; one of Chroma's approximator, or whose metadata names Chroma,
    serves Chroma alone."""
    blocks = {"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": [16, 3072]}
    shared = describe(_header_file(tmp_path / "a.safetensors", blocks), "lora", False)
    assert shared.family == "flux" and all(shared.serves(f) for f in ("flux-fill", "flux-kontext", "chroma"))
    said = describe(_header_file(tmp_path / "b.safetensors", blocks, {"modelspec.architecture": "chroma/lora"}), "lora", False)
    approximator = {**blocks, "transformer.distilled_guidance_layer.in_proj.lora_A.weight": [16, 64]}
    own = describe(_header_file(tmp_path / "c.safetensors", approximator), "lora", False)
    for addon in (said, own):
        assert addon.family == "chroma" and addon.serves("chroma") and not addon.serves("flux-fill")


def test_trigger_words_weights_and_problems_are_listed(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    key = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 768]}
    _header_file(loras / "kohya.safetensors", key,
                 {"ss_tag_frequency": json.dumps({"10_sks": {"sks dog": 12, "grass": 3, "sky": 5}})})
    _header_file(loras / "sidecar.safetensors", key)
    (loras / "sidecar.json").write_text(json.dumps({"trigger_words": ["ohwx"], "weight": 0.7}))
    (loras / "old.ckpt").write_bytes(b"\x80\x04pickle")
    (loras / "junk.safetensors").write_bytes(b"\x01")
    listed = {a.name: a for a in Library(loras, tmp_path / "none").loras()}
    assert listed["kohya"].trigger_words[:2] == ["sks dog", "sky"] and listed["kohya"].format == "kohya"
    assert listed["sidecar"].trigger_words == ["ohwx"] and listed["sidecar"].default_weight == 0.7
    assert "--allow-pickle" in listed["old"].problem and listed["old"].format == "pickle"
    assert "not a readable safetensors file" in listed["junk"].problem
    assert not Library(loras, tmp_path, allow_pickle=True).lora("old").problem  # type: ignore[union-attr]


def test_prompt_tags_are_taken_out_of_the_prompt() -> None:
    text, tags = split_prompt("a <lora:ink_v2:0.6> cat, <LORA:film grain>, by the sea")
    assert text == "a cat, by the sea"
    assert tags == [("ink_v2", 0.6), ("film grain", 1.0)]
    assert split_prompt("no tags") == ("no tags", [])


@pytest.fixture(scope="module")
def addons(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from inpaintd.testmodel import make_test_embedding, make_test_lora

    data = tmp_path_factory.mktemp("addons")
    make_test_lora(tiny_model_dir, data / "loras" / "ink.safetensors", seed=1)
    make_test_lora(tiny_model_dir, data / "loras" / "film.safetensors", seed=2, text_encoder=False)
    make_test_lora(tiny_model_dir, data / "loras" / "xl_only.safetensors", seed=3, family="sdxl")
    make_test_lora(tiny_model_dir, data / "loras" / "ink_kohya.safetensors", seed=1, kohya=True)  # ink's weights
    (data / "loras" / "ink.txt").write_text("inkwash\n")
    make_test_embedding(data / "embeddings" / "mytoken.safetensors")
    return data


@pytest.fixture(scope="module")
def lora_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, addons: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("lora-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--lora-dir", str(addons / "loras"), "--embeddings-dir", str(addons / "embeddings"))
    yield d
    d.stop()


def run(c: Client, prompt: str = "a cat", loras: tuple[tuple[str, float], ...] = (), **options) -> np.ndarray:
    job: Job = c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(),
                        JobOptions(prompt=prompt, seed=3, steps=3, grow=0, feather=0, **options), loras=loras)
    c.wait(job, 120).raise_for_error()
    layer = job.layers[0]
    return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4).astype(int)


def test_loras_change_the_pixels_and_the_base_model_comes_back(lora_daemon: DaemonProcess) -> None:
    with lora_daemon.client() as c:
        listed = c.request("loras").body
        names = {a["name"]: a for a in listed["loras"]}
        assert names["ink"]["family"] == "sd15" and names["ink"]["trigger_words"] == ["inkwash"]
        assert names["xl_only"]["family"] == "sdxl" and names["ink"]["bytes"] > 0
        assert [e["name"] for e in listed["embeddings"]] == ["mytoken"]
        base = run(c)
        inked = run(c, loras=(("ink", 1.0),))
        half = run(c, loras=(("ink", 0.5),))
        zero = run(c, loras=(("ink", 0.0),))
        both = run(c, loras=(("ink", 1.0), ("film", 0.8)))
        tagged = run(c, prompt="a <lora:ink:1.0> cat")
        kohya = run(c, loras=(("ink_kohya", 1.0),))
        assert names["ink_kohya"]["format"] == "kohya" and names["ink_kohya"]["family"] == "sd15"
        after = run(c)
    inside = MASK == 255
    d_full = float(np.abs(inked - base)[inside].mean())
    d_half = float(np.abs(half - base)[inside].mean())
    print(f"\n[lora] mean |difference| inside the mask from no LoRA: weight 1.0 {d_full:.2f}, 0.5 {d_half:.2f}, "
          f"0.0 {float(np.abs(zero - base)[inside].mean()):.2f} of 255")
    assert d_full > 0 and d_half > 0 and not np.array_equal(inked, half)
    assert np.array_equal(zero, base)  # weight 0: the base model's pixels
    assert not np.array_equal(both, inked)  # a second LoRA at once changes them again
    assert np.array_equal(tagged, inked)  # <lora:ink:1.0> in the prompt = the loras field (tag removed from the text)
    # the same weights in kohya's layout (diffusers converts them): the same picture, to float rounding
    assert np.abs(kohya - inked).max() <= 2 and not np.array_equal(kohya, base), np.abs(kohya - inked).max()
    assert np.array_equal(after, base)  # after LoRA jobs the base model is exactly as before
    assert np.array_equal(inked[~inside], base[~inside])


def test_an_embedding_is_used_by_its_token(lora_daemon: DaemonProcess) -> None:
    with lora_daemon.client() as c:
        plain, with_token, again = run(c, "a cat"), run(c, "a mytoken cat"), run(c, "a cat")
    assert not np.array_equal(plain, with_token) and np.array_equal(plain, again)


def test_bad_loras_are_refused_before_any_work_and_the_daemon_serves_on(lora_daemon: DaemonProcess, addons: Path) -> None:
    (addons / "loras" / "pickled.ckpt").write_bytes(b"\x80\x04pickle")
    cases = [
        ((("nope", 1.0),), "bad_value", "no LoRA 'nope'"),
        ((("xl_only", 1.0),), "bad_value", "is a sdxl LoRA; the model is"),
        ((("ink", 3.0),), "bad_value", "weight 3.0 is out of range"),
        ((("pickled", 1.0),), "model_refused", "--allow-pickle"),
    ]
    with lora_daemon.client() as c:
        for loras, code, says in cases:
            with pytest.raises(ProtocolError) as err:
                c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(prompt="x"), loras=loras)
            assert err.value.code == code and err.value.details == {"field": "loras"}, err.value
            assert says in err.value.message, err.value.message
        with pytest.raises(ProtocolError) as err:
            c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(prompt="x <lora:nope:1>"))
        assert "no LoRA 'nope'" in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(prompt="x", model="opencv-telea"), loras=(("ink", 1),))
        assert "takes no LoRA" in err.value.message
        assert run(c).shape == (H, W, 4)  # still serving


@pytest.mark.slow
@pytest.mark.parametrize(("family", "lora_family"),
                         [("sd3", "sd3"), ("flux-fill", "flux"), ("z-image", "z-image"), ("chroma", "chroma")])
def test_the_transformer_families_take_loras_too(family: str, lora_family: str, tmp_path: Path) -> None:
    """SD 3, FLUX.1 Fill, Z-Image and Chroma through their stock pipelines' LoRA loaders: the
    LoRA changes the masked pixels, weight 0 and the next job without it give the base model's."""
    from inpaintd.engines.base import EngineRequest
    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.testmodel import make_family_test_model, make_test_transformer_lora

    folder = make_family_test_model(tmp_path / family, family)
    path = make_test_transformer_lora(folder, tmp_path / "loras" / "shapes.safetensors")
    addon = describe(path, "lora", False)
    assert addon.family == lora_family and addon.serves(family) and not addon.problem
    engine = DiffusersEngine(folder, device="cpu")
    try:
        def job(weight: float | None) -> np.ndarray:
            loras = [] if weight is None else [("shapes", str(path), weight)]
            out = engine.generate(EngineRequest(
                image=IMAGE, mask=MASK, prompt="a cat", negative_prompt="", seeds=[1], steps=2, guidance_scale=3.0,
                strength=1.0, scheduler="default", loras=loras), lambda *a: None, lambda: False)
            return out.images[0].astype(int)

        base, with_lora, zero, after = job(None), job(1.0), job(0.0), job(None)
    finally:
        engine.close()
    print(f"\n[lora] {family}: mean |difference| with the LoRA at 1.0: {np.abs(with_lora - base).mean():.2f} of 255")
    assert not np.array_equal(with_lora, base)
    assert np.array_equal(zero, base) and np.array_equal(after, base)
