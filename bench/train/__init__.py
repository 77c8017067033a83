"""Training: the shared loop (optimiser, schedule, EMA, AMP, DDP, atomic checkpoints, exact resume), the stage
objectives (stage 1, stage 2, single-stage, generator, the smoke teacher) and their losses."""
