"""In-GIMP tests of the artist's loop against a daemon on the tiny diffusion pipeline:
result layers carry a parasite naming their job; Vary Result (Vary Subtle, Remix, and a
job the daemon no longer knows, whose pixels are sent); a job with the shipped style
"Quick draft"; Bring Back from History.

Started by tests/test_gimp_plugin.py::test_artists_loop_in_gimp through run.py with
INPAINTD_GIMP_TESTS=test_in_gimp_loop.py.  The tests run in file order and share the image
and the jobs of the first one (a loop is a sequence).  The daemon is asked directly, with
the client the plug-in installed, what it recorded.  Results go to
$INPAINTD_CI_DIR/loop.json for the host test to print.
"""

from __future__ import annotations

import json
import os
import sys
import time

import gi
import pytest

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio  # noqa: E402
from test_in_gimp import FEATHER, GROW, LH, LW, PADDING, H, W, call, check_variant, make_image, read  # noqa: E402

sys.path.insert(0, os.path.join(os.environ.get("HOME", "/root"), ".config", "GIMP", "3.0", "plug-ins", "inpaintd_gimp"))
from inpaintd_protocol import Client  # noqa: E402  (the client the plug-in installed)

CI = os.environ.get("INPAINTD_CI_DIR", "/ci")
INPAINT = "python-fu-inpaintd-inpaint-selection"
VARY = "python-fu-inpaintd-vary"
HISTORY = "python-fu-inpaintd-history"
PROMPT = "a red apple on the loop"
SEED = 77
STEPS = 8
RGBA = "R'G'B'A u8"
STATE: dict = {}
REPORT: dict = {}


def _save_report():
    with open(os.path.join(CI, "loop.json"), "w") as f:
        json.dump(REPORT, f, indent=1)




def record(item):
    parasite = item.get_parasite("inpaintd-result")
    assert parasite is not None, f"'{item.get_name()}' carries no inpaintd-result parasite"
    return json.loads(bytes(parasite.get_data()).decode("utf-8"))


def group_of(image, job):
    """The top-level layer group holding job `job`'s layers (by its parasite), and the layer below it."""
    top = image.get_layers()
    for i, layer in enumerate(top):
        if layer.is_group() and layer.get_parasite("inpaintd-result") and record(layer)["job"] == job:
            return layer, (top[i + 1] if i + 1 < len(top) else None)
    raise AssertionError(f"no group of job {job} among {[layer.get_name() for layer in top]}")


def pixels(layer):
    return read(layer, 0, 0, layer.get_width(), layer.get_height(), RGBA)


def offsets(layer):
    return tuple(layer.get_offsets()[1:])


def client():
    return Client(os.environ["INPAINTD_ENDPOINT"], name="in-gimp-loop-test")


def entry_of(job):
    with client() as c:
        for offset in range(0, 1000, 100):
            page = c.history(offset=offset, limit=100)
            for e in page["entries"]:
                if e["job"] == job:
                    return e
            if offset + 100 >= page["total"]:
                break
    raise AssertionError(f"job {job} is not in the daemon's history")


def job_args(**values):
    return dict(dict(grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False, steps=STEPS), **values)


def test_result_layers_carry_their_job():
    image, photo = make_image()
    STATE.update(image=image, photo=photo, photo_pixels=read(photo, 0, 0, LW, LH, RGBA),
                 sel_mask=read(image.get_selection(), 0, 0, W, H, "Y u8"),
                 bounds=tuple(Gimp.Selection.bounds(image)[2:]))
    status, values = call(INPAINT, image, [photo], **job_args(prompt=PROMPT, seed=SEED, variants=2))
    assert status == Gimp.PDBStatusType.SUCCESS, values
    settings, job = values
    assert len(job) == 16 and settings.endswith(f"{STEPS} steps, guidance 7.5, strength 1"), values
    group = image.get_layers()[0]
    variants = group.get_children()
    assert group.get_name() == f"Inpaint: {PROMPT}" and len(variants) == 2
    assert record(group)["job"] == job and record(group)["variant"] == -1 and record(group)["variants"] == 2
    crop = None
    for i, v in enumerate(variants):
        r = record(v)
        assert (r["job"], r["variant"], r["seed"]) == (job, i, SEED + i), r
        assert (r["x"] + r["origin"][0], r["y"] + r["origin"][1]) == offsets(v), (r, offsets(v))
        assert r["options"]["prompt"] == PROMPT and r["options"]["steps"] == STEPS
        crop = crop or tuple(r["origin"])
    assert crop == (96, 64), crop  # the crop sent: the photo layer (make_image's LX, LY)
    jobs = json.loads(bytes(image.get_parasite("inpaintd-jobs").get_data()).decode())
    assert jobs[job] == list(crop)

    # the parasites are saved in .xcf
    path = os.path.join(CI, "loop.xcf")
    assert Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(path), None)
    again = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
    assert [record(v) for v in again.get_layers()[0].get_children()] == [record(v) for v in variants]
    assert again.get_parasite("inpaintd-jobs") is not None
    again.delete()
    STATE.update(job=job, group=group, variants=variants, original=[pixels(v) for v in variants],
                 original_offsets=[offsets(v) for v in variants], original_names=[v.get_name() for v in variants])
    REPORT["job"] = job
    REPORT["parasite"] = record(variants[1])
    _save_report()


def test_vary_subtle_makes_new_variants_in_place():
    image, source = STATE["image"], STATE["variants"][1]
    before = pixels(source)
    status, values = call(VARY, image, [source], preset="subtle", variants=2)
    assert status == Gimp.PDBStatusType.SUCCESS, values
    (job,) = values
    group, below = group_of(image, job)
    assert group.get_name() == f"Vary (subtle): {PROMPT}"
    assert below.get_id() == STATE["group"].get_id(), "the vary's group goes right above the result's group"
    assert pixels(source) == before and offsets(source) == STATE["original_offsets"][1], "the source layer changed"
    new = group.get_children()
    seeds = [record(v)["seed"] for v in new]
    assert [v.get_name() for v in new] == [f"Variant {i + 1}/2 (seed {s})" for i, s in enumerate(seeds)]
    assert SEED + 1 not in seeds, f"a vary takes new seeds, got {seeds}"
    for v in new:
        assert record(v)["job"] == job
        assert offsets(v) == offsets(source) and (v.get_width(), v.get_height()) == (source.get_width(), source.get_height())
        # every pixel outside the mask's reach is the photo's, as in the result it came from
        check_variant(v, STATE["photo_pixels"], STATE["sel_mask"], STATE["bounds"])
        assert pixels(v) != before, "the vary returned the result unchanged"
    entry = entry_of(job)
    assert (entry["kind"], entry["parent"], entry["parent_variant"]) == ("vary", STATE["job"], 1), entry
    assert entry["options"]["strength"] == pytest.approx(0.35) and entry["prompt"] == PROMPT
    STATE["vary_job"] = job
    REPORT["vary"] = {"job": job, "seeds": seeds, "offsets": [offsets(v) for v in new]}
    _save_report()


def test_remix_with_a_new_prompt():
    image, source = STATE["image"], STATE["variants"][0]
    status, values = call(VARY, image, [source], preset="strong", prompt="a green pear", variants=1, seed=5)
    assert status == Gimp.PDBStatusType.SUCCESS, values
    (job,) = values
    group, below = group_of(image, job)
    assert group.get_name() == "Remix: a green pear" and below.get_id() == STATE["group"].get_id()
    (layer,) = group.get_children()
    assert layer.get_name() == "Variant 1/1 (seed 5)" and offsets(layer) == offsets(source)
    assert record(layer)["options"]["prompt"] == "a green pear"
    entry = entry_of(job)
    assert entry["prompt"] == "a green pear" and entry["options"]["strength"] == pytest.approx(0.7), entry
    assert entry["seeds"] == [5] and entry["parent"] == STATE["job"] and entry["parent_variant"] == 0
    STATE["remix_job"] = job
    REPORT["remix"] = job
    _save_report()


def test_vary_of_a_group_takes_its_top_visible_variant():
    image = STATE["image"]
    group = STATE["group"]
    STATE["variants"][0].set_visible(False)
    status, values = call(VARY, image, [group], preset="subtle", variants=1, seed=9)
    STATE["variants"][0].set_visible(True)
    assert status == Gimp.PDBStatusType.SUCCESS, values
    assert entry_of(values[0])["parent_variant"] == 1


def test_vary_needs_a_result_layer():
    image, photo = STATE["image"], STATE["photo"]
    layers = len(image.get_layers())
    status, message = call(VARY, image, [photo], preset="subtle")
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "'photo' is not a result of inpaintd: select one of the variant layers" in message, message
    assert len(image.get_layers()) == layers


def test_vary_sends_the_pixels_of_a_job_the_daemon_does_not_know():
    """A result whose job the daemon no longer has (here: a record naming a job it never
    had, as after its history evicted it): the layer's pixels and the selection travel."""
    image, source = STATE["image"], STATE["variants"][1]
    copy = source.copy()
    image.insert_layer(copy, None, 0)
    rec = dict(record(source), job="0123456789abcdef")
    copy.attach_parasite(Gimp.Parasite.new("inpaintd-result", Gimp.PARASITE_PERSISTENT, json.dumps(rec).encode()))
    status, values = call(VARY, image, [copy], preset="subtle", variants=1, seed=3)
    assert status == Gimp.PDBStatusType.SUCCESS, values
    group, below = group_of(image, values[0])
    assert below.get_id() == copy.get_id()
    (layer,) = group.get_children()
    assert layer.get_name() == "Variant 1/1 (seed 3)" and offsets(layer) == offsets(source)
    check_variant(layer, STATE["photo_pixels"], STATE["sel_mask"], STATE["bounds"])
    entry = entry_of(values[0])
    assert entry["kind"] == "vary" and entry["prompt"] == PROMPT and entry["options"]["steps"] == STEPS, entry

    Gimp.Selection.none(image)  # without a selection there is nothing to say what to repaint
    status, message = call(VARY, image, [copy], preset="subtle", variants=1)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 250, 190, 110, 80)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "select the area to repaint" in message, message


def test_a_style_job_runs_with_the_styles_steps():
    """"Quick draft" sets 8 steps where the job leaves Steps at auto: the plug-in sends
    steps 0 with the style (not the model's 20), says 8 steps, and the daemon runs 8."""
    image, photo = STATE["image"], STATE["photo"]
    status, values = call(INPAINT, image, [photo], **job_args(prompt="a quick sketch", seed=1, variants=1, steps=0,
                                                              style="Quick draft"))
    assert status == Gimp.PDBStatusType.SUCCESS, values
    settings, job = values
    assert settings.endswith(": 8 steps, guidance 7.5, strength 1"), settings
    entry = entry_of(job)
    assert entry["options"]["style"] == "Quick draft" and entry["options"]["steps"] == 0, entry
    with client() as c:  # the same job again: the daemon reports how many steps it runs
        again = c.rerun(job)
        totals = set()
        c.wait(again, timeout=120, on_event=lambda j, _msg: totals.add(j.total_steps))
    assert max(totals) == 8, totals
    STATE["newest"] = again.id
    REPORT["style"] = {"job": job, "settings": settings, "total_steps": sorted(totals)}
    _save_report()


def test_bring_back_from_history():
    image = STATE["image"]
    image.remove_layer(STATE["group"])  # the artist threw the result away
    with client() as c:  # the daemon keeps results for `fetch` 2 s here: it answers from the history's files
        deadline = time.monotonic() + 30
        while "from the history" not in " ".join(c.fetch(STATE["job"]).result.get("notes") or []):
            assert time.monotonic() < deadline, "the daemon still answers from its kept results"
            time.sleep(0.5)
    status, values = call(HISTORY, image, [STATE["photo"]], job=STATE["job"])
    assert status == Gimp.PDBStatusType.SUCCESS, values
    assert values == [STATE["job"]]
    group, below = group_of(image, STATE["job"])
    assert group.get_name() == f"Inpaint: {PROMPT}" and below.get_id() == STATE["photo"].get_id()
    back = group.get_children()
    assert [v.get_name() for v in back] == STATE["original_names"]
    assert [offsets(v) for v in back] == STATE["original_offsets"]
    assert [pixels(v) for v in back] == STATE["original"], "the layers brought back differ from the result"
    assert record(back[1])["job"] == STATE["job"] and record(back[1])["variant"] == 1

    # the newest entry, a unique start of the id, the search text
    status, values = call(HISTORY, image, [])
    assert status == Gimp.PDBStatusType.SUCCESS and values == [STATE["newest"]], values
    status, values = call(HISTORY, image, [], job=STATE["job"][:10])
    assert status == Gimp.PDBStatusType.SUCCESS and values == [STATE["job"]], values
    status, values = call(HISTORY, image, [], search="GREEN pear")
    assert status == Gimp.PDBStatusType.SUCCESS and values == [STATE["remix_job"]], values
    status, values = call(HISTORY, image, [], search="no such prompt anywhere")
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "no entry" in values.lower(), values

    # in another image, on a layer of the crop's size: placed on that layer
    other, photo = make_image()
    status, values = call(HISTORY, other, [photo], job=STATE["job"])
    assert status == Gimp.PDBStatusType.SUCCESS, values
    assert [offsets(v) for v in group_of(other, STATE["job"])[0].get_children()] == STATE["original_offsets"]
    other.delete()
    REPORT["brought_back"] = STATE["job"]
    _save_report()
    image.delete()
