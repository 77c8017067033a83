"""Jobs import the code of their submission: the driver snapshots the checkout's tracked files
(working-tree contents) into the grid's folder, the runs record the snapshot next to the code version, and a job,
however late it (re)starts, imports `bench` from the snapshot, not from a working tree edited since."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import submitit
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from bench import launch
from bench import tracking as T
from bench.plan import make_plan
from bench.sweep import SWEEPS

REPO = Path(__file__).resolve().parents[2]


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def checkout_of(files: dict[str, str], where: Path) -> Path:
    """A git checkout of `files`, committed."""
    for name, text in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)
    git(where, "init", "-q")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "init")
    return where


def test_a_snapshot_is_the_working_tree_of_the_tracked_files_copied_once(tmp_path):
    repo = checkout_of(
        {"pkg/mod.py": "V = 1\n", "tests/data.bin": "x" * 1000, ".gitignore": "outputs/\n"}, tmp_path / "repo"
    )
    (repo / "pkg" / "mod.py").write_text("V = 2\n")  # a dirty tree: its edit is what the jobs must run
    (repo / "untracked.py").write_text("")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "big").write_text("")
    dest = tmp_path / "grid" / launch.CODE_DIR
    snap = launch.snapshot_code(dest, root=repo)
    sha = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert snap.parent == dest.resolve() and snap.name.startswith(f"{sha}-dirty-")
    assert (snap / "pkg" / "mod.py").read_text() == "V = 2\n"
    assert sorted(str(p.relative_to(snap)) for p in snap.rglob("*")) == [".gitignore", "pkg", "pkg/mod.py"]
    # the same code again: the same folder, no new copy and no temporary folder left
    assert launch.snapshot_code(dest, root=repo) == snap
    assert [p.name for p in dest.iterdir()] == [snap.name]
    # an edit since: a new snapshot; the earlier one, which queued jobs import, is untouched
    (repo / "pkg" / "mod.py").write_text("V = 3\n")
    again = launch.snapshot_code(dest, root=repo)
    assert again != snap and (again / "pkg" / "mod.py").read_text() == "V = 3\n"
    assert (snap / "pkg" / "mod.py").read_text() == "V = 2\n"
    assert launch.snapshot_code(dest, root=tmp_path / "grid") is None  # no git checkout


def test_a_job_imports_the_snapshot_not_the_working_tree_edited_after_submission(tmp_path, monkeypatch):
    """A checkout of this project (its tracked code as the working tree holds it) is snapshotted, then its
    bench/launch/job.py is broken: a job started afterwards (what a requeued job is) from inside that checkout, with
    it on PYTHONPATH as an editable install would have it, must import the snapshot's bench and models."""
    files = {
        n: (REPO / n).read_text()
        for n in launch.tracked_files(REPO)
        if not n.startswith(launch.SNAPSHOT_SKIP) and (REPO / n).is_file() and n.endswith((".py", ".toml", ".yaml"))
    }
    work = checkout_of(files, tmp_path / "checkout")
    code = launch.snapshot_code(tmp_path / "grid" / launch.CODE_DIR, root=work)
    with (work / "bench" / "launch" / "job.py").open("a") as f:
        f.write("\nraise RuntimeError('imported the working tree')\n")
    monkeypatch.chdir(work)  # `python -m` puts the job's current folder first on sys.path
    monkeypatch.setenv("PYTHONPATH", str(work))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=10)
    with launch.job_environment(launch.code_env(code)):  # as run_local submits
        job = executor.submit(launch.StageJob([], {}, code=str(code)))
    assert os.environ["PYTHONPATH"] == str(work) and "PYTHONSAFEPATH" not in os.environ  # the driver's is restored
    assert job.result() == [], job.stderr()
    assert f"code: bench and models imported from {code} (snapshot {code})" in job.stdout()
    assert "warning" not in (job.stderr() or "")

    # a SLURM job's batch script exports the same (checked here through bash, without SLURM)
    where = "import bench, models; print(bench.__file__, models.__file__)"
    script = "\n".join([*launch.code_setup(code), shlex.join([sys.executable, "-c", where])])
    out = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(code / "bench" / "__init__.py"), str(code / "models" / "__init__.py")]


def test_the_sweep_and_cell_runs_record_the_snapshot(tmp_path):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose("sweep", overrides=["grid.sizes=[S]", "grid.num_tokens=[16]", f"outputs={tmp_path}"])
    plan = make_plan(cfg)
    code = launch.snapshot_code(plan.root / launch.CODE_DIR)
    assert code.parent == (plan.root / launch.CODE_DIR).resolve() and (code / "bench" / "launch" / "job.py").is_file()
    assert not (code / "tests").exists() and not (code / ".git").exists()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launch.prepare_tracking(plan, uri, code)
    client = MlflowClient(uri)
    for folder in (plan.root, plan.cells[0].run_dir):
        run = client.get_run(json.loads((Path(folder) / T.RUN_ID_FILE).read_text())["run_id"])
        assert run.data.tags[T.TAG_CODE_SNAPSHOT] == str(code)
        assert run.data.tags[T.TAG_CODE_VERSION] == launch.code_version()
    shutil.rmtree(code)
