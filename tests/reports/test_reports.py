"""Reports from a real MLflow store (a sqlite file in tmp) filled with known values by the tracking schema.

The non-smoke store holds grid latent_vs_size (a rerun, a failed rerun, a failed-only cell, a missing cell,
a kept fallback run, a run of a cell outside the grid) and grid released (a comparable cell, a smoke cell,
an rFID-only cell, missing cells); the smoke store holds latent_vs_size again, all tiny preset.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bench import tracking as T
from reports import ReportError, build_report, load_grid
from reports.collection import TIDY_COLUMNS
from reports.figures import PANELS

REPO = Path(__file__).resolve().parents[2]
SIZE_FACTOR = {"S": 1.0, "B": 0.7, "L": 0.5}
T0 = 1_700_000_000_000  # ms; runs are created at T0 + offsets so that "newest" is known


def scaling_metrics(size: str, k: int, samples: int) -> dict[str, float]:
    """Known, distinct values per cell (checked exactly against the CSV)."""
    rfid = round(SIZE_FACTOR[size] * 256 / k, 4)
    return {
        "rfid": rfid,
        "gfid": round(rfid / 2 + 1, 4),
        "gfid_is": 150 + k / 4,
        "probe_top1": 0.3 + 0.1 / rfid,
        "samples_per_s": 2000 / k,
        "rfid_num_images": samples,
        "gfid_num_samples": samples,
        "cost_gpu_hours": 10 * k / 256,
        "cost_wall_hours": k / 256,
    }


class Store:
    """Writes runs the way a sweep does (bench/tracking/): a parent sweep run and child cell runs."""

    def __init__(self, path: Path):
        self.uri = f"sqlite:///{path}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.clock = T0

    def sweep(self, grid: str, preset: str) -> tuple[str, str]:
        exp = self.client.create_experiment(T.experiment_name(grid))
        tags = {T.TAG_ROLE: "sweep", T.TAG_GRID: grid}
        run = self.client.create_run(exp, start_time=self._tick(), tags=tags)
        self.client.log_batch(
            run.info.run_id,
            params=[Param("preset", preset), Param("launcher", "local")],
            tags=[RunTag(T.TAG_PRESET, preset)],
        )
        self.client.set_terminated(run.info.run_id, "FINISHED", end_time=self._tick())
        return exp, run.info.run_id

    def cell(
        self,
        exp: str,
        parent: str,
        grid: str,
        cell: str,
        metrics: dict[str, float],
        *,
        preset: str = "paper",
        weights_random: bool = False,
        mlflow_status: str = "FINISHED",
        titok_status: str = "finished",
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        size, k = cell.split("-")[1][0], int(cell.split("-")[2])
        tags = {
            T.TAG_ROLE: "cell",
            T.TAG_GRID: grid,
            T.TAG_CELL: cell,
            T.TAG_MODEL_SIZE: size,
            T.TAG_NUM_TOKENS: str(k),
            T.TAG_PRESET: preset,
            T.TAG_STATUS: titok_status,
            T.TAG_WEIGHTS_RANDOM: str(weights_random).lower(),
            T.TAG_SMOKE: str(preset == "tiny").lower(),
            T.eval_tag("gfid", "distance"): "titok-bench frechet_distance (eigh)",
            T.TAG_REFERENCE: "imagenet-val-50k",
            T.TAG_DEVICE: "cpu",
            "mlflow.parentRunId": parent,
            **(extra_tags or {}),
        }
        run_id = self.client.create_run(exp, start_time=self._tick(), tags=tags).info.run_id
        self.client.log_batch(
            run_id,
            metrics=[Metric(m, float(v), self.clock, 0) for m, v in metrics.items()]
            + [Metric("tokenizer/loss", 1.0, self.clock, 5)],  # a training curve: not final
            params=[Param("preset", preset), Param("model.tokenizer", cell)],
        )
        self.client.set_terminated(run_id, mlflow_status, end_time=self._tick())
        return run_id

    def _tick(self) -> int:
        self.clock += 1000
        return self.clock


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory):
    """Non-smoke store; returns (uri, expected) with the run ids and values the report must keep."""
    store = Store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    exp, parent = store.sweep("latent_vs_size", "paper")
    grid = load_grid("latent_vs_size")
    kept, ignored = {}, set()
    for cell in grid.cells:
        size, k = cell.split("-")[1], int(cell.split("-")[2])
        metrics = scaling_metrics(size, k, 50_000)
        if cell == "TiTok-B-96":  # missing: no run at all
            continue
        if cell == "TiTok-L-256":  # only a failed run
            ignored.add(
                store.cell(exp, parent, "latent_vs_size", cell, metrics, mlflow_status="FAILED", titok_status="failed")
            )
            continue
        if cell == "TiTok-S-32":  # an older finished run, superseded by the rerun below
            ignored.add(store.cell(exp, parent, "latent_vs_size", cell, {**metrics, "rfid": 99.0}))
        status = "running" if cell == "TiTok-S-256" else "finished"  # kept as a fallback
        kept[cell] = (store.cell(exp, parent, "latent_vs_size", cell, metrics, titok_status=status), metrics)
        if cell == "TiTok-L-64":  # a newer failed rerun: the older finished run stays
            ignored.add(
                store.cell(
                    exp, parent, "latent_vs_size", cell, {"rfid": 50.0}, mlflow_status="FAILED", titok_status="failed"
                )
            )
    ignored.add(store.cell(exp, parent, "latent_vs_size", "TiTok-S-512", scaling_metrics("S", 512, 50_000)))

    exp_r, parent_r = store.sweep("released", "paper")
    released = {
        "TiTok-L-32": store.cell(
            exp_r,
            parent_r,
            "released",
            "TiTok-L-32",
            {
                "rfid": 2.31,
                "gfid": 2.97,
                "gfid_is": 190.0,
                "samples_per_s": 100.0,
                "rfid_num_images": 50_000,
                "gfid_num_samples": 50_000,
            },
        ),
        "TiTok-B-64": store.cell(
            exp_r,
            parent_r,
            "released",
            "TiTok-B-64",
            {
                "rfid": 1.9,
                "gfid": 2.5,
                "gfid_is": 250.0,
                "samples_per_s": 80.0,
                "rfid_num_images": 50_000,
                "gfid_num_samples": 50_000,
            },
            weights_random=True,
        ),
        "TiTok-BL-64-VQ": store.cell(
            exp_r, parent_r, "released", "TiTok-BL-64-VQ", {"rfid": 2.0, "rfid_num_images": 50_000}
        ),
    }
    store.client.create_experiment(T.experiment_name("sweep_only"))  # an experiment without cell runs
    return {"uri": store.uri, "kept": kept, "ignored": ignored, "released": released}


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("mlflow_smoke") / "mlflow.db")
    exp, parent = store.sweep("latent_vs_size", "tiny")
    for cell in load_grid("latent_vs_size").cells:
        size, k = cell.split("-")[1], int(cell.split("-")[2])
        store.cell(
            exp, parent, "latent_vs_size", cell, scaling_metrics(size, k, 64), preset="tiny", weights_random=True
        )
    return store.uri


@pytest.fixture(scope="module")
def paper_report(paper_store, tmp_path_factory):
    return build_report(load_grid("latent_vs_size"), paper_store["uri"], tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def smoke_report(smoke_store, tmp_path_factory):
    return build_report("latent_vs_size", smoke_store, tmp_path_factory.mktemp("smoke_report"))


def test_tidy_csv_holds_the_latest_finished_run_per_cell(paper_store, paper_report):
    tidy = pd.read_csv(paper_report.out_dir / "tables" / "tidy.csv")
    assert list(tidy.columns) == TIDY_COLUMNS
    assert set(tidy["cell"]) == set(paper_store["kept"])
    assert len(tidy) == 9 * len(paper_store["kept"])  # every final metric, no training curves
    for cell, (run_id, metrics) in paper_store["kept"].items():
        rows = tidy[tidy["cell"] == cell].set_index("metric")
        assert set(rows["run_id"]) == {run_id}, cell
        for metric, value in metrics.items():
            assert rows.at[metric, "value"] == pytest.approx(value), (cell, metric)
    s32 = tidy[(tidy["cell"] == "TiTok-S-32") & (tidy["metric"] == "rfid")].iloc[0]
    assert (s32["model_size"], s32["num_tokens"], s32["value"]) == ("S", 32, 8.0)
    assert not tidy["smoke"].any() and set(tidy["preset"]) == {"paper"} and not tidy["weights_random"].any()


def test_missing_ignored_and_fallback_runs_are_listed(paper_store, paper_report):
    assert paper_report.missing_cells == {"TiTok-B-96": "no run", "TiTok-L-256": "no finished run (1 not finished)"}
    assert {r.run_id for r in paper_report.ignored_runs} == paper_store["ignored"]
    reasons = {r.cell: r.reason for r in paper_report.ignored_runs}
    assert reasons["TiTok-S-32"].startswith("superseded by " + paper_store["kept"]["TiTok-S-32"][0])
    assert "FAILED" in reasons["TiTok-L-64"] and reasons["TiTok-S-512"] == "cell not in the grid definition"
    assert list(paper_report.fallback_cells) == ["TiTok-S-256"]
    page = paper_report.html.read_text()
    listed = ("TiTok-B-96: no run", "TiTok-L-256: no finished run", "TiTok-S-256: no run with titok.status")
    for text in (*listed, *paper_store["ignored"]):
        assert text in page
    grid = pd.read_csv(paper_report.out_dir / "tables" / "grid.csv").set_index("cell")
    assert grid.at["TiTok-B-96", "status"] == "missing: no run" and math.isnan(grid.at["TiTok-B-96", "rfid"])
    assert grid.at["TiTok-S-256", "status"] == "finished (fallback)"


def test_all_panels_and_files_are_written(paper_store, paper_report):
    out = paper_report.out_dir
    for name in [*PANELS, "combined"]:
        for ext in ("png", "svg"):
            path = out / "figures" / f"{name}.{ext}"
            assert path in paper_report.figures and path.stat().st_size > 5_000, path
    for name in ("tidy.csv", "grid.csv", "grid.md", "cost.csv", "cost.md"):
        assert (out / "tables" / name) in paper_report.tables
    assert not (out / "tables" / "released.csv").exists()  # only for grid released
    page = paper_report.html.read_text()
    assert page.count("data:image/png;base64,") == len(PANELS) + 1 and "http" not in page.split("<body")[0]
    for text in (
        "preset</b>: paper (19 cells)",
        "50,000 (19 cells)",
        "titok-bench frechet_distance (eigh)",
        "imagenet-val-50k",
        "launcher",
    ):  # what the numbers are, and the sweep's settings
        assert text in page
    cost = pd.read_csv(out / "tables" / "cost.csv").set_index("cell")
    assert cost.at["TiTok-L-128", "cost_gpu_hours"] == pytest.approx(5.0)
    assert cost.at["total (logged cells)", "cost_wall_hours"] == pytest.approx(
        sum(m["cost_wall_hours"] for _, m in paper_store["kept"].values())
    )


def test_paper_values_appear_only_beside_comparable_results(paper_report, smoke_report):
    svg = (paper_report.out_dir / "figures" / "rfid.svg").read_text()
    assert ">paper<" in svg and "SMOKE" not in svg  # the paper's legend entry (svg keeps text as text)
    assert ">paper<" not in (paper_report.out_dir / "figures" / "gfid.svg").read_text()  # no paper gFID per K
    assert paper_report.smoke is False and 'data-smoke="false"' in paper_report.html.read_text()

    assert smoke_report.smoke is True and smoke_report.tidy["smoke"].all()
    for name in [*PANELS, "combined"]:
        svg = (smoke_report.out_dir / "figures" / f"{name}.svg").read_text()
        assert "SMOKE RESULTS" in svg and ">paper<" not in svg, name
    for name in ("grid", "cost"):
        assert "SMOKE RESULTS" in (smoke_report.out_dir / "tables" / f"{name}.md").read_text()
        assert pd.read_csv(smoke_report.out_dir / "tables" / f"{name}.csv")["smoke"].dropna().all()
    page = smoke_report.html.read_text()
    assert 'id="smoke-banner"' in page and "random stand-in weights" in page and "64 (21 cells)" in page
    assert "The paper's values are not shown" in page


def test_released_table_sets_the_reference_beside_every_row(paper_store, tmp_path):
    report = build_report("released", paper_store["uri"], tmp_path)
    table = pd.read_csv(report.out_dir / "tables" / "released.csv").set_index("cell")
    assert list(table.index) == list(load_grid("released").cells)
    l32 = table.loc["TiTok-L-32"]
    assert l32["run_id"] == paper_store["released"]["TiTok-L-32"]
    assert (l32["rfid"], l32["rfid_ref"]) == (2.31, 2.21) and l32["rfid_diff"] == pytest.approx(0.10)
    assert l32["gfid_diff"] == pytest.approx(0.20) and l32["gfid_is_diff"] == pytest.approx(-4.0)
    assert (l32["rfid_verdict"], l32["gfid_verdict"], l32["verdict"]) == ("pass", "fail", "fail")
    b64 = table.loc["TiTok-B-64"]  # stand-in weights: the reference is shown, never a pass
    assert b64["smoke"] and b64["rfid"] == 1.9 and b64["rfid_ref"] == 1.70
    assert b64["rfid_verdict"] == "no pass: random stand-in weights" and "smoke result" in b64["note"]
    vq = table.loc["TiTok-BL-64-VQ"]
    assert vq["rfid_diff"] == pytest.approx(-0.06) and math.isnan(vq["gfid_ref"]) and vq["verdict"] == "pass"
    s128 = table.loc["TiTok-S-128"]  # missing: the reference alone, nothing to compare
    assert s128["note"] == "no finished run" and s128["rfid_ref"] == 1.71 and math.isnan(s128["rfid_diff"])
    assert "SMOKE RESULTS" in (report.out_dir / "tables" / "released.md").read_text()  # one smoke row
    assert set(report.missing_cells) == set(load_grid("released").cells) - set(paper_store["released"])


def test_empty_unknown_and_unreachable_are_one_line_errors(paper_store, smoke_store, tmp_path):
    cases = [
        (lambda: build_report("released", smoke_store, tmp_path), "'released' has no runs: no experiment"),
        (
            lambda: build_report(
                {"name": "sweep_only", "sizes": ["S"], "num_tokens": [16]}, paper_store["uri"], tmp_path
            ),
            "holds no cell runs",
        ),
        (lambda: build_report("nope", paper_store["uri"], tmp_path), "unknown grid 'nope': choose one of"),
        (lambda: build_report("released", f"sqlite:///{tmp_path}/absent.db", tmp_path), "does not exist"),
        (lambda: build_report("released", "http://127.0.0.1:9", tmp_path), "cannot reach the MLflow server"),
    ]
    for call, message in cases:
        with pytest.raises(ReportError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "absent.db").exists()  # the check must not create an empty store


def _cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reports", *overrides], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_command_line(paper_store, smoke_store, tmp_path):
    ok = _cli("grid=latent_vs_size", f"tracking_uri={paper_store['uri']}", f"out_dir={tmp_path}/out")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "index.html").is_file() and "missing cells (2)" in ok.stdout
    for overrides, message in (
        (["grid=nope"], "unknown grid 'nope'"),
        (["grid=released", f"tracking_uri={smoke_store}"], "has no runs"),
    ):
        bad = _cli(*overrides, f"out_dir={tmp_path}/bad")
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_the_cost_table_shows_the_estimate_beside_the_actual(tmp_path):
    """The sweep's estimate (run tags that bench.launch sets from bench.cost) beside cell_cost's measured hours."""
    from bench import cost as C
    from reports.collect import collect
    from reports.tables import cost_table

    store = Store(tmp_path / "mlflow.db")
    exp, parent = store.sweep("latent_vs_size", "paper")
    basis = "device A100-80GB: peak 312 TFLOP/s (cluster config), utilisation 40% assumed"
    estimates = {"TiTok-L-32": ("351.2", "43.9"), "TiTok-S-16": ("63.1", "7.89")}
    for cell in ("TiTok-L-32", "TiTok-S-16", "TiTok-B-64"):
        size, k = cell.split("-")[1], int(cell.split("-")[2])
        tags = (
            {C.TAG_EST_GPU_HOURS: estimates[cell][0], C.TAG_EST_WALL_HOURS: estimates[cell][1], C.TAG_EST_BASIS: basis}
            if cell in estimates
            else {}
        )  # B-64: a run from before estimates
        store.cell(exp, parent, "latent_vs_size", cell, scaling_metrics(size, k, 50_000), extra_tags=tags)
    col = collect(load_grid("latent_vs_size"), store.uri)
    table = cost_table(col, col.table())
    frame = table.frame.set_index("cell")
    assert list(frame.columns[-4:]) == [
        "cost_gpu_hours_est",
        "cost_gpu_hours",
        "cost_wall_hours_est",
        "cost_wall_hours",
    ]
    assert frame.at["TiTok-L-32", "cost_gpu_hours_est"] == pytest.approx(351.2)
    assert frame.at["TiTok-L-32", "cost_gpu_hours"] == pytest.approx(10 * 32 / 256)
    assert frame.at["TiTok-S-16", "cost_wall_hours_est"] == pytest.approx(7.89)
    assert math.isnan(frame.at["TiTok-B-64", "cost_gpu_hours_est"]) and frame.at["TiTok-B-64", "cost_gpu_hours"] > 0
    assert frame.at["total (logged cells)", "cost_gpu_hours_est"] == pytest.approx(351.2 + 63.1)
    assert any(basis in note for note in table.notes) and "estimate beside actual" in table.title
