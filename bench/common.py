"""Timing, rows and the table every benchmark shares.

The machines these run on are shared and noisy, so no figure is an absolute time taken
alone: each is a pair (A, B) measured interleaved, A B A B ..., so that drift in the
machine's load hits both sides alike, and the figure is the ratio of the medians.  The
median of the per-pair ratios is printed beside it: when the two disagree, the run was
noisy and the figure deserves less trust.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Config:
    """What `bench.run` was asked for; every benchmark reads the parts it needs."""

    quick: bool = False
    tiny: bool = False  # smallest sizes: proves the code runs, measures nothing useful
    verbose: bool = False

    def reps(self, full: int, quick: int) -> int:
        return quick if (self.quick or self.tiny) else full


@dataclass
class Pair:
    """Interleaved timings of A and B, in seconds."""

    a: list[float]
    b: list[float]

    @property
    def a_med(self) -> float:
        return statistics.median(self.a)

    @property
    def b_med(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        return self.b_med / self.a_med

    @property
    def pair_ratio(self) -> float:
        return statistics.median(b / a for a, b in zip(self.a, self.b, strict=True))


def interleaved(a: Callable[[], Any], b: Callable[[], Any], reps: int, warmup: int = 1) -> Pair:
    """Time `a` and `b` alternately (after `warmup` untimed rounds of each)."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(reps):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return Pair(ta, tb)


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    a: str  # label and value of the baseline, e.g. "bare 6.1 ms"
    b: str  # label and value of what is measured against it
    ratio: float | None
    pair_ratio: float | None = None
    goal: float | None = None  # B/A must be at most this; None: no goal for this row
    status: str = ""  # filled in from goal unless set (e.g. "owed", "info")
    note: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            if self.goal is None or self.ratio is None:
                self.status = "info"
            else:
                self.status = "met" if self.ratio <= self.goal else "NOT MET"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def pair_row(figure: str, a_label: str, b_label: str, pair: Pair, goal: float | None = None, note: str = "") -> Row:
    return Row(
        figure,
        f"{a_label} {ms(pair.a_med)}",
        f"{b_label} {ms(pair.b_med)}",
        pair.ratio,
        pair.pair_ratio,
        goal,
        note=note,
    )


HEADER = ("figure", "A", "B", "B/A", "pairs", "goal", "status", "note")


def _cells(row: Row) -> list[str]:
    return [
        row.figure,
        row.a,
        row.b,
        "" if row.ratio is None else f"{row.ratio:.2f}x",
        "" if row.pair_ratio is None else f"{row.pair_ratio:.2f}x",
        "" if row.goal is None else f"<= {row.goal:.2f}x",
        row.status,
        row.note,
    ]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    table = [list(HEADER)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1])
        if n == 0:
            out.append("  ".join("-" * w for w in widths) + "  ----")
    return "\n".join(out)


@dataclass
class Section:
    """What one benchmark returns: its rows, plus free-form lines for the report."""

    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sync(device: str) -> None:
    """Wait for the device (CUDA runs asynchronously: a time taken without this is the launch's)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
