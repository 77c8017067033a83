"""The GPU check (`nox -s gpu`, `python -m bench.speed.gpu_check`): CUDA correctness and speed of the harness on one
GPU, in one table; cli.py's docstring says what each check does.

config.py          the checks' names, the sizes (Config), the models they run on
table.py           Row, its statuses, the printed table and the JSON file
inference.py       peak, paths, graphs, generation: inference paths against fp32 parity, the generation benchmark
training_steps.py  training, train_speed: one step of each stage in the paper's precision and per-GPU batch
distributed.py     nccl, ddp: a one-rank process group, a two-process DDP step under torchrun (ddp_worker)
run.py             every check in turn, the wall-time budget, the "not checked" lines
cli.py             the command line (__main__.py runs it)
"""
