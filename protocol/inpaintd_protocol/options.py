"""The job options, in one table from which every place that knows them is made.

A job option is named in five places: the daemon's validation, the `inpaintd inpaint` flags,
the GIMP procedure's arguments, the Krita docker's settings and PROTOCOL.md section 5.4.
Each of them is built from `OPTIONS` (the spec is checked against it by
tests/test_option_table.py), so adding an option is one `Option` here plus its use in the
engine.  `JobOptions`, the record a submit carries, is checked against the table at import.

Standard library only and no imports from this package: the editors' Pythons load it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

KRITA = "krita"
GIMP = "gimp"

SCHEDULERS = ("default", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "lcm")

#: What a diffusion job below strength 1 starts from inside the hole (option `fill`; see
#: PROTOCOL.md section 9.8): auto = keep the picture, classical fill where it is transparent.
FILL_MODES = ("auto", "none", "neutral", "blur", "classical")

_SAME = object()  # editor_default: the daemon's default


@dataclass(frozen=True)
class Option:
    """One job option: what the daemon accepts, and how the CLI and the editors offer it."""

    name: str  # the wire name: a submit body key and a JobOptions field
    kind: type  # str, int, float (an int is accepted too) or bool (never 0/1)
    default: Any  # what the daemon uses when a submit leaves the option out
    low: float | None = None  # inclusive bounds of a number
    high: float | None = None
    limit: str = ""  # the Limits field capping it: a number's upper bound, a string's length
    choices: tuple[str, ...] = ()  # the only strings accepted, where there is such a list
    flag: str = ""  # the CLI flag; "" = --name with dashes
    help: str = ""  # the CLI's help; {low} and {high} are filled in, %(default)s by argparse
    label: str = ""  # the editors' label; "_" marks GIMP's mnemonic letter
    tip: str = ""  # the editors' tooltip and the GIMP argument's blurb
    editors: tuple[str, ...] = ()  # which editors show it (KRITA, GIMP)
    order: int = 0  # its place in the editors' forms, smaller first
    gimp_position: int | None = None  # the GIMP argument's index: scripts pass them by position, never renumber
    editor_default: Any = _SAME  # what the editors start with, where that is not `default`
    special: str = ""  # what an editor shows for the lowest value (e.g. "auto" for steps 0)
    unit: str = ""  # shown after the number
    step: float = 1  # an editor's increment for a number
    choice_labels: tuple[str, ...] = ()  # the editors' words for `choices`, in the same order

    @property
    def types(self) -> tuple[type, ...]:
        """The Python types the daemon accepts (a float option takes an int too)."""
        return (int, float) if self.kind is float else (self.kind,)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def plain_label(self) -> str:
        return self.label.replace("_", "")

    @property
    def start_value(self) -> Any:
        """What an editor starts with."""
        return self.default if self.editor_default is _SAME else self.editor_default

    def bounds(self, limits: Any) -> tuple[float | None, float | None]:
        """(low, high) of a number under `limits` (a messages.Limits); (None, None) otherwise."""
        if self.kind not in (int, float):
            return None, None
        return self.low, getattr(limits, self.limit) if self.limit else self.high

    def max_length(self, limits: Any) -> int | None:
        """The longest string allowed under `limits`, where one is."""
        return getattr(limits, self.limit) if self.kind is str and self.limit else None


BOTH = (KRITA, GIMP)

#: In the order of PROTOCOL.md's table, which is also the order options are validated in.
OPTIONS: tuple[Option, ...] = (
    Option("prompt", str, "", limit="max_prompt_chars",
           help="what to paint into the masked area (empty: fill from context)",
           label="_Prompt", tip="What to paint into the selection (empty: fill from the surroundings)",
           editors=BOTH, order=10, gimp_position=0),
    Option("negative_prompt", str, "", limit="max_prompt_chars", help="what to avoid",
           label="_Negative prompt", tip="What to avoid (ignored by the classical engine)",
           editors=BOTH, order=20, gimp_position=1),
    Option("seed", int, -1, low=-1, high=2**32 - 1,
           help="seed of the first variant; variant i uses seed+i (-1: random)",
           label="See_d", tip="Seed of the first variant; variant i uses seed + i (-1 = a new one each time)",
           editors=BOTH, order=70, gimp_position=5, special="random"),
    Option("variants", int, 1, low=1, limit="max_variants",
           help="how many results ({low}-{high}; default %(default)s); a deterministic classical model "
                "(all but patchmatch) makes one and says so",
           label="_Variants", tip="How many results (one layer each)",
           editors=BOTH, order=30, gimp_position=2, editor_default=2),
    Option("steps", int, 0, low=0, limit="max_steps", help="denoising steps (0: engine default)",
           label="St_eps", tip="Denoising steps (0 = the model's default)",
           editors=BOTH, order=60, gimp_position=4, special="auto"),
    Option("guidance_scale", float, 0.0, low=0.0, high=50.0, flag="--guidance",
           help="classifier-free guidance; 0: the model family's default (7.5 SD, 3.5 SD 3.5, 30 FLUX.1 Fill, "
                "2.5 Kontext, 1 FLUX.2 klein; the `models` reply gives each model's)",
           label="_Guidance scale", tip="Classifier-free guidance: how closely to follow the prompt (0 = the model's default)",
           editors=BOTH, order=65, gimp_position=15, special="auto", step=0.5),
    Option("strength", float, 1.0, low=0.01, high=1.0,
           help="how much of the masked area to repaint, {low}-{high} (default %(default)s)",
           label="S_trength", tip="How far to move away from the current pixels (1 = ignore them)",
           editors=BOTH, order=40, gimp_position=3, step=0.05),
    Option("scheduler", str, "default", choices=SCHEDULERS, help="sampler (default: the model's own)",
           label="Sc_heduler", tip="Sampler (Default = the model's own; a model may not take every one)",
           editors=(KRITA,), order=66,
           choice_labels=("Default (the model's own)", "DDIM", "PNDM", "Euler", "Euler ancestral", "DPM++ 2M", "LCM")),
    Option("model", str, "", help="model id from `inpaintd models` (default: the daemon's)",
           label="_Model", tip="Model name (empty = the daemon's default)", editors=BOTH, order=80, gimp_position=6),
    Option("grow", int, 8, low=0, limit="max_grow", help="grow the mask by this many px (default %(default)s)",
           label="Mas_k grow", tip="Grow the selection by this many pixels before inpainting",
           editors=BOTH, order=90, gimp_position=7, unit="px"),
    Option("feather", int, 16, low=0, limit="max_feather",
           help="feather the mask edge over this many px (default %(default)s)",
           label="_Feather", tip="Blend the result in over this many pixels at the mask edge",
           editors=BOTH, order=100, gimp_position=8, unit="px"),
    Option("padding", int, -1, low=-1, limit="max_padding", help="context around the mask in px (-1: automatic)",
           label="Conte_xt", tip="Pixels of the surroundings the model sees (-1 = automatic)",
           editors=BOTH, order=110, gimp_position=9, special="auto", unit="px"),
    Option("color_match", bool, False,
           help="correct a colour cast of the result, measured where the model should have kept the picture",
           label="F_ix color cast", tip="Match the result's colors to the picture where the model should have kept it",
           editors=BOTH, order=120, gimp_position=13),
    Option("fill", str, "auto", choices=FILL_MODES,
           help="diffusion below strength 1: what the hole starts from (auto: keep the picture, classical fill "
                "where transparent; none; neutral grey; blur; classical). No effect at strength 1 or on classical models",
           label="Start _with",
           tip="Below strength 1, what a diffusion model starts from in the selection: auto (keep the picture; "
               "transparent pixels filled), none, neutral, blur, classical. No effect at strength 1 or on "
               "classical models",
           editors=BOTH, order=50, gimp_position=14,
           choice_labels=("Auto (keep the picture)", "Keep the picture", "Neutral grey", "Blurred surroundings",
                          "Classical fill")),
    Option("style", str, "", limit="max_style_chars",
           help="a style preset from `inpaintd styles` (its prompt template, negative prompt and settings; the job's "
                "own values win where they are not the defaults)",
           label="St_yle", tip="A saved style: prompt template, negative prompt and settings (empty = none)",
           editors=BOTH, order=25, gimp_position=16),
    Option("reference_weight", float, 1.0, low=0.0, high=2.0,
           help="how strongly the reference images steer the result (style reference; 0: not at all; default "
                "%(default)s)",
           label="Reference weight", tip="How strongly the reference layer steers the style (0 = not at all)",
           editors=(KRITA,), order=26, step=0.05),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass
class JobOptions:
    """Everything a submit carries besides the pixels, one field per row of OPTIONS with its
    default: a client that sends only image, mask and prompt gets a good result.  `steps` 0
    and `padding` -1 mean "the engine's / the runner's choice"; `seed` -1 "pick one" (the
    result reports the seeds used); `model` "" the daemon's default model.

    Written out (not generated) so that type checkers and readers see the fields;
    `check_record` below stops the import if it ever differs from OPTIONS.
    """

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    variants: int = 1
    steps: int = 0
    guidance_scale: float = 0.0
    strength: float = 1.0
    scheduler: str = "default"
    model: str = ""
    grow: int = 8
    feather: int = 16
    padding: int = -1
    color_match: bool = False
    fill: str = "auto"
    style: str = ""
    reference_weight: float = 1.0

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_record(record: type[DataclassInstance], rows: Iterable[tuple[str, type, Any]]) -> None:
    """Stop an import when `record`, a dataclass written out for readers and type checkers,
    differs from the table it mirrors: `rows` gives each field's (name, type, default), in
    order.  JobOptions mirrors OPTIONS; the editors' settings mirror the options they show."""
    declared = [(f.name, f.type if isinstance(f.type, str) else f.type.__name__, f.default) for f in fields(record)]
    table = [(name, kind.__name__, default) for name, kind, default in rows]
    if declared != table:
        raise AssertionError(f"{record.__name__} and its table disagree: {declared} != {table}")


check_record(JobOptions, [(o.name, o.kind, o.default) for o in OPTIONS])
