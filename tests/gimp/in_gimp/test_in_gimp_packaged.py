"""Inside GIMP, with the plug-in installed from the `inpaintd package-gimp` zip and the root's
python3-zmq / python3-msgpack hidden (tests/gimp/hide_system/sitecustomize.py on PYTHONPATH).

Started by test_packaged_plugin_without_system_pyzmq in tests/test_gimp_plugin.py; the
daemon's endpoint and key arrive in INPAINTD_ENDPOINT / INPAINTD_KEY, the way a Flatpak
user passes them with `flatpak override --env=...` (docs/flatpak.md).  Where the plug-in
process took zmq and msgpack from is checked by that test, from the import log.
"""

from __future__ import annotations

import importlib

import pytest
from test_in_gimp import test_inpaint_feathered_selection_adds_exact_layers  # noqa: F401  (run here too)


@pytest.mark.parametrize("name", ["zmq", "msgpack"])
def test_gimps_python_has_no_system_package(name):
    """The batch interpreter is one of GIMP's Python processes: the system package is gone there."""
    with pytest.raises(ModuleNotFoundError, match="hidden by the test"):
        importlib.import_module(name)
