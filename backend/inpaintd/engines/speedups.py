"""GPU speed settings for a loaded pipeline: which to use, applying them, warming them up.

Each lever is kept only where it pays (see `bench/gpu.py` and `bench/RESULTS.md`):

- half precision and PyTorch's fused scaled-dot-product attention: always on a GPU (the
  engine loads in float16; diffusers uses SDPA by default);
- channels-last memory format, fused QKV projections and cuDNN autotuning: on by default
  on CUDA, where cuDNN's NHWC kernels, one matmul instead of three, and the fastest
  convolution algorithm per shape help.  Never by default on the CPU:
  channels-last convolutions there were ~100x *slower* on the tiny test model;
- `torch.compile`: opt-in (`inpaintd serve --compile MODE`).  It costs tens of seconds
  per new shape, so the engine compiles at load time for the shapes most jobs use (the
  model's native size, one and the default number of variants) and says what that cost.
  Mode `reduce-overhead` also captures CUDA graphs, which removes the per-kernel launch
  cost that dominates small batches.

Every lever degrades cleanly: one that fails to apply is reported and skipped; the job
still runs with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Compiled shapes kept per code object before new ones run uncompiled: ~25 sizes times
#: the variant counts in use, with and without guidance.
RECOMPILE_LIMIT = 256

#: Modes accepted by `--compile` ("off" plus torch.compile's own modes).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Speedups:
    channels_last: bool = False
    fuse_qkv: bool = False
    cudnn_benchmark: bool = False
    compile: str = "off"
    #: torch.compile backend (a name or a callable); tests use "eager" (tracing only)
    #: to check the plumbing fast.
    compile_backend: Any = "inductor"
    #: Variant counts to compile for at load time (with `compile` on).
    warmup_variants: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode '{self.compile}'; known: {', '.join(COMPILE_MODES)}")

    @classmethod
    def default_for(cls, device: str, compile: str = "off") -> Speedups:
        cuda = device.split(":")[0] == "cuda"
        return cls(channels_last=cuda, fuse_qkv=cuda, cudnn_benchmark=cuda, compile=compile)

    def uses_cuda_graphs(self, device: str) -> bool:
        """Whether compiled modules replay CUDA graphs (inductor's reduce-overhead and
        max-autotune modes do, on CUDA)."""
        return (
            device.split(":")[0] == "cuda"
            and self.compile_backend == "inductor"
            and self.compile in ("reduce-overhead", "max-autotune")
        )

    def describe(self) -> str:
        on = [name for name, flag in (("channels-last", self.channels_last), ("fused QKV", self.fuse_qkv),
                                      ("cuDNN autotuning", self.cudnn_benchmark)) if flag]
        if self.compile != "off":
            on.append(f"torch.compile ({self.compile})")
        return ", ".join(on) or "none"


@dataclass
class Applied:
    """What `apply` did, for the daemon's log and notices."""

    used: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    compiled: bool = False  # torch.compile took: the engine warms it up


def apply(pipe: Any, speedups: Speedups) -> Applied:
    """Apply `speedups` to the pipeline's UNet and VAE in place."""
    import torch

    done = Applied()
    if speedups.cudnn_benchmark:
        # Jobs run at a handful of shapes over and over: let cuDNN time its convolution
        # algorithms once per shape and keep the fastest.
        torch.backends.cudnn.benchmark = True
        done.used.append("cuDNN autotuning")
    if speedups.fuse_qkv:
        try:
            pipe.unet.fuse_qkv_projections()
            pipe.vae.fuse_qkv_projections()
            done.used.append("fused QKV")
        except Exception as exc:  # an attention layout without fused support
            done.skipped.append(f"fused QKV ({exc})")
    if speedups.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        done.used.append("channels-last")
    if speedups.compile != "off":
        options: dict[str, Any] = {"backend": speedups.compile_backend, "dynamic": False}
        if speedups.compile_backend == "inductor":
            options["mode"] = speedups.compile
        # Each (batch, height, width) compiles once; past dynamo's default limit of 8 a new
        # shape would silently run uncompiled.  A coarse size grid (the engine's
        # `shape_multiple`) keeps the sizes to ~25; each variant count multiplies them.
        for name, wanted in (("recompile_limit", RECOMPILE_LIMIT), ("accumulated_recompile_limit", 4 * RECOMPILE_LIMIT)):
            limit = getattr(torch._dynamo.config, name, None)
            if isinstance(limit, int) and limit < wanted:
                setattr(torch._dynamo.config, name, wanted)
        try:
            # In place (nn.Module.compile): the pipeline keeps its own modules and configs.
            pipe.unet.compile(**options)
            pipe.vae.decoder.compile(**options)
            done.used.append(f"torch.compile ({speedups.compile}, {speedups.compile_backend})")
            done.compiled = True
        except Exception as exc:
            done.skipped.append(f"torch.compile ({exc})")
    return done


def uncompile(pipe: Any) -> None:
    """Undo `nn.Module.compile` on the modules `apply` compiled (back to eager)."""
    for module in (pipe.unet, pipe.vae.decoder):
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
