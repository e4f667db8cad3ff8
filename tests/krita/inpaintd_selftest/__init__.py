"""Test helper plugin, installed next to the real plugin by tests/test_krita_plugin.py.

Once Krita's window is up it does what an artist does: opens a photo, makes a feathered
elliptical selection, opens the inpaintd docker, types a prompt, triggers the
`inpaintd_inpaint_selection` action, waits for the variants, takes screenshots, writes a
JSON report to $INPAINTD_SELFTEST_REPORT and quits Krita (os._exit: Krita may crash on
a normal exit under xvfb).

Also reported: where `zmq` and `msgpack` came from, the package's wheel choice
(`inpaintd_krita.deps`) and, when tests/krita/hide_system is on PYTHONPATH, what it hid.
With $INPAINTD_SELFTEST_EXPECT=import_error (a package with no wheel for this Python) it
records what the docker says instead of running a job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krita import Extension, Krita  # type: ignore
from PyQt5.QtCore import QByteArray, QTimer
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QApplication

REPORT = Path(os.environ.get("INPAINTD_SELFTEST_REPORT", "/tmp/inpaintd-selftest.json"))
SHOTS = Path(os.environ.get("INPAINTD_SELFTEST_SHOTS", "/tmp/inpaintd-selftest"))
PHOTO = Path(os.environ.get("INPAINTD_TEST_ROOT", ".")) / "backend" / "inpaintd" / "assets" / "coffee.jpg"
PROMPT = "a ceramic saucer"
EXPECT = os.environ.get("INPAINTD_SELFTEST_EXPECT", "job")

report: dict[str, Any] = {"error": None}


def finish(code: int = 0) -> None:
    REPORT.write_text(json.dumps(report, indent=1))
    sys.stdout.flush()
    os._exit(code)


def later(ms: int, fn: Callable[[], None]) -> None:
    def guarded() -> None:
        try:
            fn()
        except Exception:
            report["error"] = traceback.format_exc()
            finish(2)

    QTimer.singleShot(ms, guarded)


def poll(pred: Callable[[], bool], then: Callable[[], None], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout

    def step() -> None:
        if pred():
            then()
        elif time.monotonic() > deadline:
            report["error"] = f"timed out waiting for {what}"
            finish(3)
        else:
            later(50, step)

    later(50, step)


def feathered_ellipse(w: int, h: int, cx: float, cy: float, rx: float, ry: float, soft: float) -> bytes:
    out = bytearray(w * h)
    for y in range(h):
        dy = (y - cy) / ry
        for x in range(w):
            d = math.sqrt(((x - cx) / rx) ** 2 + dy * dy)
            v = (1.0 - d) * min(rx, ry) / soft
            out[y * w + x] = 0 if v <= 0 else 255 if v >= 1 else int(round(v * 255))
    return bytes(out)


def start() -> None:
    app = Krita.instance()
    win = app.activeWindow() or (app.windows() or [None])[0]
    if win is None:
        return poll(lambda: bool(app.windows()), start, 60, "Krita's main window")
    win.qwindow().resize(1400, 1080)  # a common screen height: room for the docker
    img = QImage(str(PHOTO)).convertToFormat(QImage.Format_ARGB32)
    w, h = img.width(), img.height()
    ptr = img.constBits()
    ptr.setsize(img.byteCount())
    doc = app.createDocument(w, h, "inpaintd self-test", "RGBA", "U8", "", 72.0)
    source = doc.topLevelNodes()[0]
    source.setName("photo")
    source.setPixelData(QByteArray(bytes(ptr)), 0, 0, w, h)
    doc.refreshProjection()
    win.addView(doc)
    QApplication.setActiveWindow(win.qwindow())
    from krita import Selection  # type: ignore

    sel = Selection()
    sel.setPixelData(QByteArray(feathered_ellipse(w, h, 300, 250, 95, 60, 14)), 0, 0, w, h)
    doc.setSelection(sel)
    doc.setActiveNode(source)
    before = hashlib.sha256(bytes(source.pixelData(0, 0, w, h))).hexdigest()

    import inpaintd_krita
    from inpaintd_krita import plugin

    report["plugin_module"] = inpaintd_krita.__file__
    deps = inpaintd_krita.deps
    report["deps"] = None if deps is None else {"folder": deps.folder, "wheel": deps.wheel, "problem": deps.problem}
    hide = sys.modules.get("sitecustomize")
    report["hide_system"] = ({"module": hide.__file__, "startup_probe": hide.startup_probe, "refused": list(hide.refused)}
                             if getattr(hide, "ACTIVE", False) else None)
    action = app.action(plugin.ACTION_ID)
    report["action_found"] = action is not None
    dockers = [d for d in app.dockers() if d.objectName() == plugin.DOCKER_ID]
    report["docker_found"] = bool(dockers)
    if not dockers or action is None:
        report["error"] = f"docker or action missing; dockers: {[d.objectName() for d in app.dockers()]}"
        return finish(4)
    docker = dockers[0]
    docker.show()
    docker.raise_()
    panel = docker.panel
    controller = plugin.controller()
    if EXPECT == "import_error":
        report["import_error"] = controller.import_error
        report["message_shown"] = panel.message_label.text()
        action.trigger()  # Generate without a client library: the docker repeats why
        report["message_after_trigger"] = panel.message_label.text()
        report["zmq_file"] = getattr(sys.modules.get("zmq"), "__file__", None)
        return finish(0)

    import inpaintd_protocol
    from inpaintd_krita import _protocol

    report["vendored_protocol"] = ("inpaintd_krita" in Path(inpaintd_protocol.__file__).parts
                                   and _protocol.Client is inpaintd_protocol.Client)
    progress: list[str] = []
    controller.progress.connect(lambda value, text: progress.append(text))
    busy_after_adding: list[bool] = []
    doc_access = controller.doc_access
    insert_results = doc_access.insert_results

    def insert_and_look(job_input: Any, layers: list) -> list[str]:
        names = insert_results(job_input, layers)  # runs Krita's event loop, where poll() below can fire
        busy_after_adding.append(controller.busy)
        return names

    doc_access.insert_results = insert_and_look
    panel.prompt.setPlainText(PROMPT)
    panel.variants.setValue(2)
    panel.seed.setValue(4242)

    def connected() -> None:
        report["connected"] = True
        report["connection_text"] = panel.connection_label.text()
        action.trigger()  # the action, as a shortcut would run it
        report["busy_after_trigger"] = controller.busy
        poll(lambda: not controller.busy, lambda: done(), 60, "the job")

    def done() -> None:
        report["message"] = panel.message_label.text()
        report["progress"] = progress
        report["busy_after_adding"] = busy_after_adding
        report["progress_seen"] = any(t not in ("Sending…",) and not t.startswith("Done") for t in progress)
        groups = [n for n in doc.rootNode().childNodes() if n.type() == "grouplayer"]
        report["group"] = groups[0].name() if groups else None
        report["variants"] = [{"name": n.name(), "visible": n.visible()} for n in (groups[0].childNodes()[::-1] if groups else [])]
        report["source_unchanged"] = hashlib.sha256(bytes(source.pixelData(0, 0, w, h))).hexdigest() == before
        report["zmq_file"] = getattr(sys.modules.get("zmq"), "__file__", None)
        report["msgpack_file"] = getattr(sys.modules.get("msgpack"), "__file__", None)
        if hide is not None and getattr(hide, "ACTIVE", False):
            report["hide_system"]["refused"] = list(hide.refused)
        later(700, shoot)  # let the canvas and the docker repaint

    def shoot() -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        QApplication.processEvents()
        docker_shot, window_shot = SHOTS / "krita-docker.png", SHOTS / "krita-window.png"
        docker.grab().save(str(docker_shot))
        win.qwindow().grab().save(str(window_shot))
        report["docker_shot"], report["window_shot"] = str(docker_shot), str(window_shot)
        finish(0)

    poll(lambda: bool(controller.connected), connected, 30, "the connection to the daemon")


class SelfTest(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        later(180_000, lambda: (report.update(error="watchdog: the self-test took over 180 s"), finish(5)))
        Krita.instance().notifier().windowCreated.connect(lambda: later(1000, start))

    def createActions(self, window: Any) -> None:
        pass


Krita.instance().addExtension(SelfTest(Krita.instance()))
