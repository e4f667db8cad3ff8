"""The classical engines (issue 17, part 3): what each fills, which variants they make, the
`fill` pre-fill of diffusion jobs, and the quality benchmark's code at a tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_calls import Call, call, generate, run

from inpaintd.engines import classical
from inpaintd.engines.base import CancelledFn, EngineOutput, EngineRequest, ModelCaps, ProgressFn
from inpaintd.engines.classical import METHODS, ClassicalEngine, default_method, fill
from inpaintd.models import BUILTIN_MODELS, FALLBACK_MODEL, ModelRegistry, fallback_model
from inpaintd.prefill import blur_fill, prefill
from inpaintd.runner import run_job
from inpaintd.validation import parse_options
from inpaintd_protocol.messages import FILL_MODES, Code, JobOptions, ProtocolError

ROOT = Path(__file__).resolve().parent.parent


def textured(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A photo-like picture: smooth gradients plus fine random texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 / w, y * 200 / h, (x + y) * 100 / (w + h) + 50], axis=2)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def box_mask(h: int = 96, w: int = 128) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[30:60, 40:80] = 255
    return mask


def task(image: np.ndarray, mask: np.ndarray, seeds: list[int]) -> Call:
    return call(image=image, mask=mask, prompt="", negative_prompt="", seeds=seeds, steps=1,
                guidance_scale=7.5, strength=1.0, scheduler="default")


def test_registry_lists_every_method_in_the_order_the_benchmark_ranked_them() -> None:
    assert BUILTIN_MODELS == tuple(METHODS)
    assert FALLBACK_MODEL == "patchmatch" == next(iter(METHODS)) == default_method() == fallback_model()
    infos = {m.id: m for m in ModelRegistry().list()}
    for model_id, method in METHODS.items():
        assert infos[model_id].engine == "classical" and infos[model_id].available
        assert ("deterministic" in infos[model_id].detail) != method.seeded


@pytest.mark.parametrize("model_id", list(METHODS))
def test_each_method_fills_the_hole_and_keeps_every_other_pixel(model_id: str) -> None:
    image, mask = textured(), box_mask()
    holed = image.copy()
    holed[mask > 0] = (255, 0, 255)  # what is under the hole must not matter
    out = fill(model_id, holed, mask, seed=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], image[mask == 0])
    inside = out[mask > 0].astype(int)
    magenta = (inside[:, 0] > 200) & (inside[:, 1] < 60) & (inside[:, 2] > 200)
    assert magenta.mean() < 0.01, f"{model_id} left the hole's old colour"
    if model_id != "opencv-shiftmap":  # it copies one shifted region, from either side (not even the same side each run)
        # the fill comes from the surroundings: its mean colour is close to theirs
        assert np.abs(inside.mean(axis=0) - image[mask > 0].mean(axis=0)).max() < 40


def test_patchmatch_variants_differ_by_seed_and_a_seed_repeats() -> None:
    engine = ClassicalEngine("patchmatch")
    image, mask = textured(), box_mask()
    output = run(engine, task(image, mask, [5, 6, 7]))
    a, b, c = output.images
    assert output.notes == []
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    again = generate(engine, task(image, mask, [6]))
    assert len(again) == 1 and np.array_equal(again[0], b)
    # and through the runner, as the daemon runs it: variant i is seed + i, each redoable alone
    out = run_job(engine, image, mask, JobOptions(seed=40, variants=2), [40, 41])
    assert [layer.seed for layer in out.layers] == [40, 41]
    assert not np.array_equal(out.layers[0].rgba, out.layers[1].rgba)
    alone = run_job(engine, image, mask, JobOptions(seed=41), [41])
    assert np.array_equal(alone.layers[0].rgba, out.layers[1].rgba)


@pytest.mark.parametrize("model_id", [m for m, method in METHODS.items() if not method.seeded])
def test_a_deterministic_method_makes_one_variant_and_says_so(model_id: str) -> None:
    engine = ClassicalEngine(model_id)
    image, mask = textured(64, 64), box_mask(64, 64)
    out = run_job(engine, image, mask, JobOptions(seed=1, variants=3), [1, 2, 3])
    assert [layer.seed for layer in out.layers] == [1]
    assert any("made 1 variant instead of 3" in note and model_id in note for note in out.notes)
    single = run_job(engine, image, mask, JobOptions(seed=9), [9])
    assert single.notes == []
    if model_id != "opencv-shiftmap":  # seen to pick another source region from one run to the next
        assert np.array_equal(single.layers[0].rgba, out.layers[0].rgba)


def test_a_method_without_its_library_is_listed_as_missing_and_not_the_fallback(monkeypatch) -> None:
    missing = "needs the PatchMatch library: pip install pypatchmatch"
    monkeypatch.setitem(METHODS, "patchmatch", classical.Method("patchmatch", "x", True, classical._patchmatch, lambda: missing))
    registry = ModelRegistry()
    info = registry.get("patchmatch")
    assert not info.available and info.detail == missing
    assert fallback_model() == "biharmonic" and registry.default_model_id == "biharmonic"
    with pytest.raises(Exception) as err:
        registry.load("patchmatch")
    assert getattr(err.value, "code", "") == "model_unavailable"


# -- the `fill` option -------------------------------------------------------------------


def test_fill_option_is_validated() -> None:
    assert JobOptions().fill == "auto" and FILL_MODES[0] == "auto"
    for mode in FILL_MODES:
        assert parse_options({"fill": mode}).fill == mode
    with pytest.raises(ProtocolError) as err:
        parse_options({"fill": "lama"})
    assert err.value.code == Code.BAD_VALUE and err.value.details == {"field": "fill"} and "neutral" in err.value.message


def test_prefill_modes() -> None:
    image = np.full((64, 64, 3), (40, 120, 200), np.uint8)
    image[20:44, 20:44] = (255, 0, 0)  # the object to remove
    mask = np.zeros((64, 64), np.uint8)
    mask[18:46, 18:46] = 255
    hole = mask > 0
    same, done = prefill(image, mask, None, "none")
    assert same is image and done == ""
    same, done = prefill(image, mask, None, "auto")  # no transparent pixels: keep the picture
    assert same is image and done == ""
    neutral, _ = prefill(image, mask, None, "neutral")
    assert (neutral[hole] == 127).all() and np.array_equal(neutral[~hole], image[~hole])
    for mode in ("blur", "classical"):
        filled, done = prefill(image, mask, None, mode)
        assert done == mode and np.array_equal(filled[~hole], image[~hole])
        assert np.abs(filled[hole].astype(int) - (40, 120, 200)).max() <= 3, mode  # the red is gone
    # soft mask: replaced in proportion
    soft = (mask // 2).astype(np.uint8)
    half, _ = prefill(image, soft, None, "neutral")
    assert abs(int(half[30, 30, 0]) - (255 * 128 + 127 * 127) // 255) <= 1
    # auto: only transparent pixels are filled, classically
    empty = np.zeros((64, 64), bool)
    empty[:, 48:] = True
    image[:, 48:] = 0
    auto, done = prefill(image, mask, empty, "auto")
    assert "transparent" in done and np.array_equal(auto[:, :48], image[:, :48])
    assert np.abs(auto[:, 50:].astype(int) - (40, 120, 200)).max() <= 12  # not black: the blue around


def test_blur_fill_is_smooth_and_total() -> None:
    image = textured(80, 80)
    hole = np.zeros((80, 80), np.uint8)
    hole[10:70, 10:70] = 255
    out = blur_fill(image, hole)
    assert np.array_equal(out[hole == 0], image[hole == 0])
    inner = out[25:55, 25:55].astype(float)
    assert np.abs(np.diff(inner, axis=0)).mean() < 3 and np.abs(np.diff(inner, axis=1)).mean() < 3
    assert (blur_fill(image, np.full((80, 80), 255, np.uint8)) == 127).all()


class RecordingEngine:
    """A stand-in diffusion engine: returns what it was given, so the pre-fill shows."""

    name = "diffusers"
    device = "cpu"
    model_id = "recording"
    caps = ModelCaps(engine="diffusers", family="sd15", size_multiple=8, shape_multiple=8, prefills=True)

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def generate(self, request: EngineRequest, on_progress: ProgressFn, cancelled: CancelledFn) -> EngineOutput:
        self.images.append(request.image.copy())
        return EngineOutput([request.image.copy() for _ in request.seeds])


def test_runner_prefills_diffusion_jobs_below_strength_1_only() -> None:
    image = np.full((64, 64, 3), (40, 120, 200), np.uint8)
    image[24:40, 24:40] = (255, 0, 0)
    mask = np.zeros((64, 64), np.uint8)
    mask[22:42, 22:42] = 255
    engine = RecordingEngine()
    for strength, mode, changed in ((1.0, "neutral", False), (0.6, "none", False), (0.6, "auto", False), (0.6, "neutral", True)):
        out = run_job(engine, image, mask, JobOptions(strength=strength, fill=mode, grow=0, feather=0, padding=0), [1])
        seen = engine.images[-1]
        assert (seen[8, 8] == 127).all() == changed, (strength, mode)
        assert any("pre-filled" in n for n in out.notes) == changed
    # a classical engine fills the hole itself: the option is not used, and the result says so
    telea = ClassicalEngine("opencv-telea")
    out = run_job(telea, image, mask, JobOptions(strength=0.5, fill="neutral"), [1])
    assert any("fill 'neutral' was not used" in n for n in out.notes)
    out = run_job(telea, image, mask, JobOptions(strength=0.5), [1])
    assert out.notes == []


def test_transparent_pixels_are_prefilled_under_auto() -> None:
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :64] = (40, 120, 200, 255)  # the picture; the right third is an extended, empty canvas
    mask = np.zeros((64, 96), np.uint8)
    mask[:, 60:] = 255
    engine = RecordingEngine()
    out = run_job(engine, rgba, mask, JobOptions(strength=0.7, grow=0, feather=0, padding=0), [1])
    seen = engine.images[-1]
    assert np.abs(seen[:, -8:].astype(int) - (40, 120, 200)).max() <= 3  # not black any more
    assert any("transparent" in n for n in out.notes)


# -- the benchmark -----------------------------------------------------------------------


def test_bench_quality_runs_at_a_tiny_size_and_prints_one_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.quality", "--tiny", "--candidates", "patchmatch,opencv-telea,opencv-fsr", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| figure |"))
    assert header.split("|")[2:5] == [" patchmatch ", " opencv-telea ", " opencv-fsr "]
    for row in ("PSNR dB, all holes", "SSIM, all holes", "edge continuity, all holes", "texture distance, all holes",
                "s/MP of the region", "s for the large hole", "mean rank"):
        assert row in proc.stdout, row
    assert "best mean rank among those within 2 s for the large hole:" in proc.stdout
    assert "| figure |" in out.read_text()


def test_cli_writes_one_file_for_a_deterministic_model_and_two_for_patchmatch(daemon, tmp_path: Path) -> None:
    """`inpaintd inpaint --variants 2` used to write two byte-identical files with a
    classical model; now a deterministic one makes one file and a note, patchmatch two."""
    from PIL import Image
    from test_cli import inpaintd

    Image.fromarray(textured()).save(tmp_path / "in.png")
    Image.fromarray(box_mask()).save(tmp_path / "mask.png")
    args = ["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--variants", "2", "--seed", "3"]
    r = inpaintd(*args, "--out", str(tmp_path / "telea.png"), "--model", "opencv-telea", env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "telea.png").exists() and not (tmp_path / "telea-1.png").exists()
    assert "note: made 1 variant instead of 2" in r.stderr
    r = inpaintd(*args, "--out", str(tmp_path / "pm.png"), env=daemon.env)  # the daemon's default
    assert r.returncode == 0, r.stderr
    a, b = (np.array(Image.open(tmp_path / f"pm-{i}.png")) for i in (1, 2))
    assert not np.array_equal(a, b) and "made 1 variant" not in r.stderr


def test_both_plugins_send_fill_and_know_the_protocols_values() -> None:
    sys.path.insert(0, str(ROOT / "krita_plugin"))
    sys.path.insert(0, str(ROOT / "gimp_plugin" / "inpaintd_gimp"))
    import inpaintd_logic as gimp

    from inpaintd_krita import logic as krita
    from inpaintd_protocol import editor
    from inpaintd_protocol.options import BY_NAME

    # both plugins offer fill from the protocol's option table (tests/test_option_table.py)
    assert BY_NAME["fill"].choices == FILL_MODES and [v for v, _ in editor.choices(BY_NAME["fill"])] == list(FILL_MODES)
    assert krita.Settings().job_options()["fill"] == "auto"
    assert krita.Settings(fill="classical").job_options()["fill"] == "classical"
    assert krita.Settings(fill="bogus").job_options()["fill"] == "auto"  # an old or edited settings file
    assert krita.Settings.from_strings(krita.Settings(fill="blur").to_strings()).fill == "blur"
    assert gimp.Options().job_options()["fill"] == "auto"
    assert gimp.Options.from_mapping({"fill": "neutral"}).job_options()["fill"] == "neutral"
    assert gimp.Options.from_mapping({"fill": None}).job_options()["fill"] == "auto"  # GIMP's empty string
    problems = gimp.Options(fill="lama").validate()
    assert problems and "Start with 'lama' is not one of" in problems[0]
    # added after the first release's arguments: positional scripts keep working
    assert next(a.position for a in gimp.ARGS if a.name == "fill") == 14  # after color-match, before guidance-scale
