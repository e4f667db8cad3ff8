"""The GIMP plug-in's decisions, kept free of GIMP, gi and numpy.

Everything here can be unit-tested from the project's venv: which rectangle of the layer
to send, where the daemon's result layers go in image coordinates, what the layers and
the group are called, which option values are valid, what the progress bar says, and
what to tell the user when the daemon is missing.  The plug-in file only moves pixels
between GIMP and these functions.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields
from typing import Any, Iterable

PROCEDURE_NAME = "python-fu-inpaintd-inpaint-selection"
MENU_PATH = "<Image>/Filters/AI"
MENU_LABEL = "_Inpaint Selection..."
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7415"  # mirrors inpaintd_protocol.messages.DEFAULT_ENDPOINT
SEED_MAX = 2**31 - 1  # GIMP's int arguments are 32-bit signed; the daemon accepts up to 2**32-1
_ENDPOINT_RE = re.compile(r"^(tcp://[^\s:]+:\d{1,5}|tcp://\[[0-9a-fA-F:.]+\]:\d{1,5}|ipc://\S+)$")


# An axis-aligned pixel rectangle (protocol/inpaintd_protocol/rect.py, shared with the daemon and the Krita
# plug-in).  It needs neither pyzmq nor msgpack, so this module loads where GIMP's Python
# lacks them.
try:  # installed by `inpaintd install-gimp`: the vendored copy beside this file
    from inpaintd_protocol.rect import Rect
except ImportError:  # a source checkout (tests, development)
    from inpaintd_protocol.rect import Rect


# -- options -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgSpec:
    """One procedure argument: GIMP name, label, help text, default and bounds.

    The plug-in registers its PDB arguments from this table, so the dialog, the batch
    interface and the validation here can never disagree."""

    name: str  # GIMP argument name (dashes)
    field: str  # Options field (underscores)
    kind: str  # "str", "int", "float", "bool"
    label: str
    blurb: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None


# Labels carry GTK mnemonics; each letter is used once, and none of o, c, r, h, s, l,
# which the dialog's own buttons (OK, Cancel, Reset, Help, Save/Load defaults) take.
ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("prompt", "prompt", "str", "_Prompt", "What to paint into the selection", ""),
    ArgSpec("negative-prompt", "negative_prompt", "str", "_Negative prompt", "What to avoid", ""),
    ArgSpec("variants", "variants", "int", "_Variants", "How many results (one layer each)", 2, 1, 8),
    ArgSpec("strength", "strength", "float", "S_trength",
            "How far to move away from the current pixels (1 = ignore them)", 1.0, 0.01, 1.0),
    ArgSpec("steps", "steps", "int", "St_eps", "Denoising steps (0 = the model's default)", 0, 0, 150),
    ArgSpec("seed", "seed", "int", "See_d", "Random seed (-1 = a new one each time)", -1, -1, SEED_MAX),
    ArgSpec("model", "model", "str", "_Model", "Model name (empty = the daemon's default)", ""),
    ArgSpec("grow", "grow", "int", "Mask _grow", "Grow the selection by this many pixels", 8, 0, 512),
    ArgSpec("feather", "feather", "int", "_Feather", "Soften the mask edge over this many pixels", 16, 0, 512),
    ArgSpec("padding", "padding", "int", "Conte_xt padding",
            "Pixels of context around the selection (-1 = automatic)", -1, -1, 4096),
    ArgSpec("endpoint", "endpoint", "str", "D_aemon address",
            f"ZeroMQ address of inpaintd (empty = $INPAINTD_ENDPOINT or {DEFAULT_ENDPOINT})", ""),
    ArgSpec("sample-merged", "sample_merged", "bool", "Use visi_ble image",
            "Send what is visible (all layers) instead of the selected layer", False),
    ArgSpec("start-daemon", "start_daemon", "bool", "Start a local daemon if none r_uns",
            "Start inpaintd on this computer when nothing answers at the address", True),
    # Arguments added later go last, so that scripts passing arguments by position keep working.
    ArgSpec("color-match", "color_match", "bool", "F_ix color cast",
            "Match the result's colors to the picture where the model should have kept it", False),
    ArgSpec("fill", "fill", "str", "Hole pre-fill, strength belo_w 1",
            "What a diffusion model starts from in the selection below strength 1: auto (keep the picture; "
            "transparent pixels filled), none, neutral, blur, classical. No effect at strength 1 or on "
            "classical models", "auto"),
)

#: The values of `fill` (the protocol's FILL_MODES; this module imports no client code).
FILL_MODES = ("auto", "none", "neutral", "blur", "classical")

#: The dialog's order, which need not be the argument order: related settings together.
DIALOG_ORDER: tuple[str, ...] = (
    "prompt", "negative-prompt", "variants", "strength", "fill", "steps", "seed", "model", "grow", "feather", "padding",
    "color-match", "endpoint", "sample-merged", "start-daemon",
)


@dataclass
class Options:
    """The values of one run, as the dialog or a script gave them."""

    prompt: str = ""
    negative_prompt: str = ""
    variants: int = 2
    strength: float = 1.0
    steps: int = 0
    seed: int = -1
    model: str = ""
    grow: int = 8
    feather: int = 16
    padding: int = -1
    color_match: bool = False
    fill: str = "auto"
    endpoint: str = ""
    sample_merged: bool = False
    start_daemon: bool = True

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "Options":
        """Build from GIMP argument names or field names; unknown keys are ignored."""
        by_name = {a.name: a.field for a in ARGS}
        strings = {a.field for a in ARGS if a.kind == "str"}
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in values.items():
            fname = by_name.get(key, key)
            if fname in known:
                # GIMP hands an empty string argument over as None
                kw[fname] = "" if value is None and fname in strings else value
        return cls(**kw)

    def validate(self) -> list[str]:
        """Every problem, phrased for the user; empty when the options can be sent."""
        problems: list[str] = []
        for spec in ARGS:
            value = getattr(self, spec.field)
            py = {"str": str, "int": int, "float": (int, float), "bool": bool}[spec.kind]
            if not isinstance(value, py) or (spec.kind in ("int", "float") and isinstance(value, bool)):
                problems.append(f"{_plain(spec.label)} must be a {spec.kind}, got {value!r}")
                continue
            if spec.minimum is not None and value < spec.minimum:
                problems.append(f"{_plain(spec.label)} must be at least {spec.minimum:g}, got {value}")
            if spec.maximum is not None and value > spec.maximum:
                problems.append(f"{_plain(spec.label)} must be at most {spec.maximum:g}, got {value}")
        if isinstance(self.fill, str) and (self.fill.strip() or "auto") not in FILL_MODES:
            problems.append(f"Hole pre-fill '{self.fill}' is not one of {', '.join(FILL_MODES)}")
        if self.endpoint and not _ENDPOINT_RE.match(self.endpoint.strip()):
            problems.append(
                f"Daemon address '{self.endpoint}' is not a ZeroMQ address; use tcp://HOST:PORT "
                f"(e.g. {DEFAULT_ENDPOINT}) or ipc:///path, or leave it empty"
            )
        return problems

    def job_options(self) -> dict[str, Any]:
        """The fields of protocol.JobOptions this plug-in sets (the rest keep their defaults)."""
        return {
            "prompt": self.prompt.strip(),
            "negative_prompt": self.negative_prompt.strip(),
            "seed": int(self.seed),
            "variants": int(self.variants),
            "steps": int(self.steps),
            "strength": float(self.strength),
            "model": self.model.strip(),
            "grow": int(self.grow),
            "feather": int(self.feather),
            "padding": int(self.padding),
            "color_match": bool(self.color_match),
            "fill": self.fill.strip() or "auto",
        }


def _plain(label: str) -> str:
    return label.replace("_", "")


# -- geometry ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to send: `crop` in the source's own pixel coordinates (layer-local, or image
    coordinates for the visible composite) and the same rectangle in image coordinates,
    which is also where the selection mask is read."""

    crop: Rect
    crop_in_image: Rect


def context_margin(opts: Options, selection: Rect) -> int:
    """Pixels kept around the selection's bounds when cropping what is sent.

    The daemon grows and feathers the mask and picks its own context when padding is -1,
    so the crop must leave room for all three; for automatic padding we keep at least
    512 pixels or the selection's longer side, whichever is larger, which covers the
    runners' square-context heuristics without sending a whole large photo."""
    context = opts.padding if opts.padding >= 0 else max(512, selection.width, selection.height)
    return opts.grow + opts.feather + context


def plan_crop(selection: Rect, source: Rect, opts: Options) -> Plan | None:
    """The rectangle to send, or None when the selection misses the source.

    `selection` is the selection's bounds and `source` the layer's bounds, both in image
    coordinates (the layer's bounds start at its offsets)."""
    hit = selection.intersect(source)
    if hit.empty:
        return None
    in_image = hit.expand(context_margin(opts, hit)).intersect(source)
    return Plan(crop=in_image.translate(-source.x, -source.y), crop_in_image=in_image)


def result_offset(plan: Plan, layer_x: int, layer_y: int) -> tuple[int, int]:
    """Image coordinates of a result layer placed at (layer_x, layer_y) in the sent crop."""
    return plan.crop_in_image.x + layer_x, plan.crop_in_image.y + layer_y


def mask_has_pixels(mask: bytes | bytearray | memoryview) -> bool:
    """Whether any mask byte asks for regeneration (the daemon refuses an empty mask)."""
    return any(memoryview(mask).cast("B"))


# -- names and messages --------------------------------------------------------------


def short_prompt(prompt: str, limit: int = 40) -> str:
    text = " ".join(prompt.split())
    if not text:
        return "(no prompt)"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def group_name(prompt: str) -> str:
    return f"Inpaint: {short_prompt(prompt)}"


def layer_name(prompt: str, index: int, seed: int) -> str:
    """Name of variant `index` (0-based); the seed is in it so a result can be redone."""
    return f"{short_prompt(prompt, 30)} #{index + 1} (seed {seed})"


_STAGE_SPAN = {  # stage -> (start, end) of the progress bar
    "queued": (0.0, 0.0),
    "loading": (0.0, 0.05),
    "preparing": (0.05, 0.1),
    "encoding": (0.1, 0.15),
    "denoising": (0.15, 0.9),
    "decoding": (0.9, 0.95),
    "compositing": (0.95, 0.99),
}


def progress_fraction(stage: str, step: int, total_steps: int) -> float:
    start, end = _STAGE_SPAN.get(stage, (0.0, 0.0))
    if total_steps > 0:
        return start + (end - start) * min(max(step, 0), total_steps) / total_steps
    return start


def progress_text(stage: str, step: int, total_steps: int, position: int | None = None) -> str:
    if stage == "queued" or not stage:
        where = f" ({position} job{'' if position == 1 else 's'} ahead)" if position else ""
        return f"Inpainting: waiting in the daemon's queue{where}"
    if total_steps > 0:
        return f"Inpainting: {stage} step {min(step, total_steps)}/{total_steps}"
    return f"Inpainting: {stage}"


NO_SELECTION = (
    "Inpaint Selection needs a selection: select the area to repaint "
    "(e.g. with the Free Select tool, then Select > Feather for a soft edge) and run it again."
)


def how_to_start(endpoint: str) -> str:
    """The exact advice given when no daemon answers."""
    return (
        f"No inpaintd daemon answered at {endpoint}.\n"
        f"Start one in a terminal with:\n    inpaintd serve --bind {endpoint}\n"
        "(add --engine classical to use the classical engine without model weights), "
        "then run Filters > AI > Inpaint Selection... again."
    )


def serve_command(base: Iterable[str], endpoint: str) -> list[str]:
    """The command that starts a daemon at `endpoint`, from the installer's recorded base."""
    return [*base, "serve", "--bind", endpoint]


def quote_command(argv: Iterable[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def is_local_endpoint(endpoint: str) -> bool:
    """Only a daemon on this computer can be started by the plug-in."""
    if endpoint.startswith("ipc://"):
        return True
    m = re.match(r"^tcp://(\[[^\]]+\]|[^:]+):\d+$", endpoint)
    return bool(m) and m.group(1) in ("127.0.0.1", "localhost", "[::1]", "*", "0.0.0.0")


def precision_note(bits: int, linear: bool) -> str | None:
    """A note when pixels are converted on the way to the daemon (which speaks 8-bit sRGB)."""
    if bits == 8 and not linear:
        return None
    kind = "linear " if linear else ""
    return (
        f"This image is {bits}-bit {kind}; inpaintd works on 8-bit sRGB, so the selected area is sent "
        "as 8-bit and the results come back at 8-bit precision."
    )
