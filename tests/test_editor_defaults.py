"""What both editors do when the artist picks a model (issue #11): inpaintd_protocol.editor's
model_caps / model_defaults / for_model / settings_text, on `models` entries shaped as
PROTOCOL.md 5.3 gives them (and as an older daemon gave them: without the fields)."""

from __future__ import annotations

import copy

import pytest

from inpaintd_protocol import editor
from inpaintd_protocol.options import BY_NAME, GIMP, KRITA, SCHEDULERS

FLUX_FILL = {
    "id": "black-forest-labs/FLUX.1-Fill-dev", "engine": "diffusers", "kind": "hub", "available": True,
    "native_size": 1024, "family": "flux-fill", "detail": "", "label": "FLUX.1 Fill", "size_multiple": 16,
    "schedulers": ["default", "euler"],
    "defaults": {"steps": 50, "guidance_scale": 30.0, "strength": 1.0, "scheduler": "default"},
    "takes": {"negative_prompt": False, "reference_image": False, "lora": True, "textual_inversion": False},
    "memory": None,
}
SD3 = {**FLUX_FILL, "id": "sd3", "family": "sd3", "label": "Stable Diffusion 3.5",
       "defaults": {"steps": 28, "guidance_scale": 3.5, "strength": 1.0, "scheduler": "default"},
       "takes": {"negative_prompt": True, "reference_image": False, "lora": True, "textual_inversion": False}}
SD15 = {**SD3, "id": "sd15", "family": "sd15", "label": "Stable Diffusion 1.x", "schedulers": list(SCHEDULERS),
        "defaults": {"steps": 20, "guidance_scale": 7.5, "strength": 1.0, "scheduler": "default"}}
CLASSICAL = {"id": "opencv-telea", "engine": "classical", "kind": "builtin", "available": True, "native_size": None,
             "family": "", "detail": "", "label": "", "size_multiple": 1, "schedulers": ["default"],
             "defaults": {"steps": 0, "guidance_scale": 0.0, "strength": 1.0, "scheduler": "default"},
             "takes": {"negative_prompt": False, "reference_image": False, "lora": False, "textual_inversion": False},
             "memory": None}
#: An entry of a daemon from before the fields (protocol 5.3 as it was).
OLD = {"id": "old-sd", "engine": "diffusers", "kind": "folder", "available": True, "native_size": 512,
       "family": "sd15", "detail": "/models/old-sd"}


@pytest.mark.parametrize("editor_name", [KRITA, GIMP])
def test_picking_flux_fill_applies_its_defaults_and_switches_the_negative_prompt_off(editor_name: str) -> None:
    caps = editor.model_caps(FLUX_FILL, editor_name)
    assert caps.known and caps.name == "FLUX.1 Fill" and caps.schedulers == ("default", "euler")
    assert caps.defaults == {"steps": 50, "guidance_scale": 30.0, "strength": 1.0, "scheduler": "default"}
    shown = {o.name for o in editor.shown_in(editor_name)}
    # only what the editor shows (guidance and scheduler are not in either form today)
    assert caps.apply == {k: v for k, v in caps.defaults.items() if k in shown}
    assert caps.apply["steps"] == 50 and caps.apply["strength"] == 1.0
    assert editor.model_defaults(FLUX_FILL, editor_name) == caps.apply
    assert set(caps.disabled) == {"negative_prompt"}
    assert "FLUX.1 Fill does not use a negative prompt" in caps.disabled["negative_prompt"]
    assert set(caps.disabled) <= editor.SWITCHABLE_OPTIONS


def test_sd3_takes_a_negative_prompt_and_starts_from_28_steps() -> None:
    caps = editor.model_caps(SD3, KRITA)
    assert caps.apply["steps"] == 28 and caps.defaults["guidance_scale"] == 3.5
    assert caps.disabled == {}


def test_classical_model_auto_steps_and_no_negative_prompt() -> None:
    caps = editor.model_caps(CLASSICAL, GIMP)
    assert caps.apply["steps"] == 0  # "auto": the classical engine has no steps
    assert set(caps.disabled) == {"negative_prompt"} and "opencv-telea" in caps.disabled["negative_prompt"]
    assert editor.settings_text(editor.for_model({"steps": 0}, caps), caps) == ""


@pytest.mark.parametrize("entry", [None, OLD, {}, {"id": "x", "defaults": "nonsense", "takes": None}])
def test_an_older_daemons_entry_changes_nothing(entry) -> None:
    caps = editor.model_caps(entry, KRITA)
    assert caps.apply == {} and caps.disabled == {} and caps.schedulers == ()
    assert editor.model_defaults(entry, KRITA) == {}
    options = {"steps": 0, "negative_prompt": "blurry", "strength": 0.5}
    assert editor.for_model(options, caps) == options
    assert editor.settings_text(options, caps) == ""


def test_odd_defaults_are_left_out_or_brought_inside_the_limits() -> None:
    entry = copy.deepcopy(SD3)
    entry["defaults"] = {"steps": 10_000, "guidance_scale": "high", "strength": True, "scheduler": "ddim",
                         "no_such_option": 3, "seed": float("nan")}
    caps = editor.model_caps(entry, KRITA)
    assert caps.defaults == {"steps": editor.bounds(BY_NAME["steps"])[1]}  # ddim: not one the model lists
    entry["defaults"] = {"scheduler": "euler"}
    assert editor.model_caps(entry, KRITA).defaults == {"scheduler": "euler"}


def test_find_model_uses_the_daemons_default_for_an_empty_choice() -> None:
    models = [CLASSICAL, FLUX_FILL, SD3]
    assert editor.find_model(models, "sd3") is SD3
    assert editor.find_model(models, "", "sd3") is SD3
    assert editor.find_model(models, " ", FLUX_FILL["id"]) is FLUX_FILL
    assert editor.find_model(models, "missing", "sd3") is None
    assert editor.find_model(models, "", "") is None
    assert editor.find_model([None, "x", {"id": "sd3"}], "sd3") == {"id": "sd3"}  # type: ignore[list-item]


def test_scheduler_choices_follow_the_model() -> None:
    opt = BY_NAME["scheduler"]
    assert editor.allowed_choices(opt, editor.model_caps(FLUX_FILL, KRITA)) == ("default", "euler")
    assert editor.allowed_choices(opt, editor.model_caps(SD15, KRITA)) == SCHEDULERS
    assert editor.allowed_choices(opt, editor.model_caps(OLD, KRITA)) == SCHEDULERS
    assert editor.allowed_choices(BY_NAME["fill"], editor.model_caps(FLUX_FILL, KRITA)) == BY_NAME["fill"].choices


def test_for_model_resolves_auto_and_leaves_the_artists_values() -> None:
    caps = editor.model_caps(FLUX_FILL, GIMP)
    sent = editor.for_model({"steps": 0, "strength": 0.6, "negative_prompt": "blurry", "prompt": "a cat"}, caps)
    assert sent == {"steps": 50, "strength": 0.6, "negative_prompt": "", "prompt": "a cat"}
    assert editor.for_model({"steps": 7}, caps) == {"steps": 7}  # the artist's own number
    assert editor.settings_text(sent, caps) == "FLUX.1 Fill: 50 steps, guidance 30, strength 0.6"
    sd3 = editor.model_caps(SD3, GIMP)
    assert editor.for_model({"negative_prompt": "blurry"}, sd3) == {"negative_prompt": "blurry"}
    assert editor.settings_text({"steps": 2, "guidance_scale": 0.0, "scheduler": "euler"}, sd3) == \
        "Stable Diffusion 3.5: 2 steps, guidance 3.5, strength 1, scheduler euler"


def test_the_picks_values_are_valid_job_options() -> None:
    """What an editor applies and sends passes the daemon's own checks (editor.check)."""
    for entry in (FLUX_FILL, SD3, SD15, CLASSICAL):
        for name in (KRITA, GIMP):
            caps = editor.model_caps(entry, name)
            values = editor.for_model(editor.job_options(caps.apply, name), caps)
            assert editor.check(values, name) == [], (entry["id"], name)
