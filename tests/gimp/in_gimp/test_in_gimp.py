"""Tests that run inside GIMP 3 (gimp-console, python-fu-eval), against a real daemon.

Started by tests/test_gimp_plugin.py through tests/gimp/in_gimp/run.py; pytest here is
GIMP's own (Debian's python3-pytest in the GIMP root).  The daemon's address and key
arrive in INPAINTD_ENDPOINT / INPAINTD_KEY.  Images are built from the bundled photo
(backend/inpaintd/assets/coffee.jpg, copied beside this file as photo.jpg) so the engine sees real texture.
"""

from __future__ import annotations

import json
import os
import time

import gi
import pytest

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

PROC = "python-fu-inpaintd-inpaint-selection"
PHOTO = os.path.join(os.environ.get("INPAINTD_CI_DIR", "/ci"), "photo.jpg")
W, H = 640, 480  # image
LX, LY, LW, LH = 96, 64, 448, 336  # the photo layer: non-zero offsets, smaller than the image
SEL = (250, 190, 110, 80)  # ellipse in image coordinates, inside the layer
SEL_FEATHER = 10
GROW, FEATHER, PADDING = 4, 8, 24


def rect(x, y, w, h):
    return Gegl.Rectangle.new(x, y, w, h)


def read(drawable, x, y, w, h, fmt):
    return bytes(drawable.get_buffer().get(rect(x, y, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


def make_image(select: bool = True):
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    bg = Gimp.Layer.new(image, "background", W, H, Gimp.ImageType.RGB_IMAGE, 100, Gimp.LayerMode.NORMAL)
    image.insert_layer(bg, None, 0)
    bg.fill(Gimp.FillType.WHITE)
    photo = Gimp.Layer.new(image, "photo", LW, LH, Gimp.ImageType.RGB_IMAGE, 100, Gimp.LayerMode.NORMAL)
    image.insert_layer(photo, None, 0)
    photo.set_offsets(LX, LY)
    pixels = Image.open(PHOTO).convert("RGB").resize((LW, LH)).tobytes()
    buf = photo.get_buffer()
    buf.set(rect(0, 0, LW, LH), "R'G'B' u8", pixels)
    buf.flush()
    photo.update(0, 0, LW, LH)
    if select:
        image.select_ellipse(Gimp.ChannelOps.REPLACE, *SEL)
        Gimp.Selection.feather(image, SEL_FEATHER)
    return image, photo


def call(procedure, image, drawables, **values):
    """Run `procedure` non-interactively: (status, the return values after it or the error message).
    (Not `name`: the train procedure has an argument of that name.)"""
    proc = Gimp.get_pdb().lookup_procedure(procedure)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for key, value in values.items():
        config.set_property(key.replace("_", "-"), value)
    result = proc.run(config)
    status = result.index(0)
    rest = [result.index(i) for i in range(1, result.length())]
    if status != Gimp.PDBStatusType.SUCCESS:
        return status, rest[0] if rest else ""
    return status, rest


def run_proc(image, drawables, **values):
    """Inpaint Selection: (status, the error message, "" on success)."""
    status, rest = call(PROC, image, drawables, **values)
    return status, rest if status != Gimp.PDBStatusType.SUCCESS else ""


def check_variant(v, before, sel_mask, bounds, grow=GROW, feather=FEATHER, padding=PADDING):
    """Check one result layer made from the photo layer of make_image(): placed over the
    selection, inside the layer, no larger than selection + grow + feather + padding, and
    pixel-identical to the source (`before`, the layer's RGBA bytes) everywhere outside the
    selection dilated by the daemon's grow + feather.  Returns how many fully selected
    pixels it changed."""
    sx1, sy1, sx2, sy2 = bounds
    reach = grow + feather + 1
    touched = Image.frombytes("L", (W, H), sel_mask).point(lambda p: 255 if p else 0)
    touched = touched.filter(ImageFilter.MaxFilter(2 * reach + 1)).tobytes()
    _, vx, vy = v.get_offsets()
    vw, vh = v.get_width(), v.get_height()
    margin = grow + feather + padding + 16
    assert LX <= vx and LY <= vy and vx + vw <= LX + LW and vy + vh <= LY + LH, (vx, vy, vw, vh)
    assert vx <= sx1 and vy <= sy1 and vx + vw >= sx2 and vy + vh >= sy2, (vx, vy, vw, vh)
    assert vx >= sx1 - margin and vy >= sy1 - margin and vx + vw <= sx2 + margin and vy + vh <= sy2 + margin
    out = read(v, 0, 0, vw, vh, "R'G'B'A u8")
    diffs_outside = changed_inside = 0
    for row in range(vh):
        iy = vy + row
        for col in range(vw):
            ix = vx + col
            o = (row * vw + col) * 4
            s = ((iy - LY) * LW + (ix - LX)) * 4
            same = out[o:o + 4] == before[s:s + 4]
            if touched[iy * W + ix] == 0:
                diffs_outside += not same
            elif sel_mask[iy * W + ix] == 255:
                changed_inside += not same
    assert diffs_outside == 0, f"{v.get_name()}: {diffs_outside} pixels changed outside the selection's reach"
    return changed_inside


def test_registered_with_menu_and_arguments():
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    assert proc is not None
    assert "<Image>/Filters/AI" in proc.get_menu_paths()
    names = [a.name for a in proc.get_arguments()]
    # in their positions (scripts pass them by position), after GIMP's run-mode, image and drawables
    assert names[-18:] == ["prompt", "negative-prompt", "variants", "strength", "steps", "seed", "model",
                           "grow", "feather", "padding", "endpoint", "sample-merged", "start-daemon",
                           "color-match", "fill", "guidance-scale", "style", "loras"], names
    seed = next(a for a in proc.get_arguments() if a.name == "seed")
    assert (seed.minimum, seed.maximum, seed.default_value) == (-1, 2**31 - 1, -1)  # the protocol's table, in 32 bits
    assert [v.name for v in proc.get_return_values()] == ["job-settings", "job-id"]


def test_the_artists_loop_procedures_are_registered():
    vary = Gimp.get_pdb().lookup_procedure("python-fu-inpaintd-vary")
    history = Gimp.get_pdb().lookup_procedure("python-fu-inpaintd-history")
    assert vary is not None and history is not None
    assert "<Image>/Filters/AI" in vary.get_menu_paths() and "<Image>/Filters/AI" in history.get_menu_paths()
    assert [a.name for a in vary.get_arguments()][-5:] == ["preset", "prompt", "variants", "seed", "endpoint"]
    assert [a.name for a in history.get_arguments()][-3:] == ["job", "search", "endpoint"]
    preset = next(a for a in vary.get_arguments() if a.name == "preset")
    assert Gimp.param_spec_choice_get_choice(preset).list_nicks() == ["subtle", "strong"]
    assert Gimp.param_spec_choice_get_default(preset) == "subtle"
    assert [v.name for v in vary.get_return_values()] == [v.name for v in history.get_return_values()] == ["job-id"]
    train = Gimp.get_pdb().lookup_procedure("python-fu-inpaintd-train")  # Teach Subject from Layers (#12)
    assert train is not None and "<Image>/Filters/AI" in train.get_menu_paths()
    assert [a.name for a in train.get_arguments()][-7:] == ["token", "class-noun", "name", "steps", "resolution",
                                                            "model", "endpoint"]
    assert [v.name for v in train.get_return_values()] == ["lora-name", "job-id"]


def test_inpaint_feathered_selection_adds_exact_layers():
    image, photo = make_image()
    before = read(photo, 0, 0, LW, LH, "R'G'B'A u8")
    sel_mask = read(image.get_selection(), 0, 0, W, H, "Y u8")
    _, _, sx1, sy1, sx2, sy2 = Gimp.Selection.bounds(image)

    started = time.perf_counter()
    status, message = run_proc(image, [photo], prompt="a plain wooden table", seed=1234, variants=2,
                               grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    elapsed = time.perf_counter() - started
    assert status == Gimp.PDBStatusType.SUCCESS, message

    # the source layer is untouched
    assert read(photo, 0, 0, LW, LH, "R'G'B'A u8") == before
    assert photo.get_offsets()[1:] == (LX, LY)

    top = image.get_layers()
    assert [layer.get_name() for layer in top[1:]] == ["photo", "background"]
    group = top[0]
    assert group.is_group() and group.get_name() == "Inpaint: a plain wooden table"
    variants = group.get_children()
    assert len(variants) == 2
    names = [v.get_name() for v in variants]
    assert names[0] == "Variant 1/2 (seed 1234)", names
    assert names[1].startswith("Variant 2/2 (seed "), names
    report = {"procedure_seconds": round(elapsed, 3), "selection_bounds": [sx1, sy1, sx2, sy2], "layers": []}

    changed_inside = 0
    for v in variants:
        changed_inside += check_variant(v, before, sel_mask, (sx1, sy1, sx2, sy2))
        _, vx, vy = v.get_offsets()
        report["layers"].append({"name": v.get_name(), "offset": [vx, vy], "size": [v.get_width(), v.get_height()]})
    assert changed_inside > 0, "the engine changed nothing inside the selection"
    report["changed_inside"] = changed_inside
    with open(os.path.join(os.environ.get("INPAINTD_CI_DIR", "/ci"), "report.json"), "w") as f:
        json.dump(report, f)
    image.delete()


def test_no_selection_gives_message_and_sends_nothing():
    image, photo = make_image(select=False)
    status, message = run_proc(image, [photo], prompt="x", start_daemon=False)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "needs a selection" in message
    assert len(image.get_layers()) == 2
    image.delete()


def test_channel_is_refused():
    image, photo = make_image()
    channel = Gimp.Channel.new(image, "c", W, H, 50.0, Gegl.Color.new("red"))
    image.insert_channel(channel, None, 0)
    status, message = run_proc(image, [channel], prompt="x", start_daemon=False)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "not on a channel" in message
    assert len(image.get_layers()) == 2
    image.delete()


def test_missing_daemon_says_how_to_start_it():
    image, photo = make_image()
    status, message = run_proc(image, [photo], prompt="x", endpoint="tcp://127.0.0.1:9", start_daemon=False)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "inpaintd serve --bind tcp://127.0.0.1:9" in message
    assert len(image.get_layers()) == 2
    image.delete()


def test_visible_composite_from_a_group():
    image, photo = make_image()
    group = Gimp.GroupLayer.new(image, "g")
    image.insert_layer(group, None, 0)
    image.reorder_item(photo, group, 0)
    status, message = run_proc(image, [group], prompt="cup", seed=7, variants=1, sample_merged=True,
                               start_daemon=False)
    assert status == Gimp.PDBStatusType.SUCCESS, message
    assert image.get_layers()[0].get_name() == "Inpaint: cup"
    assert len(Gimp.get_images()) >= 1 and image in Gimp.get_images()
    image.delete()


@pytest.mark.parametrize("bad", [{"endpoint": "localhost:7415"}])
def test_bad_options_are_refused(bad):
    image, photo = make_image()
    status, message = run_proc(image, [photo], prompt="x", start_daemon=False, **bad)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "not a ZeroMQ endpoint" in message
    image.delete()
