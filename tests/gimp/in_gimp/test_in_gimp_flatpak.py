"""Inside GIMP as in a Flatpak sandbox: where the plug-in looks for the daemon's key.

Started by test_flatpak_like_connection_file in tests/test_gimp_plugin.py, with the
packaged plug-in and the system pyzmq/msgpack hidden as in test_in_gimp_packaged.py.
GIMP's environment has XDG_RUNTIME_DIR set (Flatpak always sets it, to /run/user/UID),
INPAINTD_ENDPOINT set and no INPAINTD_KEY.  The daemon's connection file lies outside
the sandbox's view ($INPAINTD_HOST_RUNTIME, standing for the host's
$XDG_RUNTIME_DIR/inpaintd, which Flatpak does not share): the job is refused.  Then the
file appears in $XDG_RUNTIME_DIR/inpaintd, as `flatpak override
--filesystem=xdg-run/inpaintd` makes it appear, and the same job succeeds.
"""

from __future__ import annotations

import json
import os
import shutil

import test_in_gimp as base  # its exact-layers test is called, not collected, here
from gi.repository import Gimp
from test_in_gimp_packaged import test_gimps_python_has_no_system_package  # noqa: F401  (run here too)

CI = os.environ.get("INPAINTD_CI_DIR", "/ci")


def _record(key, value):
    path = os.path.join(CI, "flatpak.json")
    data = json.load(open(path)) if os.path.exists(path) else {}
    data[key] = value
    with open(path, "w") as f:
        json.dump(data, f)


def test_1_connection_file_out_of_view_refuses_the_job():
    assert "INPAINTD_KEY" not in os.environ and os.environ.get("XDG_RUNTIME_DIR")
    assert not os.path.exists(os.path.join(os.environ["XDG_RUNTIME_DIR"], "inpaintd"))
    image, photo = base.make_image()
    status, message = base.run_proc(image, [photo], prompt="x", start_daemon=False)
    _record("without_file", {"status": str(status), "message": message})
    assert status == Gimp.PDBStatusType.EXECUTION_ERROR, message
    assert "refused the connection" in message and "signature" in message, message
    assert len(image.get_layers()) == 2
    image.delete()


def test_2_connection_file_in_xdg_run_inpaintd_serves():
    shared = os.path.join(os.environ["XDG_RUNTIME_DIR"], "inpaintd")
    shutil.copytree(os.environ["INPAINTD_HOST_RUNTIME"], shared)
    os.chmod(shared, 0o700)
    _record("shared", sorted(os.listdir(shared)))
    base.test_inpaint_feathered_selection_adds_exact_layers()
