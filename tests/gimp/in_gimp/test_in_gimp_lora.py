"""In-GIMP tests of LoRAs and Teach Subject from Layers (#12) against a daemon on the tiny
diffusion pipeline whose LoRA folder holds `ink` (a random LoRA for it, sidecar weight 0.5)
and `xl_only` (an SDXL one: the wrong family).

Started by tests/test_gimp_plugin.py::test_loras_and_training_in_gimp through run.py with
INPAINTD_GIMP_TESTS=test_in_gimp_lora.py.  The tests run in file order.  The last one is
killed from the host, as GIMP kills a plug-in on a progress-bar cancel: it writes
`train-cancel-armed` into $INPAINTD_CI_DIR, the host SIGKILLs the plug-in once the daemon
runs its training, writes `killed`, and checks that the watchdog cancelled the training.
Results go to $INPAINTD_CI_DIR/lora.json for the host test to print.
"""

from __future__ import annotations

import json
import os
import sys

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp  # noqa: E402
from test_in_gimp import FEATHER, GROW, LH, LW, PADDING, call, make_image, read, rect  # noqa: E402

sys.path.insert(0, os.path.join(os.environ.get("HOME", "/root"), ".config", "GIMP", "3.0", "plug-ins", "inpaintd_gimp"))
from inpaintd_protocol import Client  # noqa: E402  (the client the plug-in installed)

CI = os.environ.get("INPAINTD_CI_DIR", "/ci")
INPAINT = "python-fu-inpaintd-inpaint-selection"
TRAIN = "python-fu-inpaintd-train"
RGBA = "R'G'B'A u8"
REPORT: dict = {}


def _save_report():
    with open(os.path.join(CI, "lora.json"), "w") as f:
        json.dump(REPORT, f, indent=1)




def client():
    return Client(os.environ["INPAINTD_ENDPOINT"], name="in-gimp-lora-test")


def inpaint(image, photo, loras="", prompt="a cat"):
    """One variant of a fixed seed with `loras`; its pixels (or the error message)."""
    status, out = call(INPAINT, image, [photo], prompt=prompt, seed=31, variants=1, steps=4, grow=GROW,
                       feather=FEATHER, padding=PADDING, start_daemon=False, loras=loras)
    if status != Gimp.PDBStatusType.SUCCESS:
        return status, out
    top = image.get_layers()  # the new group is right above the source layer
    group = top[top.index(photo) - 1]
    variant = group.get_children()[0]
    pixels = read(variant, 0, 0, variant.get_width(), variant.get_height(), RGBA)
    image.remove_layer(group)
    return status, pixels


def test_a_lora_changes_the_pixels_weight_zero_does_not():
    image, photo = make_image()
    before = read(photo, 0, 0, LW, LH, RGBA)
    results = {}
    for key, loras, prompt in [("base", "", "a cat"), ("ink", "ink:1", "a cat"), ("zero", " ink:0 ", "a cat"),
                               ("tag", "", "a cat <lora:ink:1>"), ("default", "ink", "a cat"),
                               ("half", "ink:0.5", "a cat")]:
        status, out = inpaint(image, photo, loras, prompt)
        assert status == Gimp.PDBStatusType.SUCCESS, (key, out)
        results[key] = out
    differing = sum(a != b for a, b in zip(results["base"], results["ink"], strict=True))
    REPORT["lora_changed_values"] = differing
    _save_report()
    assert differing > 100, f"the LoRA changed only {differing} values"
    assert results["zero"] == results["base"], "weight 0 changed the pixels"
    assert results["tag"] == results["ink"], "<lora:ink:1> in the prompt differs from the LoRAs field's ink:1"
    assert results["default"] == results["half"] != results["ink"], "a LoRA without a weight took not its sidecar's 0.5"
    assert read(photo, 0, 0, LW, LH, RGBA) == before, "the source layer changed"
    image.delete()


def test_bad_loras_are_refused_in_words():
    image, photo = make_image()
    layers = [layer.get_name() for layer in image.get_layers()]
    status, message = inpaint(image, photo, "nosuch:1")
    REPORT["unknown_lora"] = message
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "inpaintd refused the job" in message and "no LoRA 'nosuch'" in message and "ink" in message, message
    status, message = inpaint(image, photo, "xl_only:1")
    REPORT["wrong_family"] = message
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "sdxl LoRA" in message, message
    status, message = inpaint(image, photo, "ink:lots")
    REPORT["bad_weight"] = message
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR
    assert "the weight after ':' must be a number" in message, message
    assert [layer.get_name() for layer in image.get_layers()] == layers, "a refused job added layers"
    _save_report()
    image.delete()


SIDE = 80


def ball_layer(image, i, transparent_corner=False):
    """An orange ball on a dark ground, a little shifted in each picture (tests/test_training.py's)."""
    kind = Gimp.ImageType.RGBA_IMAGE if transparent_corner else Gimp.ImageType.RGB_IMAGE
    layer = Gimp.Layer.new(image, f"ball {i}", SIDE, SIDE, kind, 100, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    data = bytearray()
    for y in range(SIDE):
        for x in range(SIDE):
            inside = (x - SIDE // 2 - 3 * i) ** 2 + (y - SIDE // 2) ** 2 < (SIDE // 3) ** 2
            rgb = (230, 120, 30) if inside else (40, 40, 40)
            alpha = 0 if transparent_corner and x < 10 and y < 10 else 255
            data += bytes(rgb) + (bytes([alpha]) if transparent_corner else b"")
    buf = layer.get_buffer()
    buf.set(rect(0, 0, SIDE, SIDE), RGBA if transparent_corner else "R'G'B' u8", bytes(data))
    buf.flush()
    layer.update(0, 0, SIDE, SIDE)
    return layer


def balls():
    image = Gimp.Image.new(SIDE, SIDE, Gimp.ImageBaseType.RGB)
    layers = [ball_layer(image, i, transparent_corner=(i == 1)) for i in range(3)]
    return image, layers


def test_teach_subject_refuses_what_it_cannot_use():
    image, layers = balls()
    status, message = call(TRAIN, image, layers[:2], class_noun="ball", steps=6, resolution=64)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "3 to 30 pictures" in message, message
    status, message = call(TRAIN, image, layers, class_noun="", steps=6, resolution=64)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "Class noun" in message, message
    status, message = call(TRAIN, image, layers, class_noun="ball", steps=6, resolution=100)
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "multiple of 64" in message, message
    layers[0].set_offsets(200, 200)  # off the canvas: the selection cannot reach it
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 40, 40)
    status, message = call(TRAIN, image, layers, class_noun="ball", steps=6, resolution=64)
    REPORT["selection_misses"] = message
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "does not reach layer 'ball 0'" in message, message
    _save_report()
    image.delete()


def test_teach_subject_from_layers_then_use_its_lora():
    image, layers = balls()
    status, out = call(TRAIN, image, layers, token="sks", class_noun="ball", name="", steps=6, resolution=64,
                       model="", endpoint="")
    assert status == Gimp.PDBStatusType.SUCCESS, out
    name, job_id = out
    REPORT["trained"] = {"name": name, "job": job_id}
    _save_report()
    assert name == "sks_ball" and job_id
    with client() as c:
        listed = {e["name"]: e for e in c.request("loras").body["loras"]}
        entry = c.fetch(job_id, timeout=10)
    assert "sks_ball" in listed, sorted(listed)
    assert listed["sks_ball"]["family"] == "sd15" and listed["sks_ball"]["trigger_words"] == ["sks ball"]
    assert entry.result["trained"]["steps"] == 6 and entry.result["trained"]["name"] == "sks_ball"
    REPORT["trained"]["final_loss"] = entry.result["trained"]["final_loss"]
    # ... and the next job can use it
    photo_image, photo = make_image()
    status, pixels = inpaint(photo_image, photo, "sks_ball:1", prompt="a photo of sks ball")
    assert status == Gimp.PDBStatusType.SUCCESS, pixels
    _save_report()
    photo_image.delete()
    # a second one of the same name is refused by the daemon, in its words
    status, message = call(TRAIN, image, layers, token="sks", class_noun="ball", name="sks_ball", steps=6,
                           resolution=64)
    REPORT["name_taken"] = message
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR and "inpaintd refused the training" in message, message
    assert "sks_ball" in message, message
    _save_report()
    image.delete()


def test_killed_plugin_cancels_its_training():
    image, layers = balls()
    open(os.path.join(CI, "train-cancel-armed"), "w").close()
    status, message = call(TRAIN, image, layers, token="sks", class_noun="ball", name="killed_ball", steps=20000,
                           resolution=64)
    REPORT["killed_status"], REPORT["killed_message"] = str(status), str(message)
    _save_report()
    assert os.path.exists(os.path.join(CI, "killed")), "the host did not kill the plug-in (the training ended first)"
    assert status != Gimp.PDBStatusType.SUCCESS, "the killed training reported success"
    image.delete()
