# Batch code for the full GIMP UI under Xvfb (gimp-3.0, not gimp-console), executed by
# python-fu-eval.  Plug-ins cannot call GIMP's Undo action through the PDB, so the undo
# check presses Ctrl+Z in the image window with xdotool, as a user would.  Then it opens
# the plug-in's dialog interactively and captures it with xwd; GIMP itself converts the
# capture to PNG.  Results go to $INPAINTD_CI_DIR/ui.json and dialog.png.
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

# The dialog: run interactively; a helper captures and closes it once it is mapped.
xwd = os.path.join(_ci, "dialog.xwd")
names = os.path.join(_ci, "windows.txt")
helper = subprocess.Popen(  # give up after ~60 s by closing whatever dialog is open, so GIMP never hangs
    "for i in $(seq 60); do wid=$(xdotool search --onlyvisible --name 'Inpaint Selection' | head -1); "
    "[ -n \"$wid\" ] && break; sleep 1; done; "
    f"xdotool search --onlyvisible --name . getwindowname %@ > {names} 2>&1; "
    f"if [ -n \"$wid\" ]; then sleep 1.5; xwd -silent -id $wid -out {xwd}; "
    "xdotool windowfocus --sync $wid; xdotool key Escape; sleep 3; "
    "xdotool search --onlyvisible --name 'Inpaint Selection' >/dev/null && xdotool windowkill $wid; "
    "else for w in $(xdotool search --onlyvisible --name .); do xdotool key --window $w Escape; done; fi",
    shell=True,
)
proc = Gimp.get_pdb().lookup_procedure("python-fu-inpaintd-inpaint-selection")
config = proc.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [photo])
_ui["dialog_status"] = str(proc.run(config).index(0))
helper.wait(timeout=60)
if os.path.exists(xwd):
    shot = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(xwd))
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, shot, Gio.File.new_for_path(os.path.join(_ci, "dialog.png")), None)
    _ui["dialog_png"] = True
with open(os.path.join(_ci, "ui.json"), "w") as f:
    json.dump(_ui, f, indent=1)
