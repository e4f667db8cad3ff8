"""The `inpaintd` command line, run as a user runs it: a subprocess against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, free_port
from PIL import Image
from test_daemon import ellipse_mask, final_mask, photo


def inpaintd(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("INPAINTD_ENDPOINT", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "inpaintd", *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("cli")
    image = photo(300, 200)
    mask = ellipse_mask(300, 200, 200, 60, 40, 30)
    Image.fromarray(image).save(d / "in.png")
    Image.fromarray(mask).save(d / "mask.png")
    return d / "in.png", d / "mask.png", image, mask


def test_inpaint_writes_each_variant_as_a_full_image(daemon, files, tmp_path):
    image_path, mask_path, image, mask = files
    out = tmp_path / "out.png"
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(mask_path), "--out", str(out),
                 "--variants", "2", "--seed", "9", "--grow", "4", "--feather", "6", env=daemon.env)
    assert r.returncode == 0, r.stderr
    paths = [tmp_path / "out-1.png", tmp_path / "out-2.png"]
    assert all(p.exists() for p in paths)
    assert "seed 9" in r.stdout and "seed 10" in r.stdout
    result = np.array(Image.open(paths[0]))
    assert result.shape == image.shape
    outside = final_mask(mask, 4, 6) == 0
    assert np.array_equal(result[outside], image[outside])
    assert not np.array_equal(result[mask == 255], image[mask == 255])
    # the same job with colour matching: the classical engine keeps the unmasked pixels, so
    # there is no cast to correct and the result is the same
    matched = tmp_path / "matched.png"
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(mask_path), "--out", str(matched),
                 "--seed", "9", "--grow", "4", "--feather", "6", "--color-match", env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.array(Image.open(matched)), result)


def test_connect_flag_beats_the_environment(daemon, files, tmp_path):
    image_path, mask_path, _, _ = files
    env = dict(daemon.env, INPAINTD_ENDPOINT=f"tcp://127.0.0.1:{free_port()}")  # nobody there
    r = inpaintd("inpaint", "--connect", daemon.endpoint, "--image", str(image_path), "--mask", str(mask_path),
                 "--out", str(tmp_path / "o.png"), env=env)
    assert r.returncode == 0, r.stderr


def test_errors_exit_non_zero_with_the_daemons_message(daemon, files, tmp_path):
    image_path, mask_path, _, _ = files
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(mask_path), "--out", str(tmp_path / "o.png"),
                 "--model", "no/such-model", env=daemon.env)
    assert r.returncode == 1
    assert "unknown_model" in r.stderr and "no/such-model" in r.stderr
    Image.fromarray(np.zeros((200, 300), np.uint8)).save(tmp_path / "empty.png")
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(tmp_path / "empty.png"), "--out", str(tmp_path / "o.png"),
                 env=daemon.env)
    assert r.returncode == 1 and "empty_mask" in r.stderr
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "small.png")
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(tmp_path / "small.png"), "--out", str(tmp_path / "o.png"),
                 env=daemon.env)
    assert r.returncode == 1 and "30x20" in r.stderr and "300x200" in r.stderr


def test_status_models_and_cancel(daemon):
    r = inpaintd("status", env=daemon.env)
    assert r.returncode == 0 and "default model patchmatch" in r.stdout
    r = inpaintd("models", env=daemon.env)
    assert r.returncode == 0 and "* patchmatch" in r.stdout and "opencv-telea" in r.stdout and "opencv-ns" in r.stdout
    r = inpaintd("cancel", "0123456789abcdef", env=daemon.env)
    assert r.returncode == 1 and "not_found" in r.stderr


def test_status_exits_non_zero_when_no_daemon_answers():
    r = inpaintd("status", "--connect", f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert r.returncode == 2
    assert "no inpaintd daemon answered" in r.stderr


def test_bad_endpoint_is_named():
    r = inpaintd("status", "--connect", "http://localhost:80")
    assert r.returncode == 1 and "http://localhost:80" in r.stderr


def test_serve_refuses_a_public_address_without_auth():
    r = inpaintd("serve", "--bind", "tcp://0.0.0.0:7499", "--no-auth", "--engine", "classical", timeout=30)
    assert r.returncode == 2 and "without authentication" in r.stderr


def test_serve_names_the_compile_modes():
    r = inpaintd("serve", "--compile", "fast", "--engine", "classical", timeout=30)
    assert r.returncode == 2 and "invalid choice: 'fast'" in r.stderr and "reduce-overhead" in r.stderr


def test_serve_fails_clearly_on_a_missing_explicit_model(tmp_path):
    r = inpaintd("serve", "--bind", f"tcp://127.0.0.1:{free_port()}", "--model", str(tmp_path / "nothing-here"), timeout=60)
    assert r.returncode != 0
    assert "nothing-here" in r.stderr


def test_shutdown_stops_the_daemon(tmp_path):
    from conftest import start_daemon

    d = start_daemon(tmp_path, "--engine", "classical")
    r = inpaintd("shutdown", env=d.env)
    assert r.returncode == 0
    assert d.proc.wait(timeout=30) == 0
    assert not (d.runtime_dir / "connection").exists()


def test_make_test_model_writes_a_loadable_pipeline(tmp_path):
    r = inpaintd("make-test-model", str(tmp_path / "tiny"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tiny" / "model_index.json").exists()
    assert (tmp_path / "tiny" / "unet" / "config.json").exists()
    assert "inpaintd serve --model" in r.stdout


def test_ipc_endpoint_end_to_end(tmp_path, files):
    from conftest import start_daemon

    image_path, mask_path, image, mask = files
    d = start_daemon(tmp_path / "d", "--engine", "classical", endpoint=f"ipc://{tmp_path}/inpaintd.sock")
    try:
        r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(mask_path), "--out", str(tmp_path / "o.png"), env=d.env)
        assert r.returncode == 0, r.stderr
        result = np.array(Image.open(tmp_path / "o.png"))
        outside = final_mask(mask, 8, 16) == 0
        assert np.array_equal(result[outside], image[outside])
    finally:
        d.stop()


def test_a_wrong_key_is_named_not_taken_for_a_dead_daemon(daemon):
    env = dict(daemon.env, INPAINTD_KEY="0" * 32)
    r = inpaintd("status", env=env, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "bad_signature" in r.stderr and "another key" in r.stderr


def test_inpaint_says_when_the_prompt_was_not_used(daemon, files, tmp_path):
    image_path, mask_path, _, _ = files
    r = inpaintd("inpaint", "--image", str(image_path), "--mask", str(mask_path), "--out", str(tmp_path / "o.png"),
                 "--prompt", "a red apple", env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert "note: The prompt was not used: the daemon filled the area with its classical engine" in r.stderr
