"""A tiny, randomly initialised inpainting pipeline, built offline.

Real weights are gigabytes and can not be downloaded on test machines, yet the diffusers
engine and the model registry should be exercised through the very code paths a real
checkpoint takes (`from_pretrained` on a diffusers folder).  The pipeline written here has
the layout of Stable Diffusion inpainting (9-channel UNet, CLIP text encoder and tokenizer,
a VAE with scale factor 8) at a few MB, so a 64x64 job takes a fraction of a second on CPU.
Its outputs are noise, but deterministic noise: the same seed gives the same pixels.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

#: The tiny model works at 64x64: latent 8x8, VAE scale factor 8.
TEST_NATIVE_SIZE = 64

_TEXT_HIDDEN = 32  # width of the tiny text encoder, i.e. the UNet's cross-attention width


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes (GPT-2's table)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _write_tokenizer(folder: Path) -> None:
    """Write a byte-level CLIP vocabulary that can tokenize any text, then save it properly.

    transformers 5 ignores vocab/merges file arguments to the constructor, so the files are
    written to disk and loaded with `from_pretrained`, which is also how a real one loads.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>")]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    raw = folder / "_raw_tokenizer"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (raw / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(raw), model_max_length=77)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()


def _text_encoder(vocab_size: int, *, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=_TEXT_HIDDEN,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def _vae(latent_channels: int = 4, **layout):
    from diffusers import AutoencoderKL

    # Four levels give the usual scale factor of 8; fewer would make the latent (and the
    # VAE's middle attention) large enough to take minutes at 512 px.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=TEST_NATIVE_SIZE,
        force_upcast=False,  # float32 throughout already; upcasting only adds warnings
        **layout,
    ).eval()


def _unet(in_channels: int, *, sdxl: bool):
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=TEST_NATIVE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
    )
    if not sdxl:
        return UNet2DConditionModel(cross_attention_dim=_TEXT_HIDDEN, **common).eval()
    # SDXL conditions on both text encoders (hidden states concatenated) and on the pooled
    # projection plus six size/crop numbers, each embedded into `addition_time_embed_dim`.
    time_dim = 8
    return UNet2DConditionModel(
        cross_attention_dim=2 * _TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + _TEXT_HIDDEN,
        **common,
    ).eval()


def make_test_model(
    path: str | Path, *, sdxl: bool = False, unet_in_channels: int = 9
) -> Path:
    """Write the tiny pipeline to `path` (a diffusers folder) and return it.

    `unet_in_channels=4` gives an ordinary text-to-image layout, which the inpaint pipelines
    handle by blending latents under the mask; 9 is the dedicated inpainting layout.
    """
    import torch
    from diffusers import (
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLInpaintPipeline,
    )
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if unet_in_channels not in (4, 9):
        raise ValueError("unet_in_channels must be 4 or 9")

    # The weights are random; a fixed seed makes them (and thus every output) repeatable.
    torch.manual_seed(0)
    _write_tokenizer(path / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(path / "_tok" / "tokenizer"))
    vocab_size = len(tokenizer)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    if sdxl:
        pipe = StableDiffusionXLInpaintPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(vocab_size),
            text_encoder_2=_text_encoder(vocab_size, with_projection=True),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=_unet(unet_in_channels, sdxl=True),
            scheduler=scheduler,
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=True,
        )
    else:
        pipe = StableDiffusionInpaintPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(vocab_size),
            tokenizer=tokenizer,
            unet=_unet(unet_in_channels, sdxl=False),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(str(path), safe_serialization=True)
    _remove_tree(path / "_tok")
    return path


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def install_in_hub_cache(model_dir: str | Path, cache_dir: str | Path, repo_id: str) -> Path:
    """Copy a diffusers folder into a Hugging Face hub cache as if `hf download` had put it there.

    Lets tests exercise repo-id lookup and `local_files_only` loading without a network.
    Returns the snapshot folder.
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot


# -- IP-Adapter -----------------------------------------------------------------------
#
# A plain IP-Adapter (h94/IP-Adapter's `ip-adapter_sd15` / `ip-adapter_sdxl`) is a CLIP
# vision encoder, a projection of its image embedding to 4 extra cross-attention tokens
# ("image_proj": `proj` Linear and `norm` LayerNorm), and a key and a value projection of
# those tokens per cross-attention layer of the UNet ("ip_adapter": `{n}.to_k_ip.weight`,
# `{n}.to_v_ip.weight`, n = 1, 3, 5, ... in the order of `unet.attn_processors`, as
# diffusers' `UNet2DConditionLoadersMixin._convert_ip_adapter_attn_to_diffusers` reads them).

_IMAGE_ENCODER_WIDTH = 16  # the tiny CLIP vision encoder's projection: the IP-Adapter's image embedding
_IMAGE_ENCODER_SIZE = 32  # its input side (4x4 patches of 8 px)


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=_IMAGE_ENCODER_WIDTH,
        intermediate_size=37,
        projection_dim=_IMAGE_ENCODER_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_IMAGE_ENCODER_SIZE,
        patch_size=8,
    )
    return CLIPVisionModelWithProjection(config).eval()


def _ip_adapter_weights(unet_config: dict, image_embed_dim: int) -> dict:
    """The flat safetensors state dict of a random plain IP-Adapter for a UNet of `unet_config`
    ("image_proj.*" and "ip_adapter.*", as h94's .safetensors files hold them)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(unet_config)
    cross = int(unet.config.cross_attention_dim)
    blocks = list(unet.config.block_out_channels)
    tokens = 4  # a plain IP-Adapter's extra tokens
    weights: dict = {
        # Strong enough weights that the tiny model's output visibly follows the reference.
        "image_proj.proj.weight": torch.randn(tokens * cross, image_embed_dim) * 0.5,
        "image_proj.proj.bias": torch.randn(tokens * cross) * 0.1,
        "image_proj.norm.weight": torch.ones(cross) + 0.1 * torch.randn(cross),
        "image_proj.norm.bias": 0.1 * torch.randn(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image tokens
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.5
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.5
        key_id += 2
    return weights


def make_test_ip_adapter(folder: str | Path, model: str | Path | None = None, *, sdxl: bool = False) -> Path:
    """Write a tiny random IP-Adapter for the tiny test model to `folder`, in h94/IP-Adapter's
    layout (what `serve --ip-adapter FOLDER` reads, see `inpaintd.engines.ip_adapter`):
    `models/ip-adapter_sd15.safetensors` + `models/image_encoder/` (SD 1.x), or with
    `sdxl`, `sdxl_models/ip-adapter_sdxl.safetensors` + `sdxl_models/image_encoder/`.
    Calling it twice into one folder writes both.

    `model`: the diffusers folder whose UNet it fits (its `unet/config.json`); by default
    the tiny model `make_test_model` writes (of `sdxl`'s layout, any UNet input channels:
    an IP-Adapter only adds to the cross-attention layers).  Random but seeded: the same
    call writes the same weights."""
    import torch
    from safetensors.torch import save_file

    from .engines.ip_adapter import IMAGE_ENCODER_FOLDER, IP_ADAPTER_FILES
    from .families import Arch

    folder = Path(folder)
    if model is not None:
        unet_config = json.loads((Path(model) / "unet" / "config.json").read_text(encoding="utf-8"))
    else:
        unet_config = dict(_unet(4, sdxl=sdxl).config)
    torch.manual_seed(1)
    subfolder, weight_name = IP_ADAPTER_FILES[Arch.SDXL if sdxl else Arch.SD15]
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    encoder = _image_encoder()
    encoder.save_pretrained(str(target / IMAGE_ENCODER_FOLDER), safe_serialization=True)
    weights = _ip_adapter_weights(unet_config, int(encoder.config.projection_dim))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(target / weight_name))
    return folder


# -- single-file checkpoints ----------------------------------------------------------
#
# Most checkpoints people download are one .safetensors file in the original CompVis/LDM
# key layout, which diffusers' `from_single_file` converts on load.  Writing the tiny
# pipeline in that layout lets tests take that path without a real multi-GB file.  The
# mapping below is the inverse of diffusers' `convert_ldm_unet_checkpoint`,
# `convert_ldm_vae_checkpoint` and `convert_ldm_clip_checkpoint` for SD 1.x.

#: diffusers ResNet block parameter names -> LDM `ResBlock` ones (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

#: UNet layers outside the down/mid/up blocks.
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

#: diffusers VAE mid-block attention names -> LDM `AttnBlock` ones (1x1 convs there).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_LDM_UNET_PREFIX = "model.diffusion_model."
_LDM_VAE_PREFIX = "first_stage_model."
_LDM_CLIP_PREFIX = "cond_stage_model.transformer.text_model."


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the leading module name of `rest` ("norm1.weight") through `table`."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _ldm_unet_key(key: str, config: dict) -> str:
    """The LDM name of one diffusers UNet parameter.

    LDM numbers the down path as one flat `input_blocks` list (conv_in first, then per block
    `layers_per_block` (resnet, attention) pairs and a downsampler) and the up path as
    `output_blocks` with one more layer per block; the upsampler sits after the attention.
    """
    per_block = int(config["layers_per_block"]) + 1
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per_block + (per_block - 1 if kind == "downsamplers" else layer)
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{index}.1.{rest}"
        return f"input_blocks.{index}.0.op.{rest.removeprefix('conv.')}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, layer, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_rename_head(rest, _UNET_RESNET)}"
        return f"middle_block.{2 * layer + 1}.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per_block + (per_block - 1 if kind == "upsamplers" else layer)
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{index}.1.{rest}"
        has_attention = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{index}.{2 if has_attention else 1}.{rest}"
    raise ValueError(f"no LDM name for UNet parameter {key!r}")


def _ldm_vae_key(key: str, config: dict) -> str:
    """The LDM name of one diffusers VAE parameter (the decoder's up blocks run in reverse)."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)", key)
    if m:
        name = "norm_out" if m[2] == "conv_norm_out" else m[2]
        return f"{m[1]}.{name}.{m[3]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.\d+|downsamplers\.0)\.(.+)", key)
    if m:
        if m[2].startswith("downsamplers"):
            return f"encoder.down.{m[1]}.downsample.{m[3]}"
        layer = m[2].split(".")[1]
        return f"encoder.down.{m[1]}.block.{layer}.{_rename_head(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.\d+|upsamplers\.0)\.(.+)", key)
    if m:
        block = len(config["up_block_types"]) - 1 - int(m[1])
        if m[2].startswith("upsamplers"):
            return f"decoder.up.{block}.upsample.{m[3]}"
        layer = m[2].split(".")[1]
        return f"decoder.up.{block}.block.{layer}.{_rename_head(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        rest = _rename_head(m[3], {"conv_shortcut": "nin_shortcut"})
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        renamed = _rename_head(m[2], _VAE_ATTENTION)
        if renamed != m[2]:
            return f"{m[1]}.mid.attn_1.{renamed}"
    raise ValueError(f"no LDM name for VAE parameter {key!r}")


def _component_weights(model_dir: Path, component: str) -> dict:
    """The state dict of one pipeline component, read straight from its safetensors file."""
    from safetensors.torch import load_file

    files = sorted((model_dir / component).glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{model_dir / component}: expected one .safetensors file, found {len(files)}")
    return load_file(str(files[0]))


def save_single_file(model_dir: str | Path, out_path: str | Path) -> Path:
    """Write the diffusers pipeline in `model_dir` as one LDM-layout `.safetensors` file.

    UNet -> `model.diffusion_model.*`, VAE -> `first_stage_model.*` (attention as 1x1
    convs), CLIP text encoder -> `cond_stage_model.transformer.text_model.*`, as in the SD
    1.x files people download, so tests can load a single file through `from_single_file`.
    Every parameter is renamed or the call fails: a silently dropped tensor would load as
    random weights and the round trip could not prove the mapping.  SD 1.x layouts only;
    the tiny SDXL's two text encoders have the same width, which diffusers' single-file
    loader can not tell apart.
    """
    import torch
    from safetensors.torch import save_file

    model_dir, out_path = Path(model_dir), Path(out_path)
    index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    if "text_encoder_2" in index:
        raise ValueError(f"{model_dir}: SDXL pipelines are not written as single files here")

    def config_of(component: str) -> dict:
        return json.loads((model_dir / component / "config.json").read_text(encoding="utf-8"))

    tensors: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        # Two parameters on one name would silently lose one of them.
        if key in tensors:
            raise ValueError(f"two parameters map to {key!r}")
        tensors[key] = value

    unet_config = config_of("unet")
    for key, value in _component_weights(model_dir, "unet").items():
        put(_LDM_UNET_PREFIX + _ldm_unet_key(key, unet_config), value)
    vae_config = config_of("vae")
    for key, value in _component_weights(model_dir, "vae").items():
        ldm_key = _ldm_vae_key(key, vae_config)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:  # linear -> 1x1 conv, as in LDM
            value = value[:, :, None, None]
        put(_LDM_VAE_PREFIX + ldm_key, value)
    text_config = config_of("text_encoder")
    for key, value in _component_weights(model_dir, "text_encoder").items():
        # transformers >= 5.6 saves CLIPTextModel without its `text_model.` level.
        put(_LDM_CLIP_PREFIX + key.removeprefix("text_model."), value)
    # Real SD 1.x files carry CLIP's position ids as a tensor, so the loader must skip it.
    positions = int(text_config["max_position_embeddings"])
    put(_LDM_CLIP_PREFIX + "embeddings.position_ids", torch.arange(positions, dtype=torch.int64)[None])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.contiguous().clone() for k, v in tensors.items()}
    save_file(contiguous, str(out_path), metadata={"format": "pt"})
    return out_path


# -- the flow-matching transformer families (SD 3.5, FLUX.1 Fill and Kontext) ---------
#
# Same idea as the SD pipeline above: each family's real layout (component classes, folder
# names, latent channels, the VAE's scale and shift) at a few MB, built from configs
# offline.  They work at 64x64 too: VAE downscale 8 with 16 latent channels, as the real
# ones, and a size multiple of 16 (SD 3's 2x2 patches, FLUX's 2x2 latent packing).

#: Test-model families `make-test-model --family` knows; "sd" is the tiny SD 1.5 above.
TEST_FAMILIES = ("sd", "sdxl", "sd3", "flux-fill", "flux-kontext", "flux2-klein", "qwen-edit", "z-image", "chroma")

_FLOW_LATENT_CHANNELS = 16  # SD 3's and FLUX's VAEs
_T5_WIDTH = 64  # SD 3 pads the two CLIPs' concatenated 2 x 32 features to the T5 width


def _write_t5_tokenizer(folder: Path) -> None:
    """A T5 (unigram) tokenizer over single characters, built offline: every printable
    ASCII character alone and after a word boundary (`▁`), the rest `<unk>`."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    chars = [chr(c) for c in range(33, 127)]
    pieces += [("▁" + c, -2.0) for c in chars] + [(c, -3.0) for c in chars] + [("▁", -4.0)]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(str(folder))


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=_T5_WIDTH, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _flow_vae(shift_factor: float, scaling_factor: float):
    """The SD 3 / FLUX VAE layout: 16 latent channels, no quant convs, a latent shift."""
    return _vae(latent_channels=_FLOW_LATENT_CHANNELS, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=shift_factor, scaling_factor=scaling_factor)


def _flow_scheduler(**extra):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **extra)


def _clip_parts(path: Path):
    _write_tokenizer(path / "_tok")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(path / "_tok" / "tokenizer"))
    _write_t5_tokenizer(path / "_tok" / "t5")
    from transformers import T5TokenizerFast

    t5_tokenizer = T5TokenizerFast.from_pretrained(str(path / "_tok" / "t5"))
    return tokenizer, t5_tokenizer


def make_sd3_test_model(path: str | Path, *, with_t5: bool = True) -> Path:
    """A tiny SD 3.x pipeline (MMDiT, two CLIPs with projections, optional T5, 16-channel
    VAE), saved as the text-to-image class the real SD 3.5 repos carry."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3InpaintPipeline

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer, t5_tokenizer = _clip_parts(path)
    vocab = len(tokenizer)
    transformer = SD3Transformer2DModel(
        sample_size=TEST_NATIVE_SIZE // 8,
        patch_size=2,
        in_channels=_FLOW_LATENT_CHANNELS,
        out_channels=_FLOW_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=_T5_WIDTH,
        caption_projection_dim=32,  # = heads x head width
        pooled_projection_dim=2 * _TEXT_HIDDEN,  # both CLIPs' pooled outputs, concatenated
        pos_embed_max_size=96,
    ).eval()
    pipe = StableDiffusion3InpaintPipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),
        vae=_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=_text_encoder(vocab, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_text_encoder(vocab, with_projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(len(t5_tokenizer)) if with_t5 else None,
        tokenizer_3=t5_tokenizer if with_t5 else None,
    )
    _save_pipeline(pipe, path, "StableDiffusion3Pipeline")
    return path


def _flux_test_model(path: str | Path, pipeline_class: str, *, fill: bool, class_name: str | None = None) -> Path:
    """A tiny FLUX.1 pipeline of `pipeline_class` (CLIP + T5, 16-channel VAE with FLUX's
    scale and shift, a FLUX transformer with guidance embedding), saved as `class_name`."""
    import diffusers
    import torch
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer, t5_tokenizer = _clip_parts(path)
    vae = _flow_vae(shift_factor=0.1159, scaling_factor=0.3611)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    packed = 4 * _FLOW_LATENT_CHANNELS
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=packed + packed + 4 * scale * scale if fill else packed,
        out_channels=packed,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        pooled_projection_dim=_TEXT_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to the head width
    ).eval()
    pipe = getattr(diffusers, pipeline_class)(
        scheduler=_flow_scheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5(len(t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    _save_pipeline(pipe, path, class_name, TEST_NATIVE_SIZE // scale)
    return path


def _save_pipeline(pipe: Any, path: Path, class_name: str | None, latent_side: int | None = None) -> None:
    """Save a tiny pipeline as a diffusers folder: its tokenizers' scratch folder gone, saved
    as `class_name` (the class its real repo carries), and saying its native size (in latent
    pixels) where given."""
    pipe.save_pretrained(str(path), safe_serialization=True)
    _remove_tree(path / "_tok")
    if class_name:
        _set_class_name(path, class_name)
    if latent_side is not None:
        _say_native_size(path, latent_side)


def _say_native_size(path: Path, latent_side: int) -> None:
    """Write a sample size into the saved transformer's config.  FLUX's and Qwen-Image's
    configs have none (their pipelines assume 1024 px); the tiny ones say they work at 64
    px, which `families.native_size_of_folder` reads."""
    config_path = path / "transformer" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["sample_size"] = latent_side
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def make_flux_fill_test_model(path: str | Path) -> Path:
    """A tiny FLUX.1 Fill pipeline.  Its transformer's input is what the Fill pipeline
    concatenates per token: the packed noisy latents (16 channels x 2x2 = 64), the packed
    masked-image latents (64) and the pixel mask folded to latent resolution (8x8 pixels per
    latent, x 2x2 packing = 256): 384, the real model's width too.  It outputs packed
    latents only (64)."""
    return _flux_test_model(path, "FluxFillPipeline", fill=True)


def make_flux_kontext_test_model(path: str | Path) -> Path:
    """A tiny FLUX.1 Kontext pipeline: FLUX.1-dev's layout (64 packed channels in and out;
    the image's latents join the sequence, not the channels), saved as the editing class
    `FluxKontextPipeline` that black-forest-labs/FLUX.1-Kontext-dev carries."""
    return _flux_test_model(path, "FluxKontextInpaintPipeline", fill=False, class_name="FluxKontextPipeline")


# FLUX.2 klein conditions on the hidden states of a Qwen3 language model: layers 9, 18 and
# 27 stacked, as diffusers' `text_encoder_out_layers` default takes them from the real 36-layer
# Qwen3-4B.  The tiny one has 27 layers of width 16, so the same default works: 3 x 16 = 48
# is the transformer's text width.
_QWEN_WIDTH = 16
_QWEN_LAYERS = 27
_FLUX2_LATENT_CHANNELS = 32  # AutoencoderKLFlux2's, patchified 2x2 into 128 per token

#: Qwen3's chat template, cut to what diffusers' FLUX.2 pipelines render: one user turn and
#: the generation prompt with thinking switched off (`enable_thinking=False`).
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _write_qwen_tokenizer(folder: Path) -> None:
    """A byte-level BPE (Qwen2 tokenizer) over the 256 byte symbols, with Qwen's special tokens
    and chat template, built offline.  As with CLIP, transformers 5 wants the vocabulary and
    merges as files, loaded with `from_pretrained`."""
    from transformers import Qwen2Tokenizer

    raw = folder.parent / (folder.name + "_raw")
    raw.mkdir(parents=True, exist_ok=True)
    merges = [("t", "h"), ("Ġ", "t"), ("a", "n"), ("i", "n")]
    tokens = _byte_symbols() + ["".join(m) for m in merges]
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(raw), model_max_length=512)
    tokenizer.add_special_tokens({
        "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    })
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    _remove_tree(raw)


def _qwen3(path: Path, width: int, layers: int, *, causal_lm: bool) -> tuple[Any, Any]:
    """The Qwen tokenizer (written under `path/_tok`) and a tiny random Qwen3 of `width` and
    `layers` for it: the causal-LM class with tied embeddings as FLUX.2 klein saves it, or the
    bare model as Z-Image does."""
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    _write_qwen_tokenizer(path / "_tok" / "qwen")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(path / "_tok" / "qwen"))
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=causal_lm,
    )
    return tokenizer, (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config).eval()


def make_flux2_klein_test_model(path: str | Path, *, distilled: bool = True) -> Path:
    """A tiny FLUX.2 klein pipeline (Flux2 transformer without guidance embedding, a 27-layer
    Qwen3 of width 16, the 32-channel FLUX.2 VAE with its latent batch norm), saved as
    `Flux2KleinPipeline` with `is_distilled` as black-forest-labs/FLUX.2-klein-4B is (the
    Base checkpoints say false and use classifier-free guidance)."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2KleinInpaintPipeline, Flux2Transformer2DModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer, text_encoder = _qwen3(path, _QWEN_WIDTH, _QWEN_LAYERS, causal_lm=True)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=_FLUX2_LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=TEST_NATIVE_SIZE,
    ).eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * _FLUX2_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * _QWEN_WIDTH,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # time, height, width, text position: sums to the head width
        guidance_embeds=False,
    ).eval()
    pipe = Flux2KleinInpaintPipeline(
        scheduler=_flow_scheduler(use_dynamic_shifting=True, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    _save_pipeline(pipe, path, "Flux2KleinPipeline", TEST_NATIVE_SIZE // scale)
    return path


# Z-Image (Tongyi-MAI/Z-Image-Turbo and the base Z-Image): a single-stream DiT (one sequence of
# caption and image tokens, 2x2 patches of 16 unpacked latent channels) conditioned on the
# second-to-last hidden states of a Qwen3 language model (Qwen3-4B, width 2560, in the real
# one; the transformer's `cap_feat_dim`), with FLUX.1's VAE (16 channels, scale and shift).
_Z_IMAGE_QWEN_WIDTH = 16
_Z_IMAGE_DIM = 32  # 2 heads of 16: the RoPE axes (frame, height, width) sum to the head width


def make_z_image_test_model(path: str | Path) -> Path:
    """A tiny Z-Image pipeline (ZImageTransformer2DModel with one main and one refiner layer
    each, a two-layer Qwen3 of width 16, the 16-channel FLUX-style VAE), saved as
    `ZImagePipeline`, the class Tongyi-MAI/Z-Image-Turbo carries.  The pipeline reads
    `hidden_states[-2]`, so two layers are the fewest that exercise that."""
    import torch
    from diffusers import ZImageInpaintPipeline, ZImageTransformer2DModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer, text_encoder = _qwen3(path, _Z_IMAGE_QWEN_WIDTH, 2, causal_lm=False)
    vae = _flow_vae(shift_factor=0.1159, scaling_factor=0.3611)  # FLUX.1's VAE figures, as Z-Image's
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=_FLOW_LATENT_CHANNELS,
        dim=_Z_IMAGE_DIM,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_Z_IMAGE_QWEN_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    ).eval()
    pipe = ZImageInpaintPipeline(
        scheduler=_flow_scheduler(shift=3.0),  # Z-Image-Turbo's: static shift 3
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    _save_pipeline(pipe, path, "ZImagePipeline", TEST_NATIVE_SIZE // scale)
    return path


# Chroma (lodestones/Chroma1-HD): FLUX.1-schnell's double and single blocks without their
# modulation linears, whose shifts and scales come from one small MLP instead (the
# `distilled_guidance_layer` approximator, fed the timestep and each modulation's index), a T5
# encoder alone with its padding masked, and FLUX.1's VAE with 2x2 latent packing.


def make_chroma_test_model(path: str | Path) -> Path:
    """A tiny Chroma pipeline (ChromaTransformer2DModel with one double and one single block
    and a two-layer approximator, the two-layer T5, the 16-channel FLUX.1 VAE), saved as
    `ChromaPipeline`, the class lodestones/Chroma1-HD carries.  Its transformer config is
    diffusers' own, without the `guidance_embeds: false` that Chroma1-HD's still carries from
    FLUX (the loop supplies it: `flow_inpaint._default_guidance_embeds`)."""
    import torch
    from diffusers import ChromaInpaintPipeline, ChromaTransformer2DModel
    from transformers import T5TokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    _write_t5_tokenizer(path / "_tok" / "t5")
    tokenizer = T5TokenizerFast.from_pretrained(str(path / "_tok" / "t5"))
    vae = _flow_vae(shift_factor=0.1159, scaling_factor=0.3611)  # FLUX.1's VAE figures, as Chroma's
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4 * _FLOW_LATENT_CHANNELS,  # packed 2x2: 64, as the real one
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        axes_dims_rope=(4, 6, 6),  # sums to the head width
        # the approximator's input: timestep (a quarter), guidance (a quarter), the modulation
        # index (half); 64 in the real one, 16 here
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=2,
    ).eval()
    pipe = ChromaInpaintPipeline(
        # Chroma1-HD's scheduler_config.json: FlowMatchEuler without dynamic shifting, shift 1
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=_t5(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    _save_pipeline(pipe, path, "ChromaPipeline", TEST_NATIVE_SIZE // scale)
    return path


# Qwen-Image-Edit: Qwen-Image's MMDiT (64 packed channels in, 16 out), the 16-channel 3D VAE
# of Wan with a mean and std per latent channel, and a Qwen2.5-VL text encoder that reads the
# picture through its vision tower, whose last hidden states (width 3584 in the real 7B, 16
# here) are the transformer's text input.
_QWEN_VL_WIDTH = 16
_QWEN_LATENT_CHANNELS = 16
#: The tokens Qwen2.5-VL's prompt template and vision input use besides text.
_QWEN_VL_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                           "<|video_pad|>"]


def _write_qwen_vl_tokenizer(folder: Path) -> None:
    """The byte-level Qwen2 tokenizer above plus Qwen2.5-VL's vision tokens, built offline;
    long enough a limit for the edit template and a picture's tokens (the real one: 32768)."""
    from transformers import Qwen2Tokenizer

    raw = folder.parent / (folder.name + "_text")
    _write_qwen_tokenizer(raw)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(raw), model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": _QWEN_VL_SPECIAL_TOKENS})
    tokenizer.save_pretrained(str(folder))
    _remove_tree(raw)


def _qwen_vl_text_encoder(tokenizer):
    """A two-layer Qwen2.5-VL of width 16 with a two-block vision tower (14 px patches, 2x2
    merged, as the real one), its special token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(zip(_QWEN_VL_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(_QWEN_VL_SPECIAL_TOKENS), strict=True))
    special = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=_QWEN_VL_WIDTH, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1e6,
            # multimodal RoPE: time, height, width sections of the 8-wide heads' 4 frequencies
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=_QWEN_VL_WIDTH,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
        ),
        vocab_size=len(tokenizer),
        **special,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def make_qwen_edit_test_model(path: str | Path) -> Path:
    """A tiny Qwen-Image-Edit pipeline (QwenImage transformer, 3D VAE with Qwen-Image's
    per-channel latent mean and std, two-layer Qwen2.5-VL with a vision tower), saved as
    `QwenImageEditPipeline` as Qwen/Qwen-Image-Edit is.

    Saved without its `processor`: transformers 5's Qwen2VLProcessor cannot be built without
    torchvision (its video half), which the CPU torch pinned here has no build of.  The
    family lists the processor as optional; inpaintd's loop then processes the picture and
    prompt itself (`flow_inpaint.QwenVLProcessor`, Qwen2.5-VL's settings)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageEditInpaintPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2Tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    _write_qwen_vl_tokenizer(path / "_tok" / "qwen_vl")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(path / "_tok" / "qwen_vl"))
    text_encoder = _qwen_vl_text_encoder(tokenizer)
    # Three 2x steps (scale factor 8 = 2 ** len(temperal_downsample)), narrow: at 64 px it costs
    # milliseconds.  The latent mean and std are the real VAE's (the class defaults).
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=_QWEN_LATENT_CHANNELS, dim_mult=[1, 1, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    scale = 2 ** len(vae.config.temperal_downsample)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * _QWEN_LATENT_CHANNELS,
        out_channels=_QWEN_LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_QWEN_VL_WIDTH,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # frame, height, width: sums to the head width
    ).eval()
    pipe = QwenImageEditInpaintPipeline(
        # Qwen-Image's scheduler config: exponential dynamic shift up to 8192 tokens.
        scheduler=_flow_scheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
            shift_terminal=0.02, time_shift_type="exponential",
        ),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=None,
        transformer=transformer,
    )
    _save_pipeline(pipe, path, "QwenImageEditPipeline", TEST_NATIVE_SIZE // scale)
    return path


def _set_class_name(path: Path, class_name: str) -> None:
    index_path = path / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["_class_name"] = class_name
    index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")


def make_family_test_model(path: str | Path, family: str = "sd") -> Path:
    """`make-test-model --family`: the tiny pipeline of `family` (one of TEST_FAMILIES)."""
    if family == "sd":
        return make_test_model(path)
    if family == "sdxl":
        return make_test_model(path, sdxl=True)
    if family == "sd3":
        return make_sd3_test_model(path)
    if family == "flux-fill":
        return make_flux_fill_test_model(path)
    if family == "flux-kontext":
        return make_flux_kontext_test_model(path)
    if family == "flux2-klein":
        return make_flux2_klein_test_model(path)
    if family == "qwen-edit":
        return make_qwen_edit_test_model(path)
    if family == "z-image":
        return make_z_image_test_model(path)
    if family == "chroma":
        return make_chroma_test_model(path)
    raise ValueError(f"unknown test-model family '{family}'; known: {', '.join(TEST_FAMILIES)}")


# -- LoRAs and embeddings ---------------------------------------------------------------


def make_test_lora(model_dir: str | Path, path: str | Path, *, seed: int = 1, text_encoder: bool = True,
                   family: str = "sd15", kohya: bool = False) -> Path:
    """A random LoRA for the tiny SD pipeline in `model_dir`, in diffusers' format (the UNet's
    attention projections, and with `text_encoder` its CLIP's), saved as one .safetensors
    file whose ModelSpec metadata names `family` (the tiny model's widths are no real
    family's).  Both LoRA matrices are random, so it visibly changes the output.  `kohya`: the
    same weights in kohya/A1111's key layout (`lora_unet_..._to_q.lora_down.weight`, `.alpha`),
    as most downloaded LoRAs are."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    path = Path(path)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    te_layers = None
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
        te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = {"sd15": "stable-diffusion-v1", "sd2": "stable-diffusion-v2", "sdxl": "stable-diffusion-xl-v1-base"}[family]
    metadata = {"modelspec.architecture": f"{arch}/lora"}
    if kohya:
        from diffusers.utils import convert_state_dict_to_kohya

        peft_keys = {f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()}
        if text_encoder:
            peft_keys |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(pipe.text_encoder).items()}
        save_file({k: v.contiguous() for k, v in convert_state_dict_to_kohya(peft_keys).items()}, str(path), metadata=metadata)
        return path
    type(pipe).save_lora_weights(str(path.parent), unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                 weight_name=path.name)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path


def make_test_embedding(path: str | Path, *, seed: int = 1, vectors: int = 2, family: str = "sd15") -> Path:
    """A random A1111-style textual-inversion embedding (`emb_params`, `vectors` tokens wide)
    for the tiny SD pipeline's text encoder, its family named in the ModelSpec metadata."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    arch = {"sd15": "stable-diffusion-v1", "sd2": "stable-diffusion-v2"}[family]
    save_file({"emb_params": torch.randn(vectors, _TEXT_HIDDEN, generator=generator)}, str(path),
              metadata={"modelspec.architecture": f"{arch}/textual-inversion"})
    return path


def make_test_transformer_lora(model_dir: str | Path, path: str | Path, *, seed: int = 1) -> Path:
    """A random LoRA of the attention projections of a tiny SD 3, FLUX.1, Z-Image or Chroma
    pipeline's transformer (`make_family_test_model`), in diffusers' format, its family in the
    ModelSpec metadata (SD 3, FLUX.1, Z-Image or Chroma, read from the saved pipeline's class)."""
    import torch
    from diffusers import DiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    path = Path(path)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(path.parent), transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                 weight_name=path.name)
    name = type(pipe).__name__
    arch = ("flux-1-dev" if "Flux" in name else "z-image-turbo" if "ZImage" in name else "chroma" if "Chroma" in name
            else "stable-diffusion-3-medium")
    save_file(load_file(str(path)), str(path), metadata={"modelspec.architecture": f"{arch}/lora"})
    return path
