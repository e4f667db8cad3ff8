"""Shared fixtures: real daemons in real processes, on real sockets.

Tests talk to the daemon the way plugins do, over ZeroMQ, so what passes here passes for
a Krita or GIMP user too.  Each daemon gets its own port, runtime folder and signing key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemons import DaemonProcess, free_port, start_daemon  # noqa: E402,F401  (tests import these from here)

# These run inside the editors (Krita's and GIMP's own Python), started by
# test_krita_plugin.py and test_gimp_plugin.py; the venv's pytest must not collect them.
collect_ignore_glob = ["krita/*", "gimp/*"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inpaintd.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("models") / "tiny-inpaint")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon on the classical engine (no weights needed)."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--engine", "classical")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def tiny_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    """A daemon whose default model is the tiny random diffusion pipeline, with the
    classical models beside it."""
    d = start_daemon(tmp_path_factory.mktemp("tiny-daemon"), "--model", str(tiny_model_dir), "--device", "cpu")
    yield d
    d.stop()
