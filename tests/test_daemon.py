"""The daemon end to end: a real process, a real socket, the real client library."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import zmq

from inpaintd.masks import prepare_mask
from inpaintd_protocol import wire
from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import CancelCode, Code, ImageDesc, JobOptions, ProtocolError, Type
from inpaintd_protocol.wire import Message


def photo(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A textured, photo-like test image: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([
        128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0),
        128 + 90 * np.cos((x + y) / 71.0),
        100 + 80 * np.sin(y / 29.0),
    ], axis=-1)
    img += rng.normal(0, 12, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = np.full((height, width, 1), 255, np.uint8)
        alpha[: height // 4, : width // 4] = 90  # some translucency to carry through
        img = np.concatenate([img, alpha], axis=-1)
    return np.ascontiguousarray(img)


def ellipse_mask(width: int, height: int, cx: float, cy: float, rx: float, ry: float, soft: float = 6.0) -> np.ndarray:
    """A feathered elliptical selection, as an editor makes one."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    edge = np.clip((1.0 - d) * min(rx, ry) / soft, 0.0, 1.0)
    return (edge * 255).astype(np.uint8)


def submit(client: Client, image: np.ndarray, mask: np.ndarray, **options) -> Job:
    h, w, c = image.shape
    return client.submit(image.tobytes(), w, h, c, mask.tobytes(), JobOptions(**options))


def layer_array(layer) -> np.ndarray:
    return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4)


def final_mask(mask: np.ndarray, grow: int, feather: int) -> np.ndarray:
    """The grown and feathered mask over the whole image."""
    out = np.zeros_like(mask)
    prepared = prepare_mask(mask, grow, feather)
    assert prepared is not None
    local, box = prepared
    out[box.slices()] = local
    return out


def assert_outside_identical(image: np.ndarray, mask: np.ndarray, layer, grow: int, feather: int) -> None:
    """Every layer pixel outside the grown + feathered mask equals the source, all channels."""
    arr = layer_array(layer)
    h, w = arr.shape[:2]
    src = image[layer.y : layer.y + h, layer.x : layer.x + w]
    fm = final_mask(mask, grow, feather)[layer.y : layer.y + h, layer.x : layer.x + w]
    outside = fm == 0
    assert outside.any()
    src_rgba = src if src.shape[2] == 4 else np.concatenate([src, np.full((h, w, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(arr[outside], src_rgba[outside])
    # and the job did change the inside
    inside = fm == 255
    assert inside.any() and not np.array_equal(arr[inside], src_rgba[inside])


# -- classical engine -----------------------------------------------------------------------


def test_hello_lists_engines_models_and_limits(daemon):
    with daemon.client() as c:
        hello = c.hello()
    assert hello["protocol_version"] == 1
    assert "classical" in hello["engines"]
    ids = [m["id"] for m in hello["models"]]
    assert hello["default_model"] == "patchmatch" and "opencv-telea" in ids and "opencv-ns" in ids
    assert hello["limits"]["max_side"] >= 8192
    assert hello["auth"] is True
    assert len(hello["instance"]) == 32


@pytest.mark.parametrize("channels", [3, 4])
def test_classical_job_keeps_outside_pixels_bit_identical(daemon, channels):
    image = photo(320, 240, channels)
    mask = ellipse_mask(320, 240, 160, 120, 40, 30)
    with daemon.client() as c:
        job = c.wait(submit(c, image, mask, grow=4, feather=8, variants=2), timeout=60).raise_for_error()
    assert job.state == "done" and len(job.layers) == 2
    for layer in job.layers:
        assert_outside_identical(image, mask, layer, 4, 8)
    stages = job.result["timings"]
    assert stages["elapsed"] > 0


def test_progress_events_reach_the_submitter(daemon):
    image = photo(128, 128)
    mask = ellipse_mask(128, 128, 64, 64, 20, 20)
    seen: list[tuple[str, str]] = []
    with daemon.client() as c:
        job = submit(c, image, mask)
        c.wait(job, timeout=60, on_event=lambda j, m: seen.append((m.type, m.body.get("stage", ""))))
    assert ("progress", "preparing") in seen and ("progress", "denoising") in seen
    assert seen[-1][0] == "result"


@pytest.mark.parametrize(
    "cx,cy",
    [(0, 0), (639, 0), (0, 479), (639, 479), (320, 0), (0, 240), (639, 240), (320, 479)],
    ids=["top-left", "top-right", "bottom-left", "bottom-right", "top", "left", "right", "bottom"],
)
def test_result_offsets_at_edges_and_corners(daemon, cx, cy):
    image = photo(640, 480)
    mask = ellipse_mask(640, 480, cx, cy, 30, 25)
    with daemon.client() as c:
        job = c.wait(submit(c, image, mask, padding=16), timeout=60).raise_for_error()
    layer = job.layers[0]
    fm = final_mask(mask, 8, 16)
    ys, xs = np.nonzero(fm)
    # inside the image, and covering the whole grown + feathered selection
    assert 0 <= layer.x and 0 <= layer.y and layer.x + layer.width <= 640 and layer.y + layer.height <= 480
    assert layer.x <= xs.min() and xs.max() < layer.x + layer.width
    assert layer.y <= ys.min() and ys.max() < layer.y + layer.height
    assert layer.width < 640 or layer.height < 480  # a crop, not the whole image
    assert_outside_identical(image, mask, layer, 8, 16)


def test_big_canvas_small_selection_is_not_processed_whole(daemon):
    w, h = 6000, 4000
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 90
    image[1900:2100, 2900:3100] = photo(200, 200)
    mask = np.zeros((h, w), np.uint8)
    mask[1980:2020, 2980:3020] = 255
    with daemon.client() as c:
        job = c.wait(submit(c, image, mask, padding=32), timeout=120).raise_for_error()
    layer = job.layers[0]
    assert layer.width <= 200 and layer.height <= 200
    assert job.result["timings"]["total"] < 5.0
    assert_outside_identical(image, mask, layer, 8, 16)


def test_two_clients_each_get_only_their_own_events(daemon):
    image = photo(200, 150)
    mask = ellipse_mask(200, 150, 100, 75, 30, 20)
    results: dict[str, list] = {}

    def run(name: str) -> None:
        with daemon.client(name=name) as c:
            jobs = [submit(c, image, mask, seed=i) for i in range(3)]
            events: list = []
            for job in jobs:
                c.wait(job, timeout=60, on_event=lambda j, m: None)
            # every event this client read belongs to one of its own jobs
            events = [j.events for j in jobs]
            results[name] = [(j.id, j.state, e) for j, e in zip(jobs, events, strict=True)] + [set(c.jobs) == {j.id for j in jobs}]

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert set(results) == {"a", "b"}
    for rows in results.values():
        assert rows[-1] is True
        assert all(state == "done" and events >= 2 for _, state, events in rows[:-1])
    ids_a = {r[0] for r in results["a"][:-1]}
    ids_b = {r[0] for r in results["b"][:-1]}
    assert not ids_a & ids_b


def test_stray_events_are_not_delivered_to_other_clients(daemon):
    """A second socket that submits nothing hears nothing while another client works."""
    image = photo(160, 120)
    mask = ellipse_mask(160, 120, 80, 60, 20, 20)
    with daemon.client() as busy, daemon.client() as idle:
        idle.ping()
        job = busy.wait(submit(busy, image, mask), timeout=60)
        assert job.state == "done"
        assert idle.pump(0.3) == []


def test_fetch_returns_a_finished_result_again_from_a_new_connection(daemon):
    image = photo(160, 120)
    mask = ellipse_mask(160, 120, 80, 60, 20, 20)
    with daemon.client() as c:
        job = c.wait(submit(c, image, mask, seed=7), timeout=60).raise_for_error()
    with daemon.client() as other:
        again = other.fetch(job.id)
    assert again.state == "done"
    assert [bytes(layer.data) for layer in again.layers] == [bytes(layer.data) for layer in job.layers]


def test_status_and_cancel_answer_while_a_job_runs(daemon):
    """Requests are answered at once even while the worker is busy."""
    big = photo(1600, 1200)
    mask = ellipse_mask(1600, 1200, 800, 600, 500, 400)
    with daemon.client() as c:
        job = submit(c, big, mask, variants=4, padding=0)
        t0 = time.perf_counter()
        st = c.status()
        assert time.perf_counter() - t0 < 1.0
        assert any(j["job"] == job.id for j in st["running"] + st["queued"])
        c.wait(job, timeout=120)


def test_cancel_of_a_queued_job(daemon):
    big = photo(1600, 1200)
    mask = ellipse_mask(1600, 1200, 800, 600, 500, 400)
    with daemon.client() as c:
        first = submit(c, big, mask, variants=4, padding=0)
        second = submit(c, big, mask)
        assert second.position >= 1
        reply = c.cancel(second)
        assert reply["state"] == "cancelled"
        c.wait(second, timeout=10)
        assert second.state == "cancelled"
        assert second.cancel_code == CancelCode.QUEUED and second.cancel_reason  # the client reads both
        c.wait(first, timeout=120)
        assert first.state == "done"
        with pytest.raises(ProtocolError) as err:
            c.cancel("no-such-job")
        assert err.value.code == Code.NOT_FOUND


# -- bad input ----------------------------------------------------------------------------------


def raw_submit(c: Client, body: dict, buffers: list) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        c.request(Type.SUBMIT, body, buffers)
    return err.value


def desc(frame: int, w: int, h: int, ch: int, stride: int = 0) -> dict:
    return ImageDesc(frame, w, h, ch, stride).to_wire()


@pytest.mark.parametrize(
    "case,code,words",
    [
        ("size_mismatch", Code.SIZE_MISMATCH, "same size"),
        ("empty_mask", Code.EMPTY_MASK, "selects nothing"),
        ("zero_width", Code.BAD_VALUE, "at least 1"),
        ("huge", Code.TOO_LARGE, "16384"),
        ("wrong_bytes", Code.BAD_IMAGE, "needs"),
        ("missing_mask", Code.MISSING_FIELD, "'mask'"),
        ("bad_type", Code.BAD_FIELD_TYPE, "'variants' must be int"),
        ("bad_range", Code.BAD_VALUE, "'steps' is 9999"),
        ("bad_scheduler", Code.BAD_VALUE, "unknown scheduler"),
        ("unknown_model", Code.UNKNOWN_MODEL, "nope/nope"),
        ("missing_frame", Code.BAD_IMAGE, "frame 5"),
        ("bad_channels", Code.BAD_VALUE, "channels"),
    ],
)
def test_bad_submits_are_answered_and_daemon_keeps_serving(daemon, case, code, words):
    w, h = 64, 48
    img = photo(w, h).tobytes()
    mask = ellipse_mask(w, h, 32, 24, 10, 10).tobytes()
    body = {"prompt": "x", "image": desc(1, w, h, 3), "mask": desc(2, w, h, 1)}
    buffers = [img, mask]
    if case == "size_mismatch":
        body["mask"] = desc(2, w, h - 1, 1)
        buffers = [img, mask[: w * (h - 1)]]
    elif case == "empty_mask":
        buffers = [img, bytes(w * h)]
    elif case == "zero_width":
        body["image"] = desc(1, 0, h, 3)
    elif case == "huge":
        body["image"] = desc(1, 100000, 10, 3)
    elif case == "wrong_bytes":
        buffers = [img[:-7], mask]
    elif case == "missing_mask":
        del body["mask"]
        buffers = [img]
    elif case == "bad_type":
        body["variants"] = "three"
    elif case == "bad_range":
        body["steps"] = 9999
    elif case == "bad_scheduler":
        body["scheduler"] = "warp-drive"
    elif case == "unknown_model":
        body["model"] = "nope/nope"
    elif case == "missing_frame":
        body["image"]["frame"] = 5
    elif case == "bad_channels":
        body["image"] = desc(1, w, h // 3 * 0 + h, 2)
        buffers = [bytes(w * h * 2), mask]
    with daemon.client() as c:
        err = raw_submit(c, body, buffers)
        assert err.code == code, err
        assert words in err.message, err.message
        assert c.ping() < 1.0
    assert daemon.alive()


def test_unknown_type_missing_fields_and_garbage_frames(daemon):
    with daemon.client() as c:
        with pytest.raises(ProtocolError) as err:
            c.request("make_coffee")
        assert err.value.code == Code.UNKNOWN_TYPE and "make_coffee" in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.request(Type.CANCEL, {})
        assert err.value.code == Code.MISSING_FIELD and "job" in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.request(Type.CANCEL, {"job": 12})
        assert err.value.code == Code.BAD_FIELD_TYPE
    # raw garbage on a bare socket: an error comes back, and the daemon lives on
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        for frames in ([b"\xc1\xff garbage", b""], [b"only one frame"], [wire.msgpack.packb([1, 2, 3]), b""]):
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no answer to {frames!r}"
            reply = wire.decode(sock.recv_multipart(), daemon.key)
            assert reply.type == Type.ERROR and reply.body["code"] == Code.BAD_FRAME
        # unsigned message on an authenticated daemon
        sock.send_multipart(wire.encode(Message(type=Type.PING), key=None))
        assert sock.poll(5000)
        reply = wire.decode(sock.recv_multipart(), daemon.key)
        assert reply.body["code"] == Code.BAD_SIGNATURE
    finally:
        sock.close(0)
    with daemon.client() as c:
        assert c.ping() < 1.0


def test_version_mismatch_names_both_versions(daemon):
    with daemon.client() as c:
        msg = Message(type=Type.PING, version=99)
        c.send(msg)
        reply = c._await_reply(msg.id, 5.0)
    assert reply.body["code"] == Code.VERSION_MISMATCH
    assert "99" in reply.body["message"] and "1" in reply.body["message"]


# -- the tiny diffusion pipeline ------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_pipeline_job_with_progress_every_step(tiny_daemon):
    image = photo(96, 80, 4)
    mask = ellipse_mask(96, 80, 48, 40, 18, 14)
    steps_seen: list[tuple[int, int]] = []
    with tiny_daemon.client() as c:
        job = submit(c, image, mask, steps=6, variants=2, seed=42, prompt="a red apple")
        c.wait(job, timeout=120,
               on_event=lambda j, m: m.body.get("stage") == "denoising" and steps_seen.append((m.body["step"], m.body["total_steps"])))
        job.raise_for_error()
    assert job.result["engine"] == "diffusers"
    assert [layer.seed for layer in job.layers] == [42, 43]
    # one event per denoising step, in order, as many as asked: also with the model's own
    # scheduler, PNDM (SD 1.5's), which would run one more (PROTOCOL.md 9.8)
    assert steps_seen == [(i, 6) for i in range(1, 7)]
    for layer in job.layers:
        assert_outside_identical(image, mask, layer, 8, 16)
    a, b = (layer_array(layer) for layer in job.layers)
    assert not np.array_equal(a, b), "variants of one job must differ"


def test_hello_tells_the_loaded_engines_speed_settings(tiny_daemon):
    with tiny_daemon.client() as c:
        hello = c.hello()
    notes = [n for n in hello["notices"] if "speed-ups in use" in n]
    # on the CPU none are used by default (channels-last and fused QKV are CUDA defaults)
    assert notes == [f"{hello['loaded_model']}: speed-ups in use: none"]


@pytest.mark.slow
def test_tiny_pipeline_is_deterministic_by_seed(tiny_daemon):
    image = photo(96, 80)
    mask = ellipse_mask(96, 80, 48, 40, 18, 14)
    with tiny_daemon.client() as c:
        runs = [c.wait(submit(c, image, mask, steps=4, seed=s), timeout=120).raise_for_error() for s in (5, 5, 6)]
    first, again, other = (layer_array(j.layers[0]) for j in runs)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.slow
def test_cancel_of_a_running_job_stops_within_a_step(tiny_daemon):
    image = photo(96, 80)
    mask = ellipse_mask(96, 80, 48, 40, 18, 14)
    with tiny_daemon.client() as c:
        job = submit(c, image, mask, steps=150, variants=2)
        while not (job.stage == "denoising" and job.step >= 2):
            c.pump(0.05)
            assert not job.finished
        reply = c.cancel(job)
        assert reply["state"] == "cancelling"
        step_at_cancel = job.step
        c.wait(job, timeout=30)
        assert job.state == "cancelled" and job.cancel_code == CancelCode.RUNNING
        # What the client saw may lag by the events already on their way; the daemon says
        # how many steps ran after the cancel reached the job: the one under way at most.
        assert job.step < step_at_cancel + 40 < 2 * 150
        found = re.findall(rf"job {job.id} cancelled after .*; (\d+) step\(s\) ran after the cancel", tiny_daemon.log())
        assert found and int(found[-1]) <= 1, found
        # and the daemon goes on to the next job
        nxt = c.wait(submit(c, image, mask, steps=2), timeout=60)
        assert nxt.state == "done"


@pytest.mark.slow
def test_choosing_the_classical_model_on_a_diffusion_daemon(tiny_daemon):
    image = photo(96, 80)
    mask = ellipse_mask(96, 80, 48, 40, 18, 14)
    with tiny_daemon.client() as c:
        job = c.wait(submit(c, image, mask, model="opencv-ns"), timeout=60).raise_for_error()
    assert job.result["engine"] == "classical" and job.result["model"] == "opencv-ns"
