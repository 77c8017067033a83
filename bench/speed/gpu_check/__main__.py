"""python -m bench.speed.gpu_check --help    (the GPU check; its checks and flags: bench/speed/gpu_check/cli.py)"""

from bench.speed.gpu_check.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
