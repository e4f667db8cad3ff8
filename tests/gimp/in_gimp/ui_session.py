# Batch code for the full GIMP UI under Xvfb (gimp-3.0, not gimp-console), executed by
# python-fu-eval.  Plug-ins cannot call GIMP's Undo action through the PDB, so the undo
# check presses Ctrl+Z in the image window with xdotool, as a user would.  Then it opens
# the plug-in's dialogs interactively (Inpaint Selection, Vary Result, Bring Back from
# History, Teach Subject from Layers) and captures each with xwd; GIMP itself converts the captures to PNG.  What
# each dialog showed comes from the plug-in ($INPAINTD_GIMP_DIALOG_REPORT).  Results go to
# $INPAINTD_CI_DIR/ui.json, dialog.png, vary-dialog.png and history-dialog.png.
import json
import os
import subprocess
import sys
import time

_ci = os.environ["INPAINTD_CI_DIR"]
sys.path.insert(0, _ci)
import gi  # noqa: E402
from test_in_gimp import LH, LW, make_image, read, run_proc  # noqa: E402

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio  # noqa: E402

_ui = {}


def _sh(cmd, timeout=30):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout).stdout.strip()


def _names(image):
    return [layer.get_name() for layer in image.get_layers()]


image, photo = make_image()
display = Gimp.Display.new(image)
Gimp.displays_flush()
before_pixels = read(photo, 0, 0, LW, LH, "R'G'B'A u8")
before_layers = _names(image)
before_sel = tuple(Gimp.Selection.bounds(image))[1:]
status, message = run_proc(image, [photo], prompt="an empty red saucer on a wooden table", seed=42, variants=2,
                           grow=4, feather=8, padding=-1, start_daemon=False)
_ui["status"] = str(status)
_ui["message"] = message
_ui["after_run"] = _names(image)
time.sleep(1.0)
window = _sh("xdotool search --onlyvisible --name 'GIMP$' | head -1")
_ui["window"] = window
_sh(f"xdotool key --window {window} ctrl+z")
for _ in range(50):  # wait for GIMP to process the key
    time.sleep(0.1)
    if _names(image) != _ui["after_run"]:
        break
_ui["after_one_undo"] = _names(image)
_ui["selection_kept"] = tuple(Gimp.Selection.bounds(image))[1:] == before_sel
_ui["source_unchanged"] = read(photo, 0, 0, LW, LH, "R'G'B'A u8") == before_pixels
_ui["before"] = before_layers

# The dialogs: each run interactively; a helper captures and closes it once it is mapped.
def capture(title, png, name, drawables, keys=""):
    """Open procedure `name`'s dialog, capture it into `png` (via xwd and GIMP), type `keys`
    (shell commands run once it is captured, e.g. xdotool key ...), close it with Escape;
    the run's status."""
    xwd = os.path.join(_ci, png.replace(".png", ".xwd"))
    helper = subprocess.Popen(  # give up after ~60 s by closing whatever dialog is open, so GIMP never hangs
        f"for i in $(seq 60); do wid=$(xdotool search --onlyvisible --name '^{title}$' | head -1); "
        "[ -n \"$wid\" ] && break; sleep 1; done; "
        f"xdotool search --onlyvisible --name . getwindowname %@ >> {names} 2>&1; "
        f"if [ -n \"$wid\" ]; then sleep 1.5; xwd -silent -id $wid -out {xwd}; "
        f"xdotool windowfocus --sync $wid; {keys} xdotool key Escape; sleep 3; "
        f"xdotool search --onlyvisible --name '^{title}$' >/dev/null && xdotool windowkill $wid; "
        "else for w in $(xdotool search --onlyvisible --name .); do xdotool key --window $w Escape; done; fi",
        shell=True,
    )
    proc = Gimp.get_pdb().lookup_procedure(name)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    status = str(proc.run(config).index(0))
    helper.wait(timeout=90)
    if os.path.exists(xwd):
        shot = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(xwd))
        Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, shot, Gio.File.new_for_path(os.path.join(_ci, png)), None)
        shot.delete()
    return status, os.path.exists(os.path.join(_ci, png))


names = os.path.join(_ci, "windows.txt")
# After the capture, as an artist would: pick the style "Quick draft" with the keyboard
# (Alt+Y focuses Style; Down steps through its list: None, Anime, FLUX detail, Oil painting,
# Photographic, Quick draft), which puts its 8 steps in; type 40 and then "auto" into
# Context (Alt+X), which shows "auto" again; type 123 into Seed (Alt+D).
_keys = ("xdotool key alt+y; sleep 0.3; for i in 1 2 3 4 5; do xdotool key Down; sleep 0.2; done; "
         "xdotool key alt+x ctrl+a; xdotool type 40; xdotool key Tab; sleep 0.3; "
         "xdotool key alt+x ctrl+a; xdotool type auto; xdotool key Tab; sleep 0.3; "
         "xdotool key alt+d ctrl+a; xdotool type 123; xdotool key Tab; sleep 0.5;")
_ui["dialog_status"], _ui["dialog_png"] = capture("Inpaint Selection", "dialog.png",
                                                  "python-fu-inpaintd-inpaint-selection", [photo], _keys)

# Vary Result's and Bring Back from History's dialogs, on a result layer
status, message = run_proc(image, [photo], prompt="a blue cup", seed=7, variants=2, grow=4, feather=8, padding=-1,
                           start_daemon=False)
_ui["second_run"] = str(status)
variant = image.get_layers()[0].get_children()[0]
_ui["vary_status"], _ui["vary_png"] = capture("Vary Result", "vary-dialog.png", "python-fu-inpaintd-vary", [variant])
_ui["history_status"], _ui["history_png"] = capture("Bring Back from History", "history-dialog.png",
                                                    "python-fu-inpaintd-history", [variant])
# Teach Subject from Layers' dialog, on three layers
_ui["train_status"], _ui["train_png"] = capture("Teach Subject from Layers", "train-dialog.png",
                                                "python-fu-inpaintd-train", [photo, image.get_layers()[-1], variant])
report = os.environ.get("INPAINTD_GIMP_DIALOG_REPORT", "")
_ui["dialogs"] = ([json.loads(line) for line in open(report, encoding="utf-8")]
                  if report and os.path.exists(report) else [])
with open(os.path.join(_ci, "ui.json"), "w") as f:
    json.dump(_ui, f, indent=1)
