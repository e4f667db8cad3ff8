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
import shutil
from pathlib import Path

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


def _vae():
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
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TEST_NATIVE_SIZE,
        force_upcast=False,  # float32 throughout already; upcasting only adds warnings
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
