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


_SD_SCHEDULERS = ("default", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "lcm")
#: Flow-matching families: their own (FlowMatchEulerDiscreteScheduler), or "euler", which
#: names the same flow-matching Euler sampler for them (the wire's scheduler names are shared).
_FLOW_SCHEDULERS = ("default", "euler")


def _has_prefix(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda header: any(k.startswith(prefix) for k in header)


def _never(header: dict[str, Any]) -> bool:
    """Single files of this family are not loaded yet (they need their own layout rules)."""
    return False


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
        reference_repos=("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large"),
        single_file_match=_never,
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
        single_file_match=_never,
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
        single_file_match=_never,
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=False,  # guidance-distilled (true CFG is off at diffusers' default)
        default_guidance=2.5,  # BFL's model card (diffusers' own default is 3.5)
        pins_size=True,
        large_text_encoder="text_encoder_2",
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
        reference_repos=("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-4B"),
        single_file_match=_never,
        safety_checker=False,
        loop=Loop.FLOW,
        negative_prompt=True,  # used with classifier-free guidance by the Base checkpoints
        default_guidance=1.0,
        pooled_prompt=False,
        max_pixels=1024 * 1024,
        large_text_encoder="text_encoder",
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
}

#: Single files are matched in this order: the most specific marker first.
_SINGLE_FILE_ORDER = (Arch.SDXL, Arch.SD2, Arch.SD15)  # SD 3 and FLUX files: not yet


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
        return int(denoiser["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
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


@dataclass(frozen=True)
class SingleFile:
    """What a single-file checkpoint is, read from its tensor names."""

    family: Family
    inpainting: bool  # a 9-channel denoiser (latents + mask + masked image)

    @property
    def reference_repo(self) -> str:
        return self.family.reference_repos[0 if self.inpainting else 1]


def inspect_single_file(path: Path) -> SingleFile | None:
    """The family of a `.safetensors` checkpoint in the original (LDM) layout; None for a
    pickle (never opened here) or a layout the table does not know."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = safetensors_header(path)
    except (OSError, ValueError, struct.error):
        return None
    first_conv = header.get("model.diffusion_model.input_blocks.0.0.weight", {})
    shape = first_conv.get("shape") or [0, 4]
    inpainting = len(shape) > 1 and shape[1] == 9
    for arch in _SINGLE_FILE_ORDER:
        if FAMILIES[arch].single_file_match(header):
            return SingleFile(FAMILIES[arch], inpainting)
    return None


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
