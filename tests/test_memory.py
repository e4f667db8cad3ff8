"""Memory estimates from the files alone, `auto`'s choice, and the `models` entry fields.

The parameter counts are exact (the safetensors headers), so they are checked against the
loaded pipeline's own count; the peaks are estimates, so what is checked is their order
(each mode leaner than the one before), that quantisation lowers them, and `auto`'s rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inpaintd.engines.base import NO_DEFAULTS
from inpaintd.memory import (
    BYTES_PER_PARAM,
    MODES,
    Weights,
    choose,
    estimate,
    folder_weights,
    report,
    single_file_weights,
    step_down,
    weights_of,
)
from inpaintd.models import ModelRegistry


@pytest.fixture(scope="module")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from inpaintd.testmodel import make_family_test_model

    return make_family_test_model(tmp_path_factory.mktemp("memory") / "sd3", "sd3")


def test_weights_of_splits_blocks_leaves_and_the_rest() -> None:
    shapes = {
        "embed.weight": [10, 4],  # 40, outside any block
        "blocks.0.attn.weight": [4, 4],  # 16
        "blocks.0.attn.bias": [4],  # 4
        "blocks.0.mlp.weight": [8, 4],  # 32
        "blocks.1.attn.weight": [4, 4],  # 16
        "norm.weight": [4],  # 4
    }
    w = weights_of("transformer", shapes)
    assert w.params == 112
    assert w.largest_block == 52 and w.outside_blocks == 44
    assert w.largest_leaf == 40  # the embedding


def _flux_like() -> list[Weights]:
    """FLUX.1's published sizes: a 12 B transformer of 57 blocks, a 4.7 B T5, CLIP, VAE."""
    return [
        Weights("transformer", 11_900_000_000, largest_block=340_000_000, outside_blocks=60_000_000, largest_leaf=28_000_000),
        Weights("text_encoder_2", 4_760_000_000, largest_block=200_000_000, outside_blocks=33_000_000, largest_leaf=33_000_000),
        Weights("text_encoder", 123_000_000, largest_block=7_000_000, outside_blocks=40_000_000, largest_leaf=38_000_000),
        Weights("vae", 84_000_000, largest_block=20_000_000, outside_blocks=5_000_000, largest_leaf=2_400_000),
    ]


def test_each_mode_is_leaner_than_the_one_before_and_quantising_lowers_the_peak() -> None:
    weights = _flux_like()
    peak = estimate(weights, "flux-fill", precision="bf16", large_text_encoder="text_encoder_2")
    values = [peak[m] for m in MODES]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    print("\n[memory] FLUX.1-sized, bf16, estimated peaks: " + ", ".join(f"{m} {peak[m] / 1e9:.1f} GB" for m in MODES))
    # bf16 weights 33.7 GB: the published bf16 peak of FLUX.1 dev at 1024^2 is 36.2 GB
    assert 33e9 < peak["gpu"] < 40e9
    nf4 = estimate(weights, "flux-fill", precision="bf16", quantize={"denoiser": "nf4", "text_encoder": "int8"},
                   large_text_encoder="text_encoder_2")
    assert nf4["gpu"] < peak["gpu"] - 15e9
    # offload holds the largest component: the transformer, quantised or not
    assert nf4["offload"] == pytest.approx(11_900_000_000 * BYTES_PER_PARAM["nf4"] + (peak["offload"] - 11.9e9 * 2), rel=1e-6)


def test_auto_picks_the_first_mode_that_fits() -> None:
    peak = {"gpu": 36e9, "offload": 28e9, "group": 6e9, "sequential": 5e9}
    assert choose(peak, 80e9)[0] == "gpu"
    assert choose(peak, 32e9)[0] == "offload"
    assert choose(peak, 24e9)[0] == "group"
    mode, reason = choose(peak, 5.2e9)
    assert mode == "sequential" and "exceeds" in reason
    assert choose(peak, None) == ("gpu", "not a CUDA device: the model stays whole in the device's memory")
    assert [step_down(m) for m in MODES] == ["offload", "group", "sequential", None]


def test_report_on_the_wire() -> None:
    rep = report(_flux_like(), "flux-fill", precision="bf16", free=24e9, memory="auto",
                 large_text_encoder="text_encoder_2")
    wire = rep.to_wire()
    assert wire["auto"] == "group" and wire["mode"] == "group"
    assert wire["bytes"]["bf16"] > wire["bytes"]["fp8"] > wire["bytes"]["nf4"]
    assert wire["host"]["gpu"] == 0 and wire["host"]["offload"] > 30e9
    assert report(_flux_like(), "flux-fill", precision="bf16", free=24e9, memory="offload").mode == "offload"


def test_single_file_components_by_key_prefix(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "whatever-name.safetensors"
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 3, 3), np.float16),
        "first_stage_model.decoder.conv_in.weight": np.zeros((4, 4, 3, 3), np.float16),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": np.zeros((10, 8), np.float16),
    }, str(path))
    parts = {w.name: w.params for w in single_file_weights(path) or []}
    assert parts == {"denoiser": 288, "vae": 144, "text_encoder": 80}


def test_a_folder_is_counted_exactly(tiny_sd3_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from diffusers import DiffusionPipeline

    counted = {w.name: w.params for w in folder_weights(tiny_sd3_dir) or []}
    pipe = DiffusionPipeline.from_pretrained(tiny_sd3_dir)
    actual = {
        # saved tensors (parameters and persistent buffers), tied ones (T5's embeddings) once
        name: sum({t.data_ptr(): t.numel() for t in module.state_dict().values()}.values())
        for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)
    }
    assert counted == actual


def test_models_entry_carries_defaults_takes_and_memory(tiny_sd3_dir: Path) -> None:
    registry = ModelRegistry([str(tiny_sd3_dir)], default=str(tiny_sd3_dir), device="cpu", memory="group")
    entry = registry.get(str(tiny_sd3_dir)).to_wire()
    assert entry["family"] == "sd3" and entry["label"] == "Stable Diffusion 3.5"
    assert entry["defaults"] == {"steps": 28, "guidance_scale": 3.5, "strength": 1.0, "scheduler": "default"}
    assert entry["takes"]["negative_prompt"] is True and entry["takes"]["textual_inversion"] is False
    assert entry["size_multiple"] == 16 and entry["schedulers"] == ["default", "euler"]
    mem = entry["memory"]
    assert mem["parameters"] == sum(mem["components"].values()) > 0
    assert mem["mode"] == "group" and mem["auto"] == "gpu"  # a CPU: auto keeps it whole
    classical = registry.get("patchmatch").to_wire()
    assert classical["defaults"] == NO_DEFAULTS and not any(classical["takes"].values()) and classical["memory"] is None


def test_a_half_imported_torch_reads_as_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket thread lists models while the worker thread may still be importing torch:
    a module without `cuda` yet means no CUDA, not an internal error (`inpaintd demo
    --test-model` hit this on its first hello)."""
    import types

    from inpaintd.memory import cuda_available
    from inpaintd.models import ModelRegistry

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert cuda_available() is False
    assert ModelRegistry([]).precision == "fp32"
