"""In-GIMP test against a daemon serving a tiny FLUX.1 Fill pipeline beside the tiny SD one
(#11): the procedure run on the new-family model with its "auto" values takes the model's
defaults (50 steps, guidance 30), says so in its `job-settings` return value, and adds the
variant over the selection.  Started by tests/test_gimp_plugin.py::test_new_family_model_in_gimp
with INPAINTD_GIMP_TESTS=test_in_gimp_family.py and the model's id in INPAINTD_TEST_FAMILY_MODEL.
"""

from __future__ import annotations

import json
import os

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from test_in_gimp import FEATHER, GROW, LH, LW, PADDING, H, W, check_variant, make_image, read  # noqa: E402

PROC = "python-fu-inpaintd-inpaint-selection"
CI = os.environ.get("INPAINTD_CI_DIR", "/ci")
MODEL = os.environ["INPAINTD_TEST_FAMILY_MODEL"]


def test_family_model_runs_with_its_defaults():
    image, photo = make_image()
    before = read(photo, 0, 0, LW, LH, "R'G'B'A u8")
    sel_mask = read(image.get_selection(), 0, 0, W, H, "Y u8")
    _, _, sx1, sy1, sx2, sy2 = Gimp.Selection.bounds(image)
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    values = dict(prompt="a red apple", model=MODEL, seed=11, variants=1, steps=0, guidance_scale=0.0,
                  negative_prompt="blurry", grow=GROW, feather=FEATHER, padding=PADDING, start_daemon=False)
    for name, value in values.items():
        config.set_property(name.replace("_", "-"), value)
    result = proc.run(config)
    status = result.index(0)
    assert status == Gimp.PDBStatusType.SUCCESS, result.index(1) if result.length() > 1 else ""
    settings = result.index(1)
    with open(os.path.join(CI, "family.json"), "w") as f:
        json.dump({"job_settings": settings}, f)
    assert settings == "FLUX.1 Fill: 50 steps, guidance 30, strength 1", settings
    assert read(photo, 0, 0, LW, LH, "R'G'B'A u8") == before, "the source layer changed"
    group = image.get_layers()[0]
    assert group.is_group() and group.get_name() == "Inpaint: a red apple"
    variants = group.get_children()
    assert [v.get_name() for v in variants] == ["Variant 1/1 (seed 11)"]
    assert check_variant(variants[0], before, sel_mask, (sx1, sy1, sx2, sy2))
