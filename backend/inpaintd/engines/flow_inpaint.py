"""The flow-matching transformer families (SD 3.5, FLUX.1 Fill and Kontext, FLUX.2 klein)
through their stock pipelines.

Unlike the UNet families (`sd_inpaint.py`, inpaintd's own loop), these run diffusers'
`StableDiffusion3InpaintPipeline`, `FluxFillPipeline`, `FluxKontextInpaintPipeline` and
`Flux2KleinInpaintPipeline` as they are, and steer them from
`callback_on_step_end`, which fires once per transformer call:

- progress: one `denoising` event per step, with the pipeline's own count of steps
  (`pipe.num_timesteps`, set before its loop starts);
- cancel: the callback raises `JobCancelled`, which leaves the pipeline at once, within
  the step that was running (`pipe._interrupt` would only skip the remaining steps and
  still decode);
- seeds: one CPU generator per variant, so the pipeline draws each variant's latents with
  its own seed (the prompt is encoded once and repeated, one row per variant);
- the output: latents (`output_type="latent"`), decoded here in chunks of at most a
  megapixel to uint8 on the device, as `sd_inpaint` does.  This also fixes a slip in
  diffusers 0.42.1's SD 3 inpaint pipeline, which decodes without adding the VAE's
  `shift_factor` back (its text-to-image pipeline does): colours would drift;
- the size: the runner has chosen it; a family whose pipeline would resize the image to
  resolutions of its own (Kontext snaps to its preferred ones and to a megapixel) is
  told not to (its row's `pins_size`); one whose pipeline scales anything above an area
  down with no way to say no (FLUX.2 klein, 1 MP; the runner's sizes may round just above)
  has its output scaled back to the job's size (its row's `max_pixels`).

The runner composites the result, so pixels outside the grown mask stay the artist's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .sd_inpaint import DECODE_PIXELS

if TYPE_CHECKING:
    import torch


@dataclass
class FlowPrompt:
    """A prompt encoded once by the pipeline's `encode_prompt` (batch 1).

    SD 3: all four; FLUX.1: `positive`, `pooled` (no negative: it is guidance-distilled);
    FLUX.2 klein: `positive`, `negative` (no pooled embedding).
    """

    positive: torch.Tensor
    pooled: torch.Tensor | None
    negative: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None


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


class FlowInpaintLoop:
    """Runs one loaded flow pipeline (SD 3.x, FLUX.1 Fill or Kontext) for a prepared job."""

    def __init__(
        self, pipe: Any, device: str, *, negative_prompt: bool, pins_size: bool = False, pooled_prompt: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        """`negative_prompt`: the family conditions on a negative prompt with classifier-free
        guidance (SD 3, FLUX.2 klein Base); otherwise `guidance_scale` is the distilled
        guidance (FLUX.1).  `pins_size`: the pipeline resizes its input unless told not to
        (Kontext).  `pooled_prompt`: its encoders give a pooled embedding too (not FLUX.2).
        `max_pixels`: the pipeline scales larger inputs down to this area (FLUX.2 klein)."""
        self.pipe = pipe
        self.device = device
        self.negative_prompt = negative_prompt
        self.pins_size = pins_size
        self.pooled_prompt = pooled_prompt
        self.max_pixels = max_pixels
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        #: FLUX packs 2x2 latent patches into tokens; its latents come back packed.
        self.packed = hasattr(pipe, "_unpack_latents")

    def encode(self, prompt: str, negative: str) -> FlowPrompt:
        """The prompt pair through the pipeline's own encoders (CLIP x2 and T5 for SD 3,
        CLIP and T5 for FLUX.1, Qwen3 for FLUX.2).  The negative side is always encoded where
        the family takes one, so that one cache entry serves any guidance scale."""
        import torch

        pipe = self.pipe
        with torch.inference_mode():
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
        emb = job.prompt
        kwargs: dict[str, Any] = {"prompt_embeds": emb.positive.repeat(n, 1, 1)}
        if emb.pooled is not None:
            kwargs["pooled_prompt_embeds"] = emb.pooled.repeat(n, 1)
        if self.negative_prompt:
            assert emb.negative is not None
            kwargs["negative_prompt_embeds"] = emb.negative.repeat(n, 1, 1)
            if emb.negative_pooled is not None:
                kwargs["negative_pooled_prompt_embeds"] = emb.negative_pooled.repeat(n, 1)
        if self.pins_size:
            # Kontext would snap the image to the nearest of its preferred resolutions
            # (`_auto_resize`) and the output size to `max_area`.
            kwargs["_auto_resize"] = False
            kwargs["max_area"] = height * width
        report = pacer.launched if pacer is not None else on_step

        def step_end(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if report is not None:
                report(i, int(p.num_timesteps))
            return tensors

        with torch.inference_mode():
            latents = pipe(
                image=Image.fromarray(np.ascontiguousarray(job.image[:, :, :3])),
                mask_image=Image.fromarray(np.ascontiguousarray(job.mask), mode="L"),
                height=height,
                width=width,
                strength=pipeline_strength(job.steps, job.strength),
                num_inference_steps=job.steps,
                guidance_scale=job.guidance_scale,
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
        if self.max_pixels is not None and height * width > self.max_pixels and images.shape[1:3] != (height, width):
            # The pipeline ran at its own, smaller size: back to the job's (the runner
            # composites, so only the regenerated pixels carry the rescale).
            images = np.stack([
                np.asarray(Image.fromarray(one).resize((width, height), Image.Resampling.LANCZOS)) for one in images
            ])
        return images

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents to uint8 pixels, undoing the VAE's scaling and shift, a megapixel per call.
        (FLUX.2's VAE has neither: its pipeline hands back latents with its batch norm undone.)"""
        import torch

        vae = self.pipe.vae
        config = vae.config
        latents = latents.to(next(vae.parameters()).dtype)
        scaling = getattr(config, "scaling_factor", None) or 1.0
        latents = latents / scaling + (getattr(config, "shift_factor", None) or 0.0)
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        per_call = max(1, DECODE_PIXELS // (height * width))
        out = []
        for one in latents.split(per_call):
            pixels = vae.decode(one, return_dict=False)[0]
            pixels = (pixels.float() / 2 + 0.5).clamp(0, 1) * 255.0
            out.append(pixels.round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out).cpu().numpy()
