"""The GPU check (bench/speed/gpu_check/, `nox -s gpu`): it skips cleanly without a CUDA device (exit 0, one line;
the nox session ends "skipped" and is not one of CI's sessions), and its checks are the functions the CUDA run calls,
run here on the CPU at toy size (`--device cpu --toy`): the paths against parity, the training steps in the paper
preset's precision and per-GPU batch, the one-rank process group (gloo), the two-process DDP check through torchrun
(gloo), the generation and stage-1 benchmarks, the table, its "not checked" lines and its JSON, a failing check as a
FAIL row. The gpu-marked tests run the same on a CUDA device."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bench.speed.gpu_check import cli, distributed, inference, run, training_steps
from bench.speed.gpu_check.config import CHECKS, Config
from bench.speed.gpu_check.inference import IDENTICAL, quality_row
from bench.speed.gpu_check.table import FAIL, OK, SKIP, Row, format_table
from bench.speed.guard import GUARD
from bench.speed.training import paper_loop

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = dict(os.environ, CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def toy() -> Config:
    return Config.for_run("cpu", toy=True)


def test_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench.speed.gpu_check", "--json", str(out)],
        cwd=REPO,
        env=NO_CUDA,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(cli.SKIP_MESSAGE), r.stdout
    data = json.loads(out.read_text())
    assert data["skipped"] == cli.SKIP_MESSAGE and data["rows"] == []


def test_nox_session_ends_skipped_and_is_not_a_default_session():
    import noxfile

    assert "gpu" not in noxfile.nox.options.sessions  # CI runs the defaults and has no GPU
    r = subprocess.run(
        [str(Path(sys.executable).with_name("nox")), "-f", "noxfile.py", "-s", "gpu"],
        cwd=REPO,
        env=dict(NO_CUDA, CI=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Session gpu skipped" in out and cli.SKIP_MESSAGE in out, out


def test_paths_agree_with_parity_on_cpu_toy(toy):
    rows = inference.check_paths(toy, {})
    assert [r.setting.split()[0] for r in rows] == ["naive", "parity", "fast", "auto"]
    assert all(r.status == OK for r in rows), format_table(rows)
    for r in rows[:2]:  # the exact paths: identical on the CPU
        assert r.values["token_agreement"] == 1.0 and r.values["image_psnr_db"] == math.inf
        assert r.bound == "identical to parity"


def test_quality_row_fails_outside_its_bounds():
    q = {"token_agreement": 0.5, "image_psnr_db": 12.0, "decode_psnr_db": 40.0, "encode_agreement": 0.99}
    row = quality_row("path vs parity", "m", "fast", q, GUARD)
    assert row.status == FAIL and "token_agreement 0.5 (needs >= 0.9)" in row.result
    assert quality_row("x", "m", "parity", dict(q, token_agreement=1.0), IDENTICAL).status == FAIL
    exact = {"token_agreement": 1.0, "image_psnr_db": math.inf, "decode_psnr_db": math.inf, "encode_agreement": 1.0}
    assert quality_row("x", "m", "parity", exact, IDENTICAL).status == OK


@pytest.mark.slow
def test_training_steps_of_every_stage_on_cpu_toy(toy):
    rows = training_steps.check_training(toy, {})
    assert all(r.status == OK for r in rows), format_table(rows)
    asked = {r.subject.split(":")[0]: r.values["asked"] for r in rows}
    assert asked == {
        "stage1": "fp16",
        "stage2": "fp16",
        "single-stage": "fp16",
        "generator": "bf16",
        "generator (pretokenized)": "bf16",
    }  # the paper preset's
    for r in rows:
        assert r.values["tries"] >= 1 and all(math.isfinite(v) for v in r.values["logs"].values())


def test_training_rows_run_the_paper_precision_at_its_per_gpu_batch(monkeypatch):
    assert {
        s: (paper_loop(s)["precision"], paper_loop(s)["micro_batch"]) for s in ("stage1", "stage2", "generator")
    } == {"stage1": ("fp16", 32), "stage2": ("fp16", 32), "generator": ("bf16", 256)}  # 256 and 2048 over 8 GPUs
    ran = []
    monkeypatch.setattr(
        training_steps,
        "check_one_training_step",
        lambda cfg, label, stage, tok, gen, precision, batch=None: (
            ran.append((label, precision, batch)) or Row("training step", label, "", "", status=OK)
        ),
    )
    full = Config.for_run("cpu", toy=False)  # what the CUDA run asks (nothing is built here)
    training_steps.check_training(full, {})
    assert ran[:4] == [
        ("stage1", "fp16", 32),
        ("stage2", "fp16", 32),
        ("single-stage", "fp16", 32),
        ("generator", "bf16", 256),
    ]


def test_one_training_step_reports_what_ran(toy):
    label, stage, tok_cfg, gen_cfg, _ = training_steps.training_cases(toy)[0]
    row = training_steps.check_one_training_step(toy, label, stage, tok_cfg, gen_cfg, "fp16")
    assert row.status == OK, row
    assert row.subject.startswith("stage1: train-stage1 TiTok-L-32 (toy)") and "updated tokenizer" in row.result
    # a CPU whose fp16 matmuls are slow runs fp32 (bench.core.dist.runnable_precision) and the row says so
    assert row.values["precision"] in ("fp16", "fp32") and ("asked fp16" in row.setting) == row.values["cpu_fallback"]


def test_process_group_of_one_rank_on_cpu(toy):
    [row] = distributed.check_nccl(toy, {})
    assert row.status == OK and row.subject == "gloo" and "init, all_reduce, barrier, destroy" in row.result, row
    assert not dist.is_initialized()


@pytest.mark.slow
def test_two_processes_under_torchrun_share_a_ddp_step_on_cpu_toy(toy):
    [row] = distributed.check_ddp(toy, {})
    assert row.status == OK and row.subject == "DDP over gloo", format_table([row])
    ranks = row.values["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(all(r["checks"].values()) for r in ranks)
    assert "DDP step with no_sync on rank data" in ranks[0]["checks"] and "gather_tensors (uneven)" in row.result


def test_a_one_gpu_machine_says_it_ran_no_multi_rank_row(monkeypatch):
    cfg = Config.for_run("cuda", toy=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    [row] = distributed.check_ddp(cfg, {})
    assert row.status == SKIP and "needs 2" in row.result
    lines = run.not_checked(cfg, CHECKS, [row])
    assert any(line.startswith("no multi-rank NCCL row") and "this machine has 1" in line for line in lines)
    assert not any("toy sizes" in line or "CUDA: NCCL" in line for line in lines)


def test_main_toy_run_prints_one_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = [
        "--device",
        "cpu",
        "--toy",
        "--checks",
        "peak,generation,train_speed",
        "--gen-modes",
        "fast",
        "--json",
        str(out),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "# GPU check  device: CPU" in printed and "(toy sizes)" in printed and "weights: random" in printed
    data = json.loads(out.read_text())
    checks = [r["check"] for r in data["rows"]]
    assert checks == ["peak", "generation", "generation", "training speed", "total"]
    gen = [r for r in data["rows"] if r["check"] == "generation"]
    assert gen[0]["values"]["batch"] == 4
    for row in gen:  # the share of the bf16 peak on the rows that ran bf16 only (parity, and fast here, run fp32)
        assert ("of bf16 peak" in row["result"]) == (row["values"]["precision"] != "fp32"), row
    assert "tokens" in gen[1]["result"] and "vs parity" in gen[1]["result"]
    assert "images/s" in data["rows"][3]["result"] and data["environment"]["weights"].startswith("random")
    assert data["rows"][3]["setting"] == "fp16, B=2"  # the paper's stage-1 precision (toy batch)
    # what the run left out, in plain words, printed and in the JSON
    assert data["not_checked"] and all(f"# not checked: {line}" in printed for line in data["not_checked"])
    assert any(line.startswith("the ddp check") for line in data["not_checked"])
    assert any(line.startswith("CUDA: NCCL") for line in data["not_checked"])


def test_a_failing_check_is_a_fail_row_and_exit_1(monkeypatch, capsys):
    def broken(cfg, state):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(run.CHECK_FUNCTIONS, "nccl", broken)
    assert cli.main(["--device", "cpu", "--toy", "--checks", "nccl,peak"]) == 1
    printed = capsys.readouterr().out
    assert "RuntimeError: CUDA error: an illegal memory access" in printed and "FAIL" in printed
    assert "bf16 matmul" in printed  # the next check still ran
    with pytest.raises(SystemExit, match="unknown checks"):
        cli.main(["--checks", "turbo"])


@pytest.mark.slow
def test_compiled_sampling_loop_on_cpu_toy(toy):
    rows = inference.check_graphs(toy, {})
    assert rows[0].status == SKIP and rows[0].result == "CUDA only"
    assert rows[1].status == OK and "compile" in rows[1].setting, format_table(rows)


# ---- on a CUDA device --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_check_at_toy_size_on_cuda(tmp_path):
    out = tmp_path / "rows.json"
    assert cli.main(["--device", "cuda", "--toy", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    graphs = [r for r in rows if r["setting"].startswith("CUDA graphs")]
    assert graphs and graphs[0]["status"] == OK and graphs[0]["bound"] == "identical to parity"
    assert any(r["subject"] == "nccl" and r["status"] == OK for r in rows)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_gpu_check_within_its_budget():
    assert cli.main([]) == 0  # includes the total row: <= 8 minutes
