#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > AI > Inpaint Selection..., Vary Result..., Bring Back from
History... and Teach Subject from Layers... through the inpaintd daemon.

Thin glue only: it registers the procedures, shows their dialogs, moves pixels between GIMP
and the daemon, drives GIMP's progress bar and adds the result layers in one undo group,
each carrying a parasite that names its job (what Vary Result reads).
Every decision that needs no GIMP (geometry, names, validation, messages) lives in
inpaintd_logic.py beside this file, or, where the Krita plug-in decides the same, in
inpaintd_protocol/editor.py; both are unit-tested outside GIMP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject, Gtk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from inpaintd_protocol import bundled  # noqa: E402  (standard library only)

# A package from `inpaintd package-gimp` (Windows, macOS, Flatpak GIMP) carries pyzmq for
# several Pythons in _deps/ and msgpack in vendor/; the ones for this GIMP go on the path.
DEPS = bundled.prepare_plugin_folder(HERE)

import inpaintd_logic as logic  # noqa: E402
from inpaintd_logic import ARGS, DIALOG_ORDER, Options, Rect  # noqa: E402

BY_ARG = {a.name: a for a in ARGS}

from inpaintd_protocol import editor  # noqa: E402
from inpaintd_protocol.options import BY_NAME, GIMP  # noqa: E402

RGBA = "R'G'B'A u8"
RGB = "R'G'B' u8"
MASK = "Y u8"
_PARAM = GObject.ParamFlags.READWRITE


class UserError(Exception):
    """A problem the user can fix; its text is shown as is."""


# -- the run ----------------------------------------------------------------------------


def run(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(logic.PROCEDURE_NAME)
        empty_strings(config, ARGS)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Inpaint Selection")
        for a in ARGS:  # GIMP's default step (1.0) would exceed e.g. strength's 0.01..1 range
            if a.kind == "float":
                step = BY_NAME[a.field].step
                dialog.get_spin_scale(a.name, 1.0).set_increments(step, 4 * step)
        endpoint = config.get_property("endpoint") or ""
        models, default_id, styles, loras = daemon_lists(endpoint)
        dialog_faces(dialog, config, ARGS)
        use_combo(dialog, config, "fill", logic.choice_rows("fill"))
        if models:
            config.set_property("model", (config.get_property("model") or "").strip())
            use_combo(dialog, config, "model", logic.model_choices(models, default_id, config.get_property("model")))
        if styles:
            use_combo(dialog, config, "style", logic.style_choices(styles, config.get_property("style")))
        order, loras_label = show_loras(dialog, loras, list(DIALOG_ORDER))
        dialog.fill(order)
        follower = follow_model(config, models, default_id, dialog)
        follow_style(config, styles, follower)
        report_dialog(dialog, ARGS, {"loras-listed": loras_label} if loras_label else None)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    opts = Options.from_mapping({a.name: config.get_property(a.name) for a in ARGS})
    try:
        problems = opts.validate()
        if problems:
            raise UserError("Inpaint Selection: " + "; ".join(problems))
        used, job_id = inpaint(image, list(drawables), opts)
    except UserError as exc:
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(str(exc)))
    finally:
        Gimp.progress_end()
    return success(procedure, used, job_id)


def success(procedure, *values: str):
    """SUCCESS with the procedure's string return values, in order."""
    retval = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    for i, value in enumerate(values, start=1):
        retval.remove(i)
        retval.insert(i, GObject.Value(GObject.TYPE_STRING, value))
    return retval


def empty_strings(config, specs) -> None:
    """GIMP keeps an empty string argument as NULL, which GtkEntry rejects."""
    for a in specs:
        if a.kind == "str" and config.get_property(a.name) is None:
            config.set_property(a.name, "")


def daemon_lists(endpoint_setting: str) -> tuple[list, str, list, dict | None]:
    """The daemon's models, default model, styles and `loras` reply, for the dialog;
    ([], "", [], None) at once when none answers (no daemon is started just to open the
    dialog) or the client cannot load."""
    try:
        proto = import_protocol()
        with proto.Client(editor.daemon_endpoint(endpoint_setting), name="inpaintd-gimp-dialog") as client:
            client.hello(timeout=1.0)
            models, default_id = logic.model_listing(client.request(proto.Type.LIST_MODELS, timeout=2.0).body)
            try:
                styles = client.styles(timeout=2.0)
            except proto.ProtocolError:  # an older daemon: no styles
                styles = []
            try:
                loras = dict(client.request(proto.Type.LORAS, timeout=2.0).body)
            except proto.ProtocolError:  # an older daemon: no LoRAs
                loras = None
            return models, default_id, styles, loras
    except Exception:  # noqa: BLE001 - the dialog opens without the daemon's lists
        return [], "", [], None


def show_loras(dialog, loras: dict | None, order: list[str]):
    """Where the daemon answered with its LoRAs: name them (family, trigger words) in a
    label under the LoRAs field and in its tooltip; (the dialog's fill order with that
    label, the label or None)."""
    if loras is None:
        return order, None
    text = logic.loras_listing(loras)
    row = dialog.get_widget("loras", GObject.TYPE_NONE)
    for widget in (row, row.get_entry() if isinstance(row, GimpUi.LabelEntry) else None):
        if widget is not None:
            widget.set_tooltip_text(f"{BY_ARG['loras'].blurb}\n\n{text}")
    label = dialog.get_label("loras-listed", text, False, False)  # GIMP 3.0: is_markup, with_mnemonic
    label.set_line_wrap(True)
    label.set_max_width_chars(60)
    label.set_xalign(0.0)
    at = order.index("loras") + 1 if "loras" in order else len(order)
    return [*order[:at], "loras-listed", *order[at:]], label


# -- the dialog's faces -------------------------------------------------------------------


def dialog_faces(dialog, config, specs) -> None:
    """Numbers whose lowest value means something else show its word: Steps "auto", Seed
    "random", Context "auto" (the option table's `special`, as Krita's spin boxes show it).
    GTK's "output" signal puts the word in the spin button; the "input" signal cannot give
    a value back through PyGObject (its out-pointer), so a typed word is read when the
    field is left or Enter is pressed."""
    for a in specs:
        if not a.special:
            continue
        widget = dialog.get_spin_scale(a.name, 1.0) if a.kind == "float" else dialog.get_widget(a.name, GObject.TYPE_NONE)
        spin = widget.get_spin_button() if isinstance(widget, GimpUi.LabelSpin) else widget
        if not isinstance(spin, Gtk.SpinButton):
            continue
        spin.set_numeric(False)  # a numeric spin button refuses letters, also the ones "output" sets
        spin.set_update_policy(Gtk.SpinButtonUpdatePolicy.IF_VALID)  # a typed word is not read as 0
        spin.set_width_chars(max(spin.get_width_chars(), len(a.special) + 1))
        spin.connect("output", _show_special, a)
        spin.connect("activate", _read_special, a)
        spin.connect("focus-out-event", lambda s, _event, spec=a: _read_special(s, spec) and False)
        spin.update()


def _show_special(spin, spec) -> bool:
    word = spec.special_text(spin.get_value())
    if word is None:
        return False  # GTK shows the number
    if spin.get_text() != word:
        spin.set_text(word)
    return True


def _read_special(spin, spec) -> bool:
    value = spec.special_value(spin.get_text())
    if value is not None:
        spin.set_value(value)
        spin.set_text(spec.special)
    return False


def use_combo(dialog, config, name: str, rows: list[tuple[str, str]]) -> bool:
    """Show the string argument `name` as a combo box of `rows` (value, words) instead of a
    text field: GIMP 3.0's procedure dialog makes a text field for every string argument and
    takes no other widget for one, and a Gimp.Choice argument's values are fixed when the
    procedure is registered (the daemon's models are not), so the combo box,
    GimpUi.prop_string_combo_box_new bound to the same config property, takes the field's
    place inside the argument's labelled row.  False (the text field stays) where the row
    is not the GimpLabelEntry GIMP 3.0.4 makes."""
    row = dialog.get_widget(name, GObject.TYPE_NONE)
    if not isinstance(row, GimpUi.LabelEntry):
        return False
    value = config.get_property(name) or ""
    if value not in [v for v, _ in rows]:
        rows = [*rows, (value, value)]
    store = Gtk.ListStore(str, str)
    for v, words in rows:
        store.append([v, words])
    combo = GimpUi.prop_string_combo_box_new(config, name, store, 0, 1)
    entry = row.get_entry()
    combo.set_tooltip_text(entry.get_tooltip_text())
    row.remove(entry)
    row.attach(combo, 1, 0, 1, 1)
    combo.set_hexpand(True)
    combo.show()
    row.get_label().set_mnemonic_widget(combo)
    return True


def report_dialog(dialog, specs, labels: dict | None = None) -> None:
    """What the dialog shows, written as one JSON line to the file $INPAINTD_GIMP_DIALOG_REPORT
    names once it is on screen: the UI test's view of it (GIMP runs the dialog in this
    process, which the test cannot look into), with the text of `labels` (id -> Gtk.Label).
    Nothing without the variable."""
    path = os.environ.get("INPAINTD_GIMP_DIALOG_REPORT")
    if not path:
        return

    def shown(name: str):
        row = dialog.get_widget(name, GObject.TYPE_NONE)
        widget = row.get_spin_button() if isinstance(row, GimpUi.LabelSpin) else row
        if isinstance(row, GimpUi.Labeled) and not isinstance(row, GimpUi.LabelSpin):
            widget = row.get_child_at(1, 0)  # a text field, or the combo box use_combo put there
        if isinstance(widget, GimpUi.StringComboBox):
            model = widget.get_model()
            return {"combo": widget.get_active(), "rows": [[str(r[0]), str(r[1])] for r in model]}
        if isinstance(widget, Gtk.Entry):  # spin buttons and text fields
            return widget.get_text()
        return type(widget).__name__

    def write(when: str) -> bool:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"title": dialog.get_title(), "when": when,
                                "shown": {a.name: shown(a.name) for a in specs},
                                "labels": {k: v.get_text() for k, v in (labels or {}).items()}}) + "\n")
        return False

    dialog.connect("map", lambda *_: GLib.timeout_add(300, write, "opened"))
    dialog.connect("response", lambda *_: write("closed"))


def follow_model(config, models: list, default_id: str, dialog=None) -> logic.ModelFollower:
    """Apply a model's defaults to the other arguments when the model argument changes to
    one the daemon listed (logic.ModelFollower decides), and, in the dialog, switch off the
    controls the model ignores, with the reason as their tooltip."""
    follower = logic.ModelFollower(models, default_id, config.get_property("model") or "")

    def show(sensitivity: dict[str, str]) -> None:
        if dialog is None:
            return
        for name, why in sensitivity.items():
            dialog.set_sensitive(name, not why, None, None, False)
            widget = dialog.get_widget(name, GObject.TYPE_NONE)
            if widget is not None:
                widget.set_tooltip_text(why or BY_NAME[name.replace("-", "_")].tip)

    def changed(cfg, _pspec) -> None:
        change = follower.changed(cfg.get_property("model"))
        if change is not None:
            values, sensitivity = change
            for name, value in values.items():
                cfg.set_property(name, value)
            show(sensitivity)

    show(follower.sensitivity(follower.caps()))
    config.connect("notify::model", changed)
    return follower


def follow_style(config, styles: list, models: logic.ModelFollower) -> logic.StyleFollower:
    """Put a style's settings into the arguments when the style argument changes
    (logic.StyleFollower decides; what it put in and the artist left alone goes back)."""
    follower = logic.StyleFollower(styles, config.get_property("style") or "")

    def changed(cfg, _pspec) -> None:
        current = {a.name: cfg.get_property(a.name) for a in ARGS}
        fallback = {**{a.name: a.default for a in ARGS}, **logic.arg_values(models.caps().apply)}
        for name, value in (follower.changed(cfg.get_property("style"), current, fallback) or {}).items():
            cfg.set_property(name, value)

    config.connect("notify::style", changed)
    return follower


# -- Inpaint Selection --------------------------------------------------------------------


def inpaint(image, drawables, opts: Options) -> tuple[str, str]:
    """Run the job; (the settings it ran with, its job id)."""
    layer = check_target(image, drawables, opts)
    _, nonempty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    if not nonempty or Gimp.Selection.is_empty(image):
        raise UserError(logic.NO_SELECTION)
    source_rect, pixels_from = source_of(image, layer, opts)
    plan = logic.plan_crop(Rect(x1, y1, x2 - x1, y2 - y1), image.get_width(), image.get_height(), source_rect, opts)
    if plan is None:
        raise UserError(f"The selection does not overlap the layer '{layer.get_name()}'; select inside it.")
    mask = read(image.get_selection(), plan.crop, MASK)
    if not editor.mask_selects(mask):
        raise UserError("The selection is empty where it meets the layer; nothing to inpaint.")
    channels = 4 if pixels_from.has_alpha() else 3
    pixels = read(pixels_from, plan.crop_from(source_rect.x, source_rect.y), RGBA if channels == 4 else RGB)
    if pixels_from is not layer:
        pixels_from.get_image().delete()  # the duplicate made for 'Use visible image'

    Gimp.progress_init("Inpainting: connecting to inpaintd")
    client = connect(opts.endpoint, opts.start_daemon)
    try:
        proto = import_protocol()
        wanted = opts.job_options()
        style = picked_style(client, wanted.get("style", ""))
        caps = picked_model(client, logic.job_model(wanted, style))
        # "auto" steps: the model's own, or the style's, said below
        options, runs_with = logic.options_for_job(wanted, caps, style)
        used = editor.settings_text(runs_with, caps)
        loras = job_loras(client, opts.loras)
        try:
            job = client.submit(pixels, plan.crop.width, plan.crop.height, channels, mask,
                                proto.JobOptions(**options), loras=loras, timeout=30.0)
        except proto.ProtocolError as exc:
            raise UserError(f"inpaintd refused the job: {exc}") from None
        run_job(client, job, used)
    finally:
        client.close()
    origin = (plan.crop.x, plan.crop.y)
    try:
        places = [plan.place(v.x, v.y, v.width, v.height) for v in job.layers]
    except ValueError as exc:
        raise UserError(f"inpaintd sent a result that does not fit: {exc}") from None
    records = [logic.ResultRecord(job.id, v.index, v.seed, v.x, v.y, origin, opts.endpoint.strip(), options)
               for v in job.layers]
    group = logic.ResultRecord(job.id, -1, -1, 0, 0, origin, opts.endpoint.strip(), options, len(job.layers))
    add_results(image, layer, editor.group_name(opts.prompt), job.layers, places, records, group)
    for note in job.notes_for_user(opts.prompt):
        Gimp.message(note)
    return used, job.id


def picked_model(client, model: str) -> editor.ModelCaps:
    """What the daemon says of the model a job asks for ("" = its default); empty where
    its `models` reply does not say (an older daemon: the job is sent as it is)."""
    proto = import_protocol()
    try:
        models, default = logic.model_listing(client.request(proto.Type.LIST_MODELS, timeout=10.0).body)
    except proto.ProtocolError:
        return editor.ModelCaps()
    return editor.model_caps(editor.find_model(models, model, default), GIMP)


def job_loras(client, text: str) -> list[tuple[str, float]]:
    """The LoRAs argument as submit's `loras`; a LoRA given without a weight gets the
    daemon's default weight for it (its `loras` reply), else 1."""
    parsed, _ = logic.parse_loras(text)
    listed: list = []
    if any(weight is None for _, weight in parsed):
        proto = import_protocol()
        try:
            listed = logic.lora_entries(client.request(proto.Type.LORAS, timeout=10.0).body)
        except proto.ProtocolError:
            listed = []  # an older daemon: it refuses the LoRAs with its own words
    return logic.lora_weights(parsed, listed)


def picked_style(client, name: str):
    """The daemon's entry for the style a job names (None: none named, or the daemon does not
    list it; the daemon then refuses the job with its own words)."""
    if not name.strip():
        return None
    proto = import_protocol()
    try:
        return logic.find_style(client.styles(timeout=10.0), name)
    except proto.ProtocolError:
        return None


def check_target(image, drawables, opts: Options):
    """The one pixel layer to work on, or a UserError saying what to pick instead."""
    if len(drawables) != 1:
        raise UserError(f"Select exactly one layer in the Layers dialog ({len(drawables)} are selected).")
    item = drawables[0]
    if not isinstance(item, Gimp.Layer) or isinstance(item, Gimp.LayerMask):
        raise UserError("Inpaint Selection works on a layer, not on a channel or layer mask: select a layer.")
    if item.is_group() and not opts.sample_merged:
        raise UserError(
            f"'{item.get_name()}' is a layer group: select a pixel layer inside it, or enable 'Use visible image'."
        )
    base = image.get_base_type()
    if base == Gimp.ImageBaseType.INDEXED:
        raise UserError("Indexed images are not supported: convert with Image > Mode > RGB and run it again.")
    notes = []
    if base == Gimp.ImageBaseType.GRAY:
        notes.append("Grayscale image: the area is sent as RGB and the results are converted back to gray.")
    bits, linear = precision_of(image)
    note = logic.precision_note(bits, linear)
    if note:
        notes.append(note)
    for n in notes:
        Gimp.message(n)
    return item


def precision_of(image) -> tuple[int, bool]:
    """Bits per channel and linearity from the precision enum's name (e.g. U16_LINEAR)."""
    name = image.get_precision().value_nick.upper().replace("-", "_")
    bits = {"U8": 8, "U16": 16, "U32": 32, "HALF": 16, "FLOAT": 32, "DOUBLE": 64}.get(name.split("_")[0], 8)
    return bits, name.endswith("_LINEAR") and "NON_LINEAR" not in name


def source_of(image, layer, opts: Options):
    """(bounds in image coordinates, drawable to read pixels from)."""
    if opts.sample_merged:
        copy = image.duplicate()
        merged = copy.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        return Rect(0, 0, image.get_width(), image.get_height()), merged
    _, ox, oy = layer.get_offsets()
    return Rect(ox, oy, layer.get_width(), layer.get_height()), layer


def read(drawable, rect: Rect, fmt: str) -> bytes:
    buf = drawable.get_buffer()
    return bytes(buf.get(Gegl.Rectangle.new(rect.x, rect.y, rect.width, rect.height), 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


# -- Vary Result ----------------------------------------------------------------------------


def run_vary(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(logic.VARY_PROCEDURE)
        empty_strings(config, logic.VARY_ARGS)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Vary Result")
        dialog_faces(dialog, config, logic.VARY_ARGS)
        try:
            layer, record = result_layer(list(drawables))
            what = logic.vary_subject(layer.get_name(), record)
        except UserError as exc:
            what = str(exc)
        label = dialog.get_label("vary-subject", what, False, False)  # GIMP 3.0: is_markup, with_mnemonic
        label.set_line_wrap(True)
        label.set_max_width_chars(60)
        label.set_xalign(0.0)
        dialog.fill(["vary-subject", *[a.name for a in logic.VARY_ARGS]])
        report_dialog(dialog, logic.VARY_ARGS)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    values = {a.name: config.get_property(a.name) for a in logic.VARY_ARGS}
    try:
        problems = logic.arg_problems(logic.VARY_ARGS, values)
        if problems:
            raise UserError("Vary Result: " + "; ".join(problems))
        job_id = vary(image, list(drawables), **logic.arg_values_of(logic.VARY_ARGS, values))
    except UserError as exc:
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(str(exc)))
    finally:
        Gimp.progress_end()
    return success(procedure, job_id)


def record_of(item) -> logic.ResultRecord | None:
    parasite = item.get_parasite(logic.RESULT_PARASITE)
    return logic.ResultRecord.from_bytes(parasite.get_data()) if parasite is not None else None


def result_layer(drawables):
    """(the result layer to vary, its record), or a UserError naming what to select.  A
    result group stands for its topmost visible variant."""
    if len(drawables) != 1:
        raise UserError(f"Vary Result works on one result layer: select one variant layer "
                        f"({len(drawables)} are selected).")
    item = drawables[0]
    if not isinstance(item, Gimp.Layer) or isinstance(item, Gimp.LayerMask):
        raise UserError(logic.not_a_result(item.get_name()))
    record = record_of(item)
    if record is not None and item.is_group():
        for child in item.get_children():
            child_record = record_of(child)
            if child.get_visible() and child_record is not None and not child_record.is_group:
                return child, child_record
        raise UserError(f"No variant in the group '{item.get_name()}' is visible: select the variant layer to vary.")
    if record is None or record.is_group or item.is_group():
        raise UserError(logic.not_a_result(item.get_name()))
    return item, record


def vary(image, drawables, preset: str, prompt: str, variants: int, seed: int, endpoint: str) -> str:
    """New variants of a result layer, in a group above its own; the new job's id."""
    layer, record = result_layer(drawables)
    _, lx, ly = layer.get_offsets()
    origin = logic.vary_origin(record, lx, ly)
    overrides = logic.vary_overrides(prompt, variants, seed)
    setting = endpoint.strip() or record.endpoint
    Gimp.progress_init("Varying: connecting to inpaintd")
    client = connect(setting, True)
    try:
        proto = import_protocol()
        try:
            job = client.vary(record.job, record.variant, preset=preset, options=overrides, timeout=30.0)
        except proto.ProtocolError as exc:
            if exc.code not in (proto.Code.EXPIRED, proto.Code.NOT_FOUND):
                raise UserError(f"inpaintd refused to vary '{layer.get_name()}': {exc}") from None
            job = vary_from_pixels(client, image, layer, record, preset, overrides)
        run_job(client, job, f"Vary ({preset})" if not prompt.strip() else "Remix")
    finally:
        client.close()
    places = [Rect(v.x + origin[0], v.y + origin[1], v.width, v.height) for v in job.layers]
    options = logic.varied_options(record, overrides)
    records = [logic.ResultRecord(job.id, v.index, v.seed, v.x, v.y, origin, setting, options) for v in job.layers]
    group = logic.ResultRecord(job.id, -1, -1, 0, 0, origin, setting, options, len(job.layers))
    parent = layer.get_parent()
    anchor = parent if parent is not None and record_of(parent) is not None else layer
    add_results(image, anchor, logic.vary_group_name(preset, prompt, record), job.layers, places, records, group)
    return job.id


def vary_from_pixels(client, image, layer, record: logic.ResultRecord, preset: str, overrides: dict):
    """`vary` with the layer's pixels and the selection over it, for a job the daemon no
    longer keeps (`expired`, or `not_found` once its history entry was evicted)."""
    proto = import_protocol()
    _, lx, ly = layer.get_offsets()
    rect = Rect(lx, ly, layer.get_width(), layer.get_height())
    mask = read(image.get_selection(), rect, MASK)
    if not editor.mask_selects(mask):
        raise UserError(logic.VARY_NEEDS_SELECTION)
    pixels = read(layer, Rect(0, 0, rect.width, rect.height), RGBA)
    try:
        return client.vary(record.job, record.variant, preset=preset, options=logic.vary_pixels_options(record, overrides),
                           pixels=(pixels, rect.width, rect.height, 4, mask, record.x, record.y), timeout=30.0)
    except proto.ProtocolError as exc:
        raise UserError(f"inpaintd refused to vary '{layer.get_name()}': {exc}") from None


# -- Bring Back from History --------------------------------------------------------------


def run_history(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(logic.HISTORY_PROCEDURE)
        empty_strings(config, logic.HISTORY_ARGS)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Bring Back from History")
        entries = recent_entries(config.get_property("endpoint") or "")
        if entries:
            use_combo(dialog, config, "job", logic.history_choices(entries, config.get_property("job") or ""))
        dialog.fill([a.name for a in logic.HISTORY_ARGS])
        report_dialog(dialog, logic.HISTORY_ARGS)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    values = {a.name: config.get_property(a.name) for a in logic.HISTORY_ARGS}
    try:
        problems = logic.arg_problems(logic.HISTORY_ARGS, values)
        if problems:
            raise UserError("Bring Back from History: " + "; ".join(problems))
        job_id = bring_back(image, list(drawables), **logic.arg_values_of(logic.HISTORY_ARGS, values))
    except UserError as exc:
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(str(exc)))
    finally:
        Gimp.progress_end()
    return success(procedure, job_id)


def recent_entries(endpoint_setting: str) -> list:
    """The daemon's newest history entries, for the dialog; [] at once when none answers."""
    try:
        proto = import_protocol()
        with proto.Client(editor.daemon_endpoint(endpoint_setting), name="inpaintd-gimp-dialog") as client:
            client.hello(timeout=1.0)
            return list(client.history(limit=30, timeout=2.0).get("entries") or [])
    except Exception:  # noqa: BLE001 - the dialog opens with a text field instead
        return []


def find_entry(client, job: str, search: str) -> dict:
    """The history entry to bring back: job `job` (its id or a unique start), else the newest
    whose prompt contains `search`, else the newest."""
    proto = import_protocol()
    try:
        if not job.strip():
            entries = client.history(search.strip(), limit=1).get("entries") or []
            if entries:
                return entries[0]
        else:
            offset = 0
            while offset < 5000:  # the history is searched by prompt only: page through it
                page = client.history(offset=offset, limit=100)
                entries = page.get("entries") or []
                entry = logic.pick_entry(entries, job)
                if entry is not None:
                    return dict(entry)
                offset += len(entries)
                if not entries or offset >= int(page.get("total") or 0):
                    break
    except proto.ProtocolError as exc:
        raise UserError(f"inpaintd could not read its history: {exc}") from None
    raise UserError(logic.no_history_entry(job, search))


def bring_back(image, drawables, job: str, search: str, endpoint: str) -> str:
    """A history entry's variants as layers at their places in `image`; its job id."""
    Gimp.progress_init("Bringing back from inpaintd's history")
    client = connect(endpoint, True)
    try:
        proto = import_protocol()
        entry = find_entry(client, job, search)
        try:
            fetched = client.fetch(entry["job"], timeout=60.0)
            fetched.raise_for_error()
        except proto.ProtocolError as exc:
            raise UserError(f"inpaintd could not bring back job {entry['job']}: {exc}") from None
        if not fetched.finished:
            raise UserError(f"Job {entry['job']} is still running; bring it back once it is done.")
    finally:
        client.close()
    selected = drawables[0] if len(drawables) == 1 and isinstance(drawables[0], Gimp.Layer) else None
    layer_rect = None
    if selected is not None:
        _, sx, sy = selected.get_offsets()
        layer_rect = Rect(sx, sy, selected.get_width(), selected.get_height())
    jobs = image.get_parasite(logic.JOBS_PARASITE)
    origin, note = logic.history_origin(entry, logic.known_jobs(jobs.get_data() if jobs else None),
                                        (image.get_width(), image.get_height()), layer_rect)
    options = dict(entry.get("options") or {})
    setting = endpoint.strip()
    places = [Rect(v.x + origin[0], v.y + origin[1], v.width, v.height) for v in fetched.layers]
    records = [logic.ResultRecord(fetched.id, v.index, v.seed, v.x, v.y, origin, setting, options)
               for v in fetched.layers]
    group = logic.ResultRecord(fetched.id, -1, -1, 0, 0, origin, setting, options, len(fetched.layers))
    add_results(image, selected, editor.group_name(str(entry.get("prompt") or "")), fetched.layers, places,
                records, group)
    if note:
        Gimp.message(note)
    return str(fetched.id)


# -- results --------------------------------------------------------------------------


def add_results(image, anchor, name: str, layers, places, records, group_record) -> None:
    """One layer per variant, in a group named `name` above `anchor` (the top of the image
    where it is None), as one undo step; each layer and the group carry their record, and
    the image remembers where the job's layers sit."""
    layer_type = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY else Gimp.ImageType.RGBA_IMAGE
    image.undo_group_start()
    try:
        group = Gimp.GroupLayer.new(image, name)
        if anchor is None:
            image.insert_layer(group, None, 0)
        else:
            image.insert_layer(group, anchor.get_parent(), image.get_item_position(anchor))
        attach(group, logic.RESULT_PARASITE, group_record.to_bytes())
        for position, (variant, place, record) in enumerate(zip(layers, places, records, strict=True)):
            out = Gimp.Layer.new(image, editor.variant_name(variant.index, len(layers), variant.seed),
                                 variant.width, variant.height, layer_type, 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(out, group, position)
            out.set_offsets(place.x, place.y)
            buf = out.get_buffer()
            buf.set(Gegl.Rectangle.new(0, 0, variant.width, variant.height), RGBA, variant.tight_bytes())
            buf.flush()
            out.update(0, 0, variant.width, variant.height)
            attach(out, logic.RESULT_PARASITE, record.to_bytes())
    finally:
        image.undo_group_end()
    jobs = image.get_parasite(logic.JOBS_PARASITE)
    attach(image, logic.JOBS_PARASITE,
           logic.remember_job(jobs.get_data() if jobs else None, group_record.job, group_record.origin))
    Gimp.displays_flush()


def attach(owner, name: str, data: bytes) -> None:
    """A persistent parasite (saved in .xcf); not undoable, so that an undo of the layers
    does not make the image forget where a job's layers went (Bring Back from History)."""
    owner.attach_parasite(Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT, data))


# -- talking to the daemon --------------------------------------------------------------


def import_protocol():
    try:
        import inpaintd_protocol.client  # the parts that need pyzmq and msgpack
    except ImportError as exc:
        raise UserError(
            f"GIMP's Python ({sys.executable}, {sys.version.split()[0]}) cannot load the inpaintd client: {exc}.\n"
            + (DEPS.problem if DEPS is not None and DEPS.problem else
               "Install pyzmq and msgpack for it (Debian/Ubuntu: sudo apt install python3-zmq python3-msgpack), "
               "or run `inpaintd install-gimp` again, which says how for your system.")
        ) from None
    return inpaintd_protocol


def connect(endpoint_setting: str, start_daemon: bool):
    """A Client that got a hello from the daemon, starting a local daemon if allowed."""
    proto = import_protocol()
    client = proto.Client(editor.daemon_endpoint(endpoint_setting), name="inpaintd-gimp")
    try:
        client.hello(timeout=3.0)
        return client
    except proto.DaemonUnavailable:
        client.close()
    except proto.ProtocolError as exc:
        client.close()
        raise UserError(f"inpaintd at {client.endpoint} refused the connection: {exc}") from None
    endpoint = client.endpoint
    command = recorded_command()
    if not (start_daemon and command and editor.can_start_daemon(endpoint)):
        raise UserError(logic.how_to_start(endpoint))
    argv = logic.serve_command(command, endpoint)
    Gimp.progress_set_text(f"Inpainting: starting inpaintd ({logic.quote_command(argv)})")
    log = open(os.path.join(GLib.get_user_cache_dir(), "inpaintd-gimp-daemon.log"), "ab")
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise UserError(f"Could not start inpaintd ({exc}).\n" + logic.how_to_start(endpoint)) from None
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        Gimp.progress_pulse()
        client = proto.Client(endpoint, name="inpaintd-gimp")  # re-reads the new connection file's key
        try:
            client.hello(timeout=1.0)
            return client
        except proto.ProtocolError:
            client.close()
    raise UserError(f"Started `{logic.quote_command(argv)}` but it did not answer within 60 s; "
                    f"see {log.name}.\n" + logic.how_to_start(endpoint))


def recorded_command() -> list[str] | None:
    """The CLI command `inpaintd install-gimp` recorded (e.g. [venv python, -m, backend])."""
    try:
        with open(os.path.join(HERE, "inpaintd_install.json"), encoding="utf-8") as f:
            command = json.load(f).get("command")
    except (OSError, ValueError):
        return None
    return [str(c) for c in command] if isinstance(command, list) and command else None


def job_progress(job, used: str = "") -> tuple[str, float]:
    """An inpaint job's progress text (after `used`, the model and values it runs with) and fraction."""
    now = (editor.shown_stage(job.state, job.stage), job.step, job.total_steps, job.position)
    text = editor.progress_text(*now)
    return (f"{used} – {text}" if used else text), editor.progress_fraction(*now[:3])


def train_progress(job, used: str = "") -> tuple[str, float]:
    """A `train` job's progress text (step, loss, time left) and fraction."""
    text, fraction = logic.training_progress(editor.shown_stage(job.state, job.stage), job.step, job.total_steps,
                                             job.position, job.loss, job.remaining)
    return (f"{used} – {text}" if used else text), fraction


def run_job(client, job, used: str = "", progress=job_progress, failed: str = "inpaintd could not finish the job") -> None:
    """Follow an accepted job to its end on GIMP's progress bar (`progress` gives its text
    and fraction, the text starting with `used`); a UserError (`failed`: ...) unless it
    succeeded.  The watchdog cancels it if GIMP kills this process (the progress bar's cancel)."""
    proto = import_protocol()
    watchdog = start_watchdog(client, job.id)
    try:
        shown = None
        while not job.finished:
            client.pump(0.1)
            now = progress(job, used)
            if now != shown:
                shown = now
                Gimp.progress_set_text(now[0])
                Gimp.progress_update(now[1])
    finally:
        stop_watchdog(watchdog)
    try:
        job.raise_for_error()
    except proto.ProtocolError as exc:
        raise UserError(f"{failed}: {exc}") from None
    Gimp.progress_update(1.0)


def start_watchdog(client, job_id: str):
    """Start inpaintd_watchdog.py, which cancels the job if GIMP kills this process
    (that is what GIMP 3 does when the user cancels the progress bar)."""
    env = dict(os.environ)
    if client.key:
        env["INPAINTD_KEY"] = client.key.decode("ascii")
    try:
        return subprocess.Popen(
            [sys.executable, os.path.join(HERE, "inpaintd_watchdog.py"), client.endpoint, job_id],
            stdin=subprocess.PIPE, env=env, start_new_session=True,
        )
    except OSError:
        return None  # no cancel-on-kill; the job still runs to completion


def stop_watchdog(watchdog) -> None:
    if watchdog is None:
        return
    try:
        watchdog.stdin.write(b"done\n")
        watchdog.stdin.close()
        watchdog.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


# -- Teach Subject from Layers ----------------------------------------------------------------


def run_train(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(logic.TRAIN_PROCEDURE)
        empty_strings(config, logic.TRAIN_ARGS)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Teach Subject from Layers")
        dialog_faces(dialog, config, logic.TRAIN_ARGS)
        what = logic.training_subject([d.get_name() for d in drawables], not Gimp.Selection.is_empty(image))
        label = dialog.get_label("train-subject", what, False, False)  # GIMP 3.0: is_markup, with_mnemonic
        label.set_line_wrap(True)
        label.set_max_width_chars(60)
        label.set_xalign(0.0)
        dialog.fill(["train-subject", *[a.name for a in logic.TRAIN_ARGS]])
        report_dialog(dialog, logic.TRAIN_ARGS, {"train-subject": label})
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    values = {a.name: config.get_property(a.name) for a in logic.TRAIN_ARGS}
    try:
        problems = logic.train_problems(values)
        if problems:
            raise UserError("Teach Subject from Layers: " + "; ".join(problems))
        name, job_id = teach(image, list(drawables), **logic.arg_values_of(logic.TRAIN_ARGS, values))
    except UserError as exc:
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(str(exc)))
    finally:
        Gimp.progress_end()
    return success(procedure, name, job_id)


def training_pictures(image, drawables) -> tuple[list, list]:
    """The selected layers as `train`'s pictures (RGB: alpha dropped) and subject masks
    (the selection over each layer, else its alpha where it has transparent parts, else None)."""
    for item in drawables:
        if not isinstance(item, Gimp.Layer) or isinstance(item, Gimp.LayerMask) or item.is_group():
            raise UserError(f"'{item.get_name()}' is not a pixel layer: Teach Subject takes pixel layers, one picture "
                            "of the subject each.")
    problem = logic.training_layers_problem([(d.get_name(), d.get_width(), d.get_height()) for d in drawables])
    if problem:
        raise UserError(problem)
    with_selection = not Gimp.Selection.is_empty(image)
    pictures, masks = [], []
    for layer in drawables:
        width, height = layer.get_width(), layer.get_height()
        rgb, alpha = logic.split_alpha(read(layer, Rect(0, 0, width, height), RGBA))
        selection = None
        if with_selection:
            _, ox, oy = layer.get_offsets()
            buf = image.get_selection().get_buffer()  # outside the canvas: nothing selected
            selection = bytes(buf.get(Gegl.Rectangle.new(ox, oy, width, height), 1.0, MASK, Gegl.AbyssPolicy.NONE))
        try:
            masks.append(logic.subject_mask(alpha, selection, layer.get_name()))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        pictures.append((rgb, width, height, 3))
    return pictures, masks


def teach(image, drawables, token: str, class_noun: str, name: str, steps: int, resolution: int, model: str,
          endpoint: str) -> tuple[str, str]:
    """Train a LoRA on the selected layers in the daemon; (the LoRA's name, the job id)."""
    pictures, masks = training_pictures(image, drawables)
    token, class_noun = token.strip(), class_noun.strip()
    name = name.strip() or logic.lora_name_for(token, class_noun)
    Gimp.progress_init(f"Teaching '{token} {class_noun}': connecting to inpaintd")
    client = connect(endpoint, True)
    try:
        proto = import_protocol()
        Gimp.progress_set_text(f"Teaching '{token} {class_noun}': sending {len(pictures)} pictures")
        try:
            job = client.train(pictures, token, class_noun, name,
                               masks=masks if any(m is not None for m in masks) else (), timeout=120.0,
                               **logic.train_settings(steps, resolution, model))
        except proto.ProtocolError as exc:
            raise UserError(f"inpaintd refused the training: {exc}") from None
        run_job(client, job, f"Teaching '{token} {class_noun}'", train_progress, "inpaintd could not finish the training")
    finally:
        client.close()
    trained = dict(job.result.get("trained") or {})
    Gimp.message(logic.trained_message(trained, token, class_noun))
    for note in job.notes_for_user():
        Gimp.message(note)
    return str(trained.get("name") or name), str(job.id)


# -- registration ---------------------------------------------------------------------


def add_arguments(procedure, specs) -> None:
    for a in specs:
        if a.kind == "str":
            procedure.add_string_argument(a.name, a.label, a.blurb, a.default, _PARAM)
        elif a.kind == "choice":
            choice = Gimp.Choice.new()
            for i, (value, words, help_text) in enumerate(a.choices):
                choice.add(value, i, words, help_text)
            procedure.add_choice_argument(a.name, a.label, a.blurb, choice, a.default, _PARAM)
        elif a.kind == "int":
            assert a.minimum is not None and a.maximum is not None  # every number has bounds (the option table's rule)
            procedure.add_int_argument(a.name, a.label, a.blurb, int(a.minimum), int(a.maximum), a.default, _PARAM)
        elif a.kind == "float":
            procedure.add_double_argument(a.name, a.label, a.blurb, a.minimum, a.maximum, a.default, _PARAM)
        else:
            procedure.add_boolean_argument(a.name, a.label, a.blurb, a.default, _PARAM)


_JOB_ID_HELP = "The job id the layers came from (the daemon's history keeps it: `inpaintd history`)"


class InpaintdPlugIn(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False  # no translations shipped; also silences GIMP's locale warnings

    def do_query_procedures(self):
        return [logic.PROCEDURE_NAME, logic.VARY_PROCEDURE, logic.HISTORY_PROCEDURE, logic.TRAIN_PROCEDURE]

    def do_create_procedure(self, name):
        mask = Gimp.ProcedureSensitivityMask
        if name == logic.VARY_PROCEDURE:
            procedure = self._procedure(
                name, run_vary, mask.DRAWABLE, logic.VARY_MENU_LABEL, logic.VARY_ARGS,
                "New variants of an inpaintd result",
                "Makes new variants of the selected result layer (one that Inpaint Selection added) inside the same "
                "selection: Subtle keeps the composition, Strong only the colours and layout; a new prompt repaints "
                "it with that prompt (Remix). The new variants arrive as a layer group above the result's group.")
        elif name == logic.HISTORY_PROCEDURE:
            procedure = self._procedure(
                name, run_history, mask.DRAWABLE | mask.DRAWABLES | mask.NO_DRAWABLES, logic.HISTORY_MENU_LABEL,
                logic.HISTORY_ARGS, "Bring back a result from inpaintd's history",
                "Adds the variants of a job from the daemon's history (every finished job, kept across restarts) "
                "as layers where they were made: the newest job, the newest whose prompt contains a text, or a "
                "job by its id.")
        elif name == logic.TRAIN_PROCEDURE:
            procedure = self._procedure(
                name, run_train, mask.DRAWABLE | mask.DRAWABLES, logic.TRAIN_MENU_LABEL, logic.TRAIN_ARGS,
                "Teach inpaintd a subject from layers",
                "Trains a LoRA in the daemon on the selected layers (3 to 30 pictures of one subject; the selection, "
                "or a layer's transparency, marks the subject), so that Inpaint Selection can paint it: "
                "'a photo of TOKEN CLASS' with <lora:NAME:1> in the prompt or NAME:1 in its LoRAs field.")
            procedure.add_string_return_value("lora-name", "LoRA name", "The new LoRA's name (for the LoRAs field)", "",
                                              _PARAM)
            procedure.add_string_return_value("job-id", "Job id", "The training job's id", "", _PARAM)
            return procedure
        else:
            procedure = self._procedure(
                name, run, mask.DRAWABLE, logic.MENU_LABEL, ARGS, "Inpaint the selection with inpaintd",
                "Repaints the selected area of the selected layer with Stable Diffusion (or the classical "
                "engine) running in the inpaintd daemon, and adds one layer per variant in a new layer group "
                "above the layer. The layer itself is not changed.")
            procedure.add_string_return_value(
                "job-settings", "Job settings",
                "The model and the values the job ran with, e.g. 'FLUX.1 Fill: 50 steps, guidance 30, strength 1' "
                "(steps left at auto are the model's default); empty for a classical model",
                "", _PARAM)
        procedure.add_string_return_value("job-id", "Job id", _JOB_ID_HELP, "", _PARAM)
        return procedure

    def _procedure(self, name, run_function, sensitivity, menu_label, args, blurb, help_text):
        """One of the plug-in's image procedures, in the Filters > AI menu, with its arguments."""
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_function, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(sensitivity)
        procedure.set_menu_label(menu_label)
        procedure.add_menu_path(logic.MENU_PATH)
        procedure.set_documentation(blurb, help_text, name)
        procedure.set_attribution("inpaintd", "inpaintd", "2026")
        add_arguments(procedure, args)
        return procedure

if __name__ == "__main__":
    Gimp.main(InpaintdPlugIn.__gtype__, sys.argv)
