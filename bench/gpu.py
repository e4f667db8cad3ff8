"""Figure 4: the full-size models on a GPU, stock diffusers against inpaintd's engine.

Weights are random (valid for speed and memory, not for pictures): the SD 1.5 inpainting
and SDXL inpainting architectures are built from the configs below, in fp16 on the GPU.
The same pipeline object serves both sides, so the comparison is of the call path only:

- stock: `pipe(prompt=..., image=..., mask_image=..., num_inference_steps=20,
  num_images_per_prompt=n, generator=..., strength=1.0)`, everything else at diffusers'
  defaults (fp16; strength 1.0 because SDXL's default 0.9999 runs one step fewer;
  `num_inference_steps` 19 with SD 1.5's PNDM, which evaluates the UNet once more than its
  step count, so that both sides run the 20 UNet calls inpaintd's `steps` 20 means);
- inpaintd: `inpaintd.runner.run_job` on `DiffusersEngine.from_pipeline(pipe)`, the code
  the daemon's worker runs (mask prep, crop, engine, composite), same image, mask, steps.

Warm jobs are interleaved; cold start (building the pipeline on the device, then the
first job) is measured in a fresh process per side.  Model FLOP utilisation counts UNet
FLOPs only (1.61 TFLOP per SD 1.5 step with CFG at 512², 13.5 TFLOP per SDXL step at
1024², times the variants) over the whole job time, against a bf16 matmul peak measured
in the same run.  Without CUDA the same code runs on CPU with tiny configs, to prove the
script works, and every figure is reported as owed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import Config, Row, Section, interleaved, mib, ms, sync

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a ceramic cup on a wooden table, soft light"
STEPS = 20
TINY_STEPS = 2
VARIANTS = (1, 4)

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
               num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
            layers_per_block=2, latent_channels=4, norm_num_groups=32, act_fn="silu")

#: Architectures of stable-diffusion-v1-5/stable-diffusion-inpainting and
#: diffusers/stable-diffusion-xl-1.0-inpainting-0.1, from their config.json files.
FULL: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": dict(sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
                     block_out_channels=[320, 640, 1280, 1280],
                     down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                     cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        "vae": dict(_VAE, sample_size=512, scaling_factor=0.18215),
        "text": dict(_CLIP_L),
    },
    "sdxl": {
        "unet": dict(sample_size=128, in_channels=9, out_channels=4, layers_per_block=2,
                     block_out_channels=[320, 640, 1280],
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                     transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                     cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32),
        "vae": dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        "text": dict(_CLIP_L),
        "text2": dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                      num_hidden_layers=32, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
    },
}

_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
_TINY_UNET = dict(sample_size=8, layers_per_block=1, block_out_channels=[16, 32], norm_num_groups=8,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                  attention_head_dim=4)
#: Overrides that shrink each architecture to a few MB (64² images) for the CPU check.
TINY: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": dict(_TINY_UNET, cross_attention_dim=32),
        "vae": dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=64),
        "text": _TINY_TEXT,
    },
    "sdxl": {
        "unet": dict(_TINY_UNET, cross_attention_dim=64, transformer_layers_per_block=1, use_linear_projection=False,
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32),
        "vae": dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=64, force_upcast=False),
        "text": _TINY_TEXT,
        "text2": _TINY_TEXT,
    },
}

#: UNet FLOPs per denoising step with classifier-free guidance (batch 2), per variant.
UNET_FLOP_PER_STEP = {"sd15": 1.61e12, "sdxl": 13.5e12}
SIDE = {"sd15": 512, "sdxl": 1024}


def configs(kind: str, tiny: bool) -> dict[str, dict[str, Any]]:
    out = {part: dict(cfg) for part, cfg in FULL[kind].items()}
    if tiny:
        for part, override in TINY[kind].items():
            out[part].update(override)
    return out


def build_pipeline(kind: str, tiny: bool, device: str, tokenizer_dir: Path) -> Any:
    """The inpainting pipeline of `kind` with random weights, built directly on `device`."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    diffusers.utils.logging.set_verbosity_error()  # "modules kept in float32: []" after .to(fp16)
    cfg = configs(kind, tiny)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vocab = {"vocab_size": len(tokenizer)} if tiny else {}
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**{**cfg["text"], **vocab, **ids}))
        if kind == "sdxl":
            text2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**cfg["text2"], **vocab, **ids}))
            pipe = StableDiffusionXLInpaintPipeline(
                vae=vae, text_encoder=text, text_encoder_2=text2, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                scheduler=EulerDiscreteScheduler(**schedule, timestep_spacing="leading"),
                requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
            )
        else:
            pipe = StableDiffusionInpaintPipeline(
                vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                scheduler=PNDMScheduler(**schedule, skip_prk_steps=True, set_alpha_to_one=False),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.to(dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tokenizer(folder: Path) -> Path:
    """A byte-level CLIP tokenizer (no vocabulary download needed); see inpaintd.testmodel."""
    from inpaintd.testmodel import _write_tokenizer

    _write_tokenizer(folder)
    return folder / "tokenizer"


def inputs(side: int) -> tuple[np.ndarray, np.ndarray]:
    from .inputs import canvas, ellipse_mask

    return canvas(side, channels=3), ellipse_mask(side, side // 2)


@dataclass
class Sides:
    """The ways of running one job, each on its own copy of the same random weights.

    `stock` is the pipeline as diffusers builds it; `engine` is inpaintd's engine with the
    speed settings it picks for the device; `compiled` adds torch.compile (CUDA only).  Each
    side has its own copy because the speed settings change the modules in place.
    """

    pipe: Any
    engine: Any
    compiled: Any | None
    image: np.ndarray
    mask: np.ndarray
    steps: int
    device: str

    def stock(self, n: int, seed: int = 1) -> Callable[[], Any]:
        import torch
        from PIL import Image

        from inpaintd.engines.sd_inpaint import scheduler_settings

        image, mask = Image.fromarray(self.image, "RGB"), Image.fromarray(self.mask, "L")
        # The same UNet calls as the engine's `steps` (PNDM's step count is one fewer).
        steps, _ = scheduler_settings(self.pipe.scheduler, self.steps, 1.0)

        # SDXL's default strength is 0.9999, which runs one step fewer than asked; strength 1.0
        # (SD 1.5's default, and inpaintd's) makes both sides do the same work.
        def call() -> Any:
            # cuDNN autotuning is process-wide and the engine turns it on; stock runs with
            # PyTorch's default (off), as it would in its own process.
            tuned = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = False
            try:
                out = self.pipe(prompt=PROMPT, image=image, mask_image=mask, num_inference_steps=steps, strength=1.0,
                                num_images_per_prompt=n, generator=torch.Generator("cpu").manual_seed(seed)).images
                sync(self.device)
            finally:
                torch.backends.cudnn.benchmark = tuned
            return out

        return call

    def inpaintd(self, n: int, seed: int = 1, engine: Any = None) -> Callable[[], Any]:
        from inpaintd.runner import run_job, variant_seeds
        from inpaintd_protocol.messages import JobOptions

        engine = engine or self.engine
        options = JobOptions(prompt=PROMPT, seed=seed, variants=n, steps=self.steps)
        seeds = variant_seeds(seed, n)

        def call() -> Any:
            out = run_job(engine, self.image, self.mask, options, seeds)
            sync(self.device)
            return out

        return call


def make_sides(kind: str, tiny: bool, device: str, tokenizer_dir: Path, compile_mode: str = "off") -> Sides:
    import copy

    from inpaintd.engines.diffusers_engine import DiffusersEngine
    from inpaintd.engines.speedups import Speedups

    pipe = build_pipeline(kind, tiny, device, tokenizer_dir)
    engine = DiffusersEngine.from_pipeline(copy.deepcopy(pipe), model_id=f"random-{kind}", device=device)
    compiled = None
    if compile_mode != "off":
        speedups = Speedups.default_for(device, compile=compile_mode)
        compiled = DiffusersEngine.from_pipeline(copy.deepcopy(pipe), model_id=f"random-{kind}", device=device,
                                                 speedups=speedups)
    side = engine.caps.native_size or SIDE[kind]
    image, mask = inputs(side)
    return Sides(pipe, engine, compiled, image, mask, TINY_STEPS if tiny else STEPS, device)


def measured(fn: Callable[[], Any], device: str, peaks: list[int], steps: list[int], pipe: Any) -> Callable[[], Any]:
    """Wrap `fn` to record the peak GPU memory of each call and the steps it ran."""
    import torch

    def call() -> Any:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        if device.startswith("cuda"):
            peaks.append(torch.cuda.max_memory_allocated())
        steps.append(int(pipe.num_timesteps))
        return out

    return call


def matmul_peak(device: str, n: int = 8192, reps: int = 20) -> float:
    """bf16 FLOP/s of a large square matmul: the yardstick for model FLOP utilisation."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - t0)


def host_syncs(call: Callable[[], Any]) -> int:
    """How many times one call makes the host wait for the GPU (torch's sync debug mode)."""
    import warnings

    import torch

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# -- cold start, in a fresh process per side ---------------------------------------------------


def cold_child(kind: str, side_name: str, tiny: bool, device: str, compile_mode: str = "off") -> dict[str, float]:
    t0 = time.perf_counter()
    import diffusers  # noqa: F401  # the daemon pays these imports once at start
    import torch  # noqa: F401

    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        tok = make_tokenizer(Path(tmp))
        pipe = build_pipeline(kind, tiny, device, tok)
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        engine = None
        if side_name != "stock":
            from inpaintd.engines.diffusers_engine import DiffusersEngine
            from inpaintd.engines.speedups import Speedups

            # The engine as the daemon builds it: with compile on, the warm-up is part of loading.
            speedups = Speedups.default_for(device, compile_mode if side_name == "compiled" else "off")
            engine = DiffusersEngine.from_pipeline(pipe, model_id=f"random-{kind}", device=device, speedups=speedups)
        sides = Sides(pipe, engine, None, *inputs(side), TINY_STEPS if tiny else STEPS, device)
        call = sides.stock(1) if side_name == "stock" else sides.inpaintd(1)
    sync(device)
    t2 = time.perf_counter()
    call()
    t3 = time.perf_counter()
    call()
    t4 = time.perf_counter()
    return {"imports": t1 - t0, "build": t2 - t1, "first": t3 - t2, "warm": t4 - t3}


def cold(kind: str, side_name: str, tiny: bool, device: str, compile_mode: str = "off") -> dict[str, float]:
    args = [sys.executable, "-m", "bench.gpu", "--cold", kind, side_name, device, compile_mode] + (["--tiny"] if tiny else [])
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- through the protocol -------------------------------------------------------------------------


def protocol_job_times(model_dir: Path, device: str, compile_mode: str, image: np.ndarray, mask: np.ndarray,
                       steps: int, reps: int) -> tuple[float, list[float]]:
    """Start `inpaintd serve` on `model_dir` (loading, and compiling if asked, before it
    reports ready), then time warm 1-variant jobs from a client: what a plugin waits."""
    from inpaintd_protocol.messages import JobOptions
    from tests.daemons import start_daemon

    from .daemon_proc import daemon_job

    options = JobOptions(prompt=PROMPT, seed=1, variants=1, steps=steps)
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-daemon-") as tmp:
        t0 = time.perf_counter()
        serve = ["--model", str(model_dir), "--device", device, "--compile", compile_mode]
        with start_daemon(Path(tmp), *serve, ready_timeout=1800) as daemon, daemon.client() as client:
            ready = time.perf_counter() - t0
            daemon_job(client, image, mask, options)  # first job: anything not warmed up at load
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                daemon_job(client, image, mask, options)
                times.append(time.perf_counter() - t)
    return ready, times


# -- the benchmark ----------------------------------------------------------------------------

#: Goals of the speed work on an H100 (issue 5).
GOAL_SD15_PROTOCOL_S = 0.15
GOAL_SPEEDUP = 3.0
GOAL_SDXL_S = 0.8
#: torch.compile mode of the "compiled" side: CUDA graphs remove the per-kernel launch
#: cost, which dominates a 512² UNet step on an H100.
COMPILE_MODE = "reduce-overhead"


def _seconds_status(value: float, goal: float, cuda: bool, tiny: bool) -> str:
    if not cuda or tiny:
        return "owed"
    return "met" if value <= goal else "NOT MET"


def run(cfg: Config) -> Section:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tiny = cfg.tiny or not cuda
    owed = "" if cuda and not tiny else "owed"
    # inductor on a CPU takes minutes per shape even for the tiny configs: compiled only on CUDA
    compile_mode = COMPILE_MODE if cuda else "off"
    section = Section("gpu")
    if not cuda:
        print("GPU figures owed: no CUDA device (running tiny configs on CPU to check the script)", flush=True)
        section.notes.append("gpu: GPU figures owed: no CUDA device; the script ran with tiny configs on CPU (fp32, 64², "
                             f"{TINY_STEPS} steps), without torch.compile, and those times say nothing about a GPU.")
    peak = matmul_peak(device) if cuda else None
    if peak:
        section.rows.append(Row("bf16 matmul peak, 8192³", "", f"{peak / 1e12:.0f} TFLOP/s", None, status="info"))
    reps = cfg.reps(full=5, quick=2) if cuda else (1 if cfg.quick else 3)
    # A CPU --quick run only proves the SD 1.5 path works, to stay within its minute.
    kinds = ("sd15",) if cfg.quick and not cuda else ("sd15", "sdxl")
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        tok = make_tokenizer(Path(tmp))
        for kind in kinds:
            sides = make_sides(kind, tiny, device, tok, compile_mode)
            side = sides.image.shape[0]
            if sides.compiled is not None:
                section.notes.append(f"gpu {kind}: {'; '.join(sides.compiled.speed_notes)}")
            contenders = [("inpaintd", sides.engine)] + ([("inpaintd+compile", sides.compiled)] if sides.compiled else [])
            for n in VARIANTS:
                for label, engine in contenders:
                    with _guarded(section, f"gpu {kind} {label} {n} variant(s)"):
                        _compare(section, sides, kind, side, n, label, engine, reps, peak, tiny, owed, device)
            if cuda:
                with _guarded(section, f"gpu {kind} host syncs"):
                    syncs = host_syncs(sides.inpaintd(1, engine=sides.compiled or sides.engine))
                    section.rows.append(Row(f"gpu {kind} host-GPU synchronisations in one warm job", "", str(syncs), None,
                                            status="info",
                                            note="operations torch's sync debug mode flags "
                                                 "(the pacer's bounded event waits are not counted)"))
            if kind == "sd15":
                with _guarded(section, "gpu sd15 through the protocol"):
                    _protocol_row(section, sides, Path(tmp), device, compile_mode, reps, cuda, tiny)
            del sides
            if cuda:
                torch.cuda.empty_cache()
            if cfg.quick and not cuda:
                continue  # cold start costs a fresh process per side: skipped in a CPU --quick run
            with _guarded(section, f"gpu {kind} cold start"):
                _cold_rows(section, kind, tiny, device, compile_mode, owed)
    return section


def _compare(section: Section, sides: Sides, kind: str, side: int, n: int, label: str, engine: Any, reps: int,
             peak: float | None, tiny: bool, owed: str, device: str) -> None:
    """One row: the stock pipeline against `engine`, interleaved, n variants."""
    pa: list[int] = []
    pb: list[int] = []
    sa: list[int] = []
    sb: list[int] = []
    pair = interleaved(
        measured(sides.stock(n), device, pa, sa, sides.pipe),
        measured(sides.inpaintd(n, engine=engine), device, pb, sb, engine.pipe),
        reps, warmup=1,
    )
    steps_a, steps_b = sa[-1], sb[-1]
    note = f"steps/s {steps_a / pair.a_med:.2f} vs {steps_b / pair.b_med:.2f}"
    if pa:
        note += f"; peak GPU mem {mib(max(pa))} vs {mib(max(pb))}"
    if peak and not tiny:
        flop = UNET_FLOP_PER_STEP[kind] * n
        note += f"; MFU {flop * steps_a / pair.a_med / peak:.1%} vs {flop * steps_b / pair.b_med / peak:.1%}"
    status = owed
    if not owed and n == 1:
        fast_enough = pair.ratio <= 1 / GOAL_SPEEDUP
        if kind == "sdxl":
            fast_enough = fast_enough and pair.b_med <= GOAL_SDXL_S
        status = "met" if fast_enough else "NOT MET"
    section.rows.append(Row(
        f"gpu {kind} {side}² {sides.steps} steps, {n} variant(s), s/job",
        f"stock {ms(pair.a_med)}", f"{label} {ms(pair.b_med)}", pair.ratio, pair.pair_ratio,
        goal=1 / GOAL_SPEEDUP if n == 1 else None, status=status or "info",
        note=note + (" (tiny, CPU)" if tiny else ""),
    ))


def _protocol_row(section: Section, sides: Sides, tmp: Path, device: str, compile_mode: str, reps: int,
                  cuda: bool, tiny: bool) -> None:
    """A warm 1-variant SD 1.5 job through a real daemon serving the same random weights."""
    model_dir = tmp / "random-sd15"
    sides.pipe.save_pretrained(str(model_dir), safe_serialization=True)
    ready, times = protocol_job_times(model_dir, device, compile_mode, sides.image, sides.mask, sides.steps, max(reps, 3))
    best = min(times)
    med = sorted(times)[len(times) // 2]
    side = sides.image.shape[0]
    section.rows.append(Row(
        f"gpu sd15 {side}² {sides.steps} steps, 1 variant, through the protocol (client wall time)",
        "", f"daemon {ms(med)}", None, goal=None,
        status=_seconds_status(med, GOAL_SD15_PROTOCOL_S, cuda, tiny),
        note=f"goal <= {GOAL_SD15_PROTOCOL_S * 1e3:.0f} ms; best {ms(best)}; daemon start to ready "
             f"(load{' + compile' if compile_mode != 'off' else ''}) {ms(ready)}" + (" (tiny, CPU)" if tiny else ""),
    ))


def _cold_rows(section: Section, kind: str, tiny: bool, device: str, compile_mode: str, owed: str) -> None:
    """Cold start per side, each in a fresh process: build on the device (+ compile) + first job."""
    ca = cold(kind, "stock", tiny, device)
    sides = [("inpaintd", "inpaintd")] + ([("inpaintd+compile", "compiled")] if compile_mode != "off" else [])
    for label, side_name in sides:
        cb = cold(kind, side_name, tiny, device, compile_mode)
        section.rows.append(Row(
            f"gpu {kind} cold start (build on device + first job), 1 variant",
            f"stock {ms(ca['build'] + ca['first'])}", f"{label} {ms(cb['build'] + cb['first'])}",
            (cb["build"] + cb["first"]) / (ca["build"] + ca["first"]), None, status=owed or "info",
            note=f"first job {ms(ca['first'])} vs {ms(cb['first'])}, then warm {ms(ca['warm'])} vs {ms(cb['warm'])}; "
                 f"build {ms(ca['build'])} vs {ms(cb['build'])}"
                 + (" (includes compiling for 1 and 2 variants)" if side_name == "compiled" else "")
                 + f"; imports {ms(ca['imports'])} (random weights: no disk load)" + (" (tiny, CPU)" if tiny else ""),
        ))


@contextlib.contextmanager
def _guarded(section: Section, what: str) -> Iterator[None]:
    """One failed measurement becomes a FAILED row; the others still run and report."""
    try:
        yield
    except Exception as exc:
        section.rows.append(Row(what, "", "", None, status="FAILED", note=f"{type(exc).__name__}: {exc}"[:500]))


def main(argv: list[str]) -> int:
    """`python -m bench.gpu --cold KIND SIDE DEVICE COMPILE [--tiny]`: one cold start, as JSON."""
    if len(argv) >= 5 and argv[0] == "--cold":
        print(json.dumps(cold_child(argv[1], argv[2], "--tiny" in argv, argv[3], argv[4])))
        return 0
    from .run import main as run_main

    return run_main(["--only", "gpu", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
