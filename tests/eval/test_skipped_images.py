"""Unreadable images in an evaluation: they are skipped, not replaced by the next readable image
(another class), the evaluated count is the number of distinct images read, and the skip count is in the result."""

import numpy as np
import pytest
import torch
from PIL import Image

import models
from bench.data import build_dataset
from bench.eval.inception import InceptionOutput
from bench.eval.reconstruction import evaluate_reconstruction
from bench.eval.run import SINGLE_PROCESS, eval_batches
from bench.tracking import METRICS


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    """val/cat: two images; val/dog: a corrupt file first, then one image."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        (root / "val" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "val" / name)
    (root / "val/dog/a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    return build_dataset("imagenet", root=str(root), split="val", image_size=32, train=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_batches_skip_unreadable_images_instead_of_repeating_others(val, num_workers):
    assert len(val) == 4
    batches = list(eval_batches(val, 4, 3, SINGLE_PROCESS, num_workers=num_workers))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [0, 0, 1]  # the broken dog image is left out, not replaced by dog/c.png a second time
    assert len({tuple(x.flatten()[:64].tolist()) for x in images}) == 3  # three distinct images
    assert [p.rsplit("/", 2)[-2:] for p, _ in val.skipped()] == [["dog", "a_broken.png"]]


def pixel_features(u8: torch.Tensor) -> InceptionOutput:
    """Inception's output shapes from the pixels: what is tested is the counting, not the network."""
    x = u8.double().flatten(1) / 255
    return InceptionOutput(x[:, :2048], x[:, :1008], x[:, :2023])


def test_reconstruction_counts_distinct_images_and_reports_the_skips(val):
    torch.manual_seed(0)
    tok = models.build(
        "TiTok-S-16-VQ",
        encoder_size="toy-S",
        decoder_size="toy-S",
        image_size=32,
        patch_size=8,
        decoder_patch_size=8,
        codebook_size=64,
        token_size=8,
    ).eval()
    out = evaluate_reconstruction(tok, val, num_images=4, batch_size=4, fid_method="eigh", inception=pixel_features)
    assert out["rfid_num_images"] == 3 and out["eval_skipped_images"] == 1
    assert "eval_skipped_images" in METRICS  # logged to MLflow with the stage's other metrics
