"""Project sessions. Everything runs in the project's .venv (made by `bash scripts/setup.sh`).

.venv/bin/nox                    # what CI runs: lint, tests, slurm, browser
.venv/bin/nox -s tests           # unit and integration tests on the CPU
.venv/bin/nox -s slurm           # the sweep on a real single-node SLURM cluster + mlflow server
.venv/bin/nox -s report          # figures and tables of the default grid into reports/out/
.venv/bin/nox -s gpu             # the GPU check on one CUDA device (not in CI's sessions: CI has no GPU)
.venv/bin/nox -s mlflow_ui       # browse the default sqlite store
"""

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nox

# sessions run in the interpreter that runs nox (.venv/bin/nox), whatever is first on PATH
PY = sys.executable

nox.options.default_venv_backend = "none"  # one heavy torch environment, made once by scripts/setup.sh
nox.options.sessions = ["lint", "tests", "slurm", "browser"]
nox.options.error_on_external_run = False


@contextmanager
def isolated_checkout(session):
    """A copy of this checkout (tracked files and untracked ones git does not ignore, with .git) in a new temporary
    folder with nothing beside it, where the tests run: they prove the repository needs no file outside itself
    (no shared folder beside it, no path of a development machine). Its packages shadow the editable install (cwd and
    PYTHONPATH come first), for the test process and every process it starts."""
    from bench.launch.snapshot import tracked_files  # here, not at nox's start-up: it imports torch

    root = Path(__file__).resolve().parent
    dest = Path(tempfile.mkdtemp(prefix="titok-bench-isolated-")) / "titok-bench"
    for name in tracked_files(root, untracked=True):
        source = root / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    shutil.copytree(root / ".git", dest / ".git", symlinks=True)
    session.chdir(dest)
    session.env["PYTHONPATH"] = os.pathsep.join([str(dest), *filter(None, [os.environ.get("PYTHONPATH")])])
    session.log(f"running from an isolated copy of the checkout: {dest}")
    try:
        yield dest
    finally:
        session.chdir(root)
        shutil.rmtree(dest.parent, ignore_errors=True)


def run_promised(session, marker: str) -> None:
    """The tests marked `marker`, which the README promises CI runs: a skip of one (its fixture found no root, no
    SLURM, no Chromium) fails the session under CI=true, and elsewhere makes it end "skipped" with the tests and
    reasons in nox's summary, never a green pass."""
    report = Path(tempfile.mkdtemp(prefix="titok-bench-junit-")) / "junit.xml"
    try:
        session.run(PY, "-m", "pytest", "-m", marker, "-rs", f"--junitxml={report}", *session.posargs)
        skipped = skipped_tests(report)
    finally:
        shutil.rmtree(report.parent, ignore_errors=True)
    if not skipped:
        return
    what = f"{len(skipped)} promised {marker} test(s) did not run: " + "; ".join(skipped)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        session.error(what)
    session.skip(what)


def skipped_tests(junit_xml: Path) -> list[str]:
    """`test (reason)` for each skipped test of a pytest junit report."""
    import xml.etree.ElementTree as ET

    return [
        f"{case.get('classname')}.{case.get('name')} ({skip.get('message')})"
        for case in ET.parse(junit_xml).iter("testcase")
        for skip in case.iter("skipped")
    ]


@nox.session
def lint(session):
    """ruff (lint and format), no import cycle (scripts/import_cycles.py), and the import-layer contracts of
    pyproject.toml (models <- bench <- reports, bench's floors)."""
    session.run(PY, "-m", "ruff", "check", ".")
    session.run(PY, "-m", "ruff", "format", "--check", ".")
    session.run(PY, "scripts/import_cycles.py")
    session.run(str(Path(PY).with_name("lint-imports")), "--no-cache")


@nox.session
def tests(session):
    with isolated_checkout(session):
        session.run(PY, "-m", "pytest", "-m", "not slurm and not browser", *session.posargs)


@nox.session
def slurm(session):
    """Starts a real single-node SLURM cluster with accounting and an mlflow server (tests/infra), runs the
    tiny sweep through submitit's SLURM executor, and stops exactly what it started."""
    session.run(
        PY, "-m", "tests.infra.apt", "slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"
    )
    with isolated_checkout(session):
        run_promised(session, "slurm")


@nox.session
def browser(session):
    """Renders the HTML report in headless Chromium (installed here when missing)."""
    session.run(PY, "-m", "tests.infra.apt", "chromium")
    with isolated_checkout(session):
        run_promised(session, "browser")


@nox.session
def gpu(session):
    """The GPU check (bench/speed/gpu_check/, <= 8 minutes on one GPU): every inference path against fp32 parity,
    one training step of each stage in the paper preset's precision at its per-GPU batch (with peak memory), CUDA
    graphs and torch.compile of the sampling loop, a one-GPU NCCL group, a two-process DDP step under torchrun over
    NCCL where the machine has two or more GPUs, TiTok-L-32 generation at batch 256 against the measured bf16 peak and
    stage-1 training throughput in fp16, in one table followed by what it did not check. Never a default session (CI
    has no GPU); without a CUDA device it ends "skipped", never a green pass.
    Arguments after -- go to the script (e.g. `nox -s gpu -- --checks paths,nccl`)."""
    report = Path(tempfile.mkdtemp(prefix="titok-bench-gpu-")) / "gpu_check.json"
    try:
        session.run(PY, "-m", "bench.speed.gpu_check", "--json", str(report), *session.posargs)
        skipped = json.loads(report.read_text()).get("skipped") if report.exists() else None
    finally:
        shutil.rmtree(report.parent, ignore_errors=True)
    if skipped:
        session.skip(skipped)


@nox.session
def report(session):
    session.run(PY, "-m", "reports", *(session.posargs or ["grid=latent_vs_size"]))


@nox.session
def mlflow_ui(session):
    from bench.tracking import DEFAULT_TRACKING_URI  # here, not at the top: nox starts without importing the project

    session.run(PY, "-m", "mlflow", "ui", "--backend-store-uri", DEFAULT_TRACKING_URI, "--port", "5000")
