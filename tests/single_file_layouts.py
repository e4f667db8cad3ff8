"""The tiny flow-matching pipelines written as the single files people download.

- SD 3.x as Stability ships `sd3.5_large.safetensors`: the MMDiT under
  `model.diffusion_model.joint_blocks.*` with the VAE under `first_stage_model.*` (LDM
  layout), and optionally the T5 encoder under `text_encoders.t5xxl.transformer.*`.
- FLUX.1 as BFL ships `flux1-fill-dev.safetensors`: the transformer alone, bare names
  (`double_blocks.*`, `single_blocks.*`, `img_in.weight`); ComfyUI's saves put
  `model.diffusion_model.` in front.
- Z-Image as ComfyUI's `z_image_turbo_bf16.safetensors` holds it (and bare re-saves): the
  transformer alone, one fused `attention.qkv` per block, `x_embedder`/`final_layer` without
  diffusers' per-patch-size `all_*.2-1.` dicts, bare or with `model.diffusion_model.` in front.
- Chroma as lodestones ship `Chroma1-HD.safetensors`: the transformer alone in BFL's FLUX.1
  names without the modulation linears (`img_mod`, `txt_mod`, `modulation`, the final
  `adaLN_modulation`), plus the approximator `distilled_guidance_layer.*` (`in_layer`/
  `out_layer`, `norms.N.scale`); bare, or with `model.diffusion_model.` in ComfyUI's saves.
- FLUX.2 klein as BFL ships `flux-2-klein-4b.safetensors`: the transformer alone in BFL's
  FLUX.2 names (`double_blocks.*` with fused `qkv`, `single_blocks.*.linear1`, the shared
  `double_stream_modulation_*`/`single_stream_modulation`, no biases), bare; ComfyUI's saves
  put `model.diffusion_model.` in front.
- Qwen-Image-Edit as ComfyUI's `qwen_image_edit_bf16.safetensors`: the transformer alone in
  diffusers' own names, with `model.diffusion_model.` in front or bare (the GGUFs).
- GGUF as city96's `flux1-fill-dev-Q8_0.gguf` / `sd3.5_large-Q8_0.gguf`: the same bare
  names, the Linear layers' 2-D weights quantised (Q8_0) or all of them F16.

The key layouts are the inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`,
`convert_flux_transformer_checkpoint_to_diffusers`, `convert_chroma_transformer_checkpoint_to_diffusers`,
`convert_flux2_transformer_checkpoint_to_diffusers` and
`convert_z_image_transformer_checkpoint_to_diffusers` (diffusers/loaders/single_file_utils.py;
Qwen-Image's mapping there is the identity),
written for any config so that the tiny ones round-trip: every parameter is renamed or the
call fails, and loading the file through diffusers must give the tiny model's tensors back.

One trap: diffusers' FLUX and Chroma converters fix the transformer width at FLUX.1's 3072
(`inner_dim = 3072`, used to split each single block's fused `linear1`), so they cannot
convert the tiny 32-wide models at all.  `flux_converter_for_any_width` swaps in the same
functions with the width read from the checkpoint, for the tests' duration; real FLUX.1 and
Chroma files are 3072 wide and take diffusers' own.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from inpaintd.testmodel import _component_weights, _ldm_vae_key, install_in_hub_cache

DENOISER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
T5_PREFIX = "text_encoders.t5xxl.transformer."


def _config(folder: Path, component: str) -> dict[str, Any]:
    return json.loads((folder / component / "config.json").read_text(encoding="utf-8"))


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """AdaLayerNormContinuous: the original says (shift, scale), diffusers (scale, shift);
    swapping the halves is its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


class _Renamer:
    """Moves tensors from a diffusers state dict to original names; every source tensor
    must be taken, and no original name may be written twice."""

    def __init__(self, source: dict[str, torch.Tensor]) -> None:
        self.source = dict(source)
        self.out: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        return self.source.pop(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.out:
            raise ValueError(f"two tensors map to {key!r}")
        self.out[key] = value

    def move(self, old: str, new: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in self.source:
                self.put(f"{new}.{suffix}", self.take(f"{old}.{suffix}"))

    def fuse(self, olds: list[str], new: str) -> None:
        """Concatenate `olds` (their weights, and biases where they have them) into `new`."""
        for suffix in ("weight", "bias"):
            if f"{olds[0]}.{suffix}" in self.source:
                self.put(f"{new}.{suffix}", torch.cat([self.take(f"{o}.{suffix}") for o in olds], dim=0))

    def keep_rest(self) -> None:
        """Every tensor not taken yet keeps its own name."""
        for key in list(self.source):
            self.put(key, self.take(key))

    def done(self) -> dict[str, torch.Tensor]:
        if self.source:
            raise ValueError(f"no original name for {sorted(self.source)[:5]}")
        return self.out


# -- SD 3.x (Stability's MMDiT layout) ------------------------------------------------------


def sd3_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel state dict in Stability's names (no prefix)."""
    r = _Renamer(state)
    layers = int(config["num_layers"])
    dual = set(config.get("dual_attention_layers") or ())
    r.put("pos_embed", r.take("pos_embed.pos_embed"))
    r.move("pos_embed.proj", "x_embedder.proj")
    r.move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    r.move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    r.move("context_embedder", "context_embedder")
    r.move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    r.move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    for i in range(layers):
        b, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        last = i == layers - 1
        r.fuse([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"], f"{x}.attn.qkv")
        r.fuse([f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"], f"{c}.attn.qkv")
        r.move(f"{b}.attn.norm_q", f"{x}.attn.ln_q")
        r.move(f"{b}.attn.norm_k", f"{x}.attn.ln_k")
        r.move(f"{b}.attn.norm_added_q", f"{c}.attn.ln_q")
        r.move(f"{b}.attn.norm_added_k", f"{c}.attn.ln_k")
        r.move(f"{b}.attn.to_out.0", f"{x}.attn.proj")
        if i in dual:
            r.fuse([f"{b}.attn2.to_q", f"{b}.attn2.to_k", f"{b}.attn2.to_v"], f"{x}.attn2.qkv")
            r.move(f"{b}.attn2.norm_q", f"{x}.attn2.ln_q")
            r.move(f"{b}.attn2.norm_k", f"{x}.attn2.ln_k")
            r.move(f"{b}.attn2.to_out.0", f"{x}.attn2.proj")
        r.move(f"{b}.norm1.linear", f"{x}.adaLN_modulation.1")
        r.move(f"{b}.ff.net.0.proj", f"{x}.mlp.fc1")
        r.move(f"{b}.ff.net.2", f"{x}.mlp.fc2")
        if last:  # the context stream's last block only conditions (context_pre_only)
            for suffix in ("weight", "bias"):
                r.put(f"{c}.adaLN_modulation.1.{suffix}", _swap_halves(r.take(f"{b}.norm1_context.linear.{suffix}")))
        else:
            r.move(f"{b}.attn.to_add_out", f"{c}.attn.proj")
            r.move(f"{b}.norm1_context.linear", f"{c}.adaLN_modulation.1")
            r.move(f"{b}.ff_context.net.0.proj", f"{c}.mlp.fc1")
            r.move(f"{b}.ff_context.net.2", f"{c}.mlp.fc2")
    r.move("proj_out", "final_layer.linear")
    for suffix in ("weight", "bias"):
        r.put(f"final_layer.adaLN_modulation.1.{suffix}", _swap_halves(r.take(f"norm_out.linear.{suffix}")))
    return r.done()


def vae_original(folder: Path) -> dict[str, torch.Tensor]:
    """The VAE in LDM names (mid-block attention as 1x1 convs), as SD 3.x files carry it."""
    config = _config(folder, "vae")
    out = {}
    for key, value in _component_weights(folder, "vae").items():
        ldm = _ldm_vae_key(key, config)
        if ".mid.attn_1." in ldm and value.ndim == 2:
            value = value[:, :, None, None]
        out[ldm] = value
    return out


def write_sd3_file(folder: Path, out: Path, *, vae: bool = True, t5: bool = False, prefix: str = DENOISER_PREFIX,
                   dtype: torch.dtype | None = None) -> Path:
    """The tiny SD 3 pipeline in `folder` as Stability's single file (transformer + VAE by
    default; with `t5`, its T5 encoder too, as the `..._incl_clips_t5xxlfp16` files)."""
    tensors = {prefix + k: v for k, v in sd3_original(_component_weights(folder, "transformer"),
                                                       _config(folder, "transformer")).items()}
    if vae:
        tensors.update({VAE_PREFIX + k: v for k, v in vae_original(folder).items()})
    if t5:  # as in real files: the tied embedding under T5's own name, `shared`
        t5_state = _component_weights(folder, "text_encoder_3")
        t5_state.setdefault("shared.weight", t5_state.pop("encoder.embed_tokens.weight", None))
        tensors.update({T5_PREFIX + k: v for k, v in t5_state.items() if v is not None})
    return _save(tensors, out, dtype, None)


# -- FLUX.1 (BFL's layout) ------------------------------------------------------------------


def flux_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel state dict in BFL's names (no prefix)."""
    r = _Renamer(state)
    r.move("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    r.move("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    r.move("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    r.move("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    r.move("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
    r.move("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    _flux1_blocks(r, config)
    for suffix in ("weight", "bias"):
        r.put(f"final_layer.adaLN_modulation.1.{suffix}", _swap_halves(r.take(f"norm_out.linear.{suffix}")))
    return r.done()


def _flux1_blocks(r: _Renamer, config: dict[str, Any]) -> None:
    """FLUX.1's embedders, double and single blocks and output linear, BFL's names; each
    block's modulation linear where it has one (Chroma's have none)."""
    r.move("context_embedder", "txt_in")
    r.move("x_embedder", "img_in")
    for i in range(int(config["num_layers"])):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        r.move(f"{b}.norm1.linear", f"{d}.img_mod.lin")
        r.move(f"{b}.norm1_context.linear", f"{d}.txt_mod.lin")
        r.fuse([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"], f"{d}.img_attn.qkv")
        r.fuse([f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"], f"{d}.txt_attn.qkv")
        _qk_norms(r, b, d)
        r.move(f"{b}.ff.net.0.proj", f"{d}.img_mlp.0")
        r.move(f"{b}.ff.net.2", f"{d}.img_mlp.2")
        r.move(f"{b}.ff_context.net.0.proj", f"{d}.txt_mlp.0")
        r.move(f"{b}.ff_context.net.2", f"{d}.txt_mlp.2")
        r.move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj")
        r.move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj")
    for i in range(int(config["num_single_layers"])):
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        r.move(f"{b}.norm.linear", f"{s}.modulation.lin")
        r.fuse([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"], f"{s}.linear1")
        r.put(f"{s}.norm.query_norm.scale", r.take(f"{b}.attn.norm_q.weight"))
        r.put(f"{s}.norm.key_norm.scale", r.take(f"{b}.attn.norm_k.weight"))
        r.move(f"{b}.proj_out", f"{s}.linear2")
    r.move("proj_out", "final_layer.linear")


def _qk_norms(r: _Renamer, block: str, double: str) -> None:
    """A FLUX double block's four RMS norms of queries and keys (FLUX.1's and FLUX.2's alike)."""
    r.put(f"{double}.img_attn.norm.query_norm.scale", r.take(f"{block}.attn.norm_q.weight"))
    r.put(f"{double}.img_attn.norm.key_norm.scale", r.take(f"{block}.attn.norm_k.weight"))
    r.put(f"{double}.txt_attn.norm.query_norm.scale", r.take(f"{block}.attn.norm_added_q.weight"))
    r.put(f"{double}.txt_attn.norm.key_norm.scale", r.take(f"{block}.attn.norm_added_k.weight"))


def _transformer_file(layout: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]],
                      folder: Path, out: Path, prefix: str, metadata: dict[str, str] | None = None) -> Path:
    """The tiny transformer in `folder` in `layout`'s original names, each after `prefix`, as one file."""
    tensors = layout(_component_weights(folder, "transformer"), _config(folder, "transformer"))
    return _save({prefix + k: v for k, v in tensors.items()}, out, None, metadata)


def write_flux_file(folder: Path, out: Path, *, prefix: str = "", metadata: dict[str, str] | None = None) -> Path:
    """The tiny FLUX.1 transformer in `folder` as BFL's file (`prefix` "model.diffusion_model."
    for ComfyUI's layout)."""
    return _transformer_file(flux_original, folder, out, prefix, metadata)


# -- Chroma (lodestones' layout: FLUX.1's names, pruned, with the approximator) ----------------


def chroma_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A ChromaTransformer2DModel state dict in the original names (no prefix)."""
    r = _Renamer(state)
    r.move("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj")
    r.move("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj")
    for i in range(int(config["approximator_layers"])):
        g = f"distilled_guidance_layer.layers.{i}"
        r.move(f"{g}.linear_1", f"{g}.in_layer")
        r.move(f"{g}.linear_2", f"{g}.out_layer")
        r.put(f"distilled_guidance_layer.norms.{i}.scale", r.take(f"distilled_guidance_layer.norms.{i}.weight"))
    _flux1_blocks(r, config)  # no modulation linears: the approximator gives them
    return r.done()


def write_chroma_file(folder: Path, out: Path, *, prefix: str = "") -> Path:
    """The tiny Chroma transformer in `folder` as `Chroma1-HD.safetensors` holds it (`prefix`
    "model.diffusion_model." for ComfyUI's saves)."""
    return _transformer_file(chroma_original, folder, out, prefix)


# -- Z-Image (ComfyUI's layout) ---------------------------------------------------------------


def z_image_original(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A ZImageTransformer2DModel state dict (2x2 patches only) in the original names."""
    r = _Renamer(state)
    r.move("all_x_embedder.2-1", "x_embedder")
    r.move("all_final_layer.2-1.linear", "final_layer.linear")
    r.move("all_final_layer.2-1.adaLN_modulation.1", "final_layer.adaLN_modulation.1")
    blocks = sorted({k.rsplit(".attention.", 1)[0] for k in r.source if ".attention.to_q." in k})
    for b in blocks:
        r.fuse([f"{b}.attention.to_{x}" for x in "qkv"], f"{b}.attention.qkv")
        r.move(f"{b}.attention.to_out.0", f"{b}.attention.out")
        r.move(f"{b}.attention.norm_q", f"{b}.attention.q_norm")
        r.move(f"{b}.attention.norm_k", f"{b}.attention.k_norm")
    r.keep_rest()  # embedders, pads, norms, feed-forwards, adaLN keep their names
    return r.done()


def write_z_image_file(folder: Path, out: Path, *, prefix: str = DENOISER_PREFIX) -> Path:
    """The tiny Z-Image transformer in `folder` as ComfyUI's file (`prefix` "" for bare names)."""
    return _transformer_file(z_image_original, folder, out, prefix)


# -- FLUX.2 klein (BFL's layout) --------------------------------------------------------------


def flux2_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A Flux2Transformer2DModel state dict in BFL's FLUX.2 names (no prefix; FLUX.2's
    Linear layers have no biases, and its modulation is one set shared by all blocks)."""
    r = _Renamer(state)
    r.move("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer")
    r.move("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer")
    r.move("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer")  # FLUX.2 dev only
    r.move("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    r.move("double_stream_modulation_img.linear", "double_stream_modulation_img.lin")
    r.move("double_stream_modulation_txt.linear", "double_stream_modulation_txt.lin")
    r.move("single_stream_modulation.linear", "single_stream_modulation.lin")
    r.move("x_embedder", "img_in")
    r.move("context_embedder", "txt_in")
    for i in range(int(config["num_layers"])):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        r.fuse([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"], f"{d}.img_attn.qkv")
        r.fuse([f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"], f"{d}.txt_attn.qkv")
        _qk_norms(r, b, d)
        r.move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj")
        r.move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj")
        r.move(f"{b}.ff.linear_in", f"{d}.img_mlp.0")
        r.move(f"{b}.ff.linear_out", f"{d}.img_mlp.2")
        r.move(f"{b}.ff_context.linear_in", f"{d}.txt_mlp.0")
        r.move(f"{b}.ff_context.linear_out", f"{d}.txt_mlp.2")
    for i in range(int(config["num_single_layers"])):
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        r.move(f"{b}.attn.to_qkv_mlp_proj", f"{s}.linear1")  # fused in diffusers too: no width to split by
        r.move(f"{b}.attn.to_out", f"{s}.linear2")
        r.put(f"{s}.norm.query_norm.scale", r.take(f"{b}.attn.norm_q.weight"))
        r.put(f"{s}.norm.key_norm.scale", r.take(f"{b}.attn.norm_k.weight"))
    r.move("proj_out", "final_layer.linear")
    r.put("final_layer.adaLN_modulation.1.weight", _swap_halves(r.take("norm_out.linear.weight")))
    return r.done()


def write_flux2_file(folder: Path, out: Path, *, prefix: str = "", metadata: dict[str, str] | None = None) -> Path:
    """The tiny klein transformer in `folder` as BFL's `flux-2-klein-4b.safetensors` holds it
    (`prefix` "model.diffusion_model." for ComfyUI's saves)."""
    return _transformer_file(flux2_original, folder, out, prefix, metadata)


# -- Qwen-Image-Edit (diffusers' own names, as ComfyUI's files keep them) ---------------------


def qwen_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A QwenImageTransformer2DModel state dict as ComfyUI's `qwen_image_edit_bf16.safetensors`
    and the GGUFs hold it: diffusers' own names (diffusers' single-file mapping for Qwen-Image
    is the identity), every tensor kept."""
    r = _Renamer(state)
    r.keep_rest()
    return r.done()


def write_qwen_file(folder: Path, out: Path, *, prefix: str = DENOISER_PREFIX,
                    metadata: dict[str, str] | None = None) -> Path:
    """The tiny Qwen-Image-Edit transformer in `folder` as ComfyUI's file (`prefix` "" for bare names)."""
    return _transformer_file(qwen_original, folder, out, prefix, metadata)


def _save(tensors: dict[str, torch.Tensor], out: Path, dtype: torch.dtype | None, metadata: dict[str, str] | None) -> Path:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    ready = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
             for k, v in tensors.items()}
    save_file(ready, str(out), metadata={"format": "pt", **(metadata or {})})
    return out


# -- GGUF --------------------------------------------------------------------------------


def write_gguf(tensors: dict[str, torch.Tensor], out: Path, arch: str, quant: str = "Q8_0") -> Path:
    """`tensors` (original names) as city96's GGUFs hold them: 2-D weights whose rows split
    into 32-value blocks quantised to `quant` ("Q8_0"), or everything "F16"; the rest
    (biases, norms, convolutions, the position table) F32."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(str(out), arch=arch)
    writer.add_string("general.name", "tiny")  # city96's files say little more
    for name, value in tensors.items():
        data = value.detach().to(torch.float32).numpy()
        if quant == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        elif data.ndim == 2 and data.shape[-1] % 32 == 0 and name.endswith(".weight"):
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_of(folder: Path, family: str, out: Path, quant: str = "Q8_0") -> Path:
    """The tiny `family` ("sd3", "flux", "chroma", "flux2", "qwen_image" or "lumina2", Z-Image's)
    transformer in `folder` as a GGUF file (`family` is also the GGUF's architecture)."""
    state, config = _component_weights(folder, "transformer"), _config(folder, "transformer")
    layouts = {"sd3": sd3_original, "flux": flux_original, "chroma": chroma_original, "flux2": flux2_original,
               "qwen_image": qwen_original, "lumina2": z_image_original}
    return write_gguf(layouts[family](state, config), out, family, quant)


# -- the converter's fixed width, and the reference repo in a hub cache -----------------------


@contextmanager
def flux_converter_for_any_width() -> Iterator[None]:
    """diffusers' FLUX and Chroma converters with the width read from the checkpoint
    (`txt_in.weight`'s rows; also a GGUF's, whose rows stay rows) instead of FLUX.1's 3072,
    for the duration."""
    from diffusers.loaders import single_file_model, single_file_utils

    fixed = "inner_dim = 3072"
    swapped: list[tuple[dict[str, Any], Any]] = []
    for cls_name, original in (
        ("FluxTransformer2DModel", single_file_utils.convert_flux_transformer_checkpoint_to_diffusers),
        ("ChromaTransformer2DModel", single_file_utils.convert_chroma_transformer_checkpoint_to_diffusers),
    ):
        source = inspect.getsource(original)
        if fixed not in source:  # a diffusers that reads the width itself
            continue
        source = source.replace(fixed, 'inner_dim = checkpoint["txt_in.weight"].shape[0]')
        namespace = dict(vars(single_file_utils))
        exec(compile(source, single_file_utils.__file__, "exec"), namespace)  # noqa: S102  (diffusers' own code)
        entry = single_file_model.SINGLE_FILE_LOADABLE_CLASSES[cls_name]
        swapped.append((entry, entry["checkpoint_mapping_fn"]))
        entry["checkpoint_mapping_fn"] = namespace[original.__name__]
    try:
        yield
    finally:
        for entry, before in swapped:
            entry["checkpoint_mapping_fn"] = before


def install_reference(folder: Path, hub: Path, repo: str, *, weights: tuple[str, ...] = ()) -> Path:
    """`folder` in the hub cache as `repo`, the way `hf download` leaves it: the configs,
    tokenizers and scheduler, and the weights of the components in `weights` only."""
    staging = hub.parent / f"staging-{repo.replace('/', '--')}"
    shutil.rmtree(staging, ignore_errors=True)

    def ignore(directory: str, names: list[str]) -> list[str]:
        part = Path(directory).name
        return [n for n in names if n.endswith((".safetensors", ".bin")) and part not in weights]

    shutil.copytree(folder, staging, ignore=ignore)
    try:
        return install_in_hub_cache(staging, hub, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
