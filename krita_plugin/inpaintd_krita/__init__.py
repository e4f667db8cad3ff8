"""inpaintd for Krita: inpaint the selection from a docker, results as layers.

Krita imports this package at start-up; it registers the extension (the action
`inpaintd_inpaint_selection`) and the docker factory.  Outside Krita (unit tests of
logic.py) the registration is skipped.
"""

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita  # type: ignore
except ImportError:  # imported outside Krita
    Krita = None

if Krita is not None and Krita.instance() is not None:
    from .docker import InpaintDocker
    from .plugin import DOCKER_ID, InpaintExtension

    _app = Krita.instance()
    _app.addExtension(InpaintExtension(_app))
    _app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, InpaintDocker))
