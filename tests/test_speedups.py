"""The engine's speed settings, checked on the CPU: same pictures, clean fallback.

The settings exist for CUDA (where `bench/gpu.py` measures them); here each one is switched
on explicitly on the tiny pipeline to prove that it does not change the result beyond
float noise, that torch.compile is wired in and warmed up at load, and that a speed-up
that fails leaves a working engine and a note saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine_calls import Call, call, generate  # noqa: E402

from inpaintd.engines.diffusers_engine import DiffusersEngine  # noqa: E402
from inpaintd.engines.speedups import Speedups  # noqa: E402
from inpaintd.testmodel import TEST_NATIVE_SIZE  # noqa: E402

SIZE = TEST_NATIVE_SIZE


def task(seeds: list[int]) -> Call:
    rng = np.random.default_rng(5)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 8:56] = 255
    return call(
        image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), mask=mask, prompt="a tiled roof",
        negative_prompt="", seeds=seeds, steps=3, guidance_scale=7.5, strength=1.0, scheduler="default",
    )


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> DiffusersEngine:
    eng = DiffusersEngine(tiny_model_dir, device="cpu")
    yield eng
    eng.close()


def processors(engine: DiffusersEngine) -> list[str]:
    return sorted({type(p).__name__ for p in engine.pipe.unet.attn_processors.values()})


def test_defaults_per_device() -> None:
    assert Speedups.default_for("cpu") == Speedups()
    assert Speedups.default_for("cpu").describe() == "none"
    cuda = Speedups.default_for("cuda:1", compile="reduce-overhead")
    assert cuda.channels_last and cuda.fuse_qkv and cuda.cudnn_benchmark and cuda.compile == "reduce-overhead"
    assert cuda.describe() == "channels-last, fused QKV, cuDNN autotuning, torch.compile (reduce-overhead)"
    # CUDA graphs (whose outputs the next replay overwrites) only where inductor makes them
    assert cuda.uses_cuda_graphs("cuda:1") and not cuda.uses_cuda_graphs("cpu")
    assert not Speedups.default_for("cuda", compile="max-autotune-no-cudagraphs").uses_cuda_graphs("cuda")
    assert not Speedups.default_for("cuda", compile="default").uses_cuda_graphs("cuda")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        Speedups(compile="fast")


def test_plain_cpu_engine_uses_none(plain: DiffusersEngine) -> None:
    assert plain.speed_notes == ["speed-ups in use: none", "memory mode gpu"]
    assert plain.warmup_seconds == 0.0


def test_fused_qkv_and_channels_last_keep_the_pictures(tiny_model_dir: Path, plain: DiffusersEngine) -> None:
    reference = generate(plain, task([1, 2]))
    fast = DiffusersEngine(tiny_model_dir, device="cpu", speedups=Speedups(fuse_qkv=True, channels_last=True))
    try:
        assert fast.speed_notes == ["speed-ups in use: fused QKV, channels-last", "memory mode gpu"]
        assert "FusedAttnProcessor2_0" in processors(fast)
        assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        out = generate(fast, task([1, 2]))
    finally:
        fast.close()
    for a, b in zip(out, reference, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # float summation order only


def test_compile_is_warmed_up_at_load_and_keeps_the_pictures(tiny_model_dir: Path, plain: DiffusersEngine) -> None:
    # The "eager" backend traces with TorchDynamo but generates no code: the wiring is what
    # is tested here (inductor on these CPUs takes over a minute per shape).
    compiled = DiffusersEngine(
        tiny_model_dir, device="cpu",
        speedups=Speedups(compile="default", compile_backend="eager", warmup_variants=(1,)),
    )
    try:
        assert compiled.pipe.unet._compiled_call_impl is not None
        assert compiled.caps.shape_multiple == 64 and plain.caps.shape_multiple == 8  # few shapes to compile
        assert torch._dynamo.config.recompile_limit >= 256 and torch._dynamo.config.accumulated_recompile_limit >= 1024
        assert compiled.warmup_seconds > 0
        assert "torch.compile (default, eager)" in compiled.speed_notes[0]
        assert compiled.speed_notes[-1].startswith(f"compiled for {SIZE}x{SIZE} with 1 variant(s) in ")
        out = generate(compiled, task([3]))
    finally:
        compiled.close()
    assert np.array_equal(out[0], generate(plain, task([3]))[0])


def _crashing_backend(graph_module, example_inputs):  # a compiler that fails at the first call
    raise RuntimeError("code generation crashed (simulated)")


@pytest.mark.parametrize("backend,expected", [
    ("no-such-backend", "speed-up not applied: torch.compile (Invalid backend: 'no-such-backend'"),
    (_crashing_backend, "torch.compile failed while warming up, running uncompiled: "),
])
def test_a_compiler_that_fails_leaves_a_working_engine(
    tiny_model_dir: Path, plain: DiffusersEngine, backend, expected: str
) -> None:
    broken = DiffusersEngine(
        tiny_model_dir, device="cpu",
        speedups=Speedups(compile="default", compile_backend=backend, warmup_variants=(1,)),
    )
    try:
        assert any(note.startswith(expected) for note in broken.speed_notes), broken.speed_notes
        assert getattr(broken.pipe.unet, "_compiled_call_impl", None) is None
        assert broken.warmup_seconds == 0.0
        out = generate(broken, task([4]))
    finally:
        broken.close()
    assert np.array_equal(out[0], generate(plain, task([4]))[0])


def test_oom_retry_gives_back_the_fused_attention(tiny_model_dir: Path) -> None:
    engine = DiffusersEngine(tiny_model_dir, device="cpu", speedups=Speedups(fuse_qkv=True))
    try:
        before = processors(engine)
        real = engine._loop
        calls = []

        def once_oom(job, **kwargs):
            calls.append(len(job.generators))
            if len(calls) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(job, **kwargs)

        engine._loop = once_oom
        assert len(generate(engine, task([1, 2]))) == 2
        assert calls == [2, 1, 1]
        assert processors(engine) == before == ["FusedAttnProcessor2_0"]
    finally:
        engine.close()


@pytest.mark.parametrize("sdxl", [False, True])
def test_only_sdxls_vae_is_kept_in_float32_under_half_precision(tmp_path: Path, sdxl: bool) -> None:
    # AutoencoderKL's config says force_upcast=True unless told otherwise, SD 1.5's too; only
    # the SDXL pipeline honours it (its VAE overflows in float16).  Nothing runs here: float16
    # convolutions are a GPU matter; the dtypes the engine settles on are what is checked.
    from diffusers import DiffusionPipeline

    from inpaintd.testmodel import make_test_model

    folder = make_test_model(tmp_path / "m", sdxl=sdxl)
    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float16)
    pipe.vae.register_to_config(force_upcast=True)  # as in the real SD 1.5 and SDXL configs
    engine = DiffusersEngine.from_pipeline(pipe, model_id="half", device="cpu")
    try:
        assert engine.pipe.unet.dtype == torch.float16
        assert engine.pipe.vae.dtype == (torch.float32 if sdxl else torch.float16)
    finally:
        engine.close()
