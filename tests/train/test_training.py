"""The training stages on tiny sizes: each overfits a fixed batch; an interrupted run resumes to exactly the
uninterrupted weights; a 2-process gloo DDP run matches the single-process run on the same global batch;
a non-finite loss stops training and keeps the last good checkpoint."""

import pytest
import torch

import models
from bench.train.checkpoint import CHECKPOINT
from bench.train.generator import train_generator
from bench.train.loop import train
from bench.train.optim import OptimConfig
from bench.train.recipes import (
    DataConfig,
    GANConfig,
    GeneratorTrainConfig,
    PerceptualConfig,
    SingleStageConfig,
    Stage1Config,
    Stage2Config,
    TeacherConfig,
    TeacherTrainConfig,
)
from bench.train.tokenizer import train_single_stage, train_stage1, train_stage2, train_teacher
from bench.train.trainer import LoopConfig, NonFiniteLossError, Objective
from tests.distributed import join, spawn

TOY_TEACHER = TeacherConfig(
    overrides={"hidden_channels": 32, "channel_mult": (1, 1, 2, 2), "z_channels": 32, "codebook_size": 64}
)
TOY_TOKENIZER = {
    "encoder_size": "toy-S",
    "decoder_size": "toy-S",
    "patch_size": 8,
    "decoder_patch_size": 8,
    "codebook_size": 64,
    "token_size": 8,
}
FIXED_BATCH = DataConfig(name="synthetic", image_size=32, num_images=8, num_workers=0)
FAST = OptimConfig(lr=2e-3, warmup_steps=2, end_lr=2e-3)


def toy_gan(weight):
    return GANConfig(weight=weight, start_step=10, lecam_weight=0.001, disc_base_channels=32, disc_groups=8, optim=FAST)


def loop(steps, **kw):
    return LoopConfig(
        steps=steps,
        batch_size=8,
        log_every=1,
        checkpoint_every=kw.pop("checkpoint_every", 1000),
        ema_max_decay=kw.pop("ema_max_decay", 0.0),
        **kw,
    )


class Recorder:
    def __init__(self, key):
        self.key, self.values = key, []

    def __call__(self, metrics, step):
        self.values.append(float(metrics[self.key]))

    def fell(self, factor):
        first, last = sum(self.values[:2]) / 2, sum(self.values[-2:]) / 2
        return last < factor * first, (first, last)


def stage1_cfg(steps, **kw):
    return Stage1Config(
        model="TiTok-S-16",
        model_overrides=TOY_TOKENIZER,
        teacher=TOY_TEACHER,
        data=FIXED_BATCH,
        optim=FAST,
        loop=loop(steps, **kw),
        decoder_warmup_fraction=0.0,
        continuous_fraction=0.0,
        allow_random_weights=True,
        device="cpu",
    )


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    rec = Recorder("stage1/ce")
    result = train_stage1(stage1_cfg(40), out, rec)
    return result, rec


def test_stage1_overfits(stage1_checkpoint):
    result, rec = stage1_checkpoint
    ok, values = rec.fell(0.5)
    assert ok, values
    assert result.random_weights == {"teacher": True} and result.any_random
    model = models.load(result.checkpoint)
    assert isinstance(model, models.TiTok) and not model.outputs_pixels


@pytest.mark.slow
def test_stage2_overfits(stage1_checkpoint, tmp_path):
    rec = Recorder("stage2/l2")
    cfg = Stage2Config(
        init_from=stage1_checkpoint[0].checkpoint,
        teacher=TOY_TEACHER,
        perceptual=PerceptualConfig(convnext_weight=0.1, lpips_weight=0.0, resolution=32),
        gan=toy_gan(0.01),
        data=FIXED_BATCH,
        optim=FAST,
        loop=loop(25),
        allow_random_weights=True,
        device="cpu",
    )
    disc_lr = {}  # logged step -> the discriminator's learning rate in it

    def log(metrics, step):
        rec(metrics, step)
        if "discriminator/lr" in metrics:
            disc_lr[step] = metrics["discriminator/lr"]

    result = train_stage2(cfg, tmp_path, log)
    assert rec.fell(0.7)[0], rec.fell(0.7)[1]
    # the discriminator's schedule starts when it does (step 10, logged as 11): warm-up from there
    assert min(disc_lr) == 11 and disc_lr[11] == pytest.approx(FAST.lr / FAST.warmup_steps), disc_lr
    assert disc_lr[12] == pytest.approx(FAST.lr) and disc_lr[25] == pytest.approx(FAST.end_lr), disc_lr
    model = models.load(result.checkpoint)
    assert model.outputs_pixels and result.random_weights == {"teacher": True, "convnext": True}
    # the encoder and quantiser stayed frozen
    stage1 = models.load(stage1_checkpoint[0].checkpoint)
    assert torch.equal(model.encoder.conv_out.weight, stage1.encoder.conv_out.weight)
    assert torch.equal(model.quantize.embedding.weight, stage1.quantize.embedding.weight)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["TiTok-S-16-VQ", "TiTok-S-16-VAE"])
def test_single_stage_overfits(variant, tmp_path):
    rec = Recorder("single/l2")
    overrides = {k: v for k, v in TOY_TOKENIZER.items() if not (variant.endswith("VAE") and k == "codebook_size")}
    cfg = SingleStageConfig(
        model=variant,
        model_overrides=overrides,
        quantizer_weight=1.0,
        kl_weight=1e-6,
        perceptual=PerceptualConfig(convnext_weight=0.0, lpips_weight=0.1, resolution=224),
        gan=toy_gan(0.1),
        data=FIXED_BATCH,
        optim=FAST,
        loop=loop(30),
        allow_random_weights=True,
        device="cpu",
    )
    result = train_single_stage(cfg, tmp_path, rec)
    assert rec.fell(0.7)[0], rec.fell(0.7)[1]
    assert result.random_weights == {"lpips": True}


def test_generator_overfits(stage1_checkpoint, tmp_path):
    rec = Recorder("generator/loss")
    cfg = GeneratorTrainConfig(
        tokenizer=stage1_checkpoint[0].checkpoint,
        model="MaskGIT-ViT",
        model_overrides={
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 128,
            "dropout": 0.0,
            "attn_dropout": 0.0,
        },
        label_smoothing=0.1,
        unmasked_weight=0.1,
        data=FIXED_BATCH,
        optim=FAST,
        loop=loop(40),
        device="cpu",
    )
    result = train_generator(cfg, tmp_path, rec)
    assert rec.fell(0.6)[0], rec.fell(0.6)[1]
    gen = models.load(result.checkpoint)
    assert gen.config.num_tokens == 16 and gen.config.codebook_size == 64


def test_teacher_overfits(tmp_path):
    rec = Recorder("teacher/l2")
    cfg = TeacherTrainConfig(overrides=TOY_TEACHER.overrides, data=FIXED_BATCH, optim=FAST, loop=loop(40), device="cpu")
    result = train_teacher(cfg, tmp_path, rec)
    assert rec.fell(0.7)[0], rec.fell(0.7)[1]
    assert isinstance(models.load(result.checkpoint), models.MaskGITVQGAN)


def _weights(path):
    return models.load(path).state_dict()


def test_interrupt_and_resume_is_exact(tmp_path):
    class Interrupt(Exception):
        pass

    def kill_at_step_5(metrics, step):
        if step == 5:
            raise Interrupt

    full = train_stage1(stage1_cfg(8, checkpoint_every=3, ema_max_decay=0.999), tmp_path / "full")
    with pytest.raises(Interrupt):
        train_stage1(stage1_cfg(8, checkpoint_every=3, ema_max_decay=0.999), tmp_path / "resumed", kill_at_step_5)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == 3
    resumed = train_stage1(stage1_cfg(8, checkpoint_every=3, ema_max_decay=0.999), tmp_path / "resumed")
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)

    def loss(name, wrapped, batch, step, cache):
        out = wrapped["m"](batch).mean()
        return (out * float("nan") if step == 4 else out), {}

    objective = Objective(modules={"m": model}, optim={"m": OptimConfig(warmup_steps=1)}, loss=loss, ema_of="m")
    batches = lambda start: iter(lambda: torch.ones(4, 2), None)  # noqa: E731
    with pytest.raises(NonFiniteLossError, match="non-finite m loss at step 4.*last good checkpoint"):
        train(objective, batches, LoopConfig(steps=10, batch_size=4, checkpoint_every=2), tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["modules"]["m"].values())


def _ddp_worker(rank, world, port, out):
    join(rank, world, port)
    train_stage1(stage1_cfg(4, grad_accum=2 if world == 1 else 1), out)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path):
    # one process with 2 micro-batches of 4 == two ranks with 4 each: the same global batch of 8
    single = train_stage1(stage1_cfg(4, grad_accum=2), tmp_path / "single")
    spawn(_ddp_worker, 2, str(tmp_path / "ddp"))
    a, b = _weights(single.checkpoint), _weights(tmp_path / "ddp" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision, tmp_path):
    """bf16 autocast and fp16 autocast with a gradient scaler run and keep the losses finite (CPU autocast)."""
    rec = Recorder("stage1/ce")
    result = train_stage1(stage1_cfg(4, precision=precision), tmp_path, rec)
    assert len(rec.values) == 4 and all(torch.isfinite(torch.tensor(rec.values)))
    weights = _weights(result.checkpoint)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())


def test_autocast_where_it_is_slow_runs_fp32_and_says_so(monkeypatch, caplog):
    """On a CPU whose bf16/fp16 matmuls run at ~1% of fp32 (AVX2 only), the paper's autocast would make a step
    ~100x slower: the loop runs fp32 there and records it, warning once per process; elsewhere it runs what was
    asked."""
    from bench.core import dist as D

    cpu = torch.device("cpu")
    rates = {torch.float32: 100.0, torch.bfloat16: 1.0, torch.float16: 80.0}
    monkeypatch.setattr(D, "_matmul_rate", lambda device_type, dtype: rates[dtype])
    D._warn_fp32_instead.cache_clear()
    with caplog.at_level("WARNING", logger=D.__name__):
        assert [D.runnable_precision("bf16", cpu) for _ in range(3)] == ["fp32"] * 3
    assert sum("running fp32 instead" in r.getMessage() for r in caplog.records) == 1
    assert D.runnable_precision("fp16", cpu) == "fp16"
    assert D.runnable_precision("fp32", cpu) == "fp32"
    assert D.runnable_precision("bf16", torch.device("cuda", 0)) == "bf16"
