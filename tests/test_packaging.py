"""`inpaintd package-krita` / `package-gimp`: packages built from the registry's wheels.

Each package is built once per module (pyzmq wheels downloaded with pip into a fresh
cache), then checked: the layout each editor's importer expects, a fitting wheel of the
right binary format for every (platform, Python) in the table, and a job run end to end
by a Python that has no pyzmq or msgpack of its own, through the unpacked package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inpaintd import packaging
from inpaintd.packaging import GIMP_TARGETS, KRITA_TARGETS, Target
from inpaintd_protocol import bundled

KRITA_IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer")
#: The first bytes of an extension module on each operating system.
MAGIC = {"windows": (b"MZ",), "macos": (b"\xca\xfe\xba\xbe", b"\xcf\xfa\xed\xfe"), "linux": (b"\x7fELF",)}


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path) -> Iterator[dict[str, tuple[packaging.Built, Path]]]:
    root = tmp_path_factory.mktemp("packages")
    cache = wheel_cache
    out: dict[str, tuple[packaging.Built, Path]] = {}
    for editor, build in (("krita", packaging.build_krita), ("gimp", packaging.build_gimp)):
        b = build(root / "out", cache=cache)
        print(b.summary())
        unpacked = root / f"{editor}-unpacked"
        with zipfile.ZipFile(b.path) as zf:
            zf.extractall(unpacked)
        out[editor] = (b, unpacked)
    yield out


def deps_of(editor: str, unpacked: Path) -> Path:
    return unpacked / ("inpaintd_krita" if editor == "krita" else "inpaintd_gimp") / "_deps"


def test_krita_zip_layout(built: dict[str, tuple[packaging.Built, Path]]) -> None:
    b, unpacked = built["krita"]
    names = zipfile.ZipFile(b.path).namelist()
    assert "inpaintd_krita.desktop" in names
    assert "inpaintd_krita/" in names and "inpaintd_krita/__init__.py" in names  # how Krita's importer finds it
    assert "inpaintd_krita/_vendor/inpaintd_protocol/client.py" in names
    assert "inpaintd_krita/_vendor/msgpack/fallback.py" in names
    assert not [n for n in names if n.startswith("inpaintd_krita/_vendor/msgpack/") and n.endswith((".so", ".pyd"))]
    manifest = json.loads((deps_of("krita", unpacked) / bundled.MANIFEST).read_text())
    assert manifest["editor"] == "krita" and len(manifest["targets"]) == len(KRITA_TARGETS)


def test_gimp_zip_layout(built: dict[str, tuple[packaging.Built, Path]]) -> None:
    b, unpacked = built["gimp"]
    names = zipfile.ZipFile(b.path).namelist()
    assert "inpaintd_gimp/inpaintd_gimp.py" in names  # GIMP 3: folder name == entry file name
    assert "inpaintd_gimp/inpaintd_protocol/bundled.py" in names
    assert "inpaintd_gimp/vendor/msgpack/fallback.py" in names
    assert "inpaintd_gimp/inpaintd_install.json" not in names  # it would name this machine's Python
    info = zipfile.ZipFile(b.path).getinfo("inpaintd_gimp/inpaintd_gimp.py")
    assert (info.external_attr >> 16) & 0o111, "GIMP runs the entry file: it must stay executable"


@pytest.mark.skipif(not (KRITA_IMPORTER / "plugin_importer.py").is_file(), reason="Krita's plugin importer is not installed")
def test_krita_importer_finds_the_plugin(built: dict[str, tuple[packaging.Built, Path]], tmp_path: Path) -> None:
    """Krita's own importer (the code behind Import Python Plugin from File) accepts the zip."""
    b, _ = built["krita"]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import builtins; builtins.i18n = str\n"
            "from plugin_importer import PluginImporter\n"
            "done = PluginImporter(sys.argv[2], sys.argv[3], lambda p: True).import_all()\n"
            "print([p['name'] for p in done])")
    r = subprocess.run([sys.executable, "-c", code, str(KRITA_IMPORTER), str(b.path), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "['inpaintd_krita']" in r.stdout
    assert (tmp_path / "pykrita" / "inpaintd_krita.desktop").is_file()
    assert (tmp_path / "pykrita" / "inpaintd_krita" / "_deps" / bundled.MANIFEST).is_file()


@pytest.mark.parametrize("target", list(KRITA_TARGETS) + list(GIMP_TARGETS), ids=lambda t: f"{t.editor}-{t.platform}-{t.python}")
def test_every_target_gets_a_wheel_of_its_format(built: dict[str, tuple[packaging.Built, Path]], target: Target) -> None:
    _, unpacked = built[target.editor]
    deps = deps_of(target.editor, unpacked)
    major, minor = (int(x) for x in target.python.split("."))
    path: list[str] = []
    macos = (10, 14) if target.pip_tag.startswith("macosx_10_14") else None  # the oldest macOS the row serves
    act = bundled.activate(str(deps), target.platform, (major, minor), path, macos=macos)
    assert act.problem is None and act.folder and path == [act.folder]
    zmq = Path(act.folder) / "zmq"
    assert (zmq / "__init__.py").is_file()
    ext = [p for p in zmq.rglob("*") if p.suffix in (".so", ".pyd")]
    assert ext, f"no compiled module in {act.wheel}"
    os_name = target.platform.split("-")[0]
    assert all(p.read_bytes()[:4].startswith(MAGIC[os_name]) for p in ext), f"{act.wheel} is not a {os_name} build"
    if "abi3" not in (act.wheel or ""):
        assert f"cp{major}{minor}" in (act.wheel or "")


def test_a_python_without_pyzmq_runs_a_job_through_the_package(built: dict[str, tuple[packaging.Built, Path]], daemon) -> None:
    """`python -I -S`: no site-packages, so no pyzmq or msgpack but the package's."""
    _, unpacked = built["krita"]
    plugin = unpacked / "inpaintd_krita"
    code = f"""
import sys
sys.path.insert(0, {str(plugin / "_vendor")!r})
try:
    import zmq
    raise SystemExit("this Python already has pyzmq: the test would prove nothing")
except ImportError:
    pass
from inpaintd_protocol import bundled
act = bundled.activate({str(plugin / "_deps")!r})
assert act.problem is None, act.problem
import zmq, msgpack
from inpaintd_protocol import Client, JobOptions
c = Client({daemon.endpoint!r}, key={daemon.key!r})
hello = c.hello(timeout=20)
w = h = 64
image = bytes([120, 90, 60, 255]) * (w * h)
mask = bytes(255 if 16 <= x < 48 and 16 <= y < 48 else 0 for y in range(h) for x in range(w))
job = c.inpaint(image, w, h, 4, mask, JobOptions(variants=1, seed=7), timeout=120)
print(zmq.__file__, msgpack.__file__, job.state, len(job.layers))
c.close()
"""
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    zmq_file, msgpack_file, state, layers = r.stdout.split()
    assert zmq_file.startswith(str(plugin / "_deps")) and msgpack_file.startswith(str(plugin / "_vendor"))
    assert state == "done" and layers == "1"


def test_select_targets() -> None:
    rows = packaging.select_targets(KRITA_TARGETS, pythons=["3.13"], platforms=["windows-x86_64"])
    assert {(t.platform, t.python) for t in rows} == {("windows-x86_64", "3.10"), ("windows-x86_64", "3.13")}
    with pytest.raises(packaging.PackagingError, match="unknown platform"):
        packaging.select_targets(KRITA_TARGETS, platforms=["amiga-68k"])
    with pytest.raises(packaging.PackagingError, match="like 3.11"):
        packaging.select_targets(KRITA_TARGETS, pythons=["three"])


def test_a_wheel_the_registry_does_not_have_is_named(tmp_path: Path) -> None:
    """A Python no pyzmq release supports: the error names the platform and Python asked for."""
    with pytest.raises(packaging.PackagingError, match=r"Python 3\.5 on windows-x86_64"):
        packaging.fetch_wheel(Target("krita", "test", "windows-x86_64", "3.5"), tmp_path)


def test_cli(built: dict[str, tuple[packaging.Built, Path]], wheel_cache: Path, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    from inpaintd import cli

    rc = cli.main(["package-krita", "--out", str(tmp_path), "--platform", "windows-x86_64", "--python", "3.13",
                   "--wheel-cache", str(wheel_cache)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "windows-x86_64 | 3.13 | pyzmq-" in out and "cp312-abi3-win_amd64.whl" in out
    names = zipfile.ZipFile(next(tmp_path.glob("inpaintd_krita-*.zip"))).namelist()
    assert not [n for n in names if "manylinux" in n or "macosx" in n]  # only the platform asked for
    assert cli.main(["package-gimp", "--out", str(tmp_path), "--platform", "amiga-68k"]) == 1
    assert "unknown platform(s) amiga-68k" in capsys.readouterr().err
