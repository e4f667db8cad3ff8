#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > AI > Inpaint Selection... through the inpaintd daemon.

Thin glue only: it registers the procedure, shows the dialog, moves pixels between GIMP
and the daemon, drives GIMP's progress bar and adds the result layers in one undo group.
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
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from inpaintd_protocol import bundled  # noqa: E402  (standard library only)

# A package from `inpaintd package-gimp` (Windows, macOS, Flatpak GIMP) carries pyzmq for
# several Pythons in _deps/ and msgpack in vendor/; the ones for this GIMP go on the path.
DEPS = bundled.prepare_plugin_folder(HERE)

import inpaintd_logic as logic  # noqa: E402
from inpaintd_logic import ARGS, DIALOG_ORDER, Options, Rect  # noqa: E402

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
        for a in ARGS:  # GIMP keeps an empty string argument as NULL, which GtkEntry rejects
            if a.kind == "str" and config.get_property(a.name) is None:
                config.set_property(a.name, "")
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Inpaint Selection")
        for a in ARGS:  # GIMP's default step (1.0) would exceed e.g. strength's 0.01..1 range
            if a.kind == "float":
                step = BY_NAME[a.field].step
                dialog.get_spin_scale(a.name, 1.0).set_increments(step, 4 * step)
        dialog.fill(list(DIALOG_ORDER))
        follow_model(config, *daemon_models(config.get_property("endpoint") or ""), dialog)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    opts = Options.from_mapping({a.name: config.get_property(a.name) for a in ARGS})
    try:
        problems = opts.validate()
        if problems:
            raise UserError("Inpaint Selection: " + "; ".join(problems))
        used = inpaint(image, list(drawables), opts)
    except UserError as exc:
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(str(exc)))
    finally:
        Gimp.progress_end()
    retval = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    retval.remove(1)  # the return value `job-settings` (see do_create_procedure)
    retval.insert(1, GObject.Value(GObject.TYPE_STRING, used))
    return retval


def daemon_models(endpoint_setting: str) -> tuple[list, str]:
    """The daemon's models and default model, for the dialog; ([], "") at once when none
    answers (no daemon is started just to open the dialog) or the client cannot load."""
    try:
        proto = import_protocol()
        with proto.Client(editor.daemon_endpoint(endpoint_setting), name="inpaintd-gimp-dialog") as client:
            client.hello(timeout=1.0)
            return logic.model_listing(client.request(proto.Type.LIST_MODELS, timeout=2.0).body)
    except Exception:  # noqa: BLE001 - the dialog opens without the daemon's defaults
        return [], ""


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


def inpaint(image, drawables, opts: Options) -> str:
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
    client = connect(opts)
    try:
        caps = picked_model(client, opts.model)
        options = editor.for_model(opts.job_options(), caps)  # "auto" steps: the model's own, said below
        used = editor.settings_text(options, caps)
        job = run_job(client, pixels, plan.crop.width, plan.crop.height, channels, mask, options, used)
    finally:
        client.close()
    add_results(image, layer, plan, job.layers, opts)
    for note in job.notes_for_user(opts.prompt):
        Gimp.message(note)
    return used


def picked_model(client, model: str) -> editor.ModelCaps:
    """What the daemon says of the model a job asks for ("" = its default); empty where
    its `models` reply does not say (an older daemon: the job is sent as it is)."""
    proto = import_protocol()
    try:
        models, default = logic.model_listing(client.request(proto.Type.LIST_MODELS, timeout=10.0).body)
    except proto.ProtocolError:
        return editor.ModelCaps()
    return editor.model_caps(editor.find_model(models, model, default), GIMP)


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


def connect(opts: Options):
    """A Client that got a hello from the daemon, starting a local daemon if allowed."""
    proto = import_protocol()
    client = proto.Client(editor.daemon_endpoint(opts.endpoint), name="inpaintd-gimp")
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
    if not (opts.start_daemon and command and editor.can_start_daemon(endpoint)):
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


def run_job(client, pixels: bytes, width: int, height: int, channels: int, mask: bytes, options: dict,
            used: str = ""):
    """Send the job (`options`: JobOptions fields) and follow it on GIMP's progress bar,
    whose text starts with `used`, the model and values it runs with."""
    proto = import_protocol()
    try:
        job = client.submit(pixels, width, height, channels, mask, proto.JobOptions(**options), timeout=30.0)
    except proto.ProtocolError as exc:
        raise UserError(f"inpaintd refused the job: {exc}") from None
    watchdog = start_watchdog(client, job.id)
    try:
        shown = None
        while not job.finished:
            client.pump(0.1)
            now = (editor.shown_stage(job.state, job.stage), job.step, job.total_steps, job.position)
            if now != shown:
                shown = now
                text = editor.progress_text(*now)
                Gimp.progress_set_text(f"{used} – {text}" if used else text)
                Gimp.progress_update(editor.progress_fraction(*now[:3]))
    finally:
        stop_watchdog(watchdog)
    try:
        job.raise_for_error()
    except proto.ProtocolError as exc:
        raise UserError(f"inpaintd could not inpaint: {exc}") from None
    Gimp.progress_update(1.0)
    return job


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


# -- results --------------------------------------------------------------------------


def add_results(image, source, plan, layers, opts: Options) -> None:
    """One layer per variant, in a group above the source, as one undo step."""
    layer_type = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY else Gimp.ImageType.RGBA_IMAGE
    try:
        places = [plan.place(v.x, v.y, v.width, v.height) for v in layers]
    except ValueError as exc:
        raise UserError(f"inpaintd sent a result that does not fit: {exc}") from None
    image.undo_group_start()
    try:
        group = Gimp.GroupLayer.new(image, editor.group_name(opts.prompt))
        image.insert_layer(group, source.get_parent(), image.get_item_position(source))
        for position, (variant, place) in enumerate(zip(layers, places, strict=True)):
            out = Gimp.Layer.new(image, editor.variant_name(variant.index, len(layers), variant.seed),
                                 variant.width, variant.height, layer_type, 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(out, group, position)
            out.set_offsets(place.x, place.y)
            buf = out.get_buffer()
            buf.set(Gegl.Rectangle.new(0, 0, variant.width, variant.height), RGBA, variant.tight_bytes())
            buf.flush()
            out.update(0, 0, variant.width, variant.height)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()


# -- registration ---------------------------------------------------------------------


class InpaintdPlugIn(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False  # no translations shipped; also silences GIMP's locale warnings

    def do_query_procedures(self):
        return [logic.PROCEDURE_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(logic.MENU_LABEL)
        procedure.add_menu_path(logic.MENU_PATH)
        procedure.set_documentation(
            "Inpaint the selection with inpaintd",
            "Repaints the selected area of the selected layer with Stable Diffusion (or the classical "
            "engine) running in the inpaintd daemon, and adds one layer per variant in a new layer group "
            "above the layer. The layer itself is not changed.",
            name,
        )
        procedure.set_attribution("inpaintd", "inpaintd", "2026")
        for a in ARGS:
            if a.kind == "str":
                procedure.add_string_argument(a.name, a.label, a.blurb, a.default, _PARAM)
            elif a.kind == "int":
                assert a.minimum is not None and a.maximum is not None  # every number has bounds (the option table's rule)
                procedure.add_int_argument(a.name, a.label, a.blurb, int(a.minimum), int(a.maximum), a.default, _PARAM)
            elif a.kind == "float":
                procedure.add_double_argument(a.name, a.label, a.blurb, a.minimum, a.maximum, a.default, _PARAM)
            else:
                procedure.add_boolean_argument(a.name, a.label, a.blurb, a.default, _PARAM)
        procedure.add_string_return_value(
            "job-settings", "Job settings",
            "The model and the values the job ran with, e.g. 'FLUX.1 Fill: 50 steps, guidance 30, strength 1' "
            "(steps left at auto are the model's default); empty for a classical model",
            "", _PARAM)
        return procedure


if __name__ == "__main__":
    Gimp.main(InpaintdPlugIn.__gtype__, sys.argv)
