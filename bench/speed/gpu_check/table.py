"""The GPU check's output: one Row per result, its statuses, the printed table and the JSON file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

OK, FAIL, SKIP, INFO = "ok", "FAIL", "skip", "info"


@dataclass
class Row:
    check: str
    subject: str
    setting: str
    result: str
    bound: str = ""
    status: str = OK
    seconds: float | None = None
    values: dict = field(default_factory=dict)


COLUMNS = (
    ("check", "check"),
    ("subject", "subject"),
    ("setting", "setting"),
    ("result", "result"),
    ("bound", "bound"),
    ("status", "status"),
    ("seconds", "s"),
)


def format_table(rows: list[Row]) -> str:
    cells = [[title for _, title in COLUMNS]]
    for r in rows:
        cells.append(
            [
                f"{r.seconds:.1f}"
                if key == "seconds" and r.seconds is not None
                else str(getattr(r, key) if getattr(r, key) is not None else "")
                for key, _ in COLUMNS
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(
    path: str, head: dict, rows: list[Row] | None, skipped: str | None = None, unchecked: list[str] | None = None
) -> None:
    data = {
        "environment": head,
        "skipped": skipped,
        "rows": [dataclasses.asdict(r) for r in rows or []],
        "not_checked": unchecked or [],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
