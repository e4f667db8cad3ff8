"""The artist's loop in the Krita docker, as plain logic: which result layer came from
which job (kept inside the document), what Vary and Remix send, the history strip's
cards, style presets, and the reference image's size.

Nothing here imports Krita, PyQt or pyzmq, so every rule is unit tested in the project's
venv (tests/test_krita_logic.py); kritadoc.py and docker.py only move values between Krita,
the widgets and these functions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inpaintd_protocol import editor
from inpaintd_protocol.options import BY_NAME, KRITA
from inpaintd_protocol.rect import Rect

# -- which layer came from which job ------------------------------------------------------------

#: The document annotation holding the map (Krita 5.1 keeps annotations in a .kra file:
#: `Document.setAnnotation(type, description, QByteArray)`, read back by `annotation(type)`).
ANNOTATION_TYPE = "inpaintd-results"
ANNOTATION_DESCRIPTION = "inpaintd: the job and variant of each result layer (for Vary and Remix)"
#: The most jobs a document remembers; the oldest (and their layers) are forgotten first.
MAX_JOBS = 500
_FORMAT = 1


@dataclass(frozen=True)
class JobRecord:
    """What the document remembers of one job whose layers it holds."""

    job: str
    #: Where the job's coordinates start on the canvas and how far they reach: a result
    #: layer at (x, y) sits at (crop.x + x, crop.y + y).  The sent crop for a Generate; the
    #: job it came from's crop for a vary (the daemon puts its layers at the same x, y).
    crop: Rect
    prompt: str = ""
    #: The job options it ran with, as far as the plugin knows (Remix sends what changed
    #: since; a vary whose pixels the daemon no longer keeps sends them all again).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultRef:
    """A result layer: variant `variant` (the result's `index`) of job `job`."""

    job: str
    variant: int


class ResultMap:
    """Layer `uniqueId()` (the QUuid's string) -> ResultRef, and job id -> JobRecord, for the
    layers the plugin inserted into one document.  Stored in the document (ANNOTATION_TYPE),
    so it survives saving and reopening a .kra file; Krita keeps node ids across a save."""

    def __init__(self) -> None:
        self.layers: dict[str, ResultRef] = {}
        self.jobs: dict[str, JobRecord] = {}  # oldest first

    def add(self, record: JobRecord, layers: Iterable[tuple[str, int]]) -> None:
        """Remember `record` and its layers ((uid, variant index) pairs); forget the oldest
        jobs past MAX_JOBS."""
        self.jobs.pop(record.job, None)
        self.jobs[record.job] = record
        for uid, variant in layers:
            self.layers[uid] = ResultRef(record.job, int(variant))
        while len(self.jobs) > MAX_JOBS:
            oldest = next(iter(self.jobs))
            del self.jobs[oldest]
            self.layers = {u: r for u, r in self.layers.items() if r.job != oldest}

    def lookup(self, uid: str) -> ResultRef | None:
        return self.layers.get(uid)

    def job(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def layers_of(self, job_id: str) -> list[str]:
        return [uid for uid, ref in self.layers.items() if ref.job == job_id]

    def to_bytes(self) -> bytes:
        data = {
            "format": _FORMAT,
            "layers": {uid: [ref.job, ref.variant] for uid, ref in self.layers.items()},
            "jobs": [{"job": r.job, "crop": list(r.crop.as_tuple()), "prompt": r.prompt, "options": r.options}
                     for r in self.jobs.values()],
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | None) -> ResultMap:
        """Read back what to_bytes wrote; anything unreadable is left out, never an error
        (a document from a newer plugin, or a damaged file, still opens)."""
        out = cls()
        if not data:
            return out
        try:
            raw = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return out
        if not isinstance(raw, dict):
            return out
        for item in raw.get("jobs") or []:
            try:
                crop = Rect(*(int(v) for v in item["crop"]))
                options = item.get("options") or {}
                record = JobRecord(str(item["job"]), crop, str(item.get("prompt") or ""),
                                   dict(options) if isinstance(options, dict) else {})
            except (KeyError, TypeError, ValueError):
                continue
            out.jobs[record.job] = record
        layers = raw.get("layers")
        for uid, ref in (layers.items() if isinstance(layers, dict) else []):
            if (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], str) and isinstance(ref[1], int)
                    and not isinstance(ref[1], bool)):
                out.layers[str(uid)] = ResultRef(ref[0], ref[1])
        return out


# -- Vary, Remix ----------------------------------------------------------------------------------

#: The vary presets (PROTOCOL.md 5.10) and what the buttons say.
PRESETS = {"subtle": "Vary Subtle", "strong": "Vary Strong"}
#: Remix: a vary with the docker's prompt; the strong preset leaves the new prompt room to show.
REMIX_PRESET = "strong"
#: Options a vary never takes from the docker: new seeds, and the preset's strength.
_VARY_OWN = ("seed", "strength")


def remix_options(current: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """The `options` of a Remix: the docker's prompt, and every other option the artist
    changed since the job (`original`, its options; a missing one counts as the protocol's
    default).  Seed and strength are the vary's own (new seeds, the preset's strength)."""
    out: dict[str, Any] = {"prompt": current.get("prompt", "")}
    for name, value in current.items():
        if name in _VARY_OWN or name == "prompt" or name not in BY_NAME:
            continue
        if original.get(name, BY_NAME[name].default) != value:
            out[name] = value
    return out


def resend_options(original: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The `options` of a vary that sends its pixels (the daemon no longer keeps the job, so
    it knows none of its options): the job's own, then the vary's changes."""
    out = {k: v for k, v in original.items() if k in BY_NAME and k not in _VARY_OWN}
    out.update({k: v for k, v in changes.items() if k not in _VARY_OWN})
    return out


def varied_options(original: Mapping[str, Any], changes: Mapping[str, Any], strength: float | None) -> dict[str, Any]:
    """The options a vary job runs with, to remember with its layers (PROTOCOL.md 5.10:
    the job's options, seed -1, the changes, the preset's strength)."""
    out = {**{k: v for k, v in original.items() if k in BY_NAME}, "seed": -1, **changes}
    if strength is not None:
        out["strength"] = strength
    return out


def preset_strength(hello: Mapping[str, Any] | None, preset: str) -> float | None:
    """The strength the daemon gives a preset (`hello_reply.vary_strengths`); None if it does not say."""
    value = ((hello or {}).get("vary_strengths") or {}).get(preset)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


NOT_A_RESULT = ("The active layer is not a result of inpaintd. Click one of the 'Variant …' layers a Generate "
                "added (in the Layers docker), then press Vary or Remix.")


# -- the history strip ----------------------------------------------------------------------------

#: How many of the newest history entries the strip shows.
STRIP_SIZE = 8


@dataclass(frozen=True)
class HistoryCard:
    """One history entry (PROTOCOL.md 5.11) as the strip shows it: the first variant's
    thumbnail (RGBA bytes), the prompt and star, and what its actions need."""

    job: str
    prompt: str = ""
    starred: bool = False
    created: float = 0.0
    kind: str = "inpaint"
    parent: str = ""  # the job a vary or rerun came from ("" for an inpaint)
    model: str = ""
    seeds: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    region: Rect = Rect(0, 0, 0, 0)
    canvas: tuple[int, int] = (0, 0)
    pixels_kept: bool = True
    variants: int = 0
    thumbnail: bytes = b""
    thumb_size: tuple[int, int] = (0, 0)
    #: The LoRAs the job was sent with (name, weight): Copy settings puts them in the picker.
    loras: tuple[tuple[str, float], ...] = ()
    references: int = 0  # how many reference images it was sent with

    @property
    def has_thumbnail(self) -> bool:
        w, h = self.thumb_size
        return w > 0 and h > 0 and len(self.thumbnail) >= w * h * 4

    def tooltip(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created)) if self.created else "?"
        kind = {"vary": "vary of an earlier job", "rerun": "rerun"}.get(self.kind, "inpaint")
        seeds = ", ".join(str(s) for s in self.seeds)
        lines = [f"“{editor.short_prompt(self.prompt, 80)}”", f"{when} · {kind} · {self.variants} variant(s), seeds {seeds}",
                 f"model {self.model or '?'}"]
        if self.options.get("style"):
            lines.append(f"style {self.options['style']}")
        if self.loras:
            lines.append("LoRA " + ", ".join(f"{name} {weight:g}" for name, weight in self.loras))
        if self.references:
            lines.append(f"{self.references} reference image(s): Vary uses them again")
        if self.starred:
            lines.append("★ starred: kept whatever the history's size")
        if not self.pixels_kept:
            lines.append("its pixels are no longer kept: Copy settings still works")
        lines.append("Click for: Apply as layer, Vary, Copy settings, Star")
        return "\n".join(lines)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def history_card(entry: Mapping[str, Any]) -> HistoryCard | None:
    """A card from one history entry as `Client.history` returns it (thumbnails' bytes in
    `variants[i]["thumbnail"]["pixels"]`); None for an entry without a job id."""
    job = entry.get("job")
    if not isinstance(job, str) or not job:
        return None
    variants = [v for v in entry.get("variants") or [] if isinstance(v, Mapping)]
    thumb: Mapping[str, Any] = {}
    if variants and isinstance(variants[0].get("thumbnail"), Mapping):
        thumb = variants[0]["thumbnail"]
    pixels = thumb.get("pixels")
    region, canvas = _mapping(entry.get("region")), _mapping(entry.get("canvas"))
    options = entry.get("options")
    created = entry.get("created")
    return HistoryCard(
        job=job,
        prompt=str(entry.get("prompt") or ""),
        starred=bool(entry.get("starred")),
        created=float(created) if isinstance(created, (int, float)) and not isinstance(created, bool) else 0.0,
        kind=str(entry.get("kind") or "inpaint"),
        parent=str(entry.get("parent") or ""),
        model=str(entry.get("model") or ""),
        seeds=tuple(_int(s) for s in entry.get("seeds") or []),
        options=dict(options) if isinstance(options, Mapping) else {},
        region=Rect(_int(region.get("x")), _int(region.get("y")), _int(region.get("width")), _int(region.get("height"))),
        canvas=(_int(canvas.get("width")), _int(canvas.get("height"))),
        pixels_kept=bool(entry.get("pixels_kept", True)),
        variants=len(variants),
        thumbnail=bytes(pixels) if isinstance(pixels, (bytes, bytearray, memoryview)) else b"",
        thumb_size=(_int(thumb.get("width")), _int(thumb.get("height"))),
        loras=tuple(_loras(entry.get("loras"))),
        references=_int(entry.get("references")),
    )


def _loras(value: Any) -> list[tuple[str, float]]:
    """A history entry's `loras` ([{name, weight}]); anything malformed left out."""
    out = []
    for item in value if isinstance(value, list) else []:
        name = item.get("name") if isinstance(item, Mapping) else None
        weight = item.get("weight", 1.0) if isinstance(item, Mapping) else None
        if isinstance(name, str) and name and isinstance(weight, (int, float)) and not isinstance(weight, bool):
            out.append((name, float(weight)))
    return out


def history_cards(reply: Mapping[str, Any]) -> list[HistoryCard]:
    """The strip's cards from a `history_reply` body, newest first."""
    cards = (history_card(e) for e in reply.get("entries") or [] if isinstance(e, Mapping))
    return [c for c in cards if c is not None]


def history_place(known: ResultMap, card: HistoryCard) -> Rect:
    """Where a history entry's coordinates start in the document (its layers sit at their
    `x`, `y` from there): the crop of the job, or of the job it varied (a vary's layers come
    back at its parent's place), where this document made it; else the canvas's top-left,
    the entry's `canvas` the extent."""
    record = known.job(card.job) or (known.job(card.parent) if card.parent else None)
    if record is not None:
        return record.crop
    w, h = card.canvas
    return Rect(0, 0, max(w, card.region.right), max(h, card.region.bottom))


def option_values(options: Mapping[str, Any], seeds: Sequence[int] = ()) -> dict[str, Any]:
    """Copy settings: a history entry's options as the docker's controls take them (only
    options the docker shows, each brought inside its limits; a value of the wrong type is
    left out), with the entry's first seed, so Generate makes the same pixels again.  A
    seed past what the editor's Seed box holds (editor.EDITOR_INT_MAX; the daemon picks
    seeds below it, but a client may send any up to 2**32 - 1) is not copied: clamped, it
    would make other pixels."""
    shown = {o.name: o for o in editor.shown_in(KRITA)}
    given = {k: v for k, v in options.items()
             if k in shown and isinstance(v, shown[k].types) and isinstance(v, bool) == (shown[k].kind is bool)}
    normal = editor.job_options(given, KRITA)
    out = {k: normal[k] for k in given}
    if seeds and "seed" in shown and 0 <= seeds[0] <= editor.EDITOR_INT_MAX:
        out["seed"] = seeds[0]
    return out


# -- styles ---------------------------------------------------------------------------------------

#: The settings a style may hold (PROTOCOL.md 5.12), in the order the docker saves them.
STYLE_SETTINGS = ("negative_prompt", "scheduler", "steps", "guidance_scale", "strength", "color_match")
#: A style's name (PROTOCOL.md 5.12, `style_save`).
STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def style_choices(styles: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(name, label, tooltip) for the style box: "No style" first, then each style by name;
    one the daemon cannot use is marked, its problem in the tooltip."""
    out = [("", "No style", "No style preset: the job's own settings only")]
    for s in styles:
        name = s.get("name")
        if not isinstance(name, str) or not name:
            continue
        problem = str(s.get("problem") or "")
        label = name + (" – cannot be used" if problem else "")
        tip = problem or str(s.get("description") or "")
        template = s.get("prompt")
        if template and not problem:
            tip += f"\nPrompt: {template}"
        out.append((name, label, tip.strip()))
    return out


def find_style(styles: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    for s in styles:
        if isinstance(s.get("name"), str) and s["name"].lower() == (name or "").lower():
            return s
    return None


def style_values(style: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values a picked style puts into the docker's controls: its settings the docker
    shows (the model is picked separately), each as the control takes it.  Why in the
    controls and not only by name: the daemon applies a style's setting only where the job
    leaves the option at its default, and the docker sends the model's steps and guidance
    (`editor.for_model`), so a style's "8 steps" would never apply."""
    settings = (style or {}).get("settings")
    if not isinstance(settings, Mapping):
        return {}
    values = {k: v for k, v in settings.items() if k in STYLE_SETTINGS}
    return option_values(values)


@dataclass(frozen=True)
class StyleState:
    """The style whose values are in the controls: what it put there and what they held before."""

    name: str = ""
    applied: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)


def pick_style(controls: Mapping[str, Any], state: StyleState, name: str,
               values: Mapping[str, Any]) -> tuple[dict[str, Any], StyleState]:
    """Picking style `name` (its `style_values`): first the previous style's values go back
    to what the controls held before it, where the artist has not changed them since; then
    the new style's values go in.  Returns (control -> new value, the new state)."""
    changes: dict[str, Any] = {}
    for key, value in state.applied.items():
        if key in controls and controls[key] == value and key in state.before:
            changes[key] = state.before[key]
    base = {**controls, **changes}
    before = {k: base[k] for k in values if k in base}
    changes.update({k: v for k, v in values.items() if k in base})
    return changes, StyleState(name, {k: v for k, v in values.items() if k in base}, before)


def style_name_problem(name: str) -> str | None:
    """What is wrong with a style name the artist typed; None when the daemon takes it."""
    if STYLE_NAME.match(name or ""):
        return None
    return ("A style name has 1 to 64 letters, digits, spaces, '_', '.' or '-', and starts with a letter or digit; "
            f"got {name!r}.")


def style_to_save(values: Mapping[str, Any], family: str = "") -> dict[str, Any]:
    """The `style` of a `style_save` from the docker's settings: the prompt as its template
    when it holds "{prompt}", then negative prompt, sampler, steps, guidance, strength and
    color match where they differ from the protocol's defaults (a default in a style
    changes nothing: its settings apply only where a job leaves an option at its default)."""
    style: dict[str, Any] = {"description": "Saved from Krita"}
    prompt = str(values.get("prompt") or "")
    if "{prompt}" in prompt:
        style["prompt"] = prompt.strip()
    for name in STYLE_SETTINGS:
        if name in values and values[name] != BY_NAME[name].default:
            style[name] = values[name]
    if family:
        style["families"] = [family]
    return style


# -- the reference image --------------------------------------------------------------------------

#: The longest side of a reference image the docker sends (the daemon takes up to
#: `max_reference_side`; an IP-Adapter or an editing model looks at far fewer pixels).
REFERENCE_SIDE = 1024


def takes_reference(entry: Mapping[str, Any] | None) -> bool:
    """Whether the model of a `models` entry takes reference images (`takes.reference_image`)."""
    takes = (entry or {}).get("takes")
    return isinstance(takes, Mapping) and takes.get("reference_image") is True


def reference_off(entry: Mapping[str, Any] | None) -> str:
    """Why the reference controls are off for this model ("" when it takes references)."""
    if takes_reference(entry):
        return ""
    who = str((entry or {}).get("label") or (entry or {}).get("id") or "This model")
    return (f"{who} takes no reference image (the models reply's takes.reference_image): pick a model that does "
            "(FLUX.1 Kontext, FLUX.2 klein, Qwen-Image-Edit, or SD served with --ip-adapter)")


def reference_size(width: int, height: int, side: int = REFERENCE_SIDE) -> tuple[int, int]:
    """The size a reference is sent at: the layer's own, scaled down to `side` a side at most."""
    if width <= 0 or height <= 0:
        return 0, 0
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
