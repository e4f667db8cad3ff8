"""Hide Debian's python3-zmq and python3-msgpack from Krita's embedded Python.

tests/test_krita_plugin.py puts this folder on PYTHONPATH for `krita`; Krita's Python
(the system's 3.11) runs `site`, which imports this module before any plugin loads.
`import zmq` / `import msgpack` that would come from a dist-packages folder then fail as if
the package were not installed -- the way they do in the official Windows and macOS
builds and the AppImage -- while found anywhere else (the plugin package's `_deps/` and
`_vendor/`) they import normally.  PyQt5 and everything else in dist-packages stays.

The state is kept here for the in-Krita self-test to report (Krita leaves with os._exit,
so nothing is written at exit): `refused` lists each refusal with the file the import
would have used; `startup_probe` is the result of importing both names once at start-up,
before any plugin could put its own copy on the path.  Debian's own sitecustomize (an
apport hook) is shadowed; nothing else changes.
"""

import os
import sys
from importlib.machinery import PathFinder

HIDDEN = ("zmq", "msgpack")
ACTIVE = True
refused = []  # [{"module": name, "origin": path}]
startup_probe = {}  # name -> the error text, or where it imported from (the hiding failed)


def _from_system(spec):
    where = spec.origin or next(iter(spec.submodule_search_locations or []), "") or ""
    return "/dist-packages/" in os.path.realpath(where), where


class HideSystemPackages:
    """A meta-path finder that refuses zmq and msgpack from the system's dist-packages."""

    def find_spec(self, name, path=None, target=None):
        if name not in HIDDEN:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None:
            return None
        system, where = _from_system(spec)
        if system:
            refused.append({"module": name, "origin": where})
            raise ModuleNotFoundError(f"No module named {name!r} (the system's copy is hidden by the test)", name=name)
        return spec


sys.meta_path.insert(0, HideSystemPackages())

for _name in HIDDEN:
    try:
        _mod = __import__(_name)
    except ImportError as _exc:
        startup_probe[_name] = str(_exc)
    else:  # not hidden: say where it came from, and forget it so the plugin imports afresh
        startup_probe[_name] = "imported from " + str(getattr(_mod, "__file__", "?"))
        for _key in [k for k in sys.modules if k == _name or k.startswith(_name + ".")]:
            del sys.modules[_key]
