"""The docker's widgets: thin glue between Qt controls, Settings and the Controller.

The job options' controls are made from the option table, so a new option shows up here
with its range, default and tooltip without a line of Qt code.

Below Generate: the artist's loop.  Vary Subtle, Vary Strong and Remix act on the
selected result layer; the history strip (history_strip.py) shows the daemon's newest
jobs; the Style box is filled from the daemon's styles, and a reference layer can go with
Generate where the model takes one.  What they decide is in loop.py.

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
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from inpaintd_protocol import editor
from inpaintd_protocol.options import KRITA, Option

from . import logic, loop
from . import loras as lora_rules
from .controller import Controller
from .history_strip import HistoryStrip

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
        self._style_state = loop.StyleState()
        #: Asks the artist for a text (the new style's name): (text, ok).  Tests replace it.
        self.ask_text: Callable[[str, str], tuple[str, bool]] = (
            lambda title, label: QInputDialog.getText(self, title, label))
        self.save_style_button = QPushButton("Save style…")
        self.save_style_button.setToolTip("Save the current negative prompt, sampler, steps, guidance, strength and "
                                          "color match (and the prompt as a template if it holds {prompt}) as a style")
        self.reference_layer = _LayerCombo(controller.doc_access)
        self.reference_layer.setToolTip("A layer whose look steers the result (a style reference), sent with Generate")
        for opt in editor.shown_in(KRITA):
            widget = self.option_widgets[opt.name] = self._option_widget(opt, getattr(s, opt.name))
            if not hasattr(QWidget, opt.name):  # panel.seed, panel.steps, ... (declared above)
                setattr(self, opt.name, widget)
            if opt.kind is bool:
                switches.addWidget(widget)
            elif opt.kind is str and not opt.choices and opt.name not in ("model", "style"):
                texts.addWidget(widget)
            elif opt.name == "style":
                form.addRow(opt.plain_label, _row(widget, self.save_style_button))
            elif opt.name == "reference_weight":  # the layer and its weight in one row
                form.addRow("Reference", _row(self.reference_layer, widget))
            else:
                form.addRow(opt.plain_label, widget)
        self._check_declared_controls()
        # LoRAs: "Add LoRA…" lists the daemon's LoRAs for the picked model; each chosen one
        # gets a row (name, weight, remove) under it; Teach subject trains a new one.
        self.lora_box = QComboBox()
        self.lora_box.addItem("Add LoRA…", "")
        self.lora_box.setToolTip("The daemon's LoRAs for the picked model: pick one to use it in Generate and "
                                 "Remix, at the weight beside it")
        self.teach_button = QPushButton("Teach subject…")
        self.teach_button.setToolTip(f"Train a LoRA of a subject from {lora_rules.MIN_PICTURES} or more paint layers "
                                     "selected in the Layers docker (Ctrl+click); it runs in the background")
        self.lora_rows: dict[str, tuple[QWidget, QDoubleSpinBox]] = {}
        self.lora_list = QWidget()
        self._lora_list_layout = QVBoxLayout(self.lora_list)
        self._lora_list_layout.setContentsMargins(0, 0, 0, 0)
        form.addRow("LoRA", _row(self.lora_box, self.teach_button))
        form.addRow(self.lora_list)
        for name, weight in lora_rules.parse_chosen(s.loras):
            self.add_lora(name, weight, save=False)
        #: Asks for a training's token, class, name and steps: a TeachRequest, None if cancelled.  Tests replace it.
        self.ask_teach: Callable[[lora_rules.TeachRequest], lora_rules.TeachRequest | None] = (
            lambda request: TeachDialog.ask(self, request))
        style_box = self.option_widgets["style"]
        assert isinstance(style_box, QComboBox)  # made by _option_widget
        self.style_box = style_box
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
        self.vary_subtle_button = QPushButton(loop.PRESETS["subtle"])
        self.vary_subtle_button.setToolTip("New variants of the selected result layer that keep its composition "
                                           "and change details (same mask, new seeds)")
        self.vary_strong_button = QPushButton(loop.PRESETS["strong"])
        self.vary_strong_button.setToolTip("New variants of the selected result layer that keep its colours and "
                                           "layout loosely (same mask, new seeds)")
        self.remix_button = QPushButton("Remix")
        self.remix_button.setToolTip("Vary the selected result layer with the prompt above (and any setting you "
                                     "changed since it was made)")
        vary_row = QHBoxLayout()
        for button in (self.vary_subtle_button, self.vary_strong_button, self.remix_button):
            vary_row.addWidget(button)
        self.history_strip = HistoryStrip(self._history_action)
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
        layout.addLayout(vary_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.message_label)
        layout.addWidget(self.history_strip)
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
        self.vary_subtle_button.clicked.connect(lambda: controller.vary("subtle"))
        self.vary_strong_button.clicked.connect(lambda: controller.vary("strong"))
        self.remix_button.clicked.connect(controller.remix)
        self.save_style_button.clicked.connect(self._save_style)
        self.lora_box.currentIndexChanged.connect(self._lora_picked)
        self.teach_button.clicked.connect(self.teach)
        self.reference_layer.currentIndexChanged.connect(
            lambda _i: setattr(controller, "reference_layer", self.reference_layer.currentData() or ""))
        # controller -> widgets
        controller.message.connect(self._show_message)
        controller.progress.connect(self._show_progress)
        controller.busy_changed.connect(self._show_busy)
        controller.connection_changed.connect(self._show_connection)
        controller.models_changed.connect(self._show_models)
        controller.history_changed.connect(self.history_strip.show_cards)
        controller.styles_changed.connect(self._show_styles)
        controller.loras_changed.connect(lambda _loras: self._show_loras())
        controller.training_changed.connect(self._show_training)
        self._show_reference_controls()

    def _check_declared_controls(self) -> None:
        """The controls written out in the class body are the ones the option table made:
        the same names, each of the declared class.  A name QWidget already has (`style`)
        is declared all the same (for readers and tests/test_option_table.py) but is not
        made an attribute, so `panel.style()` stays Qt's: its control is
        `option_widgets["style"]`, also `panel.style_box`."""
        made = {name: type(w).__name__ for name, w in self.option_widgets.items() if not hasattr(QWidget, name)}
        declared = {name: kind if isinstance(kind, str) else kind.__name__
                    for name, kind in InpaintPanel.__annotations__.items() if not hasattr(QWidget, name)}
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
        elif opt.name == "style":  # the daemon's styles, filled in by _show_styles
            widget = QComboBox()
            widget.addItem("No style", "")
            if value:  # until the daemon's list comes, the saved choice shows as it is
                widget.addItem(value, value)
                widget.setCurrentIndex(1)
            widget.currentIndexChanged.connect(lambda _i: self._style_picked(widget.currentData() or ""))
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
        whatever the daemon's `models` reply gives for the options shown here), then the
        picked style's settings over them.  What the artist changes afterwards stays until
        another model is picked."""
        self._set("model", model_id)
        caps = self.controller.model_caps()
        for name, value in caps.apply.items():
            self._put(name, value)
        if self._style_state.applied:  # the style's values win over the model's defaults
            changes, self._style_state = loop.pick_style(self._control_values(), loop.StyleState(),
                                                         self._style_state.name, self._style_state.applied)
            for name, value in changes.items():
                self._put(name, value)
        self._show_model_caps(caps)
        self._show_loras()

    def _put(self, name: str, value: Any) -> None:
        """Set one job option's control (which writes the settings through its signal)."""
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
        elif isinstance(widget, QPlainTextEdit):
            widget.setPlainText(value)

    def _control_values(self) -> dict[str, Any]:
        """The job options' values as the controls hold them (the settings mirror them)."""
        return {opt.name: getattr(self.controller.settings, opt.name) for opt in editor.shown_in(KRITA)}

    # -- styles ----------------------------------------------------------------------

    def _style_picked(self, name: str) -> None:
        """A style picked in the box: its settings go into the controls (loop.style_values
        says why), the previous style's go back where the artist left them alone."""
        self._set("style", name)
        style = loop.find_style(self.controller.styles, name) if name else None
        changes, self._style_state = loop.pick_style(self._control_values(), self._style_state, "", {})
        for key, value in changes.items():  # the previous style's values out first
            self._put(key, value)
        model = str(((style or {}).get("settings") or {}).get("model") or "")
        if model and self.model.findData(model) >= 0 and model != self.controller.settings.model:
            self.model.setCurrentIndex(self.model.findData(model))  # its defaults first, the style's over them
        changes, self._style_state = loop.pick_style(self._control_values(), self._style_state, name,
                                                     loop.style_values(style))
        for key, value in changes.items():
            self._put(key, value)

    def _show_styles(self, styles: list) -> None:
        wanted = self.controller.settings.style
        box = self.style_box
        box.blockSignals(True)
        box.clear()
        for name, label, tip in loop.style_choices(styles):
            box.addItem(label, name)
            box.setItemData(box.count() - 1, tip, Qt.ToolTipRole)
        index = box.findData(wanted)
        if index < 0 and wanted:  # the name as typed, in another case
            style = loop.find_style(styles, wanted)
            index = box.findData(style["name"]) if style else -1
        box.setCurrentIndex(max(index, 0))
        box.blockSignals(False)
        if index < 0 and wanted:
            self._set("style", "")  # the saved style is gone from this daemon
        elif index >= 0 and box.currentData() != wanted:
            self._set("style", box.currentData())

    def _save_style(self) -> None:
        name, ok = self.ask_text("Save style", "Name of the new style (the current negative prompt, sampler, steps, "
                                               "guidance, strength and color match):")
        if ok and name.strip():
            self.controller.save_style(name.strip())

    # -- LoRAs and Teach subject -----------------------------------------------------------

    def _show_loras(self) -> None:
        """Fill "Add LoRA…" with the daemon's LoRAs that fit the picked model; grey out the
        chosen rows that do not (they are not sent)."""
        loras = self.controller.loras or []
        family = self.controller.model_family()
        box = self.lora_box
        box.blockSignals(True)
        box.clear()
        box.addItem("Add LoRA…" if loras else "Add LoRA… (the daemon has none)", "")
        items: Any = box.model()
        for choice in lora_rules.lora_choices(loras, family):
            box.addItem(choice.label, choice.name)
            box.setItemData(box.count() - 1, choice.tip, Qt.ToolTipRole)
            item = items.item(box.count() - 1) if hasattr(items, "item") else None
            if item is not None and not choice.usable:
                item.setEnabled(False)
        box.setCurrentIndex(0)
        box.blockSignals(False)
        by_name = {str(x.get("name") or "").lower(): x for x in loras}
        for name, (row, _spin) in self.lora_rows.items():
            lora = by_name.get(name.lower())
            sent = lora is not None and not lora.get("problem") and lora_rules.fits(lora, family)
            row.setEnabled(sent or self.controller.loras is None)
            why = ("" if sent else "Not sent: the daemon has no LoRA of that name" if lora is None
                   else f"Not sent: it is not for the picked model ({family})")
            row.setToolTip("\n".join(t for t in (lora_rules.lora_tip(lora) if lora else "", why) if t))

    def _lora_picked(self, index: int) -> None:
        name = self.lora_box.itemData(index) or ""
        if name:
            choice = next((c for c in lora_rules.lora_choices(self.controller.loras or [], self.controller.model_family())
                           if c.name == name), None)
            self.add_lora(name, choice.default_weight if choice else 1.0)
        self.lora_box.blockSignals(True)
        self.lora_box.setCurrentIndex(0)
        self.lora_box.blockSignals(False)

    def add_lora(self, name: str, weight: float = 1.0, save: bool = True) -> None:
        """A row for a chosen LoRA: its name, its weight (-2…2; 0: off), a remove button."""
        if name in self.lora_rows or len(self.lora_rows) >= lora_rules.MAX_LORAS:
            return
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        label = QLabel(name)
        spin = QDoubleSpinBox()
        spin.setRange(lora_rules.WEIGHT_MIN, lora_rules.WEIGHT_MAX)
        spin.setSingleStep(0.05)
        spin.setValue(lora_rules.clamp_weight(weight))
        spin.setToolTip("The LoRA's weight (0: off)")
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip(f"Do not use {name}")
        layout.addWidget(label, 1)
        layout.addWidget(spin)
        layout.addWidget(remove)
        self.lora_rows[name] = (row, spin)
        self._lora_list_layout.addWidget(row)
        spin.valueChanged.connect(lambda _v: self._save_loras())
        remove.clicked.connect(lambda: self.remove_lora(name))
        if save:
            self._save_loras()
            self._show_loras()

    def remove_lora(self, name: str) -> None:
        row = self.lora_rows.pop(name, None)
        if row is not None:
            self._lora_list_layout.removeWidget(row[0])
            row[0].hide()
            row[0].deleteLater()
            self._save_loras()

    def chosen_loras(self) -> list[tuple[str, float]]:
        return [(name, spin.value()) for name, (_row, spin) in self.lora_rows.items()]

    def _save_loras(self) -> None:
        self._set("loras", lora_rules.format_chosen(self.chosen_loras()))

    def teach(self) -> bool:
        """Teach subject…: the selected paint layers, then the dialog, then the training."""
        try:
            count = len(self.controller.doc_access.selected_paint_layers())
        except Exception as exc:  # no document, no view
            self.controller.message.emit(f"Cannot read the selected layers: {exc}", "error")
            return False
        problem = lora_rules.teach_problem(lora_rules.TeachRequest(class_noun="x", name="x"), count)
        if problem:
            self.controller.message.emit(problem, "error")
            return False
        request = self.ask_teach(lora_rules.TeachRequest())
        return request is not None and self.controller.teach(request)

    def _show_training(self, training: bool) -> None:
        self.teach_button.setEnabled(not training)
        self.cancel_button.setEnabled(training or self.controller.busy)

    # -- the history strip ---------------------------------------------------------------

    def _history_action(self, action: str, card: loop.HistoryCard) -> None:
        if action == "apply":
            self.controller.apply_history(card)
        elif action == "vary":
            self.controller.vary_history(card, "subtle")
        elif action == "star":
            self.controller.star(card, not card.starred)
        elif action == "copy":
            self.copy_settings(card)

    def copy_settings(self, card: loop.HistoryCard) -> None:
        """Put a history entry's options into the controls: its model first (whose defaults
        they then overwrite), its style shown without applying it again (its values are in
        the entry's options already), and its first seed."""
        values = loop.option_values(card.options, card.seeds)
        model = values.pop("model", None)
        if model is not None and self.model.findData(model) >= 0:
            self.model.setCurrentIndex(self.model.findData(model))
        style = values.pop("style", "")
        for name, value in values.items():
            self._put(name, value)
        box = self.style_box
        box.blockSignals(True)
        index = box.findData(style)
        if index < 0 and style:
            box.addItem(style, style)
            index = box.count() - 1
        box.setCurrentIndex(max(index, 0))
        box.blockSignals(False)
        self._set("style", style)
        self._style_state = loop.StyleState(style)
        for name in list(self.lora_rows):  # the entry's LoRAs, and only those
            self.remove_lora(name)
        for name, weight in card.loras:
            self.add_lora(name, weight)
        seed = card.seeds[0] if card.seeds else None
        again = ("press Generate to make it again" if seed is not None and values.get("seed") == seed
                 else f"its seed {seed} does not fit the Seed box, so Generate picks new ones")
        self.controller.message.emit(f"Copied the settings of “{editor.short_prompt(card.prompt)}”: {again}.", "ok")

    def _show_model_caps(self, caps: editor.ModelCaps | None = None) -> None:
        """Switch off the controls the picked model ignores (the tooltip says why) and the
        list choices it does not take; everything back on for a model that takes them."""
        caps = caps if caps is not None else self.controller.model_caps()
        off = self.disabled_controls(caps)
        for opt in editor.shown_in(KRITA):
            widget = self.option_widgets[opt.name]
            why = off.get(opt.name, "")
            widget.setEnabled(not why)
            widget.setToolTip(why or opt.tip)
            if opt.choices and isinstance(widget, QComboBox):
                allowed = editor.allowed_choices(opt, caps)
                items = widget.model()
                for i in range(widget.count()):
                    item = items.item(i) if hasattr(items, "item") else None
                    if item is not None:
                        item.setEnabled(widget.itemData(i) in allowed)
        self._show_reference_controls()

    def disabled_controls(self, caps: editor.ModelCaps | None = None) -> dict[str, str]:
        """Option name -> why its control is off for the picked model: what the model
        ignores (editor.model_caps), and the reference weight where it takes no reference."""
        caps = caps if caps is not None else self.controller.model_caps()
        off = dict(caps.disabled)
        why = loop.reference_off(self.controller.model_entry())
        if why:
            off["reference_weight"] = why
        return off

    def _show_reference_controls(self) -> None:
        why = loop.reference_off(self.controller.model_entry())
        self.reference_layer.setEnabled(not why)
        self.reference_layer.setToolTip(why or "A layer whose look steers the result (a style reference), sent with "
                                               f"Generate, at most {loop.REFERENCE_SIDE} px a side")

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
        self.cancel_button.setEnabled(busy or self.controller.training)
        for button in (self.vary_subtle_button, self.vary_strong_button, self.remix_button):
            button.setEnabled(not busy)

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
        self._show_model_caps()
        self._show_loras()  # the values stay: they are the artist's until a model is picked


def _row(*widgets: QWidget) -> QWidget:
    """Widgets side by side in one form row (the first takes the room)."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if i == 0 else 0)
    return box


class TeachDialog(QDialog):
    """Teach subject: the token, class, the new LoRA's name, steps and resolution."""

    def __init__(self, parent: QWidget | None, request: lora_rules.TeachRequest) -> None:
        super().__init__(parent)
        self.setWindowTitle("Teach subject")
        self.token = QLineEdit(request.token)
        self.token.setToolTip("One word prompts will call the subject by (e.g. sks)")
        self.class_noun = QLineEdit(request.class_noun)
        self.class_noun.setPlaceholderText("cat, person, mug…")
        self.name = QLineEdit(request.name)
        self.name.setPlaceholderText("my_cat")
        self.steps = QSpinBox()
        self.steps.setRange(1, 20000)
        self.steps.setValue(request.steps)
        self.resolution = QSpinBox()
        self.resolution.setRange(0, 2048)
        self.resolution.setSingleStep(64)
        self.resolution.setSpecialValueText("auto")
        self.resolution.setValue(request.resolution)
        form = QFormLayout(self)
        form.addRow(QLabel("The selected paint layers are pictures of the subject; the daemon trains a LoRA "
                           "of it in the background."))
        form.addRow("Token", self.token)
        form.addRow("Class", self.class_noun)
        form.addRow("LoRA name", self.name)
        form.addRow("Steps", self.steps)
        form.addRow("Resolution", self.resolution)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def request(self) -> lora_rules.TeachRequest:
        return lora_rules.TeachRequest(self.token.text().strip(), self.class_noun.text().strip(),
                                       self.name.text().strip(), self.steps.value(), self.resolution.value())

    @classmethod
    def ask(cls, parent: QWidget | None, request: lora_rules.TeachRequest) -> lora_rules.TeachRequest | None:
        dialog = cls(parent, request)
        return dialog.request() if dialog.exec_() == QDialog.Accepted else None


class _LayerCombo(QComboBox):
    """The reference-layer picker: "None", then the active document's paint layers, read
    afresh each time it opens (layers come and go; Krita 5.1's Python API has no signal)."""

    def __init__(self, doc_access: Any) -> None:
        super().__init__()
        self._doc_access = doc_access
        self.addItem("None", "")

    def refresh(self) -> None:
        wanted = self.currentData() or ""
        try:
            layers = self._doc_access.paint_layers()
        except Exception:  # no Krita document API (tests with a fake): keep what is there
            return
        self.blockSignals(True)
        self.clear()
        self.addItem("None", "")
        for uid, name in layers:
            self.addItem(name, uid)
        index = self.findData(wanted)
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if index < 0 and wanted:
            self.currentIndexChanged.emit(0)  # the layer is gone: back to None

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self.refresh()
        super().showPopup()


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
            self.panel.reference_layer.refresh()  # the reference is one of this document's layers

except ImportError:  # pragma: no cover - outside Krita
    InpaintDocker = None  # type: ignore[misc, assignment]  # no docker class outside Krita
