"""The paper path rehearsed: preset=rehearsal (paper.yaml with only model sizes, step counts, batch sizes
and evaluation counts changed) on an ImageNet-layout tree with corrupt files and a weights cache holding the
registry's files in their real formats (random weights, tests/infra/rehearsal.py), through the local launcher:
every stage of grid=latent_vs_size and of grid=single_stage, and grid=released on one checkpoint of each family.
And `action=plan` of preset=paper data=imagenet is valid for every grid. The SLURM rehearsals are in
test_sweep_slurm.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench import tracking as T
from tests.infra.rehearsal import REHEARSAL_RELEASED, rehearsal_names

REPO = Path(__file__).resolve().parents[2]
GRIDS = sorted(p.stem for p in (REPO / "sweeps" / "grid").glob("*.yaml"))
# the paper's stages run at 256 px through the released-size teacher: one cell of the grid keeps CI's budget
ONE_CELL = ["grid.sizes=[S]", "grid.num_tokens=[32]"]
# grid=single_stage: one VQ cell through every stage it can list (a VAE's continuous tokens have no generator)
SINGLE_STAGE_CELL = [
    "grid.models=[TiTok-BL-64-VQ]",
    "grid.stages=[single,pretokenize,generator,eval_recon,eval_gen,speed]",
]
SINGLE_STAGE_STAGES = {"single", "pretokenize", "generator", "eval_recon", "eval_gen", "speed"}


def sweep(files, grid, outputs, *extra, timeout=1500):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep",
            f"grid={grid}",
            "data=imagenet",
            f"data.root={files.imagenet}",
            "data.num_classes=4",
            "data.num_workers=2",
            f"outputs={outputs}",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=files.env,
    )
    return r


@pytest.mark.parametrize("grid", GRIDS)
def test_the_paper_plan_of_every_grid_is_valid(rehearsal_files, tmp_path, grid):
    r = sweep(rehearsal_files, grid, tmp_path, "preset=paper", "action=plan", timeout=120)
    print(r.stdout)  # the plan a cluster user would see (pytest -s shows it)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"grid {grid}  preset paper  outputs" in r.stdout and "dry run: nothing submitted" in r.stdout
    assert not (tmp_path / grid / "jobs.jsonl").exists()


def cell_runs(outputs: Path, grid: str):
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    exp = client.get_experiment_by_name(T.experiment_name(grid))
    return client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")


def stage_results(outputs: Path, grid: str, cell: str) -> dict[str, dict]:
    return {
        p.parent.name.split("-")[0]: json.loads(p.read_text()) for p in (outputs / grid / cell).glob("*/result.json")
    }


@pytest.mark.slow
def test_rehearsal_of_latent_vs_size_runs_every_stage(rehearsal_files, tmp_path):
    r = sweep(rehearsal_files, "latent_vs_size", tmp_path, "preset=rehearsal", *ONE_CELL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 cells: 1 finished, 0 stages unfinished, 0 jobs failed" in r.stdout
    results = stage_results(tmp_path, "latent_vs_size", "TiTok-S-32")
    assert set(results) == {"stage1", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed"}
    # the paper's settings ran: the released-name teacher from the cache, ADM's batch, autocast asked for
    assert not any(v for result in results.values() for v in result.get("random_weights", {}).values())
    for stage in ("stage1", "generator"):
        assert results[stage]["tags"][T.precision_tag(stage)] in ("fp16" if stage == "stage1" else "bf16", "fp32")
    [run] = cell_runs(tmp_path, "latent_vs_size")
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags[T.TAG_PRESET] == "rehearsal" and tags[T.TAG_SMOKE] == "true"
    for name in ("MaskGIT-VQGAN", "inception-fid", "VIRTUAL_imagenet256_labeled", "vgg16", "lpips-vgg"):
        assert len(tags[T.weights_tag(name, "sha256")]) == 64, name
    assert "reference batch" in tags[T.eval_tag("gfid", "reference")]
    assert {"rfid", "lpips", "gfid", "sfid", "precision", "probe_top1", "samples_per_s"} <= set(metrics)
    # every class folder holds corrupt files: the evaluations skip and count them, the training replaces them
    assert metrics["eval_skipped_images"] >= 1
    # ImageNet evaluations take the requested count (class-balanced), unreadable files counted, not replaced
    assert metrics["rfid_num_images"] + metrics["eval_skipped_images"] == 4


@pytest.mark.slow
def test_rehearsal_of_the_released_grid(rehearsal_files, tmp_path):
    rehearsal_files.add(rehearsal_names())
    models = ",".join(REHEARSAL_RELEASED)
    r = sweep(rehearsal_files, "released", tmp_path, "preset=rehearsal", f"grid.models=[{models}]")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(REHEARSAL_RELEASED)} cells: {len(REHEARSAL_RELEASED)} finished" in r.stdout
    runs = {run.data.tags[T.TAG_CELL]: run for run in cell_runs(tmp_path, "released")}
    assert set(runs) == set(REHEARSAL_RELEASED)
    for cell, run in runs.items():
        assert run.info.status == "FINISHED", cell
        assert len(run.data.tags[T.weights_tag(cell, "sha256")]) > 64, cell  # config.json=...;model.safetensors=...
        assert "rfid" in run.data.metrics and "psnr" in run.data.metrics
    # the two-stage tokenizer has a released generator: sampled and timed with it
    assert {"gfid", "samples_per_s"} <= set(runs["TiTok-B-64"].data.metrics)
    assert len(runs["TiTok-B-64"].data.tags[T.weights_tag("MaskGIT-ViT:TiTok-B-64", "sha256")]) > 64


@pytest.mark.slow
def test_rehearsal_of_single_stage_runs_every_stage(rehearsal_files, tmp_path):
    r = sweep(rehearsal_files, "single_stage", tmp_path, "preset=rehearsal", *SINGLE_STAGE_CELL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 cells: 1 finished, 0 stages unfinished, 0 jobs failed" in r.stdout
    results = stage_results(tmp_path, "single_stage", "TiTok-BL-64-VQ")
    assert set(results) == SINGLE_STAGE_STAGES
    # the paper's settings ran: LPIPS and ConvNeXt-S from the cache (not stand-ins), autocast asked for
    assert results["single"]["random_weights"] == {"convnext": False, "lpips": False}
    assert results["single"]["tags"][T.precision_tag("single")] in ("fp16", "fp32")
    [run] = cell_runs(tmp_path, "single_stage")
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags[T.TAG_PRESET] == "rehearsal" and tags[T.TAG_SMOKE] == "true"
    for name in ("convnext-small", "vgg16", "lpips-vgg", "inception-fid", "VIRTUAL_imagenet256_labeled"):
        assert len(tags[T.weights_tag(name, "sha256")]) == 64, name
    assert {"rfid", "psnr", "lpips", "codebook_usage", "gfid", "samples_per_s"} <= set(metrics)
