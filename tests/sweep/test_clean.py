"""`action=clean`: its dry run lists exactly what it then removes, and nothing a live job owns goes (a stage
folder whose lock is held, the code snapshot a running job imports, a live writer's temporary file)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import clean, launch
from bench import tracking as T
from bench.stages.task import LOCK
from tests.sweep.test_faults import REPO, TEACHER, plan_of


def hold_lock(path: Path) -> subprocess.Popen:
    code = (
        "import sys, time\nfrom bench.core.lock import owner_lock\n"
        "with owner_lock(sys.argv[1], print):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def make_litter(plan, job: subprocess.Popen) -> dict[str, Path]:
    """A grid folder as sweeps leave it: snapshots (one a live job imports), buffers, temporaries, old stages."""
    root, host = plan.root, socket.gethostname()
    paths = {}
    for i, name in enumerate(("v1-aaa", "v2-bbb", "v3-ccc")):  # oldest first; v3 the newest
        folder = root / launch.CODE_DIR / name
        (folder / "bench").mkdir(parents=True)
        (folder / "bench" / "x.py").write_text("x = 1\n" * 100)
        os.utime(folder, (time.time() - 100 + i, time.time() - 100 + i))
        paths[name] = folder
    root.mkdir(parents=True, exist_ok=True)
    record = {
        "launcher": "local",
        "job_id": str(job.pid),
        "tasks": ["x"],
        "time": time.time(),
        "process": launch.process_identity(job.pid),
        "code": str(paths["v2-bbb"]),
    }
    (root / launch.JOBS_FILE).write_text(json.dumps(record) + "\n")
    teacher = Path(plan.task("_shared/teacher").out_dir)
    teacher.mkdir(parents=True)
    paths["dead tmp"] = teacher / f".checkpoint.pt.{host}.{dead_pid()}.0a1b2c3d.tmp"
    paths["live tmp"] = teacher / f".checkpoint.pt.{host}.{os.getpid()}.0a1b2c3d.tmp"
    for key in ("dead tmp", "live tmp"):
        paths[key].write_bytes(b"\0" * 1000)
    for name, acked in (("taken", 30), ("partly", 10)):
        run = root / "TiTok-S-16" / f"run-{name}"
        run.mkdir(parents=True)
        (run / T.BUFFER_FILE).write_text("x" * 29 + "\n")
        (run / T.ACKED_FILE).write_text(json.dumps({"offset": acked}))
        paths[name] = run / T.BUFFER_FILE
    for name in ("stage1-0badc0de", "stage1-0ldbeef0"):
        folder = root / "TiTok-S-16" / name
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"\0" * 500)
        paths[name] = folder
    return paths


def test_dry_run_lists_what_clean_removes_and_live_jobs_keep_theirs(tmp_path):
    plan = plan_of(tmp_path)
    job = subprocess.Popen(["sleep", "120"])  # a running local job, importing snapshot v2
    paths = make_litter(plan, job)
    owner = hold_lock(paths["stage1-0ldbeef0"] / LOCK)  # a live job owns this old stage
    try:
        listed = clean.candidates(plan, stages=True)
        removed = clean.remove(listed)
        assert [i.path for i in removed] == [i.path for i in listed]
        assert sorted(str(i.path) for i in listed) == sorted(
            str(paths[k]) for k in ("v1-aaa", "dead tmp", "taken", "stage1-0badc0de")
        )
        for key in ("v2-bbb", "v3-ccc", "live tmp", "partly", "stage1-0ldbeef0"):
            assert paths[key].exists(), key
        for key in ("v1-aaa", "dead tmp", "stage1-0badc0de"):
            assert not paths[key].exists(), key
        assert paths["taken"].stat().st_size == 0
        assert json.loads((paths["taken"].parent / T.ACKED_FILE).read_text()) == {"offset": 0}
        assert clean.candidates(plan, stages=True) == []  # nothing left to clean
        text = clean.describe(listed, plan.root, dry_run=True)
        assert "would remove 4 items" in text and "TiTok-S-16/stage1-0badc0de" in text
    finally:
        owner.kill()
        job.kill()
        owner.wait()
        job.wait()
    # its owner gone, the old stage goes too; without clean_stages no stage folder is listed
    assert [i.path for i in clean.candidates(plan, stages=True)] == [paths["v2-bbb"], paths["stage1-0ldbeef0"]]
    assert [i.path for i in clean.candidates(plan)] == [paths["v2-bbb"]]


@pytest.mark.slow  # two sweep commands importing torch
def test_the_cli_dry_run_matches_clean(tmp_path):
    plan = plan_of(tmp_path)
    job = subprocess.Popen(["true"])
    job.wait()
    make_litter(plan, job)
    args = [
        sys.executable,
        "-m",
        "bench.sweep",
        "grid.sizes=[S]",
        "grid.num_tokens=[16]",
        "action=clean",
        "clean_stages=true",
        *TEACHER,
        f"outputs={tmp_path}",
    ]
    dry = subprocess.run([*args, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert (plan.root / launch.CODE_DIR / "v1-aaa").exists()  # a dry run removes nothing
    wet = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert wet.returncode == 0, wet.stderr
    assert dry.stdout.replace("would remove", "removed").replace(" (dry run: nothing removed)", "") == wet.stdout
    assert "removed 6 items" in wet.stdout  # v1, v2 (its job ended), the dead temporary, a buffer, both old stages
