"""The Krita side of a job: read the source pixels and the selection, write the results.

Thin on purpose: every decision (what to send, where results go, names, checks) is a
function in logic.py or, where the GIMP plug-in decides the same, in
`inpaintd_protocol.editor`; this module only moves bytes between Krita and those functions.

Undo, as Krita 5.1 really behaves (checked in tests/krita/test_in_krita.py): adding a
node with `Node.addChildNode` is one undo step, while `setPixelData` is not undoable at
all.  So the variant layers are filled and put into their group while the group is not
yet part of the image, and the group goes into the image last, with one
`addChildNode`: a single Ctrl+Z then removes the group with every variant in it.

Which job and variant each result layer is (for Vary and Remix) is kept in the document
itself, as an annotation (`Document.setAnnotation`): Krita 5.1 saves annotations in a .kra
file and keeps node ids (`Node.uniqueId()`) across a save, so a reopened document still
knows its results (checked in tests/krita/test_in_krita.py).  The map's rules are in loop.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from krita import Krita
from PyQt5.QtCore import QByteArray, Qt, QTimer
from PyQt5.QtGui import QImage

from inpaintd_protocol import editor
from inpaintd_protocol.editor import CropPlan

from . import logic, loop, loras
from .logic import Rect, Settings, UserError
from .loop import HistoryCard, JobRecord, ResultMap, ResultRef

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
    #: The job options it was sent with, remembered with its layers (for Remix).
    options: dict[str, Any] = field(default_factory=dict)
    #: The daemon's id for the job, once it accepted it; the layers are remembered under it.
    job_id: str = ""
    #: For a vary: the variant it varies.
    vary_of: ResultRef | None = None
    #: The node made active once the layers are in (None: the anchor).
    active_after: Any = None

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
    if job.job_id:
        remember(doc, JobRecord(job.job_id, job.plan.crop, job.prompt, dict(job.options)),
                 [(node_id(node), layer.index) for node, layer in zip(nodes, layers, strict=True)])
    back = job.active_after if job.active_after is not None and _in_document(doc, job.active_after) else job.anchor
    if above is not None and back is not None:
        # Krita makes the new group the active node; give the artist the source back so the
        # next Generate (or the action's shortcut) works on the same layer again.
        # The switch happens through queued signals, so it is made again once they ran.
        doc.setActiveNode(back)
        QTimer.singleShot(0, lambda: doc.setActiveNode(back))
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


# -- which layer came from which job (for Vary and Remix) ------------------------------------


def node_id(node: Any) -> str:
    """A node's id as the result map keeps it (Krita keeps it across a .kra save)."""
    return str(node.uniqueId().toString())


def result_map(doc: Any) -> ResultMap:
    """The document's result map (empty for a document without one)."""
    try:
        data = bytes(doc.annotation(loop.ANNOTATION_TYPE))
    except Exception:  # an older Krita without annotations: nothing remembered
        return ResultMap()
    return ResultMap.from_bytes(data)


def remember(doc: Any, record: JobRecord, layers: list[tuple[str, int]]) -> None:
    """Add a job's layers to the document's result map."""
    known = result_map(doc)
    known.add(record, layers)
    try:
        doc.setAnnotation(loop.ANNOTATION_TYPE, loop.ANNOTATION_DESCRIPTION, QByteArray(known.to_bytes()))
    except Exception:  # pragma: no cover - Krita before 5.0 has no annotations: Vary then says "not a result"
        pass


def _walk(node: Any) -> list[Any]:
    """Every node under `node`, top of the layer stack first, depth first."""
    out: list[Any] = []
    for child in reversed(node.childNodes()):
        out.append(child)
        out.extend(_walk(child))
    return out


def find_node(doc: Any, uid: str) -> Any:
    """The node of id `uid` in `doc`, or None (deleted, or another document's)."""
    return next((n for n in _walk(doc.rootNode()) if node_id(n) == uid), None)


def _in_document(doc: Any, node: Any) -> bool:
    try:
        return find_node(doc, node_id(node)) is not None
    except Exception:
        return False


def _active_document() -> Any:
    doc = Krita.instance().activeDocument()
    if doc is None:
        raise UserError("No open document. Open an image first.")
    return doc


def selected_result() -> JobInput:
    """The active layer as a result to vary: its document, job and variant, and where the
    new layers go (a new group above its group).  UserError when it is not a result layer
    the plugin added."""
    doc = _active_document()
    logic.check_color_space(doc.colorModel(), doc.colorDepth())
    node: Any = doc.activeNode()
    known = result_map(doc)
    ref = known.lookup(node_id(node)) if node is not None else None
    if ref is None:
        raise UserError(loop.NOT_A_RESULT)
    record = known.job(ref.job)
    if record is None:
        raise UserError("This document no longer remembers where that result's job sits (it keeps the last "
                        f"{loop.MAX_JOBS} jobs). Generate again, or bring the job back from the history strip.")
    group = node.parentNode()
    anchor = group if group is not None and group.parentNode() is not None else node
    return JobInput(doc, node, anchor, CropPlan(record.crop, record.crop), bytearray(), b"", record.prompt,
                    options=dict(record.options), vary_of=ref, active_after=node)


def vary_pixels(job: JobInput) -> tuple[bytearray, bytes, CropPlan]:
    """A varied layer's pixels (RGBA) and the selection over them, for a vary the daemon no
    longer keeps (it answered `expired`): both over the layer's bounds, which become the
    new job's place."""
    node, doc = job.source, job.document
    if node is None or not _in_document(doc, node):
        raise UserError("The daemon no longer keeps that job's pixels, and there is no layer to send instead. "
                        "Generate again.")
    b = node.bounds()
    rect = Rect(b.x(), b.y(), b.width(), b.height())
    if rect.empty:
        raise UserError("The layer to vary is empty.")
    selection = doc.selection()
    mask = bytes(selection.pixelData(*rect.as_tuple())) if selection is not None else b""
    if not mask or not editor.mask_selects(mask):
        raise UserError("The daemon no longer keeps that job's pixels, so the plugin sends the layer instead, and "
                        "needs the area to vary: select it (e.g. the selection you generated with), then press again.")
    rgba = logic.swap_red_blue(bytes(node.pixelData(*rect.as_tuple())))
    return rgba, mask, CropPlan(rect, rect)


def history_input(card: HistoryCard) -> JobInput:
    """Where a history entry's layers go in the active document: at the place of the job
    (or the job it varied) where this document made it, else at the entry's own x, y;
    above the active layer."""
    doc = _active_document()
    logic.check_color_space(doc.colorModel(), doc.colorDepth())
    crop = loop.history_place(result_map(doc), card)
    anchor: Any = doc.activeNode()
    if anchor is not None and anchor.type().endswith("mask"):
        anchor = anchor.parentNode()
    return JobInput(doc, None, anchor, CropPlan(crop, crop), bytearray(), b"", card.prompt, options=dict(card.options))


# -- the reference layer ----------------------------------------------------------------------


def paint_layers() -> list[tuple[str, str]]:
    """(id, name) of the active document's paint layers, top first (for the reference picker)."""
    doc: Any = Krita.instance().activeDocument()
    if doc is None:
        return []
    out = []
    for node in _walk(doc.rootNode()):
        if node.type() == "paintlayer":
            parent = node.parentNode()
            inside = parent is not None and parent.parentNode() is not None
            out.append((node_id(node), f"{parent.name()} › {node.name()}" if inside else node.name()))
    return out


def reference_image(doc: Any, uid: str) -> tuple[bytes, int, int, int] | None:
    """Layer `uid` of `doc` as a reference image (RGBA, at most loop.REFERENCE_SIDE a side),
    as `Client.submit(references=...)` takes it; None when the layer is gone or empty."""
    node = find_node(doc, uid)
    if node is None:
        return None
    b = node.bounds()
    w, h = b.width(), b.height()
    if w <= 0 or h <= 0:
        return None
    bgra = bytes(node.pixelData(b.x(), b.y(), w, h))
    tw, th = loop.reference_size(w, h)
    if (tw, th) == (w, h):
        return bytes(logic.swap_red_blue(bgra)), w, h, 4
    image = QImage(bgra, w, h, w * 4, QImage.Format_ARGB32)  # Krita's B, G, R, A bytes
    scaled = image.scaled(tw, th, Qt.IgnoreAspectRatio, Qt.SmoothTransformation).convertToFormat(QImage.Format_RGBA8888)
    data = scaled.constBits().asstring(scaled.byteCount())
    stride = scaled.bytesPerLine()
    if stride != tw * 4:
        data = b"".join(data[r * stride : r * stride + tw * 4] for r in range(th))
    return data, tw, th, 4


# -- Teach subject: the selected layers as pictures ------------------------------------------


def selected_paint_layers() -> list[Any]:
    """The paint layers selected in the Layers docker of the active view (Ctrl+click)."""
    app: Any = Krita.instance()
    window = app.activeWindow()
    view = window.activeView() if window is not None else None
    if view is None:
        return []
    return [n for n in view.selectedNodes() if n.type() == "paintlayer"]


def training_pictures() -> list[tuple[bytes, int, int, int]]:
    """The selected paint layers as RGB pictures of the subject (their bounds, scaled to at
    most loras.TRAIN_SIDE a side), as `Client.train(images=...)` takes them."""
    doc = _active_document()
    logic.check_color_space(doc.colorModel(), doc.colorDepth())
    out = []
    for node in selected_paint_layers():
        b = node.bounds()
        w, h = b.width(), b.height()
        if w <= 0 or h <= 0:
            continue  # an empty layer is no picture
        bgra = bytes(node.pixelData(b.x(), b.y(), w, h))
        tw, th = loras.train_size(w, h)
        image = QImage(bgra, w, h, w * 4, QImage.Format_ARGB32)  # Krita's B, G, R, A bytes
        if (tw, th) != (w, h):
            image = image.scaled(tw, th, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        rgb = image.convertToFormat(QImage.Format_RGB888)
        data = rgb.constBits().asstring(rgb.byteCount())
        stride = rgb.bytesPerLine()
        if stride != tw * 3:
            data = b"".join(data[r * stride : r * stride + tw * 3] for r in range(th))
        out.append((data, tw, th, 3))
    return out


def load_settings() -> Settings:
    app = Krita.instance()
    defaults = Settings().to_strings()  # the retired keys too, read once to carry them over
    stored = {k: app.readSetting(SETTINGS_GROUP, k, v) for k, v in defaults.items()}
    return Settings.from_strings(stored)


def save_settings(settings: Settings) -> None:
    app = Krita.instance()
    for k, v in settings.to_strings().items():
        app.writeSetting(SETTINGS_GROUP, k, v)
