"""Reproduction verdicts of grid `released` from a real MLflow store (sqlite in tmp): logged values just inside and
just outside each metric's tolerance, a run with random stand-in weights, a run with too few images, a model
without a run and a speed measured off the reference's device."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports import build_report, load_grid
from reports.verdicts import TOLERANCES
from tests.reports.test_reports import Store

A100 = {"titok.device": "NVIDIA A100-SXM4-80GB"}
FULL = {"rfid_num_images": 50_000, "gfid_num_samples": 50_000}
# references (reports/paper_numbers.csv): L-32 rFID 2.21, gFID 2.77, IS 194.0, 101.6 samples/s;
# B-64 1.70, 2.48, 262.5, 89.8; BL-64-VQ rFID 2.06; BL-128-VQ rFID 1.49
INSIDE = {"rfid": 2.21 + 0.09, "gfid": 2.77 - 0.14, "gfid_is": 194.0 * 0.96, "samples_per_s": 101.6 * 1.19}
OUTSIDE = {"rfid": 1.70 - 0.11, "gfid": 2.48 + 0.16, "gfid_is": 262.5 * 1.06, "samples_per_s": 89.8 * 0.79}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    exp, parent = store.sweep("released", "paper")
    store.cell(exp, parent, "released", "TiTok-L-32", {**INSIDE, **FULL}, extra_tags=A100)
    store.cell(exp, parent, "released", "TiTok-B-64", {**OUTSIDE, **FULL}, extra_tags=A100)
    # exact reference values, but stand-in weights: never a pass
    store.cell(
        exp,
        parent,
        "released",
        "TiTok-S-128",
        {"rfid": 1.71, "gfid": 1.97, "gfid_is": 281.8, **FULL},
        weights_random=True,
    )
    store.cell(exp, parent, "released", "TiTok-BL-64-VQ", {"rfid": 2.06, "rfid_num_images": 1_000})  # too few
    store.cell(
        exp,
        parent,
        "released",
        "TiTok-BL-128-VQ",
        {"rfid": 1.49 + 0.1, "rfid_num_images": 50_000, "samples_per_s": 40.0},
    )  # edge of rFID; CPU speed
    return build_report("released", store.uri, tmp_path_factory.mktemp("report"))


def _verdicts(report) -> pd.DataFrame:
    return pd.read_csv(report.out_dir / "tables" / "reproduction.csv").set_index(["cell", "metric"])


def test_each_metric_passes_inside_and_fails_outside_its_tolerance(report):
    v = _verdicts(report)
    for metric, tol in TOLERANCES.items():
        assert v.at[("TiTok-L-32", tol.label), "verdict"] == "pass", metric
        assert v.at[("TiTok-B-64", tol.label), "verdict"] == "fail", metric
    assert v.at[("TiTok-L-32", "rFID"), "reference"] == 2.21
    assert float(v.at[("TiTok-B-64", "gFID"), "diff"]) == pytest.approx(0.16)
    assert v.at[("TiTok-BL-128-VQ", "rFID"), "verdict"] == "pass"  # exactly on the tolerance
    assert [v.at[("TiTok-L-32", t.label), "tolerance"] for t in TOLERANCES.values()] == [
        "\u00b10.1",
        "\u00b10.15",
        "\u00b15%",
        "\u00b120% (on A100)",
    ]


def test_every_reference_carries_its_source(report):
    v = _verdicts(report)
    assert v.at[("TiTok-L-32", "rFID"), "source"] == "the official repository's README"
    assert v.at[("TiTok-L-32", "IS"), "source"].startswith("the paper's appendix table")
    assert v.at[("TiTok-L-32", "samples/s"), "source"].startswith("the paper's Figure 2")


def test_random_weights_never_pass_and_other_gaps_say_why(report):
    v = _verdicts(report)
    for label in ("rFID", "gFID", "IS"):  # exact reference values
        assert v.at[("TiTok-S-128", label), "verdict"] == "no pass: random stand-in weights"
    assert v.at[("TiTok-BL-64-VQ", "rFID"), "verdict"].startswith("not comparable: rfid_num_images=1000")
    assert v.at[("TiTok-BL-64-VQ", "gFID"), "verdict"] == "no reference"  # no generator released
    assert v.at[("TiTok-BL-128-VQ", "samples/s"), "verdict"] == "no reference"  # the release gives no speed
    assert v.at[("TiTok-LL-32-VAE", "rFID"), "verdict"] == "no run"
    released = pd.read_csv(report.out_dir / "tables" / "released.csv").set_index("cell")
    assert released.at["TiTok-S-128", "verdict"] == "no pass: random stand-in weights"
    assert released.at["TiTok-S-128", "rfid_ref"] == 1.71 and released.at["TiTok-S-128", "rfid_diff"] == 0.0
    assert (released.at["TiTok-L-32", "verdict"], released.at["TiTok-B-64", "verdict"]) == ("pass", "fail")
    assert math.isnan(released.at["TiTok-LL-32-VAE", "rfid"])


def test_a_speed_is_judged_only_on_the_reference_device(tmp_path):
    store = Store(tmp_path / "mlflow.db")
    exp, parent = store.sweep("released", "paper")
    store.cell(exp, parent, "released", "TiTok-L-32", {**INSIDE, **FULL})  # device cpu
    v = _verdicts(build_report("released", store.uri, tmp_path / "report"))
    assert v.at[("TiTok-L-32", "samples/s"), "verdict"] == "no reference (measured on A100)"
    assert v.at[("TiTok-L-32", "rFID"), "verdict"] == "pass"


def test_the_verdict_line_heads_the_page_and_the_tables(report):
    cells = len(load_grid("released").cells)
    line = report.verdict
    assert line.startswith(f"NOT REPRODUCED: 2 of {cells} released models within tolerance")
    assert "fail: TiTok-B-64 (rFID, gFID, IS, samples/s)" in line
    assert "no pass: random stand-in weights: 1" in line and "not comparable: 1" in line and "no run: 4" in line
    page = report.html.read_text()
    assert page.index('id="verdict"') < page.index("<h2>What these numbers are</h2>") and line in page
    for name in ("reproduction", "released"):
        assert line in (report.out_dir / "tables" / f"{name}.md").read_text()


def test_a_single_stage_run_is_judged_against_the_releases_numbers(tmp_path):
    """grid=single_stage trains the released single-stage architectures: its cells get the same verdicts against
    the release's numbers (BL-64-VQ rFID 2.06, BL-64-VAE 1.25)."""
    store = Store(tmp_path / "mlflow.db")
    exp, parent = store.sweep("single_stage", "paper")
    store.cell(exp, parent, "single_stage", "TiTok-BL-64-VQ", {"rfid": 2.06 + 0.05, "rfid_num_images": 50_000})
    store.cell(exp, parent, "single_stage", "TiTok-BL-64-VAE", {"rfid": 1.25 + 0.2, "rfid_num_images": 50_000})
    v = _verdicts(build_report("single_stage", store.uri, tmp_path / "report"))
    assert v.at[("TiTok-BL-64-VQ", "rFID"), "reference"] == 2.06
    assert v.at[("TiTok-BL-64-VQ", "rFID"), "verdict"] == "pass"
    assert v.at[("TiTok-BL-64-VAE", "rFID"), "verdict"] == "fail"
    assert v.at[("TiTok-SL-256-VQ", "rFID"), "verdict"] == "no run"
