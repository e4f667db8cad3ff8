"""The model families inpaintd can run, and how a model on disk is recognised as one.

One table, in the spirit of diffusers' `AUTO_INPAINT_PIPELINES_MAPPING` and
krita-ai-diffusion's `Arch`: for each family its inpaint pipeline, the pipeline classes a
saved model of that family may carry, its denoiser folder, native size, size multiple,
schedulers and default steps, and how a single-file checkpoint of it is recognised.  The
rest of the daemon asks this module and never guesses a family from a class name.

Adding a family is a row here plus a sampler that can run it (see CONTRIBUTING.md).
Nothing here imports torch or diffusers: listing models must stay instant.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .engines.base import ModelCaps, ModelInfo


class Arch(str, Enum):
    """A model architecture family.  The value is what `list_models` reports."""

    SD15 = "sd15"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX_FILL = "flux-fill"
    FLUX_KONTEXT = "flux-kontext"
    FLUX2_KLEIN = "flux2-klein"
    QWEN_EDIT = "qwen-edit"
    Z_IMAGE = "z-image"
    CHROMA = "chroma"


class Loop(str, Enum):
    """Which sampler runs a family (`DiffusersEngine` branches on this, never on a class name)."""

    #: inpaintd's own loop over a UNet pipeline's parts (`engines/sd_inpaint.py`).
    SD = "sd"
    #: The stock flow-matching transformer pipeline, stepped by callbacks (`engines/flow_inpaint.py`).
    FLOW = "flow"


@dataclass(frozen=True)
class Family:
    arch: Arch
    label: str
    #: The diffusers pipeline that inpaints with this family (a class name in `diffusers`).
    inpaint_pipeline: str
    #: `_class_name`s in a saved model_index.json that belong to this family: text-to-image
    #: and img2img checkpoints share their components with the inpaint pipeline and load
    #: into it unchanged (4-channel denoiser, latent blending).
    pipeline_classes: frozenset[str]
    #: The folder of the weights that do the denoising: "unet" or "transformer".
    denoiser: str
    #: Side length the family was trained at; crops are scaled to about this many pixels.
    native_size: int
    #: Processing sizes are rounded to multiples of this (the VAE's downscale).
    size_multiple: int
    default_steps: int
    #: Scheduler names clients may ask for ("default" keeps the checkpoint's own).
    schedulers: tuple[str, ...]
    #: How to pre-fill the hole before encoding when strength < 1 (the `fill` option's
    #: "auto"), as krita-ai-diffusion's fill modes do per model.
    default_fill: str
    #: Diffusers repos whose configs lay out a single-file checkpoint: (inpainting, base).
    reference_repos: tuple[str, str]
    #: True when a single file's tensor names (safetensors header) are of this family.
    single_file_match: Callable[[dict[str, Any]], bool]
    #: Two text encoders (SDXL): `encode_prompt` takes keyword arguments and returns pooled
    #: embeddings too.
    dual_text_encoder: bool = False
    #: The VAE overflows in float16 (its config says `force_upcast`, and the pipeline
    #: honours it): keep it in float32 on GPUs.
    vae_upcast: bool = False
    #: The pipeline has a safety checker to switch off (it would black out artists' work).
    safety_checker: bool = True
    #: The sampler that runs the family.
    loop: Loop = Loop.SD
    #: The family takes a negative prompt (guidance-distilled ones such as FLUX do not).
    negative_prompt: bool = True
    #: The guidance its makers recommend (for FLUX, the distilled guidance embedding, not
    #: classifier-free guidance); what editors should default to for it.
    default_guidance: float = 7.5
    #: Pipeline components a folder may lack (the pipeline then runs without them), e.g.
    #: SD 3's T5 encoder, which holds most of its memory and adds little for short prompts.
    optional_components: tuple[str, ...] = ()
    #: The stock pipeline resizes its input to resolutions of its own choosing unless told
    #: not to (Kontext snaps to its preferred ones, `_auto_resize`, and to `max_area`); the
    #: runner has chosen the processing size already, so the loop pins it.
    pins_size: bool = False
    #: The denoiser also conditions on a pooled text embedding (SD 3's and FLUX.1's CLIPs);
    #: FLUX.2 conditions on its language model's hidden states alone.
    pooled_prompt: bool = True
    #: The stock pipeline scales a larger input down to this many pixels itself, with no way
    #: to say no (FLUX.2 klein: 1024^2); the loop scales its output back to the job's size.
    #: The runner's sizes are about native x native but may round above it.
    max_pixels: int | None = None
    #: The strength editors start from for it: how much of the picture under the mask is
    #: noised away (1: all of it, the usual for inpainting; the job option's own default).
    default_strength: float = 1.0
    #: The pipeline loads LoRA adapters (it has a diffusers LoRA loader mixin).
    lora: bool = True
    #: Textual-inversion embeddings work in its prompts (SD 1.x/2.x/SDXL's CLIP encoders;
    #: FLUX's loader reaches its CLIP only, which carries little of the prompt).
    textual_inversion: bool = False
    #: The text encoder that holds most of the memory (SD 3's and FLUX.1's T5, FLUX.2's
    #: Qwen3): what `--quantize text_encoder=` means, and what low-memory modes may drop
    #: where it is optional.  "" where no encoder is large (SD 1.x/2.x/SDXL's CLIPs).
    large_text_encoder: str = ""
    #: The pipeline conditions on reference images besides the picture (FLUX.1 Kontext's and
    #: FLUX.2 klein's `image_reference`): a job's `references` reach it.
    reference_image: bool = False
    #: How many references it conditions on at once, where it takes any: Kontext's one replaces
    #: the picture in its sequence; klein appends each to its sequence.
    max_references: int = 1
    #: Its guidance is classifier-free guidance given as the pipeline's `true_cfg_scale`, with
    #: the negative prompt's embeddings (Qwen-Image); its `guidance_scale` is the distilled
    #: guidance embedding of checkpoints that have one, and these have none.
    true_cfg: bool = False
    #: The text encoder is a vision-language model that reads the picture with the prompt
    #: (Qwen-Image-Edit's Qwen2.5-VL): prompt embeddings depend on the job's image, so they
    #: are encoded per image, never reused across images.
    vision_prompt: bool = False
    #: The pipeline's `encode_prompt` gives, and its `__call__` takes, a list of embeddings,
    #: one variable-length tensor per prompt (Z-Image: the Qwen3 tokens that are not padding),
    #: not one batched tensor; a job's variants are list elements, not rows.
    listed_prompt: bool = False
    #: The pipeline's `encode_prompt` gives, and its `__call__` takes, a token mask with each
    #: embedding (`prompt_attention_mask`, `negative_prompt_attention_mask`): Chroma masks T5's
    #: padding but for one token, and refuses embeddings given without their mask.  Its
    #: classifier-free guidance runs above a scale of 1 only (the negative side goes in then).
    masked_prompt: bool = False


_SD_SCHEDULERS = ("default", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "lcm")
#: Flow-matching families: their own (FlowMatchEulerDiscreteScheduler), or "euler", which
#: names the same flow-matching Euler sampler for them (the wire's scheduler names are shared).
_FLOW_SCHEDULERS = ("default", "euler")


def _has_prefix(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda header: any(k.startswith(prefix) for k in header)


# -- the transformer families' single files ----------------------------------------------
#
# A header here is what `read_single_file_header` gives: tensor name -> {"dtype", "shape"}
# (shapes in torch's order, also for a GGUF's quantised tensors), with the file's metadata
# under "__metadata__".  Stability's SD 3.x files and ComfyUI's saves put the denoiser under
# "model.diffusion_model."; BFL's FLUX files and city96's GGUFs have bare names.

_DENOISER_PREFIX = "model.diffusion_model."
#: Prefixes of the other parts a checkpoint may bundle (VAE, text encoders).
_OTHER_PARTS = ("first_stage_model.", "text_encoders.", "vae.", "cond_stage_model.", "conditioner.")


def _denoiser(header: dict[str, Any]) -> dict[str, Any]:
    """The denoiser's tensors by their names in the original layout, without the prefix."""
    out: dict[str, Any] = {}
    for key, info in header.items():
        if key.startswith(_DENOISER_PREFIX):
            out[key[len(_DENOISER_PREFIX):]] = info
        elif key != "__metadata__" and not key.startswith(_OTHER_PARTS):
            out[key] = info
    return out


def _shape(info: Any) -> list[int]:
    return list(info.get("shape") or []) if isinstance(info, dict) else []


def _is_sd3(header: dict[str, Any]) -> bool:
    """Stability's MMDiT (SD 3, 3.5 Large/Turbo/Medium): joint blocks of an x and a context stream."""
    keys = _denoiser(header)
    return "joint_blocks.0.x_block.attn.qkv.weight" in keys and "context_embedder.weight" in keys


def _flux1_input_channels(header: dict[str, Any]) -> int:
    """The packed channels a FLUX.1 transformer with guidance embedding takes in (Fill 384,
    dev and Kontext 64, Depth/Canny 128); 0 for anything else, FLUX.1 schnell (no guidance
    embedding), FLUX.2 and Chroma (FLUX.1's blocks, other embedders) included."""
    keys = _denoiser(header)
    if "double_blocks.0.img_attn.norm.key_norm.scale" not in keys or "guidance_in.in_layer.weight" not in keys:
        return 0
    if "single_stream_modulation.lin.weight" in keys or any(k.startswith("distilled_guidance_layer.") for k in keys):
        return 0
    shape = _shape(keys.get("img_in.weight"))
    return shape[1] if len(shape) == 2 else 0


def _is_flux_fill(header: dict[str, Any]) -> bool:
    return _flux1_input_channels(header) == 384


def _metadata_text(header: dict[str, Any]) -> str:
    """What a file's metadata says of its model, lower-cased (safetensors `modelspec.*`, a
    GGUF's `general.name`); "" where it says nothing."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        return ""
    wanted = ("modelspec.title", "modelspec.architecture", "modelspec.description", "general.name", "general.basename")
    return " ".join(str(meta[k]) for k in wanted if isinstance(meta.get(k), str)).lower()


def _is_flux_kontext(header: dict[str, Any]) -> bool:
    """A 64-channel FLUX.1 transformer with guidance: Kontext dev and plain FLUX.1 dev have the
    same tensors, names and shapes, so this takes one for Kontext unless its metadata names
    FLUX.1 dev and not Kontext (the only 64-channel FLUX.1 family inpaintd runs)."""
    if _flux1_input_channels(header) != 64:
        return False
    said = _metadata_text(header)
    return "kontext" in said or not ("dev" in said and "flux" in said)


def _is_z_image(header: dict[str, Any]) -> bool:
    """Tongyi's Z-Image DiT (Turbo and base) in the layout diffusers converts (ComfyUI's saves,
    prefixed, and bare re-saves of them): single-stream `layers.*` with a Linear-first adaLN
    (Lumina 2's, the same lineage, starts with a SiLU: `adaLN_modulation.1`), a caption
    embedder after an RMSNorm, one `x_embedder`.  Z-Image-Omni (a SigLIP branch) and the
    ControlNets (`control_*`) are other pipelines."""
    keys = _denoiser(header)
    if any(k.startswith(("siglip_", "control_")) for k in keys):
        return False
    return all(k in keys for k in ("layers.0.adaLN_modulation.0.weight", "cap_embedder.1.weight", "x_embedder.weight"))


def _is_chroma(header: dict[str, Any]) -> bool:
    """Chroma (lodestones' Chroma1-HD/-Base/-Flash, `Chroma1-HD.safetensors`, bare or in
    ComfyUI's prefixed saves): FLUX.1's double and single blocks (BFL's names) with the
    modulation pruned and the `distilled_guidance_layer` approximator in its place (the
    marker diffusers' own `infer_diffusers_model_type` reads), and FLUX.1's latent input, 16
    channels packed 2x2 (64).  Chroma1-Radiance works in pixel space (no such `img_in`), and
    is another pipeline."""
    keys = _denoiser(header)
    if "double_blocks.0.img_attn.norm.key_norm.scale" not in keys:
        return False
    if not any(k.startswith("distilled_guidance_layer.in_proj.") for k in keys):
        return False
    shape = _shape(keys.get("img_in.weight"))
    return len(shape) == 2 and shape[1] == 64


def _is_flux2(header: dict[str, Any]) -> bool:
    """A FLUX.2 transformer in BFL's names (bare, or ComfyUI-prefixed): FLUX.1's double and
    single blocks with the modulation shared across blocks (`single_stream_modulation`, the
    marker diffusers' own `infer_diffusers_model_type` reads)."""
    keys = _denoiser(header)
    return "single_stream_modulation.lin.weight" in keys and "double_blocks.0.img_attn.qkv.weight" in keys


def _is_flux2_klein(header: dict[str, Any]) -> bool:
    """FLUX.2 klein (4B, 9B and their Base checkpoints, `flux-2-klein-4b.safetensors`): a
    FLUX.2 transformer without the guidance embedding, taking the FLUX.2 VAE's 32 channels
    packed 2x2 (128).  FLUX.2 dev (32 B, Flux2Pipeline with a Mistral encoder) is guidance-
    distilled: its `guidance_in` tells it apart, and it is refused (`single_file_problem`)."""
    keys = _denoiser(header)
    if not _is_flux2(header) or "guidance_in.in_layer.weight" in keys:
        return False
    shape = _shape(keys.get("img_in.weight"))
    return len(shape) == 2 and shape[1] == 128


#: klein's reference repos by the transformer's width (`img_in.weight`'s rows): the 4B is
#: 3072 wide (Qwen3-4B's 3 x 2560 in), the 9B 4096 (Qwen3-8B's 3 x 4096 in); their configs
#: differ, so a 9B file needs the 9B repo's.  The Base checkpoints share their distilled
#: siblings' tensors and configs but for model_index.json's `is_distilled` (false: CFG on).
_KLEIN_REPOS = {3072: "black-forest-labs/FLUX.2-klein-4B", 4096: "black-forest-labs/FLUX.2-klein-9B"}
_KLEIN_BASE_REPOS = {3072: "black-forest-labs/FLUX.2-klein-base-4B", 4096: "black-forest-labs/FLUX.2-klein-base-9B"}


def _klein_reference(header: dict[str, Any]) -> str:
    """The diffusers repo whose configs fit a klein file: 9B's for a 4096-wide transformer,
    4B's otherwise (the family row's); a Base repo where the file's metadata says "base"
    (nothing in the tensors tells a Base checkpoint from a distilled one)."""
    shape = _shape(_denoiser(header).get("img_in.weight"))
    width = shape[0] if len(shape) == 2 else 0
    repos = _KLEIN_BASE_REPOS if re.search(r"\bbase\b", _metadata_text(header)) else _KLEIN_REPOS
    return repos.get(width, repos[3072])


def _is_qwen_image_transformer(header: dict[str, Any]) -> bool:
    """Qwen-Image's 20 B MMDiT in the names diffusers itself uses (ComfyUI's files and the
    GGUFs keep them; diffusers' single-file mapping for it is the identity), bare or prefixed:
    `img_mod`/`txt_mod` per block, the text RMSNorm `txt_norm`, 16 latent channels packed 2x2
    (64).  Qwen-Image, Qwen-Image-Edit and Edit-2509/2511 all have this transformer with the
    same tensors; Qwen-Image-2.1 (`txt_in.text_norm`), Layered (`addition_t_embedding`) and
    the ControlNets (`controlnet_*`) are other models."""
    keys = _denoiser(header)
    if not all(k in keys for k in ("txt_norm.weight", "transformer_blocks.0.img_mod.1.weight",
                                   "transformer_blocks.0.txt_mlp.net.0.proj.weight")):
        return False
    if any(k.startswith(("txt_in.text_norm.", "time_text_embed.addition_t_embedding.", "controlnet_")) for k in keys):
        return False
    shape = _shape(keys.get("img_in.weight"))
    return len(shape) == 2 and shape[1] == 64


def _qwen_variant(header: dict[str, Any]) -> str:
    """Which Qwen-Image model a Qwen-Image transformer file is, from its metadata alone (the
    tensors are the same): "edit" (Qwen-Image-Edit), "edit-plus" (Edit-2509/2511,
    QwenImageEditPlusPipeline), "layered", or "image" (text-to-image Qwen-Image).  A file
    whose metadata names no Qwen model is taken for Qwen-Image-Edit, the only one served."""
    said = _metadata_text(header)
    if "qwen" not in said:
        return "edit"
    if "edit" in said:
        return "edit-plus" if re.search(r"2509|2511|plus", said) else "edit"
    return "layered" if "layered" in said else "image"


def _is_qwen_edit(header: dict[str, Any]) -> bool:
    """Qwen-Image-Edit (`qwen_image_edit_bf16.safetensors`, its GGUFs): a Qwen-Image
    transformer that its metadata does not name as another Qwen-Image model.  Qwen-Image
    (text-to-image) and Edit-2509/2511 have the very same tensors, names and shapes: only
    metadata that names them tells them apart (as FLUX.1 dev from Kontext, `_is_flux_kontext`),
    and a file that says nothing is taken for Qwen-Image-Edit.  Edit-2511 runs with
    `zero_cond_t` in its config and 2509/2511 with another prompt template and several
    pictures: Qwen-Image-Edit's configs and pipeline would run such a file wrongly."""
    return _is_qwen_image_transformer(header) and _qwen_variant(header) == "edit"


FAMILIES: dict[Arch, Family] = {
    Arch.SD3: Family(
        arch=Arch.SD3,
        label="Stable Diffusion 3.5",
        inpaint_pipeline="StableDiffusion3InpaintPipeline",
        # Large, Large Turbo and Medium are saved as the text-to-image class and share
        # everything but their weights; Turbo wants 4 steps and guidance 0, which nothing
        # in its folder tells apart from Large's.  No dedicated SD 3 inpainting checkpoint
        # exists: the pipeline blends the known latents back in under the mask.
        pipeline_classes=frozenset(
            {"StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"}
        ),
        denoiser="transformer",
        native_size=1024,
        size_multiple=16,  # VAE downscale 8 x transformer patch 2
        default_steps=28,
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        # Large and Large Turbo share this layout; `inspect_single_file` picks Medium's repo
        # for a Medium file (its MMDiT-X blocks), as the configs differ.
        reference_repos=("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large"),
        single_file_match=_is_sd3,  # Stability's MMDiT layout (joint_blocks)
        safety_checker=False,
        loop=Loop.FLOW,
        default_guidance=3.5,  # Large 3.5, Medium about 4.5, Turbo 0
        optional_components=("text_encoder_3", "tokenizer_3"),
        large_text_encoder="text_encoder_3",
    ),
    Arch.FLUX_FILL: Family(
        arch=Arch.FLUX_FILL,
        label="FLUX.1 Fill",
        inpaint_pipeline="FluxFillPipeline",
        # A dedicated in/outpainting transformer: its input is the packed latents, the
        # packed masked-image latents and the packed pixel mask (64 + 64 + 256 channels).
        pipeline_classes=frozenset({"FluxFillPipeline"}),
        denoiser="transformer",
        native_size=1024,  # the pipeline's default_sample_size 128 x VAE downscale 8
        size_multiple=16,  # VAE downscale 8 x 2x2 latent packing
        default_steps=50,  # diffusers' default and BFL's model card (guidance 30, 50 steps)
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("black-forest-labs/FLUX.1-Fill-dev", "black-forest-labs/FLUX.1-Fill-dev"),
        single_file_match=_is_flux_fill,  # BFL's layout, 64 + 64 + 256 in
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=False,  # guidance-distilled: no classifier-free guidance
        default_guidance=30.0,
        large_text_encoder="text_encoder_2",
    ),
    Arch.FLUX_KONTEXT: Family(
        arch=Arch.FLUX_KONTEXT,
        label="FLUX.1 Kontext",
        inpaint_pipeline="FluxKontextInpaintPipeline",
        # An instruction-editing model: FLUX.1-dev's transformer (64 packed channels in)
        # that also attends to the packed latents of the whole image, appended to its
        # sequence.  The repos are saved as the editing class; the inpaint pipeline
        # blends the known latents back in under the mask.  The prompt is an instruction
        # ("replace the ball with a red apple").
        pipeline_classes=frozenset({"FluxKontextPipeline", "FluxKontextInpaintPipeline"}),
        denoiser="transformer",
        native_size=1024,  # default_sample_size 128 x VAE downscale 8; max_area 1024^2
        size_multiple=16,  # VAE downscale 8 x 2x2 latent packing
        default_steps=28,  # diffusers' default for both Kontext pipelines
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("black-forest-labs/FLUX.1-Kontext-dev", "black-forest-labs/FLUX.1-Kontext-dev"),
        # FLUX.1 dev's layout, 64 channels in, with the guidance embedding.  Plain FLUX.1 dev
        # files have the very same tensors: only metadata that says "dev" without "kontext"
        # tells them apart (`_is_flux_kontext`).
        single_file_match=_is_flux_kontext,
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=False,  # guidance-distilled (true CFG is off at diffusers' default)
        default_guidance=2.5,  # BFL's model card (diffusers' own default is 3.5)
        pins_size=True,
        large_text_encoder="text_encoder_2",
        # `image_reference`: the reference's latents take the picture's place in its sequence,
        # and the masked region is painted after it (diffusers' Kontext inpaint).
        reference_image=True,
    ),
    Arch.FLUX2_KLEIN: Family(
        arch=Arch.FLUX2_KLEIN,
        label="FLUX.2 klein",
        inpaint_pipeline="Flux2KleinInpaintPipeline",
        # The klein repos (4B, 9B and their Base checkpoints) are saved as the text-to-image
        # class; the inpaint pipeline takes the same parts (Flux2 transformer, Qwen3 text
        # encoder, the 32-channel FLUX.2 VAE), conditions on the whole image's latents in
        # the sequence and blends the known latents back in under the mask.  (9B KV, saved as
        # Flux2KleinKVPipeline, caches those image tokens in a way this pipeline does not.)
        pipeline_classes=frozenset({"Flux2KleinPipeline", "Flux2KleinInpaintPipeline"}),
        denoiser="transformer",
        native_size=1024,  # default_sample_size 128 x VAE downscale 8; larger inputs are scaled to 1 MP
        size_multiple=16,  # VAE downscale 8 x 2x2 latent patches
        # The step-distilled 4B (Apache-2.0) and 9B: 4 steps without guidance (BFL's cards).
        # The Base checkpoints want about 50 steps and guidance 4 (diffusers' defaults), which
        # nothing but `is_distilled` in their model_index.json tells apart; the pipeline
        # itself ignores guidance for the distilled ones.
        default_steps=4,
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        # A single file takes its configs from the repo of its size (`_klein_reference`: 9B's
        # for a 4096-wide transformer; a Base repo where its metadata says so).
        reference_repos=("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-4B"),
        single_file_match=_is_flux2_klein,  # BFL's FLUX.2 names without `guidance_in`, bare or ComfyUI-prefixed
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=True,  # used with classifier-free guidance by the Base checkpoints
        default_guidance=1.0,
        pooled_prompt=False,
        max_pixels=1024 * 1024,
        large_text_encoder="text_encoder",
        # `image_reference`: each reference's latents join the picture's in its sequence (the
        # pipeline scales them to at most 1024^2, all to the first one's size).
        reference_image=True,
        max_references=4,  # BFL's limit for klein 4B and 9B
    ),
    Arch.SDXL: Family(
        arch=Arch.SDXL,
        label="Stable Diffusion XL",
        inpaint_pipeline="StableDiffusionXLInpaintPipeline",
        pipeline_classes=frozenset(
            {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
        ),
        denoiser="unet",
        native_size=1024,
        size_multiple=8,
        default_steps=20,
        schedulers=_SD_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "stabilityai/stable-diffusion-xl-base-1.0"),
        # SDXL checkpoints carry a second text encoder under `conditioner.embedders.1`.
        single_file_match=_has_prefix("conditioner.embedders.1."),
        dual_text_encoder=True,
        vae_upcast=True,
        safety_checker=False,
        textual_inversion=True,
    ),
    Arch.SD2: Family(
        arch=Arch.SD2,
        label="Stable Diffusion 2.x",
        inpaint_pipeline="StableDiffusionInpaintPipeline",
        pipeline_classes=frozenset(),  # saved as SD 1.x's classes: told apart by the text encoder
        denoiser="unet",
        native_size=512,
        size_multiple=8,
        default_steps=20,
        schedulers=_SD_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("stabilityai/stable-diffusion-2-inpainting", "stabilityai/stable-diffusion-2-1-base"),
        # OpenCLIP text encoder
        single_file_match=_has_prefix("cond_stage_model.model."),
        textual_inversion=True,
    ),
    Arch.SD15: Family(
        arch=Arch.SD15,
        label="Stable Diffusion 1.x",
        inpaint_pipeline="StableDiffusionInpaintPipeline",
        pipeline_classes=frozenset(
            {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}
        ),
        denoiser="unet",
        native_size=512,
        size_multiple=8,
        default_steps=20,
        schedulers=_SD_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("stable-diffusion-v1-5/stable-diffusion-inpainting", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        single_file_match=_has_prefix("model.diffusion_model.input_blocks."),
        textual_inversion=True,
    ),
    Arch.QWEN_EDIT: Family(
        arch=Arch.QWEN_EDIT,
        label="Qwen-Image-Edit",
        inpaint_pipeline="QwenImageEditInpaintPipeline",
        # An instruction-editing model: Qwen-Image's 20 B MMDiT (64 packed channels in), which
        # also attends to the packed latents of the whole picture appended to its sequence,
        # and a Qwen2.5-VL 7B text encoder that reads the picture with the instruction.  The
        # repo is saved as the editing class; the inpaint pipeline blends the known latents
        # back in under the mask.  (Edit-2509/2511 are QwenImageEditPlusPipeline: another
        # prompt template and multi-image input, not this pipeline.)
        pipeline_classes=frozenset({"QwenImageEditPipeline", "QwenImageEditInpaintPipeline"}),
        denoiser="transformer",
        # The pipeline works at 1024^2 pixels at the input's aspect whatever it is given
        # (`calculate_dimensions`); the loop pins the runner's size instead (`pins_size`).
        native_size=1024,
        size_multiple=16,  # VAE downscale 8 x 2x2 latent packing
        default_steps=50,  # diffusers' default and Qwen's model card
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit"),
        # Qwen-Image's transformer in diffusers' own names, bare or ComfyUI-prefixed; Qwen-Image
        # and Edit-2509/2511 files are the same tensors, told apart by their metadata only.
        single_file_match=_is_qwen_edit,
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=True,  # true classifier-free guidance; Qwen's card uses " "
        default_guidance=4.0,  # the pipeline's `true_cfg_scale` default and Qwen's card
        # transformers 5's Qwen2VLProcessor cannot be built without torchvision (its video
        # half); a folder saved without it runs on the loop's own image + text processor.
        optional_components=("processor",),
        pins_size=True,
        pooled_prompt=False,  # the language model's last hidden states alone
        large_text_encoder="text_encoder",
        # No reference input: the edit conditioning is the picture itself, in both the VL
        # prompt and the transformer's sequence, and the latter is also what the pipeline
        # blends back in outside the mask, so no other image can take its place.
        true_cfg=True,
        vision_prompt=True,
    ),
    Arch.Z_IMAGE: Family(
        arch=Arch.Z_IMAGE,
        label="Z-Image",
        inpaint_pipeline="ZImageInpaintPipeline",
        # Tongyi-MAI/Z-Image-Turbo and the base Z-Image are saved as the text-to-image class;
        # the inpaint pipeline takes the same parts (the 6 B single-stream ZImage transformer,
        # a Qwen3-4B text encoder, FLUX.1's 16-channel VAE) and blends the known latents back
        # in under the mask.  (Z-Image-Omni, ZImageOmniPipeline, adds a SigLIP branch, and the
        # ControlNet pipelines a control model: neither is this pipeline.)
        pipeline_classes=frozenset({"ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"}),
        denoiser="transformer",
        native_size=1024,  # the pipeline's 1024 default; the transformer config names no size
        size_multiple=16,  # VAE downscale 8 x the transformer's 2x2 patches (`all_patch_size`)
        # Z-Image-Turbo (step-distilled): guidance 0, and 8 transformer evaluations.  Its card's
        # "num_inference_steps=9" dates from diffusers' older schedule, whose last step ran at
        # sigma 0 and did nothing ("results in 8 DiT forwards"); diffusers 0.42.1's
        # (`get_default_z_image_sigmas`) makes every step count, so 8 is the card's work.
        # The base Z-Image is not distilled: it wants classifier-free guidance with a negative
        # prompt and about 50 steps at guidance 4-5 (diffusers' defaults: 50 and 5.0), which
        # nothing in its folder tells apart from Turbo's, so a client sends them itself.
        default_steps=8,
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("Tongyi-MAI/Z-Image-Turbo", "Tongyi-MAI/Z-Image-Turbo"),
        single_file_match=_is_z_image,  # the original layout (fused `attention.qkv`), bare or ComfyUI-prefixed
        safety_checker=False,
        loop=Loop.FLOW,
        # The pipeline guides (`do_classifier_free_guidance`: any guidance above 0) with the
        # negative prompt's embeddings, `pos + scale x (pos - neg)`; at Turbo's 0 it is unused.
        negative_prompt=True,
        default_guidance=0.0,
        pooled_prompt=False,  # Qwen3's second-to-last hidden states alone
        large_text_encoder="text_encoder",
        listed_prompt=True,
    ),
    Arch.CHROMA: Family(
        arch=Arch.CHROMA,
        label="Chroma",
        inpaint_pipeline="ChromaInpaintPipeline",
        # lodestones/Chroma1-HD (and Chroma1-Base and -Flash, the same parts) are saved as the
        # text-to-image class; the inpaint pipeline takes the same parts (FLUX.1-schnell's
        # transformer pruned to 8.9 B, the modulation replaced by the `distilled_guidance_layer`
        # approximator; a T5-XXL encoder alone, no CLIP; FLUX.1's VAE) and blends the known
        # latents back in under the mask.
        pipeline_classes=frozenset({"ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"}),
        denoiser="transformer",
        native_size=1024,  # the pipelines' default_sample_size 128 x VAE downscale 8
        size_multiple=16,  # VAE downscale 8 x 2x2 latent packing
        # Chroma1-HD: 40 steps at guidance 3.0, the example of diffusers' Chroma documentation
        # (huggingface.co/docs/diffusers/api/pipelines/chroma: `num_inference_steps=40,
        # guidance_scale=3.0` with a negative prompt; the Chroma1-HD Space runs the same).
        # diffusers' argument defaults differ by pipeline (ChromaPipeline 35 / 5.0,
        # ChromaInpaintPipeline 28 / 7.0) and are not the model's.  Chroma1-Flash has its CFG
        # baked in (guidance 1, fewer steps) and Chroma1-Base was trained at 512 px; nothing in
        # their folders tells them apart from HD's, so a client sends those settings itself.
        default_steps=40,
        schedulers=_FLOW_SCHEDULERS,
        default_fill="neutral",
        reference_repos=("lodestones/Chroma1-HD", "lodestones/Chroma1-HD"),
        single_file_match=_is_chroma,  # BFL's FLUX names with the approximator, bare or ComfyUI-prefixed
        safety_checker=False,
        loop=Loop.FLOW,
        # Real classifier-free guidance with the negative prompt (`do_classifier_free_guidance`:
        # a scale above 1; each step then runs the transformer twice).
        negative_prompt=True,
        default_guidance=3.0,
        pooled_prompt=False,  # T5 alone: no pooled embedding
        large_text_encoder="text_encoder",
        masked_prompt=True,
    ),
}

#: Single files are matched in this order: the most specific marker first.
_SINGLE_FILE_ORDER = (
    Arch.SD3, Arch.FLUX_FILL, Arch.FLUX_KONTEXT, Arch.CHROMA, Arch.FLUX2_KLEIN, Arch.QWEN_EDIT, Arch.Z_IMAGE,
    Arch.SDXL, Arch.SD2, Arch.SD15,
)


class UnsupportedModel(ValueError):
    """A model on disk that is not of any family in the table; the message says what it is."""


def family(arch: Arch | str) -> Family:
    return FAMILIES[Arch(arch)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnsupportedModel(f"{path}: not a JSON object")
    return data


def family_of_pipeline(pipeline_class_name: str) -> Family:
    """The family a pipeline object belongs to, from its class name (an exact match in the
    table; SD 2.x pipelines are SD 1.x's classes and run the same code)."""
    for fam in FAMILIES.values():
        if pipeline_class_name in fam.pipeline_classes:
            return fam
    raise UnsupportedModel(f"{pipeline_class_name} is not a pipeline of any family inpaintd knows")


def family_of_folder(folder: Path) -> Family:
    """The family of a diffusers folder (a local save or a cache snapshot), from its
    model_index.json class name, and for SD 1.x/2.x classes from the text encoder's width."""
    index = _read_json(folder / "model_index.json")
    name = str(index.get("_class_name", ""))
    for fam in FAMILIES.values():
        if name in fam.pipeline_classes:
            if fam.arch == Arch.SD15 and _is_open_clip(folder):
                return FAMILIES[Arch.SD2]
            return fam
    supported = ", ".join(sorted(c for f in FAMILIES.values() for c in f.pipeline_classes))
    raise UnsupportedModel(
        f"{folder} holds a {name or 'pipeline of unknown class'}, which inpaintd cannot inpaint with; "
        f"supported: {supported}"
    )


def _is_open_clip(folder: Path) -> bool:
    """SD 2.x folders use the same pipeline classes as SD 1.x but a 1024-wide OpenCLIP text encoder."""
    path = folder / "text_encoder" / "config.json"
    if not path.is_file():
        return False
    try:
        return int(_read_json(path).get("hidden_size", 768)) == 1024
    except (UnsupportedModel, TypeError, ValueError):
        return False


def native_size_of_folder(folder: Path, fam: Family) -> int:
    """The denoiser's sample size times the VAE's downscale, from the configs alone (a
    fine-tune may differ from its family's size, e.g. SD 2.1 at 768); the family's size
    when the configs do not say."""
    try:
        denoiser = _read_json(folder / fam.denoiser / "config.json")
        vae = _read_json(folder / "vae" / "config.json")
        # Qwen-Image's 3D VAE (Wan's) has no `block_out_channels`: one 2x step per `temperal_downsample`.
        levels = len(vae["temperal_downsample"]) if "temperal_downsample" in vae else len(vae["block_out_channels"]) - 1
        return int(denoiser["sample_size"]) * 2 ** levels
    except (UnsupportedModel, KeyError, TypeError, ValueError):
        return fam.native_size


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor names -> dtype/shape of a .safetensors file, from its JSON header (no torch)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


#: GGML tensor types by number, as GGUF files name them (the ones diffusion GGUFs use).
_GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 20: "IQ4_NL", 23: "IQ4_XS", 30: "BF16",
}
#: GGUF metadata value types: struct format, or None for strings (8) and arrays (9).
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_header(path: Path) -> dict[str, Any]:
    """Tensor names -> dtype (GGML type name) / shape (torch's order) of a GGUF file, with
    its metadata key/values under "__metadata__"; from the header alone (no numpy, no torch).

    The layout (GGUF v2/v3): b"GGUF", version u32, tensor count u64, metadata count u64,
    the metadata (key string, type u32, value), then per tensor its name, dimension count
    u32, dimensions u64 (innermost first), type u32 and data offset u64."""
    with open(path, "rb") as f:

        def unpack(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("the GGUF header ends early")
            return struct.unpack(fmt, data)

        def string() -> str:
            (length,) = unpack("<Q")
            if length > 1 << 20:
                raise ValueError("implausible GGUF string")
            return f.read(length).decode("utf-8", "replace")

        def value(kind: int, depth: int = 0) -> Any:
            if kind in _GGUF_SCALARS:
                return unpack(_GGUF_SCALARS[kind])[0]
            if kind == 8:
                return string()
            if kind == 9 and depth == 0:
                item_kind, count = unpack("<IQ")
                if count > 1 << 24:
                    raise ValueError("implausible GGUF array")
                return [value(item_kind, 1) for _ in range(count)]
            raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic at its start")
        (version,) = unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not read here (2 and 3 are)")
        n_tensors, n_meta = unpack("<QQ")
        if n_tensors > 1 << 20 or n_meta > 1 << 20:
            raise ValueError("implausible GGUF header")
        metadata: dict[str, Any] = {}
        for _ in range(n_meta):
            key = string()
            (kind,) = unpack("<I")
            metadata[key] = value(kind)
        header: dict[str, Any] = {}
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = unpack("<I")
            if n_dims > 8:
                raise ValueError(f"implausible GGUF tensor {name!r}")
            dims = unpack(f"<{n_dims}Q")
            kind, _offset = unpack("<IQ")
            header[name] = {"dtype": _GGML_TYPES.get(kind, f"GGML type {kind}"), "shape": list(reversed(dims))}
    header["__metadata__"] = metadata
    return header


def read_single_file_header(path: Path) -> dict[str, Any]:
    """A `.safetensors` or `.gguf` file's tensor names -> dtype/shape, and its metadata under
    "__metadata__" (what the families' `single_file_match` functions read).  Raises OSError or
    ValueError for a file that is neither (pickles are never opened here)."""
    if path.suffix.lower() == ".gguf":
        return gguf_header(path)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors header")
    return header


#: Text encoders of a bundled SD 3.x file (Stability's `text_encoders.*`): the tensor that
#: marks each (diffusers' own markers) -> pipeline component.
_SD3_TEXT_ENCODERS = {
    "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": "text_encoder",
    "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight": "text_encoder_2",
    "text_encoders.t5xxl.transformer.shared.weight": "text_encoder_3",
}
_SD3_MEDIUM_REPO = "stabilityai/stable-diffusion-3.5-medium"  # MMDiT-X: 24 blocks, extra self-attention
_SD3_0_MEDIUM_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"  # 24 plain joint blocks


def _sd3_reference(header: dict[str, Any], family: Family) -> str:
    """The diffusers repo whose configs fit an SD 3.x file: Medium's layouts differ from
    Large's (and Large Turbo's, which is Large's)."""
    keys = _denoiser(header)
    if any(".x_block.attn2." in k for k in keys):
        return _SD3_MEDIUM_REPO
    depth = {k.split(".")[1] for k in keys if k.startswith("joint_blocks.")}
    return _SD3_0_MEDIUM_REPO if len(depth) == 24 else family.reference_repos[0]


@dataclass(frozen=True)
class SingleFile:
    """What a single-file checkpoint is, read from its tensor names, shapes and metadata."""

    family: Family
    inpainting: bool  # a 9-channel denoiser (latents + mask + masked image), or FLUX.1 Fill
    #: The pipeline components whose weights the file holds ("transformer", "vae",
    #: "text_encoder", ...); empty for the UNet families, whose files diffusers lays out whole.
    components: frozenset[str] = frozenset()
    format: str = "safetensors"  # or "gguf"
    #: The GGUF's quantisation (its commonest tensor type, e.g. "Q8_0"); "" otherwise.
    quantization: str = ""
    #: The diffusers repo whose configs lay the file out, where the family row's does not fit.
    reference: str = ""

    @property
    def reference_repo(self) -> str:
        return self.reference or self.family.reference_repos[0 if self.inpainting else 1]

    @property
    def what(self) -> str:
        """The file for people: "a FLUX.1 Fill transformer (GGUF Q8_0)"."""
        if not self.components:
            return f"a {self.family.label} checkpoint"
        parts = "transformer" if self.components == {"transformer"} else "transformer with " + ", ".join(
            sorted(self.components - {"transformer"})
        )
        kind = f"GGUF {self.quantization}".strip() if self.format == "gguf" else "safetensors"
        return f"a {self.family.label} {parts} ({kind})"


#: What a prompt loses when an optional large text encoder is left out (`serve --drop-t5`).
DROPPED_T5_COST = (
    "prompts are read by the two CLIP encoders alone: 77 tokens at most, and weaker on long, detailed "
    "prompts and on text to be drawn in the picture"
)


def droppable(family: Family) -> tuple[str, ...]:
    """The components `serve --drop-t5` leaves out of `family`: its large text encoder and
    that encoder's tokenizer, where the pipeline runs without them (SD 3.x's T5); ()
    elsewhere (FLUX.1 needs its T5: its prompt is mostly read by it)."""
    large = family.large_text_encoder
    if not large or large not in family.optional_components:
        return ()
    tokenizer = large.replace("text_encoder", "tokenizer")
    return tuple(c for c in family.optional_components if c in (large, tokenizer))


def inspect_single_file(path: Path) -> SingleFile | None:
    """The family of a `.safetensors` checkpoint in its original layout (LDM for SD 1.x/2.x/
    SDXL, Stability's for SD 3.x, BFL's or ComfyUI's for FLUX.1, Chroma and FLUX.2 klein,
    ComfyUI's (or bare) for Qwen-Image-Edit and Z-Image) or of a GGUF-quantised transformer; None for a pickle (never opened here) or a
    layout the table does not know (`single_file_problem` then says what it is).  Never from
    the file's name."""
    if path.suffix.lower() not in (".safetensors", ".gguf"):
        return None
    try:
        header = read_single_file_header(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    first_conv = header.get("model.diffusion_model.input_blocks.0.0.weight", {})
    shape = _shape(first_conv) or [0, 4]
    inpainting = len(shape) > 1 and shape[1] == 9
    for arch in _SINGLE_FILE_ORDER:
        fam = FAMILIES[arch]
        if not fam.single_file_match(header):
            continue
        if fam.denoiser != "transformer":
            return SingleFile(fam, inpainting)
        return _transformer_file(path, header, fam)
    return None


def _transformer_file(path: Path, header: dict[str, Any], fam: Family) -> SingleFile:
    components = {"transformer"}
    reference = ""
    if fam.arch == Arch.FLUX2_KLEIN:
        reference = _klein_reference(header)
    if fam.arch == Arch.SD3:
        reference = _sd3_reference(header, fam)
        if any(k.startswith("first_stage_model.") for k in header):
            components.add("vae")
        components |= {c for marker, c in _SD3_TEXT_ENCODERS.items() if marker in header}
    # FLUX files are read for their transformer only: ComfyUI's bundled saves name their
    # VAE `vae.*`, which diffusers does not convert; those parts come from the reference.
    quantization = ""
    if path.suffix.lower() == ".gguf":
        counts: dict[str, int] = {}
        for key, info in header.items():
            dtype = info.get("dtype") if key != "__metadata__" and isinstance(info, dict) else None
            if dtype not in (None, "F32", "F16", "BF16"):
                counts[dtype] = counts.get(dtype, 0) + 1
        quantization = max(counts, key=lambda k: counts[k]) if counts else "F16"
    return SingleFile(
        fam, fam.arch == Arch.FLUX_FILL, frozenset(components),
        "gguf" if path.suffix.lower() == ".gguf" else "safetensors", quantization, reference,
    )


def single_file_problem(path: Path) -> str:
    """Why `inspect_single_file` found no family in `path`, for the person who chose it."""
    known = (
        "inpaintd reads SD 1.x/2.x and SDXL checkpoints (LDM layout), SD 3.x (Stability's layout), "
        "FLUX.1 Fill and Kontext transformers (BFL's or ComfyUI's layout), Chroma transformers (the original "
        "or ComfyUI's layout), FLUX.2 klein transformers (BFL's or ComfyUI's layout), Qwen-Image-Edit "
        "transformers (ComfyUI's layout), Z-Image transformers (the original or ComfyUI's layout) and GGUF "
        "quantisations of those"
    )
    if path.suffix.lower() not in (".safetensors", ".gguf"):
        return f"{path}: a {path.suffix or 'suffix-less'} file is not inspected (a pickle is never opened to look); {known}"
    try:
        header = read_single_file_header(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        return f"{path}: cannot be read as {path.suffix.lstrip('.')} ({exc})"
    keys = _denoiser(header)
    if "transformer_blocks.0.img_mod.1.weight" in keys and "txt_norm.weight" in keys:
        return f"{path}: {_qwen_problem(header)}, not a family inpaintd inpaints with; {known}"
    if "double_blocks.0.img_attn.norm.key_norm.scale" in keys:
        channels = _shape(keys.get("img_in.weight"))[1:2]
        if "single_stream_modulation.lin.weight" in keys:
            if "guidance_in.in_layer.weight" in keys:
                what = ("a FLUX.2 dev transformer (guidance-distilled, Flux2Pipeline with a Mistral text encoder; "
                        "inpaintd runs FLUX.2 klein)")
            else:
                what = f"a FLUX.2 transformer with {channels[0] if channels else 'unknown'} input channels (klein takes 128)"
        elif any(k.startswith("distilled_guidance_layer.") for k in keys):
            what = "a Chroma transformer that does not take FLUX.1's latents (Chroma1-Radiance works in pixel space)"
        elif "guidance_in.in_layer.weight" not in keys:
            what = "a FLUX.1 schnell transformer (text-to-image, no guidance embedding)"
        elif channels == [128]:
            what = "a FLUX.1 Depth or Canny transformer (128 channels in: control, not inpainting)"
        elif channels == [64]:
            what = "a FLUX.1 dev transformer (its metadata names dev, not Kontext)"
        else:
            what = f"a FLUX.1 transformer with {channels[0] if channels else 'unknown'} input channels"
        return f"{path}: {what}, not a family inpaintd inpaints with; {known}"
    sample = ", ".join(repr(k) for k in list(k for k in header if k != "__metadata__")[:3]) or "none"
    return f"{path}: its tensor names (e.g. {sample}) are of no family inpaintd knows; {known}"


def _qwen_problem(header: dict[str, Any]) -> str:
    """What a Qwen-Image-shaped file that is not Qwen-Image-Edit is, for people."""
    keys = _denoiser(header)
    if any(k.startswith("txt_in.text_norm.") for k in keys):
        return "a Qwen-Image-2.1 transformer (another model)"
    if any(k.startswith("time_text_embed.addition_t_embedding.") for k in keys):
        return "a Qwen-Image-Layered transformer (QwenImageLayeredPipeline: layers, not inpainting)"
    if any(k.startswith("controlnet_") for k in keys):
        return "a Qwen-Image ControlNet"
    if not _is_qwen_image_transformer(header):
        channels = _shape(keys.get("img_in.weight"))[1:2]
        return f"a Qwen-Image-style transformer with {channels[0] if channels else 'unknown'} input channels (64 expected)"
    return {
        "image": "a Qwen-Image transformer (text-to-image: its metadata names Qwen-Image, not Qwen-Image-Edit)",
        "edit-plus": ("a Qwen-Image-Edit-2509/2511 transformer (its metadata says so: QwenImageEditPlusPipeline, "
                      "another prompt template and several pictures; inpaintd runs Qwen-Image-Edit)"),
        "layered": "a Qwen-Image-Layered transformer (its metadata says so: layers, not inpainting)",
    }.get(_qwen_variant(header), "a Qwen-Image transformer")


# -- what a pipeline folder lacks -------------------------------------------------------

#: Pipeline entries that carry no weights (their folders hold configs and vocabularies).
_WEIGHTLESS = ("tokenizer", "scheduler", "processor", "featureextractor")
#: Components inpaintd never loads (the engine passes None for them).
_NOT_LOADED = ("safety_checker",)
#: The weighted parts of the transformer families' pipelines, where no model_index.json says.
_PARTS: dict[str, tuple[str, ...]] = {
    Arch.SD3.value: ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"),
    Arch.FLUX_FILL.value: ("transformer", "vae", "text_encoder", "text_encoder_2"),
    Arch.FLUX_KONTEXT.value: ("transformer", "vae", "text_encoder", "text_encoder_2"),
    Arch.Z_IMAGE.value: ("transformer", "vae", "text_encoder"),
    Arch.CHROMA.value: ("transformer", "vae", "text_encoder"),
    Arch.FLUX2_KLEIN.value: ("transformer", "vae", "text_encoder"),
    Arch.QWEN_EDIT.value: ("transformer", "vae", "text_encoder"),
}
#: What a component is, for people (by its class in model_index.json).
_KINDS = {"CLIPTextModel": "CLIP text encoder", "CLIPTextModelWithProjection": "CLIP text encoder",
          "T5EncoderModel": "T5 text encoder", "AutoencoderKL": "VAE", "AutoencoderKLFlux2": "VAE",
          "AutoencoderKLQwenImage": "VAE", "Qwen3ForCausalLM": "Qwen3 text encoder",
          "Qwen2_5_VLForConditionalGeneration": "Qwen2.5-VL text encoder"}


def weighted_components(folder: Path, family: Family | None = None) -> dict[str, str]:
    """The components of a diffusers folder that carry weights -> their class names, from
    its model_index.json (the family's parts where it has none)."""
    try:
        index = _read_json(folder / "model_index.json")
    except UnsupportedModel:
        return dict.fromkeys(_PARTS.get(family.arch.value, ()) if family else (), "")
    out: dict[str, str] = {}
    for name, entry in index.items():
        if name.startswith("_") or name in _NOT_LOADED or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        if not any(w in str(entry[1]).lower() for w in _WEIGHTLESS):
            out[name] = str(entry[1])
    return out


def has_weights(folder: Path, pickles: bool = True) -> bool:
    """A component folder with a weights file (safetensors, or pickles where they count)."""
    patterns = ("*.safetensors", "*.bin") if pickles else ("*.safetensors",)
    return folder.is_dir() and any(f.is_file() for pattern in patterns for f in folder.glob(pattern))


def missing_components(folder: Path, have: frozenset[str] = frozenset(), family: Family | None = None,
                       pickles: bool = True) -> list[str]:
    """The weighted components of `folder`'s pipeline whose weights are neither in `have`
    (held elsewhere, e.g. by a single file) nor in the folder, in model_index.json order."""
    return [
        name for name in weighted_components(folder, family)
        if name not in have and not has_weights(folder / name, pickles)
    ]


#: How to name a diffusers folder that completes a single file, in messages.
CONFIG_HINT = "give a diffusers folder of the same model as its config (serve --model-config FILE=FOLDER)"
_OPTIONAL_NOTE = "optional: the pipeline runs without it, at some cost in prompt fidelity for long prompts"


def _folders_of(names: list[str]) -> list[str]:
    """Download patterns for components: a text encoder goes with its tokenizer."""
    out = []
    for name in names:
        out.append(f"{name}/*")
        if name.startswith("text_encoder"):
            out.append(f"{name.replace('text_encoder', 'tokenizer')}/*")
    return out


def missing_parts_text(family: Family, folder: Path, names: list[str], repo: str | None) -> str:
    """Each missing component, what it is, whether the pipeline can do without it, and how
    to get it: `vae (VAE): hf download REPO --include "vae/*"; ...`."""
    kinds = weighted_components(folder, family)
    items = []
    for name in names:
        label = ", ".join(x for x in (
            _KINDS.get(kinds.get(name, ""), ""), _OPTIONAL_NOTE if name in family.optional_components else "",
        ) if x)
        pattern = " ".join(f'"{p}"' for p in _folders_of([name]))
        get = f"`hf download {repo} --include {pattern}`" if repo else f"copy its {name}/ folder into {folder}"
        items.append(f"{name}{f' ({label})' if label else ''}: {get}")
    return "; ".join(items)


def reference_download_hint(sf: SingleFile, repo: str, patterns: bool = False) -> Any:
    """The `hf download` command (in backticks, with a note on optional parts) that fetches
    what a single file needs from its reference repo: the configs, tokenizers, scheduler and
    the weighted parts the file lacks (`patterns`: the allow-patterns alone)."""
    parts = [n for n in _PARTS.get(sf.family.arch.value, ()) if n not in sf.components]
    wanted = ["*.json", "*.txt", "*.model", "scheduler/*", *_folders_of(parts)]
    if patterns:
        return wanted
    command = "`hf download " + repo + " --include " + " ".join(f'"{w}"' for w in wanted) + "`"
    optional = [n for n in parts if n in sf.family.optional_components]
    return command + "".join(
        f" ({n} is {_OPTIONAL_NOTE}; leave out its folders to do without it)" for n in optional
    )


def no_reference_message(path: Path, sf: SingleFile, repo: str, cache: Path) -> str:
    """A transformer file whose reference repo is not in the hub cache: what it is, what it
    needs, and each way to get it."""
    return (
        f"'{path}' is {sf.what}; the rest of its pipeline comes from {repo}, which is not in the Hugging Face "
        f"cache at {cache}: run {reference_download_hint(sf, repo)} on a machine with network access and copy "
        f"the cache here, {CONFIG_HINT}, or start the daemon with --allow-download"
    )


def missing_parts_message(path: Path, sf: SingleFile, reference: Path, repo: str | None, missing: list[str]) -> str:
    """A transformer file whose reference folder lacks parts the file does not hold either."""
    source = f"{repo}'s snapshot at {reference}" if repo else str(reference)
    get = "get them on a machine with network access and copy the Hugging Face cache here, or " if repo else "or "
    return (
        f"'{path}' is {sf.what}; the rest of its pipeline comes from {source}, which lacks "
        f"{missing_parts_text(sf.family, reference, missing, repo)}; {get}{CONFIG_HINT}"
    )


#: Processing sizes of a compiled engine are multiples of this: compiled code is specialised
#: to each shape it meets, and 64 px (8 latent pixels) keeps jobs to about a dozen shapes.
COMPILED_SHAPE_MULTIPLE = 64


def caps_for(family: Family, native_size: int | None, compile: str, size_multiple: int | None = None) -> ModelCaps:
    """A diffusion model as a job is prepared for it: its family row, the native size its
    configs give, and the shape grid its compile setting implies."""
    multiple = size_multiple or family.size_multiple
    return ModelCaps(
        engine="diffusers",
        family=family.arch.value,
        native_size=native_size or family.native_size,
        size_multiple=multiple,
        shape_multiple=COMPILED_SHAPE_MULTIPLE if compile != "off" else multiple,
        default_steps=family.default_steps,
        default_guidance=family.default_guidance,
        schedulers=family.schedulers,
        seeded=True,
        prefills=True,
    )


def described(info: ModelInfo, family: Family) -> ModelInfo:
    """`info` with what clients need to set a job up for a model of `family`: its name,
    size multiple, schedulers, the defaults an editor applies when the artist picks it,
    and which inputs it takes (protocol section 5.3)."""
    return replace(
        info,
        label=family.label,
        size_multiple=family.size_multiple,
        schedulers=family.schedulers,
        defaults={
            "steps": family.default_steps,
            "guidance_scale": family.default_guidance,
            "strength": family.default_strength,
            "scheduler": "default",
        },
        takes={
            "negative_prompt": family.negative_prompt,
            "reference_image": bool(getattr(family, "reference_image", False)),
            "lora": family.lora,
            "textual_inversion": family.textual_inversion,
        },
    )


def all_schedulers() -> tuple[str, ...]:
    """Every scheduler name some family accepts, in table order (for clients' menus)."""
    seen: dict[str, None] = {}
    for fam in FAMILIES.values():
        seen.update(dict.fromkeys(fam.schedulers))
    return tuple(seen)
