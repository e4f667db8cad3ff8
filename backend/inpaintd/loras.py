"""LoRAs and textual-inversion embeddings: the folders, what each file is, and a job's choice.

The daemon serves one LoRA folder and one embeddings folder (`serve --lora-dir`,
`--embeddings-dir`; by default `loras/` and `embeddings/` in the data folder).  Each file is
described from its safetensors header alone, never loaded for the listing and never judged
by its name:

- its **family**: from the keys and one tensor shape.  The input width of a cross-attention
  key projection is the text encoder's width: 768 for SD 1.x, 1024 for SD 2.x, 2048 for
  SDXL (kohya's `lora_unet_..._attn2_to_k.lora_down.weight` and diffusers/peft's
  `unet....attn2.to_k.lora_A.weight` alike; kohya's `lora_te2_`/`lora_unet_input_blocks`
  also say SDXL).  Transformer LoRAs: `single_transformer_blocks`/`single_blocks` are FLUX,
  joint blocks without them SD 3.  Embeddings: `emb_params` (A1111) or a token key, whose
  width says SD 1.x (768) or SD 2.x (1024); `clip_l` + `clip_g` is SDXL.
- its **trigger words**: a sidecar `NAME.json` (`{"trigger_words": [...], "weight": 0.8}`)
  or `NAME.txt` (one per line), else kohya's `ss_tag_frequency` metadata (the most frequent
  tags);
- its default **weight** (the sidecar's, else 1.0) and its size.

A job names LoRAs in its `loras` field and with A1111's `<lora:NAME:WEIGHT>` in the prompt
(removed from the prompt before encoding).  Everything is checked before the job is queued:
an unknown name, a file of another family than the model's (both named), a pickle without
`--allow-pickle`, a weight out of range.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inpaintd_protocol.messages import Code, ProtocolError

from .policy import PICKLE_SUFFIXES

#: `<lora:name:weight>` (weight optional, 1.0), as krita-ai-diffusion and A1111 users type it.
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::\s*([-+]?\d*\.?\d+)\s*)?>", re.IGNORECASE)
#: Weights a job may give a LoRA (A1111 allows negative ones, which invert a concept).
MIN_WEIGHT, MAX_WEIGHT = -2.0, 2.0
#: LoRAs one job may use at once.
MAX_LORAS = 8
#: The LoRA families by cross-attention width.
_BY_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
#: Families whose LoRA applies to another's models: SD 1.x LoRAs serve 1.x inpainting models
#: of course; the listed family is the model family (`families.Arch` value).
#: Chroma keeps FLUX.1's double and single blocks under their names, so a LoRA of their
#: attention and MLP layers that says nothing more (most Chroma LoRAs) reads as FLUX's and
#: loads into Chroma too; one that also trains the approximator (`distilled_guidance_layer`)
#: or whose metadata names Chroma is Chroma's alone.  (A FLUX.1 LoRA's modulation layers have
#: no counterpart in Chroma: diffusers loads the rest and warns.)
COMPATIBLE = {"sd15": {"sd15"}, "sd2": {"sd2"}, "sdxl": {"sdxl"}, "sd3": {"sd3"},
              "flux": {"flux-fill", "flux-kontext", "chroma"}, "flux2": {"flux2-klein"}, "z-image": {"z-image"},
              "chroma": {"chroma"}}
#: A Z-Image transformer's blocks as LoRA keys name them, in diffusers' names
#: (`transformer.layers.0.attention.to_q`, ai-toolkit's `diffusion_model.layers.0...`) or
#: kohya's (`lora_unet_layers_0_attention_to_q`): single-stream `layers.N` with `attention`
#: and `feed_forward` (SD 3 and FLUX name theirs `transformer_blocks`, text encoders `self_attn`).
_Z_IMAGE_BLOCK = re.compile(r"(?:^|[._])(?:layers|noise_refiner|context_refiner)[._]\d+[._](?:attention|feed_forward|adaLN_modulation)")


@dataclass
class Addon:
    """One LoRA or embedding file."""

    name: str  # the file's stem: what jobs and prompts name
    kind: str  # "lora" or "embedding"
    path: Path
    family: str  # "sd15", "sd2", "sdxl", "sd3", "flux", "flux2", "z-image", "chroma", or "" (not recognised)
    format: str = ""  # "kohya", "diffusers", "a1111", "pickle"
    trigger_words: list[str] = field(default_factory=list)
    default_weight: float = 1.0
    bytes: int = 0
    problem: str = ""  # why it cannot be used ("" when it can)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "format": self.format, "trigger_words": list(self.trigger_words),
            "default_weight": self.default_weight, "bytes": self.bytes, "problem": self.problem,
        }

    def serves(self, model_family: str) -> bool:
        return model_family in COMPATIBLE.get(self.family, set())


def _header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError("implausible safetensors header")
        header = json.loads(f.read(length))
    meta = header.pop("__metadata__", None) or {}
    return header, meta


#: Metadata that names the base model: Stability's ModelSpec (`modelspec.architecture`,
#: e.g. "stable-diffusion-xl-v1-base/lora") and kohya's `ss_base_model_version` ("sdxl_base_v1-0").
_ARCHITECTURES = (("stable-diffusion-v1", "sd15"), ("stable-diffusion-v2", "sd2"), ("stable-diffusion-xl", "sdxl"),
                  ("stable-diffusion-3", "sd3"), ("flux-1", "flux"), ("flux-2", "flux2"), ("z-image", "z-image"),
                  ("chroma", "chroma"))
_KOHYA_BASES = (("sd_v1", "sd15"), ("sd_v2", "sd2"), ("sdxl", "sdxl"), ("sd3", "sd3"), ("flux1", "flux"), ("flux2", "flux2"))


def metadata_family(meta: dict[str, str]) -> str:
    """The family the file's metadata names, "" where it names none."""
    arch = str(meta.get("modelspec.architecture", "")).lower()
    for prefix, family in _ARCHITECTURES:
        if arch.startswith(prefix):
            return family
    base = str(meta.get("ss_base_model_version", "")).lower()
    for prefix, family in _KOHYA_BASES:
        if base.startswith(prefix):
            return family
    return ""


def lora_family(keys: dict[str, Any]) -> tuple[str, str]:
    """(family, format) of a LoRA from its tensors (name -> {"shape": ...})."""
    names = list(keys)
    kohya = any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in names)
    fmt = "kohya" if kohya else "diffusers"
    if any("distilled_guidance_layer" in k for k in names):
        return "chroma", fmt
    if any("single_transformer_blocks" in k or "single_blocks" in k for k in names):
        return ("flux2" if any("single_stream_modulation" in k for k in names) else "flux"), fmt
    if any(_Z_IMAGE_BLOCK.search(k) for k in names):
        return "z-image", fmt
    if any(k.startswith(("transformer.", "lora_transformer_")) or "joint_blocks" in k for k in names):
        return "sd3", fmt
    if any(k.startswith(("lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks")) for k in names):
        return "sdxl", fmt
    for k, info in keys.items():
        low = k.lower()
        if ("attn2" in low and ("to_k" in low or "to_v" in low)) and ("lora_down" in low or "lora_a" in low):
            shape = info.get("shape") if isinstance(info, dict) else None
            if shape and len(shape) >= 2:
                return _BY_WIDTH.get(int(shape[1]), ""), fmt
    return "", fmt


def embedding_family(keys: dict[str, Any]) -> str:
    if {"clip_l", "clip_g"} <= set(keys):
        return "sdxl"
    for info in keys.values():
        shape = info.get("shape") if isinstance(info, dict) else None
        if shape:
            return _BY_WIDTH.get(int(shape[-1]), "") if int(shape[-1]) != 2048 else ""
    return ""


def _sidecar(path: Path) -> tuple[list[str], float | None]:
    """Trigger words and a default weight from NAME.json or NAME.txt beside the file."""
    js, txt = path.with_suffix(".json"), path.with_suffix(".txt")
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
            words = [str(w) for w in data.get("trigger_words", [])] if isinstance(data, dict) else []
            weight = data.get("weight") if isinstance(data, dict) else None
            return words, float(weight) if isinstance(weight, (int, float)) else None
        except (OSError, ValueError, UnicodeDecodeError):
            return [], None
    if txt.is_file():
        try:
            return [w.strip() for w in txt.read_text(encoding="utf-8").splitlines() if w.strip()], None
        except (OSError, UnicodeDecodeError):
            return [], None
    return [], None


def _kohya_tags(meta: dict[str, str], most: int = 5) -> list[str]:
    """The most frequent training tags of a kohya LoRA (`ss_tag_frequency`)."""
    try:
        freq = json.loads(meta.get("ss_tag_frequency", "{}"))
    except ValueError:
        return []
    counts: dict[str, int] = {}
    for tags in freq.values() if isinstance(freq, dict) else []:
        for tag, n in (tags or {}).items():
            counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:most] if t]


def describe(path: Path, kind: str, allow_pickle: bool) -> Addon:
    """An Addon for a file (its header only)."""
    addon = Addon(path.stem, kind, path, "", bytes=path.stat().st_size if path.exists() else 0)
    words, weight = _sidecar(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        addon.format = "pickle"
        addon.problem = "" if allow_pickle else (
            f"{path}: refused, pickle files can run code when loaded; convert it to .safetensors or start the daemon "
            "with --allow-pickle")
        addon.trigger_words, addon.default_weight = words, weight if weight is not None else 1.0
        return addon
    try:
        keys, meta = _header(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        addon.problem = f"{path}: not a readable safetensors file ({exc})"
        return addon
    if kind == "lora":
        addon.family, addon.format = lora_family(keys)
        words = words or _kohya_tags(meta)
    else:
        addon.family, addon.format = embedding_family(keys), "a1111" if "emb_params" in keys else "diffusers"
    addon.family = metadata_family(meta) or addon.family  # what its maker says, where it says it
    if not addon.family:
        addon.problem = f"{path}: its tensors match no family inpaintd knows (SD 1.x/2.x, SDXL, SD 3, FLUX, Z-Image, Chroma)"
    addon.trigger_words, addon.default_weight = words, weight if weight is not None else 1.0
    return addon


@dataclass
class LoraChoice:
    """One LoRA a job uses."""

    addon: Addon
    weight: float


class Library:
    """The daemon's LoRA and embeddings folders, listed afresh when asked (files are added
    while it runs); a file's header is read again only when it or its sidecar changed, since
    every submit to a model that takes embeddings looks through the folder."""

    def __init__(self, lora_dir: Path, embeddings_dir: Path, allow_pickle: bool = False) -> None:
        self.lora_dir = Path(lora_dir)
        self.embeddings_dir = Path(embeddings_dir)
        self.allow_pickle = allow_pickle
        self._described: dict[tuple[str, str], tuple[tuple[int, ...], Addon]] = {}

    def _describe(self, path: Path, kind: str) -> Addon:
        stamp = tuple(
            v for p in (path, path.with_suffix(".json"), path.with_suffix(".txt"))
            for v in ((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else (0, -1))
        )
        known = self._described.get((str(path), kind))
        if known is None or known[0] != stamp:
            known = (stamp, describe(path, kind, self.allow_pickle))
            self._described[(str(path), kind)] = known
        return known[1]

    def _files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        suffixes = (".safetensors", *PICKLE_SUFFIXES)
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)

    def loras(self) -> list[Addon]:
        return [self._describe(p, "lora") for p in self._files(self.lora_dir)]

    def embeddings(self) -> list[Addon]:
        return [self._describe(p, "embedding") for p in self._files(self.embeddings_dir)]

    def lora(self, name: str) -> Addon | None:
        return next((a for a in self.loras() if a.name.lower() == name.lower()), None)

    def choose(self, requested: Iterable[tuple[str, float]], model_family: str, model_label: str) -> list[LoraChoice]:
        """The job's LoRAs, each checked; ProtocolError (field `loras`) naming the first problem."""
        chosen: dict[str, LoraChoice] = {}
        available = self.loras()
        by_name = {a.name.lower(): a for a in available}
        for name, weight in requested:
            if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
                raise _bad(f"LoRA '{name}': weight {weight} is out of range {MIN_WEIGHT} to {MAX_WEIGHT}")
            addon = by_name.get(name.lower())
            if addon is None:
                known = ", ".join(a.name for a in available) or "none"
                raise _bad(f"no LoRA '{name}' in {self.lora_dir}; the LoRAs there: {known}")
            if addon.problem:
                raise ProtocolError(Code.MODEL_REFUSED if addon.format == "pickle" else Code.BAD_VALUE,
                                    f"LoRA '{name}': {addon.problem}", {"field": "loras"})
            if not addon.serves(model_family):
                raise _bad(f"LoRA '{name}' ({addon.path}) is a {addon.family or 'unknown-family'} LoRA; the model is "
                           f"{model_label} ({model_family}): pick a LoRA made for {model_family}")
            chosen[addon.name] = LoraChoice(addon, float(weight))  # named twice: the last weight
        if len(chosen) > MAX_LORAS:
            raise _bad(f"{len(chosen)} LoRAs in one job; the limit is {MAX_LORAS}")
        return list(chosen.values())

    def embeddings_for(self, model_family: str) -> list[Addon]:
        """The usable embeddings made for `model_family` (loaded with the model)."""
        return [a for a in self.embeddings() if not a.problem and a.family == model_family]


def _bad(message: str) -> ProtocolError:
    return ProtocolError(Code.BAD_VALUE, message, {"field": "loras"})


def split_prompt(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags, and the tags' (name, weight)."""
    found = [(m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in LORA_TAG.finditer(prompt)]
    text = re.sub(r"\s{2,}", " ", LORA_TAG.sub("", prompt))
    text = re.sub(r"\s*,(\s*,)+", ",", text).strip(" ,")  # "a cat, , by the sea" -> "a cat, by the sea"
    return text, found


def parse_loras_field(value: Any) -> list[tuple[str, float]]:
    """The submit body's `loras`: a list of {"name": str, "weight": number}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'loras' must be a list of {{name, weight}} maps, got "
                                                 f"{type(value).__name__}", {"field": "loras"})
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(Code.BAD_FIELD_TYPE, f"'loras[{i}]' must be a map with a string 'name'", {"field": "loras"})
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ProtocolError(Code.BAD_FIELD_TYPE, f"'loras[{i}].weight' must be a number", {"field": "loras"})
        out.append((item["name"], float(weight)))
    return out
