"""Shared bits of the trust tests (tests/test_trust_*.py): figures and daemon memory.

Figures are printed to stderr and collected in one JSON file under pytest's base temp
folder (its path is printed), so a run's numbers can be read back without `-s`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_FIGURES: dict[str, Any] = {}


def record(tmp_path_factory: Any, name: str, figures: dict[str, Any]) -> None:
    """Print `figures` and merge them into <basetemp>/trust-figures.json under `name`."""
    _FIGURES[name] = figures
    path = Path(tmp_path_factory.getbasetemp()) / "trust-figures.json"
    path.write_text(json.dumps(_FIGURES, indent=2, sort_keys=True))
    print(f"\n[trust] {name}: {json.dumps(figures, sort_keys=True)}  (all figures: {path})", file=sys.stderr)


def rss(pid: int) -> int:
    """Resident memory of a process in bytes, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
