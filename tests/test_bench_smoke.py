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
