"""Stage identities at work: a one-cell toy sweep planned and run in this process (run_task, a few steps, stand-in
weights), then re-planned with one setting changed. An unchanged config has nothing to run; an evaluation setting
leaves only that evaluation to run (in the cell's same MLflow run folder); a training setting that stage and
everything that reads it, never the shared teacher or reference stages. And the two doors to the evaluation stages
agree: `python -m bench.eval` on the sweep's checkpoints with the sweep's settings gives exactly its metrics."""

import json

import pytest
from hydra import compose, initialize_config_dir

from bench import weights
from bench.eval.__main__ import main
from bench.plan import make_plan
from bench.stages import run_task
from bench.sweep import SWEEPS

pytestmark = pytest.mark.slow

CELL = "TiTok-S-16"
N = 10  # evaluation images, samples and probe validation images (the Inception Score needs 10 samples)
STAGES = ["stage1", "generator", "eval_recon", "eval_gen", "speed"]  # a test adds probe
WITH_PROBE = f"grid.stages=[{','.join(STAGES + ['probe'])}]"
TOY = [
    "grid.sizes=[S]",
    "grid.num_tokens=[16]",
    f"grid.stages=[{','.join(STAGES)}]",
    "preset.teacher.source=train",
    "preset.teacher.loop.steps=3",
    "preset.stage1.loop.steps=3",
    "preset.generator.loop.steps=3",
    f"preset.eval.rfid_images={N}",
    f"preset.eval.gfid_samples={N}",
    f"preset.eval.gfid_reference_images={N}",
    "preset.eval.probe_train_images=30",
    f"preset.eval.probe_val_images={N}",
    "preset.eval.probe_epochs=5",
    "preset.eval.batch_size=5",
    "preset.eval.speed.repeats=1",
    "preset.eval.speed.batch_size=2",
    "data.train_images=64",
    "data.val_images=40",
]


def config(outputs, *overrides):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        return compose("sweep", overrides=[*TOY, *overrides, f"outputs={outputs}"])


def to_run(outputs, *overrides) -> set[str]:
    return {t.key for t in make_plan(config(outputs, *overrides)).tasks() if not t.done}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The toy sweep run to its end; its outputs folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.ENV_CACHE, str(tmp_path_factory.mktemp("weights")))
        outputs = tmp_path_factory.mktemp("outputs")
        for task in make_plan(config(outputs)).tasks():
            run_task(task)
        yield outputs


def test_an_unchanged_config_has_nothing_to_run(swept):
    assert to_run(swept) == set()
    # nor one that changes only where or how things run, or an evaluation's batch size
    assert (
        to_run(
            swept, "launcher=slurm", "data.num_workers=1", "preset.stage1.loop.log_every=1", "preset.eval.batch_size=2"
        )
        == set()
    )


@pytest.mark.parametrize(
    "override,stages,retrains",
    [
        ("preset.eval.rfid_images=12", {"_shared/real_stats", f"{CELL}/eval_recon"}, False),
        ("preset.eval.speed.repeats=2", {f"{CELL}/speed"}, False),
        ("preset.eval.bootstrap=50", {f"{CELL}/eval_recon", f"{CELL}/eval_gen"}, False),
        ("preset.eval.gallery_images=2", {f"{CELL}/eval_recon"}, False),
        (WITH_PROBE, {f"{CELL}/probe"}, False),
        ("preset.stage1.loop.steps=4", {f"{CELL}/{s}" for s in STAGES}, True),
        ("preset.generator.loop.steps=4", {f"{CELL}/{s}" for s in ("generator", "eval_gen", "speed")}, True),
    ],
)
def test_a_changed_setting_reruns_what_it_determines(swept, override, stages, retrains):
    assert to_run(swept, override) == stages
    # the cell's MLflow run folder follows its training stages only
    before, after = make_plan(config(swept)).cells[0], make_plan(config(swept, override)).cells[0]
    assert after.dir == before.dir and (after.run_dir != before.run_dir) == retrains


def test_the_eval_cli_gives_the_sweeps_metrics(swept, tmp_path):
    plan = make_plan(config(swept, WITH_PROBE))
    for task in plan.tasks():  # the probe is all that is left
        run_task(task)
    results = {t.stage: t.result() for t in plan.cells[0].tasks}
    sweep_metrics = {
        **results["eval_recon"]["metrics"],
        **results["eval_gen"]["metrics"],
        **results["probe"]["metrics"],
    }
    p, seed = plan.config["preset"], plan.config["seed"]
    ev = p["eval"]
    sampler = [arg for key, value in p["sampler"].items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    out = tmp_path / "cli.json"
    argv = [
        plan.task(f"{CELL}/stage1").product,
        "--teacher",
        plan.task("_shared/teacher").product,
        "--generator",
        plan.task(f"{CELL}/generator").product,
        "--metrics",
        "rfid,gfid,probe" + (",lpips" if ev["lpips"] else ""),
        "--data",
        "synthetic",
        "--num-classes",
        str(plan.config["data"]["num_classes"]),
        "--data-seed",
        str(seed),
        "--num-images",
        str(N),
        "--batch-size",
        str(ev["batch_size"]),
        "--num-workers",
        "0",
        "--fid-method",
        ev["fid_method"],
        "--reference-batch",
        str(tmp_path / "ref.npz"),
        "--make-reference-batch",
        "--num-samples",
        str(ev["gfid_samples"]),
        "--seed",
        str(seed),
        "--sample-batch-size",
        str(ev["batch_size"]),
        "--samples-dir",
        str(tmp_path / "samples"),
        *sampler,
        *([] if ev["clean_fid"] else ["--no-clean-fid"]),
        "--probe-num-train",
        str(ev["probe_train_images"]),
        "--probe-epochs",
        str(ev["probe_epochs"]),
        "--inception-dtype",
        ev["rfid_inception_dtype"],
        "--allow-random-weights",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["metrics"] == sweep_metrics
    # one protocol for both doors, recorded on both sides
    # (the tiny preset runs rFID's Inception in float32 as gFID's; the paper preset keeps the reference's float64)
    assert ev["rfid_inception_dtype"] == "float32"
    assert report["inception_dtype"] == {"rfid": "float32", "gfid": "float32"}
    assert (results["eval_recon"]["inception_dtype"], results["eval_gen"]["inception_dtype"]) == ("float32", "float32")


def test_a_folder_input_is_identified_by_its_content_not_its_hidden_files(tmp_path):
    """A folder from outside the plan (a hub-style checkpoint folder, a stage folder) is hashed by its files; a
    stage's owner lock (its holder's PID) or a writer's temporary file must not change that identity."""
    from bench.stages.base import source_identity

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = source_identity(str(tmp_path))
    (tmp_path / ".owner.lock").write_text("12345\n")
    (tmp_path / ".model.safetensors.host.99.abc.tmp").write_bytes(b"half")
    assert source_identity(str(tmp_path)) == before
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert source_identity(str(tmp_path)) != before
