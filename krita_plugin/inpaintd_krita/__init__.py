"""inpaintd for Krita: inpaint the selection from a docker, results as layers.

Krita imports this package at start-up; it registers the extension (the action
`inpaintd_inpaint_selection`) and the docker factory.  Outside Krita (unit tests of
logic.py) the registration is skipped.
"""

import os as _os
import sys as _sys

# `inpaintd install-krita` copies the client library into `_vendor/inpaintd_protocol` (and
# `pip install --target _vendor pyzmq msgpack` puts those there where Krita's Python lacks
# them).  Put that folder first on the path, so the plugin imports the client it was
# installed with under its one name, `inpaintd_protocol`.  A source checkout (tests,
# development) has no `_vendor`: the project's `protocol/` folder is on the path instead.
_VENDOR = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_vendor")
if _os.path.isdir(_VENDOR) and _VENDOR not in _sys.path:
    _sys.path.insert(0, _VENDOR)

# A package from `inpaintd package-krita` (official Windows/macOS builds, the AppImage)
# carries pyzmq for several Pythons in `_deps/`; the one built for this Krita goes first
# on the path.  `deps.problem` names the missing wheel if none fits.
_DEPS = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_deps")
deps = None
if _os.path.isdir(_DEPS):
    from inpaintd_protocol import bundled as _bundled

    deps = _bundled.activate(_DEPS)

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita
except ImportError:  # imported outside Krita
    Krita = None  # type: ignore[misc, assignment]  # the class, or None outside Krita

if Krita is not None and Krita.instance() is not None:
    try:
        import PyQt5.QtCore  # noqa: F401
    except ImportError as _exc:  # Krita 6 offers PyQt6 only; its Python Plugin Manager shows this text
        raise ImportError("inpaintd's Krita plugin is written for Krita 5 (PyQt5) and does not run in Krita 6 "
                          "(PyQt6) yet; use Krita 5.2 or 5.3.") from _exc
    from .docker import InpaintDocker
    from .plugin import DOCKER_ID, InpaintExtension

    _app = Krita.instance()
    _app.addExtension(InpaintExtension(_app))
    _app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, InpaintDocker))
