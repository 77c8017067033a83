"""The cost lines of `action=plan`: per stage, per cell and in total, the paper's recipes beside."""

from __future__ import annotations

from .device import Device
from .paper import paper_costs, paper_recipe_costs, same_architecture, same_recipe
from .stages import plan_costs


def _h(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def describe_cost(plan, device: Device) -> str:
    """The cost lines of `action=plan`: per stage, per cell, in total; the paper's recipes beside."""
    costs = plan_costs(plan)
    names = {c.name for c in plan.cells}
    paper = paper_costs()
    unit = "core-h" if device.cpu else "GPU-h"
    head = f"    {'stage':<22}{'FLOP/step':>11}{'steps':>11}{'PFLOP':>11}{unit:>11}{'wall-h':>10}   paper A100-h"
    lines = ["cost estimate (bench/cost/): " + device.describe(), head]
    total_g = total_w = 0.0
    total_f = 0
    marked = []
    for cell, stages in costs.items():
        if not stages:
            continue
        lines.append(f"  {cell}")
        cell_g = cell_w = 0.0
        cell_f = 0
        for s in stages:
            g, w = s.hours(device)
            cell_g, cell_w, cell_f = cell_g + g, cell_w + w, cell_f + s.flops
            if s.flops_per_step is None:
                lines.append(
                    f"    {s.stage:<22}{'-':>11}{'-':>11}{'-':>11}{'-':>11}{'-':>10}   (Inception only: not counted)"
                )
                continue
            lines.append(
                f"    {s.stage:<22}{s.flops_per_step:>11.3e}{s.steps:>11,}{s.flops / 1e15:>11.4g}{_h(g):>11}{_h(w):>10}"
            )
        theirs = ""
        if cell in paper and cell in names and same_architecture(cell, plan):
            same = same_recipe(stages, paper[cell], plan)
            theirs = f"   {paper[cell]['a100_hours']:,}" + ("" if same else " (another recipe: see below)")
            marked.append(cell)
        if cell not in names and not cell_f:
            continue
        lines.append(
            f"    {'cell total':<22}{'':>11}{'':>11}{cell_f / 1e15:>11.4g}{_h(cell_g):>11}{_h(cell_w):>10}" + theirs
        )
        total_g, total_w, total_f = total_g + cell_g, total_w + cell_w, total_f + cell_f
    lines.append(
        f"  {'total':<24}{'':>11}{'':>11}{total_f / 1e15:>11.4g}{_h(total_g):>11}{_h(total_w):>10}"
        f"   ({len(plan.cells)} cells and the shared stages, run one after another)"
    )
    for model in marked:
        row = paper[model]
        recipe = paper_recipe_costs(model)
        g = sum(s.hours(device)[0] for s in recipe)
        w = sum(s.hours(device)[1] for s in recipe)
        parts = " + ".join(f"{s.stage} {s.steps:,} steps x {s.what} ({s.flops_per_step:.3e} FLOP/step)" for s in recipe)
        lines.append(
            f"  paper recipe {model} (released config, {row['covers']}): {parts}: {_h(g)} {unit}, "
            f"{_h(w)} wall-h; the paper: {row['a100_hours']:,} A100-h ({row['gpus']} {row['gpu']} x "
            f"{row['hours']} h), paper / estimate = {row['a100_hours'] / g:.2f}"
        )
    lines.append(
        "  FLOPs: bench.speed.flops (matmuls and convolutions; training 3x the forward of trained modules, "
        "1x frozen ones); hours = FLOPs / (peak x utilisation); data loading, in-training evaluation, "
        "checkpoints and queueing not included"
    )
    return "\n".join(lines)
