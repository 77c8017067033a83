"""One self-contained HTML page per report: figures embedded as base64 PNG, the tables, the sweep's settings,
what the numbers are (preset, sample counts, FID distance and reference), and what is missing or was ignored.

No network: no external CSS, fonts or scripts. A few lines of inline JavaScript record each image's
natural size in data attributes once the page has loaded (the browser test reads them from the DOM).
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from .collection import Collection
from .figures import PANELS, SMOKE_DOC, SMOKE_RUN_LINE, SMOKE_TITLE
from .grid import REPO_ROOT
from .tables import Table, fmt

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.smoke { background: #fde8e8; border: 3px solid #c00000; color: #c00000; padding: 0.8em 1.2em;
         font-size: 1.2em; font-weight: bold; margin: 1em 0; }
img { max-width: 100%; box-sizing: border-box; border: 1px solid #ddd; }
.panels { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1em; }
.scroll { overflow-x: auto; }
.gallery img { max-width: 900px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
blockquote { color: #444; border-left: 4px solid #ccc; margin: 0.5em 0; padding-left: 1em; }
code { background: #f4f4f4; }
.verdict { font-size: 1.2em; font-weight: bold; border-left: 6px solid #444; padding: 0.4em 0.8em; }
"""

_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images), ok = 0;
  imgs.forEach(function (img) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
    if (img.complete && img.naturalWidth > 0) { ok += 1; }
  });
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""


def _img(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _kv_table(items: dict[str, str]) -> str:
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in items.items())
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


def _table(t: Table) -> str:
    notes = "".join(f"<blockquote>{escape(n).replace('**', '')}</blockquote>" for n in t.notes)
    body = t.frame.map(fmt).to_html(index=False, escape=True, border=0)
    files = f"<p>Files: <code>tables/{t.name}.csv</code>, <code>tables/{t.name}.md</code></p>"
    return f'<h3>{escape(t.title)}</h3>{notes}<div class="scroll">{body}</div>{files}'


def _list(items: list[str], empty: str) -> str:
    if not items:
        return f"<p>{escape(empty)}</p>"
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _gallery(gallery: list[Path], token_usage: Path | None) -> str:
    if not gallery and token_usage is None:
        return ""
    parts = ["<h2>Reconstruction gallery</h2>"]
    if gallery:
        parts.append(
            "<p>The same validation images (top row) and their reconstruction at every K, per model size "
            "(each cell's <code>eval_recon/gallery.png</code>).</p>"
        )
        parts += [f'<div class="gallery">{_img(p, f"reconstruction gallery {p.stem}")}</div>' for p in gallery]
    else:
        parts.append("<p>No cell logged a gallery.</p>")
    if token_usage is not None:
        parts.append(
            "<h3>Per-position token usage</h3><p>Distinct codes used and their entropy at each token "
            "position over the evaluation images (<code>eval_recon/token_usage.json</code>).</p>"
        )
        parts.append(_img(token_usage, "per-position token usage"))
    return "".join(parts)


def render(
    col: Collection,
    fig_dir: Path,
    tables: list[Table],
    gallery: list[Path] = (),
    token_usage: Path | None = None,
    verdict: str | None = None,
) -> str:
    """The page as a string; `fig_dir` holds the PNGs that write_figures made; tables named "summary" and
    "reproduction" go at the top, under `verdict` (grid released's one line); `gallery` and `token_usage` are
    write_gallery's and write_token_usage's PNGs."""
    grid = col.grid.name
    top = ("summary", "reproduction")
    summary = "".join(f'<div id="{t.name}">{_table(t)}</div>' for t in tables if t.name in top)
    tables = [t for t in tables if t.name not in top]
    if verdict:
        summary = f'<p class="verdict" id="verdict">{escape(verdict)}</p>' + summary
    smoke = ""
    if col.smoke:
        run_line = ""
        if col.smoke_run:  # the doc named in the line, linked to the repository's copy
            doc = (REPO_ROOT / SMOKE_DOC).as_uri()
            run_line = "<br>" + escape(SMOKE_RUN_LINE).replace(SMOKE_DOC, f'<a href="{escape(doc)}">{SMOKE_DOC}</a>')
        smoke = (
            f'<div class="smoke" id="smoke-banner">{escape(SMOKE_TITLE)}{run_line}<br><small>'
            f"{escape('; '.join(col.smoke_reasons))}. Smoke runs check that the pipeline works end "
            f"to end; their numbers are not set beside the paper's.</small></div>"
        )
    statement = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in col.provenance().items())
    panels = "".join(_img(fig_dir / f"{m}.png", f"{title} against K") for m, (title, _) in PANELS.items())
    missing = [f"{c}: {why}" for c, why in col.missing.items()]
    fallbacks = [f"{c}: {why}" for c, why in col.fallbacks.items()]
    ignored = [f"{r.run_id} ({r.cell}): {r.reason}" for r in col.ignored]
    paper_note = (
        "The paper's values are not shown: these are smoke results."
        if col.smoke
        else "Paper values (dashed lines, hollow markers / hatched bars) come from "
        "<code>reports/paper_numbers.csv</code>, where present for this grid."
    )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>titok-bench report: {escape(grid)}{" (SMOKE)" if col.smoke else ""}</title>
<style>{_CSS}</style><script>{_JS}</script></head>
<body data-smoke="{"true" if col.smoke else "false"}">
<h1>TiTok scaling report: grid <code>{escape(grid)}</code></h1>
<p>{len(col.runs)} of {len(col.grid.cells)} cells have a finished run. MLflow experiment
<code>{escape(col.experiment)}</code> at <code>{escape(col.tracking_uri)}</code>; sweep run
<code>{escape(col.sweep_run_id or "none found")}</code>. Generated {generated}.</p>
{smoke}
{summary}
<h2>What these numbers are</h2>
<ul>{statement}</ul>
<p>{paper_note}</p>
<h2>Figures</h2>
{_img(fig_dir / "combined.png", "all panels")}
<details><summary>Single panels (also as SVG in <code>figures/</code>)</summary>
<div class="panels">{panels}</div></details>
{_gallery(list(gallery), token_usage)}
<h2>Tables</h2>
{"".join(_table(t) for t in tables)}
<p>All numbers, one row per cell and metric: <code>tables/tidy.csv</code>.</p>
<h2>Missing cells</h2>
{_list(missing, "None: every cell of the grid has a finished run.")}
<h2>Runs kept without titok.status=finished</h2>
{_list(fallbacks, "None.")}
<h2>Runs ignored</h2>
{_list(ignored, "None.")}
<h2>Sweep settings</h2>
<h3>Parent (sweep) run: params and titok.* tags</h3>
{_kv_table(col.sweep_settings) if col.sweep_settings else "<p>No sweep run found.</p>"}
<details><summary>Params shared by all kept cell runs</summary>{_kv_table(col.common_params())}</details>
</body></html>
"""


def write_html(
    col: Collection,
    fig_dir: Path,
    tables: list[Table],
    path: Path,
    gallery: list[Path] = (),
    token_usage: Path | None = None,
    verdict: str | None = None,
) -> Path:
    path.write_text(render(col, fig_dir, tables, gallery, token_usage, verdict), encoding="utf-8")
    return path
