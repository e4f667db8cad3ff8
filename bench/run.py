"""Run every benchmark this machine can run and print one table.

    .venv/bin/python -m bench.run [--quick] [--only transport,overhead,canvas,gpu,ray_bench] [--out FILE]

Benchmarks are not tests: they assert nothing about time.  Each figure is a ratio of two
things measured side by side in the same run (see bench/common.py), except the GPU
figures, which are absolute and exist only where a GPU ran them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench.common import Config, Row, Section, markdown_table, text_table  # noqa: E402

BENCHMARKS = ("transport", "overhead", "canvas", "gpu", "ray_bench", "families")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}{gpu}, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (about a minute)")
    p.add_argument("--tiny", action="store_true", help="smallest sizes: only proves the code runs")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    p.add_argument("--out", type=Path, help="append the table as markdown to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    cfg = Config(quick=args.quick, tiny=args.tiny, verbose=args.verbose)

    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"# {command.strip()}\n# machine: {machine()}\n# date: {when}", flush=True)
    sections: list[Section] = []
    load_start = os.getloadavg()[0]  # other work on the machine shows up as noise
    for name in names:
        t0 = time.perf_counter()
        print(f"# running {name} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            section = module.run(cfg)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            section = Section(name, [Row(name, "", "", None, status="FAILED", note=f"{type(exc).__name__}: {exc}")])
            if cfg.verbose:
                raise
        sections.append(section)
        print(f"# {name} took {time.perf_counter() - t0:.1f} s", flush=True)

    rows = [r for s in sections for r in s.rows]
    notes = [n for s in sections for n in s.notes]
    notes.append(f"load average (1 min) at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}, on {os.cpu_count()} cores")
    print()
    print(text_table(rows))
    for n in notes:
        print(f"- {n}")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(f"\n### `{command.strip()}`\n\nMachine: {machine()}  \nDate: {when}\n\n")
            f.write(markdown_table(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes))
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
