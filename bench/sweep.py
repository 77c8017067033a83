"""The sweep front door (Hydra; configs in sweeps/):

    python -m bench.sweep grid=latent_vs_size                  # tiny preset, local launcher, synthetic data, CPU
    python -m bench.sweep grid=latent_vs_size action=plan      # dry run: cells, stages, resources, what is done
    python -m bench.sweep grid=latent_vs_size action=status    # per cell and stage: done, running, queued or
                                                               # ended without a result (why), what a rerun does;
                                                               # --json for scripts
    python -m bench.sweep grid=latent_vs_size action=cancel
    python -m bench.sweep grid=latent_vs_size action=clean --dry-run   # then without --dry-run; clean_stages=true
                                                               # also removes other settings' stage folders
    python -m bench.sweep grid=latent_vs_size preset=paper data=imagenet data.root=/data/imagenet \\
        launcher=slurm cluster=example                         # the paper's study on SLURM (returns at once)

Reruns are idempotent: finished stages are skipped, interrupted ones resume, a cell keeps its MLflow run.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
# `${sweeps:preset/tiny_teacher.safetensors}` in a config: a file that ships beside the configs, wherever the
# checkout is
OmegaConf.register_new_resolver("sweeps", lambda relative: str(SWEEPS / relative), replace=True)
GROUPS = ("grid", "preset", "data", "launcher", "cluster")
ACTIONS = ("run", "plan", "status", "cancel", "clean")


class SweepError(Exception):
    """Bad input, said in one line."""


def check_group_overrides(argv: list[str]) -> None:
    """`grid=nope` and friends: one clear line instead of Hydra's trace (checked before Hydra composes)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in GROUPS and not (SWEEPS / key / f"{value}.yaml").is_file():
            known = sorted(p.stem for p in (SWEEPS / key).glob("*.yaml"))
            raise SweepError(f"unknown {key} {value!r}: choose one of {', '.join(known)} (files in {SWEEPS / key})")


def check_composed(argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that an override of a key the config does not have and a
    required value left unset (`???`, e.g. data.root) get one line, with the fix, instead of Hydra's message or
    trace. Whatever else Hydra objects to it reports itself."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    with initialize_config_dir(str(SWEEPS), version_base=None):
        try:
            cfg = compose("sweep", overrides=overrides)
        except ConfigCompositionException as err:
            key = getattr(err.__cause__, "full_key", None)
            if not key:
                return
            groups = [a for a in overrides if a.lstrip("+~").partition("=")[0] in GROUPS]
            parent, _, name = key.rpartition(".")
            node = OmegaConf.select(compose("sweep", overrides=groups), parent) if parent else None
            known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            from bench.plan import unknown_key

            raise SweepError(unknown_key(parent, name, known)) from None
        for arg in overrides:  # `+preset.<key>=` adds a key Hydra cannot know is a typo: the same check
            if arg.startswith("+") and not arg.startswith("++") and arg[1:].startswith("preset."):
                _check_added(
                    compose("sweep", overrides=[a for a in overrides if a is not arg]), arg[1:].partition("=")[0]
                )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SweepError(f"{missing[0]} is required and not set: add {missing[0]}=<value> to the command line")


def _check_added(base: DictConfig, key: str) -> None:
    """A preset key added with `+` must name a setting, as one set without it must: its first component that
    `base` (the config without it) lacks is an error, unless the plan checks that section's keys itself."""
    from bench.plan import PRESET_SECTIONS, unknown_key

    # sections whose keys the plan checks against their settings' fields (so `+` may add one the preset file leaves
    # at its default), and a free-form map (a new model size letter)
    addable = (*PRESET_SECTIONS, "pretokenize", "sizes")
    parts = key.split(".")
    for i in range(1, len(parts)):
        parent, name = ".".join(parts[:i]), parts[i]
        node = OmegaConf.select(base, parent)
        if ".".join(parts[1:i]) in addable:
            return
        if not isinstance(node, DictConfig) or name not in node:
            known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            raise SweepError(unknown_key(parent, name, known))


def sweep(cfg: DictConfig) -> int:
    """Run the configured action; returns the process exit code."""
    from bench import launch, tracking
    from bench.plan import describe, make_plan, write_plan

    if cfg.action not in ACTIONS:
        raise SweepError(f"action={cfg.action!r}: choose one of {', '.join(ACTIONS)}")
    if cfg.launcher.name not in ("local", "slurm"):
        raise SweepError(f"launcher.name={cfg.launcher.name!r}: expected local or slurm")
    plan = make_plan(cfg)
    if cfg.action == "plan":
        print(describe(plan, cost=True))
        print("dry run: nothing submitted")
        return 0
    if cfg.action == "status":
        from bench import status

        # also marks the run of each job that ended without a result, once (MLflow's notes go to stderr: stdout
        # holds the JSON)
        with contextlib.redirect_stdout(sys.stderr):
            states = status.reconcile(plan)
        print(status.as_json(plan, states) if cfg.get("json") else status.render(plan, states))
        return 0
    if cfg.action == "clean":
        from bench import clean

        items = clean.candidates(plan, stages=bool(cfg.get("clean_stages")))
        if not cfg.get("dry_run"):
            items = clean.remove(items)
        print(clean.describe(items, plan.root, bool(cfg.get("dry_run"))))
        return 0
    if cfg.action == "cancel":
        ids = launch.cancel(plan)
        print(f"cancelled {len(ids)} jobs" + (f": {', '.join(ids)}" if ids else ""))
        return 0

    if cfg.launcher.name == "slurm" and shutil.which("sbatch") is None:  # before any MLflow run exists
        raise SweepError(
            "launcher=slurm: sbatch is not on PATH (no SLURM client here); use launcher=local or run "
            "from a SLURM login node"
        )
    uri = tracking.resolve_uri(cfg.tracking_uri, cfg.outputs)
    write_plan(plan)
    print(describe(plan))
    from bench import status

    for s in status.reconcile(plan):  # what an earlier invocation's jobs left: their runs marked before reruns
        if s.state == "ended":
            print(f"  {s.key}: {status.reason_text(s)}; this run {s.rerun}")
    code = launch.snapshot_code(plan.root / launch.CODE_DIR)  # what the jobs import, also once requeued
    print(f"code: the jobs import {code}" if code else "code: no git checkout, the jobs import the working tree")
    contexts = launch.prepare_tracking(plan, uri, code)
    launch.flush_buffers(contexts)  # what earlier jobs could not send (a tracking outage)
    print(f"tracking: {uri} (experiment {tracking.experiment_name(plan.grid)})")
    if tracking.OUTAGES.down(uri):
        print(
            f"warning: {uri} does not answer; every run's metrics are buffered next to it and sent once it "
            f"answers (a rerun sends what is left)",
            file=sys.stderr,
        )
    if cfg.launcher.name == "local":
        failed = launch.run_local(plan, contexts, cfg.launcher.max_parallel, cfg.launcher.threads_per_job, code=code)
        for ctx in contexts.values():  # cells finished by an earlier invocation, and the shared run
            launch.finish_cell(ctx)
        left = launch.flush_buffers(contexts)
        todo = sum(not t.done for t in plan.tasks())
        print(
            f"{len(plan.cells)} cells: {sum(c.done for c in plan.cells)} finished, {todo} stages unfinished, "
            f"{failed} jobs failed" + (f"; {left} runs still have unsent metrics (rerun to flush)" if left else "")
        )
        print(f"report: python -m reports grid={plan.grid} tracking_uri={shlex.quote(uri)}")  # whatever outputs= was
        return 1 if failed or todo else 0
    ids = launch.submit_slurm(
        plan,
        contexts,
        OmegaConf.to_container(cfg.cluster, resolve=True),
        OmegaConf.to_container(cfg.launcher, resolve=True),
        code,
    )
    print(f"submitted {len(ids)} jobs" + (f": {ids[0]} ... {ids[-1]}" if ids else " (everything is done or queued)"))
    print(f"follow: squeue -u $USER; python -m bench.sweep grid={plan.grid} action=status; outputs in {plan.root}")
    if cfg.wait:
        left = launch.wait_slurm(plan)
        for ctx in contexts.values():
            launch.finish_cell(ctx)
        launch.flush_buffers(contexts)
        print(f"all jobs ended; {left} stages unfinished")
        return 1 if left else 0
    return 0


def main() -> None:
    import hydra

    flags = {"--json": "json=true", "--dry-run": "dry_run=true"}  # action=status --json, action=clean --dry-run
    sys.argv = [flags.get(a, a) for a in sys.argv]
    try:
        check_group_overrides(sys.argv[1:])
        check_composed(sys.argv[1:])
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(config_path=str(SWEEPS), config_name="sweep", version_base=None)
    def app(cfg: DictConfig) -> None:
        from bench.data import DatasetError
        from bench.plan import PlanError
        from bench.weights import MissingWeightsError

        try:
            code = sweep(cfg)
        except (SweepError, PlanError, DatasetError, MissingWeightsError) as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
        except ValueError as err:  # a bad value deeper down (model name, size, config field)
            print(f"error: {err}", file=sys.stderr)
            code = 2
        sys.exit(code)

    app()


if __name__ == "__main__":
    main()
