"""The artist's loop through a real daemon (#13): vary, remix, rerun, styles and the history.

One daemon per test group on the tiny random SD pipeline (CPU) beside the classical
models, each with its own data folder (tests/daemons.py sets $INPAINTD_DATA_DIR).  The
pixels of a random pipeline are noise, but noise that follows strength, seeds and prompts,
which is what these tests measure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemons import DaemonProcess, start_daemon

from inpaintd_protocol.client import Client, Job
from inpaintd_protocol.messages import JobOptions, ProtocolError

pytest.importorskip("diffusers")

W, H = 96, 80
GROW, FEATHER = 4, 4


def picture() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([120 + 90 * np.sin(x / 9.0), 128 + 80 * np.cos((x + y) / 13.0), 100 + 70 * np.sin(y / 7.0)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def hole() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[24:56, 30:66] = 255
    return mask


IMAGE, MASK = picture(), hole()


def layers(job: Job) -> list[np.ndarray]:
    return [np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4).astype(int)
            for layer in job.layers]


def submit(c: Client, **options) -> Job:
    options.setdefault("grow", GROW)
    options.setdefault("feather", FEATHER)
    job = c.wait(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(**options)), timeout=120)
    return job.raise_for_error()


def region_masks(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """Over the job's region: where the mask could reach (grown + feathered), and where it is fully on."""
    from inpaintd.masks import prepare_mask

    prepared = prepare_mask(MASK, GROW, FEATHER)
    assert prepared is not None
    local, box = prepared
    grown = np.zeros_like(MASK)
    grown[box.slices()] = local
    layer = job.layers[0]
    region = grown[layer.y: layer.y + layer.height, layer.x: layer.x + layer.width]
    inside = MASK[layer.y: layer.y + layer.height, layer.x: layer.x + layer.width] == 255
    return region > 0, inside


@pytest.fixture(scope="module")
def loop_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("loop"), "--model", str(tiny_model_dir), "--device", "cpu")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def first(loop_daemon: DaemonProcess) -> Job:
    with loop_daemon.client() as c:
        return submit(c, prompt="a red apple", seed=11, variants=2, steps=10)


def test_vary_subtle_changes_less_than_strong_and_keeps_the_outside(loop_daemon: DaemonProcess, first: Job) -> None:
    reach, inside = region_masks(first)
    source = layers(first)[1]
    with loop_daemon.client() as c:
        hello = c.hello()
        assert hello["vary_strengths"] == {"subtle": 0.35, "strong": 0.7} and "vary" in hello["capabilities"]
        random_seeds = c.wait(c.vary(first.id, 1, options={"variants": 2}), timeout=120).raise_for_error()
        assert len({v.seed for v in random_seeds.layers} | {11, 12}) == 4  # new seeds, unless told
        subtle = c.wait(c.vary(first.id, 1, preset="subtle", options={"variants": 3, "seed": 21}), timeout=120)
        strong = c.wait(c.vary(first.id, 1, preset="strong", options={"variants": 3, "seed": 21}), timeout=120)
        subtle.raise_for_error(), strong.raise_for_error()
    diffs = {}
    for name, job in (("subtle", subtle), ("strong", strong)):
        at = first.layers[1]
        assert all((v.x, v.y, v.width, v.height) == (at.x, at.y, at.width, at.height) for v in job.layers)
        for arr in layers(job):
            assert np.array_equal(arr[~reach], source[~reach]), f"vary {name} changed pixels outside the mask"
        diffs[name] = float(np.mean([np.abs(arr[inside][:, :3] - source[inside][:, :3]).mean() for arr in layers(job)]))
    print(f"\n[vary] mean |difference| inside the mask from the varied variant: subtle (strength 0.35) "
          f"{diffs['subtle']:.2f}, strong (0.7) {diffs['strong']:.2f} of 255")
    assert 0 < diffs["subtle"] < diffs["strong"]


def test_remix_changes_the_prompt_and_the_same_seed_repeats(loop_daemon: DaemonProcess, first: Job) -> None:
    with loop_daemon.client() as c:
        def vary(**options) -> np.ndarray:
            job = c.wait(c.vary(first.id, 0, preset="strong", options={"seed": 5, "variants": 1, **options}), timeout=120)
            return layers(job.raise_for_error())[0]

        same, again, remixed = vary(), vary(), vary(prompt="a blue teapot")
    assert np.array_equal(same, again)
    assert not np.array_equal(same, remixed)


def test_rerun_gives_the_same_pixels_and_fetch_reads_the_history(loop_daemon: DaemonProcess, first: Job) -> None:
    with loop_daemon.client() as c:
        rerun = c.wait(c.rerun(first.id), timeout=120).raise_for_error()
        assert [v.seed for v in rerun.layers] == [v.seed for v in first.layers]
        assert all(np.array_equal(a, b) for a, b in zip(layers(rerun), layers(first), strict=True))
        assert [(v.x, v.y) for v in rerun.layers] == [(v.x, v.y) for v in first.layers]
        page = c.history()
        kinds = {e["job"]: e["kind"] for e in page["entries"]}
        assert kinds[first.id] == "inpaint" and kinds[rerun.id] == "rerun"
        entry = next(e for e in page["entries"] if e["job"] == first.id)
        assert entry["prompt"] == "a red apple" and entry["seeds"] == [11, 12] and entry["pixels_kept"]
        thumb = entry["variants"][0]["thumbnail"]
        assert max(thumb["width"], thumb["height"]) <= 128 and len(thumb["pixels"]) == thumb["width"] * thumb["height"] * 4


def test_history_is_searched_by_prompt(loop_daemon: DaemonProcess, first: Job) -> None:
    with loop_daemon.client() as c:
        other = submit(c, prompt="A Green Pear, 100% ripe", seed=3, steps=2)
        assert [e["job"] for e in c.history("green pear")["entries"]] == [other.id]
        assert [e["job"] for e in c.history("100%")["entries"]] == [other.id]  # no LIKE wildcards
        assert first.id in [e["job"] for e in c.history("red apple")["entries"]]
        assert c.history("no such words")["total"] == 0
        page = c.history(limit=1)
        assert len(page["entries"]) == 1 and page["total"] >= 3


def test_styles_are_listed_applied_and_overridden(loop_daemon: DaemonProcess) -> None:
    with loop_daemon.client() as c:
        names = {s["name"]: s for s in c.styles()}
        assert {"Watercolor", "Quick draft", "Photographic"} <= set(names) and names["Quick draft"]["settings"] == {"steps": 8}
        saved = c.save_style("tea time", {"prompt": "a cup of tea and {prompt}", "steps": 3, "description": "test"})
        assert saved["source"] == "user" and not saved["problem"]

        def steps_run(**options) -> tuple[int, np.ndarray]:
            totals: list[int] = []
            job = c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(grow=GROW, feather=FEATHER, seed=1, **options))
            c.wait(job, 120, on_event=lambda j, m: j.stage == "denoising" and totals.append(j.total_steps))
            return max(totals), layers(job.raise_for_error())[0]

        styled_steps, styled = steps_run(prompt="a scone", style="tea time")
        plain_steps, plain = steps_run(prompt="a cup of tea and a scone", steps=3)
        assert styled_steps == plain_steps == 3 and np.array_equal(styled, plain)  # the template and the steps applied
        assert steps_run(prompt="a scone", style="tea time", steps=5)[0] == 5  # the job's own value wins
        assert steps_run(prompt="x", style="Quick draft")[0] == 8


def test_bad_styles_and_history_ids_are_refused_and_the_daemon_serves_on(loop_daemon: DaemonProcess, first: Job) -> None:
    user = Path(loop_daemon.runtime_dir).parent / "data" / "styles"
    user.mkdir(parents=True, exist_ok=True)
    (user / "broken.json").write_text("{not json")
    (user / "wrong.json").write_text(json.dumps({"steps": 900, "prompt": "{prompt}"}))
    with loop_daemon.client() as c:
        listed = {s["name"]: s for s in c.styles()}
        assert "not readable as JSON" in listed["broken"]["problem"]
        assert "'steps' is 900" in listed["wrong"]["problem"]
        for style, says in (("broken", "broken.json"), ("wrong", "allowed range"), ("nope", "no style 'nope'")):
            with pytest.raises(ProtocolError) as err:
                c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), JobOptions(style=style))
            assert err.value.code == "bad_value" and err.value.details == {"field": "style"} and says in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.save_style("../evil", {"prompt": "x"})
        assert err.value.code == "bad_value" and err.value.details == {"field": "name"}
        with pytest.raises(ProtocolError) as err:
            c.save_style("fine", {"prompt": "x", "sampler": "euler"})
        assert "unknown field(s) sampler" in err.value.message
        for call in (lambda: c.vary("0000000000000000"), lambda: c.rerun("0000000000000000"),
                     lambda: c.star("0000000000000000")):
            with pytest.raises(ProtocolError) as err:
                call()
            assert err.value.code == "not_found" and "in the history" in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.vary(first.id, 7)
        assert err.value.code == "bad_value" and err.value.details == {"field": "variant"}
        with pytest.raises(ProtocolError) as err:
            c.vary(first.id, 0, options={"colour": 1})
        assert err.value.details == {"field": "options"} and "colour" in err.value.message
        with pytest.raises(ProtocolError) as err:
            c.vary(first.id, 0, preset="wild")
        assert err.value.details == {"field": "preset"}
        assert submit(c, prompt="still serving", seed=1, steps=2).layers


def test_history_survives_a_restart_and_evicts_the_oldest_unstarred(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    args = ("--model", str(tiny_model_dir), "--device", "cpu", "--data-dir", str(data))
    d = start_daemon(tmp_path / "one", *args)
    try:
        with d.client() as c:
            kept = submit(c, prompt="the first", seed=1, steps=2)
            size = c.star(kept.id)["bytes"]  # its pixels, source, mask and thumbnail
            want = layers(kept)
    finally:
        d.stop()
    # A history of about two and a half jobs: each new one evicts the oldest unstarred, never the starred one.
    d = start_daemon(tmp_path / "two", *args, "--history-mb", f"{2.6 * size / (1 << 20):.6f}")
    try:
        with d.client() as c:
            page = c.history()
            assert [e["job"] for e in page["entries"]] == [kept.id] and page["entries"][0]["starred"]
            back = c.fetch(kept.id).raise_for_error()
            assert all(np.array_equal(a, b) for a, b in zip(layers(back), want, strict=True))
            assert [(v.x, v.y) for v in back.layers] == [(v.x, v.y) for v in kept.layers]
            varied = c.wait(c.vary(kept.id, 0, preset="subtle", options={"steps": 6}), timeout=120).raise_for_error()  # after a restart
            jobs = [submit(c, prompt=f"job {i}", seed=i, steps=2).id for i in range(3)]
            left = [e["job"] for e in c.history(limit=50)["entries"]]
            assert kept.id in left and jobs[-1] in left
            assert varied.id not in left and jobs[0] not in left, left
            c.star(kept.id, False)
            last = submit(c, prompt="job 3", seed=3, steps=2).id
            left = [e["job"] for e in c.history(limit=50)["entries"]]
            assert kept.id not in left and last in left, left  # unstarred, it is the oldest: the next job evicts it
    finally:
        d.stop()


def test_without_a_history_vary_says_expired_and_takes_the_pixels(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--engine", "classical", "--history-mb", "0")
    try:
        with d.client() as c:
            job = submit(c, seed=4)
            with pytest.raises(ProtocolError) as err:
                c.vary(job.id, 0)
            assert err.value.code == "expired" and "send the pixels" in err.value.message
            layer = job.layers[0]
            region_mask = np.ascontiguousarray(MASK[layer.y: layer.y + layer.height, layer.x: layer.x + layer.width])
            varied = c.wait(c.vary(job.id, 0, pixels=(layer.tight_bytes(), layer.width, layer.height, 4,
                                                      region_mask.tobytes(), layer.x, layer.y)), timeout=60)
            varied.raise_for_error()
            assert [(v.x, v.y, v.width, v.height) for v in varied.layers][0][:2] == (layer.x, layer.y)
            assert c.hello()["history"] is None
    finally:
        d.stop()


# -- vary and rerun keep a job's LoRAs and style reference, or change them ------------------


@pytest.fixture(scope="module")
def addon_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[DaemonProcess]:
    from inpaintd.testmodel import make_test_ip_adapter, make_test_lora

    data = tmp_path_factory.mktemp("loop-addons")
    make_test_lora(tiny_model_dir, data / "loras" / "ink.safetensors", seed=1)
    adapter = make_test_ip_adapter(data / "IP-Adapter", tiny_model_dir)
    d = start_daemon(data / "daemon", "--model", str(tiny_model_dir), "--device", "cpu", "--lora-dir", str(data / "loras"),
                     "--ip-adapter", str(adapter))
    yield d
    d.stop()


def reference(seed: int) -> tuple[bytes, int, int, int]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 48, 3), dtype=np.uint8).tobytes(), 48, 40, 3


@pytest.mark.slow
def test_vary_and_rerun_keep_the_jobs_loras_and_references_or_change_them(addon_daemon: DaemonProcess) -> None:
    """A job sent with a LoRA and a style reference: `rerun` gives its pixels again and a
    `vary` keeps both (the history keeps them), `loras: []` / `references: []` drop them
    (the pixels of the same job sent without), and a new reference changes the pixels."""
    common = JobOptions(prompt="a red apple", seed=5, steps=4, grow=GROW, feather=FEATHER)
    with addon_daemon.client() as c:
        def run(job: Job) -> Job:
            return c.wait(job, timeout=180).raise_for_error()

        plain = run(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), common))
        dressed = run(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), common, loras=[("ink", 1.0)],
                               references=[reference(1)]))
        entry = next(e for e in c.history(limit=5)["entries"] if e["job"] == dressed.id)
        assert entry["loras"] == [{"name": "ink", "weight": 1.0}] and entry["references"] == 1, entry
        again = run(c.rerun(dressed.id))
        bare = run(c.rerun(dressed.id, loras=[], references=[]))
        other_reference = run(c.rerun(dressed.id, references=[reference(2)]))
        kept = run(c.vary(dressed.id, options={"seed": 77}))
        dropped = run(c.vary(dressed.id, options={"seed": 77}, loras=[], references=[]))
        with pytest.raises(ProtocolError) as err:
            c.rerun(dressed.id, loras=[("no_such_lora", 1.0)])
        assert "no_such_lora" in str(err.value)
        assert c.ping()
    assert not np.array_equal(layers(dressed)[0], layers(plain)[0])
    assert np.array_equal(layers(again)[0], layers(dressed)[0])  # the LoRA and the reference came back
    assert np.array_equal(layers(bare)[0], layers(plain)[0])  # dropped: the job as sent without them
    assert not np.array_equal(layers(other_reference)[0], layers(dressed)[0])
    reach, inside = region_masks(dressed)
    diff = np.abs(layers(kept)[0] - layers(dropped)[0])
    print(f"\n[loop] vary keeping the LoRA and reference vs dropping them: mean |difference| inside the mask "
          f"{diff[..., :3][inside].mean():.2f} of 255, outside the grown mask {diff[~reach].max()}")
    assert diff[..., :3][inside].mean() > 1.0 and diff[~reach].max() == 0


@pytest.mark.slow
def test_the_cli_reruns_without_the_jobs_loras_and_references(addon_daemon: DaemonProcess, tmp_path: Path) -> None:
    """`inpaintd rerun JOB --no-loras --no-references`, as a user runs it: the pixels of the
    job sent without them; `--lora` and `--no-loras` together are refused by the parser."""
    import os
    import subprocess
    import sys

    from PIL import Image

    common = JobOptions(prompt="a pear", seed=8, steps=3, grow=GROW, feather=FEATHER)
    with addon_daemon.client() as c:
        plain = c.wait(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), common), 180).raise_for_error()
        dressed = c.wait(c.submit(IMAGE.tobytes(), W, H, 3, MASK.tobytes(), common, loras=[("ink", 0.8)],
                                  references=[reference(3)]), 180).raise_for_error()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inpaintd", *args], env={**os.environ, **addon_daemon.env},
                              capture_output=True, text=True, timeout=180)

    done = cli("rerun", dressed.id, "--no-loras", "--no-references", "--out", str(tmp_path / "bare.png"))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "bare.png") as im:
        bare = np.asarray(im.convert("RGBA")).astype(int)
    assert np.array_equal(bare, layers(plain)[0]) and not np.array_equal(bare, layers(dressed)[0])
    both = cli("rerun", dressed.id, "--lora", "ink", "--no-loras", "--out", str(tmp_path / "x.png"))
    assert both.returncode == 2 and "not allowed with" in both.stderr, both.stderr
    listed = cli("history", "a pear")
    assert listed.returncode == 0 and "(LoRA ink 0.8; 1 reference image)" in listed.stdout, listed.stdout


def test_a_history_file_of_an_earlier_version_gains_the_new_columns(tmp_path: Path) -> None:
    """A history.sqlite3 written before entries kept LoRAs and references opens, reads its
    entries as having none, and keeps new entries with them."""
    import sqlite3

    from inpaintd.history import Entry as HistoryEntry
    from inpaintd.history import History, Record, VariantEntry

    old = sqlite3.connect(str(tmp_path / "history.sqlite3"))
    old.executescript("""
        CREATE TABLE entries (job TEXT PRIMARY KEY, created REAL NOT NULL, kind TEXT NOT NULL,
            parent TEXT NOT NULL DEFAULT '', parent_variant INTEGER NOT NULL DEFAULT -1, model TEXT NOT NULL,
            engine TEXT NOT NULL, prompt TEXT NOT NULL, options TEXT NOT NULL, seeds TEXT NOT NULL, region TEXT NOT NULL,
            canvas TEXT NOT NULL, starred INTEGER NOT NULL DEFAULT 0, pixels INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0);
        INSERT INTO entries VALUES ('a1', 1.0, 'inpaint', '', -1, 'm', 'diffusers', 'old', '{"prompt": "old"}', '[3]',
            '[0, 0, 8, 8]', '[8, 8]', 1, 0, 10);
    """)
    old.close()
    history = History(tmp_path, 1 << 20)
    try:
        was = history.get("a1")
        assert was is not None and was.loras == [] and was.references == 0 and was.prompt == "old" and was.starred
        rgba = np.zeros((8, 8, 4), np.uint8)
        entry = HistoryEntry("b2", 2.0, "inpaint", "m", {"prompt": "new"}, [4], (0, 0, 8, 8), (8, 8),
                             [VariantEntry(0, 4, 8, 8, rgba)], loras=[("ink", 0.5)], references=1)
        ref = np.full((5, 6, 3), 200, np.uint8)
        history.record(Record(entry, [rgba], rgba[..., :3], np.full((8, 8), 255, np.uint8), [ref]))
        now = history.get("b2")
        assert now is not None and now.loras == [("ink", 0.5)] and now.references == 1
        assert np.array_equal(history.references("b2")[0], ref)
    finally:
        history.close()
