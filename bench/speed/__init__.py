"""Speed: throughput of generation, encode/decode and training steps, with analytic FLOPs (`python -m bench.speed`).

timing.py     synchronised repeated runs (Timing, time_interleaved, time_runs), matmul_peak, device information
options.py    the switches of an inference path (InferenceOptions) and the named modes (naive, parity, fast, ...)
guard.py      the quality guard a fast path must pass against parity (QualityGuard, GUARD, EXACT_GUARD)
paths.py      InferencePipeline, compare_with_parity, choose_path (`auto`'s guarded choice)
flops.py      analytic FLOP counts of the models and of the training steps
factories.py  the benchmarked models from registry names (random weights), toy sizes
measure.py    generation and encode/decode throughput (measure_generation, measure_tokenizer, Runner)
training.py   one step of a stage's real objective in the training loop (measure_training)
scaling.py    cost against K for S/B/L (scaling, scaling_flops)
run.py        running the sections the command line asks for
table.py      the table, CSV and JSON of the rows
cli.py        the command line: argparse and what it prints (__main__.py runs it)
gpu_check/    the GPU check (`nox -s gpu`, `python -m bench.speed.gpu_check`)
"""


def __getattr__(name: str):
    # `from bench.speed import measure_generation` keeps working without every import of a submodule paying for
    # bench.speed.measure (and the training code it does not need)
    if name == "measure_generation":
        from bench.speed.measure import measure_generation

        return measure_generation
    raise AttributeError(f"module 'bench.speed' has no attribute {name!r}")
