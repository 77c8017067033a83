"""Bad input at the command lines: the real CLIs, run as subprocesses, answer with one line on
stderr that names the problem and the fix, exit status != 0 and no traceback."""

import shutil
import subprocess
import sys

import pytest
import torch

import models
from tests.reference import PARITY


def run_cli(cwd, module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tok.safetensors"
    models.save(
        models.build(
            "TiTok-S-16-VQ",
            encoder_size="toy-S",
            decoder_size="toy-S",
            image_size=32,
            patch_size=8,
            decoder_patch_size=8,
            codebook_size=64,
            token_size=8,
        ),
        path,
    )
    return path


@pytest.mark.parametrize("size", ["zero-byte", "truncated"])
def test_eval_unreadable_safetensors(tmp_path, toy_checkpoint, size):
    bad = tmp_path / "model.safetensors"
    data = toy_checkpoint.read_bytes()
    bad.write_bytes(b"" if size == "zero-byte" else data[: len(data) // 2])
    line = run_cli(tmp_path, "bench.eval", str(bad), "--data", "synthetic")
    assert str(bad) in line and "truncated or corrupt" in line and "copy it again" in line


def test_eval_folder_with_broken_config_json(tmp_path):
    folder = tmp_path / "hub-folder"
    shutil.copytree(PARITY / "titok_singlestage_vq", folder)
    (folder / "config.json").write_text("{not json")
    line = run_cli(tmp_path, "bench.eval", str(folder), "--data", "synthetic")
    assert f"{folder / 'config.json'} is not valid JSON" in line and "delete it" in line


def test_eval_missing_relative_path_is_no_such_file(tmp_path):
    (tmp_path / "outputs").mkdir()
    line = run_cli(tmp_path, "bench.eval", "outputs/TiTok-S-32/model.safetensors", "--data", "synthetic")
    assert line == f"error: no such file or folder: {tmp_path / 'outputs/TiTok-S-32/model.safetensors'}"


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_eval_unknown_device(tmp_path, toy_checkpoint, device):
    line = run_cli(tmp_path, "bench.eval", str(toy_checkpoint), "--data", "synthetic", "--device", device)
    assert f"device {device!r} is not supported" in line and "cpu, cuda or cuda:N" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data=imagenet", "data.root is required and not set: add data.root=<value> to the command line"),
        ("preset.stage1.loop.stepz=3", "did you mean preset.stage1.loop.steps?"),
        ("+preset.stage1.loop.stepz=3", "did you mean preset.stage1.loop.steps?"),
        ("preset.eval.rfid_imagez=3", "did you mean preset.eval.rfid_images?"),
        ("+preset.eval.rfid_imagez=3", "did you mean preset.eval.rfid_images?"),
        ("+preset.stage1.stepz=3", "preset.stage1.stepz: the config has no such key"),
        ("+preset.evals.rfid_images=3", "did you mean preset.eval?"),
        ("preset.device=gpu", "device 'gpu' is not supported: use one of auto, cpu, cuda or cuda:N"),
    ],
)
def test_sweep_bad_overrides(tmp_path, override, expected):
    line = run_cli(tmp_path, "bench.sweep", "action=plan", f"outputs={tmp_path / 'outputs'}", override)
    assert expected in line
    assert not (tmp_path / "outputs").exists()  # nothing planned, nothing written


def test_sweep_plus_may_add_a_setting_its_file_leaves_at_default(tmp_path):
    """`+` adds a field of a settings section that the preset file does not list, or a new model size letter."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep",
            "action=plan",
            f"outputs={tmp_path / 'outputs'}",
            "+preset.stage1.loop.grad_accum=2",
            "+preset.sizes.H=toy-L",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
