"""`inpaintd package-krita` / `package-gimp`: plugin packages for editors that bring their own Python.

The official Krita and GIMP builds for Windows and macOS, the Krita AppImage and the
Flatpaks run plugins with a Python of their own that has no pip and no pyzmq.  A package
therefore carries, beside the plugin and the client library:

- `_deps/<wheel>/`: one pyzmq wheel per (platform, Python) of the table below, fetched from
  the package registry as a binary wheel (`pip download --only-binary=:all:`, never built
  here) and unpacked whole (pyzmq's bundled libzmq sits beside `zmq/` in `pyzmq.libs`);
- `_deps/manifest.json`: the wheels' file names, from whose tags the plugin picks its own at
  import time (inpaintd_protocol/bundled.py);
- msgpack's pure-Python fallback in the vendored folder, so only one compiled dependency
  has to match the editor.

The Krita package is a zip that Krita's *Tools > Scripts > Import Python Plugin from
File...* accepts (a `.desktop` file and the plugin folder with its directory entries).
The GIMP package is a zip holding the plug-in folder `inpaintd_gimp/`, to unpack into
GIMP's plug-ins folder.  Where each editor's Python version comes from is in
docs/editor-pythons.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from inpaintd_protocol.bundled import MANIFEST, Wheel, choose

#: pyzmq 26 is the first with abi3 wheels for CPython 3.12+; 27 the current line.
PYZMQ_SPEC = "pyzmq>=26,<28"

#: pip's platform tag per platform (pip also accepts the older tags these imply:
#: universal2 for macOS, older manylinux for Linux).  Krita 5.2 for macOS still runs on
#: 10.14, which pyzmq 27's universal2 wheels (10.15) do not: a row may name its own tag.
PIP_PLATFORM = {
    "windows-x86_64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x86_64": "macosx_10_15_x86_64",
    "linux-x86_64": "manylinux_2_28_x86_64",
}


@dataclass(frozen=True)
class Target:
    """One editor build whose plugins run on `python` on `platform` (docs/editor-pythons.md
    has the source of each); `pip_platform` overrides PIP_PLATFORM for an older OS."""

    editor: str
    build: str
    platform: str
    python: str
    pip_platform: str = ""

    @property
    def pip_tag(self) -> str:
        return self.pip_platform or PIP_PLATFORM[self.platform]

    @property
    def oldest_macos(self) -> tuple[int, int] | None:
        """The oldest macOS this row must run on, when it names one (macosx_10_14_...)."""
        if not self.pip_platform.startswith("macosx_"):
            return None
        major, minor = self.pip_platform.split("_")[1:3]
        return int(major), int(minor)

    @property
    def python_version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")
        return int(major), int(minor)


# The builds and their Pythons, as docs/editor-pythons.md found them (with sources).  Krita
# 6.0 (PyQt6) is not in the table: the plugin is written for PyQt5 (Krita 5).  GIMP for
# Windows is not either: it runs MSYS2's MinGW Python, for which PyPI has no pyzmq wheel
# (the plug-in recognises that Python and says what to do).
KRITA_TARGETS: tuple[Target, ...] = (
    Target("krita", "5.2 Windows installer", "windows-x86_64", "3.10"),
    Target("krita", "5.2 macOS (universal2, macOS 10.14+)", "macos-x86_64", "3.10", "macosx_10_14_x86_64"),
    Target("krita", "5.2 macOS (universal2)", "macos-arm64", "3.10"),
    Target("krita", "5.2 AppImage and Flatpak", "linux-x86_64", "3.10"),
    Target("krita", "5.3, and 5.2.13-14 built on 3.13: Windows installer", "windows-x86_64", "3.13"),
    Target("krita", "5.3, and 5.2.13-14 built on 3.13: macOS (universal2)", "macos-x86_64", "3.13"),
    Target("krita", "5.3, and 5.2.13-14 built on 3.13: macOS (universal2)", "macos-arm64", "3.13"),
    Target("krita", "5.3 AppImage and Flatpak", "linux-x86_64", "3.13"),
    Target("krita", "Linux distribution packages: Debian 12 (3.11)", "linux-x86_64", "3.11"),
    Target("krita", "Linux distribution packages: 3.12 and later", "linux-x86_64", "3.12"),
)

GIMP_TARGETS: tuple[Target, ...] = (
    Target("gimp", "3.0-3.2 macOS (arm64 DMG)", "macos-arm64", "3.10"),
    Target("gimp", "3.0-3.2 macOS (x86_64 DMG)", "macos-x86_64", "3.10"),
    Target("gimp", "3.0.0-3.0.4 Flatpak (GNOME 48)", "linux-x86_64", "3.12"),
    Target("gimp", "3.0.6-3.2 Flatpak (GNOME 49/50)", "linux-x86_64", "3.13"),
    Target("gimp", "Linux distribution packages: 3.11", "linux-x86_64", "3.11"),
)


class PackagingError(Exception):
    """A package could not be built; the message says which wheel or file and why."""


def select_targets(targets: Iterable[Target], pythons: Sequence[str] = (), platforms: Sequence[str] = ()) -> list[Target]:
    """The table's rows, narrowed to some Pythons/platforms, plus any extra Python asked for
    (`--python 3.13` adds that version on every platform of the table)."""
    rows = list(targets)
    if platforms:
        unknown = sorted(set(platforms) - set(PIP_PLATFORM))
        if unknown:
            raise PackagingError(f"unknown platform(s) {', '.join(unknown)}; known: {', '.join(PIP_PLATFORM)}")
        rows = [t for t in rows if t.platform in platforms]
    for py in pythons:
        if not py.count(".") == 1 or not all(p.isdigit() for p in py.split(".")):
            raise PackagingError(f"--python wants a version like 3.11, not {py!r}")
        for plat in sorted({t.platform for t in rows} or set(PIP_PLATFORM)):
            if not any(t.platform == plat and t.python == py for t in rows):
                rows.append(Target(rows[0].editor if rows else "", "asked for with --python", plat, py))
    return rows


def fetch_wheel(target: Target, cache: Path, pip: Sequence[str] = (sys.executable, "-m", "pip")) -> Path:
    """The pyzmq wheel for one target, from the cache or downloaded into it."""
    folder = cache / f"{target.pip_tag}-py{target.python}"
    found = sorted(folder.glob("pyzmq-*.whl"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [*pip, "download", PYZMQ_SPEC, "--no-deps", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", target.python, "--platform", target.pip_tag, "-d", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackagingError(f"could not run {' '.join(cmd)}: {exc}") from exc
    found = sorted(folder.glob("pyzmq-*.whl"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise PackagingError(f"no pyzmq wheel for Python {target.python} on {target.platform} "
                             f"(pip download ... --platform {target.pip_tag}):\n{tail}")
    return found[-1]


def unpack_wheels(wheels: Iterable[Path], deps: Path) -> list[dict[str, str]]:
    """Unpack each distinct wheel into deps/<name>/ and write deps/manifest.json."""
    entries: list[dict[str, str]] = []
    for whl in sorted(set(wheels), key=lambda p: p.name):
        if any(e["wheel"] == whl.name for e in entries):
            continue
        info = Wheel.from_filename(whl.name)
        # A short folder name: Windows paths inside %APPDATA% stay far below MAX_PATH.
        info = Wheel.from_filename(whl.name, "-".join([*whl.name[:-4].split("-")[-3:-1], info.platform_tags[0]]))
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(deps / info.folder)
        entries.append({"wheel": whl.name, "folder": info.folder, "runs_on": info.describe()})
    (deps / MANIFEST).write_text(json.dumps({"wheels": entries}, indent=1) + "\n", encoding="utf-8")
    return entries


def vendor_pure_msgpack(dest: Path) -> str:
    """Copy msgpack's Python sources (no compiled module: its fallback takes over) to dest/msgpack."""
    import msgpack

    src = Path(msgpack.__file__).parent
    target = dest / "msgpack"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for f in sorted(src.glob("*.py")):
        shutil.copy2(f, target / f.name)
    version = metadata.version("msgpack")
    try:
        dist = metadata.distribution("msgpack")
        for rel in dist.files or []:
            if Path(str(rel)).name.upper().startswith(("COPYING", "LICENSE")):
                shutil.copy2(Path(str(dist.locate_file(rel))), target / Path(str(rel)).name)
    except (OSError, metadata.PackageNotFoundError):
        pass
    return version


def zip_tree(root: Path, out: Path) -> None:
    """Zip every file under root with a directory entry for every folder (Krita's importer
    finds a plugin by the entry `name/`)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            if rel != Path("."):
                zf.write(dirpath, rel.as_posix() + "/")
            for name in sorted(filenames):
                if name.endswith(".pyc") or "__pycache__" in Path(dirpath).parts:
                    continue
                zf.write(Path(dirpath) / name, (rel / name).as_posix())


@dataclass
class Built:
    """A built package and what it carries (printed by the CLI, read by tests)."""

    path: Path
    wheels: list[dict[str, str]]
    targets: list[Target]
    msgpack: str

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB)", "  build | platform | Python | pyzmq wheel"]
        for t in self.targets:
            lines.append(f"  {t.editor} {t.build} | {t.platform} | {t.python} | {_wheel_for(self.wheels, t) or 'MISSING'}")
        lines.append(f"  msgpack {self.msgpack} (pure Python)")
        return "\n".join(lines)


def _wheel_for(entries: list[dict[str, str]], t: Target) -> str | None:
    """The wheel the plugin will pick on this row's platform, Python and oldest macOS."""
    chosen = choose([Wheel.from_filename(e["wheel"]) for e in entries], t.platform, t.python_version, t.oldest_macos)
    return chosen.filename if chosen else None


def _deps_for(targets: list[Target], cache: Path, deps: Path, pip: Sequence[str]) -> list[dict[str, str]]:
    wheels = [fetch_wheel(t, cache, pip) for t in targets]
    entries = unpack_wheels(wheels, deps)
    missing = [t for t in targets if _wheel_for(entries, t) is None]
    if missing:
        raise PackagingError("downloaded wheels fit none of: " + ", ".join(f"{t.platform} {t.python}" for t in missing))
    return entries


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "inpaintd" / "wheels"


def build_krita(out_dir: Path, targets: Sequence[Target] = KRITA_TARGETS, cache: Path | None = None,
                pip: Sequence[str] = (sys.executable, "-m", "pip")) -> Built:
    """inpaintd_krita-<version>.zip for Krita's Import Python Plugin from File."""
    return _build("krita", out_dir, targets, cache, pip)


def build_gimp(out_dir: Path, targets: Sequence[Target] = GIMP_TARGETS, cache: Path | None = None,
               pip: Sequence[str] = (sys.executable, "-m", "pip")) -> Built:
    """inpaintd_gimp-<version>.zip: the plug-in folder to unpack into GIMP's plug-ins folder."""
    return _build("gimp", out_dir, targets, cache, pip)


def _build(editor: str, out_dir: Path, targets: Sequence[Target], cache: Path | None, pip: Sequence[str]) -> Built:
    """The installer's copy of the plugin, plus msgpack and the wheels, zipped.  The two
    plugins differ only in their installer and in the folder their own path set-up reads
    (Krita: `_vendor/`, GIMP: `vendor/`)."""
    from . import __version__, install_gimp, install_krita

    installer = install_krita if editor == "krita" else install_gimp
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        target = installer.copy_plugin(stage)
        (target / "inpaintd_install.json").unlink(missing_ok=True)  # GIMP's: names this machine's Python
        version = vendor_pure_msgpack(target / ("_vendor" if editor == "krita" else "vendor"))
        entries = _deps_for(list(targets), cache or default_cache(), target / "_deps", pip)
        _write_stamp(target / "_deps", editor, targets)
        out = out_dir / f"{installer.PLUGIN_NAME}-{__version__}.zip"
        zip_tree(stage, out)
    return Built(out, entries, list(targets), version)


def _write_stamp(deps: Path, editor: str, targets: Sequence[Target]) -> None:
    """Add to the manifest which builds the package was made for (for `doctor` and bug reports)."""
    data = json.loads((deps / MANIFEST).read_text(encoding="utf-8"))
    data["editor"] = editor
    data["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["pyzmq_spec"] = PYZMQ_SPEC
    data["targets"] = [{"build": t.build, "platform": t.platform, "python": t.python} for t in targets]
    (deps / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
