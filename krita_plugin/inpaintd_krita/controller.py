"""The job life cycle, driven by a QTimer on Krita's GUI thread.

Why a timer and not a worker thread: Krita's document API must be called on the GUI
thread, and a ZeroMQ socket belongs to one thread.  The client is non-blocking
(`submit(block=False)` + `pump()`), so a 40 ms timer reads whatever the daemon sent and
returns at once; the GUI never waits on the network.  The one blocking exchange,
asking the daemon who it is (hello + model list), runs in a short-lived thread with its
own socket and hands its answer back through a queue the timer drains.

The controller does not import `krita`: reading the document and writing the result
layers goes through `doc_access` (kritadoc.py in Krita, a fake in tests).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from PyQt5.QtCore import QObject, QTimer, pyqtSignal

from inpaintd_protocol import editor
from inpaintd_protocol.options import KRITA

from . import logic
from .logic import Settings, UserError

#: How often the timer runs while a job is in flight, and while idle.
BUSY_INTERVAL_MS = 40
IDLE_INTERVAL_MS = 250
#: Seconds between connection checks while idle (connected / not connected).
PROBE_EVERY_CONNECTED = 5.0
PROBE_EVERY_DISCONNECTED = 2.0
#: How long to keep listening to a cancelled job for its final word.
ORPHAN_TIMEOUT = 30.0


def _bundled_problem() -> str | None:
    """Why the package's own pyzmq did not fit this Krita, if it carries any (see __init__)."""
    from . import deps

    return deps.problem if deps is not None else None


class Controller(QObject):
    """One per Krita session, shared by the docker and the action."""

    #: (text, level) for the message line; level is "info", "ok", "busy" or "error".
    message = pyqtSignal(str, str)
    #: (percent 0..100, text such as "Denoising 3/20").
    progress = pyqtSignal(int, str)
    busy_changed = pyqtSignal(bool)
    #: (text, connected) for the connection line.
    connection_changed = pyqtSignal(str, bool)
    #: [(model id, label)], the daemon's default first.
    models_changed = pyqtSignal(list)
    #: names of the layers a finished job added.
    results_added = pyqtSignal(list)

    def __init__(self, settings: Settings, doc_access: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.doc_access = doc_access
        self.import_error: str = ""
        try:
            from . import _protocol

            self._proto: Any = _protocol
        except ImportError as exc:
            self._proto = None
            self.import_error = logic.missing_dependency_text(exc, _bundled_problem())
        self._client: Any = None
        self._client_endpoint = ""
        self._job: Any = None
        self._job_input: Any = None
        self._job_settings = ""  # what the running job was sent, in words (editor.settings_text)
        self._adding = False  # the finished job's layers are being added (Krita's event loop may run meanwhile)
        self._orphans: list[tuple[Any, float, bool]] = []  # (job, give-up time, cancel sent)
        self.cancelled_final_states: list[str] = []  # what cancelled jobs ended as (tests read it)
        self.connected: bool | None = None  # None: not checked yet
        self.hello: dict[str, Any] | None = None
        self.models: list[dict[str, Any]] = []
        self._instance: str | None = None
        self._probe_results: queue.Queue[tuple[str, dict | None, list, str]] = queue.Queue()
        self._probe_running = False
        self._next_probe = 0.0
        self._daemon_proc: subprocess.Popen | None = None
        self._daemon_log = ""
        self._last_progress: tuple[int, str] | None = None
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(IDLE_INTERVAL_MS)

    # -- public ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._job is not None or self._adding

    @property
    def endpoint(self) -> str:
        """The daemon's address by the editors' one rule (editor.daemon_endpoint); a
        malformed setting is shown as typed, and connecting to it says what is wrong."""
        try:
            return editor.daemon_endpoint(self.settings.endpoint)
        except ValueError:
            return self.settings.endpoint

    def generate(self) -> bool:
        """Read the active document and send a job; False (with a message) when nothing was sent."""
        if self._proto is None:
            self.message.emit(self.import_error, "error")
            return False
        if self.busy:
            self.message.emit("A job is already running; wait for it or press Cancel.", "error")
            return False
        try:
            job_input = self.doc_access.capture(self.settings)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        if self.connected is False:
            hint = self._not_running_hint()
            self.message.emit(f"No inpaintd daemon answers at {self.endpoint}. {hint}", "error")
            self._probe_now()
            return False
        caps = self.model_caps()
        sent = editor.for_model(self.settings.job_options(), caps)
        try:
            client = self._job_client()
            options = self._proto.JobOptions(**sent)
            region = job_input.region
            job = client.submit(job_input.rgba, region.width, region.height, 4, job_input.mask, options, block=False)
        except Exception as exc:  # a bad endpoint, a closed context: say it, never raise into Krita
            self.message.emit(f"Could not send the job: {exc}", "error")
            return False
        self._job, self._job_input = job, job_input
        self._job_settings = editor.settings_text(sent, caps)
        self._last_progress = None
        self._set_busy(True)
        self._emit_progress("submitting", 0, 0, None)
        mb = (len(job_input.rgba) + len(job_input.mask)) / 1e6
        self.message.emit(f"Sent {region.width}x{region.height} px ({mb:.1f} MB) to {self.endpoint}.", "busy")
        return True

    def model_caps(self) -> editor.ModelCaps:
        """What the model picked in the settings ("" = the daemon's default) takes and
        starts from, by the daemon's last `models` reply; empty where it does not say."""
        default = str((self.hello or {}).get("default_model") or "")
        return editor.model_caps(editor.find_model(self.models, self.settings.model, default), KRITA)

    def cancel(self) -> None:
        """Stop the running job now: the GUI is free at once, the daemon is told to stop,
        and whatever the job still produces is thrown away."""
        job = self._job
        if job is None:
            return
        self._job, self._job_input = None, None
        self._orphans.append((job, time.monotonic() + ORPHAN_TIMEOUT, False))
        self._send_orphan_cancels()
        self._set_busy(False)
        self.progress.emit(0, "Cancelled")
        self.message.emit("Cancelled. The source layer is unchanged.", "info")

    def refresh(self) -> None:
        """Ask the daemon again who it is and which models it has."""
        self._probe_now()

    def start_daemon(self) -> bool:
        """Start a local daemon with the configured command (`{endpoint}` filled in)."""
        if not editor.can_start_daemon(self.endpoint):
            self.message.emit(f"The daemon at {self.endpoint} is on another computer: start it there "
                              "(or set Connection > Address to a local one).", "error")
            return False
        try:
            argv = logic.daemon_command_args(self.settings.daemon_command, self.endpoint)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        if shutil.which(argv[0]) is None and not os.path.isfile(argv[0]):
            self.message.emit(
                f"Cannot start the daemon: '{argv[0]}' was not found. Install inpaintd (pip install inpaintd, "
                "or from its source folder) and run `inpaintd serve` in a terminal, or set the full command "
                "in Connection > Daemon command.", "error")
            return False
        if self._daemon_proc is not None and self._daemon_proc.poll() is None:
            self.message.emit("The daemon started from here is still starting…", "info")
            return True
        log = os.path.join(tempfile.gettempdir(), "inpaintd-krita-daemon.log")
        try:
            with open(log, "ab") as out:
                self._daemon_proc = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
        except OSError as exc:
            self.message.emit(f"Cannot start the daemon with {argv}: {exc}", "error")
            return False
        self._daemon_log = log
        self.message.emit(f"Starting the daemon: {' '.join(argv)} (log: {log})", "busy")
        self._probe_now()
        return True

    def set_endpoint(self, endpoint: str) -> None:
        if endpoint != self.settings.endpoint:
            self.settings.endpoint = endpoint
            self._drop_client()
            self.connected, self.hello, self._instance = None, None, None
            self._probe_now()

    def shutdown(self) -> None:
        self._timer.stop()
        self._drop_client()

    # -- the timer -------------------------------------------------------------------

    def _tick(self) -> None:
        if self._adding:  # re-entered from the event loop that adding layers runs (waitForDone)
            return
        try:
            self._drain_probes()
            events = []
            if self._client is not None and (self._job is not None or self._orphans):
                events = self._client.pump(0)
            self._send_orphan_cancels()
            self._reap_orphans()
            job = self._job
            if job is not None:
                for ev in events:  # every stage reaches the bar, even when several arrive in one tick
                    if ev.job == job.id and ev.type == self._proto.Type.PROGRESS:
                        b = ev.body
                        self._emit_progress(b.get("stage", ""), b.get("step", 0), b.get("total_steps", 0), b.get("position"))
                self._emit_progress(job.state if job.state in ("submitting", "queued") else job.stage,
                                    job.step, job.total_steps, job.position)
                if job.finished:
                    self._finish(job)
            elif time.monotonic() >= self._next_probe:
                self._probe_now()
            self._check_daemon_proc()
        except Exception as exc:  # never let an exception escape into Krita's event loop
            self._job, self._job_input = None, None
            self._set_busy(False)
            self.message.emit(f"Internal error in the inpaintd plugin: {exc!r}", "error")

    def _finish(self, job: Any) -> None:
        job_input = self._job_input
        self._job, self._job_input = None, None
        # Busy until the layers are in: adding them runs Krita's event loop (waitForDone),
        # and whatever checks `busy` from a timer meanwhile must not see an idle plugin
        # with no layers yet (a CI run caught the self-test reading the document then).
        self._adding = True
        try:
            self._report_end(job, job_input)
        finally:
            self._adding = False
            self._set_busy(False)

    def _report_end(self, job: Any, job_input: Any) -> None:
        if job.state == "done":
            try:
                names = self.doc_access.insert_results(job_input, job.layers)
            except Exception as exc:
                self.message.emit(f"The job finished but its layers could not be added: {exc}", "error")
                self.progress.emit(0, "Failed")
                return
            self.progress.emit(100, f"Done in {job.elapsed:.1f} s" if job.elapsed else "Done")
            seeds = ", ".join(str(layer.seed) for layer in job.layers)
            more = " The others are hidden in the group: click their eye to compare." if len(names) > 1 else ""
            notes = "".join(f"\n{note}" for note in job.notes_for_user(self.settings.prompt))
            used = f"\n{self._job_settings}." if self._job_settings else ""
            self.message.emit(f"Added {len(names)} variant layer(s) (seeds {seeds}).{more}{used}{notes}",
                              "info" if notes else "ok")
            self.results_added.emit(names)
        elif job.state == "cancelled":
            self.progress.emit(0, "Cancelled")
            self.message.emit("The daemon cancelled the job.", "info")
        elif job.state == "lost":
            self.progress.emit(0, "Lost")
            self._drop_client()
            self.connected = None
            self.message.emit(f"{job.error.message if job.error else 'The job was lost.'} "
                              "The plugin reconnects by itself; press Generate again.", "error")
            self._probe_now()
        else:
            err = job.error
            self.progress.emit(0, "Failed")
            self.message.emit(logic.error_text(err.code, err.message) if err else "The job failed.", "error")

    def _emit_progress(self, stage: str, step: int, total: int, position: int | None) -> None:
        value = (editor.progress_percent(stage, step, total), editor.progress_text(stage, step, total, position))
        if value != self._last_progress:
            self._last_progress = value
            self.progress.emit(*value)

    def _set_busy(self, busy: bool) -> None:
        self._timer.setInterval(BUSY_INTERVAL_MS if busy or self._orphans else IDLE_INTERVAL_MS)
        self.busy_changed.emit(busy)

    # -- cancelled jobs ----------------------------------------------------------------

    def _send_orphan_cancels(self) -> None:
        for i, (job, deadline, sent) in enumerate(self._orphans):
            if not sent and job.id and not job.finished and self._client is not None:
                # Fire and forget: the daemon confirms with a `cancelled` event on the job;
                # one that cannot go out now is tried again on the next tick.
                if self._client.cancel_nowait(job):
                    self._orphans[i] = (job, deadline, True)

    def _reap_orphans(self) -> None:
        now = time.monotonic()
        keep = []
        for job, deadline, sent in self._orphans:
            if job.finished or now > deadline:
                self.cancelled_final_states.append(job.state if job.finished else "no answer")
            else:
                keep.append((job, deadline, sent))
        if self._orphans and not keep and self._job is None:
            # The last cancelled job had its final word: back to the idle pace, or the
            # timer would go on ticking every 40 ms in an idle Krita until the next job.
            self._timer.setInterval(IDLE_INTERVAL_MS)
        self._orphans = keep

    # -- connection --------------------------------------------------------------------

    def _job_client(self) -> Any:
        endpoint = self.endpoint
        if self._client is None or self._client_endpoint != endpoint:
            self._drop_client()
            self._client = self._proto.Client(endpoint, name="inpaintd-krita", lost_after=15.0)
            self._client_endpoint = endpoint
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _probe_now(self) -> None:
        """Check the daemon in a thread; `_drain_probes` picks the answer up."""
        self._next_probe = time.monotonic() + (PROBE_EVERY_CONNECTED if self.connected else PROBE_EVERY_DISCONNECTED)
        if self._probe_running or self._proto is None:
            return
        self._probe_running = True
        endpoint = self.endpoint
        threading.Thread(target=self._probe, args=(endpoint,), name="inpaintd-probe", daemon=True).start()

    def _probe(self, endpoint: str) -> None:
        hello: dict | None = None
        models: list = []
        error = ""
        try:
            # A fresh client each time re-reads the connection file, so a daemon that
            # restarted with a new signing key is picked up without the artist noticing.
            with self._proto.Client(endpoint, name="inpaintd-krita-probe") as client:
                hello = client.hello(timeout=1.5)
                models = client.models(timeout=3.0)
        except Exception as exc:
            error = str(exc) if hello is None else ""
            if hello is None:
                error = "no answer" if "no inpaintd daemon answered" in error else error
        self._probe_results.put((endpoint, hello, models, error))

    def _drain_probes(self) -> None:
        while True:
            try:
                endpoint, hello, models, error = self._probe_results.get_nowait()
            except queue.Empty:
                return
            self._probe_running = False
            if endpoint != self.endpoint:
                continue
            was = self.connected
            self.connected = hello is not None
            if hello is not None:
                instance = hello.get("instance")
                if self._instance is not None and instance != self._instance and self._job is None:
                    self._drop_client()  # restarted daemon: new key, new client
                self._instance = instance
                self.hello = hello
                if models != self.models or was is not True:
                    self.models = models
                    self.models_changed.emit(logic.model_choices(models))
                if was is False:
                    self.message.emit("Connected to the daemon.", "ok")
            else:
                self.hello = None
                if self.settings.autostart and was is None:
                    self.start_daemon()
            self.connection_changed.emit(logic.connection_text(endpoint, hello, error), bool(hello))
            self._next_probe = time.monotonic() + (PROBE_EVERY_CONNECTED if hello else PROBE_EVERY_DISCONNECTED)

    def _check_daemon_proc(self) -> None:
        proc = self._daemon_proc
        if proc is not None and proc.poll() is not None:
            self._daemon_proc = None
            if proc.returncode:
                self.message.emit(f"The daemon exited with code {proc.returncode}; see {self._daemon_log}", "error")

    def _not_running_hint(self) -> str:
        return ("Press 'Start daemon', or run `inpaintd serve` in a terminal "
                "(check Connection > Address if it runs elsewhere).")
