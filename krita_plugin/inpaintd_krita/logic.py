"""The plugin's pure logic: geometry, pixel byte order, naming, settings, messages.

Nothing here imports Krita, PyQt or numpy, so every rule the plugin follows is unit
tested in the project's venv (tests/test_krita_logic.py) without an editor.  The Krita
glue (kritadoc.py, docker.py) only reads pixels, calls these functions and writes pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

#: Krita's own names; the plugin works on 8-bit RGBA only (its pixel bytes are BGRA).
COLOR_MODEL = "RGBA"
COLOR_DEPTH = "U8"

#: The side the sent crop reaches at least (where the canvas allows), so the daemon can
#: still choose its own context (its auto padding, an SDXL model's 1024 px native size).
MIN_CONTEXT_SIDE = 1024

#: Stages the daemon reports, in order, with the share of the progress bar they start at.
_STAGE_START = {
    "submitting": 0,
    "queued": 2,
    "loading": 5,
    "preparing": 10,
    "encoding": 12,
    "denoising": 15,
    "decoding": 90,
    "compositing": 95,
}


MISSING_DEPENDENCY_HELP = (
    "Krita's Python cannot import pyzmq and msgpack, which the plugin needs to talk to the daemon. "
    "On Debian/Ubuntu: sudo apt install python3-zmq python3-msgpack. Elsewhere run "
    "`inpaintd install-krita`, which prints the exact pip command for your Krita."
)


class UserError(Exception):
    """Something the artist must change before a job can be sent; the text is shown as is."""


# An axis-aligned pixel rectangle (protocol/inpaintd_protocol/rect.py, shared with the daemon and the GIMP
# plug-in), in document coordinates unless a function says otherwise.  It needs neither
# pyzmq nor msgpack, so this module loads where Krita's Python lacks them.
from inpaintd_protocol.rect import Rect  # the vendored copy when installed (see __init__)


# -- geometry --------------------------------------------------------------------------


def selection_on_canvas(selection: Rect, canvas_width: int, canvas_height: int) -> Rect:
    """The selection's bounds clipped to the canvas.  Krita keeps selected pixels that
    lie past the canvas edge (a selection drawn over the border, or a moved one), but
    there is no image there to inpaint; a selection entirely outside is a UserError."""
    clipped = selection.intersect(Rect(0, 0, canvas_width, canvas_height))
    if clipped.empty:
        raise UserError("The selection lies outside the canvas. Select a region of the image to inpaint.")
    return clipped


def _span(start: int, length: int, at_least: int, limit: int) -> tuple[int, int]:
    """Grow [start, start+length) to `at_least` around its centre, kept inside [0, limit)."""
    target = min(max(length, at_least), limit)
    start = start - (target - length) // 2
    start = min(max(start, 0), limit - target)
    return start, target


def context_region(
    selection: Rect,
    canvas_width: int,
    canvas_height: int,
    grow: int = 0,
    feather: int = 0,
    padding: int = -1,
    min_side: int = MIN_CONTEXT_SIDE,
) -> Rect:
    """The part of the image to send: the selection plus room for the daemon's own mask
    grow, feather and context padding, and at least `min_side` on each side where the
    canvas allows.

    Why a crop and not the whole layer: a 6000x4000 RGBA layer is 96 MB per job, while
    the daemon only ever looks at the selection plus some context.  The margin is
    generous (the larger selection side, or the explicit padding) so the daemon's own
    context choice is never starved; results come back in this crop's coordinates and
    `place_result` maps them to the document.
    """
    sel = selection_on_canvas(selection, canvas_width, canvas_height)
    context = padding if padding >= 0 else max(sel.width, sel.height)
    margin = max(0, grow) + max(0, feather) + max(0, context)
    grown = sel.expand(margin).intersect(Rect(0, 0, canvas_width, canvas_height))
    x, w = _span(grown.x, grown.width, min_side, canvas_width)
    y, h = _span(grown.y, grown.height, min_side, canvas_height)
    return Rect(x, y, w, h)


def place_result(region: Rect, x: int, y: int, width: int, height: int) -> Rect:
    """Where a result layer goes in the document: the daemon places it at (x, y) in the
    image it was sent, and that image is `region` of the document."""
    if x < 0 or y < 0 or x + width > region.width or y + height > region.height:
        raise ValueError(
            f"result {width}x{height} at ({x}, {y}) does not fit the {region.width}x{region.height} image that was sent"
        )
    return Rect(region.x + x, region.y + y, width, height)


# -- pixels ----------------------------------------------------------------------------


def swap_red_blue(data: bytes | bytearray | memoryview) -> bytearray:
    """BGRA <-> RGBA (the same swap both ways).  Krita's 8-bit RGBA pixel bytes are BGRA
    in memory; the protocol carries RGBA.  Slice assignment runs in C: about 0.1 s for
    a 4096x4096 layer, with no numpy needed inside the editor."""
    src = memoryview(data).cast("B")
    if len(src) % 4:
        raise ValueError(f"{len(src)} bytes is not a whole number of 4-byte pixels")
    out = bytearray(src)
    out[0::4] = src[2::4]
    out[2::4] = src[0::4]
    return out


def mask_is_empty(mask: bytes | bytearray | memoryview) -> bool:
    """True when no pixel is selected at all (every byte 0)."""
    m = bytes(mask)
    return not m or m.count(0) == len(m)


# -- checks ----------------------------------------------------------------------------


def check_color_space(model: str, depth: str, what: str = "document") -> None:
    """Refuse anything but 8-bit RGBA with a message saying how to convert."""
    if (model, depth) != (COLOR_MODEL, COLOR_DEPTH):
        raise UserError(
            f"The {what} is {model}/{depth}; inpaintd works on 8-bit RGBA. "
            "Convert it with Image > Convert Image Color Space… (RGB/Alpha, 8-bit integer/channel), then try again."
        )


def check_source_layer(node_type: str | None, use_composite: bool) -> None:
    """The source must be a paint layer unless the visible composite is used."""
    if use_composite:
        return
    if not node_type:
        raise UserError("No active layer. Click the paint layer to inpaint in the Layers docker.")
    if node_type != "paintlayer":
        raise UserError(
            f"The active layer is a {node_type.replace('layer', ' layer').replace('mask', ' mask')}; "
            "inpaintd reads a paint layer. Select a paint layer, or tick 'Use visible image'."
        )


# -- naming ----------------------------------------------------------------------------


def group_name(prompt: str, limit: int = 48) -> str:
    """The group holding one job's variants, named after the prompt so the Layers docker
    tells jobs apart; an empty prompt ("fill from context") gets its own name."""
    text = re.sub(r"\s+", " ", prompt).strip()
    if not text:
        return "[inpaint] (fill from context)"
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"[inpaint] {text}"


def variant_name(index: int, count: int, seed: int) -> str:
    """A variant layer's name: its number and the seed that reproduces it."""
    return f"Variant {index + 1}/{count} (seed {seed})"


# -- progress and messages ---------------------------------------------------------------


def progress_percent(stage: str, step: int = 0, total: int = 0) -> int:
    """0..100 for the progress bar: stages in order, denoising steps spread over most of it."""
    if stage == "done":
        return 100
    start = _STAGE_START.get(stage, 0)
    if stage == "denoising" and total > 0:
        end = _STAGE_START["decoding"]
        return start + int((end - start) * min(max(step, 0), total) / total)
    return start


def jobs_ahead(position: int) -> str:
    """The daemon's `position` (jobs that start first, a running one included), in words."""
    return f"{position} job ahead" if position == 1 else f"{position} jobs ahead"


def progress_text(stage: str, step: int = 0, total: int = 0, position: int | None = None) -> str:
    """The line under the progress bar: the stage, and the step where there are steps."""
    if stage == "submitting":
        return "Sending…"
    if stage == "queued":
        return f"Queued: {jobs_ahead(position)}" if position else "Queued"
    label = stage.capitalize() if stage else "Working"
    if stage == "denoising" and total > 0:
        return f"{label} {min(step, total)}/{total}"
    return label + "…"


_ERROR_ADVICE = {
    "empty_mask": "The selection is empty where it overlaps the image.",
    "too_large": "The region is too large for the daemon's limits; select a smaller area.",
    "queue_full": "The daemon's queue is full; wait for running jobs to finish.",
    "unknown_model": "The daemon does not know that model; pick one from the list (press Refresh).",
    "model_unavailable": "That model is not available on the daemon (missing weights?); pick another.",
    "out_of_memory": "The daemon ran out of memory; use a smaller selection, fewer variants or padding.",
    "bad_signature": "The daemon refused the message signature: it restarted with a new key. Press Generate again.",
    "shutting_down": "The daemon is shutting down.",
}


def error_text(code: str, message: str) -> str:
    """A one-line message for the error line: advice first where there is some."""
    advice = _ERROR_ADVICE.get(code)
    return f"{advice} ({code}: {message})" if advice else f"Error: {code}: {message}"


def connection_text(endpoint: str, hello: Mapping[str, Any] | None, error: str = "") -> str:
    """The connection line: address, daemon version, default model, device."""
    if hello is None:
        why = f" ({error})" if error else ""
        return f"Not connected to {endpoint}{why}"
    version = hello.get("version") or hello.get("daemon_version") or "?"
    device = hello.get("device") or "?"
    model = hello.get("default_model") or hello.get("model") or "?"
    text = f"inpaintd {version} at {endpoint} · model {model} · {device}"
    notices = [str(n) for n in hello.get("notices") or [] if "speed-ups in use" not in str(n)]
    if notices:
        # The first sentence of the first notice (e.g. that the model's weights are missing
        # and the classical fill, which ignores prompts, stands in); all of them in the tooltip.
        first = notices[0].split(". ")[0].rstrip(".")
        text += f"\nNote: {first[:160]}{'…' if len(first) > 160 else ''}."
    return text


def notices_text(hello: Mapping[str, Any] | None) -> str:
    """Everything the daemon asked to be shown, for the connection line's tooltip."""
    return "\n\n".join(str(n) for n in (hello or {}).get("notices") or [])


def model_choices(models: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(id, label) pairs for the model box: the daemon's default ("") first, then each
    model, unavailable ones marked so the artist knows why they fail."""
    out = [("", "Daemon default")]
    for m in models:
        mid = str(m.get("id", ""))
        if not mid:
            continue
        label = f"{mid} ({m.get('engine', '?')})"
        if not m.get("available", True):
            label += " – unavailable"
        out.append((mid, label))
    return out


def daemon_command_args(template: str, endpoint: str) -> list[str]:
    """The argv that starts a local daemon, from the configurable command line
    (`{endpoint}` is replaced by the plugin's address)."""
    import shlex

    argv = shlex.split(template.replace("{endpoint}", endpoint))
    if not argv:
        raise UserError("The daemon command is empty; set it in the docker's Connection section.")
    return argv


# -- settings ----------------------------------------------------------------------------


#: The protocol's `fill` values (inpaintd_protocol.messages.FILL_MODES; this module imports no client
#: code), with what the docker shows for each.
FILL_MODES = ("auto", "none", "neutral", "blur", "classical")
FILL_LABELS = {
    "auto": "Auto (keep the picture)",
    "none": "Keep the picture",
    "neutral": "Neutral grey",
    "blur": "Blurred surroundings",
    "classical": "Classical fill",
}


@dataclass
class Settings:
    """Everything the docker edits; the action `inpaintd_inpaint_selection` runs a job
    with the current values, so the docker and a shortcut always agree."""

    prompt: str = ""
    negative_prompt: str = ""
    variants: int = 2
    strength: float = 1.0
    steps: int = 0
    seed: int = 0
    random_seed: bool = True
    model: str = ""
    grow: int = 8
    feather: int = 16
    padding: int = -1
    color_match: bool = False
    fill: str = "auto"  # one of FILL_MODES
    use_composite: bool = False
    endpoint: str = ""
    daemon_command: str = "inpaintd serve --bind {endpoint}"
    autostart: bool = False

    def job_options(self) -> dict[str, Any]:
        """The protocol's JobOptions fields (as a dict: this module does not import the client)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": -1 if self.random_seed else int(self.seed),
            "variants": int(min(max(self.variants, 1), 8)),
            "steps": int(max(self.steps, 0)),
            "strength": float(min(max(self.strength, 0.01), 1.0)),
            "model": self.model,
            "grow": int(max(self.grow, 0)),
            "feather": int(max(self.feather, 0)),
            "padding": int(max(self.padding, -1)),
            "color_match": bool(self.color_match),
            "fill": self.fill if self.fill in FILL_MODES else "auto",
        }

    def to_strings(self) -> dict[str, str]:
        """For Krita's settings store, which keeps strings."""
        out: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out

    @classmethod
    def from_strings(cls, stored: Mapping[str, str]) -> "Settings":
        """Read back what `to_strings` wrote; missing or unreadable values keep defaults."""
        s = cls()
        for f in fields(cls):
            raw = stored.get(f.name)
            if raw is None or raw == "":
                continue
            default = getattr(s, f.name)
            try:
                if isinstance(default, bool):
                    value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    value = int(raw)
                elif isinstance(default, float):
                    value = float(raw)
                    if not math.isfinite(value):
                        continue
                else:
                    value = raw
            except ValueError:
                continue
            setattr(s, f.name, value)
        return s
