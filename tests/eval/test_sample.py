"""Sampling to ADM .npz files: class balance, the per-sample seed rule (no dependence on batch size, sample count
or rank count, checked with a real 2-process gloo run), file content, names and metadata."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import models
from bench.core.dist import DistInfo, setup
from bench.eval.npz import load_samples_npz
from bench.eval.sample import (
    SEED_RULE,
    class_balanced_labels,
    generate_samples,
    generate_tokens,
    sample_name,
    sample_seed,
    sample_to_npz,
)
from tests.distributed import join, spawn

NUM_CLASSES = 10


def toy_tokenizer():
    torch.manual_seed(0)
    return models.build(
        "TiTok-S-16-VQ",
        encoder_size="toy-S",
        decoder_size="toy-S",
        image_size=32,
        patch_size=8,
        decoder_patch_size=8,
        codebook_size=64,
        token_size=8,
    ).eval()


def toy_generator():
    torch.manual_seed(1)
    return models.build(
        "MaskGIT-ViT",
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        num_tokens=16,
        codebook_size=64,
        num_classes=NUM_CLASSES,
    ).eval()


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toys")
    tok, gen = toy_tokenizer(), toy_generator()
    models.save(tok, folder / "tok.safetensors")
    models.save(gen, folder / "gen.safetensors")
    return tok, gen, folder


def test_class_balanced_labels():
    labels = class_balanced_labels(50, NUM_CLASSES)
    assert torch.equal(torch.bincount(labels), torch.full((NUM_CLASSES,), 5))
    assert torch.equal(labels[:NUM_CLASSES], torch.arange(NUM_CLASSES))  # every run of C samples holds each class
    counts = torch.bincount(class_balanced_labels(25, NUM_CLASSES))
    assert counts.max() - counts.min() == 1
    with pytest.raises(ValueError):
        class_balanced_labels(0, NUM_CLASSES)


def test_sample_seed_rule():
    seeds = {sample_seed(s, i) for s in (0, 1, 42) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**64 for s in seeds)
    assert sample_seed(42, 7) == sample_seed(42, 7)
    torch.Generator().manual_seed(max(seeds))  # every value is a valid torch seed


def test_sample_name():
    l32 = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config.sampler
    assert sample_name("TiTok-L-32", "MaskGIT-ViT:TiTok-L-32", l32, 42, 50_000) == (
        "samples_TiTok-L-32_MaskGIT-ViT-TiTok-L-32_steps8_cfg4.5-linear_temp9.5_seed42_n50000.npz"
    )
    s128 = models.VARIANTS["MaskGIT-UViT:TiTok-S-128"].config.sampler
    assert "_steps64_cfg6.9-power-cosine_temp2.8_" in sample_name("m", "c", s128, 0, 10)
    other = s128.updated(guidance_scale_pow=2.0, softmax_temperature_annealing=False)
    name = sample_name("runs/a b", "model", other, 0, 10)
    assert name == "samples_runs-a-b_model_steps64_cfg6.9-power-cosine-pow2_temp2.8_noanneal_seed0_n10.npz"


def test_samples_do_not_depend_on_batch_size_count_or_rank(toys):
    tok, gen, _ = toys
    a = generate_samples(gen, tok, num_samples=6, seed=3, batch_size=1)
    b = generate_samples(gen, tok, num_samples=6, seed=3, batch_size=4)
    c = generate_samples(gen, tok, num_samples=4, seed=3, batch_size=3)
    assert a.images.dtype == np.uint8 and a.images.shape == (6, 32, 32, 3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.images[:4], c.images)
    assert np.array_equal(a.labels, np.arange(6) % NUM_CLASSES)
    # the shards of two ranks (no process group needed to compute them) are the single run cut in two
    halves = [generate_samples(gen, tok, num_samples=6, seed=3, info=DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    assert [h.indices for h in halves] == [range(0, 3), range(3, 6)]
    assert np.array_equal(np.concatenate([h.images for h in halves]), a.images)
    # tokens: sample i is the same whichever other samples are generated with it
    labels = class_balanced_labels(6, NUM_CLASSES)
    assert torch.equal(generate_tokens(gen, labels, range(2, 5), 3), generate_tokens(gen, labels, range(0, 6), 3)[2:5])


def test_the_seed_changes_the_samples(toys):
    _, gen, _ = toys
    labels = class_balanced_labels(4, NUM_CLASSES)
    tokens = generate_tokens(gen, labels, range(4), 3)
    assert not torch.equal(tokens, generate_tokens(gen, labels, range(4), 4))
    assert len({tuple(t) for t in generate_tokens(gen, torch.zeros(4, dtype=torch.long), range(4), 3).tolist()}) > 1


def test_npz_content_name_and_metadata(toys, tmp_path):
    tok, gen, _ = toys
    path = sample_to_npz(
        gen,
        tok,
        tmp_path,
        model="toy-tok",
        checkpoint="toy-gen",
        num_samples=5,
        seed=7,
        png=True,
        metadata={"weights_random": {"tokenizer": True}},
        num_steps=4,
        guidance_scale=2.0,
    )
    assert path.name == "samples_toy-tok_toy-gen_steps4_cfg2-linear_temp9.5_seed7_n5.npz"
    s = load_samples_npz(path)
    assert s.images.dtype == np.uint8 and s.images.shape == (5, 32, 32, 3)
    assert s.labels.tolist() == [0, 1, 2, 3, 4]
    settings = gen.config.sampler.updated(num_steps=4, guidance_scale=2.0)
    assert s.metadata["sampler"] == json.loads(json.dumps(dataclasses.asdict(settings)))
    assert s.metadata["seed"] == 7 and s.metadata["num_samples"] == 5 and s.metadata["rules"] == SEED_RULE
    assert s.metadata["model"] == "toy-tok" and s.metadata["weights_random"] == {"tokenizer": True}
    pngs = sorted(p.name for p in path.with_suffix("").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(5)]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(path.with_suffix("") / "000003.png")), s.images[3])
    # the same settings name the same file, which is reused rather than sampled again
    mtime = path.stat().st_mtime_ns
    again = sample_to_npz(
        gen,
        tok,
        tmp_path,
        model="toy-tok",
        checkpoint="toy-gen",
        num_samples=5,
        seed=7,
        metadata={"weights_random": {"tokenizer": True}},
        num_steps=4,
        guidance_scale=2.0,
    )
    assert again == path and path.stat().st_mtime_ns == mtime
    # ... unless something recorded differs, e.g. whether the weights were stand-ins
    sample_to_npz(
        gen,
        tok,
        tmp_path,
        model="toy-tok",
        checkpoint="toy-gen",
        num_samples=5,
        seed=7,
        num_steps=4,
        guidance_scale=2.0,
        metadata={"weights_random": {"tokenizer": False}},
    )
    assert load_samples_npz(path).metadata["weights_random"] == {"tokenizer": False}


def test_unknown_sampler_setting_fails_early(toys, tmp_path):
    tok, gen, _ = toys
    with pytest.raises(TypeError, match="unknown sampler settings"):
        sample_to_npz(gen, tok, tmp_path, model="m", checkpoint="c", num_samples=2, num_step=3)


def _sampling_worker(rank, world, port, folder):
    join(rank, world, port)
    info = setup("cpu")
    tok, gen = models.load(f"{folder}/tok.safetensors"), models.load(f"{folder}/gen.safetensors")
    sample_to_npz(
        gen, tok, f"{folder}/ddp", model="toy", checkpoint="toy", num_samples=7, seed=5, info=info, batch_size=2
    )
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_write_the_single_process_file(toys, tmp_path):
    tok, gen, folder = toys
    single = sample_to_npz(gen, tok, tmp_path, model="toy", checkpoint="toy", num_samples=7, seed=5, batch_size=3)
    spawn(_sampling_worker, 2, str(folder))
    ddp = folder / "ddp" / single.name
    a, b = load_samples_npz(single), load_samples_npz(ddp)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.metadata == b.metadata
    assert sorted(p.name for p in ddp.parent.iterdir()) == [single.name]  # the part files are gone


@pytest.mark.parametrize("bf16_percent", [1.0, 150.0])
def test_eval_sampling_auto_path_under_the_exact_guard_equals_the_reference(toys, tmp_path, monkeypatch, bf16_percent):
    """eval_gen samples through `auto` under the exact guard: on a CPU with slow bf16 and on one with fast bf16 alike
    it runs an exact fp32 path, its samples equal the reference procedure's, and the file says which path ran."""
    from bench.core import dist as D
    from bench.eval.sample import REFERENCE_PATH
    from bench.speed.guard import EXACT_GUARD
    from bench.stages.eval_gen import sampling_pipeline

    rates = {torch.float32: 100.0, torch.bfloat16: bf16_percent}
    monkeypatch.setattr(D, "_matmul_rate", lambda device_type, dtype: rates[dtype])
    tok, gen, _ = toys
    pipe = sampling_pipeline(tok, gen, None, torch.device("cpu"), EXACT_GUARD)
    assert pipe.options.exact and pipe.choice.mode == "parity"
    reference = generate_samples(gen, tok, num_samples=5, seed=3, batch_size=2)
    guarded = generate_samples(gen, tok, num_samples=5, seed=3, batch_size=2, pipeline=pipe)
    assert np.array_equal(reference.images, guarded.images)
    path = sample_to_npz(gen, tok, tmp_path, model="m", checkpoint="c", num_samples=3, pipeline=pipe)
    assert (
        load_samples_npz(path).metadata["inference"]
        == pipe.describe()
        == ("parity (fp32+batch_guidance+inference_mode)")
    )
    path = sample_to_npz(gen, tok, tmp_path / "ref", model="m", checkpoint="c", num_samples=3)
    assert load_samples_npz(path).metadata["inference"] == REFERENCE_PATH
