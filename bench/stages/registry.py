"""STAGES: every stage module by name, in pipeline order (every stage after the stages it can read; the SLURM
launcher submits in this order)."""

from __future__ import annotations

from bench.stages import (
    eval_gen,
    eval_recon,
    generator,
    pretokenize,
    probe,
    real_stats,
    reference_batch,
    single,
    speed,
    stage1,
    stage2,
    teacher,
)

STAGES = {
    m.NAME: m
    for m in (
        teacher,
        real_stats,
        reference_batch,
        stage1,
        stage2,
        single,
        pretokenize,
        generator,
        eval_recon,
        eval_gen,
        probe,
        speed,
    )
}
