"""`python -m bench.speed` (bench.speed.cli) end to end at toy sizes: its help, the table with each mode's note,
CSV and JSON, a custom pair, and bad input."""

import json
import subprocess
import sys

import pytest

from bench.speed import cli


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "bench.speed", "--help"], capture_output=True, text=True, check=True)
    assert "python -m bench.speed --toy" in out.stdout and "--scaling" in out.stdout


def test_cli_toy_end_to_end(tmp_path, capsys):
    args = [
        "--toy",
        "--sections",
        "peak,generation,tokenizer",
        "--pairs",
        "TiTok-L-32",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--sampler-set",
        "num_steps=2",
        "--csv",
        str(tmp_path / "out.csv"),
        "--json",
        str(tmp_path / "out.json"),
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "device: CPU" in out and "matmul peak bf16" in out
    for mode in ("naive", "parity", "auto"):  # the default modes
        assert f"# {mode}:" in out
    assert "tokens 100.0%" in out and "reference" in out
    data = json.loads((tmp_path / "out.json").read_text())
    tasks = {(r["task"], r["mode"]) for r in data["rows"]}
    assert {
        ("generate", "naive"),
        ("generate", "parity"),
        ("generate", "auto"),
        ("encode", "auto"),
        ("decode", "parity"),
    } <= tasks
    auto = [r for r in data["rows"] if r["mode"] == "auto"]
    assert all(r["path"] in ("fast", "parity") and r["note"] for r in auto)  # which path ran, and why
    assert (tmp_path / "out.csv").read_text().startswith("section,")


def test_cli_custom_pair_and_bad_input(capsys):
    args = [
        "--toy",
        "--sections",
        "generation",
        "--tokenizer",
        "TiTok-S-32",
        "--generator",
        "MaskGIT-ViT",
        "--gen-set",
        "num_layers=2",
        "--modes",
        "parity",
        "--batch-size",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--sampler-set",
        "num_steps=2",
    ]
    assert cli.main(args) == 0
    assert "TiTok-S-32 (toy) + MaskGIT-ViT" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown modes"):
        cli.main(["--modes", "turbo"])
