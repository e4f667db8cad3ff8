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


def test_installed_plugin_in_a_krita_window(daemon, tmp_path: Path) -> None:
    """install-krita into a private profile, then the docker and the action in the real Krita."""
    from inpaintd.install_krita import enable_in_kritarc, install

    data, config = tmp_path / "data", tmp_path / "config"
    pykrita = data / "krita" / "pykrita"
    old = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    os.environ["XDG_DATA_HOME"], os.environ["XDG_CONFIG_HOME"] = str(data), str(config)
    try:
        assert install() == 0  # default folder under XDG_DATA_HOME, enabled in XDG_CONFIG_HOME/kritarc
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert (pykrita / "inpaintd_krita.desktop").is_file()
    assert (pykrita / "inpaintd_krita" / "_vendor" / "inpaintd_protocol" / "client.py").is_file()
    assert "enable_inpaintd_krita=true" in (config / "kritarc").read_text()
    # the helper plugin that drives the session from inside Krita
    shutil.copytree(KRITA_TESTS / "inpaintd_selftest", pykrita / "inpaintd_selftest")
    shutil.copy2(KRITA_TESTS / "inpaintd_selftest.desktop", pykrita / "inpaintd_selftest.desktop")
    enable_in_kritarc(config / "kritarc", "inpaintd_selftest")
    # xvfb has no usable OpenGL for Krita's canvas (it crashes compiling its shaders): paint in software
    (config / "kritadisplayrc").write_text("[General]\nOpenGLRenderer=none\n")

    report = tmp_path / "report.json"
    env = krita_env(daemon.env, tmp_path)  # no PYTHONPATH: the plugin must work from its install alone
    env.pop("PYTHONPATH")
    env.update(XDG_DATA_HOME=str(data), XDG_CONFIG_HOME=str(config), INPAINTD_SELFTEST_REPORT=str(report),
               INPAINTD_SELFTEST_SHOTS=str(tmp_path / "shots"))
    t = time.monotonic()
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", "krita", "--nosplash"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    elapsed = time.monotonic() - t
    out = proc.stdout + proc.stderr
    Path(os.environ.get("INPAINTD_KRITA_LOG", "/dev/null")).write_text(out)
    assert report.exists(), f"Krita wrote no report (rc {proc.returncode}):\n{_tail(out)}"
    result = json.loads(report.read_text())
    print(json.dumps(result, indent=1))
    print(f"[timing] Krita window session: {elapsed:.1f} s")
    assert result.get("error") is None, result
    assert result["docker_found"] and result["action_found"]
    assert result["plugin_module"].startswith(str(pykrita)), "Krita did not load the installed copy"
    assert result["vendored_protocol"], "the plugin did not use its vendored client library"
    assert result["connected"], result
    assert result["busy_after_adding"] == [True], "the plugin looked idle before its layers were in"
    assert result["group"] == "Inpaint: a ceramic saucer" and len(result["variants"]) == 2, result
    assert result["variants"][0]["visible"] and not result["variants"][1]["visible"]
    assert all("seed" in v["name"] for v in result["variants"])
    assert result["progress_seen"], result
    assert result["source_unchanged"]
    shot = Path(result["docker_shot"])
    assert shot.is_file() and shot.stat().st_size > 5000
    if os.environ.get("INPAINTD_UPDATE_SCREENSHOT"):
        shutil.copy2(shot, ROOT / "docs" / "krita-docker.png")
        shutil.copy2(result["window_shot"], ROOT / "docs" / "krita-window.png")
    assert proc.returncode == 0, f"Krita exited with {proc.returncode}:\n{_tail(out)}"
