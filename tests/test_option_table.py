"""The option table (inpaintd_protocol/options.py) is the one source of the job options:
these tests fail when any of the five places made from it disagrees with it -- the CLI's
flags, the GIMP procedure's arguments, the Krita docker's settings, the daemon's
validation, and PROTOCOL.md's submit options table (section 5.4)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from inpaintd.cli import _job_options, build_parser
from inpaintd.validation import parse_options
from inpaintd_protocol import editor
from inpaintd_protocol.messages import LIMITS, OPTION_RULES, JobOptions, ProtocolError
from inpaintd_protocol.options import BY_NAME, GIMP, KRITA, OPTIONS, Option, check_record

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "krita_plugin"))
sys.path.insert(0, str(ROOT / "gimp_plugin" / "inpaintd_gimp"))

import inpaintd_logic as gimp  # noqa: E402

from inpaintd_krita import logic as krita  # noqa: E402

DOC = (ROOT / "protocol" / "PROTOCOL.md").read_text(encoding="utf-8")
NUMBERS = [o for o in OPTIONS if o.kind in (int, float)]


def test_the_table_itself() -> None:
    names = [o.name for o in OPTIONS]
    assert len(set(names)) == len(names) and names == list(BY_NAME)
    for o in OPTIONS:
        assert o.kind in (str, int, float, bool), o.name
        assert isinstance(o.default, o.kind) and isinstance(o.start_value, o.kind), o.name
        assert not o.choices or o.default in o.choices, o.name
        assert not o.choice_labels or len(o.choice_labels) == len(o.choices), o.name
        assert o.limit == "" or hasattr(LIMITS, o.limit), o.name
        assert (o.low is not None and (o.high is not None or bool(o.limit))) == (o.kind in (int, float)), o.name
        assert set(o.editors) <= {KRITA, GIMP} and (not o.editors or (o.label and o.tip)), o.name
        assert (o.gimp_position is not None) == (GIMP in o.editors), o.name
    assert [f.name for f in dataclasses.fields(JobOptions)] == names
    assert JobOptions().to_wire() == {o.name: o.default for o in OPTIONS}
    assert OPTION_RULES == {o.name: (o.types, *o.bounds(LIMITS)) for o in OPTIONS}


def test_a_written_out_record_must_match_its_table() -> None:
    """JobOptions, Krita's Settings and GIMP's Options are written out for readers and type
    checkers; check_record (called at their import) stops the import when one drifts."""

    @dataclasses.dataclass
    class Record:
        a: int = 1
        b: str = ""

    check_record(Record, [("a", int, 1), ("b", str, "")])
    for rows in ([("a", int, 2), ("b", str, "")], [("a", float, 1), ("b", str, "")], [("b", str, ""), ("a", int, 1)],
                 [("a", int, 1)], [("a", int, 1), ("b", str, ""), ("c", bool, False)]):
        with pytest.raises(AssertionError, match="Record and its table disagree"):
            check_record(Record, rows)


# -- 1. the CLI's flags -------------------------------------------------------------------------


#: Option names that are also QWidget methods: the docker does not shadow them with its controls.
QWIDGET_NAMES = {"style"}


def _inpaint_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["inpaint"]


def test_cli_has_one_flag_per_option_and_no_other_job_flag() -> None:
    actions = {a.dest: a for a in _inpaint_parser()._actions}
    assert set(actions) - {o.name for o in OPTIONS} == {"help", "connect", "image", "mask", "out", "reference", "lora", "timeout"}
    for o in OPTIONS:
        a = actions[o.name]
        assert a.option_strings == [o.cli_flag] and a.default == o.default, o.name
        if o.kind is bool:
            assert isinstance(a, argparse._StoreTrueAction), o.name
        else:
            assert a.type is o.kind and tuple(a.choices or ()) == o.choices, o.name
        low, high = o.bounds(LIMITS)
        assert "{" not in a.help and (o.limit not in ("max_variants",) or f"{low}-{high}" in a.help), o.name


def test_cli_flags_give_job_options() -> None:
    argv = ["--image", "i.png", "--mask", "m.png", "--out", "o.png"]
    assert _job_options(_inpaint_parser().parse_args(argv)) == JobOptions()
    wanted = {"prompt": "a cat", "negative_prompt": "dogs", "seed": 5, "variants": 3, "steps": 7, "guidance_scale": 4.5,
              "strength": 0.5, "scheduler": "ddim", "model": "m", "grow": 1, "feather": 2, "padding": 3,
              "color_match": True, "fill": "blur", "style": "watercolor", "reference_weight": 0.6}
    assert set(wanted) == set(BY_NAME), "give every option a value here"
    for name, value in wanted.items():
        flag = BY_NAME[name].cli_flag
        argv += [flag] if value is True else [flag, str(value)]
    assert _job_options(_inpaint_parser().parse_args(argv)) == JobOptions(**wanted)


# -- 2. the GIMP procedure's arguments ------------------------------------------------------------


def test_gimp_arguments_are_the_tables() -> None:
    args = {a.field: a for a in gimp.ARGS}
    shown = editor.shown_in(GIMP)
    assert {o.name for o in shown} == set(args) - {a.field for a in gimp.EXTRA_ARGS}
    for o in shown:
        a = args[o.name]
        low, high = editor.bounds(o)
        assert (a.name, a.kind, a.label, a.blurb) == (o.name.replace("_", "-"), o.kind.__name__, o.label, o.tip), o.name
        assert (a.default, a.minimum, a.maximum, a.position) == (o.start_value, low, high, o.gimp_position), o.name
    assert [f.name for f in dataclasses.fields(gimp.Options)] == [a.field for a in gimp.ARGS]
    assert gimp.Options().job_options() == {o.name: o.start_value for o in shown}


def test_gimp_arguments_keep_their_positions() -> None:
    """Scripts pass arguments by position: each keeps its place, new ones go last."""
    assert [a.position for a in gimp.ARGS] == list(range(len(gimp.ARGS)))
    assert [a.name for a in gimp.ARGS][:15] == [
        "prompt", "negative-prompt", "variants", "strength", "steps", "seed", "model", "grow", "feather", "padding",
        "endpoint", "sample-merged", "start-daemon", "color-match", "fill"]
    assert sorted(gimp.DIALOG_ORDER) == sorted(a.name for a in gimp.ARGS)


# -- 3. the Krita docker's settings --------------------------------------------------------------


def test_krita_settings_are_the_tables() -> None:
    fields = {f.name: f for f in dataclasses.fields(krita.Settings)}
    types = typing.get_type_hints(krita.Settings)  # the annotations are strings (PEP 563)
    shown = editor.shown_in(KRITA)
    assert {o.name for o in shown} == set(fields) - {name for name, _, _ in krita.EXTRA_SETTINGS}
    for o in shown:
        assert types[o.name] is o.kind and fields[o.name].default == o.start_value, o.name
    assert krita.Settings().job_options() == {o.name: o.start_value for o in shown}
    # the docker makes a control per shown option from the same table (checked inside Krita:
    # tests/krita/test_in_krita.py, test_the_dockers_controls_are_made_from_the_option_table)
    docker = (ROOT / "krita_plugin" / "inpaintd_krita" / "docker.py").read_text(encoding="utf-8")
    assert "editor.shown_in(KRITA)" in docker and "editor.bounds(opt)" in docker
    # ... and declares one attribute per control for type checkers (their classes are
    # checked when a panel is made, inside Krita)
    panel = next(n for n in ast.parse(docker).body if isinstance(n, ast.ClassDef) and n.name == "InpaintPanel")
    declared = [n.target.id for n in panel.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    # (but `style`: QWidget.style() is Qt's; that control is reached through option_widgets)
    assert declared == [o.name for o in shown if o.name not in QWIDGET_NAMES]


@pytest.mark.parametrize("editor_name", [KRITA, GIMP])
def test_editor_values_are_valid_job_options(editor_name: str) -> None:
    """What an editor sends at its starting values, and at the ends of its ranges, passes
    the daemon's validation."""
    shown = editor.shown_in(editor_name)
    parse_options(editor.job_options({}, editor_name))
    for end in (0, 1):
        values = {o.name: editor.bounds(o)[end] for o in shown if o.kind in (int, float)}
        parse_options(editor.job_options(values, editor_name))
    for o in shown:
        for choice in o.choices:
            parse_options(editor.job_options({o.name: choice}, editor_name))


# -- 4. the daemon's validation --------------------------------------------------------------------


def _rejected(body: dict[str, Any], **limits: int) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_options(body, dataclasses.replace(LIMITS, **limits))
    return info.value.code


@pytest.mark.parametrize("opt", NUMBERS, ids=lambda o: o.name)
def test_validation_takes_its_bounds_from_the_table(opt: Option) -> None:
    low, high = opt.bounds(LIMITS)
    for value in (low, high, opt.default):
        assert getattr(parse_options({opt.name: opt.kind(value)}), opt.name) == value
    tiny = 1 if opt.kind is int else 0.001
    assert _rejected({opt.name: opt.kind(low - tiny)}) == "bad_value"
    assert _rejected({opt.name: opt.kind(high + tiny)}) == "bad_value"
    assert _rejected({opt.name: "1"}) == "bad_field_type"
    if opt.limit:  # a daemon's own limits, not the defaults, bound it
        assert _rejected({opt.name: high}, **{opt.limit: int(high) - 1}) == "bad_value"


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.kind in (str, bool)], ids=lambda o: o.name)
def test_validation_of_strings_and_switches(opt: Option) -> None:
    assert _rejected({opt.name: 1}) == "bad_field_type"
    for choice in opt.choices:
        assert getattr(parse_options({opt.name: choice}), opt.name) == choice
    if opt.choices:
        assert _rejected({opt.name: "no-such-" + opt.name}) == "bad_value"
    if opt.limit:
        assert _rejected({opt.name: "x" * 11}, **{opt.limit: 10}) == "too_large"
    if opt.kind is bool:
        assert parse_options({opt.name: not opt.default}).to_wire()[opt.name] is (not opt.default)


# -- 5. the spec ---------------------------------------------------------------------------------


def _spec_rows() -> list[list[str]]:
    start = DOC.index("| option | type | default | range | meaning |")
    table = DOC[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table]


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'`"{value}"`' if isinstance(value, str) else str(value)


def test_spec_lists_the_tables_options_in_its_order() -> None:
    rows = _spec_rows()
    assert [r[0] for r in rows] == [f"`{o.name}`" for o in OPTIONS]
    assert "`OPTIONS` in `options.py`" in DOC


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_spec_row_matches_the_table(opt: Option) -> None:
    name, kind, default, range_, _meaning = next(r for r in _spec_rows() if r[0] == f"`{opt.name}`")
    assert kind.split()[0] == opt.kind.__name__, (opt.name, kind)
    assert default == _fmt(opt.default), (opt.name, default)
    low, high = opt.bounds(LIMITS)
    if opt.kind in (int, float):
        assert re.match(rf"^{re.escape(str(low))} … {re.escape(str(high))}\b", range_), (opt.name, range_)
    if opt.choices:
        assert re.findall(r"`([a-z0-9_]+)`", range_)[: len(opt.choices)] == list(opt.choices), (opt.name, range_)
    limit = opt.bounds(LIMITS)[1] if opt.kind in (int, float) else opt.max_length(LIMITS)
    if opt.limit:
        assert str(limit) in range_, (opt.name, range_)
