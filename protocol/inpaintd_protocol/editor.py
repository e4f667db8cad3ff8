"""What both editor plug-ins decide, decided once: the crop to send, the progress shown,
the names of the result layers, the option limits and values, and which daemon to use.

The Krita and GIMP plug-ins used to work these out each in their own way (one sent a
1024 px crop, the other a 512 px margin; one said "Denoising 3/20", the other
"denoising step 3/20").  Now each keeps only the glue that reads and writes its editor
and calls this module.  Standard library only (no numpy, no pyzmq): it runs inside
Krita's Python 3.10/3.11 and GIMP's 3.12/3.13, and loads where pyzmq is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .connection import is_loopback, resolve_endpoint
from .messages import LIMITS, Limits
from .options import BY_NAME, OPTIONS, Option
from .rect import Rect

#: The largest int an editor's widgets hold (Qt's spin boxes and GIMP's int arguments are
#: 32-bit signed); the protocol's seed goes up to 2**32 - 1.
EDITOR_INT_MAX = 2**31 - 1

#: The side the sent crop reaches at least, where the canvas allows: the daemon still finds
#: all it would choose itself (its automatic padding, an SDXL model's 1024 px native size).
MIN_CONTEXT_SIDE = 1024


# -- options -------------------------------------------------------------------------------


def shown_in(editor: str) -> tuple[Option, ...]:
    """The job options `editor` (options.KRITA or options.GIMP) offers, in form order."""
    return tuple(sorted((o for o in OPTIONS if editor in o.editors), key=lambda o: o.order))


def bounds(option: Option, limits: Limits = LIMITS) -> tuple[Any, Any]:
    """An editor's (low, high) for a number: the protocol's, within a 32-bit int."""
    low, high = option.bounds(limits)
    if option.kind is int and high is not None:
        high = min(int(high), EDITOR_INT_MAX)
    return low, high


def choices(option: Option) -> list[tuple[str, str]]:
    """(value, words) for a list of choices, for a combo box."""
    return list(zip(option.choices, option.choice_labels or option.choices, strict=True))


_KIND_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "on or off"}


def check(values: Mapping[str, Any], editor: str, limits: Limits = LIMITS) -> list[str]:
    """Every problem with the values of the options `editor` shows, phrased for the user;
    empty when they can be sent.  For values a script gave (a form keeps its own ranges)."""
    problems: list[str] = []
    for opt in shown_in(editor):
        value = values.get(opt.name, opt.start_value)
        label = opt.plain_label
        if not isinstance(value, opt.types) or isinstance(value, bool) != (opt.kind is bool):
            problems.append(f"{label} must be {_KIND_WORDS[opt.kind]}, got {value!r}")
            continue
        low, high = bounds(opt, limits)
        if low is not None and value < low:
            problems.append(f"{label} must be at least {low:g}, got {value}")
        if high is not None and value > high:
            problems.append(f"{label} must be at most {high:g}, got {value}")
        if isinstance(value, str):  # choices and lengths: string options only
            if opt.choices and (value.strip() or opt.default) not in opt.choices:
                problems.append(f"{label} '{value}' is not one of {', '.join(opt.choices)}")
            longest = opt.max_length(limits)
            if longest is not None and len(value) > longest:
                problems.append(f"{label} has {len(value)} characters; at most {longest} are allowed")
    return problems


def job_options(values: Mapping[str, Any], editor: str, limits: Limits = LIMITS) -> dict[str, Any]:
    """The job options an editor sends (the others keep the daemon's defaults): strings
    stripped, an empty or unknown choice the default, numbers brought inside the limits."""
    out: dict[str, Any] = {}
    for opt in shown_in(editor):
        value = values.get(opt.name, opt.start_value)
        if opt.kind is str:
            value = ("" if value is None else str(value)).strip()
            if opt.choices and value not in opt.choices:
                value = opt.default
        elif opt.kind is bool:
            value = bool(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                value = opt.start_value  # unreadable: what the editor starts with
            low, high = bounds(opt, limits)
            value = opt.kind(min(max(value, low), high))
        out[opt.name] = value
    return out


# -- a model's defaults ----------------------------------------------------------------------

#: The `takes` entries of a `models` reply (PROTOCOL.md 5.3) that switch a job option off
#: when false: that option's control is disabled, and its value is not sent.
_TAKES_OPTION = {"negative_prompt": "negative_prompt"}

_TAKES_WORDS = {"negative_prompt": "a negative prompt"}

#: The job options a picked model can switch off (see ModelCaps.disabled).
SWITCHABLE_OPTIONS: frozenset[str] = frozenset(_TAKES_OPTION.values())


@dataclass(frozen=True)
class ModelCaps:
    """What an editor does with one entry of the daemon's `models` reply (PROTOCOL.md 5.3):
    the values to apply when the artist picks the model, the controls it switches off and
    the scheduler names it takes.  `known` is false for no entry, and for an entry of an
    older daemon that says none of this: then the editor changes nothing."""

    model_id: str = ""
    label: str = ""  # the family's name ("FLUX.1 Fill"); "" for classical and not-known-yet models
    engine: str = ""
    known: bool = False
    #: Every default the entry gives, by option name, each checked against the option table.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Those of `defaults` the editor shows: what it puts in its controls on a pick.
    apply: dict[str, Any] = field(default_factory=dict)
    #: Option name -> why it is off (a tooltip), for options the editor shows and the model ignores.
    disabled: dict[str, str] = field(default_factory=dict)
    #: The `scheduler` values the model takes; () where the entry does not say (all of them).
    schedulers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The model in words: its family's name, else its id."""
        return self.label or self.model_id


def find_model(models: Iterable[Mapping[str, Any]], model_id: str, default_id: str = "") -> Mapping[str, Any] | None:
    """The entry of `model_id` in a `models` reply's list; "" is the daemon's default model
    (`default_id`, from the reply's `default` or hello's `default_model`).  None if absent."""
    wanted = (model_id or "").strip() or (default_id or "")
    if not wanted:
        return None
    for entry in models:
        if isinstance(entry, Mapping) and entry.get("id") == wanted:
            return entry
    return None


def _default_value(opt: Option, value: Any, limits: Limits) -> Any:
    """`value` as option `opt` takes it, or None where it cannot be: a number inside the
    editor's bounds, a string among the choices."""
    if opt.kind is str:
        return value if isinstance(value, str) and (not opt.choices or value in opt.choices) else None
    if opt.kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    low, high = bounds(opt, limits)
    return opt.kind(min(max(value, low), high))


def model_caps(entry: Mapping[str, Any] | None, editor: str, limits: Limits = LIMITS) -> ModelCaps:
    """What picking the model of `entry` (an item of the `models` reply) does in `editor`'s
    form.  Tolerant: an entry without `defaults` (an older daemon), a default that is not a
    job option or not a valid value, are left out, never an error."""
    if not isinstance(entry, Mapping):
        return ModelCaps()
    model_id, label = str(entry.get("id") or ""), str(entry.get("label") or "")
    engine = str(entry.get("engine") or "")
    raw_defaults, raw_takes = entry.get("defaults"), entry.get("takes")
    if not isinstance(raw_defaults, Mapping) and not isinstance(raw_takes, Mapping):
        return ModelCaps(model_id, label, engine)
    shown = {o.name for o in shown_in(editor)}
    defaults: dict[str, Any] = {}
    for name, value in (raw_defaults if isinstance(raw_defaults, Mapping) else {}).items():
        opt = BY_NAME.get(str(name))
        checked = None if opt is None else _default_value(opt, value, limits)
        if opt is not None and checked is not None:
            defaults[opt.name] = checked
    listed = entry.get("schedulers")
    schedulers = tuple(s for s in listed if isinstance(s, str)) if isinstance(listed, (list, tuple)) else ()
    if schedulers and defaults.get("scheduler") not in (None, *schedulers):
        defaults.pop("scheduler")
    who = label or model_id or "This model"
    disabled = {
        option: f"{who} does not use {_TAKES_WORDS[take]}; it is not sent"
        for take, option in _TAKES_OPTION.items()
        if isinstance(raw_takes, Mapping) and raw_takes.get(take) is False and option in shown
    }
    apply = {name: value for name, value in defaults.items() if name in shown}
    return ModelCaps(model_id, label, engine, True, defaults, apply, disabled, schedulers)


def model_defaults(entry: Mapping[str, Any] | None, editor: str, limits: Limits = LIMITS) -> dict[str, Any]:
    """Option name -> value: what `editor` puts in its controls when the artist picks the
    model of `entry` (only options it shows; empty for an older daemon's entry)."""
    return dict(model_caps(entry, editor, limits).apply)


def allowed_choices(option: Option, caps: ModelCaps) -> tuple[str, ...]:
    """The values of a list option the picked model takes: the scheduler names it lists,
    every choice otherwise (and where the entry does not say)."""
    if option.name == "scheduler" and caps.schedulers:
        return tuple(c for c in option.choices if c in caps.schedulers)
    return option.choices


def for_model(options: Mapping[str, Any], caps: ModelCaps) -> dict[str, Any]:
    """The job options to send for the picked model: a number left at 0, the protocol's
    "the model's default" (steps, guidance), becomes that default, so the editor can say
    which values the job ran with; an option the model ignores (a disabled control) is sent
    as its protocol default.  Unchanged for an unknown model."""
    out = dict(options)
    for name, value in caps.defaults.items():
        opt = BY_NAME[name]
        if name in out and opt.kind in (int, float) and opt.default == 0 and out[name] == 0 and value:
            out[name] = value
    for name in caps.disabled:
        if name in out:
            out[name] = BY_NAME[name].default
    return out


def settings_text(options: Mapping[str, Any], caps: ModelCaps) -> str:
    """One line saying what a job runs with, e.g. "FLUX.1 Fill: 50 steps, guidance 30,
    strength 1": the sent `options` (after for_model), else the model's defaults, which the
    daemon applies.  "" where the model is not known, and for a classical model (none of
    these values apply to it)."""
    if not caps.known or caps.engine == "classical":
        return ""

    def value(name: str) -> Any:
        sent = options.get(name)
        return sent if sent not in (None, 0, "") else caps.defaults.get(name)

    parts = []
    steps, guidance, strength, scheduler = (value(n) for n in ("steps", "guidance_scale", "strength", "scheduler"))
    if steps:
        parts.append(f"{steps} steps")
    if guidance:
        parts.append(f"guidance {guidance:g}")
    if strength is not None:
        parts.append(f"strength {strength:g}")
    if scheduler and scheduler != "default":
        parts.append(f"scheduler {scheduler}")
    return f"{caps.name}: {', '.join(parts)}" if parts else caps.name


# -- the crop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropPlan:
    """What to send: `crop`, in image coordinates, around `selection` (the selection's
    bounds where the editor has pixels).  Results come back in the crop's coordinates."""

    selection: Rect
    crop: Rect

    def crop_from(self, origin_x: int, origin_y: int) -> Rect:
        """The crop in the coordinates of a layer whose top-left is at (origin_x, origin_y)."""
        return self.crop.translate(-origin_x, -origin_y)

    def place(self, x: int, y: int, width: int, height: int) -> Rect:
        """Where a result layer goes in the image: the daemon places it at (x, y) of the
        crop it was sent.  A layer that does not fit the crop is a ValueError."""
        if x < 0 or y < 0 or x + width > self.crop.width or y + height > self.crop.height:
            raise ValueError(
                f"result {width}x{height} at ({x}, {y}) does not fit the {self.crop.width}x{self.crop.height} image that was sent"
            )
        return Rect(self.crop.x + x, self.crop.y + y, width, height)


def _span(start: int, length: int, at_least: int, lo: int, hi: int) -> tuple[int, int]:
    """Grow [start, start+length) to `at_least` around its centre, kept inside [lo, hi)."""
    target = min(max(length, at_least), hi - lo)
    start = start - (target - length) // 2
    return min(max(start, lo), hi - target), target


def plan_crop(selection: Rect, canvas: Rect, grow: int, feather: int, padding: int,
              source: Rect | None = None, min_side: int = MIN_CONTEXT_SIDE) -> CropPlan | None:
    """The one crop rule: the selection, clipped to where there are pixels (the canvas, and
    the source layer's bounds where it has fixed ones), plus room for the daemon's grow,
    feather and context (`padding`, or the selection's longer side when it is -1), then
    widened to `min_side` a side around its centre where those pixels allow.  None when
    the selection misses them.

    Why a crop and not the layer: a 6000x4000 layer is 96 MB per job, while the daemon
    only looks at the selection plus context; the margin is generous so its own context
    choice is never starved."""
    area = canvas if source is None else canvas.intersect(source)
    sel = selection.intersect(area)
    if sel.empty:
        return None
    context = padding if padding >= 0 else max(sel.width, sel.height)
    grown = sel.expand(max(0, grow) + max(0, feather) + max(0, context)).intersect(area)
    x, w = _span(grown.x, grown.width, min_side, area.x, area.right)
    y, h = _span(grown.y, grown.height, min_side, area.y, area.bottom)
    return CropPlan(selection=sel, crop=Rect(x, y, w, h))


def mask_selects(mask: bytes | bytearray | memoryview) -> bool:
    """Whether any mask byte asks for regeneration (the daemon refuses an empty mask)."""
    data = bytes(mask)
    return data.count(0) != len(data)


# -- progress ------------------------------------------------------------------------------

#: Each stage's share of the bar (start, end), in the order a job goes through them; the
#: steps of a stage that reports them fill its share.
_STAGE_SPAN = {
    "submitting": (0.0, 0.0),
    "queued": (0.02, 0.02),
    "loading": (0.05, 0.10),
    "preparing": (0.10, 0.12),
    "encoding": (0.12, 0.15),
    "denoising": (0.15, 0.90),
    "decoding": (0.90, 0.95),
    "compositing": (0.95, 0.99),
    "done": (1.0, 1.0),
}


def shown_stage(state: str, stage: str) -> str:
    """The stage to show for a client Job's `state` and `stage`: before the daemon reports
    stages (sending, waiting in its queue) and once it is done, the state says it."""
    return state if state in ("submitting", "queued", "done") else stage


def progress_fraction(stage: str, step: int = 0, total: int = 0) -> float:
    """0..1 for the progress bar; never goes back over a job's life."""
    start, end = _STAGE_SPAN.get(stage, (0.0, 0.0))
    if total > 0:
        return start + (end - start) * min(max(step, 0), total) / total
    return start


def progress_percent(stage: str, step: int = 0, total: int = 0) -> int:
    return int(progress_fraction(stage, step, total) * 100 + 1e-9)


def jobs_ahead(position: int) -> str:
    """The daemon's `position` (jobs that start first, a running one included), in words."""
    return f"{position} job ahead" if position == 1 else f"{position} jobs ahead"


def progress_text(stage: str, step: int = 0, total: int = 0, position: int | None = None) -> str:
    """The words beside the bar: the stage, and the step while denoising (the only stage
    whose steps mean something to a user: "loading 0/1" does not)."""
    if stage == "submitting":
        return "Sending…"
    if stage == "queued":
        return f"Queued: {jobs_ahead(position)}" if position else "Queued"
    if stage == "done":
        return "Done"
    label = stage.capitalize() if stage else "Working"
    if stage == "denoising" and total > 0:
        return f"{label} {min(step, total)}/{total}"
    return label + "…"


# -- names ---------------------------------------------------------------------------------


def short_prompt(prompt: str, limit: int = 40) -> str:
    """The prompt on one line, cut to `limit` characters."""
    text = " ".join(prompt.split())
    if not text:
        return "(no prompt)"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def group_name(prompt: str) -> str:
    """The group holding one job's variants, named after the prompt so jobs are told apart."""
    return f"Inpaint: {short_prompt(prompt)}"


def variant_name(index: int, count: int, seed: int) -> str:
    """Variant `index` (0-based) of `count`: short enough for a narrow Layers panel, and
    with the seed that makes it again."""
    return f"Variant {index + 1}/{count} (seed {seed})"


# -- the daemon's address ------------------------------------------------------------------


def daemon_endpoint(setting: str) -> str:
    """The address a plug-in talks to: its own setting, else the protocol's rule
    ($INPAINTD_ENDPOINT, the connection file it names, the default; PROTOCOL.md section 1).
    A malformed address is a ValueError saying what a good one looks like."""
    return resolve_endpoint((setting or "").strip() or None)


def endpoint_problem(setting: str) -> str | None:
    """What is wrong with an address setting, for the user; None when it is usable."""
    try:
        daemon_endpoint(setting)
    except ValueError as exc:
        return f"Daemon address: {exc}; or leave it empty"
    return None


def can_start_daemon(endpoint: str) -> bool:
    """Only a daemon on this computer can be started from the editor."""
    return is_loopback(endpoint)
