"""Figures: the paper's Figure 4 panels (rFID, linear probing, gFID, IS, sampling speed against the number
of latent tokens K, one line per model size) and two of ours beside them (PSNR, codebook usage: the paper gives no
numbers for them), one PNG + SVG per panel and one combined figure; error bars wherever a cell logged the metric's
interval (`<metric>_lo` / `_hi`). Also the reconstruction gallery (per size: the same validation images above their
reconstructions at every K) and one cell's per-position token usage, from the cells' eval_recon artifacts.

A sizes x K grid draws lines against a log-scale K axis (missing cells are gaps); a grid of named models
(`released`) draws bars per model. The paper's values are drawn beside ours (dashed lines with hollow
markers, hatched bars) unless the report holds smoke results: then no paper values at all, and a watermark.
Uses matplotlib's object API (no pyplot), so nothing depends on the process-wide backend.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .collection import Collection
from .grid import cell_size_and_tokens

# metric -> (panel title, y-axis label); the order of the combined figure
PANELS = {
    "rfid": ("Reconstruction FID", "rFID (lower is better)"),
    "probe_top1": ("Linear probing", "top-1 accuracy (higher is better)"),
    "gfid": ("Generation FID", "gFID (lower is better)"),
    "gfid_is": ("Inception Score", "IS (higher is better)"),
    "samples_per_s": ("Sampling speed", "samples / s (higher is better)"),
    "psnr": ("Reconstruction PSNR (ours only)", "PSNR dB (higher is better)"),
    "codebook_usage": ("Codebook usage (ours only)", "share of codes used (higher is better)"),
}
# one colour and marker per model size, the same in every figure (the browser test looks for these colours)
SIZE_STYLE = {"S": ("#1f77b4", "o"), "B": ("#ff7f0e", "s"), "L": ("#2ca02c", "^")}
OTHER_STYLE = ("#7f7f7f", "D")
SMOKE_TITLE = "SMOKE RESULTS \u2014 not comparable with the paper"
SMOKE_COLOR = "#c00000"
SMOKE_DOC = "docs/smoke.md"
# what a smoke run (a toy-scale pipeline check) is, on every figure and at the top of the page
SMOKE_RUN_LINE = f"Smoke run: a pipeline check at toy scale; it cannot show the paper's scaling trend ({SMOKE_DOC})"
# deterministic SVGs (fixed ids, no date) whose text stays text (searchable, and checked by the tests)
_RC = {"svg.fonttype": "none", "svg.hashsalt": "titok-bench-report"}
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}}


def _style(size: str) -> tuple[str, str]:
    return SIZE_STYLE.get(size, OTHER_STYLE)


def _sizes(col: Collection) -> list[str]:
    """Model sizes of the grid's cells, S, B, L first."""
    sizes = {cell_size_and_tokens(c)[0] or "?" for c in col.grid.cells}
    return sorted(sizes, key=lambda s: (list(SIZE_STYLE).index(s) if s in SIZE_STYLE else len(SIZE_STYLE), s))


def _line_panel(ax, col: Collection, ours: pd.DataFrame, paper: pd.DataFrame) -> None:
    ks = list(col.grid.num_tokens)
    for size in _sizes(col):
        color, marker = _style(size)
        rows = ours[ours["model_size"] == size].set_index("num_tokens")
        if not rows.empty:
            # NaN at missing K values: matplotlib breaks the line there (a visible gap)
            values = np.array([rows["value"].get(k, np.nan) for k in ks], dtype=float)
            ax.plot(ks, values, color=color, marker=marker, lw=2, ms=7)
            yerr = _yerr(rows, ks, values)
            if yerr is not None:
                ax.errorbar(ks, values, yerr=yerr, fmt="none", ecolor=color, elinewidth=1.2, capsize=4)
        theirs = paper[paper["model_size"] == size].sort_values("num_tokens")
        if not theirs.empty:
            ax.plot(
                theirs["num_tokens"], theirs["value"], color=color, marker=marker, ls="--", lw=1.3, ms=7, mfc="white"
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlim(ks[0] / 1.3, ks[-1] * 1.3)
    ax.set_xlabel("number of latent tokens K")
    ax.grid(True, alpha=0.3)


def _yerr(rows: pd.DataFrame, index: list, values: np.ndarray) -> np.ndarray | None:
    """[2, n] distances from each value down to its interval's lo and up to its hi (0 where none was logged); None
    when no point has an interval."""
    if "lo" not in rows.columns or rows["lo"].isna().all():
        return None
    lo = np.array([rows["lo"].get(i, np.nan) for i in index], dtype=float)
    hi = np.array([rows["hi"].get(i, np.nan) for i in index], dtype=float)
    return np.nan_to_num(np.clip(np.stack([values - lo, hi - values]), 0, None))


def _bar_panel(ax, col: Collection, ours: pd.DataFrame, paper: pd.DataFrame) -> None:
    cells = list(col.grid.cells)
    x = np.arange(len(cells))
    width = 0.4 if not paper.empty else 0.7
    colors = [_style(cell_size_and_tokens(c)[0] or "?")[0] for c in cells]
    rows = ours.set_index("cell").reindex(cells)
    offset = -width / 2 if not paper.empty else 0.0
    values = rows["value"].to_numpy(dtype=float)
    ax.bar(
        x + offset,
        values,
        width,
        color=colors,
        yerr=_yerr(rows, cells, values),
        capsize=4,
        error_kw={"ecolor": "#333333"},
    )
    if not paper.empty:
        theirs = paper.set_index("cell")["value"].reindex(cells)
        ax.bar(x + width / 2, theirs.to_numpy(dtype=float), width, color="white", edgecolor=colors, hatch="//")
    for i, cell in enumerate(cells):
        if cell in col.missing and not ours.empty:
            ax.text(i + offset, 0, " missing", rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
    ax.set_xticks(x, cells, rotation=35, ha="right", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def _legend_handles(col: Collection, with_paper: bool) -> list:
    if col.grid.scaling:
        handles = [
            Line2D([], [], color=_style(s)[0], marker=_style(s)[1], lw=2, label=f"TiTok-{s}") for s in _sizes(col)
        ]
        if with_paper:
            handles.append(Line2D([], [], color="#444444", marker="o", mfc="white", ls="--", label="paper"))
        return handles
    handles = [Patch(color=_style(s)[0], label=f"encoder {s}") for s in _sizes(col)]
    if with_paper:
        handles.append(Patch(facecolor="white", edgecolor="#444444", hatch="//", label="paper"))
    return handles


def draw_panel(ax, col: Collection, metric: str, ours: pd.DataFrame, paper: pd.DataFrame, legend: bool = True) -> None:
    """One panel: `ours` and `paper` are tidy rows of this metric (paper empty when it must not be shown)."""
    title, ylabel = PANELS[metric]
    ax.set_title(f"{title} \u2014 grid {col.grid.name}", fontsize=11)
    ax.set_ylabel(ylabel)
    (_line_panel if col.grid.scaling else _bar_panel)(ax, col, ours, paper)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # near-constant metrics: plain values, no offset
    if ours.empty:
        ax.text(
            0.5,
            0.5,
            f"{metric}: not logged by any cell",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#777777",
        )
    elif legend:
        ax.legend(handles=_legend_handles(col, not paper.empty), fontsize=8, loc="best")


def _mark_smoke(fig: Figure, col: Collection) -> None:
    """The smoke warning: a red headline with the reasons, and a diagonal watermark across the figure."""
    reasons = col.smoke_reasons
    shown = "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else "")
    width = fig.get_figwidth()
    # about 9 characters of 11 pt bold per inch: wrap so that narrow single-panel figures keep the whole line
    lines = [SMOKE_TITLE, textwrap.fill(f"({shown})", int(9 * width))]
    if col.smoke_run:
        lines.append(textwrap.fill(SMOKE_RUN_LINE, int(9 * width)))
    fig.suptitle("\n".join(lines), color=SMOKE_COLOR, fontsize=11, fontweight="bold")
    fig.text(
        0.5,
        0.5,
        "SMOKE RESULTS",
        color=SMOKE_COLOR,
        alpha=0.15,
        fontsize=9 * width,
        fontweight="bold",
        rotation=25,
        ha="center",
        va="center",
        zorder=10,
    )


def _info_text(col: Collection) -> str:
    lines = [f"{k}: {v}" for k, v in col.provenance(brief=True).items()]
    if col.missing:
        names = list(col.missing)
        more = ", ..." if len(names) > 6 else ""
        lines.append(f"missing cells ({len(names)}): " + ", ".join(names[:6]) + more)
    return "\n".join(lines)


def _save(fig: Figure, stem: Path) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=120, metadata=_METADATA[ext])
        paths.append(path)
    return paths


def write_figures(col: Collection, ours: pd.DataFrame, paper: pd.DataFrame, fig_dir: Path) -> list[Path]:
    """figures/<metric>.png|svg per panel and figures/combined.png|svg; returns the files written."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    if col.smoke:  # smoke numbers are never set beside the paper's
        paper = paper.iloc[0:0]
    written = []
    with matplotlib.rc_context(_RC):
        for metric in PANELS:
            fig = Figure(figsize=(7.5, 5.0), layout="constrained")
            draw_panel(fig.add_subplot(), col, metric, ours[ours["metric"] == metric], paper[paper["metric"] == metric])
            if col.smoke:
                _mark_smoke(fig, col)
            written += _save(fig, fig_dir / metric)

        ncols = 3
        fig = Figure(figsize=(18, 15), layout="constrained")
        axes = fig.subplots(math.ceil((len(PANELS) + 1) / ncols), ncols).ravel()
        for ax, metric in zip(axes, PANELS):
            draw_panel(ax, col, metric, ours[ours["metric"] == metric], paper[paper["metric"] == metric], legend=False)
        info = axes[len(PANELS)]
        info.axis("off")
        info.legend(handles=_legend_handles(col, not paper.empty), loc="upper left", fontsize=11, frameon=False)
        info.text(0.0, 0.45, _info_text(col), transform=info.transAxes, va="top", fontsize=9, wrap=True)
        for ax in axes[len(PANELS) + 1 :]:
            ax.axis("off")
        if col.smoke:
            _mark_smoke(fig, col)
        written += _save(fig, fig_dir / "combined")
    return written


# ---- the reconstruction gallery and per-position token usage (eval_recon's artifacts) -----------------------------
def _gallery_strips(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(originals, reconstructions) strips [H, n W, 3] of an eval_recon gallery.png, and its description."""
    import json

    from PIL import Image

    with Image.open(path) as im:
        meta = json.loads(im.text.get("titok.gallery", "{}"))
        pixels = np.asarray(im.convert("RGB"))
    h = meta.get("tile", [pixels.shape[0] // 2])[0]
    return pixels[:h], pixels[h : 2 * h], meta


def write_gallery(col: Collection, artifacts: dict[str, dict[str, Path]], fig_dir: Path) -> list[Path]:
    """figures/gallery_<size>.png per model size with galleries: the validation images (top row), then their
    reconstruction at every K of the grid, one row per K (blank where a cell has no gallery)."""
    written = []
    for size in _sizes(col):
        cells = (
            [(k, f"TiTok-{size}-{k}") for k in col.grid.num_tokens]
            if col.grid.scaling
            else [(cell_size_and_tokens(c)[1], c) for c in col.grid.cells if cell_size_and_tokens(c)[0] == size]
        )
        strips = {k: _gallery_strips(artifacts[c]["gallery"]) for k, c in cells if "gallery" in artifacts.get(c, {})}
        if not strips:
            continue
        originals = next(iter(strips.values()))[0]
        rows = [("original", originals)] + [
            (f"K={k}", strips[k][1] if k in strips else np.full_like(originals, 255)) for k, _ in cells
        ]
        canvas = np.concatenate([r for _, r in rows], 0)
        h = originals.shape[0]
        fig = Figure(figsize=(min(14, 1.2 * canvas.shape[1] / h + 1.5), 1.2 * len(rows) + 0.8), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(canvas, interpolation="nearest")
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], [name for name, _ in rows])
        ax.set_xticks([])
        ax.set_title(f"TiTok-{size}: validation images (top) and their reconstructions at each K", fontsize=11)
        if col.smoke:
            _mark_smoke(fig, col)
        path = fig_dir / f"gallery_{size}.png"
        fig.savefig(path, dpi=120, metadata=_METADATA["png"])
        written.append(path)
    return written


def token_usage_cell(col: Collection, artifacts: dict[str, dict[str, Path]]) -> str | None:
    """The cell whose per-position token usage the report plots: the largest K of the largest size that has one."""
    order = {s: i for i, s in enumerate(SIZE_STYLE)}
    have = [c for c in col.runs if "token_usage" in artifacts.get(c, {})]
    if not have:
        return None
    return max(have, key=lambda c: (order.get(cell_size_and_tokens(c)[0], -1), cell_size_and_tokens(c)[1] or 0))


def write_token_usage(col: Collection, artifacts: dict[str, dict[str, Path]], fig_dir: Path) -> Path | None:
    """figures/token_usage.png: per token position, the distinct codes used and their entropy over the evaluation
    images, for token_usage_cell."""
    import json

    cell = token_usage_cell(col, artifacts)
    if cell is None:
        return None
    usage = json.loads(artifacts[cell]["token_usage"].read_text())
    pos = np.arange(usage["num_tokens"])
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    color = _style(cell_size_and_tokens(cell)[0] or "?")[0]
    ax.bar(pos, usage["distinct_codes"], color=color, alpha=0.7, label="distinct codes used")
    ax.set_xlabel("token position")
    ax.set_ylabel(f"distinct codes (of {usage['codebook_size']}; {usage['num_images']} images)")
    ax2 = ax.twinx()
    ax2.plot(pos, usage["entropy_bits"], color="#333333", marker=".", label="entropy (bits)")
    ax2.set_ylabel("entropy of the position's codes (bits)")
    ax.set_title(f"Per-position token usage: {cell}", fontsize=11)
    ax.legend(
        handles=[*ax.get_legend_handles_labels()[0], *ax2.get_legend_handles_labels()[0]], fontsize=8, loc="lower right"
    )
    if col.smoke:
        _mark_smoke(fig, col)
    path = fig_dir / "token_usage.png"
    fig.savefig(path, dpi=120, metadata=_METADATA["png"])
    return path
