import os

# One BLAS thread: the 2048-d FID matrix functions are several times slower with OpenBLAS threads competing with
# torch's on a small machine (set before numpy loads OpenBLAS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

pytest_plugins = ["tests.infra.fixtures"]
