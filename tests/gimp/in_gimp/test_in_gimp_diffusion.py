"""In-GIMP tests against a daemon on the tiny random diffusion pipeline (tests/conftest.py's
tiny_daemon): the diffusion path end to end, and a cancel done the way GIMP 3.0.4 does it.

Started by tests/test_gimp_plugin.py::test_diffusion_and_cancel_in_gimp through run.py with
INPAINTD_GIMP_TESTS=test_in_gimp_diffusion.py.  The cancel needs the host: the GIMP root has
no /proc, so the host test kills the plug-in process.  This side writes `cancel-armed` into
$INPAINTD_CI_DIR just before the run to be killed; the host then waits until the daemon runs
a job, SIGKILLs the inpaintd_gimp.py process of this GIMP (what GIMP's progress cancel ends
in: gimp_plug_in_close(plug_in, TRUE)) and checks the daemon's side.  Results go to
$INPAINTD_CI_DIR/diffusion.json for the host test to print.
"""

from __future__ import annotations

import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from test_in_gimp import FEATHER, GROW, LH, LW, PADDING, H, W, check_variant, make_image, read, run_proc  # noqa: E402

CI = os.environ.get("INPAINTD_CI_DIR", "/ci")
SEED = 2024
REPORT: dict = {}


def _save_report():
    with open(os.path.join(CI, "diffusion.json"), "w") as f:
        json.dump(REPORT, f, indent=1)


def _names(image):
    return [layer.get_name() for layer in image.get_layers()]


def test_diffusion_two_variants_fixed_seed():
    image, photo = make_image()
    before = read(photo, 0, 0, LW, LH, "R'G'B'A u8")
    sel_mask = read(image.get_selection(), 0, 0, W, H, "Y u8")
    _, _, sx1, sy1, sx2, sy2 = Gimp.Selection.bounds(image)
    started = time.perf_counter()
    status, message = run_proc(image, [photo], prompt="a red apple", seed=SEED, variants=2, steps=20,
                               grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    REPORT["diffusion_seconds"] = round(time.perf_counter() - started, 3)
    assert status == Gimp.PDBStatusType.SUCCESS, message
    assert read(photo, 0, 0, LW, LH, "R'G'B'A u8") == before, "the source layer changed"
    top = image.get_layers()
    assert [layer.get_name() for layer in top[1:]] == ["photo", "background"]
    assert top[0].is_group() and top[0].get_name() == "Inpaint: a red apple"
    variants = top[0].get_children()
    names = [v.get_name() for v in variants]
    assert names == [f"Variant 1/2 (seed {SEED})", f"Variant 2/2 (seed {SEED + 1})"], names
    changed = [check_variant(v, before, sel_mask, (sx1, sy1, sx2, sy2)) for v in variants]
    assert all(changed), f"the diffusion engine left the selection unchanged in a variant: {changed}"
    pixels = [read(v, 0, 0, v.get_width(), v.get_height(), "R'G'B'A u8") for v in variants]
    assert pixels[0] != pixels[1], "two seeds gave identical variants"
    REPORT["layers"] = [{"name": v.get_name(), "offset": list(v.get_offsets()[1:]),
                         "size": [v.get_width(), v.get_height()]} for v in variants]
    REPORT["changed_inside"] = changed

    # Redo variant #2 from the seed in its name: the same pixels (what the README promises).
    status, message = run_proc(image, [photo], prompt="a red apple", seed=SEED + 1, variants=1, steps=20,
                               grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    assert status == Gimp.PDBStatusType.SUCCESS, message
    top = image.get_layers()  # the new group goes right above the source layer, under the first one
    assert [layer.get_name() for layer in top[2:]] == ["photo", "background"]
    assert top[1].is_group() and top[1].get_name().startswith("Inpaint: a red apple")  # GIMP makes it unique
    assert top[0].get_children()[0].get_name() == names[0]
    redo = top[1].get_children()[0]
    assert redo.get_name() == f"Variant 1/1 (seed {SEED + 1})"
    assert tuple(redo.get_offsets()[1:]) == tuple(variants[1].get_offsets()[1:])
    # The same picture; not always the same bytes: a batch of two and a batch of one run the
    # UNet at different batch sizes, whose float sums may round one 8-bit level apart in a few
    # values (seen: 1 value of ~120,000).  A different seed changes most of them.
    again = read(redo, 0, 0, redo.get_width(), redo.get_height(), "R'G'B'A u8")
    assert len(again) == len(pixels[1])
    diffs = [abs(a - b) for a, b in zip(again, pixels[1], strict=True) if a != b]
    REPORT["redo_differing_values"] = len(diffs)
    assert (max(diffs) if diffs else 0) <= 1 and len(diffs) <= len(again) // 1000, \
        f"the same seed did not give the same result: {len(diffs)} values differ, by up to {max(diffs)}"
    _save_report()
    image.delete()


def test_killed_plugin_cancels_its_job_and_gimp_goes_on():
    image, photo = make_image()
    # a large area, so 150 steps of the tiny model run for several seconds
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 110, 80, 420, 300)
    before = read(photo, 0, 0, LW, LH, "R'G'B'A u8")
    layers_before = _names(image)
    open(os.path.join(CI, "cancel-armed"), "w").close()
    started = time.perf_counter()
    status, message = run_proc(image, [photo], prompt="killed", seed=5, variants=1, steps=150,
                               grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    REPORT["killed_run_seconds"] = round(time.perf_counter() - started, 3)
    REPORT["killed_run_status"] = str(status)
    REPORT["killed_run_message"] = message
    _save_report()
    assert os.path.exists(os.path.join(CI, "killed")), "the host did not kill the plug-in (the run ended first)"
    assert status != Gimp.PDBStatusType.SUCCESS, "the killed run reported success"
    assert _names(image) == layers_before, "the killed run added layers"
    assert read(photo, 0, 0, LW, LH, "R'G'B'A u8") == before

    # GIMP and the plug-in still work: the next run adds its layers
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 250, 190, 110, 80)
    started = time.perf_counter()
    status, message = run_proc(image, [photo], prompt="after", seed=6, variants=1, steps=10,
                               grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    REPORT["next_run_seconds"] = round(time.perf_counter() - started, 3)
    assert status == Gimp.PDBStatusType.SUCCESS, message
    assert _names(image) == ["Inpaint: after"] + layers_before
    assert [v.get_name() for v in image.get_layers()[0].get_children()] == ["Variant 1/1 (seed 6)"]
    _save_report()
    image.delete()
