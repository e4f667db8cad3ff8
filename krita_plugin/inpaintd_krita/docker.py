"""The docker's widgets: thin glue between Qt controls, Settings and the Controller.

The job options' controls are made from the option table, so a new option shows up here
with its range, default and tooltip without a line of Qt code.

`InpaintPanel` is a plain QWidget so tests can build it without a Krita window;
`InpaintDocker` only wraps it in Krita's DockWidget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from inpaintd_protocol import editor
from inpaintd_protocol.options import KRITA, Option

from . import logic
from .controller import Controller

_LEVEL_STYLE = {"error": "color: #e05050;", "ok": "color: #50b050;", "busy": "", "info": ""}


class InpaintPanel(QWidget):
    """Prompt, options, Generate/Cancel, progress and messages for one Controller."""

    # The job options' controls, one per option Krita shows, made from the option table by
    # _option_widget and kept in `option_widgets`; each is also an attribute by its name
    # (panel.seed, panel.steps, ...).  Written out here, and only these, so that type
    # checkers and readers see them; __init__ stops if they differ from what the table made.
    prompt: QPlainTextEdit
    negative_prompt: QLineEdit
    reference_weight: QDoubleSpinBox
    variants: QSpinBox
    strength: QDoubleSpinBox
    fill: QComboBox
    steps: QSpinBox
    guidance_scale: QDoubleSpinBox
    scheduler: QComboBox
    seed: QSpinBox
    model: QComboBox
    grow: QSpinBox
    feather: QSpinBox
    padding: QSpinBox
    color_match: QCheckBox

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

        # The job options, made from the option table (inpaintd_protocol.options): free text
        # above the form, numbers and lists in it, switches below it.
        texts, form, switches = QVBoxLayout(), QFormLayout(), QVBoxLayout()
        self.option_widgets: dict[str, QWidget] = {}
        for opt in editor.shown_in(KRITA):
            widget = self.option_widgets[opt.name] = self._option_widget(opt, getattr(s, opt.name))
            if not hasattr(QWidget, opt.name):  # panel.seed, panel.steps, ... (declared above)
                setattr(self, opt.name, widget)
            if opt.kind is bool:
                switches.addWidget(widget)
            elif opt.kind is str and not opt.choices and opt.name != "model":
                texts.addWidget(widget)
            else:
                form.addRow(opt.plain_label, widget)
        self._check_declared_controls()
        self.use_composite = QCheckBox("Use visible image (all layers)")
        self.use_composite.setChecked(s.use_composite)
        switches.insertWidget(0, self.use_composite)

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
        layout.addLayout(texts)
        layout.addLayout(form)
        layout.addLayout(switches)
        layout.addWidget(self.show_connection)
        layout.addWidget(conn_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.message_label)
        layout.addStretch(1)
        # Never squash the controls below the height their text needs (a long message made
        # Qt shrink every row): the dock area gives the panel room, other dockers yield.
        layout.setSizeConstraint(QLayout.SetMinimumSize)

        # widgets -> settings (the job options' widgets were connected as they were made)
        self.use_composite.toggled.connect(lambda v: self._set("use_composite", v))
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

    def _check_declared_controls(self) -> None:
        """The controls written out in the class body are the ones the option table made:
        the same names, each of the declared class."""
        made = {name: type(w).__name__ for name, w in self.option_widgets.items() if not hasattr(QWidget, name)}
        declared = {name: kind if isinstance(kind, str) else kind.__name__
                    for name, kind in InpaintPanel.__annotations__.items()}
        if made != declared:
            raise AssertionError(f"InpaintPanel's declared controls and the option table disagree: {declared} != {made}")

    # -- settings --------------------------------------------------------------------

    def _option_widget(self, opt: Option, value: Any) -> QWidget:
        """The control for one job option, its range and tooltip from the option table,
        already writing its changes into the settings."""
        def changed(v: Any) -> None:
            self._set(opt.name, v)

        widget: Any  # a different Qt class in each branch, each used through its own methods
        if opt.name == "prompt":  # several lines; an empty prompt is a valid choice
            widget = QPlainTextEdit(value)
            widget.setPlaceholderText("Prompt (empty: fill from the surroundings)")
            widget.setFixedHeight(64)
            widget.textChanged.connect(lambda: changed(widget.toPlainText()))
        elif opt.name == "model":  # the daemon's models, filled in by _show_models
            widget = QComboBox()
            widget.addItem("Daemon default", "")
            widget.currentIndexChanged.connect(lambda _i: self._model_picked(widget.currentData() or ""))
        elif opt.kind is bool:
            widget = QCheckBox(opt.plain_label)
            widget.setChecked(value)
            widget.toggled.connect(changed)
        elif opt.choices:
            widget = QComboBox()
            for choice, words in editor.choices(opt):
                widget.addItem(words, choice)
            widget.setCurrentIndex(max(0, widget.findData(value)))
            widget.currentIndexChanged.connect(lambda _i: changed(widget.currentData() or opt.default))
        elif opt.kind in (int, float):
            low, high = editor.bounds(opt)
            widget = QSpinBox() if opt.kind is int else QDoubleSpinBox()
            widget.setRange(low, high)
            widget.setSingleStep(opt.step)
            widget.setValue(value)
            if opt.special:
                widget.setSpecialValueText(opt.special)
            if opt.unit:
                widget.setSuffix(" " + opt.unit)
            widget.valueChanged.connect(changed)
        else:
            widget = QLineEdit(value)
            widget.setPlaceholderText(opt.plain_label)
            widget.textChanged.connect(changed)
        widget.setToolTip(opt.tip)
        if isinstance(widget, (QSpinBox, QDoubleSpinBox, QComboBox)):
            widget.setMinimumHeight(widget.sizeHint().height())  # a row never shorter than its text
        return widget

    def _set(self, name: str, value: Any) -> None:
        setattr(self.controller.settings, name, value)
        self._on_settings_changed()

    def _model_picked(self, model_id: str) -> None:
        """The artist picked a model: its defaults go into the controls (steps, strength, ...;
        whatever the daemon's `models` reply gives for the options shown here).  What the
        artist changes afterwards stays until another model is picked."""
        self._set("model", model_id)
        caps = self.controller.model_caps()
        for name, value in caps.apply.items():
            widget: Any = self.option_widgets.get(name)
            if isinstance(widget, QComboBox):
                index = widget.findData(value)
                if index >= 0:
                    widget.setCurrentIndex(index)
            elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
                widget.setValue(value)
            elif isinstance(widget, QCheckBox):
                widget.setChecked(value)
            elif isinstance(widget, QLineEdit):
                widget.setText(value)
        self._show_model_caps(caps)

    def _show_model_caps(self, caps: editor.ModelCaps | None = None) -> None:
        """Switch off the controls the picked model ignores (the tooltip says why) and the
        list choices it does not take; everything back on for a model that takes them."""
        caps = caps if caps is not None else self.controller.model_caps()
        for opt in editor.shown_in(KRITA):
            widget = self.option_widgets[opt.name]
            why = caps.disabled.get(opt.name, "")
            widget.setEnabled(not why)
            widget.setToolTip(why or opt.tip)
            if opt.choices and isinstance(widget, QComboBox):
                allowed = editor.allowed_choices(opt, caps)
                items = widget.model()
                for i in range(widget.count()):
                    item = items.item(i) if hasattr(items, "item") else None
                    if item is not None:
                        item.setEnabled(widget.itemData(i) in allowed)

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
        self._show_model_caps()  # the values stay: they are the artist's until a model is picked


try:  # the DockWidget wrapper exists only inside Krita
    from krita import DockWidget

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
    InpaintDocker = None  # type: ignore[misc, assignment]  # no docker class outside Krita
