"""inpaintd's own denoising loop over a diffusers inpaint pipeline's components.

diffusers' `StableDiffusion(XL)InpaintPipeline.__call__` is written for every use at once:
PIL or tensors in, any batch layout, safety checker, callbacks with tensor inputs.  The
daemon always hands over one prepared uint8 crop, a mask and N seeds, so this loop does
only that, in the pipeline's order, and does no work twice:

1. upload the crop and mask as uint8 (a quarter of float32's bytes) and normalise on the device;
2. encode the image (only when needed) and the masked image with the VAE **once per job**;
   the stock pipeline, given one generator per variant, encodes the same image once per
   variant.  Each variant still draws its latent sample with its own generator, in the
   stock order (image sample, initial noise, masked-image sample), so a seed gives the
   same pixels as the stock pipeline called with that seed;
3. denoise all variants in one batched UNet call per step, with the prompt embeddings
   computed once (and cached across jobs by the engine), and where an IP-Adapter is loaded
   the reference images' embeddings beside them (`inpaintd.engines.ip_adapter`);
4. decode in chunks of at most a megapixel (the decoder's activations are the job's
   largest), convert to uint8 on the device and copy only that to the host.

The scheduler gets its timestep from a CPU copy of the schedule while the UNet gets the
device copy: indexing the scheduler's CPU tables with a GPU timestep, or building
`torch.tensor([t])` from one, would make the host wait for the GPU every step.  Progress
is reported through a `StepPacer` (see `inpaintd.engines.pacing`) so that it does not
synchronise the GPU either.  Waits that remain, as in the stock pipeline: schedulers that
draw noise inside `step` (Euler ancestral, LCM) copy it from the CPU generators every step,
so that a seed means the same pixels on every device; and with a 4-channel UNet the
sigma-based schedulers (Euler, DPM++) copy their CPU sigma table in `add_noise` each step.
On the CPU, where tests run, the results equal the stock pipeline's (`tests/test_sd_inpaint.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class Embeddings:
    """A prompt pair encoded once: SD uses the first two, SDXL all four."""

    positive: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None


@dataclass
class ReferenceEmbeds:
    """A job's reference images as an IP-Adapter reads them (`inpaintd.engines.ip_adapter`):
    k x ... image embeddings, one row per reference, and the unconditional ones that go with
    the negative prompt under classifier-free guidance (zeros for a plain IP-Adapter, as in
    diffusers).  With no references they are blank and the adapter's scale is 0."""

    positive: torch.Tensor
    negative: torch.Tensor


@dataclass
class Inputs:
    """One job, as the engine prepared it."""

    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W uint8, >= 128 = regenerate (the pipeline binarises at 0.5)
    embeddings: Embeddings
    generators: list[Any]  # one CPU torch.Generator per variant
    steps: int
    guidance_scale: float
    strength: float
    #: Where the pipeline has an IP-Adapter loaded: its image embeddings (its UNet wants
    #: some on every call, blank ones without references).  None without one.
    references: ReferenceEmbeds | None = None


def _retrieve(dist_output: Any, generator: Any) -> torch.Tensor:
    """A latent from a VAE encoding, drawn with `generator` where the VAE is a distribution."""
    if hasattr(dist_output, "latent_dist"):
        return dist_output.latent_dist.sample(generator)
    return dist_output.latents


def _vae_dtype(vae: Any) -> torch.dtype:
    return next(vae.parameters()).dtype


def encode_per_variant(vae: Any, image: torch.Tensor, generators: list[Any]) -> list[torch.Tensor]:
    """One VAE encode of `image` (batch 1), one latent draw per generator.

    The image comes in the UNet's dtype, as the stock pipeline casts it; a VAE kept in
    float32 (SDXL's overflows in float16) takes it back up here.

    The draws must happen in the caller's order: each generator is used for several draws
    in a fixed sequence, and that sequence is what makes a seed reproducible.
    """
    encoded = vae.encode(image.to(_vae_dtype(vae)))
    return [_retrieve(encoded, g) for g in generators]


#: Output pixels per VAE decoder call (see `InpaintLoop._decode`).
DECODE_PIXELS = 1 << 20


def schedule(scheduler: Any, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The timesteps a job runs, one UNet call each, and where they start in the full
    schedule: the stock pipeline's rule (`get_timesteps`), on the CPU.

    `steps` is the scheduler's `num_inference_steps`; `strength` below 1 drops the noisiest
    part of the schedule.  Most schedulers then run `int(steps × strength)` timesteps, but
    PNDM (SD 1.5's own scheduler) runs one more: its first step takes two UNet calls.
    `scheduler_settings` chooses the arguments that give a wanted number of calls.
    """
    scheduler.set_timesteps(steps, device="cpu")
    init_steps = min(int(steps * strength), steps)
    t_start = max(steps - init_steps, 0)
    return scheduler.timesteps[t_start * scheduler.order:], t_start


def scheduler_settings(scheduler: Any, steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for `scheduler` such that the job runs exactly
    `int(steps × strength)` UNet calls (per variant batch), which is what an artist asking
    for `steps` at `strength` gets from every scheduler; the progress counts these calls.

    Schedulers whose schedule has that length already keep the arguments as asked.  PNDM
    (with `skip_prk_steps`) runs one call more than its step count, so it gets one step
    fewer, and below strength 1 a strength that leaves the wanted number of calls, close
    to the asked one, so the masked area is noised about as far.  Each choice is verified
    by building the schedule; where none fits (PNDM at 2 steps and strength 1: one step
    gives 1 call, two give 3) the arguments stay as asked and the progress reports what
    really runs.
    """
    wanted = min(int(steps * strength), steps)
    candidates = [(steps, strength)]
    if steps >= 2:
        fewer = steps - 1
        candidates.append((fewer, 1.0 if strength == 1.0 else min((wanted - 0.5) / fewer, 1.0)))
    for candidate in candidates:
        if len(schedule(scheduler, *candidate)[0]) == wanted:
            return candidate
    return steps, strength


class InpaintLoop:
    """The denoising loop for one loaded pipeline (SD 1.x/2.x or SDXL, 9- or 4-channel UNet)."""

    def __init__(self, pipe: Any, device: str, *, dual_text_encoder: bool, cuda_graphs: bool = False) -> None:
        """`dual_text_encoder`: the family conditions the UNet on pooled text embeddings and
        size ids too (SDXL; `families.Family.dual_text_encoder`).  `cuda_graphs`: the UNet
        was compiled in a mode that replays CUDA graphs, whose outputs live in memory the
        next replay overwrites."""
        self.pipe = pipe
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.dual_text_encoder = dual_text_encoder
        self.vae_scale_factor = int(pipe.vae_scale_factor)

    # -- the steps of a job, in order ---------------------------------------------------

    def __call__(
        self,
        job: Inputs,
        *,
        on_step: Callable[[int, int], None] | None = None,
        pacer: Any = None,
    ) -> np.ndarray:
        """Inpaint `job`; returns N x H x W x 3 uint8, one image per generator.

        `on_step(i, total)` is called as step i (0-based) finishes.  A `pacer` (a StepPacer
        wrapping the engine's callback) is told of each launched step instead, and reports
        it once the device has finished it.
        """
        import torch

        pipe, device = self.pipe, self.device
        n = len(job.generators)
        height, width = job.mask.shape[:2]
        dtype = job.embeddings.positive.dtype
        unet_channels = int(pipe.unet.config.in_channels)
        scheduler = pipe.scheduler
        cfg = job.guidance_scale > 1.0 and pipe.unet.config.time_cond_proj_dim is None

        # 1. pixels to the device, normalised there: image to [-1, 1], mask binarised at 0.5
        #    as the pipeline's mask processor does.
        image_u8 = torch.from_numpy(np.ascontiguousarray(job.image[:, :, :3])).to(device)
        mask_u8 = torch.from_numpy(np.ascontiguousarray(job.mask)).to(device)
        init_image = (image_u8.permute(2, 0, 1).unsqueeze(0).contiguous().to(torch.float32) / 255.0) * 2.0 - 1.0
        mask_full = (mask_u8 >= 128).to(torch.float32)[None, None]

        # 2. the schedule, shortened by strength, built on the CPU (the scheduler reads its own
        # tables with it; LCM would read a GPU timestep table back every step) and uploaded
        # once for the UNet.
        timesteps_cpu, t_start = schedule(scheduler, job.steps, job.strength)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        timesteps = timesteps_cpu.to(device)
        pipe._num_timesteps = len(timesteps)  # what `pipe.num_timesteps` reports, as after a stock call
        strength_max = job.strength == 1.0
        needs_image_latents = unet_channels == 4 or not strength_max

        # 3. latents: one VAE encode per image, one draw per variant in the stock order.
        latent_shape = (1, pipe.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        with torch.inference_mode():
            image_latents = None
            if needs_image_latents:
                draws = encode_per_variant(pipe.vae, init_image.to(dtype), job.generators)
                image_latents = self._scale(torch.cat(draws).to(dtype))
            noise = torch.cat([
                torch.randn(latent_shape, generator=g, device="cpu", dtype=dtype) for g in job.generators
            ]).to(device)
            if strength_max:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(n))

            mask = torch.nn.functional.interpolate(mask_full, size=latent_shape[2:]).to(dtype).repeat(n, 1, 1, 1)
            masked_latents = None
            if unet_channels == 9:
                masked_image = init_image * (mask_full < 0.5)
                draws = encode_per_variant(pipe.vae, masked_image.to(dtype), job.generators)
                masked_latents = self._scale(torch.cat(draws).to(dtype))
            elif unet_channels != 4:
                raise ValueError(f"a UNet with {unet_channels} input channels cannot inpaint (4 or 9 expected)")
            if cfg:
                mask_in = torch.cat([mask, mask])
                masked_in = torch.cat([masked_latents, masked_latents]) if masked_latents is not None else None
            else:
                mask_in, masked_in = mask, masked_latents

            # 4. conditioning, batched once: [negatives..., positives...] as the pipeline does.
            unet_kwargs = self._conditioning(job, n, cfg, height, width, dtype)
            extra_step = pipe.prepare_extra_step_kwargs(job.generators, 0.0)

            # 5. denoise.
            step_done = pacer.launched if pacer is not None else on_step
            total = len(timesteps)
            for i in range(total):
                t, t_cpu = timesteps[i], timesteps_cpu[i]
                model_in = torch.cat([latents, latents]) if cfg else latents
                model_in = scheduler.scale_model_input(model_in, t_cpu)
                if masked_in is not None:
                    model_in = torch.cat([model_in, mask_in, masked_in], dim=1)
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are done with
                noise_pred = pipe.unet(model_in, t, return_dict=False, **unet_kwargs)[0]
                if cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + job.guidance_scale * (text - uncond)
                elif self.cuda_graphs:
                    # Multistep schedulers (PNDM, DPM++) keep past model outputs; a graph's
                    # output would be overwritten by the next replay under them.
                    noise_pred = noise_pred.clone()
                latents = scheduler.step(noise_pred, t_cpu, latents, **extra_step, return_dict=False)[0]
                if unet_channels == 4:
                    # An ordinary checkpoint: put the known image back, noised to the next
                    # step's level, outside the mask.
                    known = image_latents
                    if i < total - 1:  # a device slice: no host-to-device copy per step
                        known = scheduler.add_noise(image_latents, noise, timesteps[i + 1:i + 2])
                    latents = (1 - mask) * known + mask * latents
                if step_done is not None:
                    step_done(i, total)
            if pacer is not None:
                pacer.drain()

            # 6. decode, to uint8 on the device.
            return self._decode(latents)

    # -- helpers ------------------------------------------------------------------------

    def _scale(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.config.scaling_factor * latents

    def _conditioning(self, job: Inputs, n: int, cfg: bool, height: int, width: int, dtype: torch.dtype) -> dict[str, Any]:
        import torch

        pipe, emb = self.pipe, job.embeddings
        positive = emb.positive.repeat(n, 1, 1)
        states = torch.cat([emb.negative.repeat(n, 1, 1), positive]) if cfg else positive
        kwargs: dict[str, Any] = {"encoder_hidden_states": states.to(self.device)}
        if pipe.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(job.guidance_scale - 1).repeat(n)
            kwargs["timestep_cond"] = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=pipe.unet.config.time_cond_proj_dim
            ).to(device=self.device, dtype=dtype)
        if self.dual_text_encoder:
            assert emb.pooled is not None  # a dual-encoder family's prompts are encoded with pooled embeddings
            projection = (
                int(emb.pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
            )
            size = (height, width)
            time_ids, negative_time_ids = pipe._get_add_time_ids(
                size, (0, 0), size, 6.0, 2.5, size, (0, 0), size,
                dtype=emb.positive.dtype, text_encoder_projection_dim=projection,
            )
            pooled = emb.pooled.repeat(n, 1)
            time_ids = time_ids.repeat(n, 1)
            if cfg:
                assert emb.negative_pooled is not None
                pooled = torch.cat([emb.negative_pooled.repeat(n, 1), pooled])
                time_ids = torch.cat([negative_time_ids.repeat(n, 1), time_ids])
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(self.device), "time_ids": time_ids.to(self.device)}
        if job.references is not None:
            # One list entry per IP-Adapter, each variants x references x embedding, in the
            # prompts' order: [negatives..., positives...] (diffusers' prepare_ip_adapter_image_embeds).
            refs = job.references
            repeat = (n, *[1] * refs.positive.ndim)
            image_embeds = refs.positive.unsqueeze(0).repeat(*repeat)
            if cfg:
                image_embeds = torch.cat([refs.negative.unsqueeze(0).repeat(*repeat), image_embeds])
            added = kwargs.setdefault("added_cond_kwargs", {})
            added["image_embeds"] = [image_embeds.to(device=self.device, dtype=dtype)]
        return kwargs

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        import torch

        vae = self.pipe.vae
        config = vae.config
        latents = latents.to(_vae_dtype(vae))
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / config.scaling_factor + mean_t
        else:
            latents = latents / config.scaling_factor
        # The decoder's activations at full resolution are the job's largest (SDXL, 1024²,
        # float32: gigabytes per image), so it decodes at most DECODE_PIXELS per call: four
        # variants at 512² together, one at a time at 1024², where it is compute-bound anyway.
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        per_call = max(1, DECODE_PIXELS // (height * width))
        out = []
        for one in latents.split(per_call):
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # each decode replays one graph, not a chain
            pixels = vae.decode(one, return_dict=False)[0]
            # Same arithmetic as diffusers' postprocess + numpy rounding, done before the copy.
            pixels = (pixels.float() / 2 + 0.5).clamp(0, 1) * 255.0
            out.append(pixels.round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out).cpu().numpy()
