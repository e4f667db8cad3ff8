"""The GIMP plug-in's decisions, kept free of GIMP, gi and numpy.

What both editor plug-ins decide (the crop, progress, layer names, option limits and
values, the daemon's address) is in the protocol package's `inpaintd_protocol.editor`,
copied beside this file by `inpaintd install-gimp`; the procedure's arguments are made
from the protocol's option table.  This module adds what only GIMP needs, and everything
here can be unit-tested from the project's venv.  The plug-in file only moves pixels
between GIMP and these functions.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# The standard-library parts of the protocol package: they need neither pyzmq nor msgpack,
# so this module loads where GIMP's Python lacks them (and the plug-in says what to install).
from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan
from inpaintd_protocol.messages import DEFAULT_ENDPOINT
from inpaintd_protocol.options import GIMP, Option, check_record
from inpaintd_protocol.rect import Rect

PROCEDURE_NAME = "python-fu-inpaintd-inpaint-selection"
MENU_PATH = "<Image>/Filters/AI"
MENU_LABEL = "_Inpaint Selection..."


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


def _from_option(opt: Option) -> ArgSpec:
    """The argument of a job option, from the protocol's option table."""
    low, high = editor.bounds(opt)
    return ArgSpec(opt.name.replace("_", "-"), opt.name, opt.kind.__name__, opt.label, opt.tip, opt.start_value,
                   low, high, position=opt.gimp_position if opt.gimp_position is not None else -1)


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
)

#: Every argument in its position: the job options GIMP shows (options.OPTIONS, each with
#: its `gimp_position`) and EXTRA_ARGS.
ARGS: tuple[ArgSpec, ...] = tuple(sorted([*map(_from_option, editor.shown_in(GIMP)), *EXTRA_ARGS],
                                         key=lambda a: a.position))

#: The dialog's order, which need not be the argument order: the job options in the
#: editors' form order, then the plug-in's own.
DIALOG_ORDER: tuple[str, ...] = tuple(o.name.replace("_", "-") for o in editor.shown_in(GIMP)) + tuple(
    a.name for a in EXTRA_ARGS)

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
