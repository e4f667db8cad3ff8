"""Every finished job, kept across restarts: the artist's history (PROTOCOL.md 5.9-5.11).

For each job that ends with a result the daemon keeps its parameters (model, options as it
ran, seeds, the style), where it sat on the canvas, a thumbnail of each variant, and the
full pixels needed to bring it back or build on it: each variant's layer, the source
region the job started from and its mask over that region, and the reference images it was
sent with.  `vary` and `rerun` start new jobs from these files (and the job's LoRAs), so no
pixels travel again.

The rows are in SQLite (`history.sqlite3`), the pixels in PNG files beside it (lossless, so
a fetched layer is the result byte for byte).  Rows and thumbnails are written at once, on
the daemon's thread (a thumbnail is a few kilobytes); the full-size PNGs on a writer thread,
so that a large result never holds up the socket; whoever needs them waits for them.  The
store is bounded by `max_bytes` (files and thumbnails): past it the oldest entries that are
not starred are deleted, pixels and row.  Starred entries are never evicted.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("inpaintd.history")

#: Longest side of a variant's thumbnail, in pixels.
THUMBNAIL_SIDE = 128
#: Entries one `history` page may hold at most.
MAX_PAGE = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    job TEXT PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    parent_variant INTEGER NOT NULL DEFAULT -1,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    prompt TEXT NOT NULL,
    options TEXT NOT NULL,
    seeds TEXT NOT NULL,
    region TEXT NOT NULL,
    canvas TEXT NOT NULL,
    starred INTEGER NOT NULL DEFAULT 0,
    pixels INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    loras TEXT NOT NULL DEFAULT '[]',
    refs INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
CREATE TABLE IF NOT EXISTS variants (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    thumbnail BLOB NOT NULL,
    PRIMARY KEY (job, idx)
);
"""

#: Columns added since the first history files, with their definitions: an older file
#: gains them when it is opened (its entries: no LoRAs, no references).
_ADDED_COLUMNS = {"loras": "TEXT NOT NULL DEFAULT '[]'", "refs": "INTEGER NOT NULL DEFAULT 0"}

# `entries.pixels`: whether the full-size files are there.
_NONE, _KEPT, _WRITING = 0, 1, 2


class Expired(LookupError):
    """The entry is known but its pixels are not kept (a daemon stopped while writing them)."""


@dataclass
class VariantEntry:
    index: int
    seed: int
    width: int
    height: int
    #: RGBA thumbnail, at most THUMBNAIL_SIDE a side.
    thumbnail: np.ndarray


@dataclass
class Entry:
    """One finished job as the history keeps it."""

    job: str
    created: float
    kind: str  # "inpaint", "vary" or "rerun"
    model: str
    options: dict[str, Any]  # the job options as the job ran (style applied)
    seeds: list[int]
    region: tuple[int, int, int, int]  # x, y, width, height on the canvas
    canvas: tuple[int, int]  # width, height of the image the job was made on
    variants: list[VariantEntry] = field(default_factory=list)
    parent: str = ""  # the job a vary or rerun started from
    parent_variant: int = -1
    engine: str = ""  # the engine that made it ("diffusers", "classical")
    starred: bool = False
    pixels_kept: bool = False
    bytes: int = 0
    #: The LoRAs the job was sent with (name, weight); those of `<lora:…>` tags stay in its prompt.
    loras: list[tuple[str, float]] = field(default_factory=list)
    #: How many reference images it was sent with (kept beside its pixels: `History.references`).
    references: int = 0

    @property
    def prompt(self) -> str:
        return str(self.options.get("prompt", ""))


@dataclass
class Record:
    """What the daemon hands over when a job ends with a result."""

    entry: Entry
    layers: list[np.ndarray]  # each H x W x 4 uint8, the region's size
    source: np.ndarray  # the region of the image the job started from, H x W x 3|4
    mask: np.ndarray  # the job's mask over the region, H x W uint8
    references: list[np.ndarray] = field(default_factory=list)  # as sent, each h x w x 3|4


def thumbnail(rgba: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """`rgba` scaled to fit `side` x `side` (never up)."""
    img = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(img)


def _png(array: np.ndarray, level: int = 1) -> bytes:
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def _unpng(data: bytes | Path) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return np.asarray(img).copy()


class History:
    """The history store.  Thread-safe: the daemon's thread records, answers requests and
    reads pixels; a writer thread writes the full-size PNGs."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pixels_dir = self.folder / "pixels"
        self._pixels_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.folder / "history.sqlite3"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE entries ADD COLUMN {name} {definition}")
        # Pixels a stopped daemon was still writing are not to be trusted.
        for (job,) in self._db.execute("SELECT job FROM entries WHERE pixels = ?", (_WRITING,)).fetchall():
            shutil.rmtree(self._pixels_dir / job, ignore_errors=True)
        self._db.execute("UPDATE entries SET pixels = ? WHERE pixels = ?", (_NONE, _WRITING))
        self._pending: dict[str, threading.Event] = {}
        self._queue: queue.Queue[Record | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="inpaintd-history", daemon=True)
        self._writer.start()

    # -- writing ------------------------------------------------------------------------

    def record(self, rec: Record) -> None:
        """Keep a finished job: its row and thumbnails now, its full pixels on the writer thread."""
        e = rec.entry
        thumbs = [(v.index, v.seed, v.width, v.height, _png(v.thumbnail, 6)) for v in e.variants]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO entries (job, created, kind, parent, parent_variant, model, engine, prompt, options, "
                "seeds, region, canvas, starred, pixels, bytes, loras, refs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.job, e.created, e.kind, e.parent, e.parent_variant, e.model, e.engine, e.prompt, json.dumps(e.options),
                 json.dumps(e.seeds), json.dumps(list(e.region)), json.dumps(list(e.canvas)), int(e.starred), _WRITING,
                 sum(len(t[4]) for t in thumbs), json.dumps([[name, weight] for name, weight in e.loras]),
                 len(rec.references)),
            )
            self._db.execute("DELETE FROM variants WHERE job = ?", (e.job,))
            self._db.executemany("INSERT INTO variants (job, idx, seed, width, height, thumbnail) VALUES (?, ?, ?, ?, ?, ?)",
                                 [(e.job, *t) for t in thumbs])
            self._db.execute("COMMIT")
            self._pending[e.job] = threading.Event()
        self._queue.put(rec)

    def _write_loop(self) -> None:
        while True:
            rec = self._queue.get()
            if rec is None:
                return
            job = rec.entry.job
            try:
                folder = self._pixels_dir / job
                folder.mkdir(parents=True, exist_ok=True)
                size = 0
                files = [("source.png", rec.source), ("mask.png", rec.mask)]
                files += [(f"r{i}.png", reference) for i, reference in enumerate(rec.references)]
                files += [(f"v{i}.png", layer) for i, layer in zip((v.index for v in rec.entry.variants), rec.layers, strict=True)]
                for name, array in files:
                    data = _png(array)
                    (folder / name).write_bytes(data)
                    size += len(data)
                with self._lock:
                    self._db.execute("UPDATE entries SET pixels = ?, bytes = bytes + ? WHERE job = ?", (_KEPT, size, job))
                    self._evict(keep=job)
            except Exception:  # a full disk must not take the daemon down: the entry keeps no pixels
                log.exception("history: could not keep the pixels of job %s", job)
                with self._lock:
                    self._db.execute("UPDATE entries SET pixels = ? WHERE job = ?", (_NONE, job))
                shutil.rmtree(self._pixels_dir / job, ignore_errors=True)
            finally:
                with self._lock:
                    done = self._pending.pop(job, None)
                if done is not None:
                    done.set()

    def _evict(self, keep: str) -> None:
        """Delete the oldest unstarred entries until the store is within `max_bytes` (the one
        just written last of all: a single result larger than the budget is not kept)."""
        total = int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0])
        while total > self.max_bytes:
            row = self._db.execute(
                "SELECT job, bytes FROM entries WHERE starred = 0 ORDER BY (job = ?), created LIMIT 1", (keep,)
            ).fetchone()
            if row is None:
                return  # all starred: kept beyond the budget, as promised
            self._delete(row[0])
            total -= int(row[1])
            log.info("history: evicted job %s (%d bytes) to stay within %d bytes", row[0], row[1], self.max_bytes)

    def _delete(self, job: str) -> None:
        self._db.execute("DELETE FROM entries WHERE job = ?", (job,))
        self._db.execute("DELETE FROM variants WHERE job = ?", (job,))
        shutil.rmtree(self._pixels_dir / job, ignore_errors=True)

    def close(self) -> None:
        self._settle()
        self._queue.put(None)
        self._writer.join(30)
        with self._lock:
            self._db.close()

    # -- reading ------------------------------------------------------------------------

    def _settle(self, timeout: float = 30.0) -> None:
        """Wait for the pixels being written (a few milliseconds to a second), so that what
        is read says whether they are kept and how much they take, and evictions are done."""
        with self._lock:
            pending = list(self._pending.values())
        deadline = time.monotonic() + timeout
        for event in pending:
            event.wait(max(0.0, deadline - time.monotonic()))

    def page(self, query: str = "", offset: int = 0, limit: int = 20, starred: bool = False) -> tuple[list[Entry], int]:
        """Entries newest first whose prompt contains `query` (case-insensitive), and how
        many match in all."""
        self._settle()
        where, args = self._where(query, starred)
        limit = max(0, min(limit, MAX_PAGE))
        with self._lock:
            total = int(self._db.execute(f"SELECT COUNT(*) FROM entries {where}", args).fetchone()[0])
            rows = self._db.execute(
                f"SELECT * FROM entries {where} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?", (*args, limit, max(0, offset))
            ).fetchall()
            return [self._entry(row) for row in rows], total

    @staticmethod
    def _where(query: str, starred: bool) -> tuple[str, tuple[Any, ...]]:
        clauses: list[str] = []
        args: list[Any] = []
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("prompt LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if starred:
            clauses.append("starred = 1")
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)

    def get(self, job: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM entries WHERE job = ?", (job,)).fetchone()
            return self._entry(row) if row else None

    def _entry(self, row: Sequence[Any]) -> Entry:
        (job, created, kind, parent, parent_variant, model, engine, _prompt, options, seeds, region, canvas, starred, pixels,
         nbytes, loras, refs) = row
        variants = [
            VariantEntry(idx, seed, w, h, _unpng(bytes(thumb)))
            for idx, seed, w, h, thumb in self._db.execute(
                "SELECT idx, seed, width, height, thumbnail FROM variants WHERE job = ? ORDER BY idx", (job,))
        ]
        return Entry(job, created, kind, model, json.loads(options), json.loads(seeds), tuple(json.loads(region)),
                     tuple(json.loads(canvas)), variants, parent, parent_variant, engine, bool(starred), pixels == _KEPT,
                     nbytes, [(str(name), float(weight)) for name, weight in json.loads(loras)], int(refs))

    def star(self, job: str, on: bool) -> Entry:
        self._settle()
        with self._lock:
            changed = self._db.execute("UPDATE entries SET starred = ? WHERE job = ?", (int(on), job)).rowcount
            if not changed:
                raise KeyError(job)
            if not on:
                self._evict(keep="")
            entry = self.get(job)
        if entry is None:  # unstarred and over the budget: gone at once
            raise KeyError(job)
        return entry

    def delete(self, jobs: Iterable[str]) -> int:
        with self._lock:
            n = 0
            for job in jobs:
                if self._db.execute("SELECT 1 FROM entries WHERE job = ?", (job,)).fetchone():
                    self._delete(job)
                    n += 1
            return n

    def _files(self, job: str) -> Path:
        """The folder of `job`'s pixels, once they are written; KeyError for no such entry,
        Expired where its pixels are not kept."""
        with self._lock:
            pending = self._pending.get(job)
        if pending is not None:
            pending.wait(60)
        entry = self.get(job)
        if entry is None:
            raise KeyError(job)
        if not entry.pixels_kept:
            raise Expired(job)
        return self._pixels_dir / job

    def layers(self, job: str, indexes: Iterable[int] | None = None) -> list[tuple[VariantEntry, np.ndarray]]:
        """The full-size RGBA layers of `job` (all variants, or those of `indexes`)."""
        folder = self._files(job)
        entry = self.get(job)
        assert entry is not None
        wanted = None if indexes is None else set(indexes)
        out = []
        for v in entry.variants:
            if wanted is None or v.index in wanted:
                try:
                    out.append((v, _unpng(folder / f"v{v.index}.png")))
                except OSError as exc:
                    raise Expired(job) from exc
        return out

    def source(self, job: str) -> tuple[np.ndarray, np.ndarray]:
        """The region of the image `job` started from, and its mask over that region."""
        folder = self._files(job)
        try:
            return _unpng(folder / "source.png"), _unpng(folder / "mask.png")
        except OSError as exc:
            raise Expired(job) from exc

    def references(self, job: str) -> list[np.ndarray]:
        """The reference images `job` was sent with, as sent (alpha and all)."""
        folder = self._files(job)
        entry = self.get(job)
        assert entry is not None
        try:
            return [_unpng(folder / f"r{i}.png") for i in range(entry.references)]
        except OSError as exc:
            raise Expired(job) from exc

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
