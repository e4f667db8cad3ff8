"""Unit tests for the Krita plugin's pure logic (no Krita, no Qt needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "krita_plugin"))

from inpaintd_krita import logic  # noqa: E402
from inpaintd_krita.logic import Rect, Settings, UserError  # noqa: E402
from inpaintd_protocol import editor  # noqa: E402

# -- Rect -------------------------------------------------------------------------------


def test_rect_intersect_and_empty() -> None:
    a = Rect(0, 0, 10, 10)
    assert a.intersect(Rect(5, 5, 10, 10)) == Rect(5, 5, 5, 5)
    assert a.intersect(Rect(20, 20, 5, 5)).empty
    assert a.intersect(Rect(10, 0, 5, 5)).empty  # touching edges share no pixel
    assert Rect(3, 4, 0, 7).area == 0


def test_rect_expand_translate_contains() -> None:
    r = Rect(10, 10, 4, 6)
    assert r.expand(2) == Rect(8, 8, 8, 10)
    assert r.translate(-10, 5) == Rect(0, 15, 4, 6)
    assert r.expand(1).contains(r)
    assert not r.contains(r.expand(1))


def test_rect_is_the_protocol_rect() -> None:
    from inpaintd_protocol.rect import Rect as ProtocolRect

    assert Rect is ProtocolRect


# -- the crop (the rule itself is tested in tests/test_editor.py) ------------------------


def test_plan_crop_is_limited_by_the_canvas_only() -> None:
    """Krita's layers have no fixed bounds: only the canvas limits the crop."""
    plan = logic.plan_crop(Rect(-10, -20, 50, 50), 100, 80, Settings(grow=0, feather=0, padding=0))
    assert plan.selection == Rect(0, 0, 40, 30) and plan.crop == Rect(0, 0, 100, 80)
    sel = Rect(3000, 2000, 300, 200)
    plan = logic.plan_crop(sel, 6000, 4000, Settings(grow=8, feather=16, padding=-1))
    assert plan.crop.contains(sel.expand(8 + 16 + 300)) and plan.crop.width >= editor.MIN_CONTEXT_SIDE


def test_selection_outside_canvas_is_user_error() -> None:
    with pytest.raises(UserError, match="outside the canvas"):
        logic.plan_crop(Rect(200, 0, 10, 10), 100, 80, Settings())
    with pytest.raises(UserError):
        logic.plan_crop(Rect(-30, -30, 30, 30), 100, 80, Settings())


# -- pixels -----------------------------------------------------------------------------


def test_swap_red_blue_both_ways() -> None:
    bgra = bytes([1, 2, 3, 4, 10, 20, 30, 40])
    rgba = logic.swap_red_blue(bgra)
    assert bytes(rgba) == bytes([3, 2, 1, 4, 30, 20, 10, 40])
    assert bytes(logic.swap_red_blue(rgba)) == bgra


def test_swap_red_blue_accepts_memoryview_and_rejects_partial_pixels() -> None:
    assert bytes(logic.swap_red_blue(memoryview(bytearray([9, 8, 7, 6])))) == bytes([7, 8, 9, 6])
    with pytest.raises(ValueError):
        logic.swap_red_blue(b"\x00\x01\x02")


def test_swap_red_blue_large_is_fast() -> None:
    import time

    data = bytes(range(256)) * (2048 * 2048 * 4 // 256)
    t = time.perf_counter()
    out = logic.swap_red_blue(data)
    assert time.perf_counter() - t < 2.0
    assert out[0] == 2 and out[2] == 0 and out[4 * 1000 + 1] == data[4 * 1000 + 1]


# -- checks -----------------------------------------------------------------------------


def test_color_space_check() -> None:
    logic.check_color_space("RGBA", "U8")
    with pytest.raises(UserError, match="GRAYA/U8.*8-bit RGBA"):
        logic.check_color_space("GRAYA", "U8")
    with pytest.raises(UserError, match="RGBA/U16"):
        logic.check_color_space("RGBA", "U16")
    with pytest.raises(UserError, match="CMYKA/F32"):
        logic.check_color_space("CMYKA", "F32", "layer")


def test_source_layer_check() -> None:
    logic.check_source_layer("paintlayer", False)
    logic.check_source_layer("grouplayer", True)
    with pytest.raises(UserError, match="group layer"):
        logic.check_source_layer("grouplayer", False)
    with pytest.raises(UserError, match="transparency mask"):
        logic.check_source_layer("transparencymask", False)
    with pytest.raises(UserError, match="No active layer"):
        logic.check_source_layer(None, False)


# -- messages ---------------------------------------------------------------------------


def test_error_text_gives_advice() -> None:
    assert "smaller" in logic.error_text("too_large", "4096x4096 > limit")
    assert logic.error_text("weird", "boom") == "Error: weird: boom"


def test_connection_text() -> None:
    hello = {"version": "0.1.0", "device": "cpu", "default_model": "opencv-telea"}
    text = logic.connection_text("tcp://127.0.0.1:7415", hello)
    assert "0.1.0" in text and "cpu" in text and "opencv-telea" in text and "7415" in text
    assert logic.connection_text("tcp://x:1", None, "no answer").startswith("Not connected to tcp://x:1")
    assert "Note" not in text and logic.notices_text(hello) == ""


def test_connection_text_shows_the_daemons_first_notice() -> None:
    fallback = ("Model 'stable-diffusion-v1-5/stable-diffusion-inpainting' was not found (not in the Hugging Face "
                "cache). Using the classical OpenCV engine 'opencv-telea' instead, which ignores prompts.")
    hello = {"version": "0.1.0", "device": "cpu", "default_model": "opencv-telea",
             "notices": ["m: speed-ups in use: none", fallback]}
    text = logic.connection_text("tcp://127.0.0.1:7415", hello)
    first, note = text.split("\n")
    assert "opencv-telea" in first
    assert note.startswith("Note: Model 'stable-diffusion-v1-5/stable-diffusion-inpainting' was not found")
    assert "ignores prompts" not in note  # the rest is in the tooltip
    assert logic.notices_text(hello).endswith("which ignores prompts.")


def test_model_choices() -> None:
    models = [{"id": "opencv-telea", "engine": "classical", "available": True},
              {"id": "sd15", "engine": "diffusers", "available": False}, {"engine": "x"}]
    choices = logic.model_choices(models)
    assert choices[0] == ("", "Daemon default")
    assert [c[0] for c in choices] == ["", "opencv-telea", "sd15"]
    assert "unavailable" in choices[2][1]


def test_daemon_command_args() -> None:
    argv = logic.daemon_command_args("inpaintd serve --bind {endpoint} --model 'opencv-telea'", "tcp://127.0.0.1:9")
    assert argv == ["inpaintd", "serve", "--bind", "tcp://127.0.0.1:9", "--model", "opencv-telea"]
    with pytest.raises(UserError):
        logic.daemon_command_args("  ", "tcp://127.0.0.1:9")


# -- settings ---------------------------------------------------------------------------


def test_settings_round_trip_through_strings() -> None:
    s = Settings(prompt="a cat", variants=3, strength=0.75, seed=42, padding=64, use_composite=True, fill="blur")
    back = Settings.from_strings(s.to_strings())
    assert back == s


def test_settings_carry_the_old_random_box_over() -> None:
    """The docker once had a 'Random' box beside the seed; a seed saved with it ticked is
    random (-1) now, and saving again empties the old key so it is read only once."""
    assert Settings.from_strings({"seed": "42", "random_seed": "true"}).seed == -1
    assert Settings.from_strings({"seed": "42", "random_seed": "false"}).seed == 42
    assert Settings().to_strings()["random_seed"] == ""


def test_settings_from_bad_strings_keep_defaults() -> None:
    s = Settings.from_strings({"variants": "many", "strength": "nan", "color_match": "no", "prompt": "x"})
    assert s.variants == Settings().variants and s.strength == Settings().strength
    assert s.color_match is False and s.prompt == "x"


def test_job_options_seed_and_clamps() -> None:
    s = Settings(seed=-1, variants=20, strength=0.0, steps=-3, padding=-7, fill="lama")
    o = s.job_options()
    assert o["seed"] == -1 and o["variants"] == 8 and o["strength"] == 0.01 and o["steps"] == 0 and o["padding"] == -1
    assert o["fill"] == "auto"
    s.seed = 99
    assert s.job_options()["seed"] == 99


def test_job_options_are_valid_protocol_options() -> None:
    """Every field the plugin sends is a JobOptions field within the protocol's bounds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd_protocol.messages import OPTION_RULES, JobOptions

    opts = Settings(prompt="p", negative_prompt="n", color_match=True).job_options()
    JobOptions(**opts)
    assert opts["color_match"] is True
    for name, value in opts.items():
        types, lo, hi = OPTION_RULES[name]
        assert isinstance(value, types)
        assert lo is None or value >= lo
        assert hi is None or value <= hi


# -- installer (backend/inpaintd/install_krita.py) --------------------------------------------------


def test_enable_in_kritarc_keeps_other_settings(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd.install_krita import enable_in_kritarc

    rc = tmp_path / "kritarc"
    rc.write_text("[General]\nweird key=50%\n\n[python]\nenable_other=true\nenable_inpaintd_krita=false\n\n[theme]\nTheme=Krita dark\n")
    assert enable_in_kritarc(rc)
    text = rc.read_text()
    assert "enable_inpaintd_krita=true" in text and "enable_inpaintd_krita=false" not in text
    assert "weird key=50%" in text and "enable_other=true" in text and "Theme=Krita dark" in text
    assert not enable_in_kritarc(rc)  # already enabled: untouched
    fresh = tmp_path / "new" / "kritarc"
    assert enable_in_kritarc(fresh) and fresh.read_text() == "[python]\nenable_inpaintd_krita=true\n"
    other = tmp_path / "other"
    other.write_text("[General]\na=1\n")
    enable_in_kritarc(other)
    assert other.read_text() == "[General]\na=1\n\n[python]\nenable_inpaintd_krita=true\n"


def test_install_copies_plugin_and_vendored_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd import install_krita

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(install_krita, "krita_python", lambda: (None, "test: no Krita"))
    dest = tmp_path / "pykrita"
    (dest / "inpaintd_krita").mkdir(parents=True)
    (dest / "inpaintd_krita" / "stale.py").write_text("old")
    assert install_krita.install(dest) == 0
    out = capsys.readouterr().out
    assert str(dest) in out and "pip install --target" in out
    assert (dest / "inpaintd_krita.desktop").read_text().count("X-KDE-Library=inpaintd_krita") == 1
    assert (dest / "inpaintd_krita" / "logic.py").is_file() and not (dest / "inpaintd_krita" / "stale.py").exists()
    vendored = dest / "inpaintd_krita" / "_vendor" / "inpaintd_protocol"
    assert {p.name for p in vendored.glob("*.py")} >= {
        "__init__.py", "client.py", "messages.py", "wire.py", "connection.py", "rect.py", "options.py", "editor.py"
    }
    assert "enable_inpaintd_krita=true" in (tmp_path / "config" / "kritarc").read_text()


def test_installed_logic_uses_the_vendored_rect_without_zmq(tmp_path: Path) -> None:
    """Krita's Python may lack pyzmq and msgpack: logic (and so the docker) must still load."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd import install_krita

    install_krita.copy_plugin(tmp_path)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from inpaintd_krita import logic; "
        "import inpaintd_protocol.rect as r, inpaintd_protocol.editor as e; "
        "print(r.__file__.startswith(" + repr(str(tmp_path / "inpaintd_krita" / "_vendor")) + "), "
        "e.__file__.startswith(" + repr(str(tmp_path / "inpaintd_krita" / "_vendor")) + "), "
        "logic.Rect(1, 2, 3, 4).expand(1).as_tuple(), 'zmq' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "(0,", "1,", "5,", "6)", "False"]


def test_install_reports_missing_modules_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd import install_krita

    monkeypatch.setattr(install_krita, "krita_python", lambda: (sys.executable, "test"))
    monkeypatch.setattr(install_krita, "check_imports", lambda python, extra_path=None: (False, "No module named 'zmq'"))
    assert install_krita.install(tmp_path / "pykrita", enable=False) == 2
    err = capsys.readouterr().err
    assert "apt install python3-zmq python3-msgpack" in err and "pip install --target" in err


# -- the artist's loop (krita_plugin/inpaintd_krita/loop.py) ----------------------------------------

from inpaintd_krita import loop  # noqa: E402


def test_result_map_round_trips_through_bytes() -> None:
    known = loop.ResultMap()
    record = loop.JobRecord("a" * 16, Rect(10, 20, 300, 200), "a red apple", {"prompt": "a red apple", "steps": 6})
    known.add(record, [("{uid-1}", 0), ("{uid-2}", 1)])
    back = loop.ResultMap.from_bytes(known.to_bytes())
    assert back.lookup("{uid-2}") == loop.ResultRef("a" * 16, 1)
    assert back.job("a" * 16) == record and back.layers_of("a" * 16) == ["{uid-1}", "{uid-2}"]
    assert back.lookup("{other}") is None and back.job("b" * 16) is None


def test_result_map_reads_anything_without_raising() -> None:
    for junk in (None, b"", b"\xff\xfe", b"[1, 2]", b'{"jobs": [{"job": 1}], "layers": {"x": ["j", "0"]}}',
                 b'{"jobs": "no", "layers": []}', b'{"layers": {"u": ["j", true]}}'):
        known = loop.ResultMap.from_bytes(junk)
        assert known.jobs == {} and known.layers == {}, junk
    # a readable part survives a broken one
    mixed = b'{"jobs": [{"job": "j", "crop": [0, 0, 8, 8]}, {"crop": "bad"}], "layers": {"u": ["j", 2], "v": 3}}'
    known = loop.ResultMap.from_bytes(mixed)
    assert list(known.jobs) == ["j"] and known.job("j").crop == Rect(0, 0, 8, 8)
    assert known.layers == {"u": loop.ResultRef("j", 2)}


def test_result_map_forgets_the_oldest_jobs_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "MAX_JOBS", 3)
    known = loop.ResultMap()
    for i in range(5):
        known.add(loop.JobRecord(f"job{i}", Rect(0, 0, 1, 1)), [(f"uid{i}", 0)])
    assert list(known.jobs) == ["job2", "job3", "job4"]
    assert set(known.layers) == {"uid2", "uid3", "uid4"}
    known.add(loop.JobRecord("job2", Rect(0, 0, 1, 1)), [("uid2b", 1)])  # seen again: the newest now
    assert list(known.jobs) == ["job3", "job4", "job2"] and known.lookup("uid2b") == loop.ResultRef("job2", 1)


def test_remix_sends_the_prompt_and_what_changed_but_never_seed_or_strength() -> None:
    original = {"prompt": "a red apple", "steps": 20, "seed": 777, "strength": 1.0, "variants": 2, "style": ""}
    current = {"prompt": "a green pear", "steps": 20, "seed": 5, "strength": 0.5, "variants": 3, "style": "Anime",
               "grow": 8, "negative_prompt": ""}
    assert loop.remix_options(current, original) == {"prompt": "a green pear", "variants": 3, "style": "Anime"}
    # an option the job's record lacks counts as the protocol's default
    assert loop.remix_options({"prompt": "p", "grow": 4}, {}) == {"prompt": "p", "grow": 4}
    assert loop.remix_options({"prompt": "same"}, {"prompt": "same"}) == {"prompt": "same"}


def test_vary_options_to_remember_and_to_send_with_pixels() -> None:
    original = {"prompt": "apple", "steps": 6, "seed": 777, "strength": 1.0, "not_an_option": 1}
    assert loop.varied_options(original, {"prompt": "pear"}, 0.35) == {
        "prompt": "pear", "steps": 6, "seed": -1, "strength": 0.35}
    assert loop.varied_options(original, {}, None)["strength"] == 1.0
    # with its pixels the daemon knows none of the job's options: all go, but seed and strength
    assert loop.resend_options(original, {"prompt": "pear", "seed": 3}) == {"prompt": "pear", "steps": 6}
    assert loop.preset_strength({"vary_strengths": {"subtle": 0.35, "strong": 0.7}}, "strong") == 0.7
    assert loop.preset_strength({}, "subtle") is None and loop.preset_strength(None, "subtle") is None


def _entry(job: str = "0123456789abcdef", **more: object) -> dict:
    thumb = {"frame": 1, "width": 4, "height": 2, "channels": 4, "stride": 16, "pixels": bytes(range(32))}
    entry = {"job": job, "created": 1_700_000_000.0, "kind": "vary", "parent": "f" * 16, "parent_variant": 1,
             "model": "tiny", "engine": "diffusers", "prompt": "a red apple", "options": {"steps": 6, "style": "Anime"},
             "seeds": [5, 6], "region": {"x": 3, "y": 4, "width": 40, "height": 30},
             "canvas": {"width": 64, "height": 48}, "starred": True, "pixels_kept": True, "bytes": 100,
             "variants": [{"index": 0, "seed": 5, "width": 40, "height": 30, "thumbnail": thumb},
                          {"index": 1, "seed": 6, "width": 40, "height": 30, "thumbnail": dict(thumb)}]}
    entry.update(more)
    return entry


def test_history_cards_from_a_reply() -> None:
    cards = loop.history_cards({"entries": [_entry(), {"prompt": "no job id"}, _entry("1" * 16, starred=False,
                                                                                      variants=[])], "total": 9})
    assert [c.job for c in cards] == ["0123456789abcdef", "1" * 16]
    card = cards[0]
    assert card.starred and card.kind == "vary" and card.parent == "f" * 16 and card.seeds == (5, 6)
    assert card.region == Rect(3, 4, 40, 30) and card.canvas == (64, 48) and card.variants == 2
    assert card.has_thumbnail and card.thumb_size == (4, 2) and card.thumbnail == bytes(range(32))
    tip = card.tooltip()
    assert "a red apple" in tip and "seeds 5, 6" in tip and "style Anime" in tip and "starred" in tip
    assert not cards[1].has_thumbnail and not cards[1].starred
    assert card.loras == () and card.references == 0
    dressed = loop.history_card(_entry(loras=[{"name": "ink", "weight": 0.5}, {"name": 3}, {"name": "film"}], references=2))
    assert dressed is not None and dressed.loras == (("ink", 0.5), ("film", 1.0)) and dressed.references == 2
    assert "LoRA ink 0.5, film 1" in dressed.tooltip() and "2 reference image(s)" in dressed.tooltip()
    assert loop.history_cards({}) == []


def test_history_place_is_the_jobs_own_where_the_document_made_it() -> None:
    card = loop.history_card(_entry())
    assert card is not None
    known = loop.ResultMap()
    assert loop.history_place(known, card) == Rect(0, 0, 64, 48)  # unknown: the entry's own x, y on the canvas
    known.add(loop.JobRecord("f" * 16, Rect(100, 50, 64, 48)), [])
    assert loop.history_place(known, card) == Rect(100, 50, 64, 48)  # a vary: its parent's place
    known.add(loop.JobRecord(card.job, Rect(7, 8, 64, 48)), [])
    assert loop.history_place(known, card) == Rect(7, 8, 64, 48)


def test_copy_settings_values() -> None:
    options = {"prompt": "  a red apple ", "steps": 500, "seed": -1, "strength": "high", "color_match": 1,
               "style": "Anime", "model": "tiny", "unknown": 3, "fill": "nonsense"}
    values = loop.option_values(options, (4242, 4243))
    assert values["prompt"] == "a red apple" and values["steps"] == editor.bounds(editor.BY_NAME["steps"])[1]
    assert values["seed"] == 4242 and values["style"] == "Anime" and values["model"] == "tiny"
    assert values["fill"] == "auto"
    assert "strength" not in values and "color_match" not in values and "unknown" not in values
    assert loop.option_values({"seed": 9}) == {"seed": 9}
    # a seed the Seed box cannot hold is not copied (clamped, it would make other pixels)
    assert loop.option_values({"seed": -1}, (editor.EDITOR_INT_MAX + 5,)) == {"seed": -1}
    assert loop.option_values({}, (editor.EDITOR_INT_MAX,)) == {"seed": editor.EDITOR_INT_MAX}


def test_style_choices_and_values() -> None:
    styles = [{"name": "Quick draft", "description": "Few steps", "prompt": "", "settings": {"steps": 8}, "problem": ""},
              {"name": "Broken", "problem": "Broken.json: not JSON"},
              {"name": "Watercolor", "prompt": "watercolor of {prompt}", "settings": {"negative_prompt": "photo",
                                                                                    "model": "x", "loras": 1}},
              {"description": "no name"}]
    choices = loop.style_choices(styles)
    assert [c[0] for c in choices] == ["", "Quick draft", "Broken", "Watercolor"]
    assert choices[0][1] == "No style" and "cannot be used" in choices[2][1] and "not JSON" in choices[2][2]
    assert "watercolor of {prompt}" in choices[3][2]
    assert loop.find_style(styles, "quick DRAFT") is styles[0] and loop.find_style(styles, "none") is None
    assert loop.style_values(styles[0]) == {"steps": 8}
    assert loop.style_values(styles[2]) == {"negative_prompt": "photo"}  # the model is picked separately
    assert loop.style_values(None) == {} and loop.style_values({"settings": "x"}) == {}


def test_picking_styles_puts_their_values_in_and_takes_them_out_again() -> None:
    controls = {"steps": 20, "negative_prompt": "", "guidance_scale": 7.5}
    changes, state = loop.pick_style(controls, loop.StyleState(), "Quick draft", {"steps": 8})
    assert changes == {"steps": 8} and state.before == {"steps": 20}
    controls.update(changes)
    # another style: the first one's steps go back, the new one's values go in
    changes, state = loop.pick_style(controls, state, "Photo", {"guidance_scale": 6.0})
    assert changes == {"steps": 20, "guidance_scale": 6.0}
    controls.update(changes)
    # a value the artist changed after picking stays when the style goes
    controls["guidance_scale"] = 9.0
    changes, state = loop.pick_style(controls, state, "", {})
    assert changes == {} and state == loop.StyleState()


def test_style_to_save_and_names() -> None:
    values = Settings(prompt="{prompt}, watercolor", negative_prompt="photo", steps=0, guidance_scale=6.0,
                      scheduler="euler_a", strength=1.0, color_match=True).job_options()
    style = loop.style_to_save(values, "sd15")
    assert style == {"description": "Saved from Krita", "prompt": "{prompt}, watercolor", "negative_prompt": "photo",
                     "scheduler": "euler_a", "guidance_scale": 6.0, "color_match": True, "families": ["sd15"]}
    plain = loop.style_to_save(Settings(prompt="a cat", steps=12, strength=0.6).job_options())
    assert plain == {"description": "Saved from Krita", "steps": 12, "strength": 0.6}
    assert loop.style_name_problem("My style 2.0_x-y") is None
    for bad in ("", " lead", "-x", "a/b", "x" * 65):
        assert loop.style_name_problem(bad), bad


def test_style_to_save_is_what_the_daemon_accepts(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
    from inpaintd.styles import NAME, Styles

    style = loop.style_to_save(Settings(prompt="{prompt} at dusk", negative_prompt="blur", steps=8, guidance_scale=5.0,
                                        scheduler="ddim", strength=0.8, color_match=True).job_options(), "sd15")
    saved = Styles(tmp_path).save("From Krita", style)
    assert saved.problem == "" and saved.settings["steps"] == 8 and saved.prompt == "{prompt} at dusk"
    assert loop.STYLE_NAME.pattern == NAME.pattern  # the rule PROTOCOL.md 5.12 gives, as the daemon checks it


def test_reference_controls_follow_the_model() -> None:
    kontext = {"id": "kontext", "label": "FLUX.1 Kontext", "takes": {"reference_image": True}}
    sd = {"id": "sd", "label": "Stable Diffusion 1.x", "takes": {"reference_image": False}}
    assert loop.takes_reference(kontext) and loop.reference_off(kontext) == ""
    assert not loop.takes_reference(sd) and loop.reference_off(sd).startswith("Stable Diffusion 1.x takes no reference")
    assert not loop.takes_reference(None) and loop.reference_off(None).startswith("This model")
    assert not loop.takes_reference({"takes": {"reference_image": 1}})


def test_reference_size() -> None:
    assert loop.reference_size(800, 600) == (800, 600)
    assert loop.reference_size(4000, 1000) == (1024, 256)
    assert loop.reference_size(1000, 3001) == (341, 1024)
    assert loop.reference_size(5000, 1) == (1024, 1)
    assert loop.reference_size(0, 10) == (0, 0)


# -- LoRAs and Teach subject (loras.py) -------------------------------------------------------------

from inpaintd_krita import loras as lora_rules  # noqa: E402

LORAS = [
    {"name": "ink", "family": "sd15", "trigger_words": ["ink style"], "default_weight": 0.8, "problem": ""},
    {"name": "xl_only", "family": "sdxl", "trigger_words": [], "default_weight": 1.0, "problem": ""},
    {"name": "Fill_detail", "family": "flux", "trigger_words": [], "default_weight": 1.0, "problem": ""},
    {"name": "old", "family": "sd15", "trigger_words": [], "default_weight": 1.0, "problem": "a pickle file"},
]


def test_only_loras_of_the_models_family_are_offered() -> None:
    assert [c.name for c in lora_rules.lora_choices(LORAS, "sd15")] == ["ink", "old"]
    assert [c.name for c in lora_rules.lora_choices(LORAS, "sdxl")] == ["xl_only"]
    assert [c.name for c in lora_rules.lora_choices(LORAS, "flux-fill")] == ["Fill_detail"]  # FLUX.1 Fill: flux
    assert [c.name for c in lora_rules.lora_choices(LORAS, "flux-kontext")] == ["Fill_detail"]
    assert len(lora_rules.lora_choices(LORAS, "")) == 4  # family unknown: all of them
    ink, old = lora_rules.lora_choices(LORAS, "sd15")
    assert ink.usable and ink.default_weight == 0.8 and "Trigger words: ink style" in ink.tip
    assert not old.usable and old.label == "old (unusable)" and "a pickle file" in old.tip
    assert lora_rules.lora_family("flux2-klein") == "flux2"


def test_takes_lora_reads_the_models_entry() -> None:
    assert lora_rules.takes_lora(None) and lora_rules.takes_lora({"takes": {}})
    assert lora_rules.takes_lora({"takes": {"lora": True}})
    assert not lora_rules.takes_lora({"takes": {"lora": False}})


def test_the_loras_payload() -> None:
    chosen = [("ink", 0.8), ("INK", 1.0), ("xl_only", 1.0), ("old", 1.0), ("gone", 1.0), ("off", 0.0)]
    assert lora_rules.loras_payload(chosen, LORAS, "sd15") == [("ink", 0.8)]
    # the daemon's list not known yet: what was chosen, weight 0 (off) left out, each name once
    assert lora_rules.loras_payload(chosen, None, "sd15") == [("ink", 0.8), ("xl_only", 1.0), ("old", 1.0),
                                                              ("gone", 1.0)]
    assert lora_rules.loras_payload([("ink", 5.0)], LORAS, "") == [("ink", 2.0)]  # clamped to -2…2
    many = [(f"l{i}", 1.0) for i in range(12)]
    assert len(lora_rules.loras_payload(many, None, "")) == lora_rules.MAX_LORAS


def test_chosen_loras_round_trip_through_the_settings() -> None:
    chosen = [("ink", 0.8), ("my.subject-1", -0.5)]
    text = lora_rules.format_chosen(chosen)
    assert text == "ink:0.8,my.subject-1:-0.5"
    assert lora_rules.parse_chosen(text) == chosen
    assert lora_rules.parse_chosen("") == []
    assert lora_rules.parse_chosen("a:x, b ,a:2") == [("a", 1.0), ("b", 1.0)]
    s = Settings(loras=text)
    assert Settings.from_strings(s.to_strings()).loras == text
    assert "loras" not in s.job_options()


def test_teach_subject_checks_and_texts() -> None:
    ok = lora_rules.TeachRequest("sks", "mug", "my_mug", steps=6, resolution=64)
    assert lora_rules.teach_problem(ok, 3, LORAS, "sd15") is None
    assert "3 to 30 paint layers" in lora_rules.teach_problem(ok, 2)
    assert "At most 30" in lora_rules.teach_problem(ok, 31)
    assert "one word" in lora_rules.teach_problem(lora_rules.TeachRequest("two words", "mug", "x"), 3)
    assert "class" in lora_rules.teach_problem(lora_rules.TeachRequest("sks", "", "x"), 3)
    assert "name" in lora_rules.teach_problem(lora_rules.TeachRequest("sks", "mug", "-bad"), 3)
    assert "already has" in lora_rules.teach_problem(lora_rules.TeachRequest("sks", "mug", "INK"), 3, LORAS)
    assert "cannot be trained" in lora_rules.teach_problem(ok, 3, [], "flux-fill")
    assert "multiple of 64" in lora_rules.teach_problem(lora_rules.TeachRequest("sks", "mug", "x", 6, 100), 3)
    assert lora_rules.train_settings(ok) == {"steps": 6, "resolution": 64}
    assert lora_rules.train_settings(lora_rules.TeachRequest(steps=10), "m") == {"steps": 10, "model": "m"}
    assert lora_rules.train_size(2048, 1024) == (512, 256)
    assert lora_rules.train_size(300, 200) == (300, 200)  # never scaled up
    assert lora_rules.training_progress("training", 3, 6, 0.1234, 75.0) == (50, "Training 3/6 · loss 0.123 · 1 min 15 s left")
    assert lora_rules.training_progress("training", 6, 6, 0.1, 0.0) == (100, "Training 6/6 · loss 0.100")
    assert lora_rules.training_progress("queued", 0, 0, None, None) == (0, "Training: waiting")
    assert lora_rules.training_progress("preparing", 1, 2, None, None) == (0, "Training: class pictures 1/2")
    text = lora_rules.trained_text({"name": "my_mug", "steps": 6, "final_loss": 0.25}, ok)
    assert "'my_mug'" in text and "final loss 0.250" in text and "“sks mug”" in text
