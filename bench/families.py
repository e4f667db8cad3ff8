"""Figure 5: SD 3.5 Large and FLUX.1 Fill at 1024² in each memory mode, stock against inpaintd.

Weights are random (valid for speed and memory, not for pictures): the full-size
architectures are built from the configs below (the model cards' `config.json` values,
where they differ from diffusers' defaults) in bf16, directly on the GPU:

- SD 3.5 Large: `SD3Transformer2DModel` (38 layers, 38 heads x 64 = 2432 wide, QK RMS norm,
  joint attention 4096, pooled 2048), CLIP-L and CLIP-G (bigG) with projections, T5-XXL;
- FLUX.1 Fill: `FluxTransformer2DModel` (19 double + 38 single blocks, 384 channels in,
  64 out, guidance embedding), CLIP-L and T5-XXL;
- both: the 16-channel VAE.  The tokenizers are the tiny offline ones of
  `inpaintd.testmodel` (the prompt's content does not matter for speed; the sequences are
  padded to the pipelines' lengths, 77 CLIP and 256 / 512 T5 tokens, as with the real ones).

Each family runs its default steps (28 and 50; `--steps N` shortens both) in each memory
mode of `inpaintd.memory` (gpu, offload, group, sequential).  Per mode one pipeline object
serves both sides, placed once by the engine, so both run with the same placement:

- stock: `pipe(prompt=..., image=..., mask_image=..., strength=1.0, ...)` on the pipeline
  as the mode leaves it: bf16 all on the GPU (the baseline), `enable_model_cpu_offload()`
  (diffusers' documented low-memory recipe), `enable_group_offload(block_level, 1 block,
  side stream)`, `enable_sequential_cpu_offload()`;
- inpaintd: `inpaintd.runner.run_job` on `DiffusersEngine.from_pipeline(pipe, memory=mode)`,
  the code the daemon's worker runs (mask prep, crop, engine with its prompt cache, decode,
  composite), the same image, mask, steps and guidance.

Then quantised runs (`--quantized`, default gpu+fp8, gpu+int8, gpu+nf4, offload+nf4): a
second copy of the pipeline quantised as `serve --quantize METHOD,text_encoder=METHOD` does it
(`inpaintd.engines.quantize`, after loading), placed in the mode, against the stock bf16
pipeline all on the GPU: the issue's FLUX.1 Fill goal (< 24 GiB at <= 1.3x bf16 time) is
checked over every measured run, plain and quantised.

Warm jobs are interleaved (A B A B after one warm-up of each).  Peak GPU memory is
`torch.cuda.max_memory_allocated` over each job, reset before it; the estimate beside it is
`inpaintd.memory.estimate` for the same components (parameter shapes read from the modules,
as the daemon reads them from the safetensors headers).  `--memory-fraction` caps the
process with `torch.cuda.set_per_process_memory_fraction` to act out a smaller card: per
budget, the mode `inpaintd.memory.choose` picks for it, and whether a job then ran within it.

Without CUDA the same code runs the tiny models of `inpaintd.testmodel` on CPU (64², 2 steps,
every mode but sequential, which needs CUDA) to prove the script works, and every figure is
owed.  The estimates are still the full-size architectures' (built on the meta device).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import Config, Row, Section, interleaved, ms, sync

PROMPT = "a ceramic cup on a wooden table, soft light"
FAMILIES = ("sd3", "flux-fill")
LABEL = {"sd3": "SD 3.5 Large", "flux-fill": "FLUX.1 Fill"}
PIPELINE = {"sd3": "StableDiffusion3InpaintPipeline", "flux-fill": "FluxFillPipeline"}
#: Each family's default steps (diffusers' and the model cards'; inpaintd's families table).
DEFAULT_STEPS = {"sd3": 28, "flux-fill": 50}
SIDE = 1024
TINY_SIDE = 64
TINY_STEPS = 2
GIB = 2**30
#: Card sizes `--memory-fraction` acts out when given without a value.
DEFAULT_BUDGETS = "12,16,24"

#: Goals (issue 11), in GiB of peak allocated GPU memory.
GOAL_FLUX_PEAK_GIB = 24.0
GOAL_FLUX_TIME = 1.3  # x the bf16 stock pipeline all on the GPU
GOAL_FLUX_OFFLOAD_GIB = 12.0
GOAL_SD3_PEAK_GIB = 16.0
OFFLOADING = ("offload", "group", "sequential")

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
               num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
               num_hidden_layers=32, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
#: google/t5-v1_1-xxl's encoder, as SD 3.5's text_encoder_3 and FLUX.1's text_encoder_2 carry it.
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
               feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True, tie_word_embeddings=False,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_VAE16 = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              latent_channels=16, norm_num_groups=32, act_fn="silu", sample_size=1024, force_upcast=True,
              use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)

#: stabilityai/stable-diffusion-3.5-large and black-forest-labs/FLUX.1-Fill-dev, from their
#: config.json files (FLUX's transformer: diffusers' defaults, which are FLUX.1's, but for
#: the Fill inputs and the guidance embedding).
FULL: dict[str, dict[str, dict[str, Any]]] = {
    "sd3": {
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                            attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                            caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                            qk_norm="rms_norm", dual_attention_layers=()),
        "vae": dict(_VAE16, scaling_factor=1.5305, shift_factor=0.0609),
        "text_encoder": _CLIP_L,
        "text_encoder_2": _CLIP_G,
        "text_encoder_3": _T5_XXL,
        "scheduler": dict(num_train_timesteps=1000, shift=3.0),
    },
    "flux-fill": {
        "transformer": dict(patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "vae": dict(_VAE16, scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": _CLIP_L,
        "text_encoder_2": _T5_XXL,
        "scheduler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
    },
}
#: The component `inpaintd.families` names as each family's large text encoder (T5).
LARGE_TEXT_ENCODER = {"sd3": "text_encoder_3", "flux-fill": "text_encoder_2"}


@dataclass
class Options:
    """What `python -m bench.families` was asked for beyond `bench.run`'s flags."""

    steps: int | None = None
    reps: int | None = None
    families: tuple[str, ...] = FAMILIES
    modes: tuple[str, ...] = ("gpu", "offload", "group", "sequential")
    budgets: tuple[str, ...] = ()  # "--memory-fraction" values: a fraction <= 1 of the card, or GiB
    #: Quantised runs, "MODE+METHOD" (the method on the transformer and the T5), each on its own
    #: copy of the pipeline (quantising is in place), against the bf16 stock pipeline on the GPU.
    quantized: tuple[str, ...] = ("gpu+fp8", "gpu+int8", "gpu+nf4", "offload+nf4")


#: Set by `main` (a `python -m bench.families` run); `bench.run --only families` takes the defaults.
OPTIONS = Options()


# -- building the pipelines -------------------------------------------------------------------


def _quiet() -> None:
    """No progress bars or info logs from diffusers and transformers (saving and loading
    the tiny models, "modules kept in float32" after casting)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_components(family: str, device: str, dtype: Any, ids: dict[str, int] | None = None) -> dict[str, Any]:
    """The full-size models of `family` with random weights, built on `device` (each one
    cast to `dtype` as soon as it is built, so a float32 copy of only one exists at a time);
    "meta" builds the shapes alone, for the estimator."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    _quiet()
    cfg = FULL[family]
    ids = ids or {}

    def made(build: Callable[[], Any]) -> Any:
        with torch.device(device):
            module = build()
        return module.to(dtype).eval()

    torch.manual_seed(0)
    out: dict[str, Any] = {}
    if family == "sd3":
        out["transformer"] = made(lambda: SD3Transformer2DModel(**cfg["transformer"]))
        out["text_encoder"] = made(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder"], **ids)))
        out["text_encoder_2"] = made(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"], **ids)))
        out["text_encoder_3"] = made(lambda: T5EncoderModel(T5Config(**cfg["text_encoder_3"])))
    else:
        out["transformer"] = made(lambda: FluxTransformer2DModel(**cfg["transformer"]))
        out["text_encoder"] = made(lambda: CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"], **ids)))
        out["text_encoder_2"] = made(lambda: T5EncoderModel(T5Config(**cfg["text_encoder_2"])))
    out["vae"] = made(lambda: AutoencoderKL(**cfg["vae"]))
    return out


def tokenizers(folder: Path) -> tuple[Any, Any]:
    """The tiny offline CLIP and T5 tokenizers of `inpaintd.testmodel` (no download)."""
    from inpaintd.testmodel import _clip_parts

    return _clip_parts(folder)


def build_full(family: str, device: str, folder: Path) -> Any:
    """The family's inpaint pipeline at full size, random weights, bf16, on `device`."""
    import diffusers
    import torch

    clip_tok, t5_tok = tokenizers(folder)
    ids = dict(bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)
    parts = build_components(family, device, torch.bfloat16, ids)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**FULL[family]["scheduler"])
    if family == "sd3":
        pipe = diffusers.StableDiffusion3InpaintPipeline(
            scheduler=scheduler, tokenizer=clip_tok, tokenizer_2=clip_tok, tokenizer_3=t5_tok, **parts,
        )
    else:
        pipe = diffusers.FluxFillPipeline(scheduler=scheduler, tokenizer=clip_tok, tokenizer_2=t5_tok, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny(family: str, folder: Path, device: str) -> Any:
    """The family's tiny test pipeline (`inpaintd.testmodel`), loaded as the engine loads one."""
    import diffusers
    import torch

    from inpaintd.testmodel import make_family_test_model

    _quiet()
    path = make_family_test_model(folder / f"tiny-{family}", family)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipe = getattr(diffusers, PIPELINE[family]).from_pretrained(str(path), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def component_weights(components: dict[str, Any]) -> list[Any]:
    """`inpaintd.memory.Weights` of each module, from its parameters' names and shapes
    (what the daemon reads from a folder's safetensors headers; tied weights count once)."""
    from inpaintd.memory import weights_of

    return [
        weights_of(name, {n: list(p.shape) for n, p in module.named_parameters()})
        for name, module in sorted(components.items()) if hasattr(module, "named_parameters")
    ]


def full_estimate(family: str) -> dict[str, int]:
    """`inpaintd.memory.estimate` per mode for the full-size family at 1024², in bf16."""
    import torch

    from inpaintd.memory import estimate

    parts = build_components(family, "meta", torch.bfloat16)
    return estimate(component_weights(parts), family, precision="bf16", large_text_encoder=LARGE_TEXT_ENCODER[family])


# -- the two sides ----------------------------------------------------------------------------


@dataclass
class Job:
    pipe: Any
    family: str
    image: np.ndarray
    mask: np.ndarray
    steps: int
    device: str

    @property
    def guidance(self) -> float:
        from inpaintd.families import family_of_pipeline

        return float(family_of_pipeline(self.pipe.__class__.__name__).default_guidance)

    def stock(self) -> Callable[[], Any]:
        import torch
        from PIL import Image

        image, mask = Image.fromarray(self.image, "RGB"), Image.fromarray(self.mask, "L")
        side = self.image.shape[0]

        def call() -> Any:
            out = self.pipe(prompt=PROMPT, image=image, mask_image=mask, height=side, width=side,
                            num_inference_steps=self.steps, guidance_scale=self.guidance, strength=1.0,
                            generator=torch.Generator("cpu").manual_seed(1)).images
            sync(self.device)
            return out

        return call

    def inpaintd(self, engine: Any) -> Callable[[], Any]:
        from inpaintd.runner import run_job, variant_seeds
        from inpaintd_protocol.messages import JobOptions

        options = JobOptions(prompt=PROMPT, seed=1, variants=1, steps=self.steps, strength=1.0,
                             guidance_scale=self.guidance)
        seeds = variant_seeds(1, 1)

        def call() -> Any:
            out = run_job(engine, self.image, self.mask, options, seeds)
            sync(self.device)
            return out

        return call


def with_peak(call: Callable[[], Any], device: str, peaks: list[int]) -> Callable[[], Any]:
    """`call`, recording its peak allocated GPU memory (reset before it) into `peaks`."""
    cuda = device.startswith("cuda")

    def run() -> Any:
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        out = call()
        if cuda:
            peaks.append(int(torch.cuda.max_memory_allocated()))
        return out

    return run


def place(pipe: Any, family: str, device: str, mode: str) -> Any:
    """inpaintd's engine on `pipe` in memory `mode` (the engine places the pipeline)."""
    from inpaintd.engines.diffusers_engine import DiffusersEngine

    return DiffusersEngine.from_pipeline(pipe, model_id=f"random-{family}", device=device, memory=mode)


def release(engine: Any) -> None:
    """Undo the engine's placement (hooks off, everything back on the CPU), so that the next
    mode starts from a bare pipeline as a fresh load would."""
    from inpaintd.engines.diffusers_engine import _remove_group_offload

    pipe = engine.pipe
    if engine.memory_mode in ("offload", "sequential"):
        pipe.remove_all_hooks()
    elif engine.memory_mode == "group":
        _remove_group_offload(pipe)
    pipe.to("cpu")
    _free(engine.device)


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Measured:
    """One family in one mode: medians of the warm jobs, peaks over them."""

    stock_s: float
    inpaintd_s: float
    stock_peak: int | None
    inpaintd_peak: int | None


@dataclass
class FamilyResult:
    baseline_s: float | None = None  # bf16 stock all on the GPU
    modes: dict[str, Measured] = field(default_factory=dict)


def run(cfg: Config) -> Section:
    import torch

    opts = OPTIONS
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tiny = cfg.tiny or not cuda
    owed = "" if cuda and not tiny else ("owed (no GPU)" if not cuda else "owed (tiny)")
    section = Section("families")
    if not cuda:
        print("GPU figures owed: no CUDA device (running the tiny models on CPU to check the script)", flush=True)
        section.notes.append(
            f"families: GPU figures owed: no CUDA device; the script ran inpaintd's tiny test models on CPU (fp32, "
            f"{TINY_SIDE}², {opts.steps or TINY_STEPS} steps; sequential offload needs CUDA and was skipped); those times "
            "say nothing about a GPU.  Estimates are the full-size architectures' at 1024² (built on the meta device).")
    reps = opts.reps or (cfg.reps(full=2, quick=1) if cuda and not tiny else 1)
    side = TINY_SIDE if tiny else SIDE
    total = torch.cuda.get_device_properties(0).total_memory if cuda else None
    results: dict[str, FamilyResult] = {}
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-families-") as tmp:
        for family in opts.families:
            steps = opts.steps or (TINY_STEPS if tiny else DEFAULT_STEPS[family])
            est = full_estimate(family)
            with _guarded(section, f"families {family} build"):
                folder = Path(tmp) / family
                folder.mkdir()
                pipe = build_tiny(family, folder, device) if tiny else build_full(family, device, folder)
                from .inputs import canvas, ellipse_mask

                job = Job(pipe, family, canvas(side, channels=3), ellipse_mask(side, side // 2), steps, device)
                result = results.setdefault(family, FamilyResult())
                for mode in opts.modes:
                    figure = f"families {family} {mode}, {side}² {steps} steps, s/job"

                    if mode == "sequential" and not cuda:
                        section.rows.append(Row(figure, "", "", None, status="skipped",
                                                note=f"sequential offload needs a CUDA device; {owed}; estimate "
                                                     f"{gib(est[mode])} (full size)"))
                        continue
                    with _guarded(section, figure):
                        section.rows.append(_mode_row(job, mode, reps, est, result, figure, owed, tiny))
                for combo in opts.quantized:
                    mode, method = combo.split("+")
                    figure = f"families {family} {mode} {method}, {side}² {steps} steps, s/job"
                    if mode == "sequential" and not cuda:
                        continue
                    with _guarded(section, figure):
                        qpipe = build_tiny(family, folder / combo, device) if tiny else build_full(family, device, folder)
                        qjob = Job(qpipe, family, job.image, job.mask, steps, device)
                        try:
                            section.rows.append(_quantized_row(job, qjob, mode, method, reps, result, figure, owed, tiny))
                        finally:
                            del qjob, qpipe
                            _free(device)
                _goal_rows(section, family, result, owed)
                for budget in opts.budgets:
                    with _guarded(section, f"families {family} budget {budget}"):
                        section.rows.append(_budget_row(job, budget, est, total, owed))
                del job, pipe
                _free(device)
    return section


def _mode_row(job: Job, mode: str, reps: int, est: dict[str, int], result: FamilyResult, figure: str, owed: str,
              tiny: bool) -> Row:
    engine = place(job.pipe, job.family, job.device, mode)
    try:
        if engine.memory_mode != mode:
            raise RuntimeError(f"the engine placed the pipeline in mode {engine.memory_mode}, not {mode}: "
                               f"{'; '.join(engine.memory_notes)}")
        pa: list[int] = []
        pb: list[int] = []
        pair = interleaved(with_peak(job.stock(), job.device, pa), with_peak(job.inpaintd(engine), job.device, pb),
                           reps, warmup=1)
    finally:
        release(engine)
    # Peaks of the timed (warm) jobs only: the warm-up's include first-call allocations.
    peak_a = max(pa[-reps:]) if pa else None
    peak_b = max(pb[-reps:]) if pb else None
    result.modes[mode] = Measured(pair.a_med, pair.b_med, peak_a, peak_b)
    if mode == "gpu":
        result.baseline_s = pair.a_med
    stock_label = {"gpu": "stock bf16", "offload": "stock model-offload", "group": "stock group-offload",
                   "sequential": "stock sequential"}[mode]
    note = []
    if peak_a is not None and peak_b is not None:
        note.append(f"peak {gib(peak_a)} vs {gib(peak_b)} ({peak_b / peak_a:.2f}x)")
    else:
        note.append("peak: owed")
    note.append(f"estimate {gib(est[mode])}" + (" (full size, 1024²)" if tiny else ""))
    if result.baseline_s:
        note.append(f"inpaintd / bf16 stock on GPU {pair.b_med / result.baseline_s:.2f}x")
    if owed:
        note.append(owed)
    return Row(figure, f"{stock_label} {ms(pair.a_med)}", f"inpaintd {ms(pair.b_med)}", pair.ratio, pair.pair_ratio,
               status=owed or "info", note="; ".join(note) + (" (tiny, CPU)" if tiny and not job.device.startswith("cuda")
                                                               else " (tiny)" if tiny else ""))


def _quantized_row(job: Job, qjob: Job, mode: str, method: str, reps: int, result: FamilyResult, figure: str,
                   owed: str, tiny: bool) -> Row:
    """inpaintd with `method` on the transformer and the T5 (as `serve --quantize
    METHOD,text_encoder=METHOD` loads it) in memory `mode`, against the stock bf16 pipeline
    all on the GPU: the comparison the issue's 24 GB goal asks for (time against bf16)."""
    from inpaintd.engines.quantize import pipeline_quantization

    quantization = pipeline_quantization({"denoiser": method, "text_encoder": method}, qjob.family, qjob.device)
    done = quantization.after_load(qjob.pipe)  # the engine does this between loading and placing
    base = place(job.pipe, job.family, job.device, "gpu")
    engine = None
    try:
        engine = place(qjob.pipe, qjob.family, qjob.device, mode)
        pa: list[int] = []
        pb: list[int] = []
        pair = interleaved(with_peak(job.stock(), job.device, pa), with_peak(qjob.inpaintd(engine), job.device, pb),
                           reps, warmup=1)
    finally:
        if engine is not None:
            release(engine)
        release(base)
    peak_a = max(pa[-reps:]) if pa else None
    peak_b = max(pb[-reps:]) if pb else None
    result.modes[f"{mode}+{method}"] = Measured(pair.a_med, pair.b_med, peak_a, peak_b)
    note = [f"peak {gib(peak_a)} vs {gib(peak_b)} ({peak_b / peak_a:.2f}x)" if peak_a and peak_b else "peak: owed"]
    note.append("quantised: " + "; ".join(done))
    if owed:
        note.append(owed)
    return Row(figure, f"stock bf16 {ms(pair.a_med)}", f"inpaintd {method} {ms(pair.b_med)}", pair.ratio, pair.pair_ratio,
               status=owed or "info", note="; ".join(note) + (" (tiny)" if tiny else ""))


def _goal_rows(section: Section, family: str, result: FamilyResult, owed: str) -> None:
    """The issue's goals, met or not, from the inpaintd side of each mode's row."""
    def fits(limit_gib: float, modes: tuple[str, ...], time_x: float | None = None) -> tuple[str, str]:
        ok = []
        for mode in modes:
            m = result.modes.get(mode)
            if m is None or m.inpaintd_peak is None:
                continue
            x = m.inpaintd_s / result.baseline_s if result.baseline_s else None
            within = m.inpaintd_peak < limit_gib * GIB and (time_x is None or (x is not None and x <= time_x))
            desc = f"{mode} {gib(m.inpaintd_peak)}" + (f" at {x:.2f}x" if x is not None else "")
            ok.append((within, m.inpaintd_s, desc))
        if owed or not ok:
            return owed or "owed", "; ".join(d for _, _, d in ok) or "no measured mode"
        met = sorted((s, d) for w, s, d in ok if w)
        return ("met", f"fastest within: {met[0][1]}") if met else ("NOT MET", "; ".join(d for _, _, d in ok))

    label = LABEL[family]
    goals: list[tuple[str, tuple[str, str]]] = []
    if family == "flux-fill":
        goals.append((f"{label} peak < {GOAL_FLUX_PEAK_GIB:.0f} GiB at <= {GOAL_FLUX_TIME}x bf16 stock time",
                      fits(GOAL_FLUX_PEAK_GIB, tuple(result.modes), GOAL_FLUX_TIME)))
        goals.append((f"{label} peak < {GOAL_FLUX_OFFLOAD_GIB:.0f} GiB offloaded",
                      fits(GOAL_FLUX_OFFLOAD_GIB, tuple(m for m in result.modes if m.split("+")[0] in OFFLOADING))))
    if family == "sd3":
        goals.append((f"{label} peak < {GOAL_SD3_PEAK_GIB:.0f} GiB", fits(GOAL_SD3_PEAK_GIB, tuple(result.modes))))
    for what, (status, note) in goals:
        section.rows.append(Row(f"families goal: {what}", "", "", None, status=status, note=note))


def _budget(value: str, total: int | None) -> tuple[int | None, str]:
    """A `--memory-fraction` value: a fraction of the card (<= 1) or GiB (> 1)."""
    f = float(value)
    if f <= 1.0:
        return (int(f * total) if total else None), f"{f:g} of the card"
    return int(f * GIB), f"{f:g} GiB"


def _budget_row(job: Job, value: str, est: dict[str, int], total: int | None, owed: str) -> Row:
    """Act out a smaller card: cap the process, run one job in the mode `choose` picks."""
    from inpaintd.engines.base import is_out_of_memory
    from inpaintd.memory import choose

    budget, label = _budget(value, total)
    figure = f"families {job.family} {label} budget: auto's mode, s/job"
    if budget is None or not job.device.startswith("cuda") or owed:
        if budget is None:
            return Row(figure, "", "", None, status=owed or "owed", note="a fraction of a card needs a CUDA device")
        mode, reason = choose(est, budget)
        return Row(figure, f"auto picks {mode}", "", None, status=owed or "owed",
                   note=f"{reason} (full-size estimate); running it is {owed or 'owed'}")
    import torch

    mode, reason = choose(est, budget)
    _free(job.device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    engine = None
    peaks: list[int] = []
    try:
        engine = place(job.pipe, job.family, job.device, mode)
        call = with_peak(job.inpaintd(engine), job.device, peaks)
        call()  # warm-up: the prompt is encoded once, as a warm daemon has it
        import time

        t0 = time.perf_counter()
        out = call()
        took = time.perf_counter() - t0
        ran = engine.memory_mode
        stepped = [n for n in out.notes if "ran out of memory" in n]
        within = max(peaks) <= budget and not stepped and ran == mode
        status = "met" if within else "NOT MET"
        note = f"{reason}; peak {gib(max(peaks))} of {gib(budget)} (estimate {gib(est[mode])})"
        if ran != mode or stepped:
            note += f"; stepped down to {ran} after running out of memory"
        return Row(figure, f"auto picks {mode}", f"inpaintd {ms(took)}", None, status=status, note=note)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return Row(figure, f"auto picks {mode}", "out of memory", None, status="NOT MET",
                   note=f"{reason}; {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        if engine is not None:
            release(engine)
        else:
            job.pipe.to("cpu")
            _free(job.device)


@contextmanager
def _guarded(section: Section, what: str) -> Iterator[None]:
    """One failed measurement becomes a FAILED row; the others still run and report."""
    try:
        yield
    except Exception as exc:
        section.rows.append(Row(what, "", "", None, status="FAILED", note=f"{type(exc).__name__}: {exc}"[:500]))


def main(argv: list[str]) -> int:
    """`python -m bench.families [--steps N] [--reps N] [--families sd3,flux-fill]
    [--modes gpu,offload,group,sequential] [--memory-fraction [F,...]]` plus `bench.run`'s
    flags (--tiny, --quick, --out FILE, -v)."""
    p = argparse.ArgumentParser(prog="bench.families", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="denoising steps for both families (default: 28 and 50; tiny: 2)")
    p.add_argument("--reps", type=int, help="timed jobs per side and mode (default 2 on a GPU, 1 otherwise)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of: " + ", ".join(FAMILIES))
    p.add_argument("--modes", default="gpu,offload,group,sequential", help="comma-separated memory modes")
    p.add_argument("--quantized", default=",".join(Options.quantized),
                   help="quantised runs MODE+METHOD (fp8, int8, nf4 on the transformer and T5), comma-separated; "
                        "'' for none (default %(default)s)")
    p.add_argument("--memory-fraction", nargs="?", const=DEFAULT_BUDGETS, default="",
                   help="act out smaller cards with torch.cuda.set_per_process_memory_fraction: comma-separated "
                        "fractions of the card (<= 1) or sizes in GiB (> 1); without a value "
                        f"{DEFAULT_BUDGETS} GiB")
    args, rest = p.parse_known_args(argv)
    from inpaintd.memory import MODES

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [f for f in families if f not in FAMILIES] + [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown family or mode: {', '.join(bad)}")
    budgets = tuple(b.strip() for b in args.memory_fraction.split(",") if b.strip())
    for b in budgets:
        try:
            if float(b) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--memory-fraction: {b!r} is not a positive number")
    # `bench.run` imports this module by name; under `python -m` this one is `__main__`.
    quantized = tuple(q.strip() for q in args.quantized.split(",") if q.strip())
    bad = [q for q in quantized if q.count("+") != 1 or q.split("+")[0] not in MODES or q.split("+")[1] not in ("fp8", "int8", "nf4")]
    if bad:
        p.error(f"--quantized: not MODE+METHOD (method fp8, int8 or nf4): {', '.join(bad)}")
    importlib.import_module("bench.families").OPTIONS = Options(args.steps, args.reps, families, modes, budgets, quantized)
    from .run import main as run_main

    return run_main(["--only", "families", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
