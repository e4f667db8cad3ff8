"""The benchmark suite must keep running: one cheap pass at tiny sizes.

This checks that `bench.run` starts, measures and prints its table; it asserts nothing
about the figures (benchmarks are not tests, and this machine's timings are noise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_transport_runs_and_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--tiny", "--only", "transport", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "figure" in proc.stdout and "B/A" in proc.stdout
    assert "transport tcp" in proc.stdout and "transport ipc" in proc.stdout
    assert "| figure |" in out.read_text()


def test_bench_gpu_script_runs_at_tiny_sizes_and_marks_its_figures_owed(tmp_path: Path) -> None:
    # The GPU benchmark is run for real only where a GPU is lent; it must not have rotted
    # meanwhile.  On CPU it runs tiny configs of both architectures' code paths.
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--tiny", "--only", "gpu", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| gpu ")]
    assert any("1 variant(s), s/job" in r and "| owed |" in r for r in rows), rows
    assert any("through the protocol" in r and "daemon " in r for r in rows), rows
    assert not any("FAILED" in r for r in rows), rows


def test_bench_families_script_runs_each_memory_mode_at_tiny_sizes(tmp_path: Path) -> None:
    # SD 3.5 Large and FLUX.1 Fill per memory mode (#11): on CPU the tiny models run the
    # stock and inpaintd sides of every mode a CPU can run; the figures stay owed.
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--tiny", "--only", "families", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| families ")]
    for family in ("sd3", "flux-fill"):
        for mode in ("gpu", "offload", "group"):
            assert any(f"families {family} {mode}," in r and "inpaintd " in r and "owed" in r for r in rows), (family, mode)
        assert any(f"families {family} sequential" in r and "needs a CUDA device" in r for r in rows), rows
        for combo in ("gpu fp8", "gpu int8", "gpu nf4", "offload nf4"):  # --quantize as the engine applies it
            assert any(f"families {family} {combo}," in r and "quantised: transformer: " in r for r in rows), (family, combo)
    assert not any("FAILED" in r for r in rows), rows
