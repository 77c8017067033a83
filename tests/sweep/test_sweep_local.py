"""The sweep end to end on the local launcher with a shrunken tiny preset: every stage runs in real submitit
subprocesses, each cell gets one MLflow run (sqlite) with its metrics, a rerun runs nothing and reuses the runs,
and a changed evaluation setting re-runs that evaluation only, into the same runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench import tracking as T

REPO = Path(__file__).resolve().parents[2]
SHRINK = [
    "grid.sizes=[S,B]",
    "grid.num_tokens=[16]",
    "preset.stage1.loop.steps=6",
    "preset.generator.loop.steps=6",
    "preset.eval.rfid_images=20",
    "preset.eval.gfid_samples=20",
    "preset.eval.gfid_reference_images=20",
    "preset.eval.probe_train_images=40",
    "preset.eval.probe_val_images=20",
    "preset.eval.batch_size=20",
    "preset.eval.speed.repeats=1",
    "data.train_images=200",
    "data.val_images=60",
]


def sweep(outputs, *extra):
    r = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "grid=latent_vs_size", f"outputs={outputs}", *SHRINK, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return r


@pytest.mark.slow
def test_local_sweep_runs_and_reruns_nothing(tmp_path):
    first = sweep(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 cells: 2 finished, 0 stages unfinished, 0 jobs failed" in first.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the printed report command works as printed, whatever outputs= was
    assert f"report: python -m reports grid=latent_vs_size tracking_uri={uri}\n" in first.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(T.experiment_name("latent_vs_size"))
    runs = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
    assert sorted(r.data.tags[T.TAG_CELL] for r in runs) == ["TiTok-B-16", "TiTok-S-16"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[T.TAG_STATUS] == "finished"
        for metric in ("rfid", "gfid", "gfid_is", "probe_top1", "samples_per_s", "cost_gpu_hours"):
            assert metric in run.data.metrics, metric
        assert run.data.tags[T.TAG_MODEL_SIZE] in "SB" and run.data.tags[T.TAG_NUM_TOKENS] == "16"
        assert run.data.tags[T.TAG_SMOKE] == "true" and run.data.tags[T.TAG_WEIGHTS_RANDOM] == "true"
        assert run.data.params["model"] == run.data.tags[T.TAG_CELL]
        # what each FID was made with (the network's weights file by hash, dtype, distance, reference)
        tags = run.data.tags
        for metric, dtype in (("rfid", "float32"), ("gfid", "float32")):  # tiny: eval.rfid_inception_dtype
            assert "InceptionV3" in tags[T.eval_tag(metric, "features")], tags
            assert len(tags[T.eval_tag(metric, "features_sha256")]) == 64
            assert tags[T.eval_tag(metric, "inception_dtype")] == dtype
            assert "frechet_distance (eigh)" in tags[T.eval_tag(metric, "distance")]
        assert "real images' statistics" in tags[T.eval_tag("rfid", "reference")]
        assert "reference batch" in tags[T.eval_tag("gfid", "reference")]
        assert len(client.get_metric_history(run.info.run_id, "stage1/ce")) >= 1
        assert "eval_gen/samples.png" in [a.path for a in client.list_artifacts(run.info.run_id, "eval_gen")]
    ids = {r.info.run_id for r in runs}

    second = sweep(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "running 0 stages" in second.stdout or "0 to run" in second.stdout
    runs = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
    assert {r.info.run_id for r in runs} == ids  # no duplicated cell runs
    jobs = [json.loads(line) for line in (tmp_path / "latent_vs_size" / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 3  # shared + 2 cells, all from the first invocation

    third = sweep(tmp_path, "preset.eval.speed.repeats=2")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "running 2 stages in 2 local jobs" in third.stdout  # the speed stage of each cell
    runs = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
    assert {r.info.run_id for r in runs} == ids
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[T.TAG_STATUS] == "finished"
        cell = tmp_path / "latent_vs_size" / run.data.tags[T.TAG_CELL]
        speed = [json.loads(p.read_text()) for p in cell.glob("speed-*/spec.json")]
        assert sorted(s["spec"]["repeats"] for s in speed) == [1, 2]
        new = next(s for s in speed if s["spec"]["repeats"] == 2)
        assert f"speed-{new['identity']}" in run.data.tags["titok.stage_ids"].split(",")


@pytest.mark.slow
def test_pipeline_grid_runs_every_training_stage(tmp_path):
    """grid=pipeline: stage 1 -> stage 2 -> pretokenize -> generator -> rFID and gFID in one command, the
    generator training on the stage-1 tokens written once, the evaluations decoding with the stage-2 pixel
    decoder."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep",
            "grid=pipeline",
            f"outputs={tmp_path}",
            *[o for o in SHRINK if not o.startswith("grid.")],
            "preset.stage2.loop.steps=4",
            "preset.stage2.gan.start_step=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 cells: 1 finished" in r.stdout
    cell = tmp_path / "pipeline" / "TiTok-S-32"
    (stage2,) = cell.glob("stage2-*")
    assert json.loads((stage2 / "result.json").read_text())["steps"] == 4
    (tokens,) = cell.glob("pretokenize-*")
    assert json.loads((tokens / "manifest.json").read_text())["count"] == 160  # tiny's generator.train_images
    (generator,) = cell.glob("generator-*")
    assert json.loads((generator / "spec.json").read_text())["spec"]["tokens"] == str(tokens / "manifest.json")
    for stage, metric in (("eval_recon", "rfid"), ("eval_gen", "gfid")):
        (folder,) = cell.glob(f"{stage}-*")
        assert json.loads((folder / "result.json").read_text())["metrics"][metric] > 0
        assert json.loads((folder / "spec.json").read_text())["spec"]["tokenizer"] == str(stage2 / "model.safetensors")
