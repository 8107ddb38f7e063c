"""Report tools of the demo (its report: rdance.jobs.demo_report) and the ablations: metrics read
back from the runs' ``metrics.jsonl``, line plots and sample grids as PNGs (PIL only), tables
with mean ± std, and documents written as Markdown and as one self-contained HTML file. Nothing
here imports jax.
"""
from __future__ import annotations

import base64
import html
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rdance.train.metrics import read_records

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


# ----- metrics

def read_metrics(workdir: str) -> dict[int, dict]:
    """``WORKDIR/metrics.jsonl`` by step, a step's records merged (a step's scalars and its eval)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: has the run in {workdir} started?")
    out: dict[int, dict] = {}
    for record in read_records(path):
        out.setdefault(record["step"], {}).update(record)
    return out


def series(records: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = [s for s in sorted(records) if key in records[s]]
    return steps, [float(records[s][key]) for s in steps]


def value(records: dict[int, dict], key: str, how: str = "last", where: str = "") -> float:
    """One number from a run: the ``last`` or ``first`` logged value of ``key``, or ``late_mean``
    (the mean over the last quarter of the steps that logged it)."""
    steps, values = series(records, key)
    if not values:
        known = sorted({k for r in records.values() for k in r if k != "step"})
        raise KeyError(f"{key} is not in {where or 'the metrics'}; it has {', '.join(known)}")
    if how == "last":
        return values[-1]
    if how == "first":
        return values[0]
    if how == "late_mean":
        return float(np.mean(values[-max(1, len(values) // 4):]))
    raise ValueError(f"how={how!r}: use last, first or late_mean")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.512 ± 0.034'; small numbers (below 0.01) in scientific notation: '3.1e-04 ± 2.0e-05'."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    if 0 < abs(mean) < 0.01 or 0 < std < 10 ** -digits:
        return f"{mean:.1e} ± {std:.1e}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """TensorBoard-style exponential smoothing, debiased at the start."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


# ----- pictures

def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow without FreeType's bundled font
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str, size: tuple[int, int] = (640, 380)) -> Image.Image:
    """A line plot of ``{label: (x, y)}`` (NaNs are gaps; a lone point is a dot)."""
    width, height = size
    left, right, top, bottom = 72, 16, 34, 46
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    points = [(x, y) for xs, ys in curves.values() for x, y in zip(xs, ys) if np.isfinite(y)]
    draw.text((left, 8), title, fill="black", font=font)
    if not points:
        draw.text((left, height // 2), "no data", fill="grey", font=font)
        return image
    xs, ys = np.array(points, np.float64).T
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or abs(y0) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def to_px(x, y):
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    for t in _ticks(y0, y1):
        _, py = to_px(x0, t)
        draw.line([left - 4, py, left, py], fill="black")
        draw.line([left + 1, py, left + pw - 1, py], fill="#eeeeee")
        draw.text((4, py - 7), f"{t:.3g}", fill="black", font=small)
    for t in _ticks(x0, x1):
        px, _ = to_px(t, y0)
        draw.line([px, top + ph, px, top + ph + 4], fill="black")
        draw.text((px - 10, top + ph + 6), f"{t:g}", fill="black", font=small)
    draw.text((left + pw // 2 - 20, height - 18), xlabel, fill="black", font=small)
    draw.text((4, top - 16), ylabel, fill="black", font=small)
    for n, (label, (cx, cy)) in enumerate(curves.items()):
        colour = COLOURS[n % len(COLOURS)]
        segment = []
        for x, y in list(zip(cx, cy)) + [(None, None)]:
            if x is None or not np.isfinite(y):
                if len(segment) == 1:
                    px, py = segment[0]
                    draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
                elif segment:
                    draw.line(segment, fill=colour, width=2)
                segment = []
            else:
                segment.append(to_px(x, y))
        draw.line([left + 8, top + 10 + 16 * n, left + 28, top + 10 + 16 * n], fill=colour, width=3)
        draw.text((left + 32, top + 3 + 16 * n), label, fill="black", font=small)
    return image


LABEL_WIDTH = 160     # pixels of the band that names each row of a grid (its prompt)
LINE_HEIGHT = 13      # of _font(11)


def wrap_label(text: str, width: int, max_lines: int, font=None) -> list[str]:
    """``text`` in lines at most ``width`` pixels wide (in ``font``, PIL's default at 11 px), at most
    ``max_lines`` of them; what does not fit is cut and ends in '...'."""
    font = font or _font(11)
    fits = lambda line: font.getlength(line) <= width  # noqa: E731
    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    cut = len(lines) > max_lines or not all(fits(line) for line in lines)
    lines = lines[:max(max_lines, 1)]
    if cut:
        last = lines[-1] + "..."
        while len(last) > 3 and not fits(last):
            last = last[:-4].rstrip() + "..."
        lines[-1] = last
    return lines


def grid_image(rows: np.ndarray, scale: int = 3, pad: int = 2, labels: Sequence[str] | None = None) -> Image.Image:
    """uint8 images [R, C, H, W, 3] as one picture, ``scale`` times larger, grey gaps between; with
    ``labels`` (one per row, e.g. its prompt) a white band on the left names each row."""
    r, c, h, w, _ = rows.shape
    hs, ws = h * scale, w * scale
    band = LABEL_WIDTH if labels is not None else 0
    out = Image.new("RGB", (band + c * (ws + pad) + pad, r * (hs + pad) + pad), (128, 128, 128))
    if labels is not None:
        draw = ImageDraw.Draw(out)
        draw.rectangle([0, 0, band - 1, out.height - 1], fill="white")
        for i, label in enumerate(labels):
            for n, line in enumerate(wrap_label(label, band - 8, hs // LINE_HEIGHT)):
                draw.text((4, pad + i * (hs + pad) + n * LINE_HEIGHT), line, fill="black", font=_font(11))
    for i in range(r):
        for j in range(c):
            tile = Image.fromarray(rows[i, j]).resize((ws, hs), Image.NEAREST)
            out.paste(tile, (band + pad + j * (ws + pad), pad + i * (hs + pad)))
    return out


def row_caption(scores: np.ndarray) -> list[str]:
    """What a comparison row says under its label: its mean judge score and what that mean is over
    (one sample of each prompt shown), so it is not read as the report's table of more samples."""
    return [f"judge {float(np.mean(scores)):.3f}", f"{len(scores)} prompts x 1"]


def comparison_image(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], scale: int = 3) -> Image.Image:
    """Rows of (label, images [G, H, W, 3], judge scores [G]): the label and the row's mean score on
    the left, each image's score under it; columns are the same prompts, numbered 1..G on top."""
    g, h, w = rows[0][1].shape[:3]
    hs, ws, gap, left, text = h * scale, w * scale, 6, 96, 14
    top = text + gap
    out = Image.new("RGB", (left + g * (ws + gap), top + len(rows) * (hs + text + gap) + gap), "white")
    draw = ImageDraw.Draw(out)
    font, small = _font(13), _font(11)
    for c in range(g):
        draw.text((left + c * (ws + gap) + ws // 2 - 6, gap), str(c + 1), fill="black", font=small)
    for r, (label, images, scores) in enumerate(rows):
        y = top + gap + r * (hs + text + gap)
        draw.text((4, y + hs // 2 - 22), label, fill="black", font=font)
        for n, line in enumerate(row_caption(scores)):
            draw.text((4, y + hs // 2 - 6 + n * LINE_HEIGHT), line, fill="black", font=small)
        for c in range(g):
            x = left + c * (ws + gap)
            out.paste(Image.fromarray(images[c]).resize((ws, hs), Image.NEAREST), (x, y))
            draw.text((x + 2, y + hs + 1), f"{float(scores[c]):.2f}", fill="black", font=small)
    return out


# ----- documents

class Document:
    """Blocks (headings, paragraphs, tables, images, code) written as Markdown + PNG files and as
    one HTML file with the images inlined."""

    def __init__(self, folder: str):
        self.folder = folder
        self.blocks: list[tuple] = []
        os.makedirs(folder, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence]) -> None:
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows]))

    def image(self, picture: Image.Image | str, name: str, alt: str) -> None:
        """A PIL image (saved as ``name`` in the folder) or an existing PNG's path (copied)."""
        path = os.path.join(self.folder, name)
        if isinstance(picture, str):
            picture = Image.open(picture)
        picture.save(path)
        self.blocks.append(("img", name, alt))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "code":
                out.append("```\n" + block[1].rstrip("\n") + "\n```")
            elif kind == "table":
                out.append(markdown_table(block[1], block[2]))
            elif kind == "img":
                out.append(f"![{block[2]}]({block[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
               "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
               "pre{background:#f4f4f4;padding:8px;overflow-x:auto}</style></head><body>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(block[1])}</p>")
            elif kind == "code":
                out.append(f"<pre>{html.escape(block[1])}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "img":
                with open(os.path.join(self.folder, block[1]), "rb") as f:
                    data = base64.b64encode(f.read()).decode()
                out.append(f"<p><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'></p>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, name: str, title: str, with_html: bool = True) -> str:
        path = os.path.join(self.folder, name + ".md")
        with open(path, "w") as f:
            f.write(self.markdown())
        if with_html:
            with open(os.path.join(self.folder, name + ".html"), "w") as f:
                f.write(self.html(title))
        return path


def _inline_html(text: str) -> str:
    """Markdown's `code` spans as <code>, the rest escaped."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

