"""Unit tests of the GIMP plug-in's pure logic, its cancel watchdog and its installer,
run from the project's venv (no GIMP needed)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "gimp_plugin" / "inpaintd_gimp"))

import inpaintd_logic as logic  # noqa: E402
from inpaintd_logic import ARGS, Options, Rect  # noqa: E402

from inpaintd_protocol import wire  # noqa: E402


def test_rect_intersect_and_expand():
    assert Rect(0, 0, 10, 10).intersect(Rect(5, 5, 10, 10)) == Rect(5, 5, 5, 5)
    assert Rect(0, 0, 10, 10).intersect(Rect(20, 20, 5, 5)).empty
    assert Rect(5, 5, 2, 2).expand(3) == Rect(2, 2, 8, 8)


def test_rect_is_the_protocol_rect():
    from inpaintd_protocol.rect import Rect as ProtocolRect

    assert Rect is ProtocolRect


def test_plan_crop_respects_layer_offsets_and_bounds():
    """GIMP's layers have fixed bounds: the crop stays on the layer (and the canvas), and
    is also given in the layer's own pixels (the rule itself: tests/test_editor.py)."""
    opts = Options(grow=4, feather=8, padding=20)
    layer = Rect(100, 50, 400, 300)  # layer at offset (100, 50), smaller than the image
    plan = logic.plan_crop(Rect(200, 120, 40, 30), 640, 480, layer, opts)
    assert plan.crop == layer  # at least 1024 a side where the pixels allow: all of the layer
    assert plan.crop_from(layer.x, layer.y) == Rect(0, 0, 400, 300)
    assert plan.place(10, 5, 20, 20) == Rect(110, 55, 20, 20)
    assert logic.plan_crop(Rect(600, 400, 5, 5), 640, 480, layer, opts) is None
    past_canvas = Rect(-50, -50, 300, 300)  # a layer partly off the canvas: no selection there
    assert logic.plan_crop(Rect(0, 0, 30, 30), 640, 480, past_canvas, opts).crop == Rect(0, 0, 250, 250)


def test_options_defaults_validate_and_map_to_job_options():
    opts = Options.from_mapping({"prompt": " a cat ", "negative-prompt": None, "seed": 5, "sample-merged": True,
                                 "run-mode": 0})
    assert opts.negative_prompt == "" and opts.sample_merged
    assert opts.validate() == []
    job = opts.job_options()
    assert job["prompt"] == "a cat" and job["seed"] == 5 and job["padding"] == -1
    assert set(job) <= {"prompt", "negative_prompt", "seed", "variants", "steps", "guidance_scale", "strength",
                        "scheduler", "model", "grow", "feather", "padding", "color_match", "fill", "style"}
    assert job["color_match"] is False and Options.from_mapping({"color-match": True}).job_options()["color_match"] is True
    assert Options(fill=" ").validate() == [] and Options(fill=" ").job_options()["fill"] == "auto"


@pytest.mark.parametrize("field,value,needle", [
    ("variants", 0, "at least 1"), ("variants", 9, "at most 8"), ("strength", 0.0, "at least 0.01"),
    ("steps", 151, "at most 150"), ("seed", -2, "at least -1"), ("feather", True, "must be a whole number"),
    ("fill", "lama", "not one of auto, none"), ("endpoint", "localhost:7415", "not a ZeroMQ endpoint"),
    ("sample_merged", "yes", "must be a bool"),
])
def test_options_reject_bad_values(field, value, needle):
    problems = Options(**{field: value}).validate()
    assert problems and needle in problems[0]


def test_arg_labels_have_distinct_mnemonics():
    labels = [a.label for a in ARGS]
    mnemonics = [lbl[lbl.index("_") + 1].lower() for lbl in labels]
    assert len(set(mnemonics)) == len(mnemonics) and not set(mnemonics) & set("ocrhsl")


def test_daemon_advice():
    text = logic.how_to_start("tcp://127.0.0.1:7415")
    assert "inpaintd serve --bind tcp://127.0.0.1:7415" in text
    assert logic.serve_command(["py", "-m", "inpaintd"], "tcp://127.0.0.1:1") == [
        "py", "-m", "inpaintd", "serve", "--bind", "tcp://127.0.0.1:1"]


def test_precision_note():
    assert logic.precision_note(8, False) is None
    assert "16-bit" in logic.precision_note(16, True)


# -- the cancel watchdog ---------------------------------------------------------------


def _fake_daemon(key: bytes):
    """A ROUTER that answers one request and records it."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seen: list = []

    def serve() -> None:
        if sock.poll(15000):
            ident, *frames = sock.recv_multipart()
            msg = wire.decode(frames, key)
            seen.append(msg)
            reply = wire.Message(type="cancel_reply", body={"job": msg.body.get("job")}, re=msg.id)
            sock.send_multipart([ident, *wire.encode(reply, key)])
        sock.close(0)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"tcp://127.0.0.1:{port}", seen, t


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    from inpaintd.install_gimp import copy_plugin

    return copy_plugin(tmp_path)


def test_watchdog_cancels_when_plugin_dies(installed: Path):
    key = b"k" * 32
    endpoint, seen, t = _fake_daemon(key)
    watchdog = subprocess.Popen([sys.executable, str(installed / "inpaintd_watchdog.py"), endpoint, "job-1"],
                                stdin=subprocess.PIPE, env={"INPAINTD_KEY": key.decode(), "PATH": "/usr/bin:/bin"})
    watchdog.stdin.close()  # what the OS does when GIMP kills the plug-in
    assert watchdog.wait(timeout=20) == 0
    t.join(timeout=20)
    assert seen and seen[0].type == "cancel" and seen[0].body["job"] == "job-1"


def test_watchdog_quiet_when_job_ends_normally(installed: Path):
    sys.path.insert(0, str(installed))
    try:
        import inpaintd_watchdog
    finally:
        sys.path.remove(str(installed))
    assert inpaintd_watchdog.watch("tcp://127.0.0.1:9", "job-2", io.BytesIO(b"done\n")) is False


# -- the installer -----------------------------------------------------------------------


def test_install_copies_plugin_and_client(tmp_path: Path, capsys):
    from inpaintd.install_gimp import install

    rc = install(tmp_path, [sys.executable])
    target = tmp_path / "inpaintd_gimp"
    assert rc == 0
    entry = target / "inpaintd_gimp.py"
    assert entry.stat().st_mode & 0o111
    assert (target / "inpaintd_protocol" / "client.py").exists()
    assert "from . import wire" in (target / "inpaintd_protocol" / "client.py").read_text()
    assert "Filters > AI > Inpaint Selection" in capsys.readouterr().out


def test_installed_logic_uses_the_vendored_rect_without_zmq(tmp_path: Path):
    """GIMP's Python may lack pyzmq and msgpack: the plug-in must still load (and say so)."""
    from inpaintd.install_gimp import copy_plugin

    target = copy_plugin(tmp_path)
    assert (target / "inpaintd_protocol" / "rect.py").is_file()
    assert (target / "inpaintd_protocol" / "editor.py").is_file() and (target / "inpaintd_protocol" / "options.py").is_file()
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import inpaintd_logic as l; "
        f"print(l.Rect.__module__, l.editor.__file__.startswith({str(target)!r}), "
        "l.Rect(1, 2, 3, 4).expand(1).as_tuple(), 'zmq' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["inpaintd_protocol.rect", "True", "(0,", "1,", "5,", "6)", "False"]


def test_install_explains_missing_modules(tmp_path: Path, capsys):
    from inpaintd.install_gimp import install

    rc = install(tmp_path, [sys.executable, "-I", "-S"])  # no site-packages: no zmq
    assert rc == 2
    err = capsys.readouterr().err
    assert "python3-zmq python3-msgpack" in err and "--target" in err


def test_an_update_makes_gimp_read_the_procedure_again(tmp_path: Path):
    """GIMP caches a plug-in's arguments until its entry file is newer than the cache: an
    update must give the installed entry a fresh time, whatever the source file's time."""
    import time

    from inpaintd.install_gimp import copy_plugin

    before = time.time() - 1
    entry = copy_plugin(tmp_path) / "inpaintd_gimp.py"
    source = Path(__file__).resolve().parents[1] / "gimp_plugin" / "inpaintd_gimp" / "inpaintd_gimp.py"
    assert entry.stat().st_mtime >= before
    assert entry.read_bytes() == source.read_bytes()


def test_arguments_keep_their_positions_and_the_dialog_shows_them_all():
    from inpaintd_logic import ARGS, DIALOG_ORDER

    names = [a.name for a in ARGS]
    # The first release's arguments, in their order: scripts may pass them by position.
    assert names[:13] == ["prompt", "negative-prompt", "variants", "strength", "steps", "seed", "model", "grow",
                          "feather", "padding", "endpoint", "sample-merged", "start-daemon"]
    assert names[13:] == ["color-match", "fill", "guidance-scale", "style", "loras"]
    assert sorted(DIALOG_ORDER) == sorted(names) and len(DIALOG_ORDER) == len(names)
    assert DIALOG_ORDER[DIALOG_ORDER.index("style") + 1] == "loras"  # the LoRAs under the style


def test_plugins_folder_follows_the_newest_gimp_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIMP 3.2 keeps its own profile (GIMP/3.2, copied from 3.0 at its first start)."""
    from inpaintd import install_gimp

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert install_gimp.default_plugins_dir() == tmp_path / "config" / "GIMP" / "3.0" / "plug-ins"  # none yet
    for version in ("3.0", "3.2", "3.x-backup"):
        (tmp_path / "config" / "GIMP" / version).mkdir(parents=True)
    assert install_gimp.default_plugins_dir() == tmp_path / "config" / "GIMP" / "3.2" / "plug-ins"
    flatpak = tmp_path / "home" / ".var" / "app" / "org.gimp.GIMP" / "config"
    assert install_gimp.profile_version(flatpak) == "3.0"
    (flatpak / "GIMP" / "3.2").mkdir(parents=True)
    assert install_gimp.profile_version(flatpak) == "3.2"


# -- the picked model's defaults (issue #11) -------------------------------------------------

_FLUX = {"id": "flux", "engine": "diffusers", "label": "FLUX.1 Fill", "schedulers": ["default", "euler"],
         "defaults": {"steps": 50, "guidance_scale": 30.0, "strength": 1.0, "scheduler": "default"},
         "takes": {"negative_prompt": False, "reference_image": False, "lora": True, "textual_inversion": False}}
_SD3 = {**_FLUX, "id": "sd3", "label": "Stable Diffusion 3.5",
        "defaults": {"steps": 28, "guidance_scale": 3.5, "strength": 1.0, "scheduler": "default"},
        "takes": {**_FLUX["takes"], "negative_prompt": True}}


def test_model_listing_tolerates_what_a_daemon_sends():
    assert logic.model_listing({"models": [_FLUX, "junk"], "default": "flux", "loaded": None}) == ([_FLUX], "flux")
    assert logic.model_listing({"models": None}) == ([], "")
    assert logic.model_listing(None) == ([], "")


def test_arg_values_names_the_gimp_arguments():
    assert logic.arg_values({"steps": 50, "negative_prompt": "", "guidance_scale": 30.0, "scheduler": "euler"}) == {
        "steps": 50, "negative-prompt": "", "guidance-scale": 30.0}  # the scheduler is no argument of the procedure


def test_dialog_follows_the_model_argument():
    """The dialog's model argument changing to a listed model puts its defaults in the
    other arguments and switches off what it ignores; the same text again (a keystroke
    that changed nothing) or an unknown one changes no value."""
    follower = logic.ModelFollower([_FLUX, _SD3], "sd3", "")
    assert follower.sensitivity(follower.caps()) == {"negative-prompt": ""}  # the daemon's default: sd3
    values, sensitivity = follower.changed("flux")
    assert values == {"strength": 1.0, "steps": 50, "guidance-scale": 30.0}
    assert sensitivity["negative-prompt"].startswith("FLUX.1 Fill does not use a negative prompt")
    assert follower.changed("flux ") is None
    assert follower.changed("fl") == ({}, {"negative-prompt": ""})  # typing: not a model (yet)
    assert follower.changed("sd3") == ({"strength": 1.0, "steps": 28, "guidance-scale": 3.5}, {"negative-prompt": ""})
    assert follower.changed("") == ({"strength": 1.0, "steps": 28, "guidance-scale": 3.5}, {"negative-prompt": ""})  # the default
    # an older daemon's entries: nothing applied, nothing switched off
    old = logic.ModelFollower([{"id": "flux", "engine": "diffusers"}], "", "")
    assert old.changed("flux") == ({}, {"negative-prompt": ""})


# -- the artist's loop: the dialog's faces, styles, result records, Vary, History ------------

_TINY = {"id": "/models/tiny-inpaint", "kind": "folder", "engine": "diffusers", "label": "Stable Diffusion 1.x",
         "available": True, "defaults": {"steps": 20, "guidance_scale": 7.5, "strength": 1.0, "scheduler": "default"},
         "takes": {"negative_prompt": True}}
_QUICK = {"name": "Quick draft", "source": "shipped", "description": "Few steps, for trying ideas quickly",
          "prompt": "", "settings": {"steps": 8}, "problem": ""}
_OIL = {"name": "Oil painting", "source": "shipped", "description": "Thick oil paint", "prompt": "oil painting of {prompt}",
        "settings": {"negative_prompt": "photo", "guidance_scale": 6.0, "model": "/models/tiny-inpaint"}, "problem": ""}


def _arg(name, specs=ARGS):
    return next(a for a in specs if a.name == name)


def test_special_values_show_words_for_automatic_numbers():
    assert {a.name: a.special for a in ARGS if a.special} == {
        "steps": "auto", "seed": "random", "padding": "auto", "guidance-scale": "auto"}
    assert _arg("steps").special_text(0) == "auto" and _arg("steps").special_text(20) is None
    assert _arg("seed").special_text(-1) == "random" and _arg("seed").special_text(0) is None
    assert _arg("padding").special_text(-1) == "auto" and _arg("guidance-scale").special_text(0.0) == "auto"
    assert _arg("seed").special_value(" Random ") == -1 and _arg("padding").special_value("auto") == -1
    assert _arg("steps").special_value("12") is None and _arg("variants").special_text(1) is None
    assert _arg("seed", logic.VARY_ARGS).special_text(-1) == "random"


def test_model_choices_name_the_default_and_every_model():
    models = [_TINY, {"id": "patchmatch", "engine": "classical", "label": ""},
              {"id": "org/big-model", "kind": "hub", "engine": "diffusers", "label": "", "available": False}]
    rows = logic.model_choices(models, "/models/tiny-inpaint", "")
    assert rows == [("", "The daemon's default: tiny-inpaint (Stable Diffusion 1.x)"),
                    ("/models/tiny-inpaint", "tiny-inpaint (Stable Diffusion 1.x)"),
                    ("patchmatch", "patchmatch (classical)"), ("org/big-model", "org/big-model – not available")]
    assert logic.model_choices(models, "patchmatch", " gone ")[-1] == ("gone", "gone (not listed by the daemon)")
    assert logic.model_choices([], "", "")[0] == ("", "The daemon's default")


def test_style_choices_and_fill_rows():
    broken = {"name": "Broken", "problem": "/x/Broken.json: not JSON"}
    rows = logic.style_choices([_QUICK, broken, "junk"], "quick DRAFT")
    assert rows == [("", "None"), ("Quick draft", "Quick draft – Few steps, for trying ideas quickly"),
                    ("Broken", "Broken (cannot be used: see `inpaintd styles`)")]
    assert logic.style_choices([], "Mine")[-1] == ("Mine", "Mine (not on this daemon)")
    assert [value for value, _ in logic.choice_rows("fill")] == ["auto", "none", "neutral", "blur", "classical"]


def test_style_settings_and_the_options_sent():
    from inpaintd_protocol import editor

    assert logic.find_style([_QUICK, _OIL], "quick draft") is _QUICK and logic.find_style([_QUICK], "") is None
    assert logic.style_settings({"settings": {"steps": 8, "strength": "x", "nonsense": 1, "color_match": 1}}) == {"steps": 8}
    caps = editor.model_caps(_TINY, "gimp")
    opts = Options(prompt="a cat", style="Quick draft").job_options()
    sent, runs = logic.options_for_job(opts, caps, _QUICK)
    assert sent["steps"] == 0 and runs["steps"] == 8  # left to the style, which the daemon applies
    assert editor.settings_text(runs, caps) == "Stable Diffusion 1.x: 8 steps, guidance 7.5, strength 1"
    assert logic.options_for_job(opts, caps, None)[0]["steps"] == 20  # no style: the model's default
    own = Options(prompt="a cat", style="Quick draft", steps=30).job_options()
    assert logic.options_for_job(own, caps, _QUICK)[0]["steps"] == 30  # the job's own choice wins
    assert logic.job_model(Options(style="Oil painting").job_options(), _OIL) == "/models/tiny-inpaint"
    assert logic.job_model(Options(model="patchmatch").job_options(), _OIL) == "patchmatch"
    sent, runs = logic.options_for_job(Options(style="Oil painting").job_options(), caps, _OIL)
    assert sent["guidance_scale"] == 0.0 and runs["guidance_scale"] == 6.0 and sent["steps"] == 20


def test_style_follower_puts_in_the_styles_settings_and_takes_them_back():
    follower = logic.StyleFollower([_QUICK, _OIL], "")
    current = {a.name: a.default for a in ARGS}
    fallback = {**current, "steps": 20, "guidance-scale": 7.5}
    assert follower.changed("", current, fallback) is None
    assert follower.changed("Quick draft", current, fallback) == {"steps": 8}
    current["steps"] = 8
    assert follower.changed("quick draft ", current, fallback) is None  # the same style
    change = follower.changed("Oil painting", current, fallback)
    assert list(change) == ["model", "steps", "negative-prompt", "guidance-scale"]  # the model first
    assert change == {"model": "/models/tiny-inpaint", "steps": 20, "negative-prompt": "photo", "guidance-scale": 6.0}
    current.update(change, **{"guidance-scale": 4.0})  # the artist changed the guidance afterwards
    assert follower.changed("", current, fallback) == {"model": "", "negative-prompt": ""}


def test_result_record_round_trip_and_tolerance():
    rec = logic.ResultRecord("0123456789abcdef", 1, 78, 113, 86, (96, 64), "tcp://127.0.0.1:7415",
                             {"prompt": "a cup", "steps": 8, "not_an_option": 1})
    again = logic.ResultRecord.from_bytes(rec.to_bytes())
    assert again == logic.ResultRecord("0123456789abcdef", 1, 78, 113, 86, (96, 64), "tcp://127.0.0.1:7415",
                                       {"prompt": "a cup", "steps": 8})
    assert not again.is_group and logic.ResultRecord("j", -1, variants=2).is_group
    assert logic.ResultRecord.from_bytes(list(rec.to_bytes())) == again  # GIMP may hand the data over as a list
    for junk in (None, b"", b"not json", b"[]", b'{"job": ""}', b'{"job": 5}', b"\xff"):
        assert logic.ResultRecord.from_bytes(junk) is None
    odd = logic.ResultRecord.from_bytes(b'{"job": "j", "variant": true, "origin": [1], "options": [1], "endpoint": 3}')
    assert odd == logic.ResultRecord("j", 0)
    assert logic.vary_origin(rec, 209, 150) == (96, 64)  # unmoved
    assert logic.vary_origin(rec, 219, 140) == (106, 54)  # moved by the artist: the new layers follow


def test_image_remembers_where_jobs_went():
    data = logic.remember_job(None, "a", (1, 2))
    data = logic.remember_job(data, "b", (3, 4))
    assert logic.known_jobs(data) == {"a": (1, 2), "b": (3, 4)}
    assert list(logic.known_jobs(logic.remember_job(data, "c", (0, 0), limit=2))) == ["b", "c"]
    assert logic.known_jobs(b"junk") == {} and logic.known_jobs(b'{"x": [1, "y"], "z": [5, 6]}') == {"z": (5, 6)}


def test_vary_and_history_arguments():
    assert [a.name for a in logic.VARY_ARGS] == ["preset", "prompt", "variants", "seed", "endpoint"]
    assert [a.name for a in logic.HISTORY_ARGS] == ["job", "search", "endpoint"]
    for specs in (logic.VARY_ARGS, logic.HISTORY_ARGS):
        assert [a.position for a in specs] == list(range(len(specs)))
        mnemonics = [a.label[a.label.index("_") + 1].lower() for a in specs]
        assert len(set(mnemonics)) == len(mnemonics) and not set(mnemonics) & set("ocrhsl")
    assert [c[0] for c in _arg("preset", logic.VARY_ARGS).choices] == ["subtle", "strong"]
    good = {"preset": "strong", "prompt": None, "variants": 3, "seed": -1, "endpoint": None}
    assert logic.arg_problems(logic.VARY_ARGS, good) == []
    assert logic.arg_values_of(logic.VARY_ARGS, good) == {"preset": "strong", "prompt": "", "variants": 3, "seed": -1,
                                                          "endpoint": ""}
    bad = {"preset": "wild", "prompt": "x" * 4001, "variants": 0, "seed": -2, "endpoint": "localhost:1"}
    problems = " | ".join(logic.arg_problems(logic.VARY_ARGS, bad))
    for needle in ("'wild' is not one of subtle, strong", "4001 characters", "Variants must be at least 1",
                   "Seed must be at least -1", "not a ZeroMQ endpoint"):
        assert needle in problems, problems
    assert "must be a whole" not in problems and logic.arg_problems(logic.VARY_ARGS, {"variants": True})
    assert logic.arg_problems(logic.HISTORY_ARGS, {"job": None, "search": "cup", "endpoint": ""}) == []


def test_vary_requests():
    rec = logic.ResultRecord("j", 1, 78, 10, 20, (0, 0), "", {"prompt": "a cup", "steps": 8, "seed": 77,
                                                              "strength": 1.0, "variants": 2, "style": "Quick draft"})
    assert logic.vary_overrides("", 2, -1) == {"variants": 2}
    assert logic.vary_overrides(" a pear ", 1, 5) == {"variants": 1, "prompt": "a pear", "seed": 5}
    assert logic.vary_pixels_options(rec, {"variants": 1}) == {"prompt": "a cup", "steps": 8, "style": "Quick draft",
                                                               "variants": 1}
    assert logic.varied_options(rec, {"prompt": "a pear", "variants": 1}) == {
        "prompt": "a pear", "steps": 8, "style": "Quick draft", "variants": 1}
    assert logic.vary_group_name("subtle", "", rec) == "Vary (subtle): a cup"
    assert logic.vary_group_name("strong", "a pear", rec) == "Remix: a pear"
    assert "'photo' is not a result of inpaintd: select one of the variant layers" in logic.not_a_result("photo")
    assert logic.vary_subject("Variant 2/2 (seed 78)", rec) == "Varies 'Variant 2/2 (seed 78)' (job j): a cup"


def test_history_entry_choice_and_place():
    entries = [{"job": "abc123", "prompt": "a cup", "created": 0.0, "variants": [{}, {}], "kind": "inpaint"},
               {"job": "abd456", "prompt": "a pear", "kind": "vary", "variants": [{}]}]
    assert logic.pick_entry(entries, "abc123")["prompt"] == "a cup"
    assert logic.pick_entry(entries, "abd")["prompt"] == "a pear"
    assert logic.pick_entry(entries, "ab") is None and logic.pick_entry(entries, "zz") is None
    rows = logic.history_choices(entries, "")
    assert rows[0][0] == "" and rows[1][0] == "abc123" and "a cup  (2 variants, abc123)" in rows[1][1]
    assert "vary: a pear  (1 variant, abd456)" in rows[2][1] and rows[2][1].startswith("?")
    entry = {"job": "v", "parent": "p", "canvas": {"width": 448, "height": 336}}
    assert logic.history_origin(entry, {"v": (5, 6)}, (640, 480), None) == ((5, 6), "")
    assert logic.history_origin(entry, {"p": (7, 8)}, (640, 480), None) == ((7, 8), "")  # where its parent went
    assert logic.history_origin(entry, {}, (448, 336), None) == ((0, 0), "")  # the crop was the canvas
    assert logic.history_origin(entry, {}, (640, 480), Rect(96, 64, 448, 336)) == ((96, 64), "")  # the layer's
    origin, note = logic.history_origin(entry, {}, (640, 480), Rect(0, 0, 10, 10))
    assert origin == (0, 0) and "top-left" in note
    assert "no job 'x'" in logic.no_history_entry("x", "") and "containing 'cup'" in logic.no_history_entry("", "cup")
    assert "empty" in logic.no_history_entry("", "")


# -- LoRAs and Teach Subject from Layers (issue #12) ------------------------------------------------


def test_loras_argument_is_parsed():
    assert logic.parse_loras("") == ([], []) and logic.parse_loras(" , ") == ([], [])
    assert logic.parse_loras("ink:0.8, my_cat:1") == ([("ink", 0.8), ("my_cat", 1.0)], [])
    # a name alone: the LoRA's default weight (None here); names may hold spaces; A1111 tags are taken
    assert logic.parse_loras("film grain, ink : -0.5,<lora:sks_cat:0.7>") == (
        [("film grain", None), ("ink", -0.5), ("sks_cat", 0.7)], [])
    assert logic.parse_loras("v1.5:2") == ([("v1.5", 2.0)], [])
    assert logic.parse_loras("ink:0")[0] == [("ink", 0.0)]


@pytest.mark.parametrize("text,needle", [
    ("ink:strong", "the weight after ':' must be a number, e.g. 'ink:0.8'"),
    ("ink:2.5", "weight 2.5 is out of range -2 to 2"),
    ("ink:nan", "out of range"),
    (":0.5", "has no name"),
    (",".join(f"l{i}" for i in range(9)), "9 LoRAs given; a job takes at most 8"),
])
def test_bad_loras_argument_is_refused_in_words(text, needle):
    parsed, problems = logic.parse_loras(text)
    assert problems and needle in problems[0], problems
    assert needle in " | ".join(Options(loras=text).validate())


def test_lora_weights_default_to_the_daemons():
    listed = logic.lora_entries({"loras": [{"name": "Ink", "default_weight": 0.6}, {"name": "x"}, "junk", {}]})
    assert [e["name"] for e in listed] == ["Ink", "x"]
    assert logic.lora_weights([("ink", None), ("x", None), ("y", 0.3)], listed) == [
        ("ink", 0.6), ("x", 1.0), ("y", 0.3)]
    assert logic.lora_weights([("ink", None)]) == [("ink", 1.0)]


def test_the_dialog_names_the_daemons_loras():
    body = {"lora_dir": "/data/loras", "loras": [
        {"name": "ink", "family": "sd15", "trigger_words": ["inkwash"]},
        {"name": "odd", "family": "", "trigger_words": []},
        {"name": "old", "family": "sd15", "problem": "a pickle file:\n start with --allow-pickle"}]}
    text = logic.loras_listing(body)
    assert text == ("The daemon's LoRAs in /data/loras: ink (sd15; trigger words: inkwash); odd (unknown family); "
                    "old (cannot be used: a pickle file: start with --allow-pickle).")
    assert "no LoRAs in /data/loras" in logic.loras_listing({"lora_dir": "/data/loras", "loras": []})
    assert "no LoRAs" in logic.loras_listing(None)
    many = logic.loras_listing({"loras": [{"name": f"l{i}", "family": "sd15"} for i in range(15)]})
    assert many.endswith("l11 (sd15); and 3 more (`inpaintd loras`).") and "l12" not in many


def test_teach_subject_arguments():
    specs = logic.TRAIN_ARGS
    assert [a.name for a in specs] == ["token", "class-noun", "name", "steps", "resolution", "model", "endpoint"]
    assert [a.position for a in specs] == list(range(len(specs)))
    mnemonics = [a.label[a.label.index("_") + 1].lower() for a in specs]
    assert len(set(mnemonics)) == len(mnemonics) and not set(mnemonics) & set("ocrhsl")
    good = {"token": "sks", "class-noun": "cat", "name": "", "steps": 6, "resolution": 64, "model": None,
            "endpoint": ""}
    assert logic.train_problems(good) == []
    assert logic.arg_values_of(specs, good)["model"] == ""
    for change, needle in [({"token": "two words"}, "Token must be one word"), ({"class-noun": " "}, "Class noun"),
                           ({"name": "bad name!"}, "LoRA name 'bad name!'"), ({"resolution": 100}, "multiple of 64"),
                           ({"steps": 0}, "Steps must be at least 1"), ({"endpoint": "nope"}, "ZeroMQ")]:
        problems = logic.train_problems({**good, **change})
        assert problems and needle in problems[0], (change, problems)
    assert logic.lora_name_for("sks", "teddy bear") == "sks_teddy_bear"
    assert logic.lora_name_for("", "!!") == "subject"
    assert logic.train_settings(6, 64, " ") == {"steps": 6, "resolution": 64}
    assert logic.train_settings(6, 0, "m")["model"] == "m"


def test_training_pictures_and_masks():
    assert "3 to 30 pictures" in logic.training_layers_problem([("a", 8, 8), ("b", 8, 8)])
    assert "2 selected)" in logic.training_layers_problem([("a", 8, 8), ("b", 8, 8)])
    assert "'big' is 5000×10" in logic.training_layers_problem([("a", 8, 8), ("b", 8, 8), ("big", 5000, 10)])
    assert logic.training_layers_problem([("a", 8, 8)] * 3) == ""
    rgb, alpha = logic.split_alpha(bytes([1, 2, 3, 255, 4, 5, 6, 0]))
    assert (rgb, alpha) == (bytes([1, 2, 3, 4, 5, 6]), bytes([255, 0]))
    assert logic.subject_mask(b"\xff\xff", None, "a") is None  # opaque: the whole picture
    assert logic.subject_mask(b"\xff\x00", None, "a") == b"\xff\x00"  # its alpha
    assert logic.subject_mask(b"\xff\xff", b"\x00\x80", "a") == b"\x00\x80"  # the selection wins
    with pytest.raises(ValueError, match="fully transparent"):
        logic.subject_mask(b"\x00\x00", None, "a")
    with pytest.raises(ValueError, match="does not reach layer 'a'"):
        logic.subject_mask(b"\xff\xff", b"\x00\x00", "a")
    assert "3 layers: 'a', 'b', 'c' (the selection marks" in logic.training_subject(["a", "b", "c"], True)
    assert "1 selected)" in logic.training_subject(["a"], False)


def test_training_progress_and_message():
    assert logic.training_progress("training", 12, 400, None, 0.08312, 190.2) == (
        "Training 12/400 – loss 0.0831 – about 3 min 11 s left", 12 / 400)
    assert logic.training_progress("training", 1, 6, None, None, None) == ("Training 1/6", 1 / 6)
    assert logic.training_progress("queued", 0, 0, 1, None, None) == ("Queued: 1 job ahead", 0.0)
    assert logic.training_progress("preparing", 3, 10, None, None, None)[0] == "Making pictures of the class 3/10"
    assert [logic.duration_words(s) for s in (0, 44.2, 61, 1800, 3725)] == [
        "0 s", "45 s", "1 min 01 s", "30 min", "1 h 02 min"]
    text = logic.trained_message({"name": "sks_cat", "steps": 6, "final_loss": 0.1234}, "sks", "cat")
    assert "learned 'sks cat' as the LoRA 'sks_cat' (6 steps, final loss 0.1234)" in text
    assert "<lora:sks_cat:1>" in text and "'sks_cat:1' in the LoRAs field" in text
