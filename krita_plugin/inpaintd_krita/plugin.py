"""The plugin's single shared state inside Krita: one Controller for the docker and the
action, created on first use (Qt must be running), settings kept in Krita's settings."""

from __future__ import annotations

from typing import Any

from krita import Extension

from . import kritadoc
from .controller import Controller

ACTION_ID = "inpaintd_inpaint_selection"
DOCKER_ID = "inpaintd_docker"
#: The artist's loop on the selected result layer, for shortcuts: (id, text, what it does).
LOOP_ACTIONS = (
    ("inpaintd_vary_subtle", "Vary Subtle (inpaintd)", lambda c: c.vary("subtle")),
    ("inpaintd_vary_strong", "Vary Strong (inpaintd)", lambda c: c.vary("strong")),
    ("inpaintd_remix", "Remix (inpaintd)", lambda c: c.remix()),
)

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
    """Registers the actions, so a shortcut or a script can run a job with the docker's
    settings, or vary the selected result layer."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, "Inpaint selection (inpaintd)", "tools/scripts")
        action.setToolTip("Inpaint the selection with the inpaintd docker's current settings")
        action.triggered.connect(lambda _checked=False: controller().generate())
        for action_id, text, run in LOOP_ACTIONS:
            loop_action = window.createAction(action_id, text, "tools/scripts")
            loop_action.setToolTip(f"{text}: new variants of the selected result layer")
            loop_action.triggered.connect(lambda _checked=False, run=run: run(controller()))
