"""Pretokenized generator training: the pretokenize stage writes each training image's centre-crop and
flip tokens, exactly the ones on-the-fly training computes; generator training on them follows the on-the-fly run
step for step and resumes exactly; a killed pretokenize run keeps its finished shards; tokens of another tokenizer
are refused."""

import json

import numpy as np
import pytest
import torch

import models
from bench.data.tokens import MANIFEST, TokenDataset, TokensError, crop_choice, crop_views
from bench.train import pretokenize as P
from bench.train.checkpoint import CHECKPOINT
from bench.train.generator import train_generator
from bench.train.optim import OptimConfig
from bench.train.pretokenize import pretokenize, training_images
from bench.train.recipes import DataConfig, GeneratorTrainConfig, PretokenizeConfig
from bench.train.trainer import LoopConfig
from tests.distributed import join, spawn

TOY_TOKENIZER = {
    "encoder_size": "toy-S",
    "decoder_size": "toy-S",
    "patch_size": 8,
    "decoder_patch_size": 8,
    "codebook_size": 64,
    "token_size": 8,
    "pixel_decoder": False,
}
TOY_VQGAN = {"hidden_channels": 32, "channel_mult": (1, 1, 2, 2), "z_channels": 32, "codebook_size": 64}
DATA = DataConfig(name="synthetic", image_size=32, num_images=12, num_workers=0)
TOY_GENERATOR = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}


def _tokenizer(path, seed):
    torch.manual_seed(seed)
    vqgan = models.build("MaskGIT-VQGAN", **TOY_VQGAN).config
    model = models.build("TiTok-S-16", **TOY_TOKENIZER, vqgan=vqgan, image_size=32)
    models.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random toy tokenizer and its tokens of DATA (3 shards of 5, 5 and 2 images)."""
    root = tmp_path_factory.mktemp("pretokenize")
    tokenizer = _tokenizer(root / "tokenizer.safetensors", 0)
    out = root / "tokens"
    pretokenize(pretok_cfg(tokenizer), out)
    return tokenizer, out


def pretok_cfg(tokenizer, **kw):
    return PretokenizeConfig(
        tokenizer=tokenizer, data=kw.pop("data", DATA), batch_size=4, shard_size=5, device="cpu", **kw
    )


def gen_cfg(tokenizer, tokens, steps, **loop):
    return GeneratorTrainConfig(
        tokenizer=tokenizer,
        tokens=str(tokens) if tokens else None,
        model="MaskGIT-ViT",
        model_overrides=TOY_GENERATOR,
        label_smoothing=0.1,
        unmasked_weight=0.1,
        data=DATA,
        optim=OptimConfig(lr=2e-3, warmup_steps=2, end_lr=2e-4),
        loop=LoopConfig(
            steps=steps,
            batch_size=4,
            log_every=1,
            checkpoint_every=loop.pop("checkpoint_every", 1000),
            ema_max_decay=0.99,
            seed=3,
            **loop,
        ),
        device="cpu",
    )


def test_tokens_are_those_of_the_centre_crop_and_its_flip(toy):
    tokenizer, out = toy
    tokens = TokenDataset(out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["count"] == len(tokens) == 12 and manifest["skipped"] == 0 and len(manifest["shards"]) == 3
    assert manifest["crops"] == "flip" and tokens.num_crops == 2 and manifest["dtype"] == "uint16"
    assert (tokens.index() == np.arange(12)).all()
    model = models.from_pretrained(tokenizer).eval()
    images = torch.stack([training_images(DATA, "flip")[i][0] for i in range(12)])
    with torch.no_grad():
        centre, flip = model.encode(images), model.encode(images.flip(-1))
    stored = torch.stack([tokens[i][0] for i in range(12)])
    assert stored.shape == (12, 2, 16) and stored.dtype == torch.int64
    assert torch.equal(stored[:, 0], centre) and torch.equal(stored[:, 1], flip)
    assert [tokens[i][1] for i in range(12)] == [i % 10 for i in range(12)]


def test_ten_crop_views():
    images = torch.rand(2, 3, 36, 40)
    views = crop_views(images, "ten", 32)
    assert views.shape == (2, 10, 3, 32, 32)
    assert torch.equal(views[:, 0], images[..., 2:34, 4:36]) and torch.equal(views[:, 1], views[:, 0].flip(-1))
    assert torch.equal(views[:, 2], images[..., :32, :32]) and torch.equal(views[:, 9], images[..., 4:, 8:].flip(-1))


def test_crop_choice_is_a_function_of_seed_and_step():
    a = crop_choice(0, 5, 64, 2)
    assert torch.equal(a, crop_choice(0, 5, 64, 2)) and not torch.equal(a, crop_choice(0, 6, 64, 2))
    assert 0.2 < a.float().mean() < 0.8 and set(crop_choice(1, 0, 200, 10).tolist()) == set(range(10))


class Recorder:
    def __init__(self):
        self.values = []

    def __call__(self, metrics, step):
        self.values.append(float(metrics["generator/loss"]))


def test_pretokenized_training_follows_the_on_the_fly_run(toy, tmp_path):
    """Same images, seed and crop choice: the same tokens each step, so the same loss curve and weights (up to float
    noise: the on-the-fly encoder runs on other batches)."""
    tokenizer, out = toy
    fly, tok = Recorder(), Recorder()
    a = train_generator(gen_cfg(tokenizer, None, 6), tmp_path / "fly", fly)
    b = train_generator(gen_cfg(tokenizer, out, 6), tmp_path / "tokens", tok)
    assert len(fly.values) == 6 and np.allclose(fly.values, tok.values, rtol=1e-5, atol=1e-6), (fly.values, tok.values)
    wa, wb = models.load(a.checkpoint).state_dict(), models.load(b.checkpoint).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_from_pretokenized_is_exact(toy, tmp_path):
    tokenizer, out = toy

    class Interrupt(Exception):
        pass

    def kill_at_step_5(metrics, step):
        if step == 5:
            raise Interrupt

    full = train_generator(gen_cfg(tokenizer, out, 8, checkpoint_every=3), tmp_path / "full")
    with pytest.raises(Interrupt):
        train_generator(gen_cfg(tokenizer, out, 8, checkpoint_every=3), tmp_path / "resumed", kill_at_step_5)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == 3
    resumed = train_generator(gen_cfg(tokenizer, out, 8, checkpoint_every=3), tmp_path / "resumed")
    assert resumed.resumed_from == 3
    a, b = models.load(full.checkpoint).state_dict(), models.load(resumed.checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_pretokenize_keeps_its_finished_shards(toy, tmp_path, monkeypatch):
    tokenizer, straight = toy
    real, calls = P._encode_shard, []

    def dies_on_second_shard(model, rows, cfg, info):
        calls.append(rows.indices)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between shards
        return real(model, rows, cfg, info)

    monkeypatch.setattr(P, "_encode_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        pretokenize(pretok_cfg(tokenizer), tmp_path)
    assert (tmp_path / "shard-00000.json").is_file() and not (tmp_path / "shard-00001.json").exists()
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(TokensError, match="no pretokenized data.*unfinished"):
        TokenDataset(tmp_path)
    calls.clear()
    monkeypatch.setattr(P, "_encode_shard", lambda *a: (calls.append(a[1].indices), real(*a))[1])
    pretokenize(pretok_cfg(tokenizer), tmp_path)
    assert calls == [range(5, 10), range(10, 12)]  # shard 0 was kept
    for name in ("shard-00000", "shard-00001", "shard-00002"):
        for part in ("tokens", "labels", "index"):
            assert np.array_equal(np.load(tmp_path / f"{name}.{part}.npy"), np.load(straight / f"{name}.{part}.npy"))
    # another tokenizer's run into the same folder is refused, not mixed in
    (tmp_path / MANIFEST).unlink()
    other = _tokenizer(tmp_path / "other.safetensors", 1)
    with pytest.raises(TokensError, match="holds shards of other tokens"):
        pretokenize(pretok_cfg(other), tmp_path)


def test_tokens_of_another_tokenizer_or_data_are_refused(toy, tmp_path):
    tokenizer, out = toy
    other = _tokenizer(tmp_path / "other.safetensors", 1)
    with pytest.raises(
        TokensError, match="holds the tokens of tokenizer .*tokenizer.safetensors.*not of the tokenizer given"
    ):
        train_generator(gen_cfg(other, out, 2), tmp_path / "gen")
    cfg = gen_cfg(tokenizer, out, 2)
    cfg = type(cfg)(**{**cfg.__dict__, "data": DataConfig(name="synthetic", image_size=32, num_images=20)})
    with pytest.raises(TokensError, match="data.num_images: tokens 12, training 20"):
        train_generator(cfg, tmp_path / "gen2")


def _ddp_worker(rank, world, port, tokenizer, out):
    join(rank, world, port)
    pretokenize(pretok_cfg(tokenizer), out)
    torch.distributed.destroy_process_group()


def test_two_ranks_split_the_shards(toy, tmp_path):
    tokenizer, straight = toy
    spawn(_ddp_worker, 2, tokenizer, str(tmp_path))
    a, b = TokenDataset(straight), TokenDataset(tmp_path)
    assert len(a) == len(b) and all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


def test_on_the_fly_tokens_under_autocast_are_the_pretokenized_ones(toy, monkeypatch):
    """The generator's loss runs under the loop's autocast; the tokens it encodes there are the fp32 ones that
    pretokenize stored."""
    from bench.train import generator as G
    from bench.train.frozen_tokenizer import load_tokenizer

    tokenizer_path, out = toy
    tokens = TokenDataset(out)
    tokenizer = load_tokenizer(tokenizer_path)
    generator = models.build("MaskGIT-ViT", **TOY_GENERATOR, num_tokens=16, codebook_size=64)
    objective = G.generator_objective(gen_cfg(tokenizer_path, None, 1), tokenizer, generator)
    seen = []
    monkeypatch.setattr(G, "random_masking", lambda ids, mask_id: (seen.append(ids), _all_masked(ids))[1])
    images = torch.stack([training_images(DATA, "flip")[i][0] for i in range(12)])
    crop = torch.arange(12) % 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        objective.loss("generator", {"generator": generator}, (images, torch.zeros(12, dtype=torch.long), crop), 0, {})
    stored = torch.stack([tokens[i][0] for i in range(12)])
    assert torch.equal(seen[0], stored[torch.arange(12), crop])


def _all_masked(ids):
    return ids.clone(), torch.ones_like(ids, dtype=torch.bool)
