"""`action=status` and `action=cancel` as docs/reproduce.md gives them, through the real command line: on a sweep
that submitted nothing, status lists each cell's stages as to do and cancel stops nothing; neither submits a job.
(Cancelling live jobs: tests/sweep/test_faults.py; queued SLURM jobs in status: tests/sweep/test_sweep_slurm.py.)"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ONE_CELL = ["grid=latent_vs_size", "grid.sizes=[S]", "grid.num_tokens=[16]"]


def sweep(action: str, outputs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.sweep", *ONE_CELL, f"action={action}", f"outputs={outputs}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_status_and_cancel_of_a_sweep_that_submitted_nothing(tmp_path):
    status = sweep("status", tmp_path)
    assert status.returncode == 0, status.stderr
    assert "TiTok-S-16" in status.stdout and "todo" in status.stdout
    cancel = sweep("cancel", tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 0 jobs" in cancel.stdout
    assert not (tmp_path / "latent_vs_size" / "jobs.jsonl").exists()
