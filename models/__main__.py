"""Print the model registry as a Markdown table: `python -m models` (add `--params` to count parameters)."""

import sys

import torch

from .variants import VARIANTS, build


def table(count_params: bool = False) -> str:
    rows = ["| name | kind | sizes | released | params | note |", "|---|---|---|---|---|---|"]
    for name, v in VARIANTS.items():
        sizes = ", ".join(f"{k} {val}" for k, val in v.sizes().items())
        params = ""
        if count_params:
            with torch.device("meta"):
                params = f"{sum(p.numel() for p in build(name).parameters()) / 1e6:.2f}M"
        release = v.hub_repo or v.official_file or ""
        rows.append(f"| {name} | {v.kind} | {sizes} | {release} | {params} | {v.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(count_params="--params" in sys.argv))
