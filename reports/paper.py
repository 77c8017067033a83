"""The paper's published numbers (reports/paper_numbers.csv) in the tidy shape of our runs, so that figures and
tables can put them beside ours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .grid import Grid, cell_size_and_tokens

PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
# which rows of paper_numbers.csv (its `table` column) describe which grid; other grids have no paper values
# (single_stage trains the released single-stage architectures: the release's numbers are its references)
PAPER_TABLE_OF_GRID = {"latent_vs_size": "scaling", "released": "released", "single_stage": "released"}
# paper_numbers.csv column -> our metric name
PAPER_METRICS = {"rfid": "rfid", "gfid": "gfid", "is": "gfid_is", "samples_per_s": "samples_per_s"}


def paper_numbers(grid: Grid) -> pd.DataFrame:
    """The paper's values for this grid's cells, tidy: cell, model_size, num_tokens, metric, value, source."""
    columns = ["cell", "model_size", "num_tokens", "metric", "value", "source"]
    table = PAPER_TABLE_OF_GRID.get(grid.name)
    if table is None:
        return pd.DataFrame(columns=columns)
    raw = pd.read_csv(PAPER_CSV, comment="#")
    raw = raw[raw["table"] == table]
    rows = []
    for rec in raw.to_dict("records"):
        # scaling rows name the size only ("TiTok-S"); the cell is the grid's TiTok-{size}-{K}
        cell = f"{rec['model']}-{int(rec['tokens'])}" if table == "scaling" else rec["model"]
        if cell not in grid.cells:
            continue
        size, k = cell_size_and_tokens(cell)
        rows += [
            {
                "cell": cell,
                "model_size": size,
                "num_tokens": k,
                "metric": ours,
                "value": float(rec[col]),
                "source": rec["source"],
            }
            for col, ours in PAPER_METRICS.items()
            if pd.notna(rec[col])
        ]
    return pd.DataFrame(rows, columns=columns)
