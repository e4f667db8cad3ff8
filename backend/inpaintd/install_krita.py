"""`inpaintd install-krita`: put the Krita plugin where Krita finds it, and check that it can run.

The plugin needs the client library (protocol/inpaintd_protocol) and, through it, pyzmq and
msgpack in *Krita's* Python, which is not the Python that runs this installer.  So the
installer copies the library inside the plugin (`inpaintd_krita/_vendor/inpaintd_protocol`,
imported as `inpaintd_protocol`, the same name the GIMP plug-in uses), enables the plugin in kritarc, then finds Krita's own Python where
it can (Linux packages link the system libpython3.X) and tries the imports there, printing
the exact command to fix what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PLUGIN_NAME = "inpaintd_krita"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: backend/inpaintd/ is two levels down
PLUGIN_SRC = ROOT / "krita_plugin"
PROTOCOL_SRC = ROOT / "protocol" / "inpaintd_protocol"


def default_pykrita_dir() -> Path:
    """Krita's per-user resource folder + pykrita, as Krita itself computes it (QStandardPaths)."""
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", home / "AppData" / "Roaming")) / "krita" / "pykrita"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "krita" / "pykrita"
    flatpak = home / ".var" / "app" / "org.kde.krita" / "data" / "krita"
    if flatpak.is_dir() and not shutil.which("krita"):
        return flatpak / "pykrita"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita" / "pykrita"


def kritarc_path() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "kritarc"
    if sys.platform == "darwin":
        return home / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"


def enable_in_kritarc(path: Path, name: str = PLUGIN_NAME) -> bool:
    """Set `enable_<name>=true` in the [python] section, editing lines in place so the
    rest of Krita's settings stay byte-for-byte as they were.  True if the file changed."""
    key = f"enable_{name}"
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if path.exists() else []
    section = None
    python_at = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            if section == "python":
                python_at = i
            continue
        if section == "python" and s.split("=", 1)[0].strip() == key:
            if s.split("=", 1)[-1].strip().lower() == "true":
                return False
            lines[i] = f"{key}=true"
            break
    else:
        if python_at is None:
            if lines and lines[-1].strip():
                lines.append("")
            lines += ["[python]", f"{key}=true"]
        else:
            lines.insert(python_at + 1, f"{key}=true")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    return True


def copy_plugin(dest: Path) -> Path:
    """Copy the plugin package, its .desktop file and the vendored client into `dest`."""
    target = dest / PLUGIN_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PLUGIN_SRC / PLUGIN_NAME, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_vendor"))
    vendor = target / "_vendor"  # put first on sys.path by the plugin's __init__
    (vendor / "inpaintd_protocol").mkdir(parents=True)
    for f in sorted(PROTOCOL_SRC.glob("*.py")):
        shutil.copy2(f, vendor / "inpaintd_protocol" / f.name)
    if (PLUGIN_SRC / "README.md").exists():
        shutil.copy2(PLUGIN_SRC / "README.md", target / "README.md")
    shutil.copy2(PLUGIN_SRC / f"{PLUGIN_NAME}.desktop", dest / f"{PLUGIN_NAME}.desktop")
    return target


def krita_python() -> tuple[str | None, str]:
    """(python executable matching Krita's embedded Python, how it was found), or (None, why not)."""
    krita = shutil.which("krita")
    if not krita:
        return None, "no `krita` on PATH (AppImage, Windows, macOS and Flatpak builds carry their own Python)"
    libdirs = [Path(p) for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")]
    libdirs.insert(0, Path(krita).resolve().parent.parent / "lib")
    for libdir in libdirs:
        for so in list(libdir.glob("kritaplugins/kritapykrita.so")) + list(libdir.glob("*/kritaplugins/kritapykrita.so")):
            try:
                out = subprocess.run(["ldd", str(so)], capture_output=True, text=True, timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            m = re.search(r"libpython(3\.\d+)\S*\s*=>\s*(\S+)", out)
            if m:
                ver, lib = m.group(1), Path(m.group(2))
                # The interpreter that shares the embedded library's prefix, not whatever
                # python3.X comes first on PATH (pyenv, conda, a venv).
                near = [p / "bin" / f"python{ver}" for p in (lib.parent.parent, lib.parent.parent.parent)]
                for exe in near + [Path(f"/usr/bin/python{ver}")]:
                    if exe.is_file():
                        return str(exe), f"{so.name} links {lib}"
                found = shutil.which(f"python{ver}")
                if found:
                    return found, f"{so.name} links {lib} (interpreter found on PATH)"
                return None, f"Krita uses Python {ver}, but no python{ver} executable was found"
    return None, f"found {krita} but not its Python plugin library (kritapykrita.so)"


def _menu_env(extra_path: Path | None = None) -> dict[str, str]:
    """The environment of Krita started from the desktop menu: no virtualenv, PYTHONPATH
    only `extra_path`."""
    from .doctor import clean_env

    env = clean_env(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return env


def check_imports(python: str, extra_path: Path | None = None) -> tuple[bool, str]:
    """Whether Krita's Python imports pyzmq and msgpack, as Krita started from the menu would."""
    from .doctor import CLIENT_IMPORTS, python_can_import

    return python_can_import([python], CLIENT_IMPORTS, env=_menu_env(extra_path))


def warn_bindings(python: str | None, env: Mapping[str, str] | None = None) -> bool:
    """Warn (stderr) about what keeps Krita's own Python plugins from loading; True when
    nothing does.  Warnings only: the copy is sound, and the fix is outside inpaintd.

    Two traps: Krita's Python lacks PyQt5 (a distribution package left out), and this shell
    has a virtualenv on PATH, which the embedded Python takes for its home when Krita is
    started from here (then PyQt5 is missing only for that start)."""
    from .doctor import KRITA_BINDINGS, TRAP_FIX, python_can_import, virtualenv_trap

    good = True
    if python is not None:
        ok, detail = python_can_import([python], KRITA_BINDINGS, env=_menu_env())
        if ok:
            print(f"Krita's Python imports PyQt5 {detail}.")
        else:
            good = False
            print(f"warning: Krita's Python ({python}) cannot import PyQt5: {detail}\n"
                  "  Krita loads no Python plugin without it: sudo apt install python3-pyqt5 (Debian/Ubuntu), "
                  "sudo dnf install python3-qt5 (Fedora), or use Krita's AppImage.", file=sys.stderr)
    trap = virtualenv_trap(os.environ if env is None else env) if sys.platform.startswith("linux") else None
    if trap:
        good = False
        print(f"warning: {trap}. Krita started from this shell runs its Python in that environment, cannot "
              f"import PyQt5, and loads no Python plugin (the Python Plugin Manager is empty).\n  Fix: {TRAP_FIX}.",
              file=sys.stderr)
    return good


def install(dest: Path | str | None = None, enable: bool = True) -> int:
    """Install the plugin; print what was done.  0: ready to use; 2: installed, but Krita's
    Python cannot import pyzmq/msgpack (the message says how to fix it); 1: failed.  What
    would keep Krita's own Python plugins from loading (no PyQt5, a virtualenv in this shell)
    is a warning that leaves the status as it is (`warn_bindings`)."""
    dest = Path(dest).expanduser() if dest else default_pykrita_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        target = copy_plugin(dest)
    except OSError as exc:
        print(f"error: could not install into {dest}: {exc}", file=sys.stderr)
        return 1
    print(f"installed the plugin into {target}")
    print(f"wrote {dest / (PLUGIN_NAME + '.desktop')}")
    print(f"vendored the client library as inpaintd_protocol in {target / '_vendor'}")
    if enable:
        rc = kritarc_path()
        try:
            changed = enable_in_kritarc(rc)
            print(f"{'enabled' if changed else 'already enabled'}: [python] enable_{PLUGIN_NAME}=true in {rc}")
        except OSError as exc:
            print(f"warning: could not edit {rc} ({exc}); enable 'inpaintd' in Settings > Configure Krita > "
                  "Python Plugin Manager", file=sys.stderr)
    vendor = target / "_vendor"
    python, how = krita_python()
    if python is None:
        print(f"note: could not check Krita's Python ({how}).")
        print("  If the docker says pyzmq/msgpack are missing, install them for Krita's Python version X.Y:")
        print(f"    python -m pip install --target \"{vendor}\" --python-version X.Y --only-binary=:all: pyzmq msgpack")
        print("  (Krita > Help > System Information shows its Python version.)")
        warn_bindings(None)
        return 0
    warn_bindings(python)
    ok, detail = check_imports(python)
    if ok:
        print(f"Krita's Python ({python}; {how}) imports pyzmq and msgpack ({detail}). Restart Krita, then open "
              "Settings > Dockers > inpaintd.")
        return 0
    ver = re.search(r"(3\.\d+)", Path(python).name)
    print(f"warning: Krita's Python ({python}) cannot import pyzmq and msgpack: {detail}", file=sys.stderr)
    print("  Fix it with one of:", file=sys.stderr)
    print("    sudo apt install python3-zmq python3-msgpack        (Debian/Ubuntu packages of Krita)", file=sys.stderr)
    print(f"    {python} -m pip install --target \"{vendor}\" pyzmq msgpack", file=sys.stderr)
    if ver:
        print(f"    python -m pip install --target \"{vendor}\" --python-version {ver.group(1)} --only-binary=:all: pyzmq msgpack",
              file=sys.stderr)
    print("  then restart Krita.", file=sys.stderr)
    return 2
