"""Unit tests of inpaintd_protocol.editor: what both editor plug-ins decide, decided once
(the crop, progress, layer names, option limits and values, the daemon's address)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan, plan_crop
from inpaintd_protocol.messages import DEFAULT_ENDPOINT, ENDPOINT_ENV, LIMITS
from inpaintd_protocol.options import BY_NAME, GIMP, KRITA, OPTIONS
from inpaintd_protocol.rect import Rect

ROOT = Path(__file__).resolve().parent.parent


# -- options ------------------------------------------------------------------------------


def test_shown_in_follows_the_form_order() -> None:
    for name in (KRITA, GIMP):
        shown = editor.shown_in(name)
        assert [o.order for o in shown] == sorted(o.order for o in shown)
        assert {o.name for o in shown} == {o.name for o in OPTIONS if name in o.editors}


def test_bounds_come_from_the_limits_and_fit_an_editors_int() -> None:
    assert editor.bounds(BY_NAME["variants"]) == (1, LIMITS.max_variants)
    assert editor.bounds(BY_NAME["variants"], dataclasses.replace(LIMITS, max_variants=3)) == (1, 3)
    assert editor.bounds(BY_NAME["seed"]) == (-1, 2**31 - 1)  # the protocol allows 2**32 - 1
    assert editor.bounds(BY_NAME["strength"]) == (0.01, 1.0)
    assert editor.bounds(BY_NAME["prompt"]) == (None, None)


def test_choices_pair_values_with_words() -> None:
    fill = editor.choices(BY_NAME["fill"])
    assert [v for v, _ in fill] == list(BY_NAME["fill"].choices) and fill[0][1].startswith("Auto")
    assert editor.choices(BY_NAME["scheduler"])[0] == ("default", "Default (the model's own)")


def test_check_names_each_problem() -> None:
    assert editor.check({}, GIMP) == []
    problems = editor.check({"variants": 0, "strength": "x", "fill": "lama", "prompt": "p" * 5000}, GIMP)
    assert any("Variants must be at least 1" in p for p in problems)
    assert any("Strength must be a number" in p for p in problems)
    assert any("Start with 'lama' is not one of auto" in p for p in problems)
    assert any("Prompt has 5000 characters" in p for p in problems)
    assert editor.check({"color_match": 1}, KRITA) == ["Fix color cast must be on or off, got 1"]


def test_job_options_strip_clamp_and_fall_back() -> None:
    opts = editor.job_options({"prompt": " a cat ", "variants": 99, "strength": 0, "fill": "", "seed": None,
                               "steps": True}, KRITA)
    assert opts["prompt"] == "a cat" and opts["variants"] == LIMITS.max_variants and opts["strength"] == 0.01
    assert opts["fill"] == "auto" and opts["seed"] == -1 and opts["steps"] == 0
    assert set(opts) == {o.name for o in editor.shown_in(KRITA)}
    assert isinstance(opts["strength"], float) and isinstance(opts["variants"], int)


# -- the crop -----------------------------------------------------------------------------


def test_small_canvas_is_sent_whole() -> None:
    plan = plan_crop(Rect(10, 10, 20, 20), Rect(0, 0, 300, 200), 8, 16, -1)
    assert plan == CropPlan(selection=Rect(10, 10, 20, 20), crop=Rect(0, 0, 300, 200))


def test_large_canvas_gives_a_crop_with_room_for_the_daemons_context() -> None:
    sel = Rect(3000, 2000, 300, 200)
    crop = plan_crop(sel, Rect(0, 0, 6000, 4000), 8, 16, -1).crop
    assert crop.contains(sel.expand(8 + 16 + 300))  # automatic padding: the longer side
    assert crop.width >= editor.MIN_CONTEXT_SIDE and crop.height >= editor.MIN_CONTEXT_SIDE
    assert crop.area * 10 < 6000 * 4000 and Rect(0, 0, 6000, 4000).contains(crop)


def test_min_side_is_centred_and_kept_inside() -> None:
    canvas = Rect(0, 0, 5000, 5000)
    assert plan_crop(Rect(0, 0, 10, 10), canvas, 0, 0, 0).crop == Rect(0, 0, 1024, 1024)
    assert plan_crop(Rect(4990, 4990, 10, 10), canvas, 0, 0, 0).crop == Rect(5000 - 1024, 5000 - 1024, 1024, 1024)
    assert plan_crop(Rect(2500, 2500, 10, 10), canvas, 0, 0, 0, min_side=100).crop == Rect(2455, 2455, 100, 100)


def test_explicit_padding_is_honoured() -> None:
    sel = Rect(2000, 2000, 100, 100)
    assert plan_crop(sel, Rect(0, 0, 8000, 8000), 0, 0, 1500, min_side=0).crop == sel.expand(1500)
    assert plan_crop(sel, Rect(0, 0, 8000, 8000), 4, 8, 20, min_side=0).crop == sel.expand(32)


def test_selection_is_clipped_to_where_there_are_pixels() -> None:
    plan = plan_crop(Rect(-500, -500, 700, 700), Rect(0, 0, 4000, 4000), 0, 0, 0, min_side=0)
    assert plan.selection == Rect(0, 0, 200, 200) and plan.crop == Rect(0, 0, 200, 200)
    layer = Rect(100, 50, 400, 300)  # a layer with fixed bounds, at an offset
    plan = plan_crop(Rect(0, 0, 200, 120), Rect(0, 0, 640, 480), 0, 0, 0, source=layer, min_side=0)
    assert plan.selection == Rect(100, 50, 100, 70) and plan.crop == plan.selection
    assert plan_crop(Rect(0, 0, 200, 120), Rect(0, 0, 640, 480), 4, 4, 4, source=layer).crop == layer
    assert plan_crop(Rect(5000, 0, 10, 10), Rect(0, 0, 4000, 4000), 8, 16, -1) is None
    assert plan_crop(Rect(0, 0, 90, 40), Rect(0, 0, 640, 480), 8, 16, -1, source=layer) is None


def test_a_plan_maps_results_and_layer_coordinates() -> None:
    plan = CropPlan(selection=Rect(1100, 2100, 50, 50), crop=Rect(1000, 2000, 800, 600))
    assert plan.place(10, 20, 100, 50) == Rect(1010, 2020, 100, 50)
    assert plan.place(0, 0, 800, 600) == plan.crop
    assert plan.crop_from(900, 1900) == Rect(100, 100, 800, 600)


@pytest.mark.parametrize("x,y,w,h", [(-1, 0, 10, 10), (0, -1, 10, 10), (795, 0, 10, 10), (0, 0, 800, 601)])
def test_a_result_outside_the_sent_image_is_refused(x: int, y: int, w: int, h: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        CropPlan(selection=Rect(0, 0, 1, 1), crop=Rect(0, 0, 800, 600)).place(x, y, w, h)


def test_mask_selects() -> None:
    assert not editor.mask_selects(b"") and not editor.mask_selects(bytes(100))
    assert editor.mask_selects(bytes(99) + b"\x01") and editor.mask_selects(memoryview(bytearray(b"\0\2")))


def test_no_plugin_has_a_crop_rule_of_its_own() -> None:
    """The crop is decided in editor.plan_crop only: the plug-ins grow, clip or centre no
    rectangle themselves."""
    sources = [*ROOT.joinpath("krita_plugin").rglob("*.py"), *ROOT.joinpath("gimp_plugin").rglob("*.py")]
    found = [(p.name, m) for p in sources for m in re.findall(r"\.expand\(|\.intersect\(|MIN_CONTEXT_SIDE|min_side",
                                                               p.read_text(encoding="utf-8"))]
    assert not found, found


# -- progress -----------------------------------------------------------------------------


def test_progress_never_goes_back_over_a_job() -> None:
    seq = [("submitting", 0, 0), ("queued", 0, 0), ("loading", 0, 1), ("loading", 1, 1), ("preparing", 0, 0),
           ("encoding", 0, 0)]
    seq += [("denoising", s, 20) for s in range(21)] + [("decoding", 0, 0), ("compositing", 0, 0), ("done", 0, 0)]
    fractions = [editor.progress_fraction(*s) for s in seq]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    percents = [editor.progress_percent(*s) for s in seq]
    assert percents == sorted(percents) and percents[-1] == 100
    assert editor.progress_percent("denoising", 10, 20) == 52  # 15 + 75 / 2, rounded down
    assert editor.progress_percent("decoding") == 90 and editor.progress_percent("loading", 1, 1) == 10


def test_progress_text() -> None:
    assert editor.progress_text("denoising", 3, 20) == "Denoising 3/20"
    assert editor.progress_text("denoising", 30, 20) == "Denoising 20/20"
    assert editor.progress_text("queued", position=2) == "Queued: 2 jobs ahead"
    assert editor.progress_text("queued", position=1) == "Queued: 1 job ahead"
    assert editor.progress_text("queued") == "Queued"
    assert editor.progress_text("loading", 0, 1) == "Loading…"  # steps only mean something while denoising
    assert editor.progress_text("submitting") == "Sending…" and editor.progress_text("done") == "Done"
    assert editor.progress_text("") == "Working…"


def test_shown_stage() -> None:
    assert editor.shown_stage("submitting", "") == "submitting"
    assert editor.shown_stage("queued", "queued") == "queued"
    assert editor.shown_stage("running", "denoising") == "denoising"
    assert editor.shown_stage("done", "compositing") == "done"


# -- names --------------------------------------------------------------------------------


def test_group_and_variant_names() -> None:
    assert editor.group_name("  a  red\nsaucer ") == "Inpaint: a red saucer"
    assert editor.group_name("") == "Inpaint: (no prompt)"
    long = editor.group_name("x" * 100)
    assert long.endswith("…") and len(long) == len("Inpaint: ") + 40
    assert editor.variant_name(0, 3, 123456) == "Variant 1/3 (seed 123456)"
    assert editor.variant_name(1, 2, 77) == "Variant 2/2 (seed 77)"


# -- the daemon's address -------------------------------------------------------------------


def test_endpoint_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INPAINTD_CONNECTION_FILE", raising=False)
    monkeypatch.setenv(ENDPOINT_ENV, "tcp://10.0.0.2:2")
    assert editor.daemon_endpoint(" tcp://10.0.0.1:1 ") == "tcp://10.0.0.1:1"
    assert editor.daemon_endpoint("  ") == "tcp://10.0.0.2:2"
    monkeypatch.setenv(ENDPOINT_ENV, "")
    assert editor.daemon_endpoint("") == DEFAULT_ENDPOINT
    assert editor.endpoint_problem("") is None and editor.endpoint_problem("ipc:///tmp/x") is None
    problem = editor.endpoint_problem("localhost:7415")
    assert problem.startswith("Daemon address: 'localhost:7415' is not a ZeroMQ endpoint") and "empty" in problem
    assert editor.endpoint_problem("tcp://127.0.0.1:70000")
    with pytest.raises(ValueError):
        editor.daemon_endpoint("nonsense")


def test_only_a_local_daemon_can_be_started() -> None:
    assert editor.can_start_daemon("tcp://127.0.0.1:7415") and editor.can_start_daemon("tcp://localhost:1")
    assert editor.can_start_daemon("tcp://[::1]:7415") and editor.can_start_daemon("ipc:///tmp/inpaintd")
    assert not editor.can_start_daemon("tcp://10.0.0.2:7415") and not editor.can_start_daemon("tcp://*:7415")
