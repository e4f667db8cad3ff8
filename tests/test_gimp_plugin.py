"""The GIMP 3 plug-in, run inside the real GIMP 3.0.4 against a real daemon.

Debian 12's GIMP is 2.10 (no Python), so GIMP 3 runs from a Debian trixie root built
once by tests/gimp/build_root.sh (about a minute, then cached at $INPAINTD_GIMP_ROOT or
/var/cache/inpaintd-gimp-root).  The plug-in goes into that root through the same
installer users run (`inpaintd install-gimp`), and the tests in tests/gimp/in_gimp/ run
inside gimp-console with GIMP's own Python and pytest.  The daemon runs here, on the
host; the root shares the network namespace, so GIMP reaches it on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GIMP_TESTS = REPO / "tests" / "gimp"
PHOTO = REPO / "backend" / "inpaintd" / "assets" / "coffee.jpg"
ROOT = Path(os.environ.get("INPAINTD_GIMP_ROOT", "/var/cache/inpaintd-gimp-root"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Building the GIMP root on a fresh machine (up to 900 s) counts against the first test's limit.
pytestmark = [pytest.mark.gimp, pytest.mark.timeout(1500)]


def _mirror_reachable() -> bool:
    try:
        urllib.request.urlopen("http://deb.debian.org/debian/dists/trixie/InRelease", timeout=10).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def gimp_root() -> Path:
    """The GIMP 3 root with the plug-in installed by inpaintd.install_gimp."""
    proc = subprocess.run([str(GIMP_TESTS / "build_root.sh"), str(ROOT)], capture_output=True, text=True, timeout=900)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 3:
        pytest.skip(f"GIMP 3 root cannot be built on this machine: {out}")
    if proc.returncode == 4 and not _mirror_reachable():
        pytest.skip(f"GIMP 3 root cannot be built: the Debian mirror is unreachable ({out[-300:]})")
    assert proc.returncode == 0, out[-3000:]

    from inpaintd.install_gimp import install

    rc = install(ROOT / "root" / ".config" / "GIMP" / "3.0" / "plug-ins", ["chroot", str(ROOT), "python3"])
    assert rc == 0, "install-gimp into the GIMP root failed"
    return ROOT


@pytest.fixture
def ci_dir(gimp_root: Path) -> Iterator[Path]:
    """A private folder inside the root holding the in-GIMP tests and the photo."""
    (gimp_root / "tmp").mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="inpaintd-ci-", dir=gimp_root / "tmp"))
    path.chmod(0o755)
    for f in (GIMP_TESTS / "in_gimp").glob("*.py"):
        shutil.copy(f, path / f.name)
    shutil.copy(PHOTO, path / "photo.jpg")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def gimp_batch_command(root: Path, ci: Path, env: dict[str, str], timeout: int = 300, home: str = "/root") -> list[str]:
    """The command running ci/run.py inside gimp-console in the root (always --quit, always under timeout)."""
    inside = "/" + str(ci.relative_to(root))
    extra = [f"{k}={v}" for k, v in env.items() if k != "INPAINTD_RUNTIME_DIR"]  # a host path
    return ["timeout", str(timeout), "chroot", str(root), "env", "-i", f"HOME={home}", f"PATH={PATH}", "LANG=C.UTF-8",
            f"INPAINTD_CI_DIR={inside}", *extra,
            "gimp-console-3.0", "-i", "--quit", "--batch-interpreter=python-fu-eval",
            "-b", f"exec(open('{inside}/run.py').read())"]


def gimp_batch(root: Path, ci: Path, env: dict[str, str], timeout: int = 300, home: str = "/root") -> subprocess.CompletedProcess:
    return subprocess.run(gimp_batch_command(root, ci, env, timeout, home), capture_output=True, text=True,
                          timeout=timeout + 30)


def test_plugin_inside_gimp(gimp_root: Path, ci_dir: Path, daemon) -> None:
    proc = gimp_batch(gimp_root, ci_dir, daemon.env)
    out = proc.stdout + proc.stderr
    junit = ci_dir / "junit.xml"
    assert junit.exists(), f"the in-GIMP tests did not run (exit {proc.returncode}):\n{out[-4000:]}"
    assert proc.returncode == 0, (f"in-GIMP tests failed (exit {proc.returncode}):\n{out[-6000:]}\n"
                                  f"--- daemon log ---\n{daemon.log()[-2000:]}")
    assert 'failures="0"' in junit.read_text() and 'errors="0"' in junit.read_text()
    print("in GIMP:", (ci_dir / "report.json").read_text())


def test_undo_and_dialog_in_gimp_ui(gimp_root: Path, ci_dir: Path, daemon) -> None:
    """Full GIMP under Xvfb: one Ctrl+Z removes every result layer (one undo step), and the
    interactive dialogs open showing the daemon's lists and "auto" for automatic values:
    Inpaint Selection (Model, Style and Start with as combo boxes; Steps, Guidance and
    Context "auto", Seed "random"; a style picked with the keyboard puts its steps in, a
    typed "auto" is read; the daemon's LoRAs named under the LoRAs field), Vary Result, Bring
    Back from History and Teach Subject from Layers (the layers it teaches from).  Their captures
    become docs/gimp-dialog.png, docs/gimp-vary-dialog.png and docs/gimp-history-dialog.png
    when INPAINTD_UPDATE_SCREENSHOT=1."""
    gimprc = gimp_root / "root" / ".config" / "GIMP" / "3.0" / "gimprc"
    gimprc.parent.mkdir(parents=True, exist_ok=True)
    if "show-welcome-dialog no" not in (gimprc.read_text() if gimprc.exists() else ""):
        with gimprc.open("a") as f:  # the welcome dialog would hold the keyboard focus
            f.write("(show-welcome-dialog no)\n")
    inside = "/" + str(ci_dir.relative_to(gimp_root))
    extra = [f"{k}={v}" for k, v in daemon.env.items() if k != "INPAINTD_RUNTIME_DIR"]
    cmd = ["timeout", "400", "chroot", str(gimp_root), "env", "-i", "HOME=/root", f"PATH={PATH}", "LANG=C.UTF-8",
           f"INPAINTD_CI_DIR={inside}", f"INPAINTD_GIMP_DIALOG_REPORT={inside}/dialogs.jsonl", *extra,
           "xvfb-run", "-a", "-s", "-screen 0 1280x1024x24",
           "gimp-3.0", "--no-splash", "--quit", "--batch-interpreter=python-fu-eval",
           "-b", f"exec(open('{inside}/ui_session.py').read())"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=460)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and (ci_dir / "ui.json").exists(), f"exit {proc.returncode}:\n{out[-5000:]}"

    ui = json.loads((ci_dir / "ui.json").read_text())
    print("in GIMP UI:", json.dumps(ui, indent=1)[:6000])
    assert ui["status"].endswith("GIMP_PDB_SUCCESS of type Gimp.PDBStatusType>"), ui
    assert ui["after_run"] == ["Inpaint: an empty red saucer on a wooden\u2026", "photo", "background"] or (
        ui["after_run"][1:] == ["photo", "background"] and ui["after_run"][0].startswith("Inpaint: ")), ui
    assert ui["after_one_undo"] == ui["before"] == ["photo", "background"], ui
    assert ui["selection_kept"] and ui["source_unchanged"], ui
    for name in ("dialog", "vary", "history", "train"):
        assert ui[f"{name}_status"].endswith("GIMP_PDB_CANCEL of type Gimp.PDBStatusType>"), ui
        assert ui[f"{name}_png"], f"the {name} dialog was not captured"
    shown = {d["title"]: d["shown"] for d in ui["dialogs"] if d["when"] == "opened"}
    closed = {d["title"]: d["shown"] for d in ui["dialogs"] if d["when"] == "closed"}
    assert set(shown) == set(closed) == {"Inpaint Selection", "Vary Result", "Bring Back from History",
                                         "Teach Subject from Layers"}, ui["dialogs"]
    inpaint = shown["Inpaint Selection"]
    assert (inpaint["steps"], inpaint["guidance-scale"], inpaint["padding"], inpaint["seed"]) == (
        "auto", "auto", "auto", "random"), inpaint
    model, style, fill = inpaint["model"], inpaint["style"], inpaint["fill"]
    assert model["combo"] == "" and model["rows"][0][1] == "The daemon's default: patchmatch (classical)", model
    assert ["opencv-telea", "opencv-telea (classical)"] in model["rows"], model
    assert style["combo"] == "" and style["rows"][0] == ["", "None"], style
    assert any(value == "Quick draft" for value, _words in style["rows"]), style
    assert fill["combo"] == "auto" and [value for value, _words in fill["rows"]] == [
        "auto", "none", "neutral", "blur", "classical"], fill
    # picked with the keyboard: the style brought its steps; a typed "auto" is read as -1
    after = closed["Inpaint Selection"]
    assert after["style"]["combo"] == "Quick draft" and after["steps"] == "8", after
    assert after["padding"] == "auto" and after["seed"] == "123", after
    vary = shown["Vary Result"]
    assert vary["seed"] == "random" and vary["preset"]["combo"] == "subtle", vary
    # the daemon's LoRAs under the LoRAs field (this daemon has none: it says where they go)
    listed = [d["labels"] for d in ui["dialogs"] if d["title"] == "Inpaint Selection" and d["when"] == "opened"][0]
    assert listed["loras-listed"].startswith("The daemon has no LoRAs in "), listed
    assert shown["Inpaint Selection"]["loras"] == "", inpaint
    train = [d for d in ui["dialogs"] if d["title"] == "Teach Subject from Layers" and d["when"] == "opened"][0]
    assert train["labels"]["train-subject"].startswith("Teaches the daemon the subject of 3 layers: 'photo', "), train
    assert (train["shown"]["token"], train["shown"]["steps"], train["shown"]["resolution"]) == ("sks", "400", "auto"), train
    history = shown["Bring Back from History"]["job"]
    assert history["combo"] == "" and "a blue cup" in history["rows"][1][1], history  # the newest first
    if os.environ.get("INPAINTD_UPDATE_SCREENSHOT") == "1":
        shutil.copy(ci_dir / "dialog.png", REPO / "docs" / "gimp-dialog.png")
        shutil.copy(ci_dir / "vary-dialog.png", REPO / "docs" / "gimp-vary-dialog.png")
        shutil.copy(ci_dir / "history-dialog.png", REPO / "docs" / "gimp-history-dialog.png")


def _processes_of(root: Path, ci: Path, script: str) -> list[int]:
    """Pids of the processes running `script` in this GIMP session (its INPAINTD_CI_DIR; the
    root has no /proc of its own, so this looks from the host)."""
    marker = b"INPAINTD_CI_DIR=/" + str(ci.relative_to(root)).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(a.endswith(script.encode()) for a in argv) and marker in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return pids


def test_diffusion_and_cancel_in_gimp(gimp_root: Path, ci_dir: Path, tiny_daemon) -> None:
    """Inside GIMP, against the tiny diffusion pipeline: 2 variants with a fixed seed land
    exactly (tests/gimp/in_gimp/test_in_gimp_diffusion.py), and a cancel as GIMP 3.0.4 does
    it -- the plug-in process SIGKILLed in the middle of a job -- makes the plug-in's
    watchdog cancel the job in the daemon within a couple of seconds, adds no layers, and
    leaves GIMP able to run the procedure again."""
    env = dict(tiny_daemon.env, INPAINTD_GIMP_TESTS="test_in_gimp_diffusion.py")
    started = time.monotonic()
    gimp = subprocess.Popen(gimp_batch_command(gimp_root, ci_dir, env, timeout=240),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict = {}
    try:
        with tiny_daemon.client() as client:
            while gimp.poll() is None and "killed_at" not in seen:
                time.sleep(0.05)
                if not (ci_dir / "cancel-armed").exists():
                    continue
                running = client.status()["running"]
                if not (running and running[0]["prompt"] == "killed" and running[0]["step"] >= 1):
                    continue  # kill in the middle of the denoising loop, as a user would
                pids = _processes_of(gimp_root, ci_dir, "inpaintd_gimp.py")
                if not pids:
                    continue
                seen["job"], seen["at_step"], seen["plugin_pids"] = running[0]["job"], running[0]["step"], pids
                (ci_dir / "killed").touch()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                seen["killed_at"] = time.monotonic()
            assert "killed_at" in seen, "the plug-in never ran a job that could be killed"
            while time.monotonic() - seen["killed_at"] < 10:
                st = client.status()
                if seen["job"] not in [j["job"] for j in st["running"] + st["queued"]]:
                    break
                time.sleep(0.02)
            seen["job_gone_after_s"] = round(time.monotonic() - seen["killed_at"], 3)
            job = client.fetch(seen["job"], timeout=10)
            seen["job_state"] = job.state
        out, _ = gimp.communicate(timeout=240)
    finally:
        if gimp.poll() is None:
            gimp.kill()
            gimp.wait()
    seen["gimp_seconds"] = round(time.monotonic() - started, 1)
    report = json.loads((ci_dir / "diffusion.json").read_text()) if (ci_dir / "diffusion.json").exists() else {}
    print("in GIMP (diffusion, cancel):", report, seen)
    log = tiny_daemon.log()
    assert seen["job_state"] == "cancelled", f"job {seen['job']} ended {seen['job_state']}, not cancelled\n{log[-2000:]}"
    assert seen["job_gone_after_s"] < 2.5, f"the cancel took {seen['job_gone_after_s']} s\n{log[-2000:]}"
    assert f"job {seen['job']} cancelled after" in log and "cancelled by a client while running" in log, log[-2000:]
    assert not _processes_of(gimp_root, ci_dir, "inpaintd_watchdog.py"), "a watchdog process was left behind"
    junit = ci_dir / "junit.xml"
    assert junit.exists(), f"the in-GIMP tests did not run (exit {gimp.returncode}):\n{out[-4000:]}"
    assert gimp.returncode == 0, f"in-GIMP tests failed (exit {gimp.returncode}):\n{out[-6000:]}\n--- daemon log ---\n{log[-2000:]}"
    assert 'failures="0"' in junit.read_text() and 'errors="0"' in junit.read_text() and 'tests="2"' in junit.read_text()


def test_new_family_model_in_gimp(gimp_root: Path, ci_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                  tiny_model_dir: Path) -> None:
    """Inside GIMP, a job on a tiny FLUX.1 Fill model served beside the tiny SD default: its
    "auto" steps and guidance become the model's (50, 30), which the procedure returns as
    its job settings; the daemon ran 50 denoising steps on that model
    (tests/gimp/in_gimp/test_in_gimp_family.py)."""
    from daemons import start_daemon

    from inpaintd.testmodel import make_family_test_model

    flux = str(make_family_test_model(tmp_path_factory.mktemp("gimp-family") / "tiny-flux-fill", "flux-fill").resolve())
    d = start_daemon(tmp_path_factory.mktemp("gimp-family-daemon"), "--model", str(tiny_model_dir),
                     "--extra-model", flux, "--device", "cpu")
    try:
        env = dict(d.env, INPAINTD_GIMP_TESTS="test_in_gimp_family.py", INPAINTD_TEST_FAMILY_MODEL=flux)
        proc = gimp_batch(gimp_root, ci_dir, env, timeout=300)
        log = d.log()
    finally:
        d.stop()
    out = proc.stdout + proc.stderr
    junit = ci_dir / "junit.xml"
    assert junit.exists(), f"the in-GIMP tests did not run (exit {proc.returncode}):\n{out[-4000:]}"
    assert proc.returncode == 0, f"in-GIMP tests failed (exit {proc.returncode}):\n{out[-6000:]}\n--- daemon log ---\n{log[-2000:]}"
    assert 'failures="0"' in junit.read_text() and 'tests="1"' in junit.read_text()
    print("in GIMP (new family):", (ci_dir / "family.json").read_text())
    accepted = [line for line in log.splitlines() if " accepted: " in line]
    assert len(accepted) == 1 and f"model {flux}," in accepted[0], accepted


def test_artists_loop_in_gimp(gimp_root: Path, ci_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                              tiny_model_dir: Path) -> None:
    """Inside GIMP, against the tiny diffusion pipeline (tests/gimp/in_gimp/test_in_gimp_loop.py):
    result layers carry a parasite naming their job (kept in .xcf); Vary Result makes new
    variants in place with new seeds (Subtle, Remix with a prompt, a result group, a job the
    daemon does not know: its pixels are sent); a job with the style "Quick draft" runs 8
    steps; Bring Back from History puts back the layers byte for byte where they were.
    The daemon is this test's own (an empty history) and keeps finished results for 2 s
    only, so that Bring Back reads them from the history's files, not from the results
    kept for `fetch`."""
    from daemons import start_daemon

    d = start_daemon(tmp_path_factory.mktemp("gimp-loop-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--results-ttl", "2")
    try:
        env = dict(d.env, INPAINTD_GIMP_TESTS="test_in_gimp_loop.py")
        proc = gimp_batch(gimp_root, ci_dir, env, timeout=420)
        log = d.log()
    finally:
        d.stop()
    out = proc.stdout + proc.stderr
    junit = ci_dir / "junit.xml"
    report = (ci_dir / "loop.json").read_text() if (ci_dir / "loop.json").exists() else "{}"
    print("in GIMP (artist's loop):", report)
    assert junit.exists(), f"the in-GIMP tests did not run (exit {proc.returncode}):\n{out[-4000:]}"
    assert proc.returncode == 0, (f"in-GIMP tests failed (exit {proc.returncode}):\n{out[-8000:]}\n"
                                  f"--- daemon log ---\n{log[-2000:]}")
    text = junit.read_text()
    assert 'failures="0"' in text and 'errors="0"' in text and 'tests="8"' in text, text[-2000:]


def test_loras_and_training_in_gimp(gimp_root: Path, ci_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                    tiny_model_dir: Path) -> None:
    """Inside GIMP, against the tiny diffusion pipeline with a LoRA folder (#12,
    tests/gimp/in_gimp/test_in_gimp_lora.py): the Inpaint Selection procedure's `loras`
    argument changes the pixels of a fixed-seed job (weight 0 does not; `<lora:ink:1>` in the
    prompt gives the same pixels; a name alone takes the sidecar's weight), bad LoRAs are
    refused with the daemon's words; Teach Subject from Layers trains a LoRA on 3 layers
    (6 steps at 64 px) that the daemon then lists and a next job uses; and a training whose
    plug-in process is killed (GIMP's progress-bar cancel) is cancelled in the daemon by the
    watchdog."""
    pytest.importorskip("peft")
    from daemons import start_daemon

    from inpaintd.testmodel import make_test_lora

    loras = tmp_path_factory.mktemp("gimp-loras")
    make_test_lora(tiny_model_dir, loras / "ink.safetensors", seed=1)
    (loras / "ink.json").write_text(json.dumps({"trigger_words": ["inkwash"], "weight": 0.5}))
    make_test_lora(tiny_model_dir, loras / "xl_only.safetensors", seed=3, family="sdxl")
    d = start_daemon(tmp_path_factory.mktemp("gimp-lora-daemon"), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--lora-dir", str(loras))
    seen: dict = {}
    try:
        env = dict(d.env, INPAINTD_GIMP_TESTS="test_in_gimp_lora.py")
        gimp = subprocess.Popen(gimp_batch_command(gimp_root, ci_dir, env, timeout=420),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with d.client() as client:
                while gimp.poll() is None and "killed_at" not in seen:
                    time.sleep(0.05)
                    if not (ci_dir / "train-cancel-armed").exists():
                        continue
                    running = [j for j in client.status()["running"] if j.get("kind") == "train"]
                    if not (running and running[0]["name"] == "killed_ball" and running[0]["step"] >= 1):
                        continue  # kill in the middle of the training, as a user would
                    pids = _processes_of(gimp_root, ci_dir, "inpaintd_gimp.py")
                    if not pids:
                        continue
                    seen["job"], seen["at_step"] = running[0]["job"], running[0]["step"]
                    (ci_dir / "killed").touch()
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    seen["killed_at"] = time.monotonic()
                if "killed_at" not in seen:
                    out = gimp.communicate(timeout=60)[0] if gimp.poll() is not None else ""
                    report = (ci_dir / "lora.json").read_text() if (ci_dir / "lora.json").exists() else "{}"
                    raise AssertionError(f"the plug-in never ran a training that could be killed: {report}\n"
                                         f"{out[-6000:]}\n--- daemon log ---\n{d.log()[-2000:]}")
                while time.monotonic() - seen["killed_at"] < 15:
                    st = client.status()
                    if seen["job"] not in [j["job"] for j in st["running"] + st["queued"]]:
                        break
                    time.sleep(0.05)
                seen["job_gone_after_s"] = round(time.monotonic() - seen["killed_at"], 3)
                seen["job_state"] = client.fetch(seen["job"], timeout=10).state
                seen["listed"] = sorted(e["name"] for e in client.request("loras").body["loras"])
            out, _ = gimp.communicate(timeout=420)
        finally:
            if gimp.poll() is None:
                gimp.kill()
                gimp.wait()
        log = d.log()
    finally:
        d.stop()
    report = (ci_dir / "lora.json").read_text() if (ci_dir / "lora.json").exists() else "{}"
    print("in GIMP (LoRAs, training):", report, seen)
    assert seen.get("job_state") == "cancelled", f"training {seen.get('job')} ended {seen.get('job_state')}\n{log[-2000:]}"
    assert seen["job_gone_after_s"] < 5, f"the cancel took {seen['job_gone_after_s']} s\n{log[-2000:]}"
    assert seen["listed"] == ["ink", "sks_ball", "xl_only"], seen  # the cancelled training wrote no LoRA
    assert not _processes_of(gimp_root, ci_dir, "inpaintd_watchdog.py"), "a watchdog process was left behind"
    junit = ci_dir / "junit.xml"
    assert junit.exists(), f"the in-GIMP tests did not run (exit {gimp.returncode}):\n{out[-4000:]}"
    assert gimp.returncode == 0, (f"in-GIMP tests failed (exit {gimp.returncode}):\n{out[-8000:]}\n"
                                  f"--- daemon log ---\n{log[-3000:]}")
    text = junit.read_text()
    assert 'failures="0"' in text and 'errors="0"' in text and 'tests="5"' in text, text[-2000:]


# -- the plug-in as `inpaintd package-gimp` ships it, in a GIMP without pyzmq or msgpack ----------

HIDE_SYSTEM = GIMP_TESTS / "hide_system"  # its sitecustomize hides the root's python3-zmq and python3-msgpack


@pytest.fixture(scope="module")
def gimp_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """inpaintd_gimp-<version>.zip as `inpaintd package-gimp` builds it (pyzmq wheels from the
    registry, kept in the same cache as the CLI's)."""
    from inpaintd import packaging

    try:
        return packaging.build_gimp(tmp_path_factory.mktemp("gimp-package"), cache=packaging.default_cache()).path
    except packaging.PackagingError as exc:
        if not os.environ.get("PIP_INDEX_URL"):
            try:
                urllib.request.urlopen("https://pypi.org/simple/pyzmq/", timeout=10).close()
            except OSError:
                pytest.skip(f"the GIMP package cannot be built: the package registry is unreachable ({exc})")
        raise


def unzip_like_a_user(package: Path, plugins: Path) -> Path:
    """Unpack the zip into GIMP's plug-ins folder with Info-ZIP's unzip, which restores the
    Unix modes stored in the zip (GIMP runs only an executable entry file).  Without unzip,
    the same by hand: Python's zipfile.extractall drops the modes."""
    plugins.mkdir(parents=True, exist_ok=True)
    if shutil.which("unzip"):
        proc = subprocess.run(["unzip", "-q", str(package), "-d", str(plugins)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        import zipfile

        with zipfile.ZipFile(package) as zf:
            for info in zf.infolist():
                zf.extract(info, plugins)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    (plugins / info.filename).chmod(mode)
    return plugins / "inpaintd_gimp"


@dataclass
class PackagedGimp:
    """A GIMP profile (its own HOME inside the root) holding only the packaged plug-in."""

    root: Path
    ci: Path
    plugin: Path
    log: Path

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": self.inside(self.ci / "hide_system"), "INPAINTD_IMPORT_LOG": self.inside(self.log)}

    def run(self, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
        return gimp_batch(self.root, self.ci, {**self.env, **env}, timeout, home=self.inside(self.ci / "home"))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def plugin_processes(self) -> dict[int, list[dict]]:
        """The import log's records per process of the packaged plug-in's entry file."""
        entry = self.inside(self.plugin / "inpaintd_gimp.py")
        out: dict[int, list[dict]] = {}
        for r in self.records():
            if r["argv0"] == entry:
                out.setdefault(r["pid"], []).append(r)
        return out


@pytest.fixture
def packaged_gimp(gimp_root: Path, ci_dir: Path, gimp_package: Path) -> PackagedGimp:
    plugin = unzip_like_a_user(gimp_package, ci_dir / "home" / ".config" / "GIMP" / "3.0" / "plug-ins")
    entry = plugin / "inpaintd_gimp.py"
    assert entry.stat().st_mode & 0o111, (
        f"{entry.relative_to(ci_dir / 'home')} lost its executable bit in {gimp_package.name}: GIMP would not "
        "run the plug-in (a bug in inpaintd.packaging, not to be fixed by chmod here)")
    assert not (plugin / "inpaintd_install.json").exists()
    shutil.copytree(HIDE_SYSTEM, ci_dir / "hide_system", ignore=shutil.ignore_patterns("__pycache__"))
    return PackagedGimp(gimp_root, ci_dir, plugin, ci_dir / "imports.jsonl")


def _check_gimp_run(proc: subprocess.CompletedProcess, ci: Path, daemon, tests: int) -> None:
    out = proc.stdout + proc.stderr
    junit = ci / "junit.xml"
    assert junit.exists(), f"the in-GIMP tests did not run (exit {proc.returncode}):\n{out[-4000:]}"
    assert proc.returncode == 0, (f"in-GIMP tests failed (exit {proc.returncode}):\n{out[-6000:]}\n"
                                  f"--- daemon log ---\n{daemon.log()[-2000:]}")
    text = junit.read_text()
    assert 'failures="0"' in text and 'errors="0"' in text and f'tests="{tests}"' in text, text[-2000:]


def _check_package_imports(gimp: PackagedGimp) -> dict:
    """Every plug-in process that loaded zmq took it from the package's _deps/ and msgpack
    from its vendor/; and the hiding was in force in GIMP's Python processes."""
    deps, vendor = gimp.inside(gimp.plugin / "_deps") + "/", gimp.inside(gimp.plugin / "vendor") + "/"
    processes = gimp.plugin_processes()
    assert processes, ("no record from the plug-in's process: GIMP did not pass PYTHONPATH on to it, or the "
                       f"packaged plug-in never ran\n{gimp.records()}")
    used = {}
    for pid, records in processes.items():
        exits = [r for r in records if r["event"] == "exit"]
        assert exits, f"plug-in process {pid} left no exit record: {records}"
        modules = exits[-1]["modules"]
        if modules["zmq"] is None and modules["msgpack"] is None:
            continue  # GIMP's query/init runs of the plug-in import neither
        assert modules["zmq"] and modules["zmq"].startswith(deps), modules
        assert modules["msgpack"] and modules["msgpack"].startswith(vendor), modules
        assert not [r for r in records if r["event"] == "refused"], records
        used[pid] = modules
    assert used, f"no plug-in process loaded zmq and msgpack: {processes}"
    refused = {r["module"] for r in gimp.records() if r["event"] == "refused"}
    assert refused == {"zmq", "msgpack"}, f"the system packages were not seen hidden: {gimp.records()}"
    return used


def test_packaged_plugin_without_system_pyzmq(packaged_gimp: PackagedGimp, daemon) -> None:
    """Issue #16: the plug-in unzipped from `inpaintd package-gimp`'s zip into a fresh GIMP
    profile runs a job end to end in GIMP 3 whose Python has neither python3-zmq nor
    python3-msgpack (hidden by tests/gimp/hide_system): the layers arrive as in
    test_plugin_inside_gimp, and the plug-in process imported zmq from the package's _deps/
    (the cp312-abi3 manylinux wheel serving GIMP's Python 3.13) and msgpack from vendor/.
    Endpoint and key come from the environment, as `flatpak override --env=` gives them."""
    gimp = packaged_gimp
    started = time.monotonic()
    proc = gimp.run({"INPAINTD_ENDPOINT": daemon.endpoint, "INPAINTD_KEY": daemon.key.decode("ascii"),
                     "INPAINTD_GIMP_TESTS": "test_in_gimp_packaged.py"})
    seconds = round(time.monotonic() - started, 1)
    _check_gimp_run(proc, gimp.ci, daemon, tests=3)
    used = _check_package_imports(gimp)
    print(f"in GIMP, packaged ({seconds} s):", (gimp.ci / "report.json").read_text(), "plug-in imports:", used)


def test_flatpak_like_connection_file(packaged_gimp: PackagedGimp, daemon) -> None:
    """docs/flatpak.md: inside a Flatpak, XDG_RUNTIME_DIR is the sandbox's own and the daemon's
    $XDG_RUNTIME_DIR/inpaintd is not shared.  With the endpoint in the environment and no key,
    the packaged plug-in is refused while the connection file is out of view, and runs the
    job once the file is in $XDG_RUNTIME_DIR/inpaintd (what `flatpak override
    --filesystem=xdg-run/inpaintd` gives), with connection.py unchanged."""
    gimp = packaged_gimp
    host_runtime = gimp.ci / "host-runtime"  # stands for the host's $XDG_RUNTIME_DIR/inpaintd
    shutil.copytree(daemon.runtime_dir, host_runtime)
    xdg_run = gimp.ci / "xdg-run"  # the sandbox's XDG_RUNTIME_DIR (/run/user/UID in a real Flatpak)
    xdg_run.mkdir(mode=0o700)
    proc = gimp.run({"INPAINTD_ENDPOINT": daemon.endpoint, "XDG_RUNTIME_DIR": gimp.inside(xdg_run),
                     "INPAINTD_HOST_RUNTIME": gimp.inside(host_runtime), "INPAINTD_GIMP_TESTS": "test_in_gimp_flatpak.py"})
    report = json.loads((gimp.ci / "flatpak.json").read_text()) if (gimp.ci / "flatpak.json").exists() else {}
    print("in GIMP, Flatpak-like:", report)
    _check_gimp_run(proc, gimp.ci, daemon, tests=4)
    assert report["shared"] == [p.name for p in sorted(daemon.runtime_dir.glob("connection-*.json"))], report
    _check_package_imports(gimp)


def test_packaged_watchdog_finds_bundled_pyzmq(packaged_gimp: PackagedGimp, daemon) -> None:
    """The plug-in's watchdog (started with GIMP's Python when a job is submitted) must load
    pyzmq and msgpack from the package too: its stdin closing without "done" -- the plug-in
    killed by a cancel -- makes it connect to the daemon and send a cancel."""
    gimp = packaged_gimp
    argv = ["timeout", "60", "chroot", str(gimp.root), "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
            *[f"{k}={v}" for k, v in gimp.env.items()], f"INPAINTD_KEY={daemon.key.decode('ascii')}",
            "python3", gimp.inside(gimp.plugin / "inpaintd_watchdog.py"), daemon.endpoint, "no-such-job"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    exits = [r for r in gimp.records() if r["event"] == "exit" and r["argv0"].endswith("/inpaintd_watchdog.py")]
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr[-2000:]
    assert exits and (exits[-1]["modules"]["zmq"] or "").startswith(gimp.inside(gimp.plugin / "_deps") + "/"), exits
