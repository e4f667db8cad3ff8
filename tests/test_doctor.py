"""`inpaintd doctor`: each check once failing and once passing, on fakes (no GPU, no editor),
and the daemon line against real daemons over real sockets."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import DaemonProcess, free_port

from inpaintd import doctor
from inpaintd.doctor import FAIL, OK, SKIP, WARN, Check, Editor
from inpaintd.engines.base import ModelInfo

# -- fakes --------------------------------------------------------------------------------


def fake_torch(cuda: bool = False, cuda_build: str | None = None, mps: bool = False) -> Any:
    return SimpleNamespace(
        __version__="2.13.0",
        version=SimpleNamespace(cuda=cuda_build),
        cuda=SimpleNamespace(
            is_available=lambda: cuda, device_count=lambda: 1, get_device_name=lambda i: "NVIDIA H200",
            mem_get_info=lambda i: (100 * 2**30, 140 * 2**30),
        ),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)),
    )


def runner(results: Mapping[str, tuple[int, str, str]]) -> doctor.Runner:
    """A runner answering by which snippet is run; records the environments it got."""
    def run(cmd: Sequence[str], env: Mapping[str, str] | None, timeout: float) -> tuple[int, str, str]:
        run.envs.append(dict(env or {}))  # type: ignore[attr-defined]
        code = cmd[-1]
        for needle, answer in results.items():
            if needle in code:
                return answer
        return 0, "", ""
    run.envs = []  # type: ignore[attr-defined]
    return run


def by_name(checks: list[Check], prefix: str) -> Check:
    return next(c for c in checks if c.name.startswith(prefix))


# -- torch ----------------------------------------------------------------------------------


def test_torch_missing_or_cpu_only_warns_with_the_cuda_fix() -> None:
    assert doctor.check_torch(None)[0].status == WARN
    torch_line, device = doctor.check_torch(fake_torch(), platform="linux")
    assert torch_line.status == OK and "2.13.0" in torch_line.detail
    assert device.status == WARN and "CPU-only" in device.detail and "CPU (slow" in device.detail
    assert "download.pytorch.org/whl/cu" in device.fix
    device = doctor.check_torch(fake_torch(cuda_build="12.8"), platform="linux")[1]
    assert device.status == WARN and "nvidia-smi" in device.fix


def test_torch_with_cuda_or_mps_is_ok() -> None:
    device = doctor.check_torch(fake_torch(cuda=True, cuda_build="12.8"), platform="linux")[1]
    assert device.status == OK and device.name == "device cuda:0"
    assert "NVIDIA H200" in device.detail and "CUDA 12.8" in device.detail and "100.0 of 140.0 GiB" in device.detail
    device = doctor.check_torch(fake_torch(mps=True), platform="darwin")[1]
    assert device.status == OK and "MPS" in device.detail
    assert doctor.check_torch(fake_torch(), platform="darwin")[1].status == WARN


# -- models ---------------------------------------------------------------------------------


def classical(available: bool = True) -> ModelInfo:
    return ModelInfo("patchmatch", "classical", "builtin", available, None, "ok" if available else "pip install pypatchmatch")


def test_models_missing_components_and_cache_are_named(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = cache / "models--org--inpaint" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "U"], "vae": ["d", "V"],
                                                       "safety_checker": [None, None]}))
    (snap / "vae").mkdir()
    missing = ModelInfo("org/inpaint", "diffusers", "hub", False, None, "not cached")
    checks = doctor.check_models([missing, classical()], "patchmatch", cache)
    line = by_name(checks, "model org/inpaint")
    assert line.status == WARN and "missing: unet" in line.detail and "hf download org/inpaint" in line.fix
    assert by_name(checks, "classical").status == OK and "patchmatch (default)" in by_name(checks, "classical").detail
    none = doctor.check_models([classical(False)], "patchmatch", cache)
    assert none[0].status == FAIL and "pypatchmatch" in none[0].detail


def test_models_present_are_ok_with_their_family(tmp_path: Path) -> None:
    present = ModelInfo("org/inpaint", "diffusers", "hub", True, 512, "/cache/snap", "sd15")
    line = doctor.check_models([present, classical()], "org/inpaint", tmp_path)[0]
    assert line.status == OK and "sd15" in line.detail and "(default)" in line.name


def test_models_from_the_registry_name_a_folder_missing_components(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionInpaintPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
         "text_encoder": ["transformers", "CLIPTextModel"]}))
    models, default = doctor.registry_models([str(folder)])
    checks = doctor.check_models(models, default, tmp_path / "empty-cache")
    line = by_name(checks, f"model {folder}")
    assert line.status == WARN and "text_encoder" in line.detail and "unet" in line.detail
    assert by_name(checks, "model stable-diffusion-v1-5").status == WARN  # the default, not cached here
    assert by_name(checks, "classical").status == OK
    for name in ("unet", "text_encoder"):
        (folder / name).mkdir()
    models, default = doctor.registry_models([str(folder)])
    line = by_name(doctor.check_models(models, default, tmp_path / "empty-cache"), f"model {folder}")
    # configs without weights (as a single file's reference snapshot has them) are not a model
    assert line.status == WARN and "weights are missing" in line.detail and "unet" in line.detail, line.detail
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    models, default = doctor.registry_models([str(folder)])
    line = by_name(doctor.check_models(models, default, tmp_path / "empty-cache"), f"model {folder}")
    assert line.status == OK and "(default)" in line.name and "sd15" in line.detail


def test_loras_are_a_skip_that_says_why() -> None:
    line = doctor.check_loras()
    assert line.status == SKIP and "#12" in line.detail


# -- editors --------------------------------------------------------------------------------


def test_find_editors_everywhere_they_live(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    assert doctor.find_editors({}, home, "linux", which=lambda name: None, root=root) == []
    (home / ".local/share/flatpak/app/org.kde.krita").mkdir(parents=True)
    (root / "var/lib/flatpak/app/org.gimp.GIMP").mkdir(parents=True)
    found = doctor.find_editors({}, home, "linux", which=lambda n: f"/usr/bin/{n}" if n == "gimp" else None, root=root)
    assert [(e.kind, e.flatpak) for e in found] == [("gimp", False), ("krita", True), ("gimp", True)]
    (root / "Applications/krita.app").mkdir(parents=True)
    (home / "Applications/GIMP.app").mkdir(parents=True)
    mac = doctor.find_editors({}, home, "darwin", which=lambda n: None, root=root)
    assert {e.label for e in mac} >= {str(root / "Applications/krita.app"), str(home / "Applications/GIMP.app")}
    exe = tmp_path / "pf" / "Krita (x64)" / "bin" / "krita.exe"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    win = doctor.find_editors({"ProgramFiles": str(tmp_path / "pf")}, tmp_path / "nohome", "win32",
                              which=lambda n: None, root=tmp_path / "none")
    assert [(e.kind, e.path) for e in win] == [("krita", exe)]


def test_plugin_missing_then_installed(tmp_path: Path) -> None:
    from inpaintd import install_gimp, install_krita

    krita = Editor("krita", "krita on PATH", Path("/usr/bin/krita"))
    gimp = Editor("gimp", "gimp on PATH", Path("/usr/bin/gimp"))
    folder = tmp_path / "pykrita" / "inpaintd_krita"
    assert doctor.check_plugin(krita, folder).status == WARN  # not installed: maybe not used
    folder.mkdir(parents=True)
    assert doctor.check_plugin(krita, folder).status == FAIL  # half a plugin
    install_krita.copy_plugin(tmp_path / "pykrita")
    assert doctor.check_plugin(krita, folder).status == OK
    target = install_gimp.copy_plugin(tmp_path / "plug-ins")
    assert doctor.check_plugin(gimp, target).status == OK
    (target / "inpaintd_gimp.py").chmod(0o644)
    bad = doctor.check_plugin(gimp, target)
    assert bad.status == FAIL and "chmod +x" in bad.fix


def test_kritarc_enabled_or_not(tmp_path: Path) -> None:
    from inpaintd.install_krita import enable_in_kritarc

    rc = tmp_path / "kritarc"
    assert doctor.check_kritarc(rc).status == FAIL
    rc.write_text("[python]\nenable_inpaintd_krita=false\n")
    assert doctor.check_kritarc(rc).status == FAIL
    enable_in_kritarc(rc)
    assert doctor.check_kritarc(rc).status == OK


def test_editor_python_fails_then_passes_with_a_fake_runner(tmp_path: Path) -> None:
    krita = Editor("krita", "krita on PATH", Path("/usr/bin/krita"), python=("/usr/bin/python3.11",))
    (tmp_path / "_vendor").mkdir()
    env = {"PATH": "/usr/bin", "VIRTUAL_ENV": "/v", "PYTHONPATH": "/x"}
    bad = runner({"PyQt5": (1, "", "ModuleNotFoundError: No module named 'PyQt5'"),
                  "zmq": (1, "", "ModuleNotFoundError: No module named 'zmq'")})
    checks = doctor.check_editor_python(krita, tmp_path, env, bad)
    assert [c.status for c in checks] == [FAIL, FAIL]
    assert "No module named 'PyQt5'" in checks[0].detail and "python3-pyqt5" in checks[0].fix
    assert "python3-zmq" in checks[1].fix and str(tmp_path / "_vendor") in checks[1].fix
    envs = bad.envs  # type: ignore[attr-defined]
    assert "VIRTUAL_ENV" not in envs[0] and "PYTHONPATH" not in envs[0]  # as from the menu
    assert envs[1]["PYTHONPATH"] == str(tmp_path / "_vendor")  # the plugin's own vendored modules
    good = runner({"PyQt5": (0, "5.15.9\n", ""), "zmq": (0, "4.3.4 (1, 0, 3)\n", "")})
    assert [c.status for c in doctor.check_editor_python(krita, tmp_path, env, good)] == [OK, OK]
    gimp = Editor("gimp", "gimp on PATH", Path("/usr/bin/gimp"), python=("/usr/bin/python3",))
    checks = doctor.check_editor_python(gimp, tmp_path, env, runner({"gi": (1, "", "ValueError: Namespace Gimp not available")}))
    assert checks[0].status == FAIL and "gir1.2-gimp-3.0" in checks[0].fix and checks[1].status == OK
    flatpak = Editor("krita", "Flatpak", tmp_path, flatpak=True, python_how="sandboxed")
    assert doctor.check_editor_python(flatpak, tmp_path, env)[0].status == SKIP


def test_python_can_import_with_the_real_runner() -> None:
    assert doctor.python_can_import([sys.executable], "import json; print('yes')") == (True, "yes")
    ok, detail = doctor.python_can_import([sys.executable], "import no_such_module_here")
    assert not ok and "no_such_module_here" in detail
    ok, detail = doctor.python_can_import(["/no/such/python"], "pass")
    assert not ok and "could not run" in detail


def test_no_editor_is_a_warn(tmp_path: Path) -> None:
    assert doctor.editor_checks([], tmp_path, {})[0].status == WARN


# -- the virtualenv trap -----------------------------------------------------------------------


def make_venv(folder: Path) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")
    exe = folder / "bin" / "python3"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return folder / "bin"


def test_virtualenv_on_path_is_detected_and_cleaned(tmp_path: Path) -> None:
    import shutil

    venv_bin = make_venv(tmp_path / "venv")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "python3").write_text("#!/bin/sh\n")
    (plain / "python3").chmod(0o755)
    assert doctor.virtualenv_trap({"PATH": str(plain)}) is None
    assert "VIRTUAL_ENV=/some/venv" in (doctor.virtualenv_trap({"VIRTUAL_ENV": "/some/venv", "PATH": str(plain)}) or "")
    trap = doctor.virtualenv_trap({"PATH": os.pathsep.join([str(venv_bin), str(plain)])})
    assert trap is not None and str(venv_bin / "python3") in trap
    assert "CONDA_PREFIX" in (doctor.virtualenv_trap({"CONDA_PREFIX": "/c", "PATH": ""}) or "")
    line = doctor.check_krita_trap({"PATH": os.pathsep.join([str(venv_bin), str(plain)])})
    assert line.status == WARN and "PyQt5" in line.detail and "deactivate" in line.fix
    assert doctor.check_krita_trap({"PATH": str(plain)}).status == OK
    cleaned = doctor.clean_env({"PATH": os.pathsep.join([str(venv_bin), str(plain)]), "VIRTUAL_ENV": "/v"})
    assert "VIRTUAL_ENV" not in cleaned and cleaned["PATH"] == str(plain)
    assert shutil.which("python3", path=cleaned["PATH"]) == str(plain / "python3")


def test_installers_warn_about_bindings_and_the_trap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inpaintd import install_gimp, install_krita

    assert install_gimp.warn_bindings([sys.executable, "-I", "-S"]) is False
    assert "gi, Gimp 3.0" in capsys.readouterr().err
    # The copy is sound, so a Python without gi still installs with status 0.
    monkeypatch.setattr(install_gimp, "warn_bindings", lambda python: False)
    assert install_gimp.install(tmp_path / "plug-ins", [sys.executable]) == 0
    monkeypatch.setattr(sys, "platform", "linux")
    assert install_krita.warn_bindings(None, {"VIRTUAL_ENV": "/home/a/venv", "PATH": ""}) is False
    err = capsys.readouterr().err
    assert "VIRTUAL_ENV=/home/a/venv" in err and "deactivate" in err and "PyQt5" in err
    assert install_krita.warn_bindings(None, {"PATH": ""}) is True
    assert install_krita.warn_bindings(sys.executable + "-missing", {"PATH": ""}) is False
    assert "cannot import PyQt5" in capsys.readouterr().err


# -- the daemon ---------------------------------------------------------------------------------


@pytest.fixture
def plugin_env(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonProcess]:
    """This process sees the daemon as a plugin would: its address and runtime folder."""
    monkeypatch.setenv("INPAINTD_ENDPOINT", daemon.endpoint)
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(daemon.runtime_dir))
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    monkeypatch.delenv("INPAINTD_CONNECTION_FILE", raising=False)
    yield daemon


def test_daemon_answers_with_the_plugins_key(plugin_env: DaemonProcess) -> None:
    line = doctor.check_daemon("", timeout=5.0)
    assert line.status == OK, line
    assert plugin_env.endpoint in line.name and "patchmatch" in line.detail
    assert "connection file" in line.detail  # the key the plugins read


def test_daemon_with_another_key_is_named_a_mismatch(plugin_env: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPAINTD_KEY", "0" * 32)
    line = doctor.check_daemon("", timeout=1.5)
    assert line.status == FAIL and "key does not match" in line.detail and "INPAINTD_KEY" in line.fix


def test_nothing_listening_is_a_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    line = doctor.check_daemon(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
    assert line.status == WARN and "nothing answers" in line.detail and "inpaintd serve" in line.fix
    assert doctor.check_daemon("not-an-address").status == FAIL


# -- the command --------------------------------------------------------------------------------


def test_cli_json_and_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from inpaintd import cli

    monkeypatch.setenv("HOME", str(tmp_path))  # no editor plugins, no kritarc of the real user
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(doctor, "find_editors", lambda env, home: [])
    rc = cli.main(["doctor", "--json", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3"])
    checks = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in checks]
    assert names[0] == "torch" and "LoRAs/embeddings" in names and "editors" in names and names[-1].startswith("daemon")
    assert rc == (1 if any(c["status"] == FAIL for c in checks) else 0)
    monkeypatch.setattr(doctor, "run_checks", lambda args: doctor.Report([Check("x", FAIL, "broken", "mend it")]))
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[fail] x: broken" in out and "fix: mend it" in out and "1 fail" in out
    monkeypatch.setattr(doctor, "run_checks", lambda args: doctor.Report([Check("x", WARN, "meh", "m")]))
    assert cli.main(["doctor"]) == 0


def test_curve_daemon_without_its_key_is_a_refused_handshake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that encrypts (--curve) but whose connection file this client cannot read:
    the handshake fails, which is named, not taken for "nothing listens"."""
    from conftest import start_daemon

    with start_daemon(tmp_path / "curve", "--engine", "classical", "--curve") as d:
        monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path / "elsewhere"))  # no connection file: no CURVE key
        monkeypatch.setenv("INPAINTD_KEY", d.key.decode())
        line = doctor.check_daemon(d.endpoint, timeout=1.5)
    assert line.status == FAIL and "refused the connection's handshake" in line.detail and "connection file" in line.fix


def test_a_packaged_plugin_is_checked_with_its_own_bundled_pyzmq(tmp_path: Path) -> None:
    """A plugin from `inpaintd package-krita` carries pyzmq in `_deps/`: the check imports
    the wheel the plugin itself would put first for that Python (here a stand-in `zmq` that
    says 9.9.9), and fails naming the missing wheel where the package has none for it."""
    import shutil

    from inpaintd_protocol import bundled

    plugin = tmp_path / "pykrita" / "inpaintd_krita"
    shutil.copytree(Path(bundled.__file__).parent, plugin / "_vendor" / "inpaintd_protocol")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    fitting = f"pyzmq-99.0.0-{tag}-{tag}-manylinux_2_17_x86_64.manylinux_2_17_aarch64.macosx_10_9_universal2.win_amd64.whl"
    stand_in = plugin / "_deps" / fitting[:-4] / "zmq"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("def zmq_version():\n    return '9.9.9'\n")
    manifest = plugin / "_deps" / bundled.MANIFEST
    manifest.write_text(json.dumps({"wheels": [{"wheel": fitting, "folder": fitting[:-4]}]}))
    krita = Editor("krita", "krita on PATH", Path("/usr/bin/krita"), python=(sys.executable,))
    env = {"PATH": os.environ.get("PATH", "/usr/bin")}
    answers = {c.name: c for c in doctor.check_editor_python(krita, plugin, env)}
    ok = answers["Krita Python pyzmq+msgpack"]
    if bundled.choose([bundled.Wheel.from_filename(fitting)], bundled.this_platform(), sys.version_info[:2]) is None:
        pytest.skip(f"no stand-in wheel tag fits this machine ({bundled.this_platform()})")
    assert ok.status == OK and "9.9.9" in ok.detail and "_deps" in ok.detail, ok
    other = "pyzmq-27.3.0-cp39-cp39-win_arm64.whl"  # a package built for another Python and machine
    manifest.write_text(json.dumps({"wheels": [{"wheel": other, "folder": other[:-4]}]}))
    bad = {c.name: c for c in doctor.check_editor_python(krita, plugin, env)}["Krita Python pyzmq+msgpack"]
    assert bad.status == FAIL and "--python" in bad.detail and "package-krita --python" in bad.fix, bad
