"""`python -m bench.tiny_teacher` rebuilds the tiny preset's shipped teacher from the preset's recipe: at toy size
here (2 steps), twice, to the same tensors, and its file is the teacher a run loads."""

import subprocess
import sys
from pathlib import Path

import models
from bench import tiny_teacher

TOY = ["preset.teacher.loop.steps=2", "preset.teacher.loop.batch_size=4", "data.train_images=16"]
REPO = Path(__file__).resolve().parents[1]


def test_rebuild_is_deterministic_and_loads_as_the_presets_teacher(tmp_path):
    first = tiny_teacher.tensors_of(tiny_teacher.build(tmp_path / "a.safetensors", TOY).read_bytes())
    again = tiny_teacher.tensors_of(tiny_teacher.build(tmp_path / "b.safetensors", TOY).read_bytes())
    assert tiny_teacher.max_weight_difference(first, again) == 0.0
    teacher = models.from_pretrained(str(tmp_path / "a.safetensors"))
    assert isinstance(teacher, models.MaskGITVQGAN)
    assert (teacher.config.channel_mult, teacher.config.codebook_size) == ((1, 1, 2), 16)  # tiny.yaml's
    r = subprocess.run(
        [sys.executable, "-m", "bench.tiny_teacher", "--out", str(tmp_path / "c.safetensors"), *TOY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "teacher: 2 steps" in r.stdout and f"wrote {tmp_path / 'c.safetensors'}" in r.stdout
    # two steps are not the shipped 2,000: it says by how much the weights differ from the shipped file's
    assert "largest weight difference" in r.stdout and "from the file shipped before" in r.stdout
    half = {k: v / 2 if k == next(iter(first)) else v for k, v in first.items()}
    assert tiny_teacher.max_weight_difference(first, half) == next(iter(first.values())).abs().max().item() / 2
