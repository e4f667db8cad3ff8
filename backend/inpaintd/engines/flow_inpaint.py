"""The flow-matching transformer families (SD 3.5, FLUX.1 Fill and Kontext, FLUX.2 klein,
Qwen-Image-Edit, Z-Image, Chroma) through their stock pipelines.

Unlike the UNet families (`sd_inpaint.py`, inpaintd's own loop), these run diffusers'
`StableDiffusion3InpaintPipeline`, `FluxFillPipeline`, `FluxKontextInpaintPipeline`,
`Flux2KleinInpaintPipeline`, `QwenImageEditInpaintPipeline`, `ZImageInpaintPipeline` and
`ChromaInpaintPipeline` as they are, and steer them from `callback_on_step_end`, which fires once per denoising step:

- progress: one `denoising` event per step, with the pipeline's own count of steps
  (`pipe.num_timesteps`, set before its loop starts);
- cancel: the callback raises `JobCancelled`, which leaves the pipeline at once, within
  the step that was running (`pipe._interrupt` would only skip the remaining steps and
  still decode);
- seeds: one CPU generator per variant, so the pipeline draws each variant's latents with
  its own seed (the prompt is encoded once and repeated, one row per variant);
- the prompt: encoded once per prompt pair and cached by the engine; except where the text
  encoder is a vision-language model that reads the picture too (Qwen-Image-Edit's
  Qwen2.5-VL, the row's `vision_prompt`): its embeddings depend on the image, so they are
  encoded here, per picture, and kept only for the same pixels; where the pipeline takes its
  embeddings as a list, one variable-length tensor per prompt (Z-Image, the row's
  `listed_prompt`), each variant is one element of that list; where it takes a token mask with
  its embeddings (Chroma's T5 padding mask, the row's `masked_prompt`), the mask is cached and
  repeated with them, one row per variant;
- guidance: the distilled guidance embedding (FLUX), classifier-free guidance with the
  negative prompt (SD 3, FLUX.2 klein Base, Z-Image above a scale of 0, Chroma above 1), or the latter under
  the name `true_cfg_scale` (Qwen-Image, the row's `true_cfg`);
- reference images (the row's `reference_image`): Kontext's and klein's `image_reference`,
  scaled to at most a megapixel;
- the output: latents (`output_type="latent"`), decoded here in chunks of at most a
  megapixel to uint8 on the device, as `sd_inpaint` does (Z-Image's latents are not packed,
  Chroma's are; both decode with FLUX.1's VAE, its scale and shift undone as for FLUX.1).  This also fixes a slip in
  diffusers 0.42.1's SD 3 inpaint pipeline, which decodes without adding the VAE's
  `shift_factor` back (its text-to-image pipeline does): colours would drift;
- the size: the runner has chosen it; a family whose pipeline would resize the image to
  resolutions of its own (Kontext snaps to its preferred ones and to a megapixel;
  Qwen-Image-Edit works at 1024^2 pixels whatever it is given) is told not to (its row's
  `pins_size`); one whose pipeline scales anything above an area down with no way to say
  no (FLUX.2 klein, 1 MP; the runner's sizes may round just above) has its output scaled
  back to the job's size (its row's `max_pixels`).

The runner composites the result, so pixels outside the grown mask stay the artist's.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .sd_inpaint import DECODE_PIXELS

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..families import Family


@dataclass
class FlowPrompt:
    """A prompt encoded once by the pipeline's `encode_prompt` (batch 1).

    SD 3: all four; FLUX.1: `positive`, `pooled` (no negative: it is guidance-distilled);
    FLUX.2 klein: `positive`, `negative` (no pooled embedding); Qwen-Image-Edit: only `text`
    here, encoded with the job's picture when the job runs (`FlowInpaintLoop.__call__`), to
    `positive` and `negative` with their token masks; Z-Image: `positive`, `negative`, each
    the one element of the list its `encode_prompt` gives, tokens x width (its real tokens
    only: no batch axis, no mask); Chroma: `positive`, `negative`, each padded to T5's length
    with its `mask` (its real tokens and one padding token; the rest masked out).
    """

    positive: torch.Tensor | None
    pooled: torch.Tensor | None
    negative: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    #: Which tokens of `positive`/`negative` are real (Qwen's and Chroma's encoders; None: all of them).
    mask: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None
    #: (prompt, negative prompt) still to be encoded with the picture (a `vision_prompt` family).
    text: tuple[str, str] | None = None


@dataclass
class FlowInputs:
    """One job, as the engine prepared it."""

    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W uint8, >= 128 = regenerate (the pipelines binarise at 0.5)
    prompt: FlowPrompt
    generators: list[Any]  # one CPU torch.Generator per variant
    steps: int
    guidance_scale: float
    strength: float
    #: Reference images (H x W x 3 uint8 each, any size) for a family that takes them.
    references: list[np.ndarray] = field(default_factory=list)


def pipeline_strength(steps: int, strength: float) -> float:
    """The `strength` to give these pipelines so that they run exactly `int(steps × strength)`
    steps, as the protocol promises (section 9.8) and the SD loop does.

    Their `get_timesteps` runs `steps - int(steps - steps × strength)`, which floating point
    can make one more (10 × 0.3 = 3.0000000000000004 gives 4).  Below 1, a strength half a
    step under the wanted count gives that count and the same starting timestep (the start
    is all that strength decides); 1 stays 1 (pure noise, no image latents needed).
    """
    if strength >= 1.0:
        return 1.0
    wanted = min(int(steps * strength), steps)
    return (wanted - 0.5) / steps


#: References are scaled down to at most this many pixels (aspect kept): what FLUX.2 klein's
#: pipeline does itself, and what Kontext was trained with; Kontext's pipeline, told not to
#: snap sizes (`pins_size`), would otherwise put a reference of any size into its sequence.
REFERENCE_PIXELS = 1024 * 1024
#: Reference sides are multiples of this (VAE downscale 8 x 2x2 latent packing).
REFERENCE_MULTIPLE = 16

#: Picture-dependent prompt embeddings kept (a `vision_prompt` family): the variants of one
#: job, and re-runs of the same crop with new seeds, share them.
VISION_PROMPT_CACHE_SIZE = 4

#: Qwen2.5-VL's image preprocessing as Qwen-Image-Edit's `processor/preprocessor_config.json`
#: has it (transformers' Qwen2-VL defaults but for the upper bound): 14 px patches, 2x2 of them
#: merged into one token, between 56^2 and 3584^2 pixels, CLIP's mean and std.
QWEN_VL_IMAGE = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384, "patch_size": 14,
                 "temporal_patch_size": 2, "merge_size": 2}


class QwenVLProcessor:
    """What the Qwen-Image pipelines ask of transformers' `Qwen2VLProcessor`: the picture as
    Qwen2.5-VL's patches, and each prompt with its `<|image_pad|>` repeated once per merged
    patch, tokenised.

    transformers 5's `Qwen2VLProcessor` cannot be built without torchvision (its video half),
    and no torchvision build matches the CPU torch pinned here; a folder saved without its
    processor (the family's `optional_components`) runs on this one, made from the
    pipeline's own tokenizer and the settings above.
    """

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer: Any) -> None:
        from transformers import Qwen2VLImageProcessorPil

        self.tokenizer = tokenizer
        self.image_processor = Qwen2VLImageProcessorPil(**QWEN_VL_IMAGE)

    def __call__(self, text: str | list[str], images: Any = None, padding: bool = True,
                 return_tensors: str = "pt", **_: Any) -> Any:
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        data: dict[str, Any] = {}
        if images is not None:
            vision = self.image_processor(images=images, return_tensors=return_tensors)
            merge = int(self.image_processor.merge_size) ** 2
            counts = iter([int(grid.prod()) // merge for grid in vision["image_grid_thw"]])
            # Each placeholder, across the batch in order, stands for the next image's tokens.
            texts = ["".join(part if i == 0 else self.image_token * next(counts) + part
                             for i, part in enumerate(t.split(self.image_token))) for t in texts]
            data.update(vision)
        data.update(self.tokenizer(texts, padding=padding, return_tensors=return_tensors))
        return BatchFeature(data)


#: The (width, height) that a pipeline sizing its work with its module's `calculate_dimensions`
#: (Qwen-Image-Edit's) uses for the call in flight on this thread; None: its own choice.
_PINNED_SIZE: ContextVar[tuple[int, int] | None] = ContextVar("inpaintd_pinned_size", default=None)


def _pin_module_size(module: Any) -> None:
    """Make `module.calculate_dimensions` give the pinned size while one is set (`pinned_size`).

    diffusers 0.42.1's Qwen-Image-Edit pipelines ignore the `height`/`width` they are given
    and work at 1024^2 pixels at the input's aspect, sides multiples of 32, with no argument
    to say otherwise; the runner has chosen the size already (about the same area).  Only this
    thread's call in flight is affected, so other callers of the pipeline get its own sizes."""
    original = module.calculate_dimensions
    if getattr(original, "inpaintd_pin", False):
        return

    def calculate_dimensions(target_area: float, ratio: float) -> tuple[int, int, None]:
        pinned = _PINNED_SIZE.get()
        if pinned is None:
            return original(target_area, ratio)
        return pinned[0], pinned[1], None

    calculate_dimensions.inpaintd_pin = True  # type: ignore[attr-defined]
    module.calculate_dimensions = calculate_dimensions


class _NoMaskWarning(logging.Filter):
    """Drops the Qwen-Image pipelines' warning, on every call given embeddings without a token
    mask, that padded tokens would count: their `encode_prompt` gives None only where every
    token is real, which a batch of one prompt always is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "prompt_embeds_mask` is not provided" not in record.getMessage()


def _quiet_mask_warning(pipe: Any) -> None:
    logger = logging.getLogger(type(pipe).__module__)
    if not any(isinstance(f, _NoMaskWarning) for f in logger.filters):
        logger.addFilter(_NoMaskWarning())


@contextmanager
def pinned_size(width: int, height: int) -> Iterator[None]:
    """Within this block, a pipeline whose size was pinned (`_pin_module_size`) works at width x height."""
    token = _PINNED_SIZE.set((width, height))
    try:
        yield
    finally:
        _PINNED_SIZE.reset(token)


@contextmanager
def encode_once(vae: Any) -> Iterator[list[int]]:
    """Within this block, `vae.encode` runs once per distinct input: the engine runs a job's
    variants as one pipeline call each, and the stock pipelines encode the same picture (and
    masked picture) again in every call, with that variant's generator.  The encoder is
    deterministic and only the sampling from its latent distribution uses the generator,
    which each caller still does on the kept output, so the pixels are those of encoding
    every time.  Yields [encodes run, encodes spared]; with no VAE (None), changes nothing."""
    import torch

    if vae is None:
        yield [0, 0]
        return
    original = vae.encode
    kept: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any], Any]] = []
    counts = [0, 0]

    def encode(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        for seen, seen_args, seen_kwargs, out in kept:
            if (seen.shape == x.shape and seen.dtype == x.dtype and seen.device == x.device and args == seen_args
                    and kwargs == seen_kwargs and torch.equal(seen, x)):
                counts[1] += 1
                return out
        out = original(x, *args, **kwargs)
        kept.append((x, args, kwargs, out))
        counts[0] += 1
        return out

    patched = "encode" in vars(vae)  # already an instance attribute (a test's spy): put it back
    vae.encode = encode
    try:
        yield counts
    finally:
        if patched:
            vae.encode = original
        else:
            del vae.encode  # the class's method again


def reference_picture(reference: np.ndarray) -> Image.Image:
    """A reference as the pipelines take it: RGB, at most REFERENCE_PIXELS (aspect kept,
    Lanczos), sides multiples of REFERENCE_MULTIPLE (at least one multiple)."""
    from PIL import Image

    arr = np.asarray(reference)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = np.ascontiguousarray(arr[:, :, :3]).astype(np.uint8, copy=False)
    height, width = arr.shape[:2]
    scale = min(1.0, math.sqrt(REFERENCE_PIXELS / (height * width)))
    m = REFERENCE_MULTIPLE
    size = (max(m, int(width * scale) // m * m), max(m, int(height * scale) // m * m))
    picture = Image.fromarray(arr)
    return picture if size == (width, height) else picture.resize(size, Image.Resampling.LANCZOS)


def _default_guidance_embeds(pipe: Any) -> None:
    """Say in the transformer's config that it has no guidance embedding, where it does not say.

    diffusers 0.42.1's `ChromaInpaintPipeline` reads `transformer.config.guidance_embeds`,
    which `ChromaTransformer2DModel` does not define (its guidance is the approximator):
    lodestones' config.json carries the FLUX leftover `guidance_embeds: false` and diffusers
    keeps it, but a config without it fails every job with an AttributeError."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and "guidance_embeds" not in transformer.config:
        transformer.register_to_config(guidance_embeds=False)


class FlowInpaintLoop:
    """Runs one loaded flow pipeline (SD 3.x, FLUX.1 Fill or Kontext, FLUX.2 klein,
    Qwen-Image-Edit, Z-Image, Chroma) for a prepared job."""

    def __init__(
        self, pipe: Any, device: str, *, negative_prompt: bool, pins_size: bool = False, pooled_prompt: bool = True,
        max_pixels: int | None = None, family: Family | None = None,
    ) -> None:
        """`negative_prompt`: the family conditions on a negative prompt with classifier-free
        guidance (SD 3, FLUX.2 klein Base, Qwen-Image, Z-Image, Chroma); otherwise `guidance_scale` is the
        distilled guidance (FLUX.1).  `pins_size`: the pipeline resizes its input unless told
        not to (Kontext, Qwen-Image-Edit).  `pooled_prompt`: its encoders give a pooled
        embedding too (not FLUX.2, Qwen, Z-Image or Chroma).  `max_pixels`: the pipeline scales larger inputs
        down to this area (FLUX.2 klein).  `family`: its row, for the rest (true CFG, a
        vision-language prompt, references); looked up from the pipeline's class when not given."""
        from ..families import family_of_pipeline

        self.pipe = pipe
        self.device = device
        self.negative_prompt = negative_prompt
        self.pins_size = pins_size
        self.pooled_prompt = pooled_prompt
        self.max_pixels = max_pixels
        self.family = family if family is not None else family_of_pipeline(type(pipe).__name__)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        #: FLUX and Qwen-Image pack 2x2 latent patches into tokens; their latents come back packed.
        self.packed = hasattr(pipe, "_unpack_latents")
        #: Guidance is the pipeline's `true_cfg_scale` (Qwen-Image), not its `guidance_scale`.
        self.true_cfg = self.family.true_cfg
        #: Prompts are encoded with the picture, per job (`FlowPrompt.text`).
        self.vision_prompt = self.family.vision_prompt
        #: Embeddings go to and come from the pipeline as lists, one tensor per prompt (Z-Image).
        self.listed_prompt = self.family.listed_prompt
        #: Embeddings go to and come from the pipeline with their token masks (Chroma).
        self.masked_prompt = self.family.masked_prompt
        if self.masked_prompt:
            _default_guidance_embeds(pipe)
        self._vision_cache: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        if self.vision_prompt and getattr(pipe, "processor", None) is None:
            pipe.processor = QwenVLProcessor(pipe.tokenizer)
        if self.true_cfg:
            _quiet_mask_warning(pipe)
        #: How the size is pinned: Kontext takes arguments for it; Qwen-Image-Edit's module
        #: function is told (see `_pin_module_size`).
        self._pin_by_arguments = False
        if pins_size:
            self._pin_by_arguments = "_auto_resize" in inspect.signature(pipe.__call__).parameters
            if not self._pin_by_arguments:
                _pin_module_size(self._sizing_module(pipe))

    @staticmethod
    def _sizing_module(pipe: Any) -> Any:
        """The module whose `calculate_dimensions` the pipeline's `__call__` sizes its work with."""
        for cls in type(pipe).__mro__:
            module = sys.modules.get(cls.__module__)
            if module is not None and callable(getattr(module, "calculate_dimensions", None)):
                return module
        raise ValueError(f"{type(pipe).__name__}: no known way to keep it at the runner's size")

    def encode(self, prompt: str, negative: str) -> FlowPrompt:
        """The prompt pair through the pipeline's own encoders (CLIP x2 and T5 for SD 3,
        CLIP and T5 for FLUX.1, Qwen3 for FLUX.2 and Z-Image, T5 alone for Chroma).  The negative side is always
        encoded where the family takes one, so that one cache entry serves any guidance scale.

        A vision-language encoder (Qwen-Image-Edit) needs the picture, which the engine's
        prompt cache (keyed by the text alone) must not see: only the text is kept here, and
        `__call__` encodes it with each job's picture (`_vision_embeds`)."""
        import torch

        pipe = self.pipe
        if self.vision_prompt:
            return FlowPrompt(None, None, text=(prompt, negative))
        with torch.inference_mode():
            if self.listed_prompt:
                # Z-Image: (list, list), one tensor per prompt; the negative list is empty
                # unless asked for (its own `do_classifier_free_guidance`).
                positives, negatives = pipe.encode_prompt(
                    prompt=prompt, device=pipe._execution_device, do_classifier_free_guidance=self.negative_prompt,
                    negative_prompt=negative,
                )
                return FlowPrompt(positives[0], None, negatives[0] if self.negative_prompt else None)
            if self.masked_prompt:
                # Chroma: (embeds, text ids, mask, negative embeds, negative text ids, negative
                # mask); the masks keep the real tokens and one padding token.
                pos, _ids, mask, neg, _neg_ids, neg_mask = pipe.encode_prompt(
                    prompt=prompt, negative_prompt=negative, device=pipe._execution_device, num_images_per_prompt=1,
                    do_classifier_free_guidance=self.negative_prompt,
                )
                return FlowPrompt(pos, None, neg, mask=mask, negative_mask=neg_mask)
            if not self.pooled_prompt:
                device = pipe._execution_device
                pos, _text_ids = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1)
                neg = None
                if self.negative_prompt:
                    neg, _text_ids = pipe.encode_prompt(prompt=negative, device=device, num_images_per_prompt=1)
                return FlowPrompt(pos, None, neg)
            if self.negative_prompt:
                pos, neg, pooled, neg_pooled = pipe.encode_prompt(
                    prompt=prompt, prompt_2=None, prompt_3=None, device=pipe._execution_device,
                    num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative,
                )
                return FlowPrompt(pos, pooled, neg, neg_pooled)
            pos, pooled, _text_ids = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=pipe._execution_device, num_images_per_prompt=1,
            )
            return FlowPrompt(pos, pooled)

    def _vision_embeds(self, text: str, picture: Image.Image, digest: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`text` encoded with `picture` by the pipeline's `encode_prompt` (its prompt template,
        the processor, the VL model's last hidden states): embeddings and token mask.

        Cached by the text and a digest of the pixels, never by the text alone: the same
        instruction means other embeddings for another picture."""
        key = (text, digest)
        cached = self._vision_cache.get(key)
        if cached is not None:
            self._vision_cache.move_to_end(key)
            return cached
        pipe = self.pipe
        embeds, mask = pipe.encode_prompt(prompt=text, image=picture, device=pipe._execution_device, num_images_per_prompt=1)
        self._vision_cache[key] = (embeds, mask)
        while len(self._vision_cache) > VISION_PROMPT_CACHE_SIZE:
            self._vision_cache.popitem(last=False)
        return embeds, mask

    def _prompt_kwargs(self, job: FlowInputs, picture: Image.Image, n: int) -> dict[str, Any]:
        """The prompt's embeddings as the pipeline takes them, one row per variant.

        The negative side goes in where the family guides with it; with true CFG only above
        a scale of 1, where the pipeline uses it (for Qwen-Image-Edit that also spares a pass
        of the VL model).  A `listed_prompt` pipeline (Z-Image) takes lists, one element per
        variant, and the negative list exactly when it guides (any scale above 0): given
        embeddings and no negative ones, it refuses to guide.  A `masked_prompt` pipeline
        (Chroma) takes each embedding's token mask under its own names, and guides above a
        scale of 1 only, as true CFG does."""
        emb = job.prompt
        if self.listed_prompt:
            assert emb.positive is not None
            listed: dict[str, Any] = {"prompt_embeds": [emb.positive] * n}
            if self.negative_prompt and job.guidance_scale > 0:
                assert emb.negative is not None
                listed["negative_prompt_embeds"] = [emb.negative] * n
            return listed
        guides_above_one = self.true_cfg or self.masked_prompt
        use_negative = self.negative_prompt and (not guides_above_one or job.guidance_scale > 1.0)
        mask_name, negative_mask_name = (
            ("prompt_attention_mask", "negative_prompt_attention_mask") if self.masked_prompt
            else ("prompt_embeds_mask", "negative_prompt_embeds_mask")
        )
        if emb.text is not None:
            prompt, negative = emb.text
            digest = hashlib.blake2b(picture.tobytes(), digest_size=16).hexdigest() + f"{picture.size}"
            pos, mask = self._vision_embeds(prompt, picture, digest)
            neg, neg_mask = self._vision_embeds(negative, picture, digest) if use_negative else (None, None)
            emb = FlowPrompt(pos, None, neg, mask=mask, negative_mask=neg_mask)
        assert emb.positive is not None
        kwargs: dict[str, Any] = {"prompt_embeds": emb.positive.repeat(n, 1, 1)}
        if emb.mask is not None:
            kwargs[mask_name] = emb.mask.repeat(n, 1)
        if emb.pooled is not None:
            kwargs["pooled_prompt_embeds"] = emb.pooled.repeat(n, 1)
        if use_negative:
            assert emb.negative is not None
            kwargs["negative_prompt_embeds"] = emb.negative.repeat(n, 1, 1)
            if emb.negative_mask is not None:
                kwargs[negative_mask_name] = emb.negative_mask.repeat(n, 1)
            if emb.negative_pooled is not None:
                kwargs["negative_pooled_prompt_embeds"] = emb.negative_pooled.repeat(n, 1)
        return kwargs

    def _guidance_kwargs(self, job: FlowInputs) -> dict[str, Any]:
        """Qwen-Image's guidance is classifier-free, `true_cfg_scale`; its `guidance_scale` is
        for checkpoints with a guidance embedding, which it has not (the pipeline warns when
        given one).  The others take `guidance_scale` (distilled for FLUX, CFG for SD 3, klein,
        Z-Image and Chroma)."""
        if self.true_cfg:
            return {"true_cfg_scale": job.guidance_scale, "guidance_scale": None}
        return {"guidance_scale": job.guidance_scale}

    def _reference_kwargs(self, references: list[np.ndarray]) -> dict[str, Any]:
        """`image_reference` for a family that takes one: Kontext's first reference alone (its
        pipeline takes one image per prompt), klein's first `max_references` as a list (its
        pipeline appends each to the sequence).  Other families ignore references
        (`reference_note` says so)."""
        if not self.family.reference_image or not references:
            return {}
        pictures = [reference_picture(r) for r in references[: self.family.max_references]]
        return {"image_reference": pictures[0] if self.family.max_references == 1 else pictures}

    def reference_note(self, count: int) -> str | None:
        """What a job's result should say when its `count` references were not all used (for
        the engine's notes), or None."""
        fam = self.family
        if count == 0 or (fam.reference_image and count <= fam.max_references):
            return None
        if not fam.reference_image:
            return f"{fam.label} takes no reference image; the {count} given were ignored"
        extra = count - fam.max_references
        return f"{fam.label} takes at most {fam.max_references} reference image(s); the first were used, {extra} ignored"

    def __call__(self, job: FlowInputs, *, pacer: Any, on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Inpaint `job`; returns N x H x W x 3 uint8, one image per generator.

        Each finished step is told to `pacer.launched(i, total)` (a StepPacer: it reports
        once the device has finished the step, and raises JobCancelled out of the pipeline
        when the job is cancelled), or to `on_step` where no pacer is given.
        """
        import torch
        from PIL import Image

        pipe = self.pipe
        n = len(job.generators)
        height, width = job.mask.shape[:2]
        picture = Image.fromarray(np.ascontiguousarray(job.image[:, :, :3]))
        kwargs: dict[str, Any] = {}
        pin: Any = nullcontext()
        if self.pins_size and self._pin_by_arguments:
            # Kontext would snap the image to the nearest of its preferred resolutions
            # (`_auto_resize`) and the output size to `max_area`.
            kwargs["_auto_resize"] = False
            kwargs["max_area"] = height * width
        elif self.pins_size:
            pin = pinned_size(width, height)  # Qwen-Image-Edit would work at 1024^2 pixels
        report = pacer.launched if pacer is not None else on_step

        def step_end(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if report is not None:
                report(i, int(p.num_timesteps))
            return tensors

        with torch.inference_mode(), pin:
            kwargs.update(self._prompt_kwargs(job, picture, n))
            kwargs.update(self._guidance_kwargs(job))
            kwargs.update(self._reference_kwargs(job.references))
            latents = pipe(
                image=picture,
                mask_image=Image.fromarray(np.ascontiguousarray(job.mask), mode="L"),
                height=height,
                width=width,
                strength=pipeline_strength(job.steps, job.strength),
                num_inference_steps=job.steps,
                num_images_per_prompt=1,
                generator=list(job.generators),
                output_type="latent",
                return_dict=False,
                callback_on_step_end=step_end,
                **kwargs,
            )[0]
            if pacer is not None:
                pacer.drain()
            if self.packed:
                latents = pipe._unpack_latents(latents, height, width, self.vae_scale_factor)
            images = self._decode(latents)
        if images.shape[1:3] != (height, width):
            # The pipeline ran at its own, smaller size (FLUX.2 klein above `max_pixels`):
            # back to the job's (the runner composites, so only the regenerated pixels carry
            # the rescale).
            images = np.stack([
                np.asarray(Image.fromarray(one).resize((width, height), Image.Resampling.LANCZOS)) for one in images
            ])
        return images

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents to uint8 pixels, undoing the VAE's normalisation, a megapixel per call.

        SD 3 / FLUX.1 / Z-Image / Chroma (FLUX.1's VAE): one scale and shift.  FLUX.2's VAE has neither: its pipeline hands back
        latents with its batch norm undone.  Qwen-Image's (Wan's 3D VAE): a mean and a std per
        channel, and a time axis of one frame (latents B x C x 1 x h x w), as its pipeline
        decodes them."""
        import torch

        vae = self.pipe.vae
        config = vae.config
        latents = latents.to(next(vae.parameters()).dtype)
        if latents.ndim == 5:
            shape = (1, -1, 1, 1, 1)
            mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
            inv_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
            latents = latents / inv_std + mean
        else:
            scaling = getattr(config, "scaling_factor", None) or 1.0
            latents = latents / scaling + (getattr(config, "shift_factor", None) or 0.0)
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        per_call = max(1, DECODE_PIXELS // (height * width))
        out = []
        for one in latents.split(per_call):
            pixels = vae.decode(one, return_dict=False)[0]
            if pixels.ndim == 5:
                pixels = pixels[:, :, 0]
            pixels = (pixels.float() / 2 + 0.5).clamp(0, 1) * 255.0
            out.append(pixels.round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out).cpu().numpy()
