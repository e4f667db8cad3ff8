"""Hide the GIMP root's python3-zmq and python3-msgpack from every Python that GIMP starts.

tests/test_gimp_plugin.py puts this folder on PYTHONPATH for gimp-console; GIMP passes
its environment on to the plug-in processes it starts (the log below shows whether it did),
so each of them -- the batch interpreter, the inpaintd plug-in, its watchdog -- runs this
first.  `import zmq` / `import msgpack` (the top-level packages) that would come from a
dist-packages folder (Debian's packages) fail as if the package were not installed, the
way they do in a Flatpak, Windows or macOS GIMP; found anywhere else (the plug-in
package's _deps/ and vendor/) they import normally.

Every decision and, at exit, where each of the two modules came from is appended as one
JSON line to $INPAINTD_IMPORT_LOG.  The root's own sitecustomize (Debian's apport hook,
absent there) is shadowed; nothing else changes.
"""

import atexit
import json
import os
import sys
from importlib.machinery import PathFinder

HIDDEN = ("zmq", "msgpack")
LOG = os.environ.get("INPAINTD_IMPORT_LOG", "")


def _record(event, **fields):
    if not LOG:
        return
    line = json.dumps(dict(event=event, pid=os.getpid(), argv0=sys.argv[0] if sys.argv else "", **fields))
    try:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _from_system(origin):
    return "/dist-packages/" in os.path.realpath(origin)


class HideSystemPackages:
    """A meta-path finder that refuses zmq and msgpack from the system's dist-packages."""

    def find_spec(self, name, path=None, target=None):
        if name not in HIDDEN:
            return None
        spec = PathFinder.find_spec(name, path)
        origin = getattr(spec, "origin", None) or ""
        if spec is not None and _from_system(origin or (list(spec.submodule_search_locations or []) + [""])[0]):
            _record("refused", module=name, origin=origin)
            raise ModuleNotFoundError(f"No module named {name!r} (the system's {origin} is hidden by the test)", name=name)
        _record("found", module=name, origin=origin)
        return spec


def _at_exit():
    _record("exit", modules={name: getattr(sys.modules.get(name), "__file__", None) for name in HIDDEN},
            executable=sys.executable, version=sys.version.split()[0])


sys.meta_path.insert(0, HideSystemPackages())
atexit.register(_at_exit)
