"""`inpaintd install-gimp`: put the GIMP 3 plug-in where GIMP looks for it.

GIMP 3 runs each Python plug-in as its own process with GIMP's Python (on Linux the
system `python3`; GIMP's own bundled Python on Windows, macOS and in the Flatpak), not
with this project's venv.  So the installer copies the protocol client next to the
plug-in (as the package `inpaintd_protocol`, a name no other plug-in will use), and then
checks that *GIMP's* Python can import pyzmq and msgpack, which the client needs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: backend/inpaintd/ is two levels down
PLUGIN_SRC = REPO / "gimp_plugin" / "inpaintd_gimp"
PROTOCOL_SRC = REPO / "protocol" / "inpaintd_protocol"
PLUGIN_NAME = "inpaintd_gimp"  # GIMP requires folder name == file name (without .py)
PLUGIN_FILES = ("inpaintd_gimp.py", "inpaintd_logic.py", "inpaintd_watchdog.py")


def profile_version(base: Path) -> str:
    """The newest GIMP 3 profile under `base/GIMP` ("3.2" once GIMP 3.2 ran: each minor
    release keeps its own folder and copies the previous one at first start), "3.0" if none."""
    found = []
    for d in base.glob("GIMP/3.*"):
        minor = d.name.split(".", 1)[1]
        if d.is_dir() and minor.isdigit():
            found.append(int(minor))
    return f"3.{max(found)}" if found else "3.0"


def default_plugins_dir() -> Path:
    """GIMP 3's per-user plug-ins folder on this system (the newest profile's)."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming"))
        return base / "GIMP" / profile_version(base) / "plug-ins"
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
        return base / "GIMP" / profile_version(base) / "plug-ins"
    flatpak = home / ".var" / "app" / "org.gimp.GIMP" / "config"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    if not list(config.glob("GIMP/3.*")) and list(flatpak.glob("GIMP/3.*")):
        return flatpak / "GIMP" / profile_version(flatpak) / "plug-ins"
    return config / "GIMP" / profile_version(config) / "plug-ins"


def copy_plugin(dest: Path) -> Path:
    """Copy the plug-in and the protocol client into dest/inpaintd_gimp; return that folder."""
    target = dest / PLUGIN_NAME
    proto = target / "inpaintd_protocol"
    if proto.exists():
        shutil.rmtree(proto)  # drop modules a newer client no longer has
    proto.mkdir(parents=True)
    for name in PLUGIN_FILES:
        shutil.copy2(PLUGIN_SRC / name, target / name)
    for src in sorted(PROTOCOL_SRC.glob("*.py")):
        shutil.copy2(src, proto / src.name)
    for f in [target / n for n in PLUGIN_FILES] + list(proto.glob("*.py")):
        f.chmod(0o644)
    entry = target / "inpaintd_gimp.py"
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # GIMP re-reads a plug-in's procedures (their arguments) only when the entry file is
    # newer than its cache (pluginrc); copy2 kept the source's old time, and an update that
    # changed only inpaintd_logic.py would be called with the previous argument list.
    os.utime(entry)
    # The command the plug-in may use to start a local daemon: this Python's CLI.
    (target / "inpaintd_install.json").write_text(
        json.dumps({"command": [sys.executable, "-m", "inpaintd"], "repo": str(REPO)}, indent=2) + "\n",
        encoding="utf-8",
    )
    return target


def gimp_python(gimp: Path | str | None = None) -> tuple[list[str] | None, str]:
    """(command running GIMP's Python, how it was found), or (None, why not).

    GIMP 3 names the interpreter it runs .py plug-ins with in lib/gimp/3.0/interpreters/
    (`python3=/usr/bin/python3`): that one, not whatever python3 comes first on PATH (pyenv,
    conda, a venv), is the Python that must import zmq, msgpack and gi."""
    exe = gimp or shutil.which("gimp-3.0") or shutil.which("gimp")
    if not exe:
        return None, "no `gimp` on PATH (Flatpak, Windows and macOS builds carry their own Python)"
    prefix = Path(exe).resolve().parent.parent
    folders = [prefix / "lib" / "gimp" / "3.0" / "interpreters", *sorted(prefix.glob("lib/*/gimp/3.0/interpreters"))]
    for folder in folders:
        for interp in sorted(folder.glob("*.interp")):
            try:
                lines = interp.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition("=")
                if key.strip() in ("python3", "python") and Path(value.strip()).is_file():
                    return [value.strip()], f"named by {interp}"
    if Path("/usr/bin/python3").is_file():
        return ["/usr/bin/python3"], f"no GIMP 3 interpreter file under {prefix}; assumed the system Python"
    return None, f"found {exe} but not the Python it runs plug-ins with"


def check_python(python: Sequence[str]) -> str | None:
    """None when `python` can import zmq and msgpack, else what went wrong."""
    from .doctor import CLIENT_IMPORTS, python_can_import

    ok, detail = python_can_import(python, CLIENT_IMPORTS)
    return None if ok else detail


def warn_bindings(python: Sequence[str]) -> bool:
    """Warn (stderr) when `python` cannot import GIMP 3's bindings; True when it can.

    A warning only, not a failed install: the Python checked may be a guess (python3 on
    PATH) rather than the one GIMP runs, and the copy itself is sound either way."""
    from .doctor import GIMP_BINDINGS, python_can_import

    ok, detail = python_can_import(python, GIMP_BINDINGS)
    if ok:
        print(f"GIMP's Python ({' '.join(python)}) imports gi with Gimp 3.0 ({detail}).")
        return True
    print(f"install-gimp: warning: {' '.join(python)} cannot import GIMP 3's bindings (gi, Gimp 3.0): {detail}\n"
          "  If this is the Python GIMP runs plug-ins with, the plug-in will not load: install them\n"
          "  (Debian/Ubuntu: sudo apt install python3-gi gir1.2-gimp-3.0), or pass the right one with --python.",
          file=sys.stderr)
    return False


def advice(target: Path) -> str:
    vendor = target / "vendor"
    return (
        "The plug-in needs pyzmq and msgpack in GIMP's Python.  Install them for it:\n"
        "  Debian/Ubuntu:  sudo apt install python3-zmq python3-msgpack\n"
        "  Fedora:         sudo dnf install python3-zmq python3-msgpack\n"
        "  Arch:           sudo pacman -S python-pyzmq python-msgpack\n"
        "  Flatpak, Windows, macOS (GIMP bundles its own Python): install wheels for that Python's version\n"
        f"  into the plug-in's vendor folder, which it adds to its path:\n"
        f"    python3 -m pip install --target '{vendor}' --python-version X.Y --only-binary=:all: pyzmq msgpack\n"
        "  (X.Y = the version GIMP's Python console shows: Filters > Development > Python-Fu > Console)."
    )


def install(dest: Path | None = None, python: Sequence[str] | None = None) -> int:
    """Install into `dest` (default: GIMP 3's plug-ins folder) and check GIMP's Python.

    `python` is the command that runs GIMP's Python (default: `python3` on PATH, which is
    what GIMP 3 from a Linux distribution uses).  Returns 0 when installed and usable,
    1 when the copy failed, 2 when installed but GIMP's Python lacks pyzmq or msgpack.  A Python
    without GIMP's own bindings (gi) is a warning only (`warn_bindings` says why)."""
    dest = Path(dest) if dest else default_plugins_dir()
    try:
        target = copy_plugin(dest)
    except OSError as exc:
        print(f"install-gimp: could not install into {dest}: {exc}", file=sys.stderr)
        return 1
    print(f"Installed the GIMP plug-in into {target}")
    print("Restart GIMP; the command is Filters > AI > Inpaint Selection...")
    if python is None:
        cmd, _how = gimp_python() if sys.platform != "win32" else (None, "")
        found = shutil.which("python3") if sys.platform != "win32" and cmd is None else None
        if cmd is None and not found:
            print("install-gimp: no python3 on PATH to check; " + advice(target), file=sys.stderr)
            return 2
        python = cmd or [str(found)]
    problem = check_python(python)
    if problem:
        print(f"install-gimp: GIMP's Python ({' '.join(python)}) cannot import zmq and msgpack: {problem}",
              file=sys.stderr)
        print(advice(target), file=sys.stderr)
        return 2
    print(f"GIMP's Python ({' '.join(python)}) can import zmq and msgpack.")
    warn_bindings(python)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (`python -m inpaintd.install_gimp [--dest DIR] [--python CMD]`)."""
    import argparse
    import shlex

    ap = argparse.ArgumentParser(prog="inpaintd install-gimp", description=install.__doc__)
    ap.add_argument("--dest", type=Path, help="plug-ins folder (default: GIMP 3's per-user folder)")
    ap.add_argument("--python", help="command running GIMP's Python, e.g. 'chroot /root python3'")
    args = ap.parse_args(argv)
    return install(args.dest, shlex.split(args.python) if args.python else None)


if __name__ == "__main__":
    sys.exit(main())
