"""Write the report of one grid (figures, tables, index.html) from its MLflow runs:

    python -m reports grid=latent_vs_size
    python -m reports grid=released tracking_uri=http://127.0.0.1:5000 out_dir=reports/out/released

Config: sweeps/report.yaml. Problems the user can fix (unknown grid, no runs, unreachable store) are one
line on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import re
import sys

import hydra
from omegaconf import DictConfig

from . import ReportError, build_report, load_grid


def _fail(message: str) -> None:
    print(f"reports: {message}", file=sys.stderr)
    sys.exit(1)


@hydra.main(version_base=None, config_path="../sweeps", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        result = build_report(cfg.grid, cfg.tracking_uri, cfg.out_dir)
    except ReportError as e:
        _fail(str(e))
    print(f"report of grid {result.grid}: {result.html}")
    if result.verdict:
        print(f"  {result.verdict}")
    if result.smoke:
        print("  SMOKE RESULTS: not comparable with the paper (marked in every figure and table)")
    if result.missing_cells:
        print(f"  missing cells ({len(result.missing_cells)}): {', '.join(result.missing_cells)}")
    if result.ignored_runs:
        print(f"  ignored runs: {len(result.ignored_runs)} (listed in the page)")


def _check_grid_override(argv: list[str]) -> None:
    """Hydra answers an unknown grid with a multi-line error; check the name first and say it in one line."""
    for arg in argv:
        m = re.fullmatch(r"\+{0,2}grid=(.+)", arg)
        if m:
            try:
                load_grid(m.group(1))
            except ReportError as e:
                _fail(str(e))


if __name__ == "__main__":
    _check_grid_override(sys.argv[1:])
    main()
