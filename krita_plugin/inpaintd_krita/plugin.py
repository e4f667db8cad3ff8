"""The plugin's single shared state inside Krita: one Controller for the docker and the
action, created on first use (Qt must be running), settings kept in Krita's settings."""

from __future__ import annotations

from typing import Any

from krita import Extension

from . import kritadoc
from .controller import Controller

ACTION_ID = "inpaintd_inpaint_selection"
DOCKER_ID = "inpaintd_docker"

_controller: Controller | None = None


def controller() -> Controller:
    global _controller
    if _controller is None:
        _controller = Controller(kritadoc.load_settings(), kritadoc)
    return _controller


def save_settings() -> None:
    if _controller is not None:
        kritadoc.save_settings(_controller.settings)


class InpaintExtension(Extension):
    """Registers the action, so a shortcut or a script can run a job with the docker's settings."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, "Inpaint selection (inpaintd)", "tools/scripts")
        action.setToolTip("Inpaint the selection with the inpaintd docker's current settings")
        action.triggered.connect(lambda _checked=False: controller().generate())
