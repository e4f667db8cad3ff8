"""Unit tests for the Krita plugin's pure logic (no Krita, no Qt needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "krita_plugin"))

from inpaintd_krita import logic  # noqa: E402
from inpaintd_krita.logic import Rect, Settings, UserError  # noqa: E402


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


# -- selection and context --------------------------------------------------------------


def test_selection_clipped_to_canvas() -> None:
    assert logic.selection_on_canvas(Rect(-10, -20, 50, 50), 100, 80) == Rect(0, 0, 40, 30)
    assert logic.selection_on_canvas(Rect(90, 70, 50, 50), 100, 80) == Rect(90, 70, 10, 10)


def test_selection_outside_canvas_is_user_error() -> None:
    with pytest.raises(UserError, match="outside the canvas"):
        logic.selection_on_canvas(Rect(200, 0, 10, 10), 100, 80)
    with pytest.raises(UserError):
        logic.selection_on_canvas(Rect(-30, -30, 30, 30), 100, 80)


def test_context_region_small_canvas_is_whole_canvas() -> None:
    assert logic.context_region(Rect(10, 10, 20, 20), 300, 200) == Rect(0, 0, 300, 200)


def test_context_region_large_canvas_is_a_crop_around_selection() -> None:
    sel = Rect(3000, 2000, 300, 200)
    reg = logic.context_region(sel, 6000, 4000, grow=8, feather=16, padding=-1)
    assert reg.contains(sel.expand(8 + 16 + 300))
    assert reg.width >= logic.MIN_CONTEXT_SIDE and reg.height >= logic.MIN_CONTEXT_SIDE
    assert reg.width * reg.height * 4 < 6000 * 4000 * 4 / 10  # far less than the whole layer
    assert Rect(0, 0, 6000, 4000).contains(reg)


def test_context_region_min_side_is_centred_and_kept_inside() -> None:
    reg = logic.context_region(Rect(0, 0, 10, 10), 5000, 5000, grow=0, feather=0, padding=0, min_side=1024)
    assert reg == Rect(0, 0, 1024, 1024)
    reg = logic.context_region(Rect(4990, 4990, 10, 10), 5000, 5000, grow=0, feather=0, padding=0, min_side=1024)
    assert reg == Rect(5000 - 1024, 5000 - 1024, 1024, 1024)
    reg = logic.context_region(Rect(2500, 2500, 10, 10), 5000, 5000, grow=0, feather=0, padding=0, min_side=100)
    assert reg == Rect(2455, 2455, 100, 100)


def test_context_region_explicit_padding_is_honoured() -> None:
    sel = Rect(2000, 2000, 100, 100)
    reg = logic.context_region(sel, 8000, 8000, grow=0, feather=0, padding=1500, min_side=0)
    assert reg == sel.expand(1500)


def test_context_region_clips_selection_past_canvas() -> None:
    reg = logic.context_region(Rect(-500, -500, 700, 700), 4000, 4000, grow=0, feather=0, padding=0, min_side=0)
    assert reg == Rect(0, 0, 200, 200)


def test_context_region_selection_outside_raises() -> None:
    with pytest.raises(UserError):
        logic.context_region(Rect(5000, 0, 10, 10), 4000, 4000)


# -- result placement --------------------------------------------------------------------


def test_place_result_maps_to_document() -> None:
    region = Rect(1000, 2000, 800, 600)
    assert logic.place_result(region, 10, 20, 100, 50) == Rect(1010, 2020, 100, 50)
    assert logic.place_result(region, 0, 0, 800, 600) == region


@pytest.mark.parametrize("x,y,w,h", [(-1, 0, 10, 10), (0, -1, 10, 10), (795, 0, 10, 10), (0, 0, 800, 601)])
def test_place_result_refuses_layers_outside_sent_image(x: int, y: int, w: int, h: int) -> None:
    with pytest.raises(ValueError):
        logic.place_result(Rect(0, 0, 800, 600), x, y, w, h)


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


def test_mask_is_empty() -> None:
    assert logic.mask_is_empty(b"")
    assert logic.mask_is_empty(bytes(100))
    assert not logic.mask_is_empty(bytes(99) + b"\x01")


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


# -- naming -------------------------------------------------------------------------------


def test_group_name() -> None:
    assert logic.group_name("a red  barn\n at dusk") == "[inpaint] a red barn at dusk"
    assert logic.group_name("   ") == "[inpaint] (fill from context)"
    long = logic.group_name("x" * 200, limit=20)
    assert long.endswith("…") and len(long) == len("[inpaint] ") + 20


def test_variant_name_carries_seed() -> None:
    assert logic.variant_name(0, 3, 123456) == "Variant 1/3 (seed 123456)"
    assert "seed 7" in logic.variant_name(2, 3, 7)


# -- progress ---------------------------------------------------------------------------


def test_progress_percent_is_monotonic_over_a_job() -> None:
    seq = [("submitting", 0, 0), ("queued", 0, 0), ("loading", 0, 0), ("preparing", 0, 0)]
    seq += [("denoising", s, 20) for s in range(21)] + [("decoding", 0, 0), ("compositing", 0, 0), ("done", 0, 0)]
    values = [logic.progress_percent(*s) for s in seq]
    assert values == sorted(values)
    assert values[-1] == 100 and values[0] == 0
    assert logic.progress_percent("denoising", 10, 20) == 15 + (90 - 15) // 2


def test_progress_text() -> None:
    assert logic.progress_text("denoising", 3, 20) == "Denoising 3/20"
    assert logic.progress_text("queued", position=2) == "Queued: 2 jobs ahead"
    assert logic.progress_text("queued", position=1) == "Queued: 1 job ahead"
    assert logic.progress_text("preparing") == "Preparing…"
    assert logic.progress_text("compositing", 0, 1) == "Compositing…"  # steps only mean something while denoising
    assert logic.progress_text("submitting") == "Sending…"


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
    models = [{"id": "opencv-telea", "engine": "classical", "available": True}, {"id": "sd15", "engine": "diffusers", "available": False}, {"engine": "x"}]
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
    s = Settings(prompt="a cat", variants=3, strength=0.75, seed=42, random_seed=False, padding=64, use_composite=True)
    back = Settings.from_strings(s.to_strings())
    assert back == s


def test_settings_from_bad_strings_keep_defaults() -> None:
    s = Settings.from_strings({"variants": "many", "strength": "nan", "random_seed": "no", "prompt": "x"})
    assert s.variants == Settings().variants and s.strength == Settings().strength
    assert s.random_seed is False and s.prompt == "x"


def test_job_options_seed_and_clamps() -> None:
    s = Settings(seed=99, random_seed=True, variants=20, strength=0.0, steps=-3, padding=-7)
    o = s.job_options()
    assert o["seed"] == -1 and o["variants"] == 8 and o["strength"] == 0.01 and o["steps"] == 0 and o["padding"] == -1
    s.random_seed = False
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


def test_install_copies_plugin_and_vendored_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
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
    assert {p.name for p in vendored.glob("*.py")} >= {"__init__.py", "client.py", "messages.py", "wire.py", "connection.py", "rect.py"}
    assert "enable_inpaintd_krita=true" in (tmp_path / "config" / "kritarc").read_text()


def test_installed_logic_uses_the_vendored_rect_without_zmq(tmp_path: Path) -> None:
    """Krita's Python may lack pyzmq and msgpack: logic (and so the docker) must still load."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd import install_krita

    install_krita.copy_plugin(tmp_path)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from inpaintd_krita import logic; "
        "import inpaintd_protocol.rect as r; "
        "print(r.__file__.startswith(" + repr(str(tmp_path / "inpaintd_krita" / "_vendor")) + "), "
        "logic.Rect(1, 2, 3, 4).expand(1).as_tuple())"
    )
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "(0,", "1,", "5,", "6)"]


def test_install_reports_missing_modules_with_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inpaintd import install_krita

    monkeypatch.setattr(install_krita, "krita_python", lambda: (sys.executable, "test"))
    monkeypatch.setattr(install_krita, "check_imports", lambda python, extra_path=None: (False, "No module named 'zmq'"))
    assert install_krita.install(tmp_path / "pykrita", enable=False) == 2
    err = capsys.readouterr().err
    assert "apt install python3-zmq python3-msgpack" in err and "pip install --target" in err
