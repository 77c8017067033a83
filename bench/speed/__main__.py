"""python -m bench.speed --help    (the throughput benchmark; its flags and examples: bench/speed/cli.py)"""

from bench.speed.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
