"""The plugin's pure logic that is Krita's own: pixel byte order, checks, messages, settings.

What both editor plug-ins decide (the crop, progress, layer names, option limits, the
daemon's address) is in the protocol package's `inpaintd_protocol.editor`; this module adds
what only the Krita docker needs.  Nothing here imports Krita, PyQt or numpy, so every
rule the plugin follows is unit tested in the project's venv (tests/test_krita_logic.py)
without an editor.  The Krita glue (kritadoc.py, docker.py) only reads pixels, calls these
functions and writes pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# The standard-library parts of the protocol package (the vendored copy when installed, see
# __init__); they need neither pyzmq nor msgpack, so this module loads where Krita's Python
# lacks them.
from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan
from inpaintd_protocol.options import KRITA, check_record
from inpaintd_protocol.rect import Rect

#: Krita's own names; the plugin works on 8-bit RGBA only (its pixel bytes are BGRA).
COLOR_MODEL = "RGBA"
COLOR_DEPTH = "U8"

MISSING_DEPENDENCY_HELP = (
    "Krita's Python cannot import pyzmq and msgpack, which the plugin needs to talk to the daemon. "
    "On Debian/Ubuntu: sudo apt install python3-zmq python3-msgpack. Elsewhere run "
    "`inpaintd install-krita`, which prints the exact pip command for your Krita."
)


def missing_dependency_text(exc: Exception, bundled_problem: str | None = None) -> str:
    """What the docker says when the client library cannot import: the package's own
    account of its missing wheel when it carries wheels, the install advice otherwise."""
    return f"{exc}. {bundled_problem or MISSING_DEPENDENCY_HELP}"


class UserError(Exception):
    """Something the artist must change before a job can be sent; the text is shown as is."""


# -- the crop --------------------------------------------------------------------------


def plan_crop(selection: Rect, canvas_width: int, canvas_height: int, settings: Settings) -> CropPlan:
    """The crop to send (editor.plan_crop's rule) for a selection in document coordinates.

    Krita's layers have no fixed bounds (a layer's pixels are read in document coordinates,
    its offset applied), so only the canvas limits the crop.  Krita keeps selected pixels
    past the canvas edge, but there is no image there to inpaint: a selection entirely
    outside is a UserError."""
    plan = editor.plan_crop(selection, Rect(0, 0, canvas_width, canvas_height),
                            settings.grow, settings.feather, settings.padding)
    if plan is None:
        raise UserError("The selection lies outside the canvas. Select a region of the image to inpaint.")
    return plan


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


# -- messages ----------------------------------------------------------------------------


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

#: The docker's settings that are not job options, with their defaults.
EXTRA_SETTINGS: tuple[tuple[str, type, Any], ...] = (
    ("use_composite", bool, False),
    ("endpoint", str, ""),
    ("daemon_command", str, "inpaintd serve --bind {endpoint}"),
    ("autostart", bool, False),
    ("loras", str, ""),  # the chosen LoRAs, loras.format_chosen's `name:weight,...`
)


#: Settings older versions stored: read once (see from_strings), then written empty.
RETIRED_SETTINGS = ("random_seed",)


@dataclass
class Settings:
    """Everything the docker edits: one field per job option Krita shows (options.OPTIONS,
    in form order, with the editors' starting values), then EXTRA_SETTINGS.  The action
    `inpaintd_inpaint_selection` runs a job with the current values, so the docker and a
    shortcut always agree.

    Written out (not generated) so that type checkers and readers see the fields;
    `check_record` below stops the import if it ever differs from the option table."""

    prompt: str = ""
    negative_prompt: str = ""
    style: str = ""
    reference_weight: float = 1.0
    variants: int = 2
    strength: float = 1.0
    fill: str = "auto"
    steps: int = 0
    guidance_scale: float = 0.0
    scheduler: str = "default"
    seed: int = -1
    model: str = ""
    grow: int = 8
    feather: int = 16
    padding: int = -1
    color_match: bool = False
    # EXTRA_SETTINGS
    use_composite: bool = False
    endpoint: str = ""
    daemon_command: str = "inpaintd serve --bind {endpoint}"
    autostart: bool = False
    loras: str = ""

    def job_options(self) -> dict[str, Any]:
        """The protocol's JobOptions fields (as a dict: this module does not import the client)."""
        return editor.job_options(asdict(self), KRITA)

    def to_strings(self) -> dict[str, str]:
        """For Krita's settings store, which keeps strings (retired keys emptied)."""
        out: dict[str, str] = dict.fromkeys(RETIRED_SETTINGS, "")
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out

    @classmethod
    def from_strings(cls, stored: Mapping[str, str]) -> Settings:
        """Read back what `to_strings` wrote; missing or unreadable values keep defaults.
        A seed saved with the old 'Random' box ticked (random_seed) reads as -1, random."""
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
        if (stored.get("random_seed") or "").strip().lower() == "true":
            s.seed = -1
        return s


check_record(Settings, [(o.name, o.kind, o.start_value) for o in editor.shown_in(KRITA)] + list(EXTRA_SETTINGS))
