"""Pick, at import time, the pyzmq that a plugin package carries for this editor's Python.

Official Krita and GIMP builds (Windows, macOS, AppImage, Flatpak) bring their own Python
with no pip and no pyzmq.  `inpaintd package-krita` / `package-gimp` therefore unpack one
pyzmq wheel per platform and Python into the package's `_deps/` folder, each in its own
sub-folder named after the wheel, and write `_deps/manifest.json`.  Before the client
library imports `zmq`, the plugin calls `activate(deps)`: the one folder whose wheel tags
fit this interpreter goes first on `sys.path`.  With none fitting, nothing changes (a
system pyzmq may still serve) and `Activation.problem` names the wheel that is missing,
which the plugin shows if `import zmq` then fails.

The choice reads the wheel file names' tags (PEP 425), not a table of editors, so a
package built for other Pythons needs no change here.  Standard library only: this runs
inside the editor before anything else can be imported.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import sysconfig
from dataclasses import dataclass, field

MANIFEST = "manifest.json"

#: Operating system and CPU as this module names them, from the wheel's platform tag.
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


def this_platform(sys_platform: str | None = None, machine: str | None = None, build_platform: str | None = None) -> str:
    """'windows-x86_64', 'macos-arm64', 'linux-x86_64', ... for the running interpreter.

    GIMP for Windows runs MSYS2's MinGW build of CPython (sysconfig says 'mingw_...'),
    which cannot load the MSVC-built win_amd64 wheels: it is 'windows-mingw-<arch>'."""
    sys_platform = sys.platform if sys_platform is None else sys_platform
    machine = (platform.machine() if machine is None else machine).lower()
    build_platform = sysconfig.get_platform() if build_platform is None else build_platform
    os_name = "windows" if sys_platform.startswith("win") else "macos" if sys_platform == "darwin" else \
        "linux" if sys_platform.startswith("linux") else sys_platform
    if os_name == "windows" and build_platform.startswith("mingw"):
        os_name = "windows-mingw"
    return f"{os_name}-{_ARCHES.get(machine, machine)}"


def this_macos() -> tuple[int, int] | None:
    """The running macOS version, or None elsewhere (or when unknown)."""
    if sys.platform != "darwin":
        return None
    try:
        parts = [int(p) for p in platform.mac_ver()[0].split(".")[:2]]
    except ValueError:
        return None
    return (parts[0], parts[1] if len(parts) > 1 else 0) if parts else None


def platforms_of_tag(tag: str) -> set[str]:
    """The platforms one wheel platform tag runs on: `macosx_10_15_universal2` is both Macs."""
    if tag == "win_amd64":
        return {"windows-x86_64"}
    if tag == "win_arm64":
        return {"windows-arm64"}
    if tag.startswith("macosx_"):
        arch = tag.split("_", 3)[-1]
        if arch == "universal2":
            return {"macos-arm64", "macos-x86_64"}
        return {f"macos-{_ARCHES.get(arch, arch)}"}
    for prefix in ("manylinux", "musllinux"):
        if tag.startswith(prefix):
            for arch in ("x86_64", "aarch64"):
                if tag.endswith("_" + arch):
                    return {f"linux-{_ARCHES[arch]}"}
    return set()


@dataclass(frozen=True)
class Wheel:
    """One unpacked wheel: its folder under _deps/ and the tags from its file name."""

    folder: str
    filename: str
    python_tags: tuple[str, ...]  # cp310, cp312 ...
    abi_tags: tuple[str, ...]  # cp310, abi3, none ...
    platform_tags: tuple[str, ...]

    @classmethod
    def from_filename(cls, filename: str, folder: str = "") -> Wheel:
        """`pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl` -> its tags (compressed
        tag sets such as `manylinux_2_26_x86_64.manylinux_2_28_x86_64` split on dots)."""
        parts = filename[:-4].split("-") if filename.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise ValueError(f"not a wheel file name: {filename!r}")
        py, abi, plat = parts[-3:]
        return cls(folder or filename[:-4], filename, tuple(py.split(".")), tuple(abi.split(".")), tuple(plat.split(".")))

    @property
    def platforms(self) -> set[str]:
        out: set[str] = set()
        for tag in self.platform_tags:
            out |= platforms_of_tag(tag)
        return out

    @property
    def version(self) -> tuple[int, ...]:
        """The project's version from the file name (27.3.0 -> (27, 3, 0))."""
        try:
            return tuple(int(p) for p in self.filename.split("-")[1].split(".") if p.isdigit())
        except IndexError:
            return ()

    @property
    def min_macos(self) -> tuple[int, int] | None:
        """The oldest macOS a macosx_X_Y_* tag runs on (None for other platforms)."""
        found = [tuple(int(p) for p in t.split("_")[1:3]) for t in self.platform_tags if t.startswith("macosx_")]
        return (found[0][0], found[0][1]) if found else None

    def fits_python(self, version: tuple[int, int]) -> bool:
        """A cpXY-cpXY wheel fits CPython X.Y only; cpXY-abi3 fits X.Y and later."""
        here = f"cp{version[0]}{version[1]}"
        for py in self.python_tags:
            if not py.startswith("cp"):
                continue
            if "abi3" in self.abi_tags:
                major, minor = int(py[2]), int(py[3:] or 0)
                if (version[0], version[1]) >= (major, minor):
                    return True
            elif py == here:
                return True
        return False

    def describe(self) -> str:
        pys = ", ".join(
            f"Python {p[2]}.{p[3:]}{'+' if 'abi3' in self.abi_tags else ''}" for p in self.python_tags if p.startswith("cp"))
        return f"{pys} on {', '.join(sorted(self.platforms)) or '?'}"


def read_manifest(deps: str) -> list[Wheel]:
    with open(os.path.join(deps, MANIFEST), encoding="utf-8") as f:
        data = json.load(f)
    return [Wheel.from_filename(w["wheel"], w["folder"]) for w in data.get("wheels", [])]


def choose(wheels: list[Wheel], plat: str, version: tuple[int, int], macos: tuple[int, int] | None = None) -> Wheel | None:
    """The wheel for this platform and Python: an exact cpXY build before an abi3 one, then
    the newest release; on a known macOS, none that needs a newer one."""
    fitting = [w for w in wheels if plat in w.platforms and w.fits_python(version)
               and not (macos and w.min_macos and w.min_macos > macos)]
    fitting.sort(key=lambda w: ("abi3" in w.abi_tags, tuple(-v for v in w.version)))
    return fitting[0] if fitting else None


@dataclass
class Activation:
    """What `activate` did: the folder put on the path, or why there was none."""

    folder: str | None = None
    wheel: str | None = None
    problem: str | None = None
    available: list[str] = field(default_factory=list)


def missing_text(plat: str, version: tuple[int, int], wheels: list[Wheel], what: str = "pyzmq") -> str:
    have = "; ".join(w.describe() for w in wheels) or "none"
    if plat.startswith("windows-mingw"):
        return (f"This editor runs MSYS2's MinGW build of Python {version[0]}.{version[1]} (GIMP for Windows does), "
                f"which cannot load the Windows wheels on PyPI, so the package carries no {what} for it.  Put MSYS2's "
                f"own build into the plug-in's vendor folder: the zmq folder of the package "
                f"mingw-w64-clang-x86_64-python-pyzmq (packages.msys2.org) and libzmq.dll from mingw-w64-clang-x86_64-zeromq "
                f"beside it; or use GIMP from WSL/Linux.")
    return (f"This editor runs Python {version[0]}.{version[1]} on {plat}, and this inpaintd package carries no {what} "
            f"wheel for it (it has: {have}).  Rebuild the package with `inpaintd package-krita --python "
            f"{version[0]}.{version[1]}` (or package-gimp), or install {what} into this editor's Python.")


def activate(deps: str, plat: str | None = None, version: tuple[int, int] | None = None,
             path: list[str] | None = None, macos: tuple[int, int] | None = None) -> Activation:
    """Put the fitting wheel's folder first on `path` (sys.path); never raises."""
    plat = this_platform() if plat is None else plat
    version = (sys.version_info[0], sys.version_info[1]) if version is None else version
    path = sys.path if path is None else path
    try:
        wheels = read_manifest(deps)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Activation(problem=f"no usable {os.path.join(deps, MANIFEST)} ({exc})")
    result = Activation(available=[w.describe() for w in wheels])
    wheel = choose(wheels, plat, version, this_macos() if plat.startswith("macos") and macos is None else macos)
    if wheel is None:
        result.problem = missing_text(plat, version, wheels)
        return result
    folder = os.path.join(deps, wheel.folder)
    if folder in path:
        path.remove(folder)
    path.insert(0, folder)
    result.folder, result.wheel = folder, wheel.filename
    return result


def prepare_plugin_folder(folder: str, path: list[str] | None = None) -> Activation | None:
    """The paths a GIMP plug-in process needs, from its own folder (already first on `path`):
    `vendor/` (msgpack's pure-Python code in a package, or `pip install --target` there)
    right after it, and the fitting wheel of `_deps/` first.  Every process the plug-in
    starts with GIMP's Python (the watchdog too) calls this before importing the client.
    Returns what `activate` did, or None when the folder carries no wheels."""
    path = sys.path if path is None else path
    vendor = os.path.join(folder, "vendor")
    if os.path.isdir(vendor) and vendor not in path:
        path.insert(1 if path and path[0] == folder else 0, vendor)
    deps = os.path.join(folder, "_deps")
    return activate(deps, path=path) if os.path.isdir(deps) else None
