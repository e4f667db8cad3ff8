"""How good is each classical fill?  Real photos, real holes, the original pixels as truth.

    .venv/bin/python -m bench.quality [--quick] [--tiny] [--candidates a,b,...] [--out FILE]

The photos are scikit-image's sample photos (astronaut, coffee, chelsea, rocket), which no
one here made.  Into each a few holes are cut, of several shapes and sizes: thin strokes
(scratches, wires), a blob, a large box, and an object-shaped hole (scikit-image's horse
silhouette).  Each candidate fills each hole through the daemon's own code path
(`inpaintd.runner.run_job` on a `ClassicalEngine`, grow 0, feather 0, automatic context
padding, seed 1), and its fill is compared with the pixels that were there:

- PSNR (dB) over the hole's pixels; higher is closer.  Favours smooth guesses: a blur
  that gets the mean colour right beats a sharp but displaced texture.
- SSIM over the hole's pixels (the SSIM map, 7 px Gaussian windows, averaged where the
  hole is); higher is closer in local structure.
- edge continuity: inside the hole, within 4 px of its border, the normalised correlation
  of the fill's image gradient (Sobel, grey) with the original's; 1 means edges run on
  into the hole as they did in the photo, 0 means unrelated.
- detail: the fill's mean gradient magnitude in the hole over the original's; 1 is as
  much texture as the photo had, near 0 a blur.  Its ranking figure is |log(detail)|.
- texture distance: the sliced Wasserstein distance between the fill's 7 x 7 px patches
  and the original's, over the hole, on the image's high-pass band (the image less its
  Gaussian blur), as ProGAN's SWD compares patch distributions; lower is closer.  It does
  not care where a texture lands, only whether the hole holds the texture the photo had:
  the figure that sees a blur in fur as wrong, which PSNR and SSIM (known to favour blurry
  fills) and edge continuity do not.
- s/MP: the engine's time per megapixel of the region it processed (median).  Classical
  fills cost by the hole more than by the region, so one more row times each candidate on
  one large hole: a 256 px square in a 512 px region (astronaut), the native size of a
  diffusion model and a plausible "remove this" selection.

Every candidate runs on every (photo, hole) in the same run, one after another, so the
timings share the machine's load.  The last rows rank the candidates: for each quality
figure (PSNR, SSIM, edge continuity, |log detail|, texture distance), over all holes, the
rank of the candidate's mean (1 = best), then the mean of those five ranks.  The embedded default is
the candidate with the best mean rank among those that fill the large hole within
`--budget` seconds (2 s: a default must stay interactive on the 2-core machines this
project runs on).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # `python bench/quality.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from inpaintd.engines.classical import METHODS, ClassicalEngine  # noqa: E402
from inpaintd.runner import run_job  # noqa: E402
from inpaintd_protocol.messages import JobOptions  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HOLES = ("strokes", "blob", "box", "object")
BAND = 4  # px inside the hole's border for edge continuity
PATCH = 7  # px, side of the patches the texture distance compares


def load_photo(name: str, short_side: int | None = None) -> np.ndarray:
    from skimage import data

    image = np.ascontiguousarray(getattr(data, name)()[:, :, :3])
    if short_side and min(image.shape[:2]) > short_side:
        scale = short_side / min(image.shape[:2])
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def make_hole(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/255 mask of one hole of `kind`, sized to the photo and placed by `rng`."""
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    if kind == "strokes":  # three thin scratches, ~1% of the short side wide
        thick = max(2, round(side / 100))
        for _ in range(3):
            pts = np.stack([rng.uniform(0.1, 0.9, 4) * width, rng.uniform(0.1, 0.9, 4) * height], 1).astype(np.int32)
            cv2.polylines(mask, [pts], False, 255, thick)
    elif kind == "blob":  # an ellipse ~12% of the short side across
        r = max(3, round(side * 0.06))
        center = (int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.3, 0.7) * height))
        cv2.ellipse(mask, center, (r, max(2, round(r * 0.7))), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == "box":  # a large rectangle, 30% x 25% of the short side
        w, h = max(4, round(side * 0.30)), max(4, round(side * 0.25))
        x, y = int(rng.uniform(0.15, 0.85) * width - w / 2), int(rng.uniform(0.15, 0.85) * height - h / 2)
        mask[max(0, y):y + h, max(0, x):x + w] = 255
    elif kind == "object":  # scikit-image's horse silhouette, 35% of the short side tall
        from skimage import data

        horse = (~data.horse()).astype(np.uint8) * 255  # the horse is False on white
        h = max(6, round(side * 0.35))
        w = max(6, round(horse.shape[1] * h / horse.shape[0]))
        shape = cv2.resize(horse, (w, h), interpolation=cv2.INTER_NEAREST)
        x, y = int(rng.uniform(0.1, 0.9) * (width - w)), int(rng.uniform(0.1, 0.9) * (height - h))
        mask[y:y + h, x:x + w] = shape
    else:
        raise ValueError(kind)
    return mask


def _gray_gradients(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)


def texture_distance(result: np.ndarray, original: np.ndarray, inside: np.ndarray, samples: int = 2048,
                     projections: int = 64) -> float:
    """Sliced Wasserstein distance between the two images' high-pass 7 x 7 patches centred in
    the hole (the same centres for both, up to `samples` of them; fixed random directions)."""
    rng = np.random.default_rng(0)
    r = PATCH // 2
    ys, xs = np.nonzero(inside[r:-r, r:-r])
    if len(ys) == 0:
        return 0.0
    pick = rng.choice(len(ys), min(samples, len(ys)), replace=False)
    ys, xs = ys[pick] + r, xs[pick] + r
    offsets = np.arange(-r, r + 1)

    def patches(image: np.ndarray) -> np.ndarray:
        f = image.astype(np.float32)
        high = f - cv2.GaussianBlur(f, (0, 0), 2.0)
        rows = (ys[:, None, None] + offsets[None, :, None])
        cols = (xs[:, None, None] + offsets[None, None, :])
        return high[rows, cols].reshape(len(ys), -1)

    a, b = patches(result), patches(original)
    dirs = rng.standard_normal((a.shape[1], projections)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    return float(np.abs(pa - pb).mean())


@dataclass
class Scores:
    psnr: float
    ssim: float
    edge: float
    detail: float
    texture: float


def score(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> Scores:
    from skimage.metrics import structural_similarity

    inside = hole > 0
    diff = result[inside].astype(np.float64) - original[inside].astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)
    win = min(7, min(result.shape[:2]) // 2 * 2 - 1)
    _, ssim_map = structural_similarity(original, result, channel_axis=2, full=True, win_size=win, data_range=255)
    ssim = float(ssim_map.mean(axis=2)[inside].mean())
    # the band inside the hole along its border
    eroded = cv2.erode(inside.astype(np.uint8), np.ones((2 * BAND + 1, 2 * BAND + 1), np.uint8))
    band = inside & (eroded == 0)
    rx, ry = _gray_gradients(result)
    ox, oy = _gray_gradients(original)
    dot = float((rx[band] * ox[band] + ry[band] * oy[band]).sum())
    norm = math.sqrt(float((rx[band] ** 2 + ry[band] ** 2).sum()) * float((ox[band] ** 2 + oy[band] ** 2).sum()))
    edge = dot / norm if norm > 0 else 0.0
    rmag = float(np.hypot(rx[inside], ry[inside]).mean())
    omag = float(np.hypot(ox[inside], oy[inside]).mean())
    detail = rmag / omag if omag > 0 else 1.0
    return Scores(psnr, ssim, edge, detail, texture_distance(result, original, inside))


@dataclass
class Tally:
    by_hole: dict[str, list[Scores]] = field(default_factory=dict)
    s_per_mp: list[float] = field(default_factory=list)
    large_hole_s: float = float("nan")

    def all(self) -> list[Scores]:
        return [s for scores in self.by_hole.values() for s in scores]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def measure(candidates: list[str], photos: list[str], holes: list[str], short_side: int | None,
            log=lambda text: None) -> dict[str, Tally]:
    tallies = {c: Tally() for c in candidates}
    engines = {c: ClassicalEngine(c) for c in candidates}
    options = JobOptions(grow=0, feather=0, padding=-1, seed=1)
    for p_index, photo in enumerate(photos):
        image = load_photo(photo, short_side)
        for h_index, kind in enumerate(holes):
            rng = np.random.default_rng(1000 * p_index + h_index)
            hole = make_hole(kind, image.shape[0], image.shape[1], rng)
            for name in candidates:
                out = run_job(engines[name], image, hole, options, [1])
                layer = out.layers[0]
                result = image.copy()
                h, w = layer.rgba.shape[:2]
                result[layer.y:layer.y + h, layer.x:layer.x + w] = layer.rgba[:, :, :3]
                s = score(result, image, hole)
                tallies[name].by_hole.setdefault(kind, []).append(s)
                pw, ph = out.processing_size
                tallies[name].s_per_mp.append(out.timings["generate"] / (pw * ph / 1e6))
                log(f"{photo:<9} {kind:<7} {name:<15} PSNR {s.psnr:5.2f}  SSIM {s.ssim:.3f}  edge {s.edge:5.2f}  "
                    f"detail {s.detail:4.2f}  texture {s.texture:5.2f}  {out.timings['generate'] * 1000:7.1f} ms ({pw}x{ph})")
    for name in candidates:
        tallies[name].large_hole_s = time_large_hole(engines[name], short_side)
        log(f"large hole  {name:<15} {tallies[name].large_hole_s:.2f} s")
    return tallies


def time_large_hole(engine: ClassicalEngine, short_side: int | None) -> float:
    """Seconds for a 256 px square hole in a 512 px region (scaled down with `short_side`)."""
    image = load_photo("astronaut", short_side)
    side = min(image.shape[:2])
    hole = np.zeros(image.shape[:2], np.uint8)
    q = side // 4
    hole[q:side - q, q:side - q] = 255
    out = run_job(engine, image, hole, JobOptions(grow=0, feather=0, padding=q, seed=1), [1])
    return out.timings["generate"]


def rank(tallies: dict[str, Tally]) -> dict[str, float]:
    """Mean rank over the five quality figures (1 = best)."""
    figures = {
        "psnr": lambda s: -s.psnr, "ssim": lambda s: -s.ssim, "edge": lambda s: -s.edge,
        "detail": lambda s: abs(math.log(max(s.detail, 1e-6))),
        "texture": lambda s: s.texture,
    }
    ranks: dict[str, list[int]] = {name: [] for name in tallies}
    for key in figures.values():
        order = sorted(tallies, key=lambda n: _mean([key(s) for s in tallies[n].all()]))
        for position, name in enumerate(order, 1):
            ranks[name].append(position)
    return {name: _mean([float(r) for r in rs]) for name, rs in ranks.items()}


def table(tallies: dict[str, Tally], holes: list[str], budget: float) -> tuple[list[str], list[list[str]], str]:
    names = list(tallies)
    rows: list[list[str]] = []
    for label, get, fmt in (
        ("PSNR dB", lambda s: s.psnr, "{:.2f}"),
        ("SSIM", lambda s: s.ssim, "{:.3f}"),
        ("edge continuity", lambda s: s.edge, "{:.2f}"),
        ("detail", lambda s: s.detail, "{:.2f}"),
        ("texture distance", lambda s: s.texture, "{:.2f}"),
    ):
        for kind in [*holes, "all"]:
            values = [
                _mean([get(s) for s in (tallies[n].all() if kind == "all" else tallies[n].by_hole.get(kind, []))])
                for n in names
            ]
            rows.append([f"{label}, {kind}" if kind != "all" else f"**{label}, all holes**", *(fmt.format(v) for v in values)])
    speeds = [statistics.median(tallies[n].s_per_mp) for n in names]
    rows.append(["s/MP of the region (median)", *(f"{v:.2f}" for v in speeds)])
    rows.append(["s for the large hole", *(f"{tallies[n].large_hole_s:.2f}" for n in names)])
    ranks = rank(tallies)
    rows.append(["**mean rank** (1 = best)", *(f"{ranks[n]:.2f}" for n in names)])
    eligible = [n for n in names if tallies[n].large_hole_s <= budget] or names
    best = min(eligible, key=lambda n: ranks[n])
    return ["figure", *names], rows, best


def format_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="photos scaled to a 256 px short side (about half the time; its large hole is 128 px, so its verdict can differ)")
    p.add_argument("--tiny", action="store_true", help="two photos at 64 px, two holes: only proves the code runs")
    p.add_argument("--candidates", default=",".join(m.id for m in METHODS.values() if m.available),
                   help="comma-separated classical model ids (default: every one this install can run)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds a default may take for the large hole (default %(default)s)")
    p.add_argument("--out", type=Path, help="append the table as markdown to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="print every fill's figures as it goes")
    args = p.parse_args(argv)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in candidates if c not in METHODS]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; known: {', '.join(METHODS)}")
    photos, holes, short = list(PHOTOS), list(HOLES), None
    if args.quick:
        short = 256
    if args.tiny:
        photos, holes, short = photos[:2], ["blob", "box"], 64

    t0 = time.perf_counter()
    tallies = measure(candidates, photos, holes, short, log=print if args.verbose else (lambda text: None))
    header, rows, best = table(tallies, holes, args.budget)
    elapsed = time.perf_counter() - t0
    size = f"short side scaled to {short} px" if short else "full size"
    title = (f"Fill quality: {len(photos)} photos ({', '.join(photos)}; {size}) x {len(holes)} holes "
             f"({', '.join(holes)}), {len(candidates)} candidates, {elapsed:.0f} s")
    verdict = f"best mean rank among those within {args.budget:g} s for the large hole: {best}"
    text = f"{title}\n\n{format_table(header, rows)}\n\n{verdict}\n"
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(f"\n### `python -m bench.quality{' --quick' if args.quick else ''}{' --tiny' if args.tiny else ''}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
