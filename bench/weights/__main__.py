"""`python -m bench.weights`: see bench/weights/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
