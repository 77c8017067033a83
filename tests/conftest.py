import os
from pathlib import Path

import pytest

# One BLAS thread: the 2048-d FID matrix functions are several times slower with OpenBLAS threads competing with
# torch's on a small machine (set before numpy loads OpenBLAS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def pytest_sessionstart(session):
    """The packages under test are this checkout's, not another tree's editable install (nox runs the suite from an
    isolated copy of the checkout: noxfile.py, isolated_checkout)."""
    import bench
    import models
    import reports

    root = Path(__file__).resolve().parents[1]
    for package in (models, bench, reports):
        where = Path(package.__file__).resolve()
        if root not in where.parents:
            raise pytest.UsageError(
                f"{package.__name__} is imported from {where}, not from this checkout ({root}): "
                f"run pytest from the checkout's root"
            )


pytest_plugins = ["tests.infra.fixtures"]
