"""`--quantize`: smaller weights for the denoiser and the large text encoder, per component.

The big families do not fit most GPUs in bfloat16 (FLUX.1's transformer alone is 24 GB,
its T5 another 9.5 GB), so the daemon can store their weights in fewer bits:

- ``fp8``: diffusers' layerwise casting (`enable_layerwise_casting`).  Weights are kept in
  float8 (e4m3) and each layer is cast back to the compute dtype just for its own forward.
  It needs no extra library and no fp8-capable GPU (only storage is fp8), and runs on the
  CPU too.  It is a plain cast without scales: coarser than SDNQ's scaled formats (on the
  tiny test model its error is about ten times int8's), the price of needing nothing.  It
  keeps diffusers' own list of layers to leave alone, which for SD 3.5 and FLUX.1 includes
  the AdaLN modulation layers: a third and a quarter of their transformers (`kept_share`),
  so there int8 is both smaller and closer to the original.
- ``int8`` and ``nf4``: SDNQ (SD.Next's quantisation engine, `pip install sdnq`), which
  diffusers 0.42 supports natively.  ``int8``: 8-bit integers with one float32 scale per
  1024 weights; ``nf4``: 4-bit weights (SDNQ's ``uint4``: one float32 scale and zero point
  per 64 weights; the name is the one artists know from bitsandbytes' NF4, a different
  4-bit code of the same size class).  Pure PyTorch, so one code path on every device (its
  README names CUDA, ROCm, Intel, Apple and CPUs; the CPU is tested here).  Quantised as
  each layer loads, for diffusers and transformers components alike.  The alternatives,
  tried here with torch 2.13: bitsandbytes 0.50 installs, but diffusers' bitsandbytes
  quantiser refuses to run without a GPU ("No GPU found. A GPU is needed for
  quantization."), so a CPU machine can neither use nor test it; torchao 0.18 quantises on
  the CPU, but diffusers supports its integer modes in bfloat16 only (it says so when asked
  for float32) and its compiled kernels are built against particular torch and CUDA builds
  (one of them would not load with this torch); quanto is deprecated in diffusers 0.42.
  SD.Next itself removed bitsandbytes, torchao, quanto and NNCF in favour of SDNQ.
- ``gguf``: GGUF weights come already quantised in a ``.gguf`` file; nothing is converted at
  load.  The plan only says which components come from such files (the loader reads them);
  ``gguf`` for a component that is not read from a .gguf file is an error that says so.

Component names: ``denoiser`` (the family's ``unet`` or ``transformer``) and ``text_encoder``
(the family's large text encoder: SD 3's T5 ``text_encoder_3``, FLUX.1's T5
``text_encoder_2``, Chroma's T5 ``text_encoder``, FLUX.2 klein's, Qwen-Image's and Z-Image's
Qwen ``text_encoder``), or those real names.  The CLIP encoders and the VAE are small and are left alone.  A plan is checked
against the platform before anything loads: a method that cannot run here fails with the
method, the reason and what to use instead.

Nothing here imports torch, diffusers or sdnq at module level: the CLI parses ``--quantize``
without paying for them.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..families import Arch, Family

#: The methods `--quantize` accepts, in the order the help lists them.
METHODS = ("none", "fp8", "int8", "nf4", "gguf")

#: Portable names: what they mean is looked up in the model's family.
DENOISER = "denoiser"
TEXT_ENCODER = "text_encoder"

#: Every component name a plan may use, aliases first (real names depend on the family).
COMPONENT_NAMES = (DENOISER, TEXT_ENCODER, "unet", "transformer", "text_encoder_2", "text_encoder_3")

#: The SDNQ release this module was written and tested against (diffusers 0.42.1 asks for
#: at least 0.2.2).
SDNQ_REQUIREMENT = "sdnq==0.2.8"

#: SDNQ's storage format for each method it serves.
_SDNQ_WEIGHTS = {"int8": "int8", "nf4": "uint4"}

#: Bytes per weight as stored, scales included (see `quantized_bytes`): measured on SDNQ
#: 0.2.8 layers (int8: int8 weights, a float32 scale per group of 1024; uint4: two weights a
#: byte, a float32 scale and a float32 zero point per group of 64); fp8 casting has no scales.
BYTES_PER_WEIGHT: dict[str, Fraction] = {
    "fp8": Fraction(1),
    "int8": Fraction(1) + Fraction(4, 1024),
    "nf4": Fraction(1, 2) + Fraction(4 + 4, 64),
}

#: The large text encoder per family (`families.Arch` value), for when the family row does
#: not say (`Family.large_text_encoder`, "" for families whose encoders are all small).
_LARGE_TEXT_ENCODER = {
    "sd15": "",
    "sd2": "",
    "sdxl": "",
    "sd3": "text_encoder_3",
    "flux-fill": "text_encoder_2",
    "flux-kontext": "text_encoder_2",
    "flux2-klein": "text_encoder",
    "qwen-image": "text_encoder",
    "qwen-edit": "text_encoder",
    "z-image": "text_encoder",
    "chroma": "text_encoder",
}

#: Layers that layerwise casting leaves in the compute dtype, on top of diffusers' defaults
#: and the model's own fp32 list: embedding tables.  transformers' `PreTrainedModel.dtype`
#: is the dtype of the first floating parameter, the token embedding, and the pipelines
#: cast the prompt embeddings to it; cast to fp8 it would turn them to fp8 too.  (SDNQ
#: leaves embeddings alone by default as well; they are a few percent of the weights.)
_FP8_KEEP = ("embed", "shared", "wte", "lm_head")


class QuantizeError(ValueError):
    """A `--quantize` plan that is malformed or cannot run here; the message names the
    value, the reason and what to use instead.  A ValueError, so that the CLI reports it
    as a usage error; the engine reports it as a refused model."""


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names)


def parse_quantize(text: str) -> dict[str, str]:
    """`--quantize`'s value as {component: method}.

    "fp8" -> {"denoiser": "fp8"}; "transformer=nf4,text_encoder_3=int8" -> per component;
    "int8,text_encoder=fp8" -> the bare method is the denoiser's.  Names are checked here
    against every family's names; whether the model's family has them is `resolve_plan`'s
    business (the CLI does not know the model yet).  "" -> {} (nothing quantised).
    """
    plan: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if "=" in item:
            name, _, method = (part.strip() for part in item.partition("="))
        else:
            name, method = DENOISER, item
        if name not in COMPONENT_NAMES:
            raise QuantizeError(
                f"--quantize: unknown component '{name}' in '{raw.strip()}'; components: {_listing(COMPONENT_NAMES)} "
                f"('{DENOISER}' is the unet or transformer, '{TEXT_ENCODER}' the family's large text encoder)"
            )
        if method not in METHODS:
            raise QuantizeError(f"--quantize: unknown method '{method}' for {name}; methods: {_listing(METHODS)}")
        if name in plan and plan[name] != method:
            raise QuantizeError(f"--quantize: {name} is given twice ('{plan[name]}' and '{method}'); give it once")
        plan[name] = method
    return plan


def _arch_value(family: Family | Arch | str) -> str:
    arch = getattr(family, "arch", family)
    return str(getattr(arch, "value", arch))


def _family_row(family: Family | Arch | str) -> Any:
    """The family row for an Arch or its value (an object with `denoiser` already is one)."""
    if hasattr(family, "denoiser"):
        return family
    from ..families import family as family_of

    try:
        return family_of(_arch_value(family))
    except (KeyError, ValueError):
        raise QuantizeError(f"--quantize: unknown model family '{_arch_value(family)}'") from None


def large_text_encoder(family: Family | Arch | str) -> str:
    """The component `text_encoder` means for `family` ("" where all its encoders are small)."""
    row = _family_row(family)
    named = getattr(row, "large_text_encoder", None)
    if isinstance(named, str):
        return named
    return _LARGE_TEXT_ENCODER.get(_arch_value(row), "")


def quantizable_components(family: Family | Arch | str) -> dict[str, str]:
    """Name a plan may use -> the pipeline component it means, for `family`."""
    row = _family_row(family)
    names = {DENOISER: row.denoiser, row.denoiser: row.denoiser}
    large = large_text_encoder(row)
    if large:
        names[TEXT_ENCODER] = large
        names[large] = large
    return names


@dataclass(frozen=True)
class Resolved:
    """A plan in the family's own component names, and what was set aside."""

    #: Pipeline component -> method, "none" left out.
    methods: dict[str, str]
    #: What the log should say about parts of the plan that do not apply to this family.
    notes: tuple[str, ...] = ()


def resolve_plan(plan: Mapping[str, str], family: Family | Arch | str) -> Resolved:
    """`plan` (from `parse_quantize`) in `family`'s component names.

    The aliases are portable: `text_encoder` on a family whose encoders are all small (SD
    1.x/2.x, SDXL) is set aside with a note, so one daemon-wide plan can serve mixed models.
    Real names are precise: one the family does not have is an error that lists its names.
    """
    row = _family_row(family)
    names = quantizable_components(row)
    methods: dict[str, str] = {}
    notes: list[str] = []
    for name, method in plan.items():
        if method not in METHODS:
            raise QuantizeError(f"--quantize: unknown method '{method}' for {name}; methods: {_listing(METHODS)}")
        component = names.get(name)
        if component is None:
            if name == TEXT_ENCODER:
                notes.append(f"{row.label} has no large text encoder (its CLIP encoders are small): text_encoder={method} ignored")
                continue
            listed = _listing(f"{n} (= {c})" if n != c else n for n, c in names.items())
            raise QuantizeError(
                f"--quantize: {row.label} has no component '{name}' to quantise; it has: {listed} "
                "(its CLIP encoders and VAE are small and stay as they are)"
            )
        earlier = methods.get(component)
        if earlier is not None and earlier != method:
            raise QuantizeError(f"--quantize: {component} is given twice for {row.label} ('{earlier}' and '{method}'); give it once")
        methods[component] = method
    return Resolved({c: m for c, m in methods.items() if m != "none"}, tuple(notes))


def _device_type(device: str) -> str:
    return str(device).split(":")[0]


def sdnq_available() -> bool:
    """Whether the sdnq package is installed (without importing it: the import costs seconds)."""
    return importlib.util.find_spec("sdnq") is not None


def check_available(methods: Mapping[str, str], device: str, *, from_gguf: Collection[str] = ()) -> None:
    """Raise QuantizeError, before anything loads, for a method that cannot run here.

    `methods`: component -> method (`Resolved.methods`); `from_gguf`: the components the
    loader reads from .gguf files.
    """
    kind = _device_type(device)
    for component, method in methods.items():
        if method == "gguf":
            if component not in from_gguf:
                raise QuantizeError(
                    f"--quantize {component}=gguf: GGUF weights come already quantised in a .gguf file, inpaintd "
                    f"does not convert to GGUF; {component} is not loaded from one.  Download a .gguf of this "
                    f"model's {component} (e.g. a Q8_0 or Q4_K_M file) and give that file as the model, or use "
                    "fp8, int8 or nf4, which quantise the model as it loads"
                )
            continue
        if component in from_gguf:
            raise QuantizeError(
                f"--quantize {component}={method}: {component} is loaded from a .gguf file and is quantised "
                f"already; drop {component}={method} (or say {component}=gguf)"
            )
        if method == "fp8" and kind == "mps":
            raise QuantizeError(
                f"--quantize {component}=fp8: torch's MPS backend has no float8 dtypes to store weights in; "
                "use int8 or nf4 (SDNQ runs on Apple GPUs)"
            )
        if method in _SDNQ_WEIGHTS and not sdnq_available():
            raise QuantizeError(
                f"--quantize {component}={method} needs the sdnq package, which is not installed: "
                f"`pip install '{SDNQ_REQUIREMENT}'`; or use fp8, which needs nothing extra"
            )


#: The share of a component's weights a method leaves in the compute dtype, where it is
#: more than about 1%: (method kind, role, family) -> share.  Measured on the real
#: architectures built empty (`accelerate.init_empty_weights`):
#: - fp8 casting keeps diffusers' skip list, whose "norm" pattern also matches the AdaLN
#:   modulation linears (`norm1.linear`, ...): a third of SD 3.5's transformer, 27% of
#:   FLUX.1's; FLUX.2's modulation layers are named otherwise and are cast.
#: - both keep the token embeddings (see `_FP8_KEEP`; SDNQ's default): 3% of T5-XXL, 9% of
#:   Qwen3-4B; and T5's `wo` layers (21%), which transformers keeps out of every quantiser.
#: - Z-Image (built the same way from Z-Image-Turbo's transformer config, diffusers' defaults,
#:   6.15 B, and Qwen3-4B's, 4.02 B): its Qwen3 as klein's (the embedding, 9.7%); fp8 keeps
#:   0.2% of its transformer (norms, `t_embedder`, `cap_embedder`; the `adaLN_modulation`
#:   linears are cast), below the table's 1%.
#: - Chroma (Chroma1-HD's transformer config, diffusers' defaults, 8.90 B): its T5-XXL is
#:   FLUX.1's (24%); fp8 keeps 0.15% of its transformer (the norms, the top `proj_out`; it has
#:   no modulation linears, the approximator's are cast), below the table's 1%.
_KEPT_SHARE: dict[tuple[str, str, str], float] = {
    ("fp8", DENOISER, "sd3"): 0.33,
    ("fp8", DENOISER, "flux-fill"): 0.27,
    ("fp8", DENOISER, "flux-kontext"): 0.27,
    ("fp8", TEXT_ENCODER, "sd3"): 0.24,
    ("fp8", TEXT_ENCODER, "flux-fill"): 0.24,
    ("fp8", TEXT_ENCODER, "flux-kontext"): 0.24,
    ("fp8", TEXT_ENCODER, "flux2-klein"): 0.09,
    ("sdnq", TEXT_ENCODER, "sd3"): 0.24,
    ("sdnq", TEXT_ENCODER, "flux-fill"): 0.24,
    ("sdnq", TEXT_ENCODER, "flux-kontext"): 0.24,
    ("sdnq", TEXT_ENCODER, "flux2-klein"): 0.09,
    ("fp8", TEXT_ENCODER, "z-image"): 0.09,
    ("sdnq", TEXT_ENCODER, "z-image"): 0.09,
    ("fp8", TEXT_ENCODER, "chroma"): 0.24,
    ("sdnq", TEXT_ENCODER, "chroma"): 0.24,
}


def kept_share(family: Family | Arch | str, component: str, method: str) -> float:
    """The share of `component`'s weights that `method` leaves in the compute dtype (0 to
    1), for `quantized_bytes`; `component` a plan name or the family's real one."""
    if method in ("none", "gguf"):
        return 0.0
    names = quantizable_components(family)
    real = names.get(component, component)
    row = _family_row(family)
    role = DENOISER if real == row.denoiser else TEXT_ENCODER
    kind = "fp8" if method == "fp8" else "sdnq"
    return _KEPT_SHARE.get((kind, role, _arch_value(row)), 0.0)


def quantized_bytes(params: int, method: str, *, dtype_bytes: int = 2, kept_share: float = 0.0) -> int:
    """Bytes `params` weights take on the device stored by `method`, scales included.

    For a memory estimate before loading.  "none" is `dtype_bytes` a weight (2: bfloat16 or
    float16 on GPUs, 4: float32 on a CPU).  `kept_share` of the weights stay in the compute
    dtype (`dtype_bytes`): layers the method leaves alone, which for some components is a
    large share (`kept_share(family, component, method)`: SD 3.5's AdaLN layers under fp8,
    T5's `wo` under int8 and nf4).  fp8 casting also holds the one layer it is running in the
    compute dtype.  "gguf" has no fixed rate: a GGUF file's tensors take about its file size.
    """
    if params < 0:
        raise ValueError(f"params must be >= 0, not {params}")
    if not 0.0 <= kept_share <= 1.0:
        raise ValueError(f"kept_share must be between 0 and 1, not {kept_share}")
    if method == "none":
        return params * dtype_bytes
    if method == "gguf":
        raise ValueError("gguf weights have no fixed size per weight: a .gguf file's tensors take about its file size")
    rate = BYTES_PER_WEIGHT.get(method)
    if rate is None:
        raise ValueError(f"unknown quantisation method '{method}'; methods: {_listing(METHODS)}")
    kept = Fraction(kept_share).limit_denominator(10_000)
    return math.ceil(params * ((1 - kept) * rate + kept * dtype_bytes))


# -- loading ------------------------------------------------------------------------


def _import_sdnq(device: str) -> Any:
    """The sdnq module (Any: untyped).  On import sdnq test-compiles a function with
    torch.compile to decide whether to use it: ~20 s on a CPU with Inductor's C++ backend,
    for kernels that help little there, so unless the user has chosen, a CPU daemon runs
    SDNQ in eager mode.  On a GPU it compiles its dequantisation with Triton where present."""
    if "sdnq" not in sys.modules and _device_type(device) == "cpu":
        os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
    return importlib.import_module("sdnq")


def _sdnq_options(method: str, device: str) -> dict[str, Any]:
    """SDNQConfig's arguments for `method`.  On CUDA each layer is quantised on the GPU as it
    loads (SDNQ's recommendation: far faster than on the CPU) and stays there."""
    options: dict[str, Any] = {"weights_dtype": _SDNQ_WEIGHTS[method]}
    if _device_type(device) == "cuda":
        options.update(quantization_device=device, return_device=device)
    return options


def _quantized_at_load(module: Any) -> bool:
    """Whether a quantiser already ran on `module` as it loaded (it may have found no layer
    large enough to quantise, as in the tiny test models): the same test sdnq makes."""
    config = getattr(module, "config", None)
    return (
        hasattr(module, "quantization_config")
        or hasattr(config, "quantization_config")
        or (isinstance(config, dict) and "quantization_config" in config)
        or any(type(m).__name__.startswith("SDNQ") for m in module.modules())
    )


def _layers_done(module: Any, method: str) -> int:
    """How many layers of `module` `method` actually converted (the log says it: a layer
    below SDNQ's size floor, or on a skip list, stays as it was)."""
    if method == "fp8":
        return sum(
            1 for m in module.modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("layerwise_casting") is not None
        )
    return sum(1 for m in module.modules() if type(m).__name__.startswith("SDNQ"))


def _weight_bytes(module: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def _cast_fp8(module: Any) -> str:
    """Store `module`'s layers in float8 e4m3, computed in the dtype it was loaded in."""
    import torch
    from diffusers import ModelMixin
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN, _is_layerwise_casting_active, apply_layerwise_casting

    if _is_layerwise_casting_active(module):
        return "fp8 storage (already on)"
    compute = module.dtype
    if isinstance(module, ModelMixin):
        # The model's own skip list (norms, embedders, ...) and its fp32 modules apply.
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    else:
        # The model's float32 list stays as it is: T5's `wo` layers, whose activations
        # overflow float16, and whose forward casts its input to `wo.weight.dtype`, which at
        # rest would be fp8.  (Every transformers quantiser leaves them alone too.)
        keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
        apply_layerwise_casting(
            module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
            skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, *_FP8_KEEP, *keep),
        )
        if module.dtype != compute:  # the pipeline would cast the prompt embeddings to fp8
            raise QuantizeError(
                f"fp8 casting left {type(module).__name__}'s first weights in {module.dtype}; "
                "use int8 for this text encoder"
            )
    return f"fp8 storage, computed in {str(compute).removeprefix('torch.')} (diffusers layerwise casting)"


def _quantize_sdnq(pipe: Any, component: str, module: Any, method: str, device: str) -> str:
    """SDNQ after loading, for a component that was not quantised as it loaded (a pipeline
    from a single file, whose `from_single_file` takes no quantisation config)."""
    label = f"{method} weights (SDNQ {_SDNQ_WEIGHTS[method]})"
    if _quantized_at_load(module):
        return label
    sdnq = _import_sdnq(device)
    quantized = sdnq.sdnq_post_load_quant(module, torch_dtype=module.dtype, **_sdnq_options(method, device))
    setattr(pipe, component, quantized)
    return label + ", after loading"


@dataclass
class Quantization:
    """What loading a pipeline needs for a plan: `config` for `from_pretrained`'s
    `quantization_config` (None when nothing quantises as it loads), and `after_load(pipe)`,
    to call on the loaded pipeline before it moves to the device (fp8 casting, SDNQ for
    pipelines loaded without the config).  `after_load` returns lines for the log."""

    config: Any
    after_load: Callable[[Any], list[str]]
    methods: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Any:  # config, after_load = pipeline_quantization(...)
        return iter((self.config, self.after_load))


def pipeline_quantization(
    plan: Mapping[str, str],
    family: Family | Arch | str,
    device: str,
    *,
    from_gguf: Collection[str] = (),
    absent: Collection[str] = (),
) -> Quantization:
    """`plan` (from `parse_quantize`) for a pipeline of `family` on `device`.

    Checks everything first (names, platform, packages): a plan that cannot run raises
    QuantizeError before any weights are read.  int8 and nf4 become a
    `PipelineQuantizationConfig` of SDNQ configs, so that each layer is quantised as it is
    read (the full-precision component is never whole in memory); fp8 is applied by
    `after_load`, which casts the loaded weights in place before the pipeline moves to the
    device.  `from_gguf`: components the loader reads from .gguf files (the `gguf` method);
    `absent`: optional components the model lacks (SD 3 without its T5), left out of the
    config (diffusers would warn about them) and noted.
    """
    resolved = resolve_plan(plan, family)
    check_available(resolved.methods, device, from_gguf=from_gguf)
    notes = list(resolved.notes) + [f"{c}: not in this model, nothing to quantise" for c in resolved.methods if c in absent]
    methods = {c: m for c, m in resolved.methods.items() if c not in absent}
    config: Any = None
    sdnq_parts = {c: m for c, m in methods.items() if m in _SDNQ_WEIGHTS}
    if sdnq_parts:
        sdnq = _import_sdnq(device)  # registers SDNQ with transformers (the text encoders)
        from diffusers import PipelineQuantizationConfig

        config = PipelineQuantizationConfig(
            quant_mapping={c: sdnq.SDNQConfig(**_sdnq_options(m, device)) for c, m in sdnq_parts.items()}
        )

    def after_load(pipe: Any) -> list[str]:
        lines = list(notes)
        for component, method in methods.items():
            module = getattr(pipe, component, None)
            if module is None:
                lines.append(f"{component}: not in this model, nothing to quantise")
                continue
            if method == "fp8":
                how = _cast_fp8(module)
            elif method in _SDNQ_WEIGHTS:
                how = _quantize_sdnq(pipe, component, module, method, device)
                module = getattr(pipe, component)
            else:
                how = "GGUF weights from the .gguf file"
            if method != "gguf":
                how += f", {_layers_done(module, method)} layers"
            lines.append(f"{component}: {how}, {_weight_bytes(module) / 1e6:.1f} MB of weights")
        return lines

    return Quantization(config, after_load, methods, notes)


def describe(plan: Mapping[str, str]) -> str:
    """A plan as `--quantize` writes it (for logs and the `models` reply)."""
    return ",".join(f"{c}={m}" for c, m in plan.items()) or "none"
