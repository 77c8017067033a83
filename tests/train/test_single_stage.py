"""The tiny preset trains a cell of grid=single_stage on the CPU: the spec the sweep builds (preset.single, a
released single-stage architecture at toy sizes, synthetic 32 px images, LPIPS, ConvNeXt and the GAN with stand-in
networks) goes through train_single_stage and its logged reconstruction loss falls. Eight steps at batch 2. The
cell's speed stage, with no generator, times the trained tokenizer's encode and decode."""

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

import models
from bench.plan import make_plan
from bench.stages import base, speed
from bench.sweep import SWEEPS
from bench.train.tokenizer import train_single_stage


@pytest.mark.slow
@pytest.mark.parametrize("name", ["TiTok-BL-64-VQ", "TiTok-BL-64-VAE"])
def test_the_tiny_preset_trains_a_single_stage_cell(name, tmp_path):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose(
            "sweep",
            overrides=[
                "grid=single_stage",
                f"grid.models=[{name}]",
                "preset.single.loop.steps=8",
                "preset.single.loop.batch_size=2",
                "preset.single.loop.log_every=1",
                "preset.single.gan.start_step=4",
                f"outputs={tmp_path}",
            ],
        )
    plan = make_plan(cfg)
    spec = plan.task(f"{name}/single").spec
    losses = []
    result = train_single_stage(
        spec, tmp_path / "single", lambda metrics, step: losses.append(float(metrics["single/l2"]))
    )
    assert len(losses) == 8
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.5 * first, losses
    model = models.load(result.checkpoint)
    assert model.outputs_pixels and model.config.quantizer == name.rsplit("-", 1)[1].lower()
    assert result.random_weights == {"convnext": True, "lpips": True}  # tiny: stand-ins, tagged
    timed = speed.run(
        dataclasses.replace(plan.task(f"{name}/speed").spec, tokenizer=result.checkpoint),
        base.Context(tmp_path / "speed"),
    )
    assert set(timed["metrics"]) == {"encode_images_per_s", "decode_images_per_s"}
    assert all(v > 0 for v in timed["metrics"].values())
