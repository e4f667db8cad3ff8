"""`inpaintd doctor`: check what an artist's setup needs, one line per check, with the fix.

An install that half works fails far from its cause: a docker that says "no daemon", a
GIMP menu entry that never appears, a diffusion model that silently falls back to the
classical fill.  Each check here looks at one thing (torch and its device, each model,
each editor with its plugin and its Python, the daemon the plugins will reach) and says
ok / warn / fail / skip, and when it is not ok, the exact command or step that fixes it.

The checks are small functions that take what they inspect as arguments (a torch-like
module, folders, an environment, a runner for another Python, a client factory), so tests
can make each one fail and pass without a GPU or an editor; `run_checks` feeds them this
machine.  The shared "can this Python import X" check lives here too: the installers call
it for the editors' Pythons (`python_can_import`, `virtualenv_trap`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

#: What the protocol client needs in an editor's Python.
CLIENT_IMPORTS = "import zmq, msgpack; print(zmq.zmq_version(), msgpack.version)"
#: Krita 5's own Python bindings: without PyQt5 no Python plugin loads at all.
KRITA_BINDINGS = "import PyQt5.QtCore; print(PyQt5.QtCore.PYQT_VERSION_STR)"
#: GIMP 3's bindings, as a plug-in asks for them.
GIMP_BINDINGS = "import gi; gi.require_version('Gimp', '3.0'); print(gi.__version__)"

#: Runs a command with an environment (None: this process's) and a timeout; returns
#: (exit status, stdout, stderr).  Tests pass a fake one.
Runner = Callable[[Sequence[str], "Mapping[str, str] | None", float], "tuple[int, str, str]"]


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # OK, WARN, FAIL or SKIP
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:<4}] {self.name}: {self.detail}"
        if self.fix and self.status != OK:
            text += "\n" + "\n".join(f"         fix: {part}" if i == 0 else f"              {part}"
                                     for i, part in enumerate(self.fix.splitlines()))
        return text


# -- another Python's imports (shared with the installers) ------------------------------------


def run_command(cmd: Sequence[str], env: Mapping[str, str] | None, timeout: float) -> tuple[int, str, str]:
    """The real runner: never raises; a command that cannot start reads as exit status -1."""
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                           env=dict(env) if env is not None else None)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, "", f"could not run {' '.join(cmd)}: {exc}"
    return r.returncode, r.stdout, r.stderr


def python_can_import(python: Sequence[str], code: str, *, env: Mapping[str, str] | None = None,
                      runner: Runner = run_command, timeout: float = 60.0) -> tuple[bool, str]:
    """(True, what `code` printed) or (False, the error's last line) for `python -c code`.

    An editor's Python is not this venv's, so what it can import is only known by asking it."""
    rc, out, err = runner([*python, "-c", code], env, timeout)
    if rc == 0:
        return True, out.strip()
    lines = (err or out).strip().splitlines()
    return False, lines[-1] if lines else f"exit status {rc}"


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` as an editor started from the desktop menu would see it: no virtualenv, no
    PYTHONPATH/PYTHONHOME, none of their folders on PATH."""
    out = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")}
    venv = env.get("VIRTUAL_ENV")
    if "PATH" in out:
        parts = [p for p in out["PATH"].split(os.pathsep)
                 if p and not (venv and Path(p).parent == Path(venv)) and not (Path(p).parent / "pyvenv.cfg").is_file()]
        out["PATH"] = os.pathsep.join(parts)
    return out


def virtualenv_trap(env: Mapping[str, str], which: Callable[..., str | None] = shutil.which) -> str | None:
    """Why an editor started with `env` would run its embedded Python in a virtualenv, or None.

    Krita from a Linux distribution embeds the system libpython, which finds its home from
    the first `python3` on PATH: a virtualenv's (an activated venv, or VIRTUAL_ENV set) makes
    it use the venv's site-packages, where PyQt5 is not, and no Python plugin loads."""
    if env.get("VIRTUAL_ENV"):
        return f"a virtualenv is active in this shell (VIRTUAL_ENV={env['VIRTUAL_ENV']})"
    if env.get("CONDA_PREFIX"):
        return f"a conda environment is active in this shell (CONDA_PREFIX={env['CONDA_PREFIX']})"
    first = which("python3", path=env.get("PATH", ""))
    if first and (Path(first).parent.parent / "pyvenv.cfg").is_file():
        return f"the first python3 on PATH is a virtualenv's ({first})"
    return None


TRAP_FIX = ("start Krita from the desktop menu, or run `deactivate` (conda: `conda deactivate`) in this shell "
            "before `krita`")


# -- torch and its device -----------------------------------------------------------------------


CUDA_TORCH_FIX = ("install a CUDA build of torch into this venv, e.g. `.venv/bin/pip install --force-reinstall torch "
                  "--index-url https://download.pytorch.org/whl/cu128` (pick the CUDA version for your driver on "
                  "pytorch.org/get-started)")


def check_torch(torch: Any, platform: str = sys.platform) -> list[Check]:
    """torch's version and the device diffusion will run on.  `torch`: the module, or None
    when it does not import (then only the classical engines work)."""
    if torch is None:
        return [Check("torch", WARN, "torch does not import: only the classical engines work",
                      "reinstall the daemon's dependencies: `.venv/bin/pip install -e .`")]
    checks = [Check("torch", OK, f"torch {torch.__version__}")]
    cuda_build = getattr(torch.version, "cuda", None)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        for i in range(n):
            name = torch.cuda.get_device_name(i)
            try:
                free, total = torch.cuda.mem_get_info(i)
                mem = f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB VRAM free"
            except (RuntimeError, AssertionError) as exc:
                mem = f"VRAM unknown ({exc})"
            checks.append(Check(f"device cuda:{i}", OK, f"{name}, CUDA {cuda_build}, {mem}"))
        return checks
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if platform == "darwin" and mps is not None and mps.is_available():
        checks.append(Check("device mps", OK, "Apple GPU (MPS): diffusion runs on it"))
        return checks
    if platform == "darwin":
        return checks + [Check("device", WARN, "no MPS device: diffusion runs on the CPU (slow, minutes per image)",
                               "use a Mac with Apple silicon and macOS 12.3+, with torch's macOS arm64 build")]
    if cuda_build:
        why = f"this torch is built for CUDA {cuda_build}, but no GPU is usable (driver missing or too old?)"
        fix = "check `nvidia-smi` works; install or update the NVIDIA driver; or " + CUDA_TORCH_FIX
    else:
        why = "this torch is a CPU-only build"
        fix = CUDA_TORCH_FIX
    return checks + [Check("device", WARN, f"{why}: diffusion runs on the CPU (slow, minutes per image); "
                           "the classical engines are not affected", fix)]


def _import_torch() -> Any:
    try:
        import torch
    except Exception:  # a broken install raises more than ImportError
        return None
    return torch


# -- models -------------------------------------------------------------------------------------


#: Components the engine loads without (it passes safety_checker=None).
OPTIONAL_COMPONENTS = frozenset({"safety_checker"})


def missing_components(folder: Path) -> list[str]:
    """The component folders a diffusers pipeline's model_index.json names that are not in
    `folder` (an interrupted download, or a partial copy)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["model_index.json"]
    return sorted(name for name, value in index.items()
                  if not name.startswith("_") and name not in OPTIONAL_COMPONENTS and isinstance(value, list)
                  and len(value) == 2 and value[0] is not None and not (folder / name).is_dir())


def _partial_snapshot(repo_id: str, cache: Path) -> Path | None:
    snapshots = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    found = sorted(p for p in snapshots.glob("*") if (p / "model_index.json").is_file()) if snapshots.is_dir() else []
    return found[0] if found else None


def check_models(models: Iterable[Any], default_id: str, cache: Path) -> list[Check]:
    """One line per diffusion model the daemon would list (`ModelInfo`s), one for the
    classical engines.  A missing model is a warn: the daemon still serves the classical fill."""
    checks: list[Check] = []
    classical_ok: list[str] = []
    classical_missing: list[str] = []
    for m in models:
        mark = " (default)" if m.id == default_id else ""
        if m.engine == "classical":
            if m.available:
                classical_ok.append(m.id + mark)
            else:
                classical_missing.append(f"{m.id}: {m.detail}")
            continue
        name = f"model {m.id}{mark}"
        if m.available:
            family = m.family or "family known after the first load"
            size = f", native {m.native_size}px" if m.native_size else ""
            where = Path(m.detail)
            # The registry reads configs only: a folder whose model_index.json is there but a
            # component folder is not is listed as available, and its first load fails.
            missing = missing_components(where) if m.kind in ("hub", "folder") and where.is_dir() else []
            if missing:
                checks.append(Check(name, WARN, f"{family}, {m.kind}: {where} lacks the component folders "
                                    f"{', '.join(missing)}: loading it will fail",
                                    f"`hf download {m.id}` again (it resumes)" if m.kind == "hub" else
                                    "copy the whole pipeline folder again (save_pretrained layout)"))
            else:
                checks.append(Check(name, OK, f"{family}{size}, {m.kind}: {m.detail}"))
            continue
        detail = m.detail
        if m.kind == "hub":
            detail = f"not in the Hugging Face cache at {cache}"
            partial = _partial_snapshot(m.id, cache)
            missing = missing_components(partial) if partial else []
            if partial is not None:
                detail = (f"partly in the Hugging Face cache ({partial}); missing: {', '.join(missing) or 'the weights'}")
            fix = (f"`hf download {m.id}` (on a machine with network; copy its cache to {cache}), "
                   "or start the daemon with --allow-download")
        elif m.kind == "folder" and Path(m.id, "model_index.json").is_file():
            missing = missing_components(Path(m.id))
            detail += f"; missing component folders: {', '.join(missing)}" if missing else ""
            fix = "copy the whole pipeline folder again (save_pretrained layout: model_index.json and every component folder)"
        else:
            fix = "see the reason above; `inpaintd models` lists what a running daemon offers"
        checks.append(Check(name, WARN, detail, fix))
    line = f"available: {', '.join(classical_ok)} (no weights; prompts are ignored)"
    if classical_missing:
        line += "; not installed: " + "; ".join(classical_missing)
    checks.append(Check("classical engines", OK if classical_ok else FAIL, line,
                        "" if classical_ok else "reinstall: `.venv/bin/pip install -e .` (OpenCV)"))
    return checks


def registry_models(extra: Sequence[str]) -> tuple[list[Any], str]:
    """(what `inpaintd serve --model M...` would list, its default), from the file system."""
    from .models import ModelRegistry

    registry = ModelRegistry(list(extra), default=extra[0] if extra else None)
    return registry.list(), registry.default_model_id


# -- LoRAs ----------------------------------------------------------------------------------------


def check_loras() -> Check:
    """Said, so nobody looks for a folder that does nothing."""
    return Check("LoRAs/embeddings", SKIP, "the daemon does not load LoRAs or textual-inversion embeddings yet "
                 "(issue #12), so there is no folder to check")


# -- editors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Editor:
    """One Krita or GIMP found on this machine, and where its plugin and settings live."""

    kind: str  # "krita" or "gimp"
    label: str  # how it was found, for the report
    path: Path
    flatpak: bool = False
    python: tuple[str, ...] | None = None  # a command running the editor's Python, where one is known
    python_how: str = ""  # how it was found, or why there is none


def find_editors(env: Mapping[str, str], home: Path, platform: str = sys.platform,
                 which: Callable[[str], str | None] = shutil.which, root: Path = Path("/")) -> list[Editor]:
    """Krita and GIMP 3 installs on this machine: PATH binaries, Flatpaks (per user and
    system), /Applications on macOS, Program Files on Windows.  `root`: where system folders
    are looked up (tests use a tmp folder)."""
    found: list[Editor] = []
    for kind, names in (("krita", ("krita",)), ("gimp", ("gimp-3.0", "gimp-3", "gimp"))):
        for name in names:
            exe = which(name)
            if exe and Path(exe).resolve().name.startswith("gimp-2"):
                continue  # `gimp` -> gimp-2.10: no GIMP 3, which the plug-in needs
            if exe:
                found.append(Editor(kind, f"{name} on PATH", Path(exe)))
                break
    for kind, app in (("krita", "org.kde.krita"), ("gimp", "org.gimp.GIMP")):
        for base in (home / ".local" / "share" / "flatpak", root / "var" / "lib" / "flatpak"):
            if (base / "app" / app).is_dir():
                found.append(Editor(kind, f"Flatpak {app}", base / "app" / app, flatpak=True))
                break
    if platform == "darwin":
        for kind, bundle in (("krita", "krita.app"), ("gimp", "GIMP.app")):
            for apps in (root / "Applications", home / "Applications"):
                if (apps / bundle).is_dir():
                    found.append(Editor(kind, str(apps / bundle), apps / bundle))
                    break
    if platform == "win32":
        folders = [Path(env[v]) for v in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)", "LOCALAPPDATA")
                   if env.get(v)]
        for kind, subs in (("krita", ("Krita (x64)/bin/krita.exe", "Programs/Krita (x64)/bin/krita.exe")),
                           ("gimp", ("GIMP 3/bin/gimp-3.exe", "GIMP 3/bin/gimp-3.0.exe",
                                     "Programs/GIMP 3/bin/gimp-3.exe", "Programs/GIMP 3/bin/gimp-3.0.exe"))):
            hit = next((f / s for f in folders for s in subs if (f / s).is_file()), None)
            if hit is not None and all(e.path != hit for e in found):
                found.append(Editor(kind, str(hit), hit))
    return found


def plugin_folder(editor: Editor, home: Path) -> Path:
    """Where that editor looks for our plugin (the installers' folders; a Flatpak's own)."""
    from .install_gimp import PLUGIN_NAME as GIMP_PLUGIN
    from .install_gimp import default_plugins_dir, profile_version
    from .install_krita import PLUGIN_NAME as KRITA_PLUGIN
    from .install_krita import default_pykrita_dir

    if editor.kind == "krita":
        base = home / ".var/app/org.kde.krita/data/krita/pykrita" if editor.flatpak else default_pykrita_dir()
        return base / KRITA_PLUGIN
    flatpak = home / ".var/app/org.gimp.GIMP/config"
    base = flatpak / "GIMP" / profile_version(flatpak) / "plug-ins" if editor.flatpak else default_plugins_dir()
    return base / GIMP_PLUGIN


def kritarc_enabled(path: Path, name: str = "inpaintd_krita") -> bool:
    """Whether kritarc's [python] section says enable_<name>=true (Krita loads it then)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    section = None
    for line in lines:
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        elif section == "python" and "=" in s:
            key, value = (x.strip() for x in s.split("=", 1))
            if key == f"enable_{name}":
                return value.lower() == "true"
    return False


def check_plugin(editor: Editor, folder: Path) -> Check:
    """Is the plugin in that editor's plugin folder, whole?"""
    title = "Krita" if editor.kind == "krita" else "GIMP"
    name = f"{title} ({editor.label}) plugin"
    install = f"inpaintd install-{editor.kind}" + (f" --dest '{folder.parent}'" if editor.flatpak else "")
    package = f"or import the zip from `inpaintd package-{editor.kind}`"
    if editor.kind == "krita":
        parts = [folder / "__init__.py", folder.parent / "inpaintd_krita.desktop"]
    else:
        parts = [folder / "inpaintd_gimp.py", folder / "inpaintd_logic.py"]
    if not folder.is_dir():
        # A warn: an editor on the machine is not necessarily one the artist uses inpaintd in.
        return Check(name, WARN, f"not installed (no {folder})", f"`{install}` ({package})")
    absent = [str(p) for p in parts if not p.is_file()]
    if absent:
        return Check(name, FAIL, f"incomplete in {folder}: missing {', '.join(absent)}", f"`{install}` again")
    if editor.kind == "gimp" and sys.platform != "win32" and not os.access(parts[0], os.X_OK):
        return Check(name, FAIL, f"{parts[0]} is not executable: GIMP will not run it", f"chmod +x '{parts[0]}'")
    return Check(name, OK, f"installed in {folder}")


def check_kritarc(path: Path) -> Check:
    if kritarc_enabled(path):
        return Check("Krita plugin enabled", OK, f"[python] enable_inpaintd_krita=true in {path}")
    return Check("Krita plugin enabled", FAIL, f"not enabled in {path}: Krita will not load it",
                 "Settings > Configure Krita > Python Plugin Manager > tick 'inpaintd', restart Krita "
                 "(`inpaintd install-krita` does it too)")


def check_editor_python(editor: Editor, plugin: Path, env: Mapping[str, str], runner: Runner = run_command) -> list[Check]:
    """Can that editor's Python import its bindings, and pyzmq + msgpack (with the plugin's
    own vendored folders on its path, as the plugin puts them)?"""
    title = "Krita" if editor.kind == "krita" else "GIMP"
    name = f"{title} Python"
    if editor.python is None:
        carries = (plugin / "_deps").is_dir()
        return [Check(name, SKIP, f"not checked: {editor.python_how or 'the editor bundles its own Python'}"
                      + ("; the installed plugin carries its own pyzmq (_deps)" if carries else ""))]
    shown = " ".join(editor.python)
    cmd_env = clean_env(env)
    checks: list[Check] = []
    bindings, what = (KRITA_BINDINGS, "PyQt5") if editor.kind == "krita" else (GIMP_BINDINGS, "gi (Gimp 3.0)")
    ok, detail = python_can_import(editor.python, bindings, env=cmd_env, runner=runner)
    if ok:
        checks.append(Check(f"{name} bindings", OK, f"{shown} imports {what} {detail}"))
    else:
        fix = ("sudo apt install python3-pyqt5 (Debian/Ubuntu), sudo dnf install python3-qt5 (Fedora); "
               "or use Krita's AppImage, which carries its own" if editor.kind == "krita" else
               "sudo apt install gir1.2-gimp-3.0 python3-gi (Debian/Ubuntu), or use GIMP's Flatpak")
        checks.append(Check(f"{name} bindings", FAIL, f"{shown} cannot import {what}: {detail}", fix))
    vendor = plugin / ("_vendor" if editor.kind == "krita" else "vendor")
    if vendor.is_dir():
        cmd_env["PYTHONPATH"] = str(vendor)
    bundles = (plugin / "_deps").is_dir()
    code = bundled_imports(editor.kind, plugin) if bundles else CLIENT_IMPORTS
    ok, detail = python_can_import(editor.python, code, env=cmd_env, runner=runner)
    if ok:
        checks.append(Check(f"{name} pyzmq+msgpack", OK, f"{shown} imports them (zmq {detail})"
                            + (", pyzmq from the plugin's own _deps" if bundles else "")))
    elif bundles:
        checks.append(Check(f"{name} pyzmq+msgpack", FAIL, f"{shown} cannot import the plugin's bundled pyzmq: {detail}",
                            f"build the package for this Python: inpaintd package-{editor.kind} --python "
                            "X.Y (the version this editor's Python reports), and install that"))
    else:
        checks.append(Check(f"{name} pyzmq+msgpack", FAIL, f"{shown} cannot import them: {detail}",
                            "sudo apt install python3-zmq python3-msgpack; or "
                            f"{shown} -m pip install --target '{vendor}' pyzmq msgpack"))
    return checks


def bundled_imports(kind: str, plugin: Path) -> str:
    """The client import check for a plugin that carries pyzmq in `_deps/` (a package from
    `inpaintd package-krita|gimp`): the editor's Python sets up its path the way the plugin
    does at import (the client library beside it, then the wheel built for that Python),
    and fails naming the missing wheel where none fits."""
    library = plugin / "_vendor" if kind == "krita" else plugin
    setup = (f"act = bundled.activate({str(plugin / '_deps')!r})" if kind == "krita"
             else f"act = bundled.prepare_plugin_folder({str(plugin)!r})")
    return (f"import sys; sys.path.insert(0, {str(library)!r})\n"
            "from inpaintd_protocol import bundled\n"
            f"{setup}\n"
            "if act is not None and act.problem: raise SystemExit(act.problem)\n"
            f"{CLIENT_IMPORTS}")


def check_krita_trap(env: Mapping[str, str], which: Callable[..., str | None] = shutil.which) -> Check:
    trap = virtualenv_trap(env, which)
    if trap is None:
        return Check("Krita start-up environment", OK, "no virtualenv on PATH: Krita's Python finds its PyQt5")
    return Check("Krita start-up environment", WARN, f"{trap}: Krita started from this shell runs its Python in "
                 "that environment and cannot import PyQt5, so no Python plugin loads", TRAP_FIX)


def _with_python(editor: Editor) -> Editor:
    """The editor with the command running its Python, where it can be found from outside."""
    if editor.flatpak:
        return dataclass_replace(editor, python_how="a Flatpak runs its own Python inside its sandbox")
    if editor.kind == "krita":
        from .install_krita import krita_python

        python, how = krita_python()
        return dataclass_replace(editor, python=(python,) if python else None, python_how=how)
    from .install_gimp import gimp_python

    cmd, how = gimp_python(editor.path)
    return dataclass_replace(editor, python=tuple(cmd) if cmd else None, python_how=how)


def dataclass_replace(editor: Editor, **changes: Any) -> Editor:
    import dataclasses

    return dataclasses.replace(editor, **changes)


def editor_checks(editors: Sequence[Editor], home: Path, env: Mapping[str, str], runner: Runner = run_command,
                  kritarc: Path | None = None) -> list[Check]:
    """Plugin, enabled (Krita) and Python lines for every editor found."""
    if not editors:
        return [Check("editors", WARN, "no Krita or GIMP 3 found (PATH, Flatpak, the usual install folders)",
                      "install Krita 5 or GIMP 3; one installed elsewhere still works with "
                      "`inpaintd install-krita --dest DIR` / `install-gimp --dest DIR`")]
    checks: list[Check] = []
    for editor in editors:
        folder = plugin_folder(editor, home)
        checks.append(check_plugin(editor, folder))
        if editor.kind == "krita" and folder.is_dir():
            rc = home / ".var/app/org.kde.krita/config/kritarc" if editor.flatpak else kritarc
            if rc is not None:
                checks.append(check_kritarc(rc))
        checks += check_editor_python(editor, folder, env, runner)
        if editor.kind == "krita" and not editor.flatpak and sys.platform.startswith("linux"):
            checks.append(check_krita_trap(env))
    return checks


# -- the daemon -----------------------------------------------------------------------------------


def check_daemon(setting: str = "", timeout: float = 2.0, client_factory: Callable[..., Any] | None = None) -> Check:
    """Ping the daemon where the plugins will look, with the key they will read.

    Tells "nothing listens" (a warn: the plugins start a local daemon themselves) from "a
    daemon is there but refuses us" (a fail: a key or CURVE mismatch no restart fixes)."""
    from inpaintd_protocol.client import Client, DaemonUnavailable
    from inpaintd_protocol.connection import KEY_ENV, connection_file, find_key, is_loopback
    from inpaintd_protocol.editor import daemon_endpoint
    from inpaintd_protocol.messages import Code, ProtocolError

    try:
        endpoint = daemon_endpoint(setting)
    except ValueError as exc:
        return Check("daemon", FAIL, str(exc), "fix the address (--endpoint, $INPAINTD_ENDPOINT or the plugin's setting)")
    key = find_key(endpoint)
    source = ("$" + KEY_ENV if os.environ.get(KEY_ENV) else
              f"connection file {connection_file(endpoint)}" if key else "no key found")
    name = f"daemon at {endpoint}"
    try:
        with (client_factory or Client)(endpoint, name="inpaintd-doctor") as client:
            hello = client.hello(timeout=timeout)
    except DaemonUnavailable as exc:
        if "refused the connection's handshake" in exc.message:
            return Check(name, FAIL, exc.message, f"use the daemon's current connection file ({connection_file(endpoint)})")
        if is_loopback(endpoint):
            return Check(name, WARN, f"nothing answers within {timeout:.0f} s (key: {source})",
                         "start one with `inpaintd serve` (the plugins start a local one when asked)")
        return Check(name, FAIL, f"nothing answers within {timeout:.0f} s (key: {source})",
                     "start the daemon on that machine, and check the address and firewall")
    except ProtocolError as exc:
        if exc.code == Code.BAD_SIGNATURE:
            return Check(name, FAIL, f"a daemon is there but the key does not match (key: {source}): {exc.message}",
                         f"unset {KEY_ENV} or set it to the daemon's key; the daemon writes its key to "
                         f"{connection_file(endpoint)} (restart it if that file is gone or stale)")
        return Check(name, FAIL, f"a daemon is there but refused the handshake: [{exc.code}] {exc.message}",
                     "update the daemon and the plugins to the same inpaintd version" if "version" in exc.code
                     else "see the daemon's log")
    return Check(name, OK, f"inpaintd {hello.get('daemon_version', '?')} on {hello.get('device', '?')}, "
                 f"default model {hello.get('default_model', '?')} (key: {source})")


# -- the command -----------------------------------------------------------------------------------


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def text(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL, SKIP)}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return "\n".join([*(c.line() for c in self.checks), summary])

    def json(self) -> str:
        return json.dumps([asdict(c) for c in self.checks], indent=2)


def run_checks(args: argparse.Namespace) -> Report:
    """Every check on this machine."""
    from .install_krita import kritarc_path
    from .models import hub_cache_dir

    report = Report()
    report.checks += check_torch(_import_torch())
    models, default = registry_models(args.model)
    report.checks += check_models(models, default, hub_cache_dir())
    report.checks.append(check_loras())
    home = Path.home()
    editors = [_with_python(e) for e in find_editors(os.environ, home)]
    report.checks += editor_checks(editors, home, os.environ, kritarc=kritarc_path())
    report.checks.append(check_daemon(args.endpoint or "", timeout=args.timeout))
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=None, metavar="ENDPOINT",
                   help="daemon address to check (default: what the plugins use: $INPAINTD_ENDPOINT, else the default)")
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="also check this model, as `serve --model` takes it (repeatable; the first is the default)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the checks as a JSON list")


def main(args: argparse.Namespace) -> int:
    """0 when no check failed, 1 otherwise (warnings do not fail)."""
    report = run_checks(args)
    print(report.json() if args.json else report.text())
    return 1 if report.failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="inpaintd doctor")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
