"""How much memory a model needs, in each way of holding it, read from its files alone.

Artists' most common complaint about the anchors is running out of VRAM.  Before loading
anything the daemon can tell, from the safetensors headers (tensor names and shapes, a few
kilobytes each), how many parameters each component has, what they weigh in each precision,
and so the peak VRAM of each memory mode:

- ``gpu``: every component on the GPU.
- ``offload``: diffusers' model CPU offload: one component at a time on the GPU.
- ``group``: diffusers' group offloading, a block at a time, the next one fetched on a side
  stream while the current one runs (two blocks resident).
- ``sequential``: diffusers' sequential CPU offload, a layer at a time (slowest).

``auto`` picks the first mode, in that order, whose estimate fits the free VRAM.  The
estimates are weights (exact, from the headers) plus a working set per family at its native
size (activations, the VAE decode) that is calibrated against one published figure (FLUX.1
dev at 1024² in Hugging Face's quantisation benchmark: peak - loaded = 4.8 GB in bf16 and
4.7 GB in nf4) and rougher public figures for the others; they are estimates, and the
daemon's out-of-memory retry steps down a mode when one is wrong.

Nothing here imports torch: `list_models` must stay instant.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .engines.quantize import BYTES_PER_WEIGHT, kept_share, quantized_bytes

#: Memory modes, from fastest and hungriest to slowest and leanest: the order `auto` tries
#: and an out-of-memory retry steps down.
MODES = ("gpu", "offload", "group", "sequential")
MEMORY_CHOICES = ("auto", *MODES)

#: Bytes per weight as stored, per precision; int8 and nf4 carry SDNQ's per-group scales
#: (`engines.quantize.BYTES_PER_WEIGHT`, measured on SDNQ's layers).
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    **{method: float(rate) for method, rate in BYTES_PER_WEIGHT.items()},
}

#: The working set (activations, attention, the VAE decode) of one variant at the family's
#: native size, beyond the weights.  FLUX.1: Hugging Face's benchmark above; the others from
#: published peak-minus-weights figures (SD 1.5 at 512², SDXL at 1024² with its float32 VAE)
#: and, for the MMDiT families without one, FLUX's figure (their sequence lengths at 1024² are
#: the same 4096 image tokens; Kontext and klein add the image's tokens again).
WORKING_AT_NATIVE: dict[str, float] = {
    "sd15": 1.2e9,
    "sd2": 1.2e9,
    "sdxl": 3.5e9,
    "sd3": 4.8e9,
    "flux-fill": 4.8e9,
    "flux-kontext": 6.5e9,
    "flux2-klein": 6.5e9,
    "qwen-edit": 6.5e9,
    # An estimate, not measured: FLUX.1's figure.  Z-Image's 6.15 B single-stream transformer
    # (3840 wide) sees the same 4096 image tokens at 1024^2 plus the prompt's (at most 512), and
    # decodes with FLUX.1's VAE; its weights (6.15 B, Qwen3-4B's 4.02 B, the VAE's 84 M) are read
    # from the files as for every family.
    "z-image": 4.8e9,
    # An estimate, not measured: FLUX.1's figure.  Chroma is FLUX.1-schnell's transformer pruned
    # (8.9 B, the same 3072 width and 4096 image tokens at 1024^2, at most 512 T5 tokens); its CFG
    # runs the prompt and the negative prompt one after the other, not as a batch of two.
    "chroma": 4.8e9,
}
DEFAULT_WORKING = 4.8e9

#: The share of free VRAM a mode's estimate may take: the CUDA context, the allocator's
#: fragmentation and other programs need the rest.
HEADROOM = 0.9

_SHARD = re.compile(r"-\d{5}-of-\d{5}")


@dataclass(frozen=True)
class Weights:
    """One component's parameters, and the parts offloading moves at a time."""

    name: str
    params: int
    #: The largest block (the keys up to the first numbered segment, e.g.
    #: `transformer_blocks.7`, `encoder.block.3`): what group offloading holds at a time.
    largest_block: int = 0
    #: Parameters outside any numbered block (embeddings, final norms): always resident in
    #: group offloading.
    outside_blocks: int = 0
    #: The largest single module (a layer's weight and bias): what sequential offload holds.
    largest_leaf: int = 0
    #: Bytes as stored where the file fixes them (a GGUF file's quantised tensors), whatever
    #: the precision the daemon computes in.
    stored_bytes: int | None = None


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def weights_of(name: str, shapes: dict[str, list[int]]) -> Weights:
    """A component's `Weights` from tensor name -> shape."""
    blocks: dict[str, int] = {}
    leaves: dict[str, int] = {}
    outside = 0
    total = 0
    for key, shape in shapes.items():
        n = _numel(shape)
        total += n
        parts = key.split(".")
        leaves[".".join(parts[:-1])] = leaves.get(".".join(parts[:-1]), 0) + n
        index = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
        if index is None:
            outside += n
        else:
            block = ".".join(parts[: index + 1])
            blocks[block] = blocks.get(block, 0) + n
    return Weights(name, total, max(blocks.values(), default=0), outside, max(leaves.values(), default=0))


def _weight_files(component: Path) -> list[Path]:
    """The safetensors files of one saved component, one precision variant: the plain files
    if there are any, else the first variant (`*.fp16.safetensors`), all shards of it."""
    files = sorted(component.glob("*.safetensors"))
    plain = [f for f in files if len(_SHARD.sub("", f.name).split(".")) == 2]
    if plain:
        return plain
    if not files:
        return []
    variant = _SHARD.sub("", files[0].name).split(".")[-2]
    return [f for f in files if _SHARD.sub("", f.name).split(".")[-2] == variant]


_CACHE: dict[tuple[str, float], list[Weights]] = {}


def folder_weights(folder: Path) -> list[Weights] | None:
    """Each component of a diffusers folder with weights in safetensors; None when the
    folder has none (e.g. a cache snapshot of configs only, or pickles)."""
    index = folder / "model_index.json"
    try:
        key = (str(folder.resolve()), index.stat().st_mtime)
    except OSError:
        return None
    if key in _CACHE:
        return _CACHE[key]
    out: list[Weights] = []
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            found = component_weights(component.name, component)
        except (OSError, ValueError, KeyError, struct.error):
            return None
        if found is not None:
            out.append(found)
    result = out or None
    if result:
        _CACHE[key] = result
    return result


_COMPONENTS: dict[tuple[str, str, float], Weights | None] = {}


def component_weights(name: str, where: Path) -> Weights | None:
    """One component's `Weights` from its saved folder (safetensors, shards and all) or one
    safetensors file; None where it has no safetensors weights.  Raises OSError/ValueError
    for a file that cannot be read.  Read once per modification of `where`: the models reply
    and every job's admission ask again (an IP-Adapter's image encoder, for one)."""
    key = (name, str(where.resolve()), where.stat().st_mtime)
    if key not in _COMPONENTS:
        shapes: dict[str, list[int]] = {}
        for path in _weight_files(where) if where.is_dir() else [where]:
            shapes.update({k: v["shape"] for k, v in _header(path).items()})
        _COMPONENTS[key] = weights_of(name, shapes) if shapes else None
    return _COMPONENTS[key]


#: Key prefixes of single-file checkpoints (the original layouts) -> component.
_SINGLE_FILE_PARTS = (
    ("model.diffusion_model.", "denoiser"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
    ("text_encoders.clip_l.", "text_encoder"),
    ("text_encoders.clip_g.", "text_encoder_2"),
    ("text_encoders.t5xxl.", "text_encoder_3"),
)


def gguf_weights(path: Path, name: str = "transformer") -> Weights | None:
    """A GGUF transformer's parameters (by its tensors' element counts) and its bytes as
    stored (the tensors stay quantised on the device); None where the gguf package or the
    file cannot be read."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
    except Exception:  # no gguf package, or not a readable GGUF file
        return None
    shapes = {t.name: [int(t.n_elements)] for t in reader.tensors}
    if not shapes:
        return None
    return replace(weights_of(name, shapes), stored_bytes=sum(int(t.n_bytes) for t in reader.tensors))


def single_file_weights(path: Path) -> list[Weights] | None:
    """The components inside a `.safetensors` checkpoint, by key prefix; a file of bare
    transformer keys (FLUX's, a GGUF's) is all denoiser."""
    if path.suffix.lower() == ".gguf":
        found = gguf_weights(path)
        return [found] if found else None
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        header = _header(path)
    except (OSError, ValueError, struct.error):
        return None
    parts: dict[str, dict[str, list[int]]] = {}
    for key, info in header.items():
        name = next((c for prefix, c in _SINGLE_FILE_PARTS if key.startswith(prefix)), "denoiser")
        prefix = next((p for p, c in _SINGLE_FILE_PARTS if key.startswith(p)), "")
        parts.setdefault(name, {})[key[len(prefix):]] = info["shape"]
    return [weights_of(name, shapes) for name, shapes in sorted(parts.items())] or None


@dataclass
class MemoryReport:
    """What the `models` reply says of a model's memory (protocol section 5.3)."""

    parameters: int
    components: dict[str, int]
    #: Weight bytes with the denoiser and the large text encoder in each precision (the
    #: other components in bf16).
    bytes: dict[str, int]
    #: Estimated peak device memory per mode, at the precision the daemon loads in and with
    #: its --quantize plan, for one variant at the native size.
    peak: dict[str, int]
    #: Host memory each mode holds the weights in.
    host: dict[str, int]
    #: What `--memory auto` picks, and why.
    auto: str
    reason: str
    #: The mode this model is (or will be) run in: --memory, or auto's choice.
    mode: str
    quantize: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "components": dict(self.components),
            "bytes": dict(self.bytes),
            "peak": dict(self.peak),
            "host": dict(self.host),
            "auto": self.auto,
            "reason": self.reason,
            "mode": self.mode,
            "quantize": dict(self.quantize),
        }


def _quantizable(name: str, large_text_encoder: str | None) -> bool:
    return name in ("unet", "transformer", "denoiser") or (bool(large_text_encoder) and name == large_text_encoder)


def component_bytes(w: Weights, precision: str, quantize: dict[str, str], large_text_encoder: str | None,
                    params: int | None = None, family: str | None = None) -> int:
    """Bytes of `params` (default: all) of component `w` at the device precision, or at its
    --quantize method where one applies to it."""
    if w.stored_bytes is not None:  # GGUF: quantised in the file, whatever the plan says
        share = 1.0 if params is None or not w.params else params / w.params
        return int(w.stored_bytes * share)
    method = quantize.get(w.name)
    if method is None and w.name in ("unet", "transformer", "denoiser"):
        method = quantize.get("denoiser")
    if method is None and large_text_encoder and w.name == large_text_encoder:
        method = quantize.get("text_encoder")
    count = w.params if params is None else params
    if method in BYTES_PER_WEIGHT and family is not None:
        # The layers the method leaves in the compute dtype (fp8 casting keeps FLUX's and
        # SD 3.5's AdaLN layers, every method T5's `wo`): a large share for some.
        share = kept_share(family, "denoiser" if w.name in ("unet", "transformer", "denoiser") else "text_encoder", method)
        return quantized_bytes(count, method, dtype_bytes=int(BYTES_PER_PARAM[precision]), kept_share=share)
    per = BYTES_PER_PARAM.get(method or "", BYTES_PER_PARAM[precision])
    return int(count * per)


def estimate(
    weights: Sequence[Weights],
    family: str,
    *,
    precision: str = "bf16",
    quantize: dict[str, str] | None = None,
    large_text_encoder: str | None = None,
    pixels_ratio: float = 1.0,
) -> dict[str, int]:
    """Peak device bytes per mode.  `precision`: how the daemon loads (bf16 on CUDA, fp32
    on a CPU); `pixels_ratio`: the job's area over the native size's."""
    q = quantize or {}
    working = int(WORKING_AT_NATIVE.get(family, DEFAULT_WORKING) * pixels_ratio)
    if precision == "fp32":
        working *= 2

    def size(w: Weights, params: int | None = None) -> int:
        return component_bytes(w, precision, q, large_text_encoder, params, family)

    return {
        "gpu": sum(size(w) for w in weights) + working,
        "offload": max(size(w) for w in weights) + working,
        "group": max(size(w, w.outside_blocks + 2 * w.largest_block) for w in weights) + working,
        "sequential": max(size(w, 2 * w.largest_leaf) for w in weights) + working,
    }


def choose(peak: dict[str, int], free: int | None) -> tuple[str, str]:
    """`auto`'s mode for these estimates and this much free device memory (None: not a
    CUDA device, where everything stays in the one memory there is)."""
    if free is None:
        return "gpu", "not a CUDA device: the model stays whole in the device's memory"
    budget = int(free * HEADROOM)
    for mode in MODES:
        if peak[mode] <= budget:
            return mode, f"{mode}: estimated peak {peak[mode] / 1e9:.1f} GB fits {free / 1e9:.1f} GB free"
    return "sequential", (
        f"sequential: even its estimated peak {peak['sequential'] / 1e9:.1f} GB exceeds {free / 1e9:.1f} GB free; "
        "it may still run out of memory"
    )


def report(
    weights: Sequence[Weights],
    family: str,
    *,
    precision: str,
    free: int | None,
    memory: str = "auto",
    quantize: dict[str, str] | None = None,
    large_text_encoder: str | None = None,
    pixels_ratio: float = 1.0,
) -> MemoryReport:
    """The `memory` field of a model entry."""
    q = dict(quantize or {})
    total = sum(w.params for w in weights)
    by_precision = {
        p: sum(component_bytes(w, "bf16", {"denoiser": p, "text_encoder": p}, large_text_encoder, family=family)
               for w in weights)
        for p in BYTES_PER_PARAM
    }
    peak = estimate(
        weights, family, precision=precision, quantize=q, large_text_encoder=large_text_encoder, pixels_ratio=pixels_ratio,
    )
    auto, reason = choose(peak, free)
    stored = sum(component_bytes(w, precision, q, large_text_encoder, family=family) for w in weights)
    host = {"gpu": 0, "offload": stored, "group": stored, "sequential": stored}
    return MemoryReport(
        parameters=total,
        components={w.name: w.params for w in weights},
        bytes=by_precision,
        peak=peak,
        host=host,
        auto=auto,
        reason=reason,
        mode=auto if memory == "auto" else memory,
        quantize=q,
    )


def step_down(mode: str) -> str | None:
    """The next leaner mode, or None at the bottom of the ladder."""
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None


def cuda_available() -> bool:
    """Whether torch is imported and sees a CUDA device.  Never imports torch, and never
    raises: a listing on the socket thread may run while the worker thread is still
    importing it (a partly initialised module has no `cuda` yet)."""
    import sys

    torch = sys.modules.get("torch")
    try:
        return torch is not None and bool(torch.cuda.is_available())
    except Exception:
        return False


def free_device_memory(device: str | None) -> int | None:
    """Free bytes on a CUDA device, None elsewhere (or where torch is not imported yet: the
    listing never imports it; a loaded diffusion engine has)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not (device or "cuda").startswith("cuda"):
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device if device and ":" in device else None)
        return int(free)
    except Exception:
        return None
