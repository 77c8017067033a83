"""The weights registry: messages for missing files, verification, resolve(allow_random), fetch offline, CLI."""

import hashlib
import pickle
import time

import pytest
import torch

from bench import weights
from bench.weights.cli import main
from models.variants import VARIANTS


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "w"))
    return tmp_path / "w"


@pytest.fixture
def pinned(monkeypatch):
    """An extra entry with a known full sha256 (of b'hello') and an unreachable URL."""
    e = weights.Entry(
        "test-file",
        "test-file.bin",
        "http://127.0.0.1:9/test-file.bin",
        "a test entry",
        sha256=hashlib.sha256(b"hello").hexdigest(),
        hash_kind="sha256",
    )
    monkeypatch.setitem(weights.registry(), e.name, e)
    return e


def test_cache_dir_follows_env(cache):
    assert weights.cache_dir() == cache
    assert weights.path_of(weights.VGG16) == cache / "vgg16-397923af.pth"


def test_missing_message_names_file_path_source_and_command(cache):
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.require(weights.INCEPTION)
    msg = str(err.value)
    path = cache / "weights-inception-2015-12-05-6726825d.pth"
    assert f"place it at: {path}" in msg
    assert "file: weights-inception-2015-12-05-6726825d.pth" in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" in msg
    assert "python -m bench.weights fetch inception-fid" in msg
    assert err.value.path == path and err.value.name == weights.INCEPTION and isinstance(err.value, RuntimeError)
    again = pickle.loads(pickle.dumps(err.value))  # submitit pickles a job's exception back to the driver
    assert str(again) == msg and again.path == path


def test_missing_hub_folder_message_lists_its_files(cache):
    msg = str(weights.MissingWeightsError.for_entry("TiTok-L-32"))
    assert f"{cache / 'hub' / 'yucornetto--tokenizer_titok_l32_imagenet'}/" in msg
    assert "https://huggingface.co/yucornetto/tokenizer_titok_l32_imagenet/resolve/main/model.safetensors" in msg
    assert "config.json" in msg and "python -m bench.weights fetch TiTok-L-32" in msg


def test_registry_covers_released_checkpoints_and_shared_networks():
    reg = weights.registry()
    for name in (weights.INCEPTION, weights.LPIPS_VGG, weights.VGG16, weights.CONVNEXT_SMALL, weights.TEACHER):
        assert name in reg
    released = [v.name for v in VARIANTS.values() if v.hub_repo]
    assert released and all(reg[n].hub_repo == VARIANTS[n].hub_repo for n in released)
    for e in reg.values():
        assert e.hash_kind in ("sha256", "sha256-prefix", "none")
        assert e.hash_kind == "sha256" or e.hash_note, f"{e.name}: say why there is no full hash"
    assert reg[weights.CONVNEXT_SMALL].filename.startswith("convnext_small-" + reg[weights.CONVNEXT_SMALL].sha256)
    with pytest.raises(KeyError, match="Did you mean"):
        weights.entry("vgg17")


def test_locate_require_resolve(cache):
    assert weights.locate(weights.VGG16) is None
    assert weights.resolve(weights.VGG16, allow_random=True) == weights.Resolved(None, True)
    with pytest.raises(weights.MissingWeightsError):
        weights.resolve(weights.VGG16, allow_random=False)
    p = weights.path_of(weights.VGG16)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not vgg")
    assert weights.locate(weights.VGG16) == p == weights.require(weights.VGG16)
    assert weights.resolve(weights.VGG16, allow_random=True) == weights.Resolved(p, False)


def test_verify_full_hash_and_prefix(cache, pinned):
    p = weights.path_of(pinned.name)
    p.parent.mkdir(parents=True)
    assert not weights.verify(pinned.name)  # missing
    p.write_bytes(b"hello")
    assert weights.verify(pinned.name)
    p.write_bytes(b"hello!")
    assert not weights.verify(pinned.name)
    weights.path_of(weights.VGG16).write_bytes(b"not vgg")  # sha256 does not start with 397923af
    assert not weights.verify(weights.VGG16)


def test_verify_structure(cache):
    p = weights.path_of(weights.LPIPS_VGG)
    p.parent.mkdir(parents=True)
    good = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(good, p)
    assert weights.verify(weights.LPIPS_VGG)
    torch.save({**good, "lin4.model.1.weight": torch.rand(1, 256, 1, 1)}, p)
    assert not weights.verify(weights.LPIPS_VGG)
    p.write_bytes(b"garbage")
    assert not weights.verify(weights.LPIPS_VGG)


def test_hub_folder_needs_every_file(cache):
    folder = weights.path_of("TiTok-L-32")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert weights.locate("TiTok-L-32") is None
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(folder / "model.safetensors"))
    assert weights.locate("TiTok-L-32") == folder and weights.verify("TiTok-L-32")


def test_fetch_fails_fast_and_clearly(cache, pinned, monkeypatch):
    t = time.time()
    with pytest.raises(weights.MissingWeightsError, match="download of http://127.0.0.1:9/test-file.bin failed"):
        weights.fetch(pinned.name, timeout=5)
    assert time.time() - t < 10
    assert not list(cache.glob("**/*.part*"))  # no half-written file left behind
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    with pytest.raises(weights.MissingWeightsError, match="offline mode"):
        weights.fetch(weights.VGG16)


def test_cli(cache, capsys):
    assert main(["list", weights.VGG16, "TiTok-L-32"]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "missing" in out and str(cache) in out
    assert main(["verify", weights.VGG16]) == 0 and "missing" in capsys.readouterr().out
    assert main(["list", "nope"]) == 2
    assert main(["fetch"]) == 2
