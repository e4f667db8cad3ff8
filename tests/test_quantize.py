"""`--quantize`: the plan's parsing and errors, and each method on tiny random models.

The SD 3 model here is the test model with a wider transformer and T5 (128 channels): SDNQ
leaves layers under 16384 weights alone, and the stock tiny model's are all smaller.  Each
method is loaded the way the engine loads (`from_pretrained` with the plan's config, then
`after_load`), checked for what it stores (dtype, layer types, bytes), and run through the
engine, whose output must differ only slightly from the unquantised model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inpaintd.engines import quantize
from inpaintd.engines.base import EngineRequest
from inpaintd.engines.quantize import (
    QuantizeError,
    check_available,
    kept_share,
    parse_quantize,
    pipeline_quantization,
    quantized_bytes,
    resolve_plan,
)
from inpaintd.families import FAMILIES, Arch
from inpaintd.testmodel import TEST_NATIVE_SIZE

pytestmark = pytest.mark.timeout(300)

def _need_sdnq() -> None:
    """Skip without sdnq.  Not `importorskip`: the first import of sdnq must be
    `quantize._import_sdnq`'s, which spares a CPU run sdnq's ~20 s torch.compile probe."""
    if not quantize.sdnq_available():
        pytest.skip("sdnq is not installed (`pip install sdnq`)")


# -- parsing -------------------------------------------------------------------------------


def test_a_bare_method_is_the_denoisers() -> None:
    assert parse_quantize("fp8") == {"denoiser": "fp8"}
    assert parse_quantize(" NF4 ") == {"denoiser": "nf4"}
    assert parse_quantize("none") == {"denoiser": "none"}
    assert parse_quantize("") == {}


def test_per_component_plans() -> None:
    assert parse_quantize("transformer=nf4,text_encoder_3=int8") == {"transformer": "nf4", "text_encoder_3": "int8"}
    assert parse_quantize("int8, text_encoder = fp8") == {"denoiser": "int8", "text_encoder": "fp8"}
    assert parse_quantize("fp8,denoiser=fp8") == {"denoiser": "fp8"}  # the same thing twice is no conflict


@pytest.mark.parametrize(
    ("text", "named", "listed"),
    [
        ("fp4", "'fp4'", "none, fp8, int8, nf4, gguf"),
        ("transformer=q8", "'q8'", "none, fp8, int8, nf4, gguf"),
        ("vae=int8", "'vae'", "denoiser, text_encoder, unet, transformer, text_encoder_2, text_encoder_3"),
        ("transformer=int8,transformer=nf4", "transformer", "'int8' and 'nf4'"),
        ("int8,denoiser=fp8", "denoiser", "'int8' and 'fp8'"),
    ],
)
def test_bad_plans_name_the_value_and_list_the_valid_ones(text: str, named: str, listed: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_quantize(text)
    assert named in str(caught.value) and listed in str(caught.value), caught.value


def test_aliases_resolve_per_family() -> None:
    plan = parse_quantize("int8,text_encoder=nf4")
    assert resolve_plan(plan, "sd3").methods == {"transformer": "int8", "text_encoder_3": "nf4"}
    assert resolve_plan(plan, Arch.FLUX_FILL).methods == {"transformer": "int8", "text_encoder_2": "nf4"}
    assert resolve_plan(plan, FAMILIES[Arch.FLUX_KONTEXT]).methods == {"transformer": "int8", "text_encoder_2": "nf4"}
    assert resolve_plan(plan, "flux2-klein").methods == {"transformer": "int8", "text_encoder": "nf4"}
    assert resolve_plan(plan, Arch.Z_IMAGE).methods == {"transformer": "int8", "text_encoder": "nf4"}
    assert resolve_plan(plan, Arch.CHROMA).methods == {"transformer": "int8", "text_encoder": "nf4"}  # its T5
    assert resolve_plan({"transformer": "fp8", "text_encoder": "none"}, "sd3").methods == {"transformer": "fp8"}


def test_the_text_encoder_alias_is_set_aside_where_no_encoder_is_large() -> None:
    """One daemon-wide plan may serve SD 1.5 beside FLUX: their CLIPs are small."""
    resolved = resolve_plan(parse_quantize("fp8,text_encoder=int8"), "sdxl")
    assert resolved.methods == {"unet": "fp8"}
    assert "no large text encoder" in resolved.notes[0] and "text_encoder=int8" in resolved.notes[0]


def test_real_names_the_family_lacks_are_refused_with_its_names() -> None:
    with pytest.raises(QuantizeError) as caught:
        resolve_plan(parse_quantize("text_encoder_3=int8"), "flux-fill")
    message = str(caught.value)
    assert "FLUX.1 Fill" in message and "'text_encoder_3'" in message
    assert "denoiser (= transformer)" in message and "text_encoder (= text_encoder_2)" in message
    with pytest.raises(QuantizeError, match="'transformer'"):
        resolve_plan({"transformer": "int8"}, "sd15")
    with pytest.raises(QuantizeError, match="given twice"):
        resolve_plan({"denoiser": "int8", "transformer": "nf4"}, "sd3")


# -- sizes and availability ----------------------------------------------------------------


def test_quantized_bytes_per_method() -> None:
    n = 12_000_000_000  # FLUX.1's transformer
    assert quantized_bytes(n, "none") == 24_000_000_000
    assert quantized_bytes(n, "none", dtype_bytes=4) == 48_000_000_000
    assert quantized_bytes(n, "fp8") == n
    assert quantized_bytes(n, "int8") == 12_046_875_000  # a float32 scale per 1024 weights
    assert quantized_bytes(n, "nf4") == 7_500_000_000  # a float32 scale and zero point per 64
    assert quantized_bytes(0, "int8") == 0
    # SD 3.5 Large's 8.06e9: fp8 casting leaves its AdaLN third in bfloat16.
    assert kept_share("sd3", "denoiser", "fp8") == 0.33 and kept_share("sd3", "transformer", "int8") == 0.0
    assert quantized_bytes(8_060_000_000, "fp8", kept_share=0.33) == 10_719_800_000
    assert kept_share("flux-fill", "text_encoder", "int8") == 0.24  # T5's wo and embeddings
    assert kept_share("flux2-klein", "denoiser", "fp8") == 0.0 and kept_share("sdxl", "unet", "nf4") == 0.0
    # Z-Image: its Qwen3-4B keeps its embedding as klein's does; its transformer keeps 0.2% under fp8
    assert kept_share("z-image", "text_encoder", "nf4") == kept_share("flux2-klein", "text_encoder", "nf4") == 0.09
    assert kept_share("z-image", "transformer", "fp8") == 0.0
    # Chroma: FLUX.1's T5-XXL, kept as FLUX.1's; its pruned transformer has no modulation linears to keep
    assert kept_share("chroma", "text_encoder", "fp8") == kept_share("flux-fill", "text_encoder", "fp8") == 0.24
    assert kept_share("chroma", "transformer", "fp8") == 0.0
    with pytest.raises(ValueError, match="kept_share"):
        quantized_bytes(n, "fp8", kept_share=1.5)
    with pytest.raises(ValueError, match="file size"):
        quantized_bytes(n, "gguf")
    with pytest.raises(ValueError, match="'q3'"):
        quantized_bytes(n, "q3")


@pytest.mark.parametrize("method", ["int8", "nf4"])
def test_quantized_bytes_is_what_sdnq_stores(method: str) -> None:
    """The estimate against SDNQ's own layers at a real model's width (FLUX's is 3072)."""
    _need_sdnq()
    import torch

    sdnq = quantize._import_sdnq("cpu")
    layer = torch.nn.Sequential(torch.nn.Linear(3072, 1024, bias=False))
    quantized = sdnq.sdnq_post_load_quant(layer, torch_dtype=torch.float32, **quantize._sdnq_options(method, "cpu"))
    assert type(quantized[0]).__name__ == "SDNQLinear"
    assert quantize._weight_bytes(quantized) == quantized_bytes(3072 * 1024, method)


def test_gguf_comes_from_a_gguf_file_only() -> None:
    with pytest.raises(QuantizeError) as caught:
        pipeline_quantization(parse_quantize("gguf"), "flux-fill", "cpu")
    assert "transformer=gguf" in str(caught.value) and ".gguf file" in str(caught.value)
    assert "fp8, int8 or nf4" in str(caught.value)
    config, after_load = pipeline_quantization(parse_quantize("gguf"), "flux-fill", "cpu", from_gguf={"transformer"})
    assert config is None
    with pytest.raises(QuantizeError, match="quantised already"):
        check_available({"transformer": "int8"}, "cuda", from_gguf={"transformer"})


def test_unavailable_methods_fail_before_loading_with_the_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QuantizeError) as caught:
        check_available({"transformer": "fp8"}, "mps")
    assert "fp8" in str(caught.value) and "MPS" in str(caught.value) and "int8" in str(caught.value)
    monkeypatch.setattr(quantize, "sdnq_available", lambda: False)
    for method in ("int8", "nf4"):
        with pytest.raises(QuantizeError) as caught:
            pipeline_quantization({"denoiser": method}, "sd3", "cuda")
        message = str(caught.value)
        assert f"transformer={method}" in message and "sdnq" in message and "pip install" in message
        assert "use fp8" in message
    pipeline_quantization({"denoiser": "fp8"}, "sd3", "cuda")  # fp8 needs nothing extra


# -- on tiny models ------------------------------------------------------------------------

_WIDTH = 128  # the transformer's width and the T5's: the SDNQ layers hold 16384+ weights


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD 3 model, its transformer and T5 widened (same layout otherwise)."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3InpaintPipeline
    from transformers import T5Config, T5EncoderModel

    from inpaintd.testmodel import make_sd3_test_model

    root = tmp_path_factory.mktemp("quantize")
    pipe = StableDiffusion3InpaintPipeline.from_pretrained(make_sd3_test_model(root / "base"))
    torch.manual_seed(1)
    pipe.transformer = SD3Transformer2DModel(
        sample_size=TEST_NATIVE_SIZE // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=_WIDTH, caption_projection_dim=_WIDTH,
        pooled_projection_dim=64, pos_embed_max_size=96,
    ).eval()
    pipe.text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(pipe.tokenizer_3), d_model=_WIDTH, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    path = root / "sd3-wide"
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def _load(folder: Path, text: str | None) -> tuple[Any, list[str]]:
    """The pipeline as the engine loads it: `from_pretrained` with the plan's config, then
    `after_load` before it moves to the device."""
    import torch
    from diffusers import StableDiffusion3InpaintPipeline

    config, after_load = pipeline_quantization(parse_quantize(text), "sd3", "cpu") if text else (None, None)
    pipe = StableDiffusion3InpaintPipeline.from_pretrained(str(folder), dtype=torch.float32, quantization_config=config)
    notes = after_load(pipe) if after_load else []
    return pipe, notes


def _generate(pipe: Any) -> np.ndarray:
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    size = TEST_NATIVE_SIZE
    image = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    engine = DiffusersEngine.from_pipeline(pipe, "quantize-test", device="cpu")
    out = engine.generate(EngineRequest(
        image=image, mask=mask, prompt="a cat", negative_prompt="", seeds=[1], steps=3,
        guidance_scale=4.0, strength=1.0, scheduler="default",
    ), lambda stage, step, total: None, lambda: False)
    assert len(out.images) == 1 and out.images[0].shape == (size, size, 3) and out.images[0].dtype == np.uint8
    return out.images[0].astype(np.float32)


def _block_linears(module: Any) -> list[tuple[str, Any]]:
    """The linear layers of the repeated blocks (what every method quantises)."""
    return [(n, m) for n, m in module.named_modules() if ("blocks" in n or "block." in n) and type(m).__name__.endswith("Linear")]


def _layer_bytes(layer: Any) -> int:
    return sum(t.numel() * t.element_size() for name, t in (*layer.named_parameters(), *layer.named_buffers())
               if not name.endswith("bias"))


@pytest.fixture(scope="module")
def reference(sd3_dir: Path) -> dict[str, Any]:
    pipe, _ = _load(sd3_dir, None)
    linears = _block_linears(pipe.transformer) + _block_linears(pipe.text_encoder_3)
    return {
        "image": _generate(pipe),
        "names": {n for n, _ in linears},
    }


#: method -> (torch storage dtype name of a quantised layer's weight, largest mean |difference|
#: from the unquantised image, in 0..255 levels).  The bound is loose (these are random
#: weights, not a picture); the printed differences are the measurement.
_EXPECTED = {
    "fp8": ("float8_e4m3fn", 1.0),
    "int8": ("int8", 0.2),
    "nf4": ("uint8", 1.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp8", "int8", "nf4"])
def test_each_method_quantises_and_the_engine_still_inpaints(
    method: str, sd3_dir: Path, reference: dict[str, Any],
) -> None:
    import torch

    if method != "fp8":
        _need_sdnq()
    pipe, notes = _load(sd3_dir, f"{method},text_encoder={method}")
    assert [n.split(":")[0] for n in notes] == ["transformer", "text_encoder_3"], notes

    linears = _block_linears(pipe.transformer) + _block_linears(pipe.text_encoder_3)
    assert {n for n, _ in linears} == reference["names"]
    storage, bound = _EXPECTED[method]
    quantised = []
    for name, layer in linears:
        if name.endswith(".wo") or (method == "fp8" and "norm" in name):
            # T5's `wo` stays out of every quantiser (its `_keep_in_fp32_modules`); diffusers'
            # fp8 casting leaves the AdaLN layers (`norm1.linear`, ...) alone.
            assert type(layer).__name__ == "Linear" and layer.weight.dtype == torch.float32, name
            continue
        assert str(layer.weight.dtype) == f"torch.{storage}", (name, layer.weight.dtype)
        if method != "fp8":
            assert type(layer).__name__ == "SDNQLinear", name
        quantised.append(layer)
    assert len(quantised) >= len(linears) * 3 // 4  # every attention and feed-forward layer
    weights = sum(m.in_features * m.out_features for m in quantised)
    stored = sum(_layer_bytes(m) for m in quantised)
    print(f"\n{method}: {weights} block weights, {4 * weights} -> {stored} bytes (float32 -> {method})")
    # The tiny layers are 128 wide: int8 keeps a scale per row here (1 + 4/128 bytes a weight),
    # not per 1024 weights as on real ones (`test_quantized_bytes_is_what_sdnq_stores`).
    expected = quantized_bytes(weights, method)
    assert stored == expected if method != "int8" else expected < stored <= expected * 1.04
    assert stored < 4 * weights / 3
    image = _generate(pipe)
    difference = float(np.abs(image - reference["image"]).mean())
    print(f"{method}: mean |difference| from the unquantised output: {difference:.3f} of 255")
    assert 0.0 < difference < bound
    if method == "fp8":  # fp8 at rest again after the forward (the casting hook puts it back)
        assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in quantised)
        assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder_3.dtype == torch.float32


def test_after_load_quantises_a_pipeline_loaded_without_the_config(sd3_dir: Path) -> None:
    """`from_single_file` takes no quantisation config: `after_load` quantises then."""
    _need_sdnq()
    import torch
    from diffusers import StableDiffusion3InpaintPipeline

    plan = pipeline_quantization(parse_quantize("int8"), "sd3", "cpu")
    assert plan.config is not None and plan.methods == {"transformer": "int8"}
    pipe = StableDiffusion3InpaintPipeline.from_pretrained(str(sd3_dir), dtype=torch.float32)
    assert not any(type(m).__name__.startswith("SDNQ") for m in pipe.transformer.modules())
    notes = plan.after_load(pipe)
    assert notes[0].startswith("transformer: int8 weights (SDNQ int8), after loading"), notes
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.int8
    assert plan.after_load(pipe)[0].startswith("transformer: int8 weights (SDNQ int8),")  # once is enough
    assert "after loading" not in plan.after_load(pipe)[0]


@pytest.mark.slow
def test_fp8_keeps_a_language_model_encoders_prompt_dtype(tmp_path: Path) -> None:
    """FLUX.2 klein's Qwen3: transformers gives a model the dtype of its first weights (the
    token embedding) and the pipeline casts the prompt embeddings to it; cast to fp8 too,
    the prompt would reach the transformer in fp8."""
    import torch
    from diffusers import Flux2KleinInpaintPipeline

    from inpaintd.testmodel import make_flux2_klein_test_model

    folder = make_flux2_klein_test_model(tmp_path / "klein")
    ref = Flux2KleinInpaintPipeline.from_pretrained(str(folder), dtype=torch.float32)
    expected = ref.encode_prompt("a cat", device="cpu")[0]
    pipe = Flux2KleinInpaintPipeline.from_pretrained(str(folder), dtype=torch.float32)
    config, after_load = pipeline_quantization(parse_quantize("fp8,text_encoder=fp8"), "flux2-klein", "cpu")
    assert config is None
    notes = after_load(pipe)
    assert [n.split(":")[0] for n in notes] == ["transformer", "text_encoder"]
    assert pipe.text_encoder.model.layers[0].mlp.up_proj.weight.dtype == torch.float8_e4m3fn
    assert pipe.text_encoder.dtype == torch.float32
    embeds = pipe.encode_prompt("a cat", device="cpu")[0]
    assert embeds.dtype == torch.float32
    difference = float((embeds - expected).abs().mean().detach() / expected.abs().mean().detach())
    print(f"\nfp8 Qwen3 prompt embeddings: mean relative difference {difference:.3f}")
    assert 0.0 < difference < 0.2
    image = _generate_one(pipe)
    assert image.shape == (TEST_NATIVE_SIZE, TEST_NATIVE_SIZE, 3)


@pytest.mark.slow
def test_fp8_keeps_z_images_prompt_lists_in_the_compute_dtype(tmp_path: Path) -> None:
    """Z-Image's Qwen3 (a bare `Qwen3Model`) cast to fp8 as `--quantize fp8,text_encoder=fp8`
    does it: its embedding stays in the compute dtype, so the listed prompt embeddings (and the
    latents the pipeline types after them) stay float32, and a job runs."""
    import torch
    from diffusers import ZImageInpaintPipeline

    from inpaintd.testmodel import make_z_image_test_model

    folder = make_z_image_test_model(tmp_path / "z-image")
    ref = ZImageInpaintPipeline.from_pretrained(str(folder), dtype=torch.float32)
    expected = ref.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)[0][0]
    pipe = ZImageInpaintPipeline.from_pretrained(str(folder), dtype=torch.float32)
    config, after_load = pipeline_quantization(parse_quantize("fp8,text_encoder=fp8"), "z-image", "cpu")
    assert config is None
    assert [n.split(":")[0] for n in after_load(pipe)] == ["transformer", "text_encoder"]
    assert pipe.text_encoder.layers[0].mlp.up_proj.weight.dtype == torch.float8_e4m3fn
    assert pipe.transformer.layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    embeds = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)[0][0]
    assert embeds.dtype == torch.float32 and embeds.shape == expected.shape
    difference = float((embeds - expected).abs().mean().detach() / expected.abs().mean().detach())
    assert 0.0 < difference < 0.2
    image = _generate_one(pipe, guidance=4.0)
    assert image.shape == (TEST_NATIVE_SIZE, TEST_NATIVE_SIZE, 3)


def _generate_one(pipe: Any, guidance: float = 1.0) -> np.ndarray:
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    size = TEST_NATIVE_SIZE
    image = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    engine = DiffusersEngine.from_pipeline(pipe, "quantize-klein", device="cpu")
    out = engine.generate(EngineRequest(
        image=image, mask=mask, prompt="a cat", negative_prompt="", seeds=[1], steps=2,
        guidance_scale=guidance, strength=1.0, scheduler="default",
    ), lambda stage, step, total: None, lambda: False)
    return out.images[0]


def test_components_the_model_lacks_are_noted_not_configured(sd3_dir: Path) -> None:
    """SD 3 without its T5 (a common way to save 9.5 GB): `text_encoder=` has nothing to do."""
    import torch
    from diffusers import StableDiffusion3InpaintPipeline

    plan = pipeline_quantization(parse_quantize("fp8,text_encoder=int8"), "sd3", "cpu", absent={"text_encoder_3"})
    assert plan.config is None and plan.methods == {"transformer": "fp8"}
    pipe = StableDiffusion3InpaintPipeline.from_pretrained(
        str(sd3_dir), text_encoder_3=None, tokenizer_3=None, dtype=torch.float32, quantization_config=plan.config,
    )
    notes = plan.after_load(pipe)
    assert notes[0] == "text_encoder_3: not in this model, nothing to quantise"
    assert notes[1].startswith("transformer: fp8 storage, computed in float32") and " layers, " in notes[1], notes


def test_fp8_runs_a_unet_family_through_the_engine(tiny_model_dir: Path) -> None:
    """The UNet families run inpaintd's own loop (`sd_inpaint.InpaintLoop`), not the stock
    pipeline: an fp8 UNet works there too (SDNQ's size floor skips every layer of this tiny
    UNet, so fp8 is the method that changes it)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    def load(text: str | None) -> Any:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(tiny_model_dir), dtype=torch.float32, safety_checker=None, requires_safety_checker=False,
        )
        if text:
            notes = pipeline_quantization(parse_quantize(text), "sd15", "cpu").after_load(pipe)
            assert notes[0].startswith("Stable Diffusion 1.x has no large text encoder"), notes
            assert notes[1].startswith("unet: fp8 storage"), notes
        return pipe

    reference = _generate(load(None))
    pipe = load("fp8,text_encoder=fp8")
    assert pipe.unet.down_blocks[0].resnets[0].conv1.weight.dtype == torch.float8_e4m3fn
    difference = float(np.abs(_generate(pipe) - reference).mean())
    print(f"\nfp8 UNet: mean |difference| from the unquantised output: {difference:.3f} of 255")
    assert 0.0 < difference < 4.0


def test_the_engine_quantises_as_it_loads_and_refuses_a_plan_before_reading(sd3_dir: Path) -> None:
    """`DiffusersEngine(quantize=...)`, as `serve --quantize` builds it: a folder's
    components quantised as they are read (no "after loading"), said in the speed notes;
    a plan naming a component the family lacks refused as the model's error, before any
    weights are read (no pipeline is built)."""
    _need_sdnq()
    import torch

    from inpaintd.engines.base import EngineError
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(sd3_dir, device="cpu", quantize=parse_quantize("int8,text_encoder=nf4"))
    try:
        notes = [n for n in engine.speed_notes if n.startswith("quantised")]
        assert [n.split(":")[0] for n in notes] == ["quantised transformer", "quantised text_encoder_3"], notes
        assert all("after loading" not in n for n in notes), notes
        assert engine.pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.int8
        assert type(engine.pipe.text_encoder_3.encoder.block[0].layer[0].SelfAttention.q).__name__ == "SDNQLinear"
        assert np.abs(_generate(engine.pipe) - _generate(DiffusersEngine(sd3_dir, device="cpu").pipe)).mean() < 2.0
    finally:
        engine.close()
    with pytest.raises(EngineError) as err:
        DiffusersEngine(sd3_dir, device="cpu", quantize={"unet": "int8"})
    assert err.value.code == "model_refused"
    assert "has no component 'unet'" in err.value.message and "transformer" in err.value.message
