"""The plugins' choice of a bundled pyzmq wheel (inpaintd_protocol/bundled.py), offline.

The file names are the ones the registry serves for pyzmq 27 (what `package-krita` and
`package-gimp` download); the packages themselves are built in test_packaging.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from inpaintd_protocol import bundled
from inpaintd_protocol.bundled import Wheel

WHEELS = [
    "pyzmq-27.3.0-cp310-cp310-win_amd64.whl",
    "pyzmq-27.3.0-cp310-cp310-macosx_10_15_universal2.whl",
    "pyzmq-27.3.0-cp310-cp310-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
    "pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
    "pyzmq-27.3.0-cp312-abi3-win_amd64.whl",
    "pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl",
    "pyzmq-27.3.0-cp312-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
]


@pytest.mark.parametrize(("sys_platform", "machine", "expected"), [
    ("win32", "AMD64", "windows-x86_64"),
    ("darwin", "arm64", "macos-arm64"),
    ("darwin", "x86_64", "macos-x86_64"),
    ("linux", "x86_64", "linux-x86_64"),
    ("linux", "aarch64", "linux-arm64"),
])
def test_this_platform(sys_platform: str, machine: str, expected: str) -> None:
    assert bundled.this_platform(sys_platform, machine) == expected


def test_tags_from_file_names() -> None:
    w = Wheel.from_filename(WHEELS[2])
    assert w.python_tags == ("cp310",) and w.abi_tags == ("cp310",)
    assert w.platform_tags == ("manylinux_2_26_x86_64", "manylinux_2_28_x86_64")
    assert w.platforms == {"linux-x86_64"}
    assert Wheel.from_filename(WHEELS[1]).platforms == {"macos-arm64", "macos-x86_64"}  # universal2
    assert Wheel.from_filename("pyzmq-27.3.0-cp311-cp311-macosx_11_0_arm64.whl").platforms == {"macos-arm64"}
    with pytest.raises(ValueError, match="not a wheel"):
        Wheel.from_filename("pyzmq-27.3.0.tar.gz")


@pytest.mark.parametrize(("plat", "version", "expected"), [
    ("windows-x86_64", (3, 10), WHEELS[0]),
    ("windows-x86_64", (3, 12), WHEELS[4]),
    ("windows-x86_64", (3, 13), WHEELS[4]),  # abi3 fits later Pythons
    ("macos-arm64", (3, 10), WHEELS[1]),
    ("macos-x86_64", (3, 10), WHEELS[1]),
    ("macos-arm64", (3, 13), WHEELS[5]),
    ("linux-x86_64", (3, 10), WHEELS[2]),
    ("linux-x86_64", (3, 11), WHEELS[3]),  # the exact build before abi3 (which does not fit 3.11 anyway)
    ("linux-x86_64", (3, 12), WHEELS[6]),
    ("linux-x86_64", (3, 14), WHEELS[6]),
])
def test_choice_for_each_platform_and_python(plat: str, version: tuple[int, int], expected: str) -> None:
    wheels = [Wheel.from_filename(n) for n in WHEELS]
    chosen = bundled.choose(wheels, plat, version)
    assert chosen is not None and chosen.filename == expected


@pytest.mark.parametrize(("plat", "version"), [
    ("windows-x86_64", (3, 11)),  # no cp311 Windows wheel, and abi3 starts at 3.12
    ("linux-arm64", (3, 12)),
    ("macos-arm64", (3, 9)),
])
def test_no_fitting_wheel(plat: str, version: tuple[int, int]) -> None:
    assert bundled.choose([Wheel.from_filename(n) for n in WHEELS], plat, version) is None


def write_manifest(deps: Path, names: list[str]) -> None:
    deps.mkdir(parents=True, exist_ok=True)
    entries = [{"wheel": n, "folder": n[:-4]} for n in names]
    (deps / bundled.MANIFEST).write_text(json.dumps({"wheels": entries}))


def test_activate_puts_the_fitting_folder_first(tmp_path: Path) -> None:
    write_manifest(tmp_path, WHEELS)
    path = ["/somewhere", "/else"]
    act = bundled.activate(str(tmp_path), "linux-x86_64", (3, 11), path)
    assert act.problem is None and act.wheel == WHEELS[3]
    assert path[0] == str(tmp_path / WHEELS[3][:-4]) and path[1:] == ["/somewhere", "/else"]
    again = bundled.activate(str(tmp_path), "linux-x86_64", (3, 11), path)  # a plugin reloaded: no duplicate
    assert again.folder == path[0] and path.count(again.folder or "") == 1


def test_activate_names_the_missing_wheel(tmp_path: Path) -> None:
    write_manifest(tmp_path, WHEELS[:3])
    path: list[str] = []
    act = bundled.activate(str(tmp_path), "windows-x86_64", (3, 13), path)
    assert path == [] and act.folder is None
    assert act.problem is not None
    assert "Python 3.13 on windows-x86_64" in act.problem and "--python 3.13" in act.problem
    assert "Python 3.10 on windows-x86_64" in act.problem  # what the package does carry


def test_activate_without_a_manifest(tmp_path: Path) -> None:
    act = bundled.activate(str(tmp_path / "nowhere"), "linux-x86_64", (3, 11), [])
    assert act.folder is None and act.problem is not None and "manifest.json" in act.problem


def test_prepare_plugin_folder(tmp_path: Path) -> None:
    """GIMP's layout: vendor/ right after the plug-in's folder, the fitting wheel first."""
    folder = tmp_path / "inpaintd_gimp"
    (folder / "vendor").mkdir(parents=True)
    write_manifest(folder / "_deps", WHEELS)
    path = [str(folder), "/usr/lib/python3/dist-packages"]
    act = bundled.prepare_plugin_folder(str(folder), path)
    assert act is not None and act.folder is not None
    wanted = bundled.choose([Wheel.from_filename(n) for n in WHEELS], bundled.this_platform(), (sys.version_info[0], sys.version_info[1]))
    if wanted is None:  # a machine the table has no wheel for: only the vendor folder goes in
        assert act.problem and path == [str(folder), str(folder / "vendor"), "/usr/lib/python3/dist-packages"]
    else:
        assert path == [act.folder, str(folder), str(folder / "vendor"), "/usr/lib/python3/dist-packages"]
    bare = tmp_path / "installed"  # `install-gimp`: no _deps, no vendor
    bare.mkdir()
    path = [str(bare)]
    assert bundled.prepare_plugin_folder(str(bare), path) is None and path == [str(bare)]


def test_mingw_python_is_its_own_platform() -> None:
    """GIMP for Windows runs MSYS2's MinGW CPython: the MSVC wheels must not be chosen."""
    assert bundled.this_platform("win32", "AMD64", "mingw_x86_64_clang") == "windows-mingw-x86_64"
    assert bundled.this_platform("win32", "AMD64", "win-amd64") == "windows-x86_64"
    wheels = [Wheel.from_filename(n) for n in WHEELS]
    assert bundled.choose(wheels, "windows-mingw-x86_64", (3, 12)) is None
    text = bundled.missing_text("windows-mingw-x86_64", (3, 13), wheels)
    assert "MinGW" in text and "mingw-w64-clang-x86_64-python-pyzmq" in text


def test_macos_version_and_newest_release() -> None:
    """Krita 5.2 still runs on macOS 10.14; pyzmq 27's universal2 wheels need 10.15."""
    old = Wheel.from_filename("pyzmq-26.2.1-cp310-cp310-macosx_10_9_x86_64.whl")
    new = Wheel.from_filename(WHEELS[1])
    assert old.min_macos == (10, 9) and new.min_macos == (10, 15) and new.version == (27, 3, 0)
    assert bundled.choose([old, new], "macos-x86_64", (3, 10)) is new  # the newest release when the OS is unknown
    assert bundled.choose([old, new], "macos-x86_64", (3, 10), macos=(10, 14)) is old
    assert bundled.choose([old, new], "macos-x86_64", (3, 10), macos=(14, 5)) is new
    assert bundled.choose([new], "macos-x86_64", (3, 10), macos=(10, 14)) is None
