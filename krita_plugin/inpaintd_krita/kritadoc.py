"""The Krita side of a job: read the source pixels and the selection, write the results.

Thin on purpose: every decision (what to send, where results go, names, checks) is a
function in logic.py or, where the GIMP plug-in decides the same, in
`inpaintd_protocol.editor`; this module only moves bytes between Krita and those functions.

Undo, as Krita 5.1 really behaves (checked in tests/krita/test_in_krita.py): adding a
node with `Node.addChildNode` is one undo step, while `setPixelData` is not undoable at
all.  So the variant layers are filled and put into their group while the group is not
yet part of the image, and the group goes into the image last, with one
`addChildNode`: a single Ctrl+Z then removes the group with every variant in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from krita import Krita
from PyQt5.QtCore import QByteArray, QTimer

from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan

from . import logic
from .logic import Rect, Settings, UserError

SETTINGS_GROUP = "inpaintd"


@dataclass
class JobInput:
    """What was sent, kept until the answer comes so results land where they belong
    even if the artist has since switched documents or changed the selection."""

    document: Any  # krita.Document
    source: Any  # krita.Node the pixels came from (None: the visible composite)
    anchor: Any  # krita.Node the results go above
    plan: CropPlan  # the sent crop and the selection's bounds on the canvas, in document coordinates
    rgba: bytearray
    mask: bytes
    prompt: str

    @property
    def region(self) -> Rect:
        """The sent crop, in document coordinates."""
        return self.plan.crop


def capture(settings: Settings) -> JobInput:
    """Read the active document's source pixels and selection; UserError says what to fix."""
    app = Krita.instance()
    doc = app.activeDocument()
    if doc is None:
        raise UserError("No open document. Open an image, select a region, then press Generate.")
    logic.check_color_space(doc.colorModel(), doc.colorDepth())
    node = doc.activeNode()
    logic.check_source_layer(node.type() if node is not None else None, settings.use_composite)
    source = None if settings.use_composite else node  # None: the visible composite (a missing layer was refused)
    if source is not None:
        logic.check_color_space(source.colorModel(), source.colorDepth(), "active layer")
    selection = doc.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        raise UserError(
            "Nothing is selected. Select the region to inpaint (any selection tool; soft and feathered "
            "selections stay soft), then press Generate."
        )
    sel_rect = Rect(selection.x(), selection.y(), selection.width(), selection.height())
    plan = logic.plan_crop(sel_rect, doc.width(), doc.height(), settings)
    region = plan.crop
    mask = bytes(selection.pixelData(*region.as_tuple()))
    if not editor.mask_selects(mask):
        raise UserError("The selection is empty inside the canvas. Select the region to inpaint.")
    if source is None:
        bgra = doc.pixelData(*region.as_tuple())  # the visible image, all layers
    else:
        bgra = source.pixelData(*region.as_tuple())  # image coordinates: the layer's offset is applied
    rgba = logic.swap_red_blue(bytes(bgra))
    anchor = node
    if anchor is not None and anchor.type().endswith("mask"):
        anchor = anchor.parentNode()  # a mask's results go above the layer it belongs to
    return JobInput(doc, source, anchor, plan, rgba, mask, settings.prompt)


def insert_results(job: JobInput, layers: list) -> list[str]:
    """One paint layer per variant, in a new group just above the source; only the first
    variant visible.  Returns the new layers' names."""
    doc = job.document
    if not any(doc == d for d in Krita.instance().documents()):
        raise UserError("The document the job came from was closed.")
    group = doc.createGroupLayer(editor.group_name(job.prompt))
    names: list[str] = []
    nodes = []
    for layer in layers:
        place = job.plan.place(layer.x, layer.y, layer.width, layer.height)
        name = editor.variant_name(layer.index, len(layers), layer.seed)
        node = doc.createNode(name, "paintlayer")
        node.setPixelData(QByteArray(bytes(logic.swap_red_blue(layer.tight_bytes()))), *place.as_tuple())
        node.setVisible(layer.index == 0)
        nodes.append(node)
        names.append(name)
    for node in reversed(nodes):  # added on top each time: variant 1 ends up first in the group
        group.addChildNode(node, None)
    parent, above = _results_parent(doc, job.anchor)
    parent.addChildNode(group, above)  # the one undoable step
    doc.waitForDone()
    if above is not None and job.anchor is not None:
        # Krita makes the new group the active node; give the artist the source back so the
        # next Generate (or the action's shortcut) works on the same layer again.
        # The switch happens through queued signals, so it is made again once they ran.
        anchor = job.anchor
        doc.setActiveNode(anchor)
        QTimer.singleShot(0, lambda: doc.setActiveNode(anchor))
    doc.refreshProjection()
    return names


def _results_parent(doc: Any, anchor: Any) -> tuple[Any, Any]:
    """The anchor's parent and the anchor itself, or the top of the document when the
    anchor has gone (deleted while the job ran) or there was none."""
    if anchor is not None:
        parent = anchor.parentNode()
        if parent is not None and any(c == anchor for c in parent.childNodes()):
            return parent, anchor
    root = doc.rootNode()
    children = root.childNodes()
    return root, (children[-1] if children else None)


def load_settings() -> Settings:
    app = Krita.instance()
    defaults = Settings().to_strings()  # the retired keys too, read once to carry them over
    stored = {k: app.readSetting(SETTINGS_GROUP, k, v) for k, v in defaults.items()}
    return Settings.from_strings(stored)


def save_settings(settings: Settings) -> None:
    app = Krita.instance()
    for k, v in settings.to_strings().items():
        app.writeSetting(SETTINGS_GROUP, k, v)
