"""Cancel a daemon job when the GIMP plug-in process that submitted it dies.

Why a separate process: when the user presses the cancel button of GIMP's progress bar,
GIMP 3.0 does not tell the plug-in; it closes the plug-in's connection and kills it
(app/plug-in/gimpplugin-progress.c: the progress "cancel" signal ends in
gimp_plug_in_close(plug_in, TRUE), which sends GP_QUIT and then SIGKILL 10 ms later).
No Python code of the plug-in runs after that, so nothing in it could send `cancel`.

The plug-in starts this script with a pipe on stdin right after the daemon accepted the
job.  When the job ends normally the plug-in writes "done" and closes the pipe; if the
pipe reaches end-of-file without "done", the plug-in is gone (cancelled from the
progress bar, crashed or killed), and this script asks the daemon to cancel the job.

Usage: inpaintd_watchdog.py ENDPOINT JOB_ID   (key from INPAINTD_KEY or the connection file)
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _prepare_paths() -> None:
    """The plug-in's own pyzmq and msgpack (vendor/, _deps/), as inpaintd_gimp.py sets them up."""
    from inpaintd_protocol import bundled

    bundled.prepare_plugin_folder(HERE)


def watch(endpoint: str, job_id: str, stream=None) -> bool:
    """Block until the plug-in finishes or dies; return True when a cancel was sent."""
    stream = stream if stream is not None else sys.stdin.buffer
    seen = b""
    while True:
        chunk = stream.read(64)
        if not chunk:
            break
        seen += chunk
        if b"done" in seen:
            return False
    _prepare_paths()
    from inpaintd_protocol import Client  # imported late: most runs end in "done"

    with Client(endpoint, name="inpaintd-gimp-watchdog") as client:
        try:
            client.cancel(job_id, timeout=5.0)
        except Exception as exc:  # the job may have finished meanwhile; nothing else to do
            print(f"inpaintd watchdog: cancel of {job_id} failed: {exc}", file=sys.stderr)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    watch(sys.argv[1], sys.argv[2])
