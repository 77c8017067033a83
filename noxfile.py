"""Project sessions. Everything runs in the project's .venv (made by `bash scripts/setup.sh`).

    .venv/bin/nox                    # what CI runs: lint, tests, slurm, browser
    .venv/bin/nox -s tests           # unit and integration tests on the CPU
    .venv/bin/nox -s slurm           # the sweep on a real single-node SLURM cluster + mlflow server
    .venv/bin/nox -s report          # figures and tables of the default grid into reports/out/
    .venv/bin/nox -s mlflow_ui       # browse the default sqlite store
"""

import sys

import nox

# sessions run in the interpreter that runs nox (.venv/bin/nox), whatever is first on PATH
PY = sys.executable

nox.options.default_venv_backend = "none"  # one heavy torch environment, made once by scripts/setup.sh
nox.options.sessions = ["lint", "tests", "slurm", "browser"]
nox.options.error_on_external_run = False


@nox.session
def lint(session):
    session.run(PY, "-m", "ruff", "check", ".")


@nox.session
def tests(session):
    session.run(PY, "-m", "pytest", "-m", "not slurm and not browser", *session.posargs)


@nox.session
def slurm(session):
    """Starts a real single-node SLURM cluster with accounting and an mlflow server (tests/infra), runs the
    tiny sweep through submitit's SLURM executor, and stops exactly what it started."""
    session.run(PY, "-m", "tests.infra.apt", "slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd",
                "mariadb-server")
    session.run(PY, "-m", "pytest", "-m", "slurm", *session.posargs)


@nox.session
def browser(session):
    """Renders the HTML report in headless Chromium (installed here when missing)."""
    session.run(PY, "-m", "tests.infra.apt", "chromium")
    session.run(PY, "-m", "pytest", "-m", "browser", *session.posargs)


@nox.session
def report(session):
    session.run(PY, "-m", "reports", *(session.posargs or ["grid=latent_vs_size"]))


@nox.session
def mlflow_ui(session):
    session.run(PY, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///outputs/mlflow.db", "--port", "5000")
