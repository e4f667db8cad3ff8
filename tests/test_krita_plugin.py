"""The Krita plugin inside the real Krita (Debian's Krita 5.1.5 runs headless under xvfb).

Three runs, each against a real daemon:
1. `kritarunner` runs pytest inside Krita on tests/krita/test_in_krita.py (classical
   engine): the plugin's own controller, docker panel and Krita glue on real documents in
   a real window.
2. The same, `-k diffusion`, against a daemon on the tiny random diffusion pipeline (CPU):
   a Generate with denoising progress, and Cancel of a job while it is denoising.
3. The real `krita` binary starts with the plugin installed by `inpaintd install-krita`
   into a private Krita profile; a helper plugin opens the inpaintd docker, triggers the
   `inpaintd_inpaint_selection` action and takes a screenshot of the docker (classical).
4. `-k loop`, against a daemon on the tiny diffusion pipeline with a tiny IP-Adapter (it
   takes reference images): the artist's loop in the docker (history strip, Vary Subtle and
   Strong, Remix, a style from the box, Save style, Apply as layer, Star, Copy settings, a
   reference layer, the layer -> job map across a .kra save, and a vary that sends its
   pixels to a daemon that keeps no history).
5. The zip from `inpaintd package-krita` (packaging.build_krita), imported by Krita's own
   Import Python Plugin from File code (helper plugin tests/krita/inpaintd_zipimport),
   then, in a Krita whose Python cannot see Debian's zmq and msgpack
   (tests/krita/hide_system), the self-test of 3 runs a job through it on the plugin's own
   pyzmq wheel and msgpack; and a package lacking the wheel for this Python names it.
6. `-k teach`, against a daemon on the tiny diffusion pipeline with a tiny LoRA: the LoRA
   picker (a LoRA changes a same-seed Generate, weight 0 does not) and Teach subject from
   three selected layers.

Skipped, with the reason, only where Krita or xvfb is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KRITA_TESTS = ROOT / "tests" / "krita"

pytestmark = [
    pytest.mark.krita,
    pytest.mark.timeout(900),  # Krita's own suite runs under one test, with its own 300 s limit
    pytest.mark.skipif(shutil.which("kritarunner") is None, reason="Krita is not installed (apt-get install -y krita xvfb)"),
    pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed (apt-get install -y xvfb)"),
]


def pytest_shim(tmp: Path) -> Path:
    """A folder holding only pytest and its pure-Python dependencies from this venv, so
    Krita's own Python (the system's) can run pytest without the venv's compiled packages."""
    import _pytest
    import iniconfig
    import packaging
    import pluggy

    shim = tmp / "pytest-shim"
    shim.mkdir(exist_ok=True)
    for mod in (pytest, _pytest, pluggy, iniconfig, packaging):
        src = Path(mod.__file__)
        src = src.parent if src.name == "__init__.py" else src
        link = shim / src.name
        if not link.exists():
            link.symlink_to(src)
    return shim


def krita_env(daemon_env: dict[str, str], tmp: Path, *paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("INPAINTD_ENDPOINT", "INPAINTD_KEY", "INPAINTD_RUNTIME_DIR", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    env.update(daemon_env)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["INPAINTD_TEST_ROOT"] = str(ROOT)
    env["INPAINTD_TEST_PYTHON"] = sys.executable
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["QT_QPA_PLATFORM"] = "xcb"
    env.setdefault("XDG_RUNTIME_DIR", str(tmp / "xdg-runtime"))
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    return env


def _tail(text: str, n: int = 60) -> str:
    keep = [line for line in text.splitlines() if "SAFE ASSERT" not in line and "krita.lib.resources" not in line]
    return "\n".join(keep[-n:])


def run_pytest_in_krita(daemon_env: dict[str, str], tmp: Path, extra_args: str = "", **more_env: str) -> tuple[str, float]:
    """pytest inside Krita on tests/krita/test_in_krita.py; returns (output, seconds)."""
    env = krita_env(daemon_env, tmp, KRITA_TESTS, ROOT / "krita_plugin", ROOT / "protocol", pytest_shim(tmp))
    env["INPAINTD_KRITA_PYTEST_ARGS"] = f'{os.environ.get("INPAINTD_KRITA_PYTEST_ARGS", "-s -ra")} {extra_args}'.strip()
    env.update(more_env)
    t = time.monotonic()
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "kritarunner", "-s", "run_in_krita", "-f", "main"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - t
    out = proc.stdout + proc.stderr
    print(_tail(out, 40))
    log = os.environ.get("INPAINTD_KRITA_LOG")
    if log:
        with open(log, "a") as f:
            f.write(out)
    assert proc.returncode == 0, f"pytest inside Krita failed (rc {proc.returncode}):\n{_tail(out)}"
    return out, elapsed


def test_plugin_inside_krita(daemon, tmp_path: Path) -> None:
    out, elapsed = run_pytest_in_krita(daemon.env, tmp_path)
    print(f"[timing] in-Krita test run: {elapsed:.1f} s")
    assert " passed" in out


def test_diffusion_inside_krita(tiny_daemon, tmp_path: Path) -> None:
    """The same docker against a daemon on the tiny random diffusion pipeline (CPU): a
    Generate with 2 variants and a fixed seed, and Cancel of a job while it denoises."""
    out, elapsed = run_pytest_in_krita(
        tiny_daemon.env, tmp_path, "-k diffusion",
        INPAINTD_TEST_DIFFUSION="1", INPAINTD_TEST_DAEMON_LOG=str(tiny_daemon.log_path),
    )
    print(f"[timing] in-Krita diffusion run: {elapsed:.1f} s")
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    assert summary and re.search(r"\b2 passed\b", summary[-1]) and "skipped" not in summary[-1], summary[-1:]
    assert "job " in tiny_daemon.log() and "cancelled after" in tiny_daemon.log()


@pytest.fixture(scope="module")
def family_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The tiny SD pipeline as the default model and a tiny FLUX.1 Fill beside it."""
    from daemons import start_daemon

    from inpaintd.testmodel import make_family_test_model

    flux = make_family_test_model(tmp_path_factory.mktemp("family-models") / "tiny-flux-fill", "flux-fill")
    d = start_daemon(tmp_path_factory.mktemp("family-daemon"), "--model", str(tiny_model_dir),
                     "--extra-model", str(flux), "--device", "cpu")
    yield d, str(flux.resolve())
    d.stop()


def test_new_family_model_inside_krita(family_daemon, tmp_path: Path) -> None:
    """The docker applies a FLUX.1 Fill model's defaults when it is picked, and a job runs on
    it through the plugin (tests/krita/test_in_krita.py, `-k family`)."""
    daemon, flux = family_daemon
    out, elapsed = run_pytest_in_krita(daemon.env, tmp_path, "-k family", INPAINTD_TEST_FAMILY_MODEL=flux)
    print(f"[timing] in-Krita new-family run: {elapsed:.1f} s")
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    assert summary and re.search(r"\b1 passed\b", summary[-1]) and "failed" not in summary[-1], summary[-1:]


@pytest.fixture(scope="module")
def loop_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The tiny SD pipeline as the default model, served with a tiny IP-Adapter (so it takes
    reference images), keeping a history and styles in its own data folder."""
    from daemons import start_daemon

    from inpaintd.testmodel import make_test_ip_adapter

    adapter = make_test_ip_adapter(tmp_path_factory.mktemp("ip-adapter") / "IP-Adapter", tiny_model_dir)
    d = start_daemon(tmp_path_factory.mktemp("loop-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--ip-adapter", str(adapter))
    yield d
    d.stop()


LOOP_TESTS = 10  # the test_loop_* functions in tests/krita/test_in_krita.py


def test_artists_loop_inside_krita(loop_daemon, tmp_path: Path) -> None:
    """Vary, Remix, the history strip, styles and a reference layer through the docker
    (tests/krita/test_in_krita.py, `-k loop`), checked against the daemon's history."""
    shot = tmp_path / "krita-loop.png"
    out, elapsed = run_pytest_in_krita(loop_daemon.env, tmp_path, "-k loop", INPAINTD_TEST_LOOP="1",
                                       INPAINTD_TEST_LOOP_SHOT=str(shot))
    print(f"[timing] in-Krita artist's loop run: {elapsed:.1f} s")
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    assert summary and re.search(rf"\b{LOOP_TESTS} passed\b", summary[-1]) and "skipped" not in summary[-1], summary[-1:]
    assert shot.is_file() and shot.stat().st_size > 5000, "no screenshot of the docker after the loop"
    if os.environ.get("INPAINTD_UPDATE_SCREENSHOT"):
        shutil.copy2(shot, ROOT / "docs" / "krita-loop.png")


@pytest.fixture(scope="module")
def teach_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The tiny SD pipeline, its --lora-dir holding a tiny random LoRA `ink` (trigger words
    "inky lines"); it trains LoRAs too (Teach subject)."""
    from daemons import start_daemon

    from inpaintd.testmodel import make_test_lora

    folder = tmp_path_factory.mktemp("krita-loras")
    make_test_lora(tiny_model_dir, folder / "ink.safetensors", seed=1)
    (folder / "ink.json").write_text(json.dumps({"trigger_words": ["inky lines"]}))
    d = start_daemon(tmp_path_factory.mktemp("teach-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--lora-dir", str(folder))
    yield d
    d.stop()


def test_loras_and_teach_subject_inside_krita(teach_daemon, tmp_path: Path) -> None:
    """The LoRA picker (a LoRA changes a same-seed Generate, weight 0 does not) and Teach
    subject from 3 selected layers, whose LoRA then shows in the picker
    (tests/krita/test_in_krita.py, `-k teach`)."""
    out, elapsed = run_pytest_in_krita(teach_daemon.env, tmp_path, "-k teach", INPAINTD_TEST_TEACH="1")
    print(f"[timing] in-Krita LoRA and teach run: {elapsed:.1f} s")
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    assert summary and re.search(r"\b2 passed\b", summary[-1]) and "skipped" not in summary[-1], summary[-1:]


def krita_profile(tmp: Path, *helpers: str) -> tuple[Path, Path]:
    """A private Krita profile (XDG data and config folders) with the test helper plugins
    from tests/krita installed and enabled; returns (pykrita folder, kritarc)."""
    from inpaintd.install_krita import enable_in_kritarc

    data, config = tmp / "data", tmp / "config"
    pykrita = data / "krita" / "pykrita"
    pykrita.mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    for name in helpers:
        shutil.copytree(KRITA_TESTS / name, pykrita / name)
        shutil.copy2(KRITA_TESTS / f"{name}.desktop", pykrita / f"{name}.desktop")
        enable_in_kritarc(config / "kritarc", name)
    # xvfb has no usable OpenGL for Krita's canvas (it crashes compiling its shaders): paint in software
    (config / "kritadisplayrc").write_text("[General]\nOpenGLRenderer=none\n")
    return pykrita, config / "kritarc"


def run_krita_window(tmp: Path, report: Path, daemon_env: dict[str, str] | None = None,
                     pythonpath: tuple[Path, ...] = (), timeout: float = 240, **more_env: str) -> tuple[dict, str, int]:
    """The real `krita` binary under xvfb on the profile krita_profile(tmp) made; a helper
    plugin there writes `report` and quits Krita.  Returns (report, Krita's output, rc)."""
    env = krita_env(daemon_env or {}, tmp, *pythonpath)
    if not pythonpath:
        env.pop("PYTHONPATH")  # the plugin must work from its install alone
    env.update(XDG_DATA_HOME=str(tmp / "data"), XDG_CONFIG_HOME=str(tmp / "config"), **more_env)
    t = time.monotonic()
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", "krita", "--nosplash"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout,
    )
    elapsed = time.monotonic() - t
    out = proc.stdout + proc.stderr
    log = os.environ.get("INPAINTD_KRITA_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"==== krita --nosplash ({report.name}), rc {proc.returncode}\n{out}")
    assert report.exists(), f"Krita wrote no report (rc {proc.returncode}):\n{_tail(out)}"
    result = json.loads(report.read_text())
    print(json.dumps(result, indent=1))
    print(f"[timing] Krita window session ({report.name}): {elapsed:.1f} s")
    return result, out, proc.returncode


def test_installed_plugin_in_a_krita_window(daemon, tmp_path: Path) -> None:
    """install-krita into a private profile, then the docker and the action in the real Krita."""
    from inpaintd.install_krita import install

    pykrita, kritarc = krita_profile(tmp_path, "inpaintd_selftest")  # the helper that drives the session
    old = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    os.environ["XDG_DATA_HOME"], os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "data"), str(tmp_path / "config")
    try:
        assert install() == 0  # default folder under XDG_DATA_HOME, enabled in XDG_CONFIG_HOME/kritarc
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert (pykrita / "inpaintd_krita.desktop").is_file()
    assert (pykrita / "inpaintd_krita" / "_vendor" / "inpaintd_protocol" / "client.py").is_file()
    assert "enable_inpaintd_krita=true" in kritarc.read_text()

    report = tmp_path / "report.json"
    result, out, rc = run_krita_window(tmp_path, report, daemon.env, INPAINTD_SELFTEST_REPORT=str(report),
                                       INPAINTD_SELFTEST_SHOTS=str(tmp_path / "shots"))
    assert_job_went_through(result, pykrita)
    assert result["vendored_protocol"], "the plugin did not use its vendored client library"
    assert result["variants"][0]["visible"] and not result["variants"][1]["visible"]
    assert all("seed" in v["name"] for v in result["variants"])
    assert result["progress_seen"], result
    shot = Path(result["docker_shot"])
    assert shot.is_file() and shot.stat().st_size > 5000
    if os.environ.get("INPAINTD_UPDATE_SCREENSHOT"):
        shutil.copy2(shot, ROOT / "docs" / "krita-docker.png")
        shutil.copy2(result["window_shot"], ROOT / "docs" / "krita-window.png")
    assert rc == 0, f"Krita exited with {rc}:\n{_tail(out)}"


def assert_job_went_through(result: dict, pykrita: Path) -> None:
    """The self-test's job on the classical daemon: two variant layers in a group, source untouched."""
    assert result.get("error") is None, result
    assert result["docker_found"] and result["action_found"]
    assert result["plugin_module"].startswith(str(pykrita)), "Krita did not load the installed copy"
    assert result["connected"], result
    assert result["busy_after_adding"] == [True], "the plugin looked idle before its layers were in"
    assert result["group"] == "Inpaint: a ceramic saucer" and len(result["variants"]) == 2, result
    assert result["source_unchanged"]


# -- the package from `inpaintd package-krita`, imported by Krita's own importer ----------------

HIDE_SYSTEM = KRITA_TESTS / "hide_system"  # sitecustomize: Debian's zmq and msgpack refused


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def krita_zip(tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path) -> Path:
    from inpaintd import packaging

    built = packaging.build_krita(tmp_path_factory.mktemp("krita-zip"), cache=wheel_cache)
    print(built.summary())
    return built.path


def test_zip_imported_by_krita_runs_a_job_without_system_pyzmq(daemon, krita_zip: Path, tmp_path: Path) -> None:
    """The zip that `inpaintd package-krita` builds, imported through Krita's own Import
    Python Plugin from File code, runs a job in a Krita whose Python cannot see Debian's
    pyzmq and msgpack: the plugin's own wheel and vendored msgpack serve instead.

    Run 1: the helper plugin inpaintd_zipimport calls Krita's PluginImporterExtension.do_import
    on the zip (dialogs answered Yes), then quits Krita normally so kritarc is written.
    Run 2: the same profile with tests/krita/hide_system on PYTHONPATH; the self-test drives
    a job through the imported plugin and reports where zmq and msgpack came from."""
    pykrita, kritarc = krita_profile(tmp_path, "inpaintd_zipimport")
    imported = tmp_path / "import.json"
    result, out, _ = run_krita_window(tmp_path, imported, timeout=120, INPAINTD_ZIPIMPORT_ZIP=str(krita_zip),
                                      INPAINTD_ZIPIMPORT_REPORT=str(imported))
    assert result["error"] is None and not result["warnings"], result
    assert result["importer_module"] == "/usr/share/krita/pykrita/plugin_importer/plugin_importer_extension.py"
    assert [q["title"] for q in result["questions"]] == ["Activate Plugins?"], result["questions"]
    assert result["activated"] == ["inpaintd_krita"] and result["enable_setting"] == "true"
    assert (pykrita / "inpaintd_krita.desktop").is_file()
    assert (pykrita / "inpaintd_krita" / "_deps" / "manifest.json").is_file()
    assert "enable_inpaintd_krita=true" in kritarc.read_text(), "Krita's activate_plugins did not reach kritarc"

    # run 2: the self-test instead of the importer, Debian's zmq and msgpack hidden
    shutil.rmtree(pykrita / "inpaintd_zipimport")
    (pykrita / "inpaintd_zipimport.desktop").unlink()
    shutil.copytree(KRITA_TESTS / "inpaintd_selftest", pykrita / "inpaintd_selftest")
    shutil.copy2(KRITA_TESTS / "inpaintd_selftest.desktop", pykrita / "inpaintd_selftest.desktop")
    from inpaintd.install_krita import enable_in_kritarc

    enable_in_kritarc(kritarc, "inpaintd_selftest")
    report = tmp_path / "report.json"
    result, out, rc = run_krita_window(tmp_path, report, daemon.env, pythonpath=(HIDE_SYSTEM,), timeout=120,
                                       INPAINTD_SELFTEST_REPORT=str(report), INPAINTD_SELFTEST_SHOTS=str(tmp_path / "shots"))
    assert_job_went_through(result, pykrita)
    plugin = pykrita / "inpaintd_krita"
    hide = result["hide_system"]
    assert hide is not None and hide["module"] == str(HIDE_SYSTEM / "sitecustomize.py"), "Krita's Python did not run the hiding"
    assert {(r["module"], Path(r["origin"]).parent.parent) for r in hide["refused"]} >= {
        ("zmq", Path("/usr/lib/python3/dist-packages")), ("msgpack", Path("/usr/lib/python3/dist-packages"))}, hide
    assert all("hidden by the test" in hide["startup_probe"][m] for m in ("zmq", "msgpack")), hide
    assert result["deps"]["problem"] is None and "-cp311-" in result["deps"]["wheel"], result["deps"]
    assert Path(result["zmq_file"]).is_relative_to(Path(result["deps"]["folder"])), result["zmq_file"]
    assert Path(result["deps"]["folder"]).parent == plugin / "_deps"
    assert Path(result["msgpack_file"]).is_relative_to(plugin / "_vendor"), result["msgpack_file"]
    assert rc == 0, f"Krita exited with {rc}:\n{_tail(out)}"


def test_zip_without_a_wheel_for_this_python_says_which(krita_zip: Path, wheel_cache: Path, tmp_path: Path) -> None:
    """A package built without the Python 3.11 row, in a Krita that cannot see Debian's
    pyzmq: the docker names the missing wheel (Activation.problem through import_error).
    Unpacked as Krita's importer does (run 1 of the test above covers the importer itself)."""
    import zipfile

    from inpaintd import packaging
    from inpaintd.install_krita import enable_in_kritarc

    targets = [t for t in packaging.KRITA_TARGETS if t.python != "3.11"]
    built = packaging.build_krita(tmp_path / "out", targets=targets, cache=wheel_cache)
    pykrita, kritarc = krita_profile(tmp_path, "inpaintd_selftest")
    with zipfile.ZipFile(built.path) as zf:
        zf.extractall(pykrita)
    enable_in_kritarc(kritarc, "inpaintd_krita")
    report = tmp_path / "report.json"
    result, out, rc = run_krita_window(tmp_path, report, pythonpath=(HIDE_SYSTEM,), timeout=120,
                                       INPAINTD_SELFTEST_REPORT=str(report), INPAINTD_SELFTEST_EXPECT="import_error")
    assert result.get("error") is None, result
    assert result["plugin_module"].startswith(str(pykrita)) and result["docker_found"], result
    assert result["deps"]["wheel"] is None and "Python 3.11" in result["deps"]["problem"], result["deps"]
    error = result["import_error"]
    assert "No module named 'zmq'" in error and "carries no pyzmq wheel" in error and "Python 3.11" in error, error
    assert "--python 3.11" in error, error
    assert result["message_shown"] == error and result["message_after_trigger"] == error, result
    assert result["zmq_file"] is None
    assert rc == 0, f"Krita exited with {rc}:\n{_tail(out)}"
