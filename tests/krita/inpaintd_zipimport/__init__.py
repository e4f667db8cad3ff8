"""Test helper plugin: Import Python Plugin from File, as Krita itself does it.

tests/test_krita_plugin.py installs this into a private Krita profile.  Once Krita's
window is up it imports Krita's own `plugin_importer.plugin_importer_extension` (the code
behind Tools > Scripts > Import Python Plugin from File...), makes its extension object
and calls `do_import($INPAINTD_ZIPIMPORT_ZIP)`: Krita's PluginImporter unpacks the zip
into the profile's pykrita folder and its `activate_plugins` enables what it imported.
Only the dialogs are answered: the module's QMessageBox is replaced by one that says Yes
to every question and records it (an error box is recorded too, instead of waiting for a
click).  The outcome goes to $INPAINTD_ZIPIMPORT_REPORT as JSON, then Krita quits through
its File > Quit action: `activate_plugins` only sets the value in Krita's in-memory
settings, and only a normal quit writes kritarc (os._exit would lose it; seen here).
On an error or a hang it leaves with os._exit instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krita import Extension, Krita  # type: ignore
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QMessageBox

ZIP = os.environ.get("INPAINTD_ZIPIMPORT_ZIP", "")
REPORT = Path(os.environ.get("INPAINTD_ZIPIMPORT_REPORT", "/tmp/inpaintd-zipimport.json"))

report: dict[str, Any] = {"error": None, "questions": [], "warnings": []}


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


class AnswerYes:
    """Stands in for QMessageBox inside Krita's importer module: Yes to every question."""

    Yes, No = QMessageBox.Yes, QMessageBox.No

    @staticmethod
    def question(parent: Any, title: str, text: str, buttons: Any = None) -> Any:
        report["questions"].append({"title": title, "text": text, "parent": type(parent).__name__})
        return QMessageBox.Yes

    @staticmethod
    def warning(parent: Any, title: str, text: str, *args: Any) -> Any:
        report["warnings"].append({"title": title, "text": text})
        return QMessageBox.Ok


def start() -> None:
    app = Krita.instance()
    win = app.activeWindow() or (app.windows() or [None])[0]
    if win is None:
        return later(200, start)
    QApplication.setActiveWindow(win.qwindow())  # the dialogs' parent is the active window

    from plugin_importer import plugin_importer_extension as importer  # Krita's own module

    report["importer_module"] = importer.__file__
    importer.QMessageBox = AnswerYes
    ext = importer.PluginImporterExtension(app)
    activate = ext.activate_plugins

    def activate_and_record(plugins: list) -> None:
        report["activated"] = [p["name"] for p in plugins]
        activate(plugins)  # Krita's code: Application.writeSetting('python', 'enable_<name>', 'true')

    ext.activate_plugins = activate_and_record
    report["resources_dir"] = ext.get_resources_dir()
    report["zip"] = ZIP
    ext.do_import(ZIP)
    report["enable_setting"] = app.readSetting("python", "enable_inpaintd_krita", "")
    pykrita = Path(report["resources_dir"]) / "pykrita"
    report["imported_files"] = sorted(p.name for p in pykrita.iterdir()) if pykrita.is_dir() else []
    REPORT.write_text(json.dumps(report, indent=1))
    # Krita keeps settings in memory until something syncs kritarc; quitting normally does,
    # as an artist's restart would.  Krita may crash on the way out: the caller checks kritarc.
    later(20_000, lambda: os._exit(6))
    app.action("file_quit").trigger()


class ZipImport(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        if not ZIP:
            return
        later(120_000, lambda: (report.update(error="watchdog: the zip import took over 120 s"), finish(5)))
        Krita.instance().notifier().windowCreated.connect(lambda: later(500, start))

    def createActions(self, window: Any) -> None:
        pass


Krita.instance().addExtension(ZipImport(Krita.instance()))
