"""The job life cycle, driven by a QTimer on Krita's GUI thread.

Why a timer and not a worker thread: Krita's document API must be called on the GUI
thread, and a ZeroMQ socket belongs to one thread.  The client is non-blocking
(`submit(block=False)` + `pump()`), so a 40 ms timer reads whatever the daemon sent and
returns at once; the GUI never waits on the network.  Jobs (Generate, Vary, Remix, and a
Teach subject's `train`, which runs beside them) go through that client.  The blocking exchanges, asking the daemon who it is (hello + model
list) and the artist's loop's requests that are not jobs (`history`, `history_star`,
`fetch` for Apply as layer, `styles`, `style_save`, `loras`), run in short-lived threads, each with
its own socket and a short timeout, and hand their answers back through queues the timer
drains: the GUI thread never waits on them.

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
from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QObject, QTimer, pyqtSignal

from inpaintd_protocol import editor
from inpaintd_protocol.options import KRITA

from . import logic, loop
from . import loras as lora_rules
from .logic import Settings, UserError

#: How often the timer runs while a job is in flight, and while idle.
BUSY_INTERVAL_MS = 40
IDLE_INTERVAL_MS = 250
#: Seconds between connection checks while idle (connected / not connected).
PROBE_EVERY_CONNECTED = 5.0
PROBE_EVERY_DISCONNECTED = 2.0
#: How long to keep listening to a cancelled job for its final word.
ORPHAN_TIMEOUT = 30.0
#: Timeouts of the loop's requests in their threads: short for the small ones, longer
#: for `fetch`, whose reply carries every layer of a job.
REQUEST_TIMEOUT = 2.0
FETCH_TIMEOUT = 20.0


def _fetch_layers(client: Any, job_id: str) -> list[Any]:
    """A finished job's layers (`fetch`, from the history where the daemon no longer keeps
    it in memory), their pixels copied out of the reply before its socket closes."""
    job = client.fetch(job_id, timeout=FETCH_TIMEOUT)
    if job.state != "done":
        reason = job.error.message if job.error is not None else f"the job ended {job.state}"
        raise UserError(f"no layers to bring back: {reason}")
    for layer in job.layers:
        layer.data, layer.stride = memoryview(layer.tight_bytes()), layer.width * 4
    return list(job.layers)


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
    #: [loop.HistoryCard], newest first; and a line about the history (how many, or why none).
    history_changed = pyqtSignal(list, str)
    #: the daemon's styles (`styles` reply entries).
    styles_changed = pyqtSignal(list)
    #: the daemon's LoRAs (`loras` reply entries, PROTOCOL.md 5.13).
    loras_changed = pyqtSignal(list)
    #: whether a training (Teach subject) runs.
    training_changed = pyqtSignal(bool)

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
        self._seen_instance: str | None = None  # the daemon whose history and styles were asked for
        self._probe_results: queue.Queue[tuple[str, dict | None, list, str]] = queue.Queue()
        self._probe_running = False
        self._next_probe = 0.0
        self._daemon_proc: subprocess.Popen | None = None
        self._daemon_log = ""
        self._last_progress: tuple[int, str] | None = None
        # the artist's loop
        #: The running vary's preset, options to send again with its pixels, its name, and its LoRAs and references.
        self._vary_request: tuple[str, dict[str, Any], str, dict[str, Any]] | None = None
        self._answers: queue.Queue[tuple[Callable[[Any, Exception | None], None], Any, Exception | None]] = queue.Queue()
        self._history_running = False
        self._history_again = False
        self.history: list[loop.HistoryCard] = []
        self.styles: list[dict[str, Any]] = []
        #: The reference layer's id ("" none), sent with Generate where the model takes references.
        self.reference_layer = ""
        #: The daemon's LoRAs (its `loras` reply); None until it answered.
        self.loras: list[dict[str, Any]] | None = None
        #: The running training (Teach subject) and what was asked for.
        self._train_job: Any = None
        self._train_request: lora_rules.TeachRequest | None = None
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
        if not self._can_start():
            return False
        try:
            job_input = self.doc_access.capture(self.settings)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        if not self._check_connected():
            return False
        caps = self.model_caps()
        sent = editor.for_model(self.settings.job_options(), caps)
        references = self._references(job_input.document)
        if references is None:
            return False
        try:
            client = self._job_client()
            options = self._proto.JobOptions(**sent)
            region = job_input.region
            job = client.submit(job_input.rgba, region.width, region.height, 4, job_input.mask, options,
                                references=references, loras=self.lora_payload(), block=False)
        except Exception as exc:  # a bad endpoint, a closed context: say it, never raise into Krita
            self.message.emit(f"Could not send the job: {exc}", "error")
            return False
        job_input.options = dict(sent)
        mb = (len(job_input.rgba) + len(job_input.mask) + sum(len(r[0]) for r in references)) / 1e6
        with_reference = f" with a {references[0][1]}x{references[0][2]} reference" if references else ""
        used = editor.settings_text(sent, caps)
        payload = self.lora_payload()
        if payload:
            used += ("; " if used else "") + "LoRA " + ", ".join(f"{name} {weight:g}" for name, weight in payload)
        self._start(job, job_input, used,
                    f"Sent {region.width}x{region.height} px{with_reference} ({mb:.1f} MB) to {self.endpoint}.")
        return True

    def _can_start(self) -> bool:
        if self._proto is None:
            self.message.emit(self.import_error, "error")
            return False
        if self.busy:
            self.message.emit("A job is already running; wait for it or press Cancel.", "error")
            return False
        return True

    def _check_connected(self) -> bool:
        if self.connected is False:
            hint = self._not_running_hint()
            self.message.emit(f"No inpaintd daemon answers at {self.endpoint}. {hint}", "error")
            self._probe_now()
            return False
        return True

    def _start(self, job: Any, job_input: Any, settings_text: str, text: str) -> None:
        """A job went out: track it until its layers are in."""
        self._job, self._job_input = job, job_input
        self._job_settings = settings_text
        self._last_progress = None
        self._set_busy(True)
        self._emit_progress("submitting", 0, 0, None)
        self.message.emit(text, "busy")

    # -- the artist's loop: Vary, Remix, the history, styles -----------------------------

    def vary(self, preset: str = "subtle") -> bool:
        """New variants of the selected result layer, inside the same mask (PROTOCOL.md 5.10):
        `preset` "subtle" or "strong"; new seeds; the layers go in a new group above its group."""
        return self._vary_selected(preset, remix=False)

    def remix(self) -> bool:
        """A vary of the selected result layer with the docker's prompt, and whatever other
        option the artist changed since that job."""
        return self._vary_selected(loop.REMIX_PRESET, remix=True)

    def _references(self, document: Any) -> list[tuple[bytes, int, int, int]] | None:
        """The docker's reference layer as a job's reference image (none where no layer is
        picked or the model takes none); None, with a message, when the layer is gone."""
        if not (self.reference_layer and self.takes_reference()):
            return []
        reference = self.doc_access.reference_image(document, self.reference_layer)
        if reference is None:
            self.message.emit("The reference layer is gone from this document, or empty: pick another "
                              "(or None) under Reference layer.", "error")
            return None
        return [reference]

    def _vary_selected(self, preset: str, remix: bool) -> bool:
        if not self._can_start():
            return False
        try:
            job_input = self.doc_access.selected_result()
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        if not self._check_connected():
            return False
        changes: dict[str, Any] = {}
        addons: dict[str, Any] = {}  # a Vary keeps the job's LoRAs and reference; a Remix sends the docker's
        if remix:
            changes = loop.remix_options(editor.for_model(self.settings.job_options(), self.model_caps()),
                                         job_input.options)
            job_input.prompt = changes["prompt"]
            references = self._references(job_input.document)
            if references is None:
                return False
            addons = {"loras": self.lora_payload(), "references": references}
        return self._send_vary(job_input, preset, changes, "Remix" if remix else loop.PRESETS.get(preset, preset), addons)

    def vary_history(self, card: loop.HistoryCard, preset: str = "subtle") -> bool:
        """Vary a history entry's first variant; the layers go where the entry's would (history_input)."""
        if not self._can_start():
            return False
        try:
            job_input = self.doc_access.history_input(card)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        if not self._check_connected():
            return False
        job_input.vary_of = loop.ResultRef(card.job, 0)
        return self._send_vary(job_input, preset, {}, loop.PRESETS.get(preset, preset))

    def _send_vary(self, job_input: Any, preset: str, changes: dict[str, Any], what: str,
                   addons: dict[str, Any] | None = None, pixels: tuple[Any, ...] | None = None) -> bool:
        """`addons`: the vary's `loras` and `references` where it changes them (a Remix)."""
        ref = job_input.vary_of
        addons = addons or {}
        try:
            job = self._job_client().vary(ref.job, ref.variant, preset=preset, options=changes or None,
                                          pixels=pixels, block=False, **addons)
        except Exception as exc:
            self.message.emit(f"Could not send the vary: {exc}", "error")
            return False
        original = job_input.options
        job_input.options = loop.varied_options(original, changes, loop.preset_strength(self.hello, preset))
        self._vary_request = (preset, loop.resend_options(original, changes), what, addons) if pixels is None else None
        how = "with the layer's pixels, " if pixels is not None else ""
        self._start(job, job_input, "", f"{what} of job {ref.job} variant {ref.variant + 1} sent ({how}new seeds).")
        return True

    def _resend_vary_with_pixels(self, job_input: Any) -> bool:
        """A vary of a job the daemon no longer keeps (`expired`): send the layer's pixels
        and the selection over them instead.  False when that cannot be done (message said)."""
        request, self._vary_request = self._vary_request, None
        if request is None:
            return False
        preset, options, what, addons = request
        try:
            rgba, mask, plan = self.doc_access.vary_pixels(job_input)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        job_input.plan = plan
        r = plan.crop
        # the daemon knows none of the job's options now: they all go with the pixels
        job_input.options = options
        return self._send_vary(job_input, preset, options, what, addons, pixels=(rgba, r.width, r.height, 4, mask, 0, 0))

    def apply_history(self, card: loop.HistoryCard) -> bool:
        """Bring a history entry back as layers (`fetch`), where its job put them."""
        if self._proto is None:
            self.message.emit(self.import_error, "error")
            return False
        try:
            target = self.doc_access.history_input(card)
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        target.job_id = card.job
        self.message.emit(f"Bringing back job {card.job} from the history…", "busy")
        self._request(lambda c: _fetch_layers(c, card.job), lambda layers, error: self._applied(target, layers, error))
        return True

    def _applied(self, target: Any, layers: Any, error: Exception | None) -> None:
        if error is not None:
            code = getattr(error, "code", "")
            why = ("the daemon no longer keeps its pixels (expired)" if code == "expired" else str(error))
            self.message.emit(f"Could not bring job {target.job_id} back: {why}", "error")
            return
        self._adding = True
        try:
            names = self.doc_access.insert_results(target, layers)
        except Exception as exc:
            self.message.emit(f"The job's layers could not be added: {exc}", "error")
            return
        finally:
            self._adding = False
        self.message.emit(f"Brought back {len(names)} layer(s) of job {target.job_id} from the history.", "ok")
        self.results_added.emit(names)

    def star(self, card: loop.HistoryCard, starred: bool = True) -> None:
        """Star (kept whatever the history's size) or unstar a history entry."""
        self._request(lambda c: c.star(card.job, starred, timeout=REQUEST_TIMEOUT),
                      lambda _entry, error: self._starred(card, starred, error))

    def _starred(self, card: loop.HistoryCard, starred: bool, error: Exception | None) -> None:
        if error is not None:
            self.message.emit(f"Could not {'star' if starred else 'unstar'} job {card.job}: {error}", "error")
            return
        self.message.emit(f"{'Starred' if starred else 'Unstarred'} “{editor.short_prompt(card.prompt)}”.", "ok")
        self.refresh_history()

    def refresh_history(self) -> None:
        """Ask for the newest history entries (at most one request at a time; a refresh
        asked for meanwhile follows it)."""
        if self._proto is None:
            return
        if self._history_running:
            self._history_again = True
            return
        self._history_running = True
        self._request(lambda c: c.history(limit=loop.STRIP_SIZE, timeout=REQUEST_TIMEOUT), self._got_history)

    def _got_history(self, reply: Any, error: Exception | None) -> None:
        self._history_running = False
        if error is None:
            self.history = loop.history_cards(reply)
            total = reply.get("total", len(self.history))
            status = f"History: the {len(self.history)} newest of {total}" if total > len(self.history) else "History"
            self.history_changed.emit(self.history, status)
        elif getattr(error, "code", "") == "expired":  # a daemon that keeps no history
            self.history = []
            self.history_changed.emit([], "This daemon keeps no history (serve --history-mb 0).")
        else:
            self.history_changed.emit(self.history, f"The history could not be read: {error}")
        if self._history_again:
            self._history_again = False
            self.refresh_history()

    def refresh_styles(self) -> None:
        if self._proto is not None:
            self._request(lambda c: c.styles(timeout=REQUEST_TIMEOUT), self._got_styles)

    def _got_styles(self, styles: Any, error: Exception | None) -> None:
        if error is None:
            self.styles = list(styles)
            self.styles_changed.emit(self.styles)

    def save_style(self, name: str) -> bool:
        """Save the docker's settings as the user style `name` on the daemon (style_save)."""
        problem = loop.style_name_problem(name)
        if problem:
            self.message.emit(problem, "error")
            return False
        if self._proto is None:
            self.message.emit(self.import_error, "error")
            return False
        entry = self.model_entry()
        style = loop.style_to_save(self.settings.job_options(), str((entry or {}).get("family") or ""))
        self._request(lambda c: c.save_style(name, style, timeout=REQUEST_TIMEOUT),
                      lambda saved, error: self._style_saved(name, saved, error))
        return True

    def _style_saved(self, name: str, saved: Any, error: Exception | None) -> None:
        if error is not None:
            self.message.emit(f"Could not save the style '{name}': {error}", "error")
            return
        kept = ", ".join(k for k in ("prompt", *loop.STYLE_SETTINGS) if k in (saved or {}).get("settings", {})
                         or (k == "prompt" and (saved or {}).get("prompt")))
        self.message.emit(f"Saved the style '{name}' ({kept or 'no settings but the defaults'}); pick it under Style.",
                          "ok")
        self.refresh_styles()

    # -- LoRAs and Teach subject -----------------------------------------------------------

    def model_family(self) -> str:
        """The picked model's family ("" where the daemon does not say)."""
        return str((self.model_entry() or {}).get("family") or "")

    def lora_payload(self) -> list[tuple[str, float]]:
        """The chosen LoRAs a job sends (loras.loras_payload), none for a model that takes none."""
        if not lora_rules.takes_lora(self.model_entry()):
            return []
        return lora_rules.loras_payload(lora_rules.parse_chosen(self.settings.loras), self.loras, self.model_family())

    def refresh_loras(self) -> None:
        if self._proto is not None:
            self._request(lambda c: c.request("loras", timeout=REQUEST_TIMEOUT).body, self._got_loras)

    def _got_loras(self, body: Any, error: Exception | None) -> None:
        if error is None:
            self.loras = [dict(x) for x in (body or {}).get("loras") or []]
            self.loras_changed.emit(self.loras)

    @property
    def training(self) -> bool:
        return self._train_job is not None

    def teach(self, request: lora_rules.TeachRequest) -> bool:
        """Teach the daemon a subject from the selected paint layers (PROTOCOL.md 5.14): a
        LoRA trained in the background, its progress on the bar; False (with a message)
        when nothing was sent."""
        if self._proto is None:
            self.message.emit(self.import_error, "error")
            return False
        if self._train_job is not None:
            self.message.emit("A subject is being taught already; wait for it or press Cancel.", "error")
            return False
        try:
            pictures = self.doc_access.training_pictures()
        except UserError as exc:
            self.message.emit(str(exc), "error")
            return False
        problem = lora_rules.teach_problem(request, len(pictures), self.loras or [], self.model_family())
        if problem:
            self.message.emit(problem, "error")
            return False
        if not self._check_connected():
            return False
        try:
            job = self._job_client().train(pictures, request.token.strip(), request.class_noun.strip(),
                                           request.name.strip(), block=False,
                                           **lora_rules.train_settings(request, self.settings.model))
        except Exception as exc:
            self.message.emit(f"Could not send the training: {exc}", "error")
            return False
        self._train_job, self._train_request = job, request
        self._timer.setInterval(BUSY_INTERVAL_MS)
        self.training_changed.emit(True)
        if self._job is None:
            self.progress.emit(0, "Training: waiting")
        self.message.emit(f"Teaching “{request.token.strip()} {request.class_noun.strip()}” from {len(pictures)} "
                          f"pictures as the LoRA '{request.name.strip()}' ({request.steps} steps). Krita stays free; "
                          "Generate works meanwhile.", "busy")
        return True

    def cancel_training(self) -> None:
        job = self._train_job
        if job is None:
            return
        self._train_job, self._train_request = None, None
        self._orphans.append((job, time.monotonic() + ORPHAN_TIMEOUT, False))
        self._send_orphan_cancels()
        self.training_changed.emit(False)
        if self._job is None:
            self.progress.emit(0, "Cancelled")
        self.message.emit("Cancelled the training (sending it again resumes from its last checkpoint).", "info")

    def _pump_training(self, events: list[Any]) -> None:
        job = self._train_job
        if job is None:
            return
        if self._job is None:  # the bar is the inpaint job's while one runs
            for ev in events:
                if ev.job == job.id and ev.type == self._proto.Type.PROGRESS:
                    b = ev.body
                    self._emit_training(b.get("stage", ""), b.get("step", 0), b.get("total_steps", 0),
                                        b.get("loss"), b.get("remaining"))
            self._emit_training(job.stage if job.state not in ("submitting", "queued") else job.state,
                                job.step, job.total_steps, job.loss, job.remaining)
        if not job.finished:
            return
        request = self._train_request or lora_rules.TeachRequest()
        self._train_job, self._train_request = None, None
        self.training_changed.emit(False)
        if job.state == "done":
            if self._job is None:
                self.progress.emit(100, "Training done")
            self.message.emit(lora_rules.trained_text(job.result.get("trained") or {}, request), "ok")
            self.refresh_loras()
        else:
            if self._job is None:
                self.progress.emit(0, "Training failed" if job.state != "cancelled" else "Cancelled")
            err = job.error
            why = logic.error_text(err.code, err.message) if err else f"it ended {job.state}"
            self.message.emit(f"The training did not finish: {why}", "error")

    def _emit_training(self, stage: str, step: int, total: int, loss: Any, remaining: Any) -> None:
        value = lora_rules.training_progress(stage, step, total, loss, remaining)
        if value != self._last_progress:
            self._last_progress = value
            self.progress.emit(*value)

    def model_entry(self) -> dict[str, Any] | None:
        """The `models` entry of the model picked in the settings ("" = the daemon's default)."""
        default = str((self.hello or {}).get("default_model") or "")
        entry = editor.find_model(self.models, self.settings.model, default)
        return dict(entry) if entry is not None else None

    def takes_reference(self) -> bool:
        return loop.takes_reference(self.model_entry())

    def _request(self, call: Callable[[Any], Any], then: Callable[[Any, Exception | None], None]) -> None:
        """`call(client)` in a thread with its own client; `then(result, error)` on the GUI
        thread (the timer drains the answers)."""
        endpoint = self.endpoint

        def run() -> None:
            result: Any = None
            error: Exception | None = None
            try:
                with self._proto.Client(endpoint, name="inpaintd-krita-loop") as client:
                    result = call(client)
            except Exception as exc:
                error = exc
            self._answers.put((then, result, error))

        threading.Thread(target=run, name="inpaintd-request", daemon=True).start()
        self._timer.setInterval(BUSY_INTERVAL_MS)  # pick the answer up soon

    def _drain_answers(self) -> None:
        while True:
            try:
                then, result, error = self._answers.get_nowait()
            except queue.Empty:
                return
            try:
                then(result, error)
            except Exception as exc:  # never into Krita's event loop, and never the running job's end
                self.message.emit(f"Internal error in the inpaintd plugin: {exc!r}", "error")
            if self._job is None and not self._orphans and self._train_job is None:
                self._timer.setInterval(IDLE_INTERVAL_MS)

    def model_caps(self) -> editor.ModelCaps:
        """What the model picked in the settings ("" = the daemon's default) takes and
        starts from, by the daemon's last `models` reply; empty where it does not say."""
        return editor.model_caps(self.model_entry(), KRITA)

    def cancel(self) -> None:
        """Stop the running job now: the GUI is free at once, the daemon is told to stop,
        and whatever the job still produces is thrown away."""
        job = self._job
        if job is None:
            self.cancel_training()
            return
        self._job, self._job_input, self._vary_request = None, None, None
        self._orphans.append((job, time.monotonic() + ORPHAN_TIMEOUT, False))
        self._send_orphan_cancels()
        self._set_busy(False)
        self.progress.emit(0, "Cancelled")
        self.message.emit("Cancelled. The source layer is unchanged.", "info")

    def refresh(self) -> None:
        """Ask the daemon again who it is, which models and styles it has, and its history."""
        self._probe_now()
        if self.connected:
            self.refresh_history()
            self.refresh_styles()
            self.refresh_loras()

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
            self._drain_answers()
            events = []
            if self._client is not None and (self._job is not None or self._orphans or self._train_job is not None):
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
            self._pump_training(events)
            if job is None and time.monotonic() >= self._next_probe:
                self._probe_now()
            self._check_daemon_proc()
        except Exception as exc:  # never let an exception escape into Krita's event loop
            self._job, self._job_input = None, None
            self._set_busy(False)
            self.message.emit(f"Internal error in the inpaintd plugin: {exc!r}", "error")

    def _finish(self, job: Any) -> None:
        job_input = self._job_input
        self._job, self._job_input = None, None
        if (job.state == "failed" and job.error is not None and job.error.code == "expired"
                and self._vary_request is not None and job_input is not None and job_input.source is not None):
            if not self._resend_vary_with_pixels(job_input):  # sent again with the layer's pixels, or said why not
                self._set_busy(False)
                self.progress.emit(0, "Failed")
            return
        self._vary_request = None
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
            job_input.job_id = job.id or ""
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
            self.refresh_history()
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
        self._timer.setInterval(BUSY_INTERVAL_MS if busy or self._orphans or self._train_job is not None
                                else IDLE_INTERVAL_MS)
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
        if self._orphans and not keep and self._job is None and self._train_job is None:
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
                if (self._instance is not None and instance != self._instance and self._job is None
                        and self._train_job is None):
                    self._drop_client()  # restarted daemon: new key, new client
                self._instance = instance
                self.hello = hello
                if models != self.models or was is not True:
                    self.models = models
                    self.models_changed.emit(logic.model_choices(models))
                if was is not True or instance != self._seen_instance:
                    self._seen_instance = instance
                    self.refresh_history()  # on connect (and a restarted daemon): its history, styles, LoRAs
                    self.refresh_styles()
                    self.refresh_loras()
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
