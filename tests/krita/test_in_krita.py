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
from PyQt5.QtCore import QByteArray, Qt
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QApplication

from inpaintd_krita import kritadoc, logic, loop, loras
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

    def __getattr__(self, name: str) -> Any:  # the rest of kritadoc as it is (selected_result, history_input, ...)
        return getattr(kritadoc, name)


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
    off = panel.disabled_controls()  # and the reference weight: a classical model takes no reference image
    assert set(off) == set(caps.disabled) | {"reference_weight"} and "takes no reference image" in off["reference_weight"]
    assert not panel.reference_layer.isEnabled() and not controller.takes_reference()
    for opt in editor.shown_in(KRITA):
        widget = panel.option_widgets[opt.name]
        assert widget.toolTip() == (off.get(opt.name) or opt.tip), opt.name
        assert widget.isEnabled() == (opt.name not in off), opt.name
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
    # the style box is filled from the daemon's styles, "No style" first; panel.style() stays Qt's
    assert panel.option_widgets["style"] is panel.style_box and callable(panel.style)
    assert wait_for(lambda: panel.style_box.findData("Quick draft") >= 0, 10), "no styles from the daemon"
    assert panel.style_box.itemData(0) == "" and panel.style_box.itemText(0) == "No style"


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


def test_vary_of_a_layer_that_is_no_result_says_so(open_doc: Callable[..., Any], plugin: Any) -> None:
    controller, panel, spy = plugin
    doc = open_doc(300, 200)
    names = node_names(doc.rootNode())
    for button in (panel.vary_subtle_button, panel.vary_strong_button, panel.remix_button):
        button.click()
        assert not controller.busy and panel.message_label.text() == loop.NOT_A_RESULT
    assert node_names(doc.rootNode()) == names and not spy.results


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


# -- the artist's loop (#13): vary, remix, history, styles, style reference ---------------------
#
# A fourth kritarunner session, against a daemon on the tiny SD pipeline served with a tiny
# IP-Adapter, so that it takes reference images (INPAINTD_TEST_LOOP=1).  The tests share
# one document and run in order: a Generate first, then what the loop does with its result.

LOOP = os.environ.get("INPAINTD_TEST_LOOP") == "1"
needs_loop = pytest.mark.skipif(not LOOP, reason="needs the tiny diffusion daemon with history (INPAINTD_TEST_LOOP=1)")
LOOP_GROW, LOOP_FEATHER, LOOP_STEPS = 4, 8, 4


def make_active(doc: Any, node: Any) -> None:
    """Make `node` the active layer, as a click in the Layers docker does (asked again until
    it holds: Krita and insert_results switch the active node through queued signals)."""
    def active() -> bool:
        now = doc.activeNode()
        if now is not None and kritadoc.node_id(now) == kritadoc.node_id(node):
            return True
        doc.setActiveNode(node)
        return False

    assert wait_for(active, 5), f"{node.name()} did not become the active layer"
    pump(0.05)
    assert kritadoc.node_id(doc.activeNode()) == kritadoc.node_id(node)


class LoopSession:
    def __init__(self, window: Any) -> None:
        self.spy = Spy()
        self.controller = Controller(Settings(), self.spy)
        self.spy.controller = self.controller
        self.panel = InpaintPanel(self.controller)
        self.panel.show()
        p = self.panel
        p.prompt.setPlainText("a red apple")
        p.variants.setValue(2)
        p.grow.setValue(LOOP_GROW)
        p.feather.setValue(LOOP_FEATHER)
        p.seed.setValue(777)
        p.steps.setValue(LOOP_STEPS)
        assert wait_for(lambda: self.controller.connected, 10), "the plugin did not connect to the daemon"
        doc = Krita.instance().createDocument(480, 360, "loop", "RGBA", "U8", "", 72.0)
        window.addView(doc)
        QApplication.setActiveWindow(window.qwindow())
        pump(0.05)
        self.doc = doc
        self.source = doc.topLevelNodes()[0]
        self.source.setName("photo")
        self.source.setPixelData(QByteArray(photo_bgra(480, 360)), 0, 0, 480, 360)
        doc.waitForDone()
        doc.refreshProjection()
        soft_ellipse(doc, 260, 170, 70, 50, soft=12)
        self.select(self.source)
        self.first_job = ""  # the Generate's job id, once test_loop_generate... ran
        self.last_group: Any = None  # the group the last run() added

    def select(self, node: Any) -> None:
        make_active(self.doc, node)

    def run(self, button: Any, timeout: float = 120.0) -> Any:
        """Click a button that starts a job; wait for its layers; the job input it went with."""
        before, groups = len(self.spy.results), {kritadoc.node_id(g) for g in self.groups()}
        self.panel.progress_log.clear()
        button.click()
        assert self.controller.busy, self.panel.message_log[-3:]
        assert wait_for(lambda: not self.controller.busy, timeout), "the job did not finish"
        assert len(self.spy.results) == before + 1, f"no layers; messages: {self.panel.message_log[-3:]}"
        new = [g for g in self.groups() if kritadoc.node_id(g) not in groups]
        assert len(new) == 1, [g.name() for g in new]
        self.last_group = new[0]  # results go above the active layer's group: not always on top
        return self.spy.results[-1][0]

    def groups(self) -> list[Any]:
        """The document's result groups, bottom to top."""
        return [n for n in self.doc.rootNode().childNodes() if n.type() == "grouplayer"]

    def shoot(self) -> None:
        """The docker after the loop (the strip full, a star, the last job's message), for
        the README when $INPAINTD_TEST_LOOP_SHOT names a file."""
        shot = os.environ.get("INPAINTD_TEST_LOOP_SHOT")
        if shot:
            self.panel.resize(340, self.panel.minimumSizeHint().height())
            pump(0.3)
            assert self.panel.grab().save(shot)

    def close(self) -> None:
        self.controller.cancel()
        self.controller.shutdown()
        self.panel.close()
        self.doc.setModified(False)
        self.doc.close()


@pytest.fixture(scope="module")
def loop_session(window: Any) -> Any:
    if not LOOP:
        pytest.skip("needs the tiny diffusion daemon with history (INPAINTD_TEST_LOOP=1)")
    session = LoopSession(window)
    yield session
    session.close()


def layer_pixels(node: Any) -> tuple[tuple[int, int, int, int], np.ndarray]:
    b = node.bounds()
    return (b.x(), b.y(), b.width(), b.height()), as_array(node.pixelData(b.x(), b.y(), b.width(), b.height()),
                                                          b.width(), b.height())


def assert_outside_unchanged(s: LoopSession, node: Any) -> np.ndarray:
    """Every pixel of `node` out of the selection's reach (grown, feathered) is the source's;
    returns where the selection is fully on, over the node."""
    (x, y, w, h), got = layer_pixels(node)
    doc = s.doc
    sel = as_array(doc.selection().pixelData(0, 0, doc.width(), doc.height()), doc.width(), doc.height(), 1)
    keep = ~dilate(sel > 0, LOOP_GROW + LOOP_FEATHER + 2)[y : y + h, x : x + w]
    src = as_array(s.source.pixelData(x, y, w, h), w, h)
    assert keep.any()
    bad = np.argwhere((got != src).any(axis=2) & keep)
    assert not len(bad), f"{len(bad)} pixels out of the selection's reach differ from the source, first at {bad[:3]}"
    return sel[y : y + h, x : x + w] == 255


def history_entry(job_id: str) -> dict:
    with Client(name="checker") as c:
        for entry in c.history(limit=50)["entries"]:
            if entry["job"] == job_id:
                return entry
    raise AssertionError(f"job {job_id} is not in the daemon's history")


@needs_loop
def test_loop_generate_shows_in_the_history_strip(loop_session: LoopSession) -> None:
    s = loop_session
    panel = s.panel
    job_input = s.run(panel.generate_button)
    s.first_job = job_input.job_id
    assert s.first_job, "the job's id did not reach the layers"
    group = s.last_group
    variants = group.childNodes()[::-1]
    assert [n.name() for n in variants] == ["Variant 1/2 (seed 777)", "Variant 2/2 (seed 778)"]
    # the document remembers each layer's job and variant
    known = kritadoc.result_map(s.doc)
    assert [known.lookup(kritadoc.node_id(n)) for n in variants] == [loop.ResultRef(s.first_job, 0),
                                                                     loop.ResultRef(s.first_job, 1)]
    assert known.job(s.first_job).crop == job_input.region
    # the strip shows the new entry first, with the daemon's thumbnail
    strip = panel.history_strip
    assert wait_for(lambda: strip.cards and strip.cards[0].job == s.first_job, 15), [c.job for c in strip.cards]
    card = strip.cards[0]
    entry = history_entry(s.first_job)
    thumb = entry["variants"][0]["thumbnail"]
    assert card.has_thumbnail and card.thumb_size == (thumb["width"], thumb["height"]) and max(card.thumb_size) <= 128
    assert card.thumbnail == thumb["pixels"] and card.prompt == "a red apple" and card.seeds == (777, 778)
    button = strip.buttons[0]
    assert not button.icon().isNull() and "a red apple" in button.toolTip()
    assert [a.data() for a in button.menu().actions()] == ["apply", "vary", "copy", "star"]
    assert s.doc.activeNode().name() == s.source.name()


@needs_loop
def test_loop_vary_subtle_adds_new_variants_at_the_same_place(loop_session: LoopSession) -> None:
    s = loop_session
    assert s.first_job, "needs test_loop_generate_shows_in_the_history_strip"
    source_group = s.last_group  # the Generate's
    varied = source_group.childNodes()[::-1][0]  # Variant 1/2
    s.select(varied)
    place, varied_pixels = layer_pixels(varied)
    job_input = s.run(s.panel.vary_subtle_button)
    assert job_input.vary_of == loop.ResultRef(s.first_job, 0) and job_input.job_id != s.first_job
    # a new group directly above the source group, named like any result
    siblings = s.doc.rootNode().childNodes()
    index = [kritadoc.node_id(n) for n in siblings].index(kritadoc.node_id(source_group))
    group = siblings[index + 1]
    assert kritadoc.node_id(group) == kritadoc.node_id(s.last_group)
    assert group.type() == "grouplayer" and group.name() == editor.group_name("a red apple")
    layers = group.childNodes()[::-1]
    entry = history_entry(job_input.job_id)
    assert entry["kind"] == "vary" and entry["parent"] == s.first_job and entry["parent_variant"] == 0
    assert entry["options"]["strength"] == pytest.approx(0.35)
    seeds = entry["seeds"]
    assert len(layers) == len(seeds) == 2 and not set(seeds) & {777, 778}, seeds  # new seeds
    assert [n.name() for n in layers] == [editor.variant_name(i, 2, seed) for i, seed in enumerate(seeds)]
    for node in layers:
        got_place, got = layer_pixels(node)
        assert got_place == place, "the variation is not where the varied layer is"
        inside = assert_outside_unchanged(s, node)
        assert (got != varied_pixels).any(axis=2)[inside].mean() > 0.2, "the vary changed nothing in the selection"
    known = kritadoc.result_map(s.doc)
    assert known.lookup(kritadoc.node_id(layers[1])) == loop.ResultRef(job_input.job_id, 1)
    assert known.job(job_input.job_id).crop == known.job(s.first_job).crop
    assert wait_for(lambda: s.doc.activeNode().name() == varied.name(), 2), "the varied layer should stay active"
    assert wait_for(lambda: s.panel.history_strip.cards[0].job == job_input.job_id, 15)


@needs_loop
def test_loop_remix_with_a_new_prompt(loop_session: LoopSession) -> None:
    s = loop_session
    first_group = next(g for g in s.groups() if any(
        kritadoc.result_map(s.doc).lookup(kritadoc.node_id(n)) == loop.ResultRef(s.first_job, 1) for n in g.childNodes()))
    varied = first_group.childNodes()[::-1][1]  # Variant 2/2 of the Generate
    s.select(varied)
    place, _ = layer_pixels(varied)
    s.panel.prompt.setPlainText("a green pear")
    try:
        job_input = s.run(s.panel.remix_button)
    finally:
        s.panel.prompt.setPlainText("a red apple")
    entry = history_entry(job_input.job_id)
    assert entry["kind"] == "vary" and entry["parent"] == s.first_job and entry["parent_variant"] == 1
    assert entry["prompt"] == "a green pear" and entry["options"]["strength"] == pytest.approx(0.7)
    group = s.groups()[[kritadoc.node_id(g) for g in s.groups()].index(kritadoc.node_id(first_group)) + 1]
    assert group.name() == "Inpaint: a green pear"
    for node in group.childNodes():
        assert layer_pixels(node)[0] == place
        assert_outside_unchanged(s, node)


@needs_loop
def test_loop_a_style_from_the_box_runs_with_its_settings(loop_session: LoopSession) -> None:
    """"Quick draft" (a shipped style: 8 steps) picked in the Style box puts 8 in Steps; the
    job runs 8 denoising steps, and the daemon records the style; "No style" puts 4 back."""
    s = loop_session
    panel, box = s.panel, s.panel.style_box
    assert wait_for(lambda: box.findData("Quick draft") >= 0, 10), [box.itemData(i) for i in range(box.count())]
    assert box.itemText(0) == "No style" and box.findData("Watercolor") >= 0
    assert panel.steps.value() == LOOP_STEPS
    box.setCurrentIndex(box.findData("Quick draft"))
    assert s.controller.settings.style == "Quick draft" and panel.steps.value() == 8
    s.select(s.source)
    job_input = s.run(panel.generate_button)
    totals = {n for _, n in denoising_steps(panel)}
    assert totals == {8}, denoising_steps(panel)
    entry = history_entry(job_input.job_id)
    assert entry["options"]["style"] == "Quick draft" and entry["options"]["steps"] == 8
    box.setCurrentIndex(box.findData(""))
    assert s.controller.settings.style == "" and panel.steps.value() == LOOP_STEPS


@needs_loop
def test_loop_save_style_adds_it_to_the_list(loop_session: LoopSession) -> None:
    s = loop_session
    panel, box = s.panel, s.panel.style_box
    panel.ask_text = lambda title, label: ("not/a name", True)
    panel.save_style_button.click()
    assert "A style name has" in panel.message_label.text()
    panel.negative_prompt.setText("blurry, text")
    panel.guidance_scale.setValue(5.5)
    panel.ask_text = lambda title, label: ("Krita test style", True)
    try:
        panel.save_style_button.click()
        assert wait_for(lambda: box.findData("Krita test style") >= 0, 10), panel.message_log[-3:]
    finally:
        panel.negative_prompt.setText("")
        panel.guidance_scale.setValue(0.0)
    assert "Saved the style 'Krita test style'" in panel.message_label.text()
    with Client(name="checker") as c:
        saved = next(st for st in c.styles() if st["name"] == "Krita test style")
    assert saved["source"] == "user" and saved["problem"] == ""
    assert saved["settings"] == {"negative_prompt": "blurry, text", "steps": LOOP_STEPS, "guidance_scale": 5.5}
    # picked, it puts its values in the controls
    box.setCurrentIndex(box.findData("Krita test style"))
    assert panel.negative_prompt.text() == "blurry, text" and panel.guidance_scale.value() == 5.5
    box.setCurrentIndex(0)
    assert panel.negative_prompt.text() == "" and panel.guidance_scale.value() == 0.0


@needs_loop
def test_loop_apply_a_history_entry_brings_back_its_layers(loop_session: LoopSession) -> None:
    s = loop_session
    known = kritadoc.result_map(s.doc)
    uids = sorted(known.layers_of(s.first_job), key=lambda uid: known.lookup(uid).variant)  # variant 1, 2
    original = [layer_pixels(kritadoc.find_node(s.doc, uid)) for uid in uids]
    strip = s.panel.history_strip
    assert wait_for(lambda: any(c.job == s.first_job for c in strip.cards), 10)
    before = [kritadoc.node_id(g) for g in s.groups()]
    strip.trigger([c.job for c in strip.cards].index(s.first_job), "apply")
    assert wait_for(lambda: len(s.groups()) == len(before) + 1, 30), s.panel.message_log[-3:]
    group = next(g for g in s.groups() if kritadoc.node_id(g) not in before)
    assert group.name() == editor.group_name("a red apple") and "Brought back 2 layer(s)" in s.panel.message_label.text()
    back = [layer_pixels(n) for n in group.childNodes()[::-1]]
    assert [n.name() for n in group.childNodes()[::-1]] == ["Variant 1/2 (seed 777)", "Variant 2/2 (seed 778)"]
    assert len(back) == len(original) == 2
    for (place, pixels), (want_place, want) in zip(back, original, strict=True):
        assert place == want_place and np.array_equal(pixels, want), "the layer brought back differs from the original"
    # the layers brought back are results too: they can be varied
    assert kritadoc.result_map(s.doc).lookup(kritadoc.node_id(group.childNodes()[0])).job == s.first_job
    # Vary from the strip: the entry's first variant, its variants where the job put its layers
    before, done = {kritadoc.node_id(g) for g in s.groups()}, len(s.spy.results)
    strip.trigger([c.job for c in strip.cards].index(s.first_job), "vary")
    assert s.controller.busy, s.panel.message_log[-3:]
    assert wait_for(lambda: not s.controller.busy, 60) and len(s.spy.results) == done + 1, s.panel.message_log[-3:]
    varied = next(g for g in s.groups() if kritadoc.node_id(g) not in before)
    assert all(layer_pixels(n)[0] == original[0][0] for n in varied.childNodes())
    entry = history_entry(s.spy.results[-1][0].job_id)
    assert (entry["kind"], entry["parent"], entry["parent_variant"]) == ("vary", s.first_job, 0)


@needs_loop
def test_loop_star_and_copy_settings(loop_session: LoopSession) -> None:
    s = loop_session
    strip, panel = s.panel.history_strip, s.panel
    index = [c.job for c in strip.cards].index(s.first_job)
    strip.trigger(index, "star")
    assert wait_for(lambda: any(c.job == s.first_job and c.starred for c in strip.cards), 10), panel.message_log[-3:]
    with Client(name="checker") as c:
        assert [e["job"] for e in c.history(starred=True)["entries"]] == [s.first_job]
    index = [c.job for c in strip.cards].index(s.first_job)
    assert [a.text() for a in strip.buttons[index].menu().actions()][-1] == "Unstar"
    # copy the Quick draft job's settings into the controls
    draft = next(c for c in strip.cards if c.options.get("style") == "Quick draft")
    panel.seed.setValue(1)
    panel.steps.setValue(2)
    strip.trigger(strip.cards.index(draft), "copy")
    assert panel.steps.value() == 8 and panel.seed.value() == draft.seeds[0]
    assert panel.style_box.currentData() == "Quick draft" and s.controller.settings.style == "Quick draft"
    assert "Copied the settings" in panel.message_label.text()
    panel.style_box.setCurrentIndex(0)
    panel.steps.setValue(LOOP_STEPS)
    panel.seed.setValue(777)


@needs_loop
def test_loop_style_reference_layer_goes_with_generate(loop_session: LoopSession) -> None:
    """A daemon with an IP-Adapter: the reference picker is on, and a job with a reference
    layer (same seed, same settings) comes out different inside the selection."""
    s = loop_session
    panel, doc = s.panel, s.doc
    assert s.controller.takes_reference() and panel.reference_layer.isEnabled()
    assert "reference_weight" not in panel.disabled_controls() and panel.reference_weight.isEnabled()
    ref = doc.createNode("style reference", "paintlayer")
    rng = np.random.default_rng(3)
    pattern = np.repeat(np.repeat(rng.integers(0, 255, (15, 20, 4), np.uint8), 24, 0), 24, 1)  # 360 x 480, blocks
    pattern[..., 3] = 255
    ref.setPixelData(QByteArray(pattern.tobytes()), 0, 0, 480, 360)
    ref.setVisible(False)
    doc.rootNode().addChildNode(ref, None)
    doc.waitForDone()
    panel.reference_layer.refresh()
    index = panel.reference_layer.findData(kritadoc.node_id(ref))
    assert index > 0 and panel.reference_layer.itemText(0) == "None", [
        panel.reference_layer.itemText(i) for i in range(panel.reference_layer.count())]
    assert kritadoc.reference_image(doc, kritadoc.node_id(ref))[1:] == (480, 360, 4)
    panel.variants.setValue(1)
    try:
        s.select(s.source)
        plain = s.run(panel.generate_button)
        plain_pixels = layer_pixels(s.last_group.childNodes()[0])[1]
        panel.reference_layer.setCurrentIndex(index)
        assert s.controller.reference_layer == kritadoc.node_id(ref)
        s.select(s.source)
        styled = s.run(panel.generate_button)
        assert any("with a 480x360 reference" in text for text, _ in panel.message_log[-6:]), panel.message_log[-6:]
        styled_node = s.last_group.childNodes()[0]
        styled_pixels = layer_pixels(styled_node)[1]
        inside = assert_outside_unchanged(s, styled_node)
        assert (styled_pixels != plain_pixels).any(axis=2)[inside].mean() > 0.2, "the reference changed nothing"
        assert plain.options["seed"] == styled.options["seed"] == 777
    finally:
        panel.reference_layer.setCurrentIndex(0)
        panel.variants.setValue(2)
    assert s.controller.reference_layer == ""


@needs_loop
def test_loop_results_are_known_after_saving_and_reopening(loop_session: LoopSession, window: Any, tmp_path: Path) -> None:
    """The layer -> job map lives in the document (an annotation): a saved and reopened .kra
    still knows its results, and Vary works on them."""
    s = loop_session
    known = kritadoc.result_map(s.doc)
    uid = known.layers_of(s.first_job)[0]
    path = str(tmp_path / "loop.kra")
    s.doc.setBatchmode(True)
    assert s.doc.saveAs(path)
    s.doc.waitForDone()
    s.doc.close()
    pump(0.05)
    s.doc = doc = Krita.instance().openDocument(path)  # the session closes it
    assert doc is not None
    window.addView(doc)
    QApplication.setActiveWindow(window.qwindow())
    pump(0.05)
    assert Krita.instance().activeDocument() == doc
    reopened = kritadoc.result_map(doc)
    assert reopened.layers == known.layers and reopened.jobs == known.jobs
    node = kritadoc.find_node(doc, uid)
    assert node is not None
    make_active(doc, node)
    target = kritadoc.selected_result()
    assert target.document == doc and target.vary_of == known.lookup(uid)
    groups = len(s.groups())
    job_input = s.run(s.panel.vary_strong_button)
    assert job_input.document == doc and len(s.groups()) == groups + 1
    assert history_entry(job_input.job_id)["options"]["strength"] == pytest.approx(0.7)
    assert wait_for(lambda: s.panel.history_strip.cards[0].job == job_input.job_id, 15)
    s.shoot()


@needs_loop
def test_loop_vary_sends_the_pixels_to_a_daemon_that_keeps_no_history(open_doc: Callable[..., Any], tmp_path: Path) -> None:
    """A daemon started with --history-mb 0 answers a vary `expired`: the plugin sends the
    layer's pixels and the selection instead, and the variation lands on the layer."""
    python = os.environ.get("INPAINTD_TEST_PYTHON")
    if not python:
        pytest.skip("INPAINTD_TEST_PYTHON is not set: no interpreter to run the daemon with")
    import subprocess

    saved = {k: os.environ.get(k) for k in ("INPAINTD_KEY", "INPAINTD_RUNTIME_DIR", "INPAINTD_ENDPOINT", "INPAINTD_DATA_DIR")}
    os.environ.pop("INPAINTD_KEY", None)
    os.environ.pop("INPAINTD_ENDPOINT", None)
    os.environ["INPAINTD_RUNTIME_DIR"] = str(tmp_path / "runtime")
    os.environ["INPAINTD_DATA_DIR"] = str(tmp_path / "data")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([python, "-m", "inpaintd", "serve", "--bind", endpoint, "--engine", "classical",
                             "--history-mb", "0"], stdout=log, stderr=subprocess.STDOUT)
    spy = Spy()
    controller = Controller(Settings(endpoint=endpoint, variants=1, grow=LOOP_GROW, feather=LOOP_FEATHER), spy)
    panel = InpaintPanel(controller)
    panel.show()
    try:
        assert wait_for(lambda: controller.connected, 60), panel.message_log[-3:]
        assert wait_for(lambda: "keeps no history" in panel.history_strip.status, 10), panel.history_strip.status
        doc = open_doc(400, 300)
        source = doc.activeNode()
        soft_ellipse(doc, 200, 150, 50, 40, soft=10)
        run_job(controller)
        group = [n for n in doc.rootNode().childNodes() if n.type() == "grouplayer"][-1]
        varied = group.childNodes()[0]
        make_active(doc, varied)
        b = varied.bounds()
        panel.vary_subtle_button.click()
        assert wait_for(lambda: not controller.busy, 60), "the vary did not finish"
        assert any("with the layer's pixels" in t for t, _ in panel.message_log), panel.message_log[-4:]
        assert len(spy.results) == 2, panel.message_log[-4:]
        job_input = spy.results[-1][0]
        assert job_input.plan.crop.as_tuple() == (b.x(), b.y(), b.width(), b.height())
        groups = [n for n in doc.rootNode().childNodes() if n.type() == "grouplayer"]
        assert len(groups) == 2
        node = groups[-1].childNodes()[0]
        assert node.bounds() == b
        (x, y, w, h), got = layer_pixels(node)
        sel = as_array(doc.selection().pixelData(x, y, w, h), w, h, 1)
        keep = ~dilate(sel > 0, LOOP_GROW + LOOP_FEATHER + 2)
        src = as_array(source.pixelData(x, y, w, h), w, h)
        assert keep.any() and not ((got != src).any(axis=2) & keep).any()
        # the vary of a vary, too: its layers are remembered at the layer's place
        assert kritadoc.result_map(doc).lookup(kritadoc.node_id(node)).job == job_input.job_id
    finally:
        controller.shutdown()
        panel.close()
        proc.terminate()
        proc.wait(30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- LoRAs and Teach subject ---------------------------------------------------------------------
# A fifth kritarunner session (INPAINTD_TEST_TEACH=1), against a daemon on the tiny SD pipeline
# whose --lora-dir holds a tiny random LoRA `ink` (trigger words "inky lines").

TEACH = os.environ.get("INPAINTD_TEST_TEACH") == "1"
needs_teach = pytest.mark.skipif(not TEACH, reason="needs the tiny diffusion daemon with a LoRA (INPAINTD_TEST_TEACH=1)")


@pytest.fixture(scope="module")
def teach_session(window: Any) -> Any:
    if not TEACH:
        pytest.skip("needs the tiny diffusion daemon with a LoRA (INPAINTD_TEST_TEACH=1)")
    session = LoopSession(window)
    session.panel.variants.setValue(1)
    yield session
    session.close()


@needs_teach
def test_teach_a_picked_lora_changes_the_pixels_and_weight_0_does_not(teach_session: LoopSession) -> None:
    s = teach_session
    panel, controller = s.panel, s.controller
    assert wait_for(lambda: panel.lora_box.findData("ink") > 0, 15), [panel.lora_box.itemText(i)
                                                                       for i in range(panel.lora_box.count())]
    index = panel.lora_box.findData("ink")
    assert "inky lines" in panel.lora_box.itemData(index, Qt.ToolTipRole)
    assert controller.model_family() == "sd15"
    s.select(s.source)
    plain = s.run(panel.generate_button)
    plain_pixels = layer_pixels(s.last_group.childNodes()[0])[1]
    panel.lora_box.setCurrentIndex(index)  # "Add LoRA…" -> ink: a row with its weight
    assert panel.lora_box.currentIndex() == 0 and panel.chosen_loras() == [("ink", 1.0)]
    assert controller.settings.loras == "ink:1" and controller.lora_payload() == [("ink", 1.0)]
    try:
        s.select(s.source)
        with_lora = s.run(panel.generate_button)
        assert any("LoRA ink 1" in text for text, _ in panel.message_log[-3:]), panel.message_log[-3:]
        lora_node = s.last_group.childNodes()[0]
        inside = assert_outside_unchanged(s, lora_node)
        lora_pixels = layer_pixels(lora_node)[1]
        assert (lora_pixels != plain_pixels).any(axis=2)[inside].mean() > 0.2, "the LoRA changed nothing"
        assert plain.options["seed"] == with_lora.options["seed"] == 777
        panel.lora_rows["ink"][1].setValue(0.0)  # weight 0: off
        assert controller.settings.loras == "ink:0" and controller.lora_payload() == []
        s.select(s.source)
        s.run(panel.generate_button)
        off_pixels = layer_pixels(s.last_group.childNodes()[0])[1]
        assert (off_pixels == plain_pixels).all(), "weight 0 is not the base model's pixels"
        # A Vary of the LoRA's layer keeps the job's LoRA (the daemon's history has it); a
        # Remix takes the docker's LoRAs: none, at weight 0.
        s.select(lora_node)
        varied = s.run(panel.vary_subtle_button)
        assert history_entry(varied.job_id)["loras"] == [{"name": "ink", "weight": 1.0}]
        s.select(lora_node)
        remixed = s.run(panel.remix_button)
        assert history_entry(remixed.job_id)["loras"] == []
        # Copy settings of the LoRA job's history card puts its LoRA back in the picker
        assert wait_for(lambda: any(c.job == with_lora.job_id for c in panel.history_strip.cards), 15)
        card = next(c for c in panel.history_strip.cards if c.job == with_lora.job_id)
        assert card.loras == (("ink", 1.0),) and "LoRA ink 1" in card.tooltip()
        panel.copy_settings(card)
        assert panel.chosen_loras() == [("ink", 1.0)] and controller.lora_payload() == [("ink", 1.0)]
    finally:
        panel.remove_lora("ink")
    assert panel.chosen_loras() == [] and controller.settings.loras == ""


@needs_teach
def test_teach_subject_from_three_selected_layers(window: Any, teach_session: LoopSession) -> None:
    s = teach_session
    panel, controller = s.panel, s.controller
    doc = Krita.instance().createDocument(160, 120, "subject", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    QApplication.setActiveWindow(window.qwindow())
    pump(0.05)
    try:
        rng = np.random.default_rng(5)
        first = doc.topLevelNodes()[0]
        for i in range(2):
            doc.rootNode().addChildNode(doc.createNode(f"picture {i + 2}", "paintlayer"), None)
        for i, node in enumerate(n for n in doc.topLevelNodes() if n.type() == "paintlayer"):
            pixels = np.repeat(np.repeat(rng.integers(0, 255, (6, 8, 4), np.uint8), 20, 0), 20, 1)
            pixels[..., 3] = 255
            pixels[40:80, 40 + 10 * i : 100 + 10 * i, :3] = (30, 60, 200)  # the "subject", moving a bit
            node.setPixelData(QByteArray(pixels.tobytes()), 0, 0, 160, 120)
        doc.waitForDone()
        make_active(doc, first)
        said: list[str] = []
        controller.message.connect(lambda text, level: said.append(text))
        assert not panel.teach(), "taught from one selected layer"
        assert "3 to 30 paint layers" in said[-1]
        Krita.instance().action("select_all_layers").trigger()
        assert wait_for(lambda: len(kritadoc.selected_paint_layers()) == 3, 5), len(kritadoc.selected_paint_layers())
        pictures = kritadoc.training_pictures()
        assert [(w, h, c, len(p)) for p, w, h, c in pictures] == [(160, 120, 3, 160 * 120 * 3)] * 3
        panel.ask_teach = lambda request: loras.TeachRequest("sks", "mug", "taught_mug", steps=6, resolution=64)
        panel.progress_log.clear()
        panel.teach_button.click()
        assert controller.training, said[-3:]
        assert panel.cancel_button.isEnabled() and not panel.teach_button.isEnabled()
        assert wait_for(lambda: not controller.training, 240), "the training did not finish"
        assert "taught_mug" in said[-1] and "Taught the subject" in said[-1], said[-3:]
        steps = [text for _percent, text in panel.progress_log if re.match(r"Training \d+/6", text)]
        assert steps and all("loss" in t for t in steps), panel.progress_log
        assert any(t.startswith("Training 6/6") for t in steps), steps
        assert wait_for(lambda: panel.lora_box.findData("taught_mug") > 0, 15), "the new LoRA is not in the picker"
        tip = panel.lora_box.itemData(panel.lora_box.findData("taught_mug"), Qt.ToolTipRole)
        assert "sks mug" in tip, tip
    finally:
        doc.setModified(False)
        doc.close()
        pump(0.05)
