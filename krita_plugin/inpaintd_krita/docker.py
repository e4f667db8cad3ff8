"""The docker's widgets: thin glue between Qt controls, Settings and the Controller.

`InpaintPanel` is a plain QWidget so tests can build it without a Krita window;
`InpaintDocker` only wraps it in Krita's DockWidget.
"""

from __future__ import annotations

from typing import Any, Callable

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from . import logic
from .controller import Controller

_LEVEL_STYLE = {"error": "color: #e05050;", "ok": "color: #50b050;", "busy": "", "info": ""}


class InpaintPanel(QWidget):
    """Prompt, options, Generate/Cancel, progress and messages for one Controller."""

    def __init__(self, controller: Controller, on_settings_changed: Callable[[], None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._on_settings_changed = on_settings_changed or (lambda: None)
        self.progress_log: list[tuple[int, str]] = []  # what the bar showed (tests read it)
        self.message_log: list[tuple[str, str]] = []
        s = controller.settings
        self.setMinimumWidth(240)

        self.connection_label = QLabel("Connecting…")
        self.connection_label.setWordWrap(True)
        self.start_button = QPushButton("Start daemon")
        self.start_button.setToolTip("Run the daemon command from Connection settings on this computer")
        self.refresh_button = QPushButton("Refresh")
        conn_row = QHBoxLayout()
        conn_row.addWidget(self.start_button)
        conn_row.addWidget(self.refresh_button)

        self.prompt = QPlainTextEdit(s.prompt)
        self.prompt.setPlaceholderText("Prompt (empty: fill from the surroundings)")
        self.prompt.setFixedHeight(64)
        self.negative = QLineEdit(s.negative_prompt)
        self.negative.setPlaceholderText("Negative prompt")

        self.variants = _spin(1, 8, s.variants)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.01, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(s.strength)
        self.fill = QComboBox()
        for mode in logic.FILL_MODES:
            self.fill.addItem(logic.FILL_LABELS[mode], mode)
        self.fill.setCurrentIndex(max(0, self.fill.findData(s.fill)))
        self.fill.setToolTip("Below strength 1 a diffusion model starts from the picture: what it starts from inside "
                             "the selection. Auto keeps the picture and fills transparent pixels. No effect at strength 1 "
                             "or with a classical model")
        self.steps = _spin(0, 150, s.steps, special="auto")
        self.seed = _spin(0, 2**31 - 1, s.seed)
        self.random_seed = QCheckBox("Random")
        self.random_seed.setChecked(s.random_seed)
        self.seed.setEnabled(not s.random_seed)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        self.model = QComboBox()
        self.model.addItem("Daemon default", "")
        self.grow = _spin(0, 512, s.grow, suffix=" px")
        self.feather = _spin(0, 512, s.feather, suffix=" px")
        self.padding = _spin(-1, 4096, s.padding, special="auto", suffix=" px")
        self.use_composite = QCheckBox("Use visible image (all layers)")
        self.use_composite.setChecked(s.use_composite)
        self.color_match = QCheckBox("Match colors to the surroundings")
        self.color_match.setToolTip("Remove a color cast of the result, measured where the model should have kept the picture")
        self.color_match.setChecked(s.color_match)

        form = QFormLayout()
        form.addRow("Variants", self.variants)
        form.addRow("Strength", self.strength)
        form.addRow("Start from", self.fill)
        form.addRow("Steps", self.steps)
        form.addRow("Seed", seed_row)
        form.addRow("Model", self.model)
        form.addRow("Grow", self.grow)
        form.addRow("Feather", self.feather)
        form.addRow("Context", self.padding)

        self.endpoint = QLineEdit(s.endpoint)
        self.endpoint.setPlaceholderText(controller.endpoint)
        self.daemon_command = QLineEdit(s.daemon_command)
        self.autostart = QCheckBox("Start the daemon when Krita starts if none answers")
        self.autostart.setChecked(s.autostart)
        self.show_connection = QCheckBox("Connection settings")
        conn_box = QWidget()
        conn_form = QFormLayout(conn_box)
        conn_form.setContentsMargins(0, 0, 0, 0)
        conn_form.addRow("Address", self.endpoint)
        conn_form.addRow("Daemon command", self.daemon_command)
        conn_form.addRow(self.autostart)
        conn_box.setVisible(False)
        self.show_connection.toggled.connect(conn_box.setVisible)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("Idle")
        self.progress_bar.setTextVisible(True)
        self.message_label = QLabel(controller.import_error or "Select a region, type a prompt, press Generate.")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(self.connection_label)
        layout.addLayout(conn_row)
        layout.addWidget(self.prompt)
        layout.addWidget(self.negative)
        layout.addLayout(form)
        layout.addWidget(self.use_composite)
        layout.addWidget(self.color_match)
        layout.addWidget(self.show_connection)
        layout.addWidget(conn_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.message_label)
        layout.addStretch(1)

        # widgets -> settings
        self.prompt.textChanged.connect(lambda: self._set("prompt", self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda t: self._set("negative_prompt", t))
        self.variants.valueChanged.connect(lambda v: self._set("variants", v))
        self.strength.valueChanged.connect(lambda v: self._set("strength", v))
        self.fill.currentIndexChanged.connect(lambda _i: self._set("fill", self.fill.currentData() or "auto"))
        self.steps.valueChanged.connect(lambda v: self._set("steps", v))
        self.seed.valueChanged.connect(lambda v: self._set("seed", v))
        self.random_seed.toggled.connect(self._random_toggled)
        self.model.currentIndexChanged.connect(lambda _i: self._set("model", self.model.currentData() or ""))
        self.grow.valueChanged.connect(lambda v: self._set("grow", v))
        self.feather.valueChanged.connect(lambda v: self._set("feather", v))
        self.padding.valueChanged.connect(lambda v: self._set("padding", v))
        self.use_composite.toggled.connect(lambda v: self._set("use_composite", v))
        self.color_match.toggled.connect(lambda v: self._set("color_match", v))
        self.endpoint.editingFinished.connect(self._endpoint_edited)
        self.daemon_command.textChanged.connect(lambda t: self._set("daemon_command", t))
        self.autostart.toggled.connect(lambda v: self._set("autostart", v))
        # buttons -> controller
        self.generate_button.clicked.connect(controller.generate)
        self.cancel_button.clicked.connect(controller.cancel)
        self.start_button.clicked.connect(controller.start_daemon)
        self.refresh_button.clicked.connect(controller.refresh)
        # controller -> widgets
        controller.message.connect(self._show_message)
        controller.progress.connect(self._show_progress)
        controller.busy_changed.connect(self._show_busy)
        controller.connection_changed.connect(self._show_connection)
        controller.models_changed.connect(self._show_models)

    # -- settings --------------------------------------------------------------------

    def _set(self, name: str, value: Any) -> None:
        setattr(self.controller.settings, name, value)
        self._on_settings_changed()

    def _random_toggled(self, on: bool) -> None:
        self.seed.setEnabled(not on)
        self._set("random_seed", on)

    def _endpoint_edited(self) -> None:
        self.controller.set_endpoint(self.endpoint.text().strip())
        self._on_settings_changed()

    # -- controller signals ----------------------------------------------------------

    def _show_message(self, text: str, level: str) -> None:
        self.message_log.append((text, level))
        self.message_label.setText(text)
        self.message_label.setStyleSheet(_LEVEL_STYLE.get(level, ""))

    def _show_progress(self, percent: int, text: str) -> None:
        self.progress_log.append((percent, text))
        self.progress_bar.setValue(percent)
        self.progress_bar.setFormat(text)

    def _show_busy(self, busy: bool) -> None:
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _show_connection(self, text: str, connected: bool) -> None:
        self.connection_label.setText(text)
        self.connection_label.setToolTip(logic.notices_text(self.controller.hello) if connected else "")
        self.start_button.setVisible(not connected)

    def _show_models(self, choices: list) -> None:
        wanted = self.controller.settings.model
        self.model.blockSignals(True)
        self.model.clear()
        for model_id, label in choices:
            self.model.addItem(label, model_id)
        index = self.model.findData(wanted)
        self.model.setCurrentIndex(max(index, 0))
        self.model.blockSignals(False)
        if index < 0 and wanted:
            self._set("model", "")  # the saved model is gone from this daemon: back to its default


def _spin(lo: int, hi: int, value: int, special: str = "", suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    if suffix:
        box.setSuffix(suffix)
    return box


try:  # the DockWidget wrapper exists only inside Krita
    from krita import DockWidget  # type: ignore

    class InpaintDocker(DockWidget):
        """The 'inpaintd' docker: an InpaintPanel on the plugin's shared controller."""

        def __init__(self) -> None:
            super().__init__()
            from . import plugin

            self.setWindowTitle("inpaintd")
            self.panel = InpaintPanel(plugin.controller(), plugin.save_settings)
            self.setWidget(self.panel)

        def canvasChanged(self, canvas: Any) -> None:  # required by DockWidget; jobs read the active document
            pass

except ImportError:  # pragma: no cover - outside Krita
    InpaintDocker = None  # type: ignore
