"""The cost of a plan before it runs: per stage, FLOPs per step (bench.speed.flops, the project's analytic count),
steps, and the device-hours and wall time on the configured cluster; beside it the paper's A100-hours where the
paper reports the cost of the same tokenizer (bench/paper_cost.csv).

    python -m bench.sweep grid=latent_vs_size preset=paper data=imagenet data.root=/data/imagenet \\
        action=plan cluster=example

    device.py   the cluster's accelerator: peak and the assumed utilisation
    stages.py   FLOPs and steps of each stage spec, a cell's estimated hours (its run's tags)
    paper.py    the paper's reported costs and its recipe at the same count
    table.py    the printed view of `action=plan`

Estimated hours = FLOPs / (peak x utilization), nothing else: data loading, evaluation during training,
checkpoints, queueing and communication beyond what the utilisation absorbs are not in it.
"""

from .device import CostError, Device, device_from_cluster
from .paper import paper_costs
from .stages import TAG_EST_BASIS, TAG_EST_GPU_HOURS, TAG_EST_WALL_HOURS, StageCost, cell_estimates, plan_costs
from .table import describe_cost

__all__ = [
    "TAG_EST_BASIS",
    "TAG_EST_GPU_HOURS",
    "TAG_EST_WALL_HOURS",
    "CostError",
    "Device",
    "StageCost",
    "cell_estimates",
    "describe_cost",
    "device_from_cluster",
    "paper_costs",
    "plan_costs",
]
