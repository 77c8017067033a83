"""The scaling report's pieces on a synthetic store (tests/reports/test_reports.py's Store): the summary table's
Spearman values and pass/fail, error bars from logged intervals, the PSNR and codebook-usage panels, and the
reconstruction gallery and per-position token usage from eval_recon's artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from mlflow.entities import RunTag

from bench import tracking as T
from bench.eval.metrics import spearman
from bench.stages.eval_recon import save_gallery
from reports import build_report, load_grid
from reports.collect import collect
from reports.figures import PANELS, SMOKE_RUN_LINE, draw_panel
from reports.summary import NOT_EXPECTED
from tests.reports.test_reports import Store, scaling_metrics

GALLERY_CELLS = ("TiTok-S-16", "TiTok-S-64", "TiTok-L-256")  # S-32 and the rest have none: blank rows


def metrics_with_intervals(size: str, k: int) -> dict[str, float]:
    m = scaling_metrics(size, k, 64)
    m["psnr"] = 20 + {"S": 0, "B": 1, "L": 2}[size] + np.log2(k)
    if (size, k) == ("B", 16):  # B above L at K=16: the PSNR order fails there
        m["psnr"] = 30.0
    m["codebook_usage"] = min(1.0, k / 256)
    for metric, half in (("rfid", 0.1), ("psnr", 0.5), ("gfid", 0.2), ("probe_top1", 0.01)):
        m[f"{metric}_lo"], m[f"{metric}_hi"] = m[metric] - half, m[metric] + half
    return m


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_summary")
    s = Store(root / "mlflow.db")
    exp = s.client.create_experiment(T.experiment_name("latent_vs_size"), artifact_location=(root / "art").as_uri())
    parent = s.client.create_run(exp, tags={T.TAG_ROLE: "sweep", T.TAG_GRID: "latent_vs_size"}).info.run_id
    s.client.log_batch(parent, tags=[RunTag(T.TAG_PRESET, "paper")])
    files = root / "files"
    files.mkdir()
    for cell in load_grid("latent_vs_size").cells:
        size, k = cell.split("-")[1], int(cell.split("-")[2])
        # smoke results (stand-in weights, 64 images) of the paper's preset: judged, not a smoke run
        run_id = s.cell(
            exp, parent, "latent_vs_size", cell, metrics_with_intervals(size, k), preset="paper", weights_random=True
        )
        if cell in GALLERY_CELLS:
            g = torch.Generator().manual_seed(k)
            pairs = torch.randint(0, 256, (2, 4, 3, 8, 8), generator=g, dtype=torch.uint8)
            folder = files / cell
            folder.mkdir()
            save_gallery(pairs, folder / "gallery.png", cell)
            usage = {
                "num_tokens": k,
                "codebook_size": 256,
                "num_images": 64,
                "distinct_codes": [5] * k,
                "entropy_bits": [2.0] * k,
            }
            (folder / "token_usage.json").write_text(json.dumps(usage))
            for name in ("gallery.png", "token_usage.json"):
                s.client.log_artifact(run_id, str(folder / name), "eval_recon")
    return s.uri


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report("latent_vs_size", store, tmp_path_factory.mktemp("summary_report"))


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 8, 9, 1]) == pytest.approx(-0.8)
    assert spearman([1, 2, 3], [1, 1, 1]) != spearman([1, 2, 3], [1, 1, 1])  # constant: NaN


def test_summary_table_checks_the_figure_4_targets(report):
    summary = pd.read_csv(report.out_dir / "tables" / "summary.csv")
    rows = summary.set_index(["check", "size", "K"])
    for size in ("S", "B", "L"):
        rfid = rows.loc[("Spearman(K, rFID)", size, "all")]
        assert rfid["value"] == pytest.approx(-1.0) and rfid["result"] == "pass" and rfid["lo"] <= rfid["hi"]
        assert rows.loc[("Spearman(K, gFID)", size, "all"), "value"] == pytest.approx(-1.0)
        assert pd.isna(rows.loc[("Spearman(K, gFID)", size, "all"), "result"])  # no target: reported only
    assert rows.loc[("Spearman(K, PSNR)", "S", "all"), "result"] == "pass"
    assert rows.loc[("Spearman(K, PSNR)", "B", "all"), "value"] < 0.8  # B-16's outlier
    assert rows.loc[("Spearman(K, PSNR)", "B", "all"), "result"] == "fail"
    gap = rows.loc[("rFID gap L - S", "L-S", "16")]
    assert gap["value"] == pytest.approx(0.5 * 16 - 1.0 * 16) and gap["result"] == "pass"
    assert gap["lo"] == pytest.approx(gap["value"] - np.hypot(0.1, 0.1))  # both cells' half-widths combined
    assert rows.loc[("rFID: L better than B better than S", "L,B,S", "32"), "result"] == "pass"
    assert rows.loc[("PSNR: L better than B better than S", "L,B,S", "16"), "result"] == "fail"
    assert rows.loc[("PSNR: L better than B better than S", "L,B,S", "32"), "result"] == "pass"
    assert summary["smoke"].all()
    page = report.html.read_text()
    assert page.index('id="summary"') < page.index("<h2>Figures</h2>")  # at the top, below the smoke banner
    assert page.index('id="smoke-banner"') < page.index('id="summary"')


def test_panels_draw_error_bars_from_logged_intervals(store, report):
    col = collect(load_grid("latent_vs_size"), store)
    tidy = col.table()
    assert {"psnr", "codebook_usage"} <= set(PANELS)
    for metric, bars in (("rfid", True), ("psnr", True), ("codebook_usage", False)):
        ax = Figure().add_subplot()
        draw_panel(ax, col, metric, tidy[tidy["metric"] == metric], tidy.iloc[0:0])
        errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert (len(errorbars) == 3) is bars, metric  # one per size where intervals were logged
    for name in ("psnr", "codebook_usage"):
        assert (report.out_dir / "figures" / f"{name}.png") in report.figures


def test_gallery_and_token_usage_are_written_and_shown(report):
    figures = report.out_dir / "figures"
    assert (figures / "gallery_S.png").is_file() and (figures / "gallery_L.png").is_file()
    assert not (figures / "gallery_B.png").exists()  # no B cell logged a gallery
    assert (figures / "token_usage.png").is_file()
    page = report.html.read_text()
    assert 'alt="reconstruction gallery gallery_S"' in page and 'alt="reconstruction gallery gallery_L"' in page
    assert "Per-position token usage" in page
    assert page.count("data:image/png;base64,") == len(PANELS) + 1 + 2 + 1


def _smoke_run_store(path, preset: str, sweep_smoke: bool) -> str:
    s = Store(path)
    exp, parent = s.sweep("latent_vs_size", preset)
    if sweep_smoke:
        s.client.log_param(parent, "preset.smoke", "True")  # as the sweep logs the flattened preset
    for size in ("S", "B", "L"):
        for k in (16, 32, 64):
            metrics = metrics_with_intervals(size, k)
            if size == "B":  # one rFID at every K, as toy cells on a plateau give: no Spearman
                metrics["rfid"] = 5.0
            s.cell(exp, parent, "latent_vs_size", f"TiTok-{size}-{k}", metrics, preset=preset)
    return s.uri


@pytest.mark.parametrize("preset, sweep_smoke", [("tiny", False), ("my_cpu_check", True)])
def test_a_smoke_run_reads_not_expected_instead_of_pass_or_fail(tmp_path, preset, sweep_smoke):
    """Decided by what the runs record (the tiny preset's tag, or the sweep's preset.smoke), not the grid name."""
    report = build_report(
        "latent_vs_size", _smoke_run_store(tmp_path / "mlflow.db", preset, sweep_smoke), tmp_path / "report"
    )
    summary = pd.read_csv(report.out_dir / "tables" / "summary.csv", keep_default_na=False)
    targeted = summary[summary["target"] != ""]
    assert len(targeted) > 10 and set(targeted["result"]) == {NOT_EXPECTED}
    assert set(summary[summary["target"] == ""]["result"]) == {""}  # gFID: reported only, as before
    b = summary[(summary["check"] == "Spearman(K, rFID)") & (summary["size"] == "B")].iloc[0]
    assert b["value"] == "" and b["result"] == NOT_EXPECTED  # too few distinct values to tell: still not expected
    assert SMOKE_RUN_LINE in (report.out_dir / "tables" / "summary.md").read_text()
    page = report.html.read_text()
    banner = page[page.index('id="smoke-banner"') : page.index('id="summary"')]
    assert "Smoke run: a pipeline check" in banner and 'smoke.md">docs/smoke.md</a>' in banner
    for name in [*PANELS, "combined"]:
        svg = (report.out_dir / "figures" / f"{name}.svg").read_text()
        assert "Smoke run: a pipeline check" in svg and "docs/smoke.md" in svg, name
