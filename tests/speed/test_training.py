"""bench.speed.training on toy sizes: a timed training step is one step of the real training loop, with each
stage's objective and FLOP count."""

import dataclasses
import itertools

import pytest
import torch

from bench.speed import factories, training
from bench.speed import flops as FL
from bench.train.loop import train


def small_losses(recipe, convnext_weight=0.0):
    """A reconstruction recipe with CPU-sized loss networks: ConvNeXt-S at 32 px (or none), a 32-channel
    discriminator."""
    perceptual = dataclasses.replace(recipe.perceptual, convnext_weight=convnext_weight, resolution=32)
    return dataclasses.replace(
        recipe, perceptual=perceptual, gan=dataclasses.replace(recipe.gan, disc_base_channels=32, disc_groups=8)
    )


def test_measure_training_stages():
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    gen_cfg = factories.generator_config("MaskGIT-ViT", cfg, toy=True)
    single = factories.tokenizer_config("TiTok-BL-64-VQ", toy=True)
    stage2 = small_losses(training.paper_recipe("stage2"))
    single_recipe = small_losses(training.paper_recipe("single"))
    cases = {
        "train-stage1": ("stage1", cfg, None, FL.train_stage1(cfg)),
        "train-stage2": ("stage2", cfg, stage2, FL.train_stage2(cfg, stage2.perceptual, stage2.gan)),
        "train-generator": ("generator", cfg, None, FL.train_generator(cfg, gen_cfg)),
        "train-generator_pretokenized": ("generator_pretokenized", cfg, None, 3 * FL.generator_forward(gen_cfg)),
        "train-single": (
            "stage2",
            single,
            single_recipe,
            FL.train_single_stage(single, single_recipe.perceptual, single_recipe.gan),
        ),
    }
    for task, (stage, tok_cfg, recipe, flops) in cases.items():
        row = training.measure_training(stage, tok_cfg, gen_cfg, batch_size=1, warmup=0, repeats=1, recipe=recipe)
        assert row["task"] == task and row["throughput"] > 0 and row["note"].startswith(task), task
        assert row["gflop_per_item"] * 1e9 == flops, task


@pytest.mark.parametrize("stage", ["stage1", "generator", "generator_pretokenized"])
def test_timed_step_is_one_step_of_the_training_loop(stage, tmp_path):
    """From the same weights and batch, one timed step leaves the weights (and EMA) exactly where one step of
    bench.train.loop.train leaves them with the stage's objective."""
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    gen_cfg = factories.generator_config("MaskGIT-ViT", cfg, toy=True)
    timed, trained = (training.training_step(stage, cfg, gen_cfg, batch_size=2, seed=3) for _ in range(2))
    assert timed.step == 0
    name = timed.trainer.objective.ema_of
    before = {k: v.clone() for k, v in timed.trainer.objective.modules[name].state_dict().items()}
    torch.manual_seed(timed.trainer.cfg.seed)  # as train() seeds rank 0 (the generator's masking is random)
    logs = timed()
    assert any(k.startswith(("stage1/", "generator/")) for k in logs)
    loop = dataclasses.replace(trained.trainer.cfg, steps=1)
    result = train(trained.trainer.objective, lambda start: itertools.repeat(trained.batch), loop, tmp_path)
    a, b = timed.trainer.objective.modules[name].state_dict(), trained.trainer.objective.modules[name].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], before[k]) for k in a if a[k].is_floating_point())
    ema = result.model.state_dict()
    assert all(torch.equal(timed.trainer.ema.shadow[k].cpu(), ema[k]) for k in timed.trainer.ema.shadow)


def test_timed_stage2_step_updates_the_decoder_and_the_discriminator():
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    recipe = small_losses(training.paper_recipe("stage2"), convnext_weight=0.1)
    step = training.training_step("stage2", cfg, batch_size=1, recipe=recipe)
    assert step.step == recipe.gan.start_step  # the discriminator is active
    modules = step.trainer.objective.modules
    before = {f"{n}.{k}": v.clone() for n, m in modules.items() for k, v in m.state_dict().items()}
    logs = step()
    assert {
        "stage2/l2",
        "stage2/convnext",
        "stage2/gan_g",
        "stage2/gan_d",
        "stage2/lecam",
        "discriminator/grad_norm",
    } <= set(logs)
    after = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("tokenizer.decoder.") for k in changed)
    assert any(k.startswith("tokenizer.pixel_decoder.") for k in changed)
    assert any(k.startswith("discriminator.") for k in changed)
    assert not any(k.startswith(("tokenizer.encoder.", "tokenizer.quantize.")) for k in changed)
    # offline, ConvNeXt-S is a seeded random stand-in, and the row says so
    assert ("stand-in convnext" in step.note) == step.trainer.objective.random_weights["convnext"]


def test_a_timed_step_reads_no_logs_from_the_device():
    """The timed step is the loop's step between log steps: it takes the step and returns no logs."""
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    step = training.training_step("stage1", cfg, batch_size=1, seed=0)
    name = step.trainer.objective.ema_of
    before = {k: v.clone() for k, v in step.trainer.objective.modules[name].state_dict().items()}
    runner = training.step_runner(step, 1, "fp32")
    runner()
    assert runner.outputs == {}
    after = step.trainer.objective.modules[name].state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if after[k].is_floating_point())
