"""The sweep's configs and plan: every config composes, bad overrides fail before anything is submitted, and
each stage's identity follows the settings that determine its result and its inputs' identities (not paths,
launcher, cluster, logging, or an evaluation's batch size); a cell's run follows its training stages only."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from bench.launch import longest_first
from bench.plan import PlanError, data_config, make_plan
from bench.stages import STAGES
from bench.stages.planning import PlanContext
from bench.stages.task import RESULT
from bench.sweep import SWEEPS

REPO = Path(__file__).resolve().parents[2]


def config(*overrides, tmp_path=None):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        extra = [f"outputs={tmp_path}"] if tmp_path else []
        return compose("sweep", overrides=[*overrides, *extra])


@pytest.mark.parametrize("group", ["grid", "preset", "data", "launcher", "cluster"])
def test_every_config_composes(group):
    for path in sorted((SWEEPS / group).glob("*.yaml")):
        overrides = [f"{group}={path.stem}"]
        if path.stem == "imagenet" or group == "grid" and path.stem == "released":
            overrides += ["data=imagenet", "data.root=/nonexistent"]
        cfg = config(*overrides)
        assert cfg[group] is not None
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path} must start with a comment saying how to run it"


def test_latent_vs_size_plan(tmp_path):
    plan = make_plan(config(tmp_path=tmp_path))
    assert len(plan.cells) == 21
    assert {c.name for c in plan.cells} == {f"TiTok-{s}-{k}" for s in "SBL" for k in (16, 32, 64, 96, 128, 192, 256)}
    # the preset's teacher is the file it ships: no teacher stage, and stage 1 reads that file
    assert [t.stage for t in plan.shared] == ["real_stats", "reference_batch"]
    assert plan.task("TiTok-S-16/stage1").spec.teacher.source == str(SWEEPS / "preset" / "tiny_teacher.safetensors")
    trained = make_plan(config("preset.teacher.source=train", tmp_path=tmp_path))
    assert [t.stage for t in trained.shared] == ["teacher", "real_stats", "reference_batch"]
    cell = plan.cells[0]
    assert [t.stage for t in cell.tasks] == [
        "stage1",
        "pretokenize",
        "generator",
        "eval_recon",
        "eval_gen",
        "probe",
        "speed",
    ]
    assert plan.task(f"{cell.name}/pretokenize").needs == (f"{cell.name}/stage1",)
    assert plan.task(f"{cell.name}/generator").needs == (f"{cell.name}/stage1", f"{cell.name}/pretokenize")
    assert plan.task(f"{cell.name}/generator").spec.tokens == plan.task(f"{cell.name}/pretokenize").product
    assert "_shared/real_stats" in plan.task(f"{cell.name}/eval_recon").needs
    assert "_shared/reference_batch" in plan.task(f"{cell.name}/eval_gen").needs
    assert all(str(t.out_dir).startswith(str(tmp_path)) for t in plan.tasks())
    assert len({c.cell_id for c in plan.cells}) == 21
    # <grid>/<cell>/<stage>-<identity>/ and the cell's run record in <grid>/<cell>/run-<cell id>/
    for task in cell.tasks:
        assert task.out_dir == str(tmp_path / "latent_vs_size" / cell.name / f"{task.stage}-{task.identity}")
    assert cell.run_dir == cell.dir / f"run-{cell.cell_id}"
    assert plan.task("_shared/real_stats").out_dir.startswith(str(tmp_path / "latent_vs_size" / "_shared"))


def test_generator_train_images_limits_the_generator_and_its_tokens(tmp_path):
    tiny = make_plan(config(tmp_path=tmp_path)).cells[0]
    assert tiny.tasks[0].spec.data.num_images == 5000  # stage 1: the whole split
    assert {tiny.tasks[i].spec.data.num_images for i in (1, 2)} == {160}  # pretokenize, generator
    cell = make_plan(config("preset.generator.train_images=null", tmp_path=tmp_path)).cells[0]
    assert [t.spec.data.num_images for t in cell.tasks[:3]] == [5000, 5000, 5000]
    more = make_plan(config("preset.generator.train_images=9000", tmp_path=tmp_path)).cells[0]
    assert more.tasks[2].spec.data.num_images == 5000  # never more than the split has


def test_rfid_inception_dtype_is_one_setting_for_the_stats_and_the_evaluation(tmp_path):
    for overrides, dtype in (((), "float32"), (("preset.eval.rfid_inception_dtype=float64",), "float64")):
        plan = make_plan(config(*overrides, tmp_path=tmp_path))
        cell = plan.cells[0].name
        assert plan.task("_shared/real_stats").spec.inception_dtype == dtype
        assert plan.task(f"{cell}/eval_recon").spec.inception_dtype == dtype
        assert plan.task(f"{cell}/eval_gen").spec.inception_dtype == "float32"  # gFID: ADM's evaluator


def test_a_stage_module_builds_its_own_spec(tmp_path):
    """A stage module's plan(c) makes the spec its task holds, from the preset and the stages the cell planned before
    it, and names the tasks it reads; a stage the grid does not list plans nothing."""
    cfg = config(tmp_path=tmp_path)
    plan = make_plan(cfg)
    cell = plan.cells[0]
    shared = {t.stage: t for t in plan.shared}
    c = PlanContext(cfg, data_config(cfg, "train_images"), None, data_config(cfg, "val_images"), shared)
    c = dataclasses.replace(c, name=cell.name, size=cell.size, num_tokens=cell.num_tokens)
    stage1 = plan.task(f"{cell.name}/stage1")
    assert STAGES["stage1"].plan(c) == (stage1.spec, {"teacher": None})
    assert STAGES["stage2"].plan(c) is None and STAGES["single"].plan(c) is None
    c.tasks["stage1"] = stage1
    assert STAGES["probe"].plan(c) == (plan.task(f"{cell.name}/probe").spec, {"tokenizer": stage1})
    spec, reads = STAGES["eval_recon"].plan(c)
    assert spec == plan.task(f"{cell.name}/eval_recon").spec
    assert reads == {"tokenizer": stage1, "teacher": None, "real_stats": shared["real_stats"]}


def test_local_jobs_start_with_the_largest_cells(tmp_path):
    plan = make_plan(config("grid.sizes=[S,L]", "grid.num_tokens=[16,256]", tmp_path=tmp_path))
    groups = longest_first(plan)
    # by estimated FLOPs: with stage 1 a few dozen steps, S-256's generator, sampling and speed stages (256 tokens)
    # outweigh L-16's wider stage 1
    assert [g[0].cell for g in groups] == ["TiTok-L-256", "TiTok-S-256", "TiTok-L-16", "TiTok-S-16"]
    cells = {c.name: c for c in plan.cells}
    assert all(g == cells[g[0].cell].tasks for g in groups)  # a cell's stages keep their order
    # finished stages are left out and the order is by what is left: L-256 with only its evaluations to run goes
    # behind the cells that still train; the finished S-16 has nothing left
    assert [t.stage for t in cells["TiTok-L-256"].tasks[:3]] == ["stage1", "pretokenize", "generator"]
    for task in cells["TiTok-L-256"].tasks[:3] + cells["TiTok-S-16"].tasks:
        Path(task.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(task.out_dir) / RESULT).write_text("{}")
    groups = longest_first(plan)
    assert [g[0].cell for g in groups if g] == ["TiTok-S-256", "TiTok-L-16", "TiTok-L-256"]
    assert groups[2] == cells["TiTok-L-256"].tasks[3:] and groups[3] == []


def test_pipeline_plan_chains_stage2_into_the_evaluations(tmp_path):
    plan = make_plan(config("grid=pipeline", tmp_path=tmp_path))
    (cell,) = plan.cells
    assert [t.stage for t in cell.tasks] == ["stage1", "stage2", "pretokenize", "generator", "eval_recon", "eval_gen"]
    stage2, generator = plan.task(f"{cell.name}/stage2"), plan.task(f"{cell.name}/generator")
    stage1 = plan.task(f"{cell.name}/stage1")
    assert stage2.needs == (f"{cell.name}/stage1",) and stage2.spec.teacher.source.endswith("tiny_teacher.safetensors")
    assert stage2.spec.init_from == stage1.product and stage1.product.endswith("/model.safetensors")
    assert generator.spec.tokenizer == stage1.product  # stage 2 leaves the encoder as it was
    for stage in ("eval_recon", "eval_gen"):
        task = plan.task(f"{cell.name}/{stage}")
        assert task.spec.tokenizer == stage2.product and task.spec.teacher is None
        assert f"{cell.name}/stage2" in task.needs
    # stage-2 settings are part of the identity only where a grid trains stage 2
    assert (
        make_plan(config("grid=pipeline", "preset.stage2.loop.steps=7", tmp_path=tmp_path)).cells[0].cell_id
        != cell.cell_id
    )
    base = make_plan(config(tmp_path=tmp_path)).cells[0].cell_id
    assert make_plan(config("preset.stage2.loop.steps=7", tmp_path=tmp_path)).cells[0].cell_id == base


def identities(*overrides, tmp_path) -> dict[str, str]:
    """task key -> identity, and cell name -> cell id under `cells/`."""
    plan = make_plan(config(*overrides, tmp_path=tmp_path))
    return {**{t.key: t.identity for t in plan.tasks()}, **{f"cells/{c.name}": c.cell_id for c in plan.cells}}


def changed_by(*overrides, tmp_path) -> set[str]:
    """The keys of `identities` whose value the overrides change."""
    base, other = identities(tmp_path=tmp_path), identities(*overrides, tmp_path=tmp_path)
    return {k for k in other if base.get(k) != other[k]}


def test_cell_identity(tmp_path):
    same = [
        ("launcher=slurm",),
        ("cluster=example",),
        ("launcher.max_parallel=1",),
        ("data.num_workers=3",),
        ("preset.stage1.loop.log_every=3",),
        ("preset.generator.loop.checkpoint_every=7",),
    ]
    for overrides in same:
        assert not changed_by(*overrides, tmp_path=tmp_path), overrides
    # the outputs folder is not part of any identity
    assert identities(tmp_path=tmp_path / "elsewhere") == identities(tmp_path=tmp_path)
    cells = {k for k in identities(tmp_path=tmp_path) if k.startswith("cells/")}
    for overrides in [
        ("preset.stage1.loop.steps=151",),
        ("seed=1",),
        ("preset.tokenizer.codebook_size=512",),
        ("data.num_classes=20",),
    ]:
        assert cells <= changed_by(*overrides, tmp_path=tmp_path), overrides


def stages_of(keys: set[str]) -> set[str]:
    """Task keys -> their stages (of any cell, or shared); a cell id -> "cell"."""
    return {"cell" if k.startswith("cells/") else k.split("/")[1] for k in keys}


@pytest.mark.parametrize(
    "override,stages",
    [
        # an evaluation setting changes that evaluation only, never a cell (its MLflow run) or a training stage
        ("preset.eval.rfid_images=20", {"real_stats", "eval_recon"}),
        ("preset.eval.gfid_reference_images=20", {"reference_batch", "eval_gen"}),
        ("preset.eval.gfid_samples=20", {"eval_gen"}),
        ("preset.eval.lpips=false", {"eval_recon"}),
        ("preset.eval.fid_method=sqrtm", {"eval_recon", "eval_gen"}),
        ("preset.eval.probe_epochs=5", {"probe"}),
        ("preset.eval.speed.repeats=5", {"speed"}),
        ("preset.eval.speed.warmup=2", {"speed"}),
        ("preset.eval.speed.batch_size=4", {"speed"}),
        ("preset.sampler.num_steps=4", {"eval_gen", "speed"}),
        ("data.val_images=300", set()),  # an evaluation reads a count of its own
        ("preset.eval.batch_size=7", set()),  # per-image features and per-sample seeds: float noise only
        # a training setting changes that stage and what reads it, never the shared teacher or reference stages
        (
            "preset.stage1.loop.steps=7",
            {"cell", "stage1", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed"},
        ),
        ("preset.generator.loop.steps=7", {"cell", "generator", "eval_gen", "speed"}),
        # the tokens: their crops re-tokenize and retrain the generator; where and in which pieces they are written, not
        ("preset.pretokenize.crops=ten", {"cell", "pretokenize", "generator", "eval_gen", "speed"}),
        ("preset.pretokenize.shard_size=7", set()),
        ("preset.pretokenize.batch_size=7", set()),
        ("grid.stages=[stage1,generator,eval_recon,eval_gen,probe,speed]", {"cell", "generator", "eval_gen", "speed"}),
        # the shipped teacher's recipe is not read (the file is), and a different file is a different teacher
        ("preset.teacher.loop.steps=7", set()),
        (
            "preset.teacher.source=train",
            {"teacher", "cell", "stage1", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed"},
        ),
    ],
)
def test_stage_identity_follows_its_settings_and_inputs(override, stages, tmp_path):
    assert stages_of(changed_by(override, tmp_path=tmp_path)) == stages


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["preset.stage1.loop.steps=-5"], "preset.stage1.loop.steps=-5: must be a positive integer"),
        (["grid.sizes=[S,XL]"], "grid.sizes has model size 'XL'"),
        (["grid.stages=[stage1,pretokenize]"], "pretokenize without generator"),
        (
            ["+preset.pretokenize.crop=ten"],
            "preset.pretokenize.crop: the config has no such key; did you mean preset.pretokenize.crops?",
        ),
        (["preset.sizes.S=huge"], "unknown model size 'huge'"),
        (["data=imagenet", "data.root=/no/such/imagenet"], "/no/such/imagenet does not exist"),
        (["grid.num_tokens=[0]"], "must be a positive integer"),
        (["preset.generator.train_images=0"], "preset.generator.train_images=0: must be a positive integer"),
        (["preset.teacher.source=/no/such/teacher.safetensors"], "/no/such/teacher.safetensors: no such file"),
        (
            ["preset.teacher.source=./no/such/teacher_folder"],
            "./no/such/teacher_folder: no such file",
        ),  # hub-style folder
    ],
)
def test_bad_settings_fail_in_the_plan(overrides, message, tmp_path):
    with pytest.raises((PlanError, ValueError), match=message.replace("[", r"\[").replace("(", r"\(")):
        make_plan(config(*overrides, tmp_path=tmp_path))


@pytest.mark.parametrize(
    "args,message",
    [
        (["grid=nope"], "unknown grid 'nope': choose one of latent_vs_size, pipeline, released"),
        (["preset.stage1.loop.steps=-5"], "must be a positive integer"),
        (["grid.sizes=[S,XXL]"], "model size 'XXL'"),
        (["data=imagenet", "data.root=/no/such/imagenet"], "does not exist"),
        (["action=explode"], "action='explode'"),
    ],
)
def test_bad_overrides_on_the_command_line(args, message, tmp_path):
    """One clear line, exit code 2, nothing submitted."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.sweep", *args, f"outputs={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("jobs.jsonl")) and not list(tmp_path.rglob("mlflow.db"))


def test_dry_run_prints_the_plan(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "action=plan", f"outputs={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "21 cells, 149 stages, 149 to run" in r.stdout and "dry run: nothing submitted" in r.stdout
    assert not list(tmp_path.rglob("*.json*"))


SINGLE_STAGE = [
    "TiTok-BL-64-VQ",
    "TiTok-BL-128-VQ",
    "TiTok-SL-256-VQ",
    "TiTok-LL-32-VAE",
    "TiTok-BL-64-VAE",
    "TiTok-BL-128-VAE",
]


def test_single_stage_plan_trains_each_named_tokenizer_with_the_presets_recipe(tmp_path):
    plan = make_plan(config("grid=single_stage", tmp_path=tmp_path))
    assert [c.name for c in plan.cells] == SINGLE_STAGE
    paper = make_plan(
        config("grid=single_stage", "preset=paper", "preset.eval.reference_batch=null", tmp_path=tmp_path)
    )
    for cell in plan.cells:
        assert [t.stage for t in cell.tasks] == ["single", "eval_recon", "speed"]
        single = plan.task(f"{cell.name}/single")
        assert single.spec.model == cell.name and not single.needs
        for stage in ("eval_recon", "speed"):
            task = plan.task(f"{cell.name}/{stage}")
            assert task.spec.tokenizer == single.product and f"{cell.name}/single" in task.needs
        assert plan.task(f"{cell.name}/speed").spec.generator is None  # encode and decode throughput
        # the architecture is the name's, its sizes through preset.sizes: toy sizes in tiny, the release's in paper
        encoder, decoder = cell.name.split("-")[1]
        assert (single.spec.model_overrides["encoder_size"], single.spec.model_overrides["decoder_size"]) == (
            f"toy-{encoder}",
            f"toy-{decoder}",
        )
        spec = paper.task(f"{cell.name}/single").spec
        assert spec.model_overrides == {"encoder_size": encoder, "decoder_size": decoder}
        # the recipe is paper.yaml's single block
        assert (spec.loop.steps, spec.loop.batch_size, spec.loop.precision) == (650_000, 256, "fp16")
        assert (
            spec.perceptual.lpips_weight,
            spec.perceptual.convnext_weight,
            spec.gan.weight,
            spec.gan.start_step,
            spec.kl_weight,
            spec.optim.lr,
        ) == (1.0, 0.1, 0.1, 200_000, 1e-6, 1e-4)
    # a training setting of the single stage retrains it and re-runs what reads it, in a new cell run
    base = identities("grid=single_stage", tmp_path=tmp_path)
    other = identities("grid=single_stage", "preset.single.loop.steps=7", tmp_path=tmp_path)
    assert stages_of({k for k in other if base[k] != other[k]}) == {"cell", "single", "eval_recon", "speed"}


def test_single_stage_generators_are_trained_for_vq_cells_only(tmp_path):
    plan = make_plan(
        config(
            "grid=single_stage",
            "grid.models=[TiTok-BL-64-VQ,TiTok-BL-64-VAE]",
            "grid.stages=[single,pretokenize,generator,eval_recon,eval_gen,speed]",
            tmp_path=tmp_path,
        )
    )
    vq, vae = plan.cells
    assert [t.stage for t in vq.tasks] == ["single", "pretokenize", "generator", "eval_recon", "eval_gen", "speed"]
    assert [t.stage for t in vae.tasks] == ["single", "eval_recon", "speed"]  # continuous tokens: no MaskGIT
    single = plan.task(f"{vq.name}/single")
    assert plan.task(f"{vq.name}/generator").spec.tokenizer == single.product
    assert plan.task(f"{vq.name}/speed").spec.generator == plan.task(f"{vq.name}/generator").product


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["grid.models=[TiTok-L-32]"], "TiTok-L-32, a two-stage tokenizer"),
        (["grid.sizes=[S]", "grid.num_tokens=[32]"], "set grid.sizes=[] grid.num_tokens=[]"),
        (["grid.stages=[stage1,single]"], "single beside stage1/stage2"),
        (["grid.models=[]"], "grid.models is empty"),
        (["+preset.single.loop.stepz=3"], "did you mean preset.single.loop.steps?"),
    ],
)
def test_bad_single_stage_grids_fail_in_the_plan(overrides, message, tmp_path):
    with pytest.raises(PlanError, match=message.replace("[", r"\[")):
        make_plan(config("grid=single_stage", *overrides, tmp_path=tmp_path))


def test_the_single_stage_paper_plan_prints_its_cost(tmp_path):
    """The acceptance command: grid=single_stage preset=paper data=imagenet action=plan prints, per cell, the single
    stage's FLOPs per step, its 650k steps and GPU-hours on the example cluster."""
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "imagenet" / split / f"n{c:08d}").mkdir(parents=True)
            Image.new("RGB", (8, 8), (c, 2, 3)).save(tmp_path / "imagenet" / split / f"n{c:08d}" / "0.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep",
            "grid=single_stage",
            "preset=paper",
            "data=imagenet",
            f"data.root={tmp_path / 'imagenet'}",
            "data.num_classes=2",
            "cluster=example",
            "action=plan",
            f"outputs={tmp_path / 'outputs'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(r.stdout)  # the plan a cluster user sees (pytest -s shows it)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "grid single_stage  preset paper" in r.stdout and "6 cells, 19 stages, 19 to run" in r.stdout
    assert "GPU-h" in r.stdout and "dry run: nothing submitted" in r.stdout
    singles = [line.split() for line in r.stdout.splitlines() if line.strip().startswith("single ")]
    assert len(singles) == 6, r.stdout
    for _, flops_per_step, steps, _pflop, gpu_h, _wall_h in singles:
        assert float(flops_per_step) > 1e13 and steps == "650,000" and float(gpu_h.replace(",", "")) > 100
    assert not (tmp_path / "outputs" / "single_stage" / "jobs.jsonl").exists()
