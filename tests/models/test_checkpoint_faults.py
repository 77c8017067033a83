"""Faults of checkpoint files: a writer killed mid-write (its temporary file is removed by
the next write of the target, only once its writer is gone), file permissions, a file that holds another variant
than the one asked for, bit rot in the tensor data, truncated and zero-byte files, a broken config.json, and a
missing path that must not be taken for a hub repo id."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import models
from bench.train.checkpoint import atomic_torch_save
from models.atomic_files import STALE_TEMP_AGE_S
from models.checkpoint_format import DIGEST_KEY
from models.pretrained import from_pretrained
from models.state_dicts import CheckpointError
from tests.reference import PARITY

TOY = dict(
    encoder_size="toy-S",
    decoder_size="toy-S",
    image_size=32,
    patch_size=8,
    decoder_patch_size=8,
    codebook_size=64,
    token_size=8,
)

# a writer that stops in the middle of its write, as a job does when SLURM preempts it
KILLED_WRITER = """
import sys, time
from bench.core.io import atomic_file
with atomic_file(sys.argv[1]) as f:
    f.write(b"x" * 100_000)
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


def toy_tokenizer():
    torch.manual_seed(0)
    return models.build("TiTok-S-16-VQ", **TOY).eval()


def temporaries(target):
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def start_writer(target):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_sigkilled_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.pt"
    killed, alive = start_writer(target), start_writer(target)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        left = temporaries(target)
        assert len(left) == 2 and not target.exists()  # the killed writer's and the live one's
        assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask() for p in left)
        atomic_torch_save({"step": 1}, target)  # the training loop's checkpoint write
        remaining = temporaries(target)
        assert [str(alive.pid) in p.name for p in remaining] == [True]  # a live writer's file stays
        assert torch.load(target, weights_only=True) == {"step": 1}
    finally:
        alive.kill()
        alive.wait(timeout=30)


def test_checkpoints_get_ordinary_permissions_not_0600(tmp_path):
    old = os.umask(0o002)  # a shared cluster group folder
    try:
        models.save(toy_tokenizer(), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o664


def test_leftovers_of_dead_or_foreign_writers_are_removed_once_stale(tmp_path):
    target = tmp_path / "model.safetensors"
    done = subprocess.Popen(["true"])
    done.wait()  # its PID now belongs to no process
    dead = tmp_path / f".{target.name}.{socket.gethostname()}.{done.pid}.0a1b2c3d.tmp"
    foreign_old = tmp_path / f".{target.name}.other-node.42.0a1b2c3d.tmp"
    foreign_new = tmp_path / f".{target.name}.other-node.43.0a1b2c3d.tmp"
    legacy_old = tmp_path / f".{target.name}.k2j3h4g5.tmp"  # mkstemp's names, before the PID was in them
    unrelated = tmp_path / ".other.safetensors.other-node.42.0a1b2c3d.tmp"
    for p in (dead, foreign_old, foreign_new, legacy_old, unrelated):
        p.write_bytes(b"partial")
    hours_ago = time.time() - 2 * STALE_TEMP_AGE_S
    for p in (foreign_old, legacy_old, unrelated):
        os.utime(p, (hours_ago, hours_ago))
    models.save(toy_tokenizer(), target)
    assert temporaries(target) == [foreign_new]  # another node's writer may still be at it
    assert unrelated.exists()  # another target's files are left to its own writes


def test_own_checkpoint_must_hold_the_requested_variant(tmp_path):
    path = tmp_path / "tok.safetensors"
    models.save(toy_tokenizer(), path)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(path, variant="TiTok-L-32")
    text = str(err.value)
    assert str(path) in text and "TiTok-L-32" in text and "encoder toy-S" in text and "encoder L" in text
    teacher = tmp_path / "vqgan.safetensors"
    models.save(
        models.build("MaskGIT-VQGAN", hidden_channels=32, channel_mult=(1, 1, 2, 2), z_channels=32, codebook_size=64),
        teacher,
    )
    with pytest.raises(
        CheckpointError,
        match="holds a teacher .* not the requested MaskGIT-ViT:TiTok-L-32 "
        r"\(a generator",
    ):
        from_pretrained(teacher, variant="MaskGIT-ViT:TiTok-L-32")
    assert from_pretrained(path).config == toy_tokenizer().config  # no variant: what the file holds


def test_bit_rot_in_tensor_data_is_refused_files_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "tok.safetensors"
    models.save(toy_tokenizer(), path)
    assert DIGEST_KEY in models.checkpoint_format.read_metadata(path)
    data = bytearray(path.read_bytes())
    data[-100:-96] = b"\xff\xff\xff\xff"  # a float32 NaN in the last tensor
    rotten = tmp_path / "rotten.safetensors"
    rotten.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{rotten}: the tensor data does not match the sha256"):
        from_pretrained(rotten)
    # a checkpoint written before the checksum existed
    from safetensors.torch import load_file, save_file

    meta = {k: v for k, v in models.checkpoint_format.read_metadata(path).items() if k != DIGEST_KEY}
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    assert from_pretrained(tmp_path / "old.safetensors").config == toy_tokenizer().config


@pytest.mark.parametrize("size", ["zero-byte", "truncated"])
def test_unreadable_safetensors_names_the_file(tmp_path, size):
    good = tmp_path / "tok.safetensors"
    models.save(toy_tokenizer(), good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"" if size == "zero-byte" else good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{bad} is not a readable safetensors file .* truncated or corrupt"):
        from_pretrained(bad)


def test_broken_config_json_names_the_file(tmp_path):
    folder = tmp_path / "hub-folder"
    shutil.copytree(PARITY / "titok_singlestage_vq", folder)
    (folder / "config.json").write_text('{"model": {"vq_model": ')
    with pytest.raises(CheckpointError, match=f"{folder / 'config.json'} is not valid JSON"):
        from_pretrained(folder)


def test_a_missing_path_is_no_such_file_not_a_hub_lookup(tmp_path, monkeypatch):
    def no_hub(repo, cache_dir):
        raise AssertionError(f"asked the hub for {repo!r}")

    monkeypatch.setattr(models.pretrained, "_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for text in ("ckpts/model.safetensors", "outputs/tok", "./tok", "~/nowhere/tok", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            from_pretrained(text)
