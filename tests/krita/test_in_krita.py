"""Tests that run inside the real Krita (started by tests/test_krita_plugin.py through
kritarunner under xvfb): a real window and view, real documents, the plugin's own
controller, docker panel and Krita glue, and a real inpaintd daemon over ZeroMQ.

The daemon comes from the environment (INPAINTD_ENDPOINT / INPAINTD_KEY /
INPAINTD_RUNTIME_DIR); INPAINTD_TEST_ROOT is the source checkout and
INPAINTD_TEST_PYTHON the interpreter that can run `-m inpaintd`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from krita import Krita, Selection  # type: ignore
from PyQt5.QtCore import QByteArray
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QApplication

from inpaintd_krita import kritadoc, logic
from inpaintd_krita.controller import IDLE_INTERVAL_MS, Controller
from inpaintd_krita.docker import InpaintPanel
from inpaintd_krita.logic import Settings
from inpaintd_protocol import editor
from inpaintd_protocol.options import KRITA

ROOT = Path(os.environ.get("INPAINTD_TEST_ROOT", Path(__file__).resolve().parents[2]))
PHOTO = ROOT / "backend" / "inpaintd" / "assets" / "coffee.jpg"
sys.path.insert(0, str(ROOT))
from inpaintd_protocol import Client, Type  # noqa: E402

# -- helpers ------------------------------------------------------------------------------


def pump(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.005)


def wait_for(pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QApplication.processEvents()
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    return pred()


def photo_bgra(width: int, height: int) -> bytes:
    """The bundled photo scaled to the size wanted, as Krita's BGRA bytes."""
    img = QImage(str(PHOTO))
    assert not img.isNull(), f"cannot read {PHOTO}"
    img = img.scaled(width, height).convertToFormat(QImage.Format_ARGB32)  # B,G,R,A in memory
    ptr = img.constBits()
    ptr.setsize(img.byteCount())
    data = bytes(ptr)
    assert len(data) == width * height * 4
    return data


def as_array(data: Any, w: int, h: int, channels: int = 4) -> np.ndarray:
    pixels = np.frombuffer(bytes(data), np.uint8)
    return pixels.reshape(h, w, channels) if channels > 1 else pixels.reshape(h, w)


def soft_ellipse(doc: Any, cx: int, cy: int, rx: int, ry: int, soft: int) -> None:
    """A feathered elliptical selection: 255 inside, a linear ramp `soft` px wide at the edge."""
    x0, y0, w, h = cx - rx - 2, cy - ry - 2, 2 * rx + 5, 2 * ry + 5
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    value = np.clip((1.0 - d) * min(rx, ry) / soft, 0.0, 1.0)
    mask = np.round(value * 255).astype(np.uint8)
    sel = Selection()
    sel.select(x0, y0, w, h, 255)
    sel.setPixelData(QByteArray(mask.tobytes()), x0, y0, w, h)
    doc.setSelection(sel)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation of a boolean array by r pixels (numpy only)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for s in range(1, r + 1):
            if axis == 0:
                out[s:, :] |= src[:-s, :]
                out[:-s, :] |= src[s:, :]
            else:
                out[:, s:] |= src[:, :-s]
                out[:, :-s] |= src[:, s:]
    return out


def node_names(node: Any) -> list[str]:
    return [c.name() for c in node.childNodes()]


def digest(node: Any, doc: Any) -> str:
    return hashlib.sha256(bytes(node.pixelData(0, 0, doc.width(), doc.height()))).hexdigest()


class Spy:
    """kritadoc with a record of what was sent and what came back."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []
        self.results: list[tuple[Any, list[tuple[int, int, int, int, int, int]]]] = []
        self.controller: Any = None  # set by the fixture: what `busy` said once the layers were in
        self.busy_after_adding: list[bool] = []

    def capture(self, settings: Settings) -> Any:
        job_input = kritadoc.capture(settings)
        self.inputs.append(job_input)
        return job_input

    def insert_results(self, job_input: Any, layers: list) -> list[str]:
        self.results.append((job_input, [(layer.index, layer.seed, layer.x, layer.y, layer.width, layer.height) for layer in layers]))
        names = kritadoc.insert_results(job_input, layers)  # runs Krita's event loop (waitForDone)
        if self.controller is not None:
            self.busy_after_adding.append(self.controller.busy)
        return names


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def window() -> Any:
    win = Krita.instance().openWindow()  # not shown: under xvfb there is no OpenGL canvas to show
    yield win


@pytest.fixture
def open_doc(window: Any) -> Callable[..., Any]:
    opened: list[Any] = []

    def make(width: int, height: int, model: str = "RGBA", depth: str = "U8", photo: bool = True) -> Any:
        doc = Krita.instance().createDocument(width, height, f"test-{len(opened)}", model, depth, "", 72.0)
        window.addView(doc)
        QApplication.setActiveWindow(window.qwindow())
        pump(0.05)
        assert Krita.instance().activeDocument() == doc
        src = doc.topLevelNodes()[0]
        doc.setActiveNode(src)  # as an artist would click it; a fresh view may still point at the root
        assert wait_for(lambda: doc.activeNode() is not None and doc.activeNode().name() == src.name(), 5)
        if photo and (model, depth) == ("RGBA", "U8"):
            src.setPixelData(QByteArray(photo_bgra(width, height)), 0, 0, width, height)
            doc.waitForDone()
            doc.refreshProjection()
        opened.append(doc)
        return doc

    yield make
    for doc in opened:
        doc.setModified(False)
        doc.close()
    pump(0.05)


@pytest.fixture
def plugin() -> Any:
    """A controller + docker panel wired the way the installed plugin wires them."""
    spy = Spy()
    settings = Settings(prompt="an empty saucer", variants=2, grow=4, feather=8, seed=1234)
    controller = Controller(settings, spy)
    spy.controller = controller
    panel = InpaintPanel(controller)
    panel.show()
    assert wait_for(lambda: controller.connected, 10), "the plugin did not connect to the test daemon"
    yield controller, panel, spy
    controller.cancel()
    controller.shutdown()
    panel.close()


def run_job(controller: Controller, timeout: float = 60.0) -> None:
    said: list[str] = []
    controller.message.connect(lambda text, level: said.append(text))
    assert controller.generate(), f"generate() refused the job: {said}"
    assert controller.busy
    assert wait_for(lambda: not controller.busy, timeout), "the job did not finish"


def test_the_dockers_controls_are_made_from_the_option_table(plugin: Any) -> None:
    """Every job option Krita shows has its control, with the table's range, choices,
    tooltip and the settings' value; changing it changes the settings."""
    controller, panel, _spy = plugin
    assert list(panel.option_widgets) == [o.name for o in editor.shown_in(KRITA)]
    caps = controller.model_caps()  # the classical default ignores some: their tooltips say so
    assert caps.known and "negative_prompt" in caps.disabled and not panel.option_widgets["negative_prompt"].isEnabled()
    for opt in editor.shown_in(KRITA):
        widget = panel.option_widgets[opt.name]
        assert widget.toolTip() == (caps.disabled.get(opt.name) or opt.tip), opt.name
        assert widget.isEnabled() == (opt.name not in caps.disabled), opt.name
        if opt.kind in (int, float) and opt.name != "model":
            assert (widget.minimum(), widget.maximum()) == pytest.approx(editor.bounds(opt)), opt.name
            assert widget.value() == pytest.approx(getattr(controller.settings, opt.name)), opt.name
            assert widget.specialValueText() == opt.special, opt.name
        elif opt.choices:
            assert [widget.itemData(i) for i in range(widget.count())] == list(opt.choices), opt.name
    panel.seed.setValue(-1)
    assert panel.seed.text() == "random" and controller.settings.job_options()["seed"] == -1
    panel.option_widgets["fill"].setCurrentIndex(2)
    assert controller.settings.fill == panel.option_widgets["fill"].itemData(2) == "neutral"
    panel.color_match.setChecked(True)
    assert controller.settings.job_options()["color_match"] is True


# -- the main path ----------------------------------------------------------------------------


def check_variants(doc: Any, source: Any, spy: Spy, grow: int, feather: int) -> Any:
    """The assertions every finished job must pass; returns the result group."""
    job_input, layers = spy.results[-1]
    parent = source.parentNode()
    siblings = parent.childNodes()
    index = [c.name() for c in siblings].index(source.name())
    group = siblings[index + 1]  # directly above the source
    assert group.type() == "grouplayer"
    assert group.name() == editor.group_name(job_input.prompt)
    variants = group.childNodes()[::-1]  # childNodes is bottom to top; variant 1 is on top
    assert len(variants) == len(layers) >= 1
    sel = doc.selection()
    sel_mask = as_array(sel.pixelData(0, 0, doc.width(), doc.height()), doc.width(), doc.height(), 1)
    keep = ~dilate(sel_mask > 0, grow + feather + 2)
    for node, (idx, seed, x, y, w, h) in zip(variants, layers, strict=True):
        assert node.type() == "paintlayer"
        assert f"seed {seed}" in node.name() and node.name() == editor.variant_name(idx, len(layers), seed)
        assert node.visible() == (idx == 0)
        place = job_input.plan.place(x, y, w, h)
        b = node.bounds()
        assert (b.x(), b.y(), b.width(), b.height()) == place.as_tuple(), "result layer not at the daemon's offset/size"
        assert place.contains(job_input.plan.selection), "the result does not cover the selection"
        got = as_array(node.pixelData(*place.as_tuple()), w, h)
        src = as_array(source.pixelData(*place.as_tuple()), w, h)
        k = keep[place.y : place.bottom, place.x : place.right]
        assert k.any()
        bad = np.argwhere((got != src).any(axis=2) & k)
        assert not len(bad), f"{len(bad)} pixels outside the feathered selection differ, first at {bad[:3] + [place.y, place.x]}"
        inside = (sel_mask[place.y : place.bottom, place.x : place.right] == 255)
        assert (got != src).any(axis=2)[inside].mean() > 0.2, "nothing was inpainted inside the selection"
    return group


def test_generate_puts_variants_over_the_selection(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(1800, 1200)  # larger than the minimum context: the sent image is a crop
    source = doc.activeNode()
    soft_ellipse(doc, 1250, 700, 110, 70, soft=20)
    before = digest(source, doc)
    names_before = node_names(doc.rootNode())
    t = time.perf_counter()
    run_job(controller)
    elapsed = time.perf_counter() - t
    assert spy.results, f"no results; messages: {panel.message_log[-3:]}"
    # whatever polls `busy` while the layers go in (Krita's event loop runs then) must not
    # see an idle plugin before they are there
    assert spy.busy_after_adding == [True]
    job_input = spy.results[-1][0]
    assert job_input.region != logic.Rect(0, 0, 1800, 1200) and job_input.region.x > 0 and job_input.region.y > 0
    check_variants(doc, source, spy, grow=4, feather=8)
    assert digest(source, doc) == before, "the source layer was modified"
    assert wait_for(lambda: doc.activeNode().name() == source.name(), 2), "the source should stay active for the next Generate"
    # progress reached the UI: the bar showed stages between "Sending" and "Done"
    texts = [t for _, t in panel.progress_log]
    assert texts[0] == "Sending…"
    assert any(t not in ("Sending…",) and not t.startswith("Done") for t in texts), texts
    assert panel.progress_bar.value() == 100 and panel.progress_bar.format().startswith("Done")
    assert "Added 2 variant" in panel.message_label.text()
    # a classical daemon does not use the prompt, and the docker says so
    assert "The prompt was not used" in panel.message_label.text()
    assert panel.generate_button.isEnabled() and not panel.cancel_button.isEnabled()
    # one undo removes the group with every variant; the source stays as it was
    undo = Krita.instance().action("edit_undo")
    assert undo is not None and undo.isEnabled()
    undo.trigger()
    doc.waitForDone()
    pump(0.1)
    assert node_names(doc.rootNode()) == names_before
    assert digest(source, doc) == before
    print(f"\n[timing] 1800x1200 document, 2 variants, crop {job_input.region}: {elapsed:.2f} s")


def test_moved_layer_and_selection_past_the_canvas(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(600, 400, photo=False)
    source = doc.activeNode()
    source.setPixelData(QByteArray(photo_bgra(600, 400)), 0, 0, 600, 400)
    source.move(-40, 30)  # layer offset: its pixels now sit at (-40, 30)..(560, 430)
    doc.waitForDone()
    soft_ellipse(doc, 540, 60, 120, 90, soft=15)  # reaches past the right and top edges
    before = digest(source, doc)
    run_job(controller)
    assert spy.results, panel.message_log[-3:]
    job_input = spy.results[-1][0]
    assert job_input.plan.selection.right == 600 and job_input.plan.selection.y == 0  # clipped to the canvas
    check_variants(doc, source, spy, grow=4, feather=8)
    assert digest(source, doc) == before


def test_visible_composite_from_a_group_layer(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(600, 400)
    group = doc.createGroupLayer("a group")
    doc.rootNode().addChildNode(group, None)
    doc.setActiveNode(group)
    pump(0.05)
    soft_ellipse(doc, 300, 200, 60, 40, soft=10)
    controller.settings.use_composite = False
    assert not controller.generate()
    assert "group layer" in panel.message_label.text()
    controller.settings.use_composite = True
    run_job(controller)
    assert spy.results and spy.results[-1][0].source is None
    assert "Added" in panel.message_label.text()


# -- refusals -------------------------------------------------------------------------------


def test_no_selection_says_so_and_sends_nothing(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(300, 200)
    names = node_names(doc.rootNode())
    assert not controller.generate()
    assert not controller.busy and not spy.inputs
    assert "Nothing is selected" in panel.message_label.text()
    assert node_names(doc.rootNode()) == names


@pytest.mark.parametrize("model,depth", [("GRAYA", "U8"), ("RGBA", "U16")])
def test_wrong_color_model_says_so(open_doc: Callable[..., Any], plugin: Any, model: str, depth: str) -> None:
    controller, panel, spy = plugin
    doc = open_doc(200, 100, model, depth)
    sel = Selection()
    sel.select(50, 20, 40, 40, 255)
    doc.setSelection(sel)
    assert not controller.generate()
    assert not controller.busy and not spy.inputs
    text = panel.message_label.text()
    assert f"{model}/{depth}" in text and "8-bit RGBA" in text and "Convert Image Color Space" in text


def test_action_path_with_empty_prompt(open_doc: Callable[..., Any], plugin: Any) -> None:
    """An empty prompt is valid (fill from context) and names the group accordingly."""
    controller, panel, spy = plugin
    controller.settings.prompt = ""
    controller.settings.variants = 1
    doc = open_doc(400, 300)
    soft_ellipse(doc, 200, 150, 50, 50, soft=10)
    run_job(controller)
    groups = [n for n in doc.rootNode().childNodes() if n.type() == "grouplayer"]
    assert [g.name() for g in groups] == ["Inpaint: (no prompt)"] and len(groups[0].childNodes()) == 1


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_stops_a_queued_job(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(600, 400)
    soft_ellipse(doc, 300, 200, 80, 60, soft=10)
    names = node_names(doc.rootNode())
    n = 2048  # a job of about two seconds keeps the daemon's single worker busy
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (n, n, 4), np.uint8)
    mask = np.zeros((n, n), np.uint8)
    mask[600:1400, 600:1400] = 255
    with Client(name="occupier") as other:
        blocker = other.submit(img.tobytes(), n, n, 4, mask.tobytes(), {"variants": 1})
        assert controller.generate()
        assert wait_for(lambda: controller._job is not None and controller._job.id, 10)
        t = time.perf_counter()
        panel.cancel_button.click()
        assert time.perf_counter() - t < 0.2, "Cancel blocked the GUI"
        assert not controller.busy and panel.generate_button.isEnabled()
        assert wait_for(lambda: controller.cancelled_final_states, 20)
        assert controller.cancelled_final_states[-1] == "cancelled"
        other.cancel(blocker)
        other.wait(blocker, timeout=30)
    pump(0.3)
    assert node_names(doc.rootNode()) == names, "a cancelled job added layers"
    assert "Cancelled" in panel.message_label.text()
    assert not spy.results


# -- connection: start a daemon, lose it, get it back -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_starts_a_daemon_and_reconnects_after_a_restart(open_doc: Callable[..., Any], tmp_path: Path) -> None:
    python = os.environ.get("INPAINTD_TEST_PYTHON")
    if not python:
        pytest.skip("INPAINTD_TEST_PYTHON is not set: no interpreter to run the daemon with")
    saved = {k: os.environ.get(k) for k in ("INPAINTD_KEY", "INPAINTD_RUNTIME_DIR", "INPAINTD_ENDPOINT")}
    os.environ.pop("INPAINTD_KEY", None)  # the daemon makes a key; the plugin must find it by itself
    os.environ.pop("INPAINTD_ENDPOINT", None)
    os.environ["INPAINTD_RUNTIME_DIR"] = str(tmp_path / "runtime")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    settings = Settings(endpoint=endpoint, variants=1, daemon_command=f"{python} -m inpaintd serve --bind {{endpoint}} --engine classical")
    spy = Spy()
    controller = Controller(settings, spy)
    panel = InpaintPanel(controller)
    panel.show()
    try:
        assert wait_for(lambda: controller.connected is False, 10)
        assert panel.start_button.isVisibleTo(panel)
        doc = open_doc(300, 200)
        soft_ellipse(doc, 150, 100, 40, 30, soft=8)
        assert not controller.generate()
        assert "No inpaintd daemon answers" in panel.message_label.text()
        instances = []
        for round_ in range(2):
            panel.start_button.click()
            assert wait_for(lambda: controller.connected, 60), panel.message_log[-3:]
            instances.append(controller.hello["instance"])
            assert not panel.start_button.isVisibleTo(panel)
            assert "0." in panel.connection_label.text() and endpoint in panel.connection_label.text()
            assert panel.model.count() >= 2  # "Daemon default" + the daemon's models
            assert wait_for(lambda: doc.activeNode().type() == "paintlayer", 2)
            run_job(controller)
            assert len(spy.results) == round_ + 1, panel.message_log[-3:]
            proc = controller._daemon_proc
            proc.terminate()
            proc.wait(30)
            assert wait_for(lambda: controller.connected is False, 20)
        assert instances[0] != instances[1]
    finally:
        controller.shutdown()
        panel.close()
        if controller._daemon_proc is not None and controller._daemon_proc.poll() is None:
            controller._daemon_proc.terminate()
            controller._daemon_proc.wait(30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the diffusion path: a daemon on the tiny random diffusion pipeline ------------------------
#
# These run in a second kritarunner session started by test_krita_plugin.py against the
# `tiny_daemon` fixture (INPAINTD_TEST_DIFFUSION=1, the daemon's log in
# INPAINTD_TEST_DAEMON_LOG); in the classical session they are skipped.

DIFFUSION = os.environ.get("INPAINTD_TEST_DIFFUSION") == "1"
needs_diffusion = pytest.mark.skipif(not DIFFUSION, reason="needs the tiny diffusion daemon (INPAINTD_TEST_DIFFUSION=1)")
DENOISING = re.compile(r"^Denoising (\d+)/(\d+)$")


def denoising_steps(panel: InpaintPanel) -> list[tuple[int, int]]:
    """(step, total) for every "Denoising k/n" the progress bar showed, in order."""
    return [(int(m[1]), int(m[2])) for m in (DENOISING.match(t) for _, t in panel.progress_log) if m]


@pytest.fixture
def tiny_plugin() -> Any:
    """Controller + docker panel against the tiny diffusion daemon; options set through
    the docker's own widgets, as an artist would."""
    spy = Spy()
    controller = Controller(Settings(), spy)
    panel = InpaintPanel(controller)
    panel.show()
    panel.prompt.setPlainText("a red apple")
    panel.variants.setValue(2)
    panel.grow.setValue(4)
    panel.feather.setValue(8)
    panel.seed.setValue(777)
    assert controller.settings.job_options()["seed"] == 777 and controller.settings.variants == 2
    assert wait_for(lambda: controller.connected, 10), "the plugin did not connect to the tiny daemon"
    assert controller.hello and "diffusers" in controller.hello["engines"], controller.hello
    assert Path(controller.hello["default_model"]).name == "tiny-inpaint", controller.hello["default_model"]
    yield controller, panel, spy
    controller.cancel()
    controller.shutdown()
    panel.close()


@needs_diffusion
def test_diffusion_generate_two_variants_with_a_fixed_seed(open_doc: Callable[..., Any], tiny_plugin: Any) -> None:
    controller, panel, spy = tiny_plugin
    panel.steps.setValue(6)
    doc = open_doc(640, 480)
    source = doc.activeNode()
    soft_ellipse(doc, 400, 260, 90, 60, soft=16)
    before = digest(source, doc)
    names_before = node_names(doc.rootNode())
    t = time.perf_counter()
    panel.generate_button.click()
    assert controller.busy and not panel.generate_button.isEnabled(), panel.message_log[-3:]
    job_id = wait_for(lambda: controller._job is not None and controller._job.id, 10)
    assert job_id, panel.message_log[-3:]
    assert wait_for(lambda: not controller.busy, 120), "the diffusion job did not finish"
    elapsed = time.perf_counter() - t
    assert spy.results, f"no results; messages: {panel.message_log[-3:]}"
    # the daemon really ran the diffusion engine on its tiny pipeline
    with Client(name="checker") as c:
        done = c.fetch(job_id)
    assert done.state == "done" and done.result["engine"] == "diffusers", (done.state, done.result.get("engine"))
    assert Path(done.result["model"]).name == "tiny-inpaint"
    # layers: right place and size, outside the feather identical to the source, seeds in the names
    job_input, layers = spy.results[-1]
    assert [seed for _, seed, *_ in layers] == [777, 778]
    group = check_variants(doc, source, spy, grow=4, feather=8)
    assert [n.name() for n in group.childNodes()[::-1]] == ["Variant 1/2 (seed 777)", "Variant 2/2 (seed 778)"]
    a, b = (as_array(n.pixelData(*n.bounds().getRect()), n.bounds().width(), n.bounds().height()) for n in group.childNodes())
    assert not np.array_equal(a, b), "two seeds gave the same pixels"
    assert digest(source, doc) == before, "the source layer was modified"
    assert len(node_names(doc.rootNode())) == len(names_before) + 1
    # progress: the bar counted the denoising steps one by one up to the total
    steps = denoising_steps(panel)
    totals = {n for _, n in steps}
    assert len(totals) == 1, steps
    total = totals.pop()
    assert total >= 6, steps
    assert [k for k, _ in steps] == list(range(1, total + 1)), f"the step counter did not advance step by step: {steps}"
    percents = [p for p, _ in panel.progress_log]
    assert percents == sorted(percents), panel.progress_log
    assert panel.progress_bar.value() == 100 and panel.progress_bar.format().startswith("Done"), panel.progress_bar.format()
    assert "Added 2 variant" in panel.message_label.text() and "777, 778" in panel.message_label.text()
    assert "The prompt was not used" not in panel.message_label.text()  # a diffusion engine used it
    print(f"\n[timing] diffusion job in Krita, 2 variants, {total} steps: {elapsed:.2f} s")


@needs_diffusion
def test_diffusion_cancel_a_running_job(open_doc: Callable[..., Any], tiny_plugin: Any) -> None:
    controller, panel, spy = tiny_plugin
    panel.steps.setValue(150)  # several seconds on the CPU: plenty of time to cancel mid-run
    doc = open_doc(640, 480)
    source = doc.activeNode()
    soft_ellipse(doc, 300, 220, 90, 60, soft=16)
    before = digest(source, doc)
    names_before = node_names(doc.rootNode())
    with Client(name="checker") as checker:
        cancelled_before = checker.status()["stats"].get("jobs_cancelled", 0)
        panel.generate_button.click()
        assert controller.busy, panel.message_log[-3:]
        job = controller._job

        def running_step() -> int:  # what the artist sees on the bar
            m = DENOISING.match(panel.progress_bar.format())
            return int(m[1]) if m else 0

        assert wait_for(lambda: running_step() >= 2, 60), f"no denoising progress in the UI: {panel.progress_log[-5:]}"
        assert not job.finished and job.state == "running", job.state
        step_at_cancel, total = job.step, job.total_steps
        assert total >= 150
        # the daemon confirms this job is the one running
        assert [(r["job"], r["state"]) for r in checker.status()["running"]] == [(job.id, "running")]

        t = time.perf_counter()
        panel.cancel_button.click()
        assert time.perf_counter() - t < 0.2, "Cancel blocked the GUI"
        # free at once: nothing waits for the daemon's confirmation
        assert not controller.busy
        assert panel.generate_button.isEnabled() and not panel.cancel_button.isEnabled()
        assert panel.progress_bar.format() == "Cancelled" and panel.progress_bar.value() == 0
        assert "Cancelled" in panel.message_label.text()

        # the daemon stops the job within a few steps and says so
        assert wait_for(lambda: controller.cancelled_final_states, 15), "no word from the daemon on the cancelled job"
        confirm = time.perf_counter() - t
        assert controller.cancelled_final_states == ["cancelled"]
        assert job.state == "cancelled"
        # with nothing left to listen to, the timer drops back to its idle pace
        assert wait_for(lambda: controller._timer.interval() == IDLE_INTERVAL_MS, 2), controller._timer.interval()
        assert job.step <= step_at_cancel + 10 and job.step < total, f"the job ran on after Cancel: step {job.step} of {total}"
        reply = checker.request(Type.FETCH, {"job": job.id})
        assert reply.type == Type.CANCELLED, reply.type
        assert reply.body["reason"] == "cancelled by a client while running", reply.body
        status = checker.status()
        assert status["running"] == [] and status["queued"] == []
        assert status["stats"]["jobs_cancelled"] == cancelled_before + 1
    log_path = os.environ.get("INPAINTD_TEST_DAEMON_LOG")
    if log_path:
        assert wait_for(lambda: f"job {job.id} cancelled after" in Path(log_path).read_text(errors="replace"), 5)

    # nothing reached the document
    pump(0.3)
    assert not spy.results, "a cancelled job inserted results"
    assert node_names(doc.rootNode()) == names_before, "a cancelled job added layers"
    assert digest(source, doc) == before, "the source layer was modified"
    assert "Cancelled" in panel.message_label.text()  # no late message from the orphaned job

    # the next Generate works on the same source
    assert wait_for(lambda: doc.activeNode().name() == source.name(), 2)
    panel.steps.setValue(3)
    panel.generate_button.click()
    assert controller.busy, panel.message_log[-3:]
    assert wait_for(lambda: not controller.busy, 60), "the job after the cancel did not finish"
    assert len(spy.results) == 1, panel.message_log[-3:]
    check_variants(doc, source, spy, grow=4, feather=8)
    assert "Added 2 variant" in panel.message_label.text()
    assert digest(source, doc) == before
    print(f"\n[timing] cancel at step {step_at_cancel}/{total}: GUI free at once, daemon confirmed after {confirm:.2f} s "
          f"(job stopped at step {job.step})")


# -- a new-family model picked in the docker (#11) ---------------------------------------------
#
# A third kritarunner session, against a daemon serving the tiny SD pipeline as its default and
# a tiny FLUX.1 Fill pipeline beside it (INPAINTD_TEST_FAMILY_MODEL: that model's id).

FAMILY_MODEL = os.environ.get("INPAINTD_TEST_FAMILY_MODEL", "")
needs_family = pytest.mark.skipif(not FAMILY_MODEL, reason="needs the two-family daemon (INPAINTD_TEST_FAMILY_MODEL)")


@needs_family
def test_family_model_picked_applies_its_defaults_and_runs(open_doc: Callable[..., Any]) -> None:
    """Picking FLUX.1 Fill in the docker's model list puts its defaults (50 steps, guidance
    30) in the controls and switches off the negative prompt it ignores; Generate then runs
    the job on it with those values: the progress bar counts its 50 denoising steps."""
    spy = Spy()
    controller = Controller(Settings(), spy)
    panel = InpaintPanel(controller)
    panel.show()
    try:
        assert wait_for(lambda: controller.connected, 10), "the plugin did not connect to the daemon"
        models = [panel.model.itemData(i) for i in range(panel.model.count())]
        assert wait_for(lambda: panel.model.findData(FAMILY_MODEL) >= 0, 10), models
        steps, guidance = panel.option_widgets["steps"], panel.option_widgets["guidance_scale"]
        negative = panel.option_widgets["negative_prompt"]
        steps.setValue(7)
        guidance.setValue(5.0)
        assert negative.isEnabled()  # the tiny SD default takes a negative prompt

        panel.model.setCurrentIndex(panel.model.findData(FAMILY_MODEL))
        assert controller.settings.model == FAMILY_MODEL
        assert steps.value() == 50 and guidance.value() == 30.0, (steps.value(), guidance.value())
        assert not negative.isEnabled() and "negative" in negative.toolTip().lower(), negative.toolTip()

        panel.prompt.setPlainText("a red apple")
        panel.variants.setValue(1)
        panel.seed.setValue(5)
        doc = open_doc(320, 240)
        source = doc.activeNode()
        soft_ellipse(doc, 160, 120, 50, 40, soft=8)
        before = digest(source, doc)
        panel.generate_button.click()
        job_id = wait_for(lambda: controller._job is not None and controller._job.id, 10)
        assert job_id, panel.message_log[-3:]
        assert wait_for(lambda: not controller.busy, 180), "the FLUX.1 Fill job did not finish"
        assert spy.results, f"no results; messages: {panel.message_log[-3:]}"
        with Client(name="checker") as c:
            done = c.fetch(job_id)
        assert done.state == "done" and done.result["model"] == FAMILY_MODEL, (done.state, done.result.get("model"))
        totals = {n for _, n in denoising_steps(panel)}
        assert totals == {50}, denoising_steps(panel)[-3:]
        assert digest(source, doc) == before, "the source layer was modified"

        panel.model.setCurrentIndex(panel.model.findData(""))  # back to the daemon default: SD's values
        assert negative.isEnabled() and steps.value() == 20, steps.value()
    finally:
        controller.cancel()
        controller.shutdown()
        panel.close()
