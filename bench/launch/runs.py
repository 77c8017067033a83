"""The sweep's MLflow runs, set up by the driver: a parent run for the grid and one run per cell, tagged with the
code version, its snapshot and the cost estimate (`prepare_tracking`); and the replay of what jobs could not log
during a tracking outage (`flush_buffers`)."""

from __future__ import annotations

import os

from bench import tracking as T
from bench.launch.job import CellContext
from bench.launch.snapshot import code_version
from bench.plan import SHARED, Plan
from bench.stages import Tracking


def prepare_tracking(plan: Plan, uri: str, code: str | os.PathLike | None = None) -> dict[str, CellContext]:
    """The parent run and one run per cell, recorded in their folders and created here when the store answers
    (else by the first job that reaches it); params logged once. `code`: the snapshot the jobs import."""
    artifacts = plan.root.parent / "mlartifacts"
    common = {
        T.TAG_GRID: plan.grid,
        T.TAG_PRESET: plan.preset,
        T.TAG_CODE_VERSION: code_version(),
        T.TAG_SMOKE: str(plan.smoke).lower(),
    }
    if code:
        common[T.TAG_CODE_SNAPSHOT] = str(code)
    reference = plan.config["preset"]["eval"].get("reference_batch") or f"{plan.config['data']['name']} val split"
    common[T.TAG_REFERENCE] = f"rFID: {plan.config['data']['name']} val; gFID: {reference}"
    T.declare_run(
        uri, plan.root, plan.grid, f"sweep {plan.grid}", dict(common, **{T.TAG_ROLE: "sweep"}), artifact_root=artifacts
    )
    shared_tracking = Tracking(uri, str(plan.root))
    shared_tracking.logger().log_params(T.flatten(plan.config))
    contexts = {SHARED: CellContext(plan.shared, shared_tracking, {}, str(plan.root))}
    estimates = cost_tags(plan)
    for cell in plan.cells:
        tags = dict(
            common,
            **{
                T.TAG_ROLE: "cell",
                T.TAG_CELL: cell.name,
                T.TAG_CELL_ID: cell.cell_id,
                T.TAG_TOKENIZER: cell.tokenizer,
                T.TAG_GENERATOR: str(cell.generator or ""),
            },
        )
        if cell.size:
            tags.update({T.TAG_MODEL_SIZE: cell.size, T.TAG_NUM_TOKENS: str(cell.num_tokens)})
        else:
            tags.update(_size_tags(cell.name))
        tags.update(estimates.get(cell.name, {}))
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        T.declare_run(uri, cell.run_dir, plan.grid, cell.name, tags, parent=plan.root, artifact_root=artifacts)
        tracking = Tracking(uri, str(cell.run_dir))
        tracking.logger().log_params(T.flatten(cell.params))
        contexts[cell.name] = CellContext(cell.tasks, tracking, tags, str(cell.run_dir))
    return contexts


def cost_tags(plan: Plan) -> dict[str, dict[str, str]]:
    """Per cell, the estimate of its training stages on this invocation's cluster (bench.cost) as run tags, which
    the report's cost table shows beside cost_gpu_hours; none where the cluster config states no device."""
    from bench import cost as C

    try:
        device = C.device_from_cluster(plan.config["cluster"])
    except C.CostError:
        return {}
    basis = device.describe()
    return {
        cell: {
            C.TAG_EST_GPU_HOURS: f"{est['cost_est_gpu_hours']:.6g}",
            C.TAG_EST_WALL_HOURS: f"{est['cost_est_wall_hours']:.6g}",
            C.TAG_EST_BASIS: basis,
        }
        for cell, est in C.cell_estimates(plan, device).items()
    }


def _size_tags(name: str) -> dict[str, str]:
    import models

    c = models.resolve(name).config
    return {T.TAG_MODEL_SIZE: c.encoder_size, T.TAG_NUM_TOKENS: str(c.num_latent_tokens)}


def flush_buffers(contexts: dict[str, CellContext]) -> int:
    """Replay whatever jobs could not log (tracking outages); returns the number of runs still buffered."""
    left = 0
    for ctx in contexts.values():
        if ctx.tracking and T.pending(ctx.tracking.run_dir):
            left += not ctx.tracking.logger().flush()
    return left
