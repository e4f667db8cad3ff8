"""The GIMP plug-in's decisions, kept free of GIMP, gi and numpy.

What both editor plug-ins decide (the crop, progress, layer names, option limits and
values, the daemon's address) is in the protocol package's `inpaintd_protocol.editor`,
copied beside this file by `inpaintd install-gimp`; the procedure's arguments are made
from the protocol's option table.  This module adds what only GIMP needs, and everything
here can be unit-tested from the project's venv.  The plug-in file only moves pixels
between GIMP and these functions.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# The standard-library parts of the protocol package: they need neither pyzmq nor msgpack,
# so this module loads where GIMP's Python lacks them (and the plug-in says what to install).
from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan
from inpaintd_protocol.messages import DEFAULT_ENDPOINT, LIMITS
from inpaintd_protocol.options import BY_NAME, GIMP, OPTIONS, Option, check_record
from inpaintd_protocol.rect import Rect

PROCEDURE_NAME = "python-fu-inpaintd-inpaint-selection"
VARY_PROCEDURE = "python-fu-inpaintd-vary"
HISTORY_PROCEDURE = "python-fu-inpaintd-history"
MENU_PATH = "<Image>/Filters/AI"
MENU_LABEL = "_Inpaint Selection..."
VARY_MENU_LABEL = "_Vary Result..."
HISTORY_MENU_LABEL = "_Bring Back from History..."
TRAIN_PROCEDURE = "python-fu-inpaintd-train"
TRAIN_MENU_LABEL = "_Teach Subject from Layers..."


# -- arguments -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArgSpec:
    """One procedure argument: GIMP name, label, help text, default, bounds and position.

    The plug-in registers its PDB arguments from this table, so the dialog, the batch
    interface and the validation can never disagree."""

    name: str  # GIMP argument name (dashes)
    field: str  # Options field (underscores)
    kind: str  # "str", "int", "float", "bool"
    label: str
    blurb: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    position: int = 0  # scripts pass arguments by position: an argument keeps its place for ever
    #: What the dialog shows for the lowest value ("auto" for steps 0, "random" for seed -1).
    special: str = ""
    #: A "choice" argument's (value, label, help) rows, fixed at registration (Gimp.Choice).
    choices: tuple[tuple[str, str, str], ...] = ()

    def special_text(self, value: Any) -> str | None:
        """The word the dialog shows instead of `value`, or None to show the number."""
        return self.special if self.special and self.minimum is not None and value == self.minimum else None

    def special_value(self, text: str) -> float | None:
        """The value a typed word stands for ("auto" -> 0), or None when it is none."""
        return self.minimum if self.special and text.strip().lower() == self.special.lower() else None


def _from_option(opt: Option) -> ArgSpec:
    """The argument of a job option, from the protocol's option table."""
    low, high = editor.bounds(opt)
    return ArgSpec(opt.name.replace("_", "-"), opt.name, opt.kind.__name__, opt.label, opt.tip, opt.start_value,
                   low, high, position=opt.gimp_position if opt.gimp_position is not None else -1,
                   special=opt.special)


#: The plug-in's own arguments (not job options).  Labels carry GTK mnemonics; each letter
#: is used once, and none of o, c, r, h, s, l, which the dialog's own buttons (OK, Cancel,
#: Reset, Help, Save/Load defaults) take.
EXTRA_ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("endpoint", "endpoint", "str", "D_aemon address",
            f"ZeroMQ address of inpaintd (empty = $INPAINTD_ENDPOINT or {DEFAULT_ENDPOINT})", "", position=10),
    ArgSpec("sample-merged", "sample_merged", "bool", "Use visi_ble image",
            "Send what is visible (all layers) instead of the selected layer", False, position=11),
    ArgSpec("start-daemon", "start_daemon", "bool", "Start a local daemon if none r_uns",
            "Start inpaintd on this computer when nothing answers at the address", True, position=12),
    ArgSpec("loras", "loras", "str", "LoRAs (ad_just the model)",
            "LoRAs for this job, as name:weight separated by commas (e.g. 'ink:0.8, my_cat:1'; a name alone: its "
            "default weight; empty = none); `inpaintd loras` lists the daemon's. <lora:name:weight> in the prompt "
            "works too", "", position=17),
)

#: Every argument in its position: the job options GIMP shows (options.OPTIONS, each with
#: its `gimp_position`) and EXTRA_ARGS.
ARGS: tuple[ArgSpec, ...] = tuple(sorted([*map(_from_option, editor.shown_in(GIMP)), *EXTRA_ARGS],
                                         key=lambda a: a.position))

#: The dialog's order, which need not be the argument order: the job options in the
#: editors' form order (the LoRAs right after the style), then the plug-in's own.
DIALOG_ORDER: tuple[str, ...] = tuple(
    n for o in editor.shown_in(GIMP) for n in ((o.name.replace("_", "-"), "loras") if o.name == "style"
                                               else (o.name.replace("_", "-"),))
) + tuple(a.name for a in EXTRA_ARGS if a.name != "loras")

_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass
class Options:
    """The values of one run, as the dialog or a script gave them: one field per argument,
    in argument order (the job options GIMP shows, with the editors' starting values, and
    EXTRA_ARGS).  GIMP hands over whatever a script passed, so `validate` checks the types.

    Written out (not generated) so that type checkers and readers see the fields;
    `check_record` below stops the import if it ever differs from ARGS."""

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
    endpoint: str = ""
    sample_merged: bool = False
    start_daemon: bool = True
    color_match: bool = False
    fill: str = "auto"
    guidance_scale: float = 0.0
    style: str = ""
    loras: str = ""

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Options:
        """Build from GIMP argument names or field names; unknown keys are ignored."""
        by_name = {a.name: a.field for a in ARGS}
        strings = {a.field for a in ARGS if a.kind == "str"}
        known = {a.field for a in ARGS}
        kw: dict[str, Any] = {}
        for key, value in values.items():
            fname = by_name.get(key, key)
            if fname in known:
                # GIMP hands an empty string argument over as None
                kw[fname] = "" if value is None and fname in strings else value
        return cls(**kw)

    def validate(self) -> list[str]:
        """Every problem, phrased for the user; empty when the options can be sent."""
        problems = editor.check(asdict(self), GIMP)
        for a in EXTRA_ARGS:
            value = getattr(self, a.field)
            if not isinstance(value, _PY_TYPES[a.kind]):
                problems.append(f"{plain(a.label)} must be a {a.kind}, got {value!r}")
        if isinstance(self.endpoint, str):
            problem = editor.endpoint_problem(self.endpoint)
            if problem:
                problems.append(problem)
        if isinstance(self.loras, str):
            problems += parse_loras(self.loras)[1]
        return problems

    def job_options(self) -> dict[str, Any]:
        """The fields of protocol.JobOptions this plug-in sets (the rest keep their defaults)."""
        return editor.job_options(asdict(self), GIMP)


check_record(Options, [(a.field, _PY_TYPES[a.kind], a.default) for a in ARGS])


def plain(label: str) -> str:
    """A label without its mnemonic mark."""
    return label.replace("_", "")


# -- the picked model ------------------------------------------------------------------


def model_listing(body: Mapping[str, Any] | None) -> tuple[list[Mapping[str, Any]], str]:
    """(model entries, default model id) from a `models` reply body (PROTOCOL.md 5.3),
    whatever an older or odd daemon sent: never an error."""
    body = body if isinstance(body, Mapping) else {}
    models = [m for m in body.get("models") or [] if isinstance(m, Mapping)]
    default = body.get("default")
    return models, default if isinstance(default, str) else ""


def arg_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values by option name -> by GIMP argument name, for the arguments there are."""
    names = {a.field: a.name for a in ARGS}
    return {names[k]: v for k, v in values.items() if k in names}


class ModelFollower:
    """What the dialog changes as the model argument changes: GIMP's procedure dialog is
    made from the registered arguments, so the model stays a text argument (scripts pass
    it by position), and when its text becomes another model the daemon listed, that
    model's defaults go into the other arguments (steps, strength) and the arguments it
    ignores are switched off.  The artist's own edits stay until the model changes again."""

    def __init__(self, models: Iterable[Mapping[str, Any]], default_id: str, model: str) -> None:
        self.models = list(models)
        self.default_id = default_id
        self.model = (model or "").strip()

    def caps(self, model: str | None = None) -> editor.ModelCaps:
        return editor.model_caps(editor.find_model(self.models, self.model if model is None else model,
                                                 self.default_id), GIMP)

    def sensitivity(self, caps: editor.ModelCaps) -> dict[str, str]:
        """Argument name -> why it is off ("" = on), for the arguments a model can switch off."""
        return {name.replace("_", "-"): caps.disabled.get(name, "") for name in sorted(editor.SWITCHABLE_OPTIONS)
                if name in {o.name for o in editor.shown_in(GIMP)}}

    def changed(self, model: str | None) -> tuple[dict[str, Any], dict[str, str]] | None:
        """(argument values to set, sensitivity) when `model` names another model than
        before; None when it is the same one (a keystroke that changed nothing)."""
        model = (model or "").strip()
        if model == self.model:
            return None
        self.model = model
        caps = self.caps()
        return arg_values(caps.apply), self.sensitivity(caps)


# -- geometry ------------------------------------------------------------------------


def plan_crop(selection: Rect, image_width: int, image_height: int, source: Rect, opts: Options) -> CropPlan | None:
    """The crop to send (editor.plan_crop's rule), or None when the selection misses the source.

    `selection` is the selection's bounds and `source` the bounds of what pixels are read
    from (the layer, at its offsets; the image for the visible composite), both in image
    coordinates.  GIMP's layers have fixed bounds: past them there are no pixels to send."""
    return editor.plan_crop(selection, Rect(0, 0, image_width, image_height), opts.grow, opts.feather, opts.padding,
                            source=source)


# -- messages --------------------------------------------------------------


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


def precision_note(bits: int, linear: bool) -> str | None:
    """A note when pixels are converted on the way to the daemon (which speaks 8-bit sRGB)."""
    if bits == 8 and not linear:
        return None
    kind = "linear " if linear else ""
    return (
        f"This image is {bits}-bit {kind}; inpaintd works on 8-bit sRGB, so the selected area is sent "
        "as 8-bit and the results come back at 8-bit precision."
    )


# -- the dialog's faces (issue "The artist's loop") -------------------------------------------


def choice_rows(option_name: str) -> list[tuple[str, str]]:
    """(value, words) of a job option with a fixed list of values (`fill`), for a combo box."""
    return editor.choices(BY_NAME[option_name])


def _short_model_id(entry: Mapping[str, Any]) -> str:
    """A model's id as a combo box shows it: a folder's or file's name, not its whole path."""
    model_id = str(entry.get("id") or "")
    if entry.get("kind") in ("folder", "single_file"):
        return model_id.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or model_id
    return model_id


def model_label(entry: Mapping[str, Any]) -> str:
    """One model of the daemon's `models` reply in words: its id and its family (or that it
    is classical), and why it cannot run where it cannot."""
    family = str(entry.get("label") or "") or ("classical" if entry.get("engine") == "classical" else "")
    text = f"{_short_model_id(entry)} ({family})" if family else _short_model_id(entry)
    if entry.get("available") is False:
        text += " – not available"
    return text


def model_choices(models: Iterable[Mapping[str, Any]], default_id: str, current: str) -> list[tuple[str, str]]:
    """(value, words) for the Model combo box: "" (the daemon's default, named), then every
    model the daemon lists; a `current` value it does not list stays choosable, marked so."""
    models = [m for m in models if isinstance(m, Mapping) and isinstance(m.get("id"), str) and m.get("id")]
    default = editor.find_model(models, "", default_id)
    named = model_label(default) if default is not None else default_id
    rows = [("", f"The daemon's default: {named}" if named else "The daemon's default")]
    rows += [(str(m["id"]), model_label(m)) for m in models]
    current = (current or "").strip()
    if current and current not in {value for value, _ in rows}:
        rows.append((current, f"{current} (not listed by the daemon)"))
    return rows


def style_choices(styles: Iterable[Mapping[str, Any]], current: str) -> list[tuple[str, str]]:
    """(value, words) for the Style combo box: none, then the daemon's styles with their
    descriptions; one the daemon cannot use says so (a job naming it is refused)."""
    rows = [("", "None")]
    for style in styles:
        name = style.get("name") if isinstance(style, Mapping) else None
        if not isinstance(name, str) or not name:
            continue
        description = " ".join(str(style.get("description") or "").split())
        if style.get("problem"):
            words = f"{name} (cannot be used: see `inpaintd styles`)"
        else:
            words = f"{name} – {editor.short_prompt(description, 48)}" if description else name
        rows.append((name, words))
    current = (current or "").strip()
    if current and current.lower() not in {value.lower() for value, _ in rows}:
        rows.append((current, f"{current} (not on this daemon)"))
    return rows


# -- styles --------------------------------------------------------------------------------

#: The job options a style may set that are GIMP arguments, in the order the dialog sets
#: them: the model first, since picking a model brings its own defaults.
_STYLE_ORDER = ("model", "negative_prompt", "steps", "guidance_scale", "strength", "color_match")


def find_style(styles: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The style called `name` (case-insensitive, as the daemon matches it), or None."""
    wanted = (name or "").strip().lower()
    if not wanted:
        return None
    return next((s for s in styles if isinstance(s, Mapping) and str(s.get("name", "")).lower() == wanted), None)


def style_settings(style: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job options a style sets (its `settings`), each of the option's type; others dropped."""
    settings = style.get("settings") if isinstance(style, Mapping) else None
    out: dict[str, Any] = {}
    for name, value in (settings if isinstance(settings, Mapping) else {}).items():
        opt = BY_NAME.get(str(name))
        if opt is not None and isinstance(value, opt.types) and isinstance(value, bool) == (opt.kind is bool):
            out[opt.name] = value
    return out


def job_model(options: Mapping[str, Any], style: Mapping[str, Any] | None) -> str:
    """The model a job runs on: its own, else its style's, else "" (the daemon's default)."""
    return str(options.get("model") or "") or str(style_settings(style).get("model") or "")


def options_for_job(options: Mapping[str, Any], caps: editor.ModelCaps,
                    style: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the options to send, the values the job runs with) for the picked model and style.

    The model's defaults fill the "auto" numbers (editor.for_model), except where the job's
    style sets that option and the job left it at the protocol's default: those are sent at
    the default, so the daemon applies the style's value (a style applies only where a job
    keeps the default, PROTOCOL.md 5.12), and the second map says which value that is."""
    settings = style_settings(style)
    left = {name for name in settings if name in options and options[name] == BY_NAME[name].default}
    sent = editor.for_model(options, caps)
    for name in left:
        sent[name] = options[name]
    return sent, {**sent, **{name: settings[name] for name in left}}


class StyleFollower:
    """What the dialog changes as the style argument changes: the style's settings go into
    the arguments they belong to (the model first), so the dialog shows what will run and a
    model picked earlier (whose steps the model follower put in) does not hide the style's.
    Values the previous style put in and the artist left alone go back to `fallback`."""

    def __init__(self, styles: Iterable[Mapping[str, Any]], style: str) -> None:
        self.styles = [s for s in styles if isinstance(s, Mapping)]
        self.style = (style or "").strip()
        self.applied: dict[str, Any] = {}  # argument -> the value this follower put in

    def changed(self, style: str | None, current: Mapping[str, Any],
                fallback: Mapping[str, Any]) -> dict[str, Any] | None:
        """Argument values to set, in order, when `style` names another style than before;
        None when it is the same.  `current`: the arguments' values now (GIMP names);
        `fallback`: what an argument goes back to (the model's default, else the start value)."""
        style = (style or "").strip()
        if style.lower() == self.style.lower():
            return None
        self.style = style
        settings = style_settings(find_style(self.styles, style))
        names = {a.field: a.name for a in ARGS}
        new = {names[k]: settings[k] for k in _STYLE_ORDER if k in settings and k in names}
        out: dict[str, Any] = {}
        for arg, value in self.applied.items():
            if arg not in new and current.get(arg) == value and arg in fallback:
                out[arg] = fallback[arg]
        out.update(new)
        self.applied = new
        model = out.pop("model", None)  # first: the model follower sets the model's defaults
        return {"model": model, **out} if model is not None else out


# -- result layers remember their job ------------------------------------------------------

#: The parasite on each result layer (and its group): which job and variant made it.
RESULT_PARASITE = "inpaintd-result"
#: The image's parasite: where each job's layers sit on its canvas, by job id.
JOBS_PARASITE = "inpaintd-jobs"
#: How many jobs an image remembers (the oldest are forgotten first).
JOBS_REMEMBERED = 500

_JOB_OPTION_NAMES = frozenset(o.name for o in OPTIONS)


@dataclass(frozen=True)
class ResultRecord:
    """What a result layer's parasite holds (JSON; it is saved in .xcf files).

    `x`, `y` are where the daemon put the layer, in the image that was sent (the plug-in
    sends a crop); `origin` is where that image's top-left sits on this canvas, so the
    layer sits at x + origin[0], y + origin[1].  `variant` -1 marks a job's layer group."""

    job: str
    variant: int
    seed: int = -1
    x: int = 0
    y: int = 0
    origin: tuple[int, int] = (0, 0)
    endpoint: str = ""  # the daemon address setting it was made with ("" = the protocol's rule)
    options: dict[str, Any] = field(default_factory=dict)  # the job options it was made with
    variants: int = 0  # for a group: how many variants

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"job": self.job, "variant": self.variant, "seed": self.seed, "x": self.x,
                                "y": self.y, "origin": list(self.origin), "options": dict(self.options)}
        if self.endpoint:
            data["endpoint"] = self.endpoint
        if self.variants:
            data["variants"] = self.variants
        return json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | Sequence[int] | None) -> ResultRecord | None:
        """The record in a parasite's data; None where it is not one (another tool's, damaged)."""
        if data is None:
            return None
        try:
            value = json.loads(bytes(data).decode("utf-8"))
        except (ValueError, TypeError):
            return None
        if not isinstance(value, dict) or not isinstance(value.get("job"), str) or not value["job"]:
            return None

        def number(key: str, default: int) -> int:
            v = value.get(key, default)
            return v if isinstance(v, int) and not isinstance(v, bool) else default

        origin = value.get("origin")
        if not (isinstance(origin, list) and len(origin) == 2 and all(isinstance(v, int) for v in origin)):
            origin = [0, 0]
        options = value.get("options")
        options = {k: v for k, v in options.items() if k in _JOB_OPTION_NAMES} if isinstance(options, dict) else {}
        endpoint = value.get("endpoint")
        return cls(value["job"], number("variant", 0), number("seed", -1), number("x", 0), number("y", 0),
                   (origin[0], origin[1]), endpoint if isinstance(endpoint, str) else "", options,
                   number("variants", 0))

    @property
    def is_group(self) -> bool:
        return self.variant < 0


def vary_origin(record: ResultRecord, layer_x: int, layer_y: int) -> tuple[int, int]:
    """Where the daemon's coordinates start on the canvas for a result layer now at
    (layer_x, layer_y): its record's origin, or, for a layer the artist moved, moved with it."""
    return layer_x - record.x, layer_y - record.y


def remember_job(data: bytes | bytearray | memoryview | Sequence[int] | None, job: str,
                 origin: tuple[int, int], limit: int = JOBS_REMEMBERED) -> bytes:
    """The image's job parasite with `job`'s origin added (the newest last, `limit` kept)."""
    jobs = known_jobs(data)
    jobs.pop(job, None)
    jobs[job] = origin
    kept = list(jobs.items())[-limit:]
    return json.dumps({k: list(v) for k, v in kept}).encode("utf-8")


def known_jobs(data: bytes | bytearray | memoryview | Sequence[int] | None) -> dict[str, tuple[int, int]]:
    """Job id -> origin, from the image's job parasite (empty where there is none, or it is damaged)."""
    try:
        value = json.loads(bytes(data or b"").decode("utf-8") or "{}")
    except (ValueError, TypeError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: (v[0], v[1]) for k, v in value.items()
            if isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) for i in v)}


# -- Vary Result ---------------------------------------------------------------------------

PRESETS: tuple[tuple[str, str, str], ...] = (
    ("subtle", "Subtle", "Keep the composition, change details (the daemon's Vary Subtle strength, 0.35 by default)"),
    ("strong", "Strong", "Keep the colours and the layout loosely (the daemon's Vary Strong strength, 0.7 by default)"),
)

_ENDPOINT_HELP = ("ZeroMQ address of inpaintd (empty = the one that made the result, else $INPAINTD_ENDPOINT "
                  f"or {DEFAULT_ENDPOINT})")

#: Vary Result's arguments, in their positions.  Mnemonics as in EXTRA_ARGS.
VARY_ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("preset", "preset", "choice", "_Amount", "How much to change: subtle or strong", "subtle",
            choices=PRESETS, position=0),
    ArgSpec("prompt", "prompt", "str", "_Prompt (Remix)",
            "Empty: the result's own prompt (Vary); a new prompt repaints the result with it (Remix)", "",
            position=1),
    ArgSpec("variants", "variants", "int", "_Variants", "How many new variants (one layer each)", 2, 1,
            LIMITS.max_variants, position=2),
    ArgSpec("seed", "seed", "int", "S_eed", "Seed of the first new variant (-1 = new random seeds)", -1, -1,
            editor.EDITOR_INT_MAX, position=3, special="random"),
    ArgSpec("endpoint", "endpoint", "str", "_Daemon address", _ENDPOINT_HELP, "", position=4),
)

#: Bring Back from History's arguments, in their positions.
HISTORY_ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("job", "job", "str", "_Job",
            "The history entry's job id (as `inpaintd history` lists it; a unique start is enough); empty = the "
            "newest entry, or the newest whose prompt contains the search text", "", position=0),
    ArgSpec("search", "search", "str", "Search _text",
            "With no job id: the newest entry whose prompt contains this text (case-insensitive)", "", position=1),
    ArgSpec("endpoint", "endpoint", "str", "_Daemon address",
            f"ZeroMQ address of inpaintd (empty = $INPAINTD_ENDPOINT or {DEFAULT_ENDPOINT})", "", position=2),
)


def arg_problems(specs: Iterable[ArgSpec], values: Mapping[str, Any]) -> list[str]:
    """Every problem with values a script passed to the arguments `specs` (GIMP names)."""
    problems = []
    for a in specs:
        value: Any = values.get(a.name, a.default)
        value = "" if value is None and a.kind in ("str", "choice") else value
        kind = str if a.kind == "choice" else _PY_TYPES[a.kind]
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            problems.append(f"{plain(a.label)} must be a {'text' if kind is str else a.kind}, got {value!r}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if a.minimum is not None and value < a.minimum:
                problems.append(f"{plain(a.label)} must be at least {a.minimum:g}, got {value}")
            if a.maximum is not None and value > a.maximum:
                problems.append(f"{plain(a.label)} must be at most {a.maximum:g}, got {value}")
        if a.choices and value not in [c[0] for c in a.choices]:
            problems.append(f"{plain(a.label)} '{value}' is not one of {', '.join(c[0] for c in a.choices)}")
        if a.name == "endpoint" and isinstance(value, str):
            problem = editor.endpoint_problem(value)
            if problem:
                problems.append(problem)
        if a.name == "prompt" and isinstance(value, str) and len(value) > LIMITS.max_prompt_chars:
            problems.append(f"{plain(a.label)} has {len(value)} characters; at most {LIMITS.max_prompt_chars} are allowed")
    return problems


def arg_values_of(specs: Iterable[ArgSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments' values by field name, a string GIMP handed over as None made ""."""
    out = {}
    for a in specs:
        value = values.get(a.name, a.default)
        out[a.field] = "" if value is None and a.kind in ("str", "choice") else value
    return out


def vary_overrides(prompt: str, variants: int, seed: int) -> dict[str, Any]:
    """The job options a Vary Result run changes (the `options` of a `vary` request): the
    number of variants, a new prompt (Remix; empty: the result's own), a seed (-1: the
    daemon picks new ones, which a vary does unless told)."""
    out: dict[str, Any] = {"variants": variants}
    if prompt.strip():
        out["prompt"] = prompt.strip()
    if seed >= 0:
        out["seed"] = seed
    return out


#: The options a vary sets itself: never carried over from the record when the pixels travel.
_VARY_OWN = ("seed", "strength", "variants")


def vary_pixels_options(record: ResultRecord, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The `options` of a vary that sends the result's pixels (the daemon no longer keeps the
    job, so it does not know its options either): the record's options, then `overrides`.
    Never the strength: the preset gives it (an explicit strength would win over the preset)."""
    kept = {k: v for k, v in record.options.items() if k in _JOB_OPTION_NAMES and k not in _VARY_OWN}
    return {**kept, **overrides}


def varied_options(record: ResultRecord, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The options the new variants were made with, for their records."""
    return {**{k: v for k, v in record.options.items() if k not in _VARY_OWN}, **overrides}


def vary_group_name(preset: str, prompt: str, record: ResultRecord) -> str:
    """The group of a vary's variants: "Remix: <new prompt>" or "Vary (subtle): <its prompt>"."""
    if prompt.strip():
        return f"Remix: {editor.short_prompt(prompt)}"
    return f"Vary ({preset}): {editor.short_prompt(str(record.options.get('prompt') or ''))}"


def vary_subject(name: str, record: ResultRecord) -> str:
    """What Vary Result's dialog says it varies: the layer, and the prompt it was made with."""
    prompt = str(record.options.get("prompt") or "")
    return f"Varies '{name}' (job {record.job[:8]}): {editor.short_prompt(prompt, 60)}"


def not_a_result(name: str) -> str:
    """The error for a layer without a record."""
    return (f"'{name}' is not a result of inpaintd: select one of the variant layers that Inpaint Selection, "
            "Vary Result or Bring Back from History added (in a group named 'Inpaint: …'), and run it again.")


VARY_NEEDS_SELECTION = (
    "The daemon no longer keeps this result's job, so its pixels are sent again: select the area to repaint "
    "on the result layer (e.g. with the Free Select tool) and run Vary Result again."
)


# -- Bring Back from History ---------------------------------------------------------------


def pick_entry(entries: Iterable[Mapping[str, Any]], job: str) -> Mapping[str, Any] | None:
    """The entry of job `job` among `entries`: its exact id, else the only one starting with it."""
    job = (job or "").strip()
    entries = [e for e in entries if isinstance(e, Mapping) and isinstance(e.get("job"), str)]
    exact = next((e for e in entries if e["job"] == job), None)
    if exact is not None or not job:
        return exact
    starting = [e for e in entries if e["job"].startswith(job)]
    return starting[0] if len(starting) == 1 else None


def history_origin(entry: Mapping[str, Any], known: Mapping[str, tuple[int, int]], image_size: tuple[int, int],
                   layer: Rect | None) -> tuple[tuple[int, int], str]:
    """Where the daemon's coordinates of a history entry start on this canvas, and a note
    when that is a guess ("" when it is known).

    The plug-in sends a crop, and the daemon knows only the crop: its history's `region` is
    in the crop's coordinates.  The image remembers where each job's crop sat (JOBS_PARASITE);
    a vary or rerun sits where the job it came from sat.  Elsewhere: the crop was the whole
    canvas when the entry's `canvas` is the image's size, or the selected layer's when it is
    that layer's size; else the layers go to the top-left, and the note says so."""
    for job in (entry.get("job"), entry.get("parent")):
        if isinstance(job, str) and job in known:
            return known[job], ""
    canvas = entry.get("canvas")
    size = (canvas.get("width"), canvas.get("height")) if isinstance(canvas, Mapping) else None
    if size == tuple(image_size):
        return (0, 0), ""
    if layer is not None and size == (layer.width, layer.height):
        return (layer.x, layer.y), ""
    return (0, 0), ("This image does not say where that job's area was, so its layers are placed from the "
                    "top-left corner; move the group into place.")


def history_label(entry: Mapping[str, Any]) -> str:
    """One history entry in a combo box: when, the prompt, how many variants, the job id."""
    created = entry.get("created")
    when = time.strftime("%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else "?"
    count = len(entry.get("variants") or [])
    kind = entry.get("kind")
    what = f"{kind}: " if kind in ("vary", "rerun") else ""
    return (f"{when}  {what}{editor.short_prompt(str(entry.get('prompt') or ''), 32)}  "
            f"({count} variant{'s' if count != 1 else ''}, {str(entry.get('job', ''))[:8]})")


def history_choices(entries: Iterable[Mapping[str, Any]], current: str) -> list[tuple[str, str]]:
    """(value, words) for the Job combo box: the newest entry, then each entry listed."""
    rows = [("", "The newest (whose prompt contains the search text)")]
    rows += [(str(e["job"]), history_label(e)) for e in entries if isinstance(e, Mapping) and isinstance(e.get("job"), str)]
    current = (current or "").strip()
    if current and current not in {value for value, _ in rows}:
        rows.append((current, current))
    return rows


def no_history_entry(job: str, search: str) -> str:
    if job.strip():
        return f"The daemon's history has no job '{job.strip()}' (`inpaintd history` lists them)."
    if search.strip():
        return f"No entry in the daemon's history has a prompt containing '{search.strip()}'."
    return "The daemon's history is empty: run Inpaint Selection first."


# -- LoRAs (issue #12) ------------------------------------------------------------------------

#: What the daemon allows (PROTOCOL.md 5.4, 5.13): weights -2 ... 2, at most 8 LoRAs a job.
LORA_MIN_WEIGHT, LORA_MAX_WEIGHT = -2.0, 2.0
MAX_LORAS = 8
#: How many of the daemon's LoRAs the dialog names (the rest: `inpaintd loras`).
LORAS_SHOWN = 12

_LORA_TAG = re.compile(r"^<\s*lora\s*:(.*)>$", re.IGNORECASE)


def parse_loras(text: str) -> tuple[list[tuple[str, float | None]], list[str]]:
    """The LoRAs argument ("name:weight, name:weight"; empty = none) as (name, weight)
    pairs, a weight None where only the name is given (the LoRA's default weight then), and
    the problems, phrased for the user.  A name may hold spaces (a file's name); the weight
    is what follows its last colon when that is a number.  `<lora:name:weight>`, as typed
    in prompts, is taken too."""
    out: list[tuple[str, float | None]] = []
    problems: list[str] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        tag = _LORA_TAG.match(item)
        if tag:
            item = tag.group(1).strip()
        name, weight = item, None
        if ":" in item:
            head, tail = item.rsplit(":", 1)
            try:
                weight = float(tail.strip())
            except ValueError:
                problems.append(f"LoRA '{item}': the weight after ':' must be a number, e.g. '{head.strip()}:0.8'")
                continue
            name = head.strip()
            if not math.isfinite(weight) or not LORA_MIN_WEIGHT <= weight <= LORA_MAX_WEIGHT:
                problems.append(f"LoRA '{name}': weight {tail.strip()} is out of range "
                                f"{LORA_MIN_WEIGHT:g} to {LORA_MAX_WEIGHT:g}")
                continue
        if not name:
            problems.append(f"LoRA '{item}' has no name: write name:weight, e.g. 'ink:0.8'")
            continue
        out.append((name, weight))
    if len(out) > MAX_LORAS:
        problems.append(f"{len(out)} LoRAs given; a job takes at most {MAX_LORAS}")
    return out, problems


def lora_entries(body: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The LoRA entries of a `loras_reply` body (PROTOCOL.md 5.13), whatever was sent."""
    loras = body.get("loras") if isinstance(body, Mapping) else None
    return [e for e in loras or [] if isinstance(e, Mapping) and isinstance(e.get("name"), str) and e["name"]]


def lora_weights(parsed: Iterable[tuple[str, float | None]],
                 listed: Iterable[Mapping[str, Any]] = ()) -> list[tuple[str, float]]:
    """The (name, weight) pairs to send: a LoRA given without a weight gets the daemon's
    `default_weight` for it (its sidecar's), else 1."""
    defaults = {}
    for e in listed:
        weight = e.get("default_weight")
        if isinstance(weight, (int, float)) and not isinstance(weight, bool):
            defaults[str(e["name"]).lower()] = float(weight)
    return [(name, weight if weight is not None else defaults.get(name.lower(), 1.0)) for name, weight in parsed]


def lora_label(entry: Mapping[str, Any]) -> str:
    """One LoRA of the daemon in words: name, family, trigger words, or why it cannot be used."""
    name = str(entry.get("name"))
    if entry.get("problem"):
        return f"{name} (cannot be used: {' '.join(str(entry['problem']).split())})"
    family = str(entry.get("family") or "") or "unknown family"
    words = [str(w) for w in entry.get("trigger_words") or [] if str(w).strip()]
    return f"{name} ({family}" + (f"; trigger words: {', '.join(words)}" if words else "") + ")"


def loras_listing(body: Mapping[str, Any] | None) -> str:
    """What the Inpaint Selection dialog says of the daemon's LoRAs (its `loras` reply)."""
    entries = lora_entries(body)
    folder = str(body.get("lora_dir") or "") if isinstance(body, Mapping) else ""
    where = f" in {folder}" if folder else ""
    if not entries:
        return (f"The daemon has no LoRAs{where}: put .safetensors files there, or teach it a subject "
                "(Filters > AI > Teach Subject from Layers...).")
    shown = "; ".join(lora_label(e) for e in entries[:LORAS_SHOWN])
    more = len(entries) - LORAS_SHOWN
    tail = f"; and {more} more (`inpaintd loras`)" if more > 0 else ""
    return f"The daemon's LoRAs{where}: {shown}{tail}."


# -- Teach Subject from Layers (issue #12) ------------------------------------------------------

#: What the daemon takes (PROTOCOL.md 5.14).
TRAIN_MIN_IMAGES, TRAIN_MAX_IMAGES = 3, 30
TRAIN_MAX_SIDE = 4096
LORA_NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Teach Subject from Layers' arguments, in their positions.  Mnemonics as in EXTRA_ARGS.
TRAIN_ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("token", "token", "str", "_Token",
            "The word prompts will call the subject by: one rare word of at most 32 characters (e.g. 'sks')",
            "sks", position=0),
    ArgSpec("class-noun", "class_noun", "str", "Class _noun",
            "What the subject is, e.g. 'cat', 'mug', 'person' (prompts say 'TOKEN CLASS')", "", position=1),
    ArgSpec("name", "name", "str", "LoRA na_me",
            "The new LoRA's name (letters, digits, _ . -; a LoRA of that name must not exist yet); "
            "empty = TOKEN_CLASS", "", position=2),
    ArgSpec("steps", "steps", "int", "St_eps", "Training steps: more learns more (and takes longer)", 400, 1, 20000,
            position=3),
    ArgSpec("resolution", "resolution", "int", "Resolut_ion",
            "The side the pictures are trained at, a multiple of 64 (0 = auto: the model's native size)", 0, 0, 2048,
            position=4, special="auto"),
    ArgSpec("model", "model", "str", "Mo_del",
            "The model to teach (an SD 1.x or SDXL model id from `inpaintd models`; empty = the daemon's default)",
            "", position=5),
    ArgSpec("endpoint", "endpoint", "str", "Daemon _address",
            f"ZeroMQ address of inpaintd (empty = $INPAINTD_ENDPOINT or {DEFAULT_ENDPOINT})", "", position=6),
)


def lora_name_for(token: str, class_noun: str) -> str:
    """The LoRA name when none is given: TOKEN_CLASS, made of the characters a name may hold."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{token.strip()}_{class_noun.strip()}").strip("_.-")
    return name[:64] or "subject"


def train_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem with Teach Subject's arguments (GIMP names), beyond their types and ranges."""
    problems = arg_problems(TRAIN_ARGS, values)
    if problems:
        return problems
    token = (values.get("token") or "").strip()
    noun = (values.get("class-noun") or "").strip()
    name = (values.get("name") or "").strip()
    if not token or len(token.split()) != 1 or len(token) > 32:
        problems.append(f"Token must be one word of at most 32 characters, got '{token}'")
    if not noun or len(noun) > 64:
        problems.append("Class noun must say what the subject is (e.g. 'cat'), at most 64 characters"
                        + (f", got {len(noun)}" if noun else ""))
    if name and not LORA_NAME_RULE.match(name):
        problems.append(f"LoRA name '{name}' may hold only letters, digits, _ . - (at most 64, starting with a "
                        "letter or digit)")
    resolution = values.get("resolution", 0)
    if resolution % 64:
        problems.append(f"Resolution must be a multiple of 64 (or 0 = auto), got {resolution}")
    return problems


def train_settings(steps: int, resolution: int, model: str) -> dict[str, Any]:
    """The `train` request's settings the procedure sets (the rest: the daemon's defaults)."""
    settings: dict[str, Any] = {"steps": steps, "resolution": resolution}
    if model.strip():
        settings["model"] = model.strip()
    return settings


def training_layers_problem(layers: Sequence[tuple[str, int, int]]) -> str:
    """Why the selected layers ((name, width, height) each) cannot be the training pictures; ""."""
    if not TRAIN_MIN_IMAGES <= len(layers) <= TRAIN_MAX_IMAGES:
        return (f"Teach Subject needs {TRAIN_MIN_IMAGES} to {TRAIN_MAX_IMAGES} pictures of the subject, one layer "
                f"each: select them in the Layers dialog (Ctrl+click; {len(layers)} selected).")
    for name, width, height in layers:
        if max(width, height) > TRAIN_MAX_SIDE:
            return (f"Layer '{name}' is {width}×{height}; the daemon takes pictures of at most {TRAIN_MAX_SIDE} px "
                    "a side: scale it (Layer > Scale Layer) and run it again.")
    return ""


def split_alpha(rgba: bytes) -> tuple[bytes, bytes]:
    """RGBA u8 pixels -> (RGB, alpha)."""
    rgb = bytearray(len(rgba) // 4 * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = rgba[0::4], rgba[1::4], rgba[2::4]
    return bytes(rgb), bytes(rgba[3::4])


def subject_mask(alpha: bytes, selection: bytes | None, layer: str) -> bytes | None:
    """A picture's subject mask for `train` (learned where not 0): the selection over the
    layer where there is a selection, else the layer's alpha where it is not all opaque,
    else None (the whole picture).  ValueError, in words, where it would select nothing."""
    if selection is not None:
        if selection.count(0) == len(selection):
            raise ValueError(f"The selection does not reach layer '{layer}': the selection marks the subject in "
                             "every picture, so select it where all the layers show it, or select none.")
        return selection
    if alpha.count(255) == len(alpha):
        return None
    if alpha.count(0) == len(alpha):
        raise ValueError(f"Layer '{layer}' is fully transparent: there is no subject to learn in it.")
    return alpha


def training_subject(names: Sequence[str], with_selection: bool) -> str:
    """What the Teach Subject dialog says it teaches from."""
    problem = training_layers_problem([(n, 0, 0) for n in names])
    if problem:
        return problem
    shown = ", ".join(f"'{n}'" for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    how = ("the selection marks the subject in each" if with_selection
           else "a layer's transparent parts are left out; select the subject to mark it in each")
    return f"Teaches the daemon the subject of {len(names)} layers: {shown} ({how})."


def duration_words(seconds: float) -> str:
    """A time left, roughly: "45 s", "3 min 10 s", "1 h 05 min"."""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s} s"
    if s < 600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def training_progress(stage: str, step: int, total: int, position: int | None, loss: float | None,
                      remaining: float | None) -> tuple[str, float]:
    """(the progress bar's text, its fraction) for a `train` job's state and last event."""
    if stage == "training" and total > 0:
        parts = [f"Training {min(step, total)}/{total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if remaining is not None:
            parts.append(f"about {duration_words(remaining)} left")
        return " – ".join(parts), min(max(step, 0), total) / total
    if stage == "preparing" and total > 1:
        return f"Making pictures of the class {min(step, total)}/{total}", 0.0
    if stage == "done":
        return "Done", 1.0
    return editor.progress_text(stage, step, total, position), 0.0


def trained_message(trained: Mapping[str, Any], token: str, class_noun: str) -> str:
    """What the artist hears when a training is done: the new LoRA and how to use it."""
    name = str(trained.get("name") or "")
    loss = trained.get("final_loss")
    loss_text = f", final loss {loss:.4f}" if isinstance(loss, (int, float)) and not isinstance(loss, bool) else ""
    steps = trained.get("steps")
    subject = f"{token.strip()} {class_noun.strip()}"
    return (f"The daemon learned '{subject}' as the LoRA '{name}' ({steps} steps{loss_text}).\n"
            f"Use it in Filters > AI > Inpaint Selection...: write '{subject}' in the prompt, e.g. "
            f"'a photo of {subject}', and either add <lora:{name}:1> to the prompt or put '{name}:1' in the LoRAs "
            f"field (a lower weight, e.g. '{name}:0.7', applies it more gently).")
