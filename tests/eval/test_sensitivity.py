"""The rFID feature-network sensitivity check (bench.sensitivity) at a toy size through its CLI: the tiny
preset's rFID settings, the rows asked for in order, FID ~0 for an undegraded copy and positive otherwise, PSNR
falling with strength, the random-weights tags; and the degradations themselves."""

import json
import math

import pytest
import torch

from bench import weights
from bench.sensitivity import degrade, main

N = 8  # images: the stand-in Inception costs ~0.1-0.3 s per image here, and every strength is one more pass
BLUR, NOISE = (0.0, 1.5, 3.0), (0.05, 0.3)  # Spearman needs 3 points: noise's is NaN


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("sensitivity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.ENV_CACHE, str(out / "weights"))
        threads = torch.get_num_threads()
        try:
            assert (
                main(
                    [
                        "--images",
                        str(N),
                        "--blur",
                        ",".join(map(str, BLUR)),
                        "--noise",
                        ",".join(map(str, NOISE)),
                        "--threads",
                        "1",
                        "--json",
                        str(out / "s.json"),
                    ]
                )
                == 0
            )
        finally:
            torch.set_num_threads(threads)
    return json.loads((out / "s.json").read_text())


def test_rows_fid_and_psnr(result, capsys):
    rows = result["rows"]
    assert [(r["degradation"], r["strength"]) for r in rows] == [("blur", s) for s in BLUR] + [
        ("noise", s) for s in NOISE
    ]
    assert result["num_images"] == N and result["data"]["image_size"] == 32 and result["data"]["split"] == "val"
    # the tiny preset's rFID: float32 stand-in Inception, eigh Frechet distance
    assert result["inception_dtype"] == "float32" and result["fid_method"] == "eigh"
    assert result["tags"]["titok.rfid_inception_dtype"] == "float32"
    undegraded, blurred, very_blurred, light, heavy = rows
    assert undegraded["psnr"] == math.inf and abs(undegraded["fid"]) < 1e-3
    for r in (blurred, very_blurred, light, heavy):
        assert math.isfinite(r["psnr"]) and r["fid"] > 100 * abs(undegraded["fid"]) + 1e-2
    assert blurred["psnr"] > very_blurred["psnr"] and light["psnr"] > heavy["psnr"] > 0
    assert set(result["spearman"]) == {"blur", "noise"}
    # blur's rho is +1 or -1 (three strengths, FID ~0 at the first) and agrees with the FIDs' order
    assert result["spearman"]["blur"] == (1.0 if very_blurred["fid"] > blurred["fid"] else -1.0)
    assert math.isnan(result["spearman"]["noise"])
    # stand-in weights: tagged as every other number from them
    assert result["random"] is True and result["weights_random"] == {"inception": True}
    assert "a random stand-in" in result["tags"]["titok.rfid_features"]


def test_degradations():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert degrade(x, "blur", 0) is x and degrade(x, "noise", 0) is x
    flat = torch.full((1, 3, 32, 32), 0.4)
    torch.testing.assert_close(degrade(flat, "blur", 3.0), flat)  # a normalised kernel, reflected edges
    blurred = degrade(x, "blur", 1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    light, heavy = degrade(x, "noise", 0.05), degrade(x, "noise", 0.3)
    assert 0 <= heavy.min() and heavy.max() <= 1
    assert (light - x).abs().mean() < (heavy - x).abs().mean()
    torch.testing.assert_close(degrade(x, "noise", 0.05), light)  # seeded
    with pytest.raises(ValueError, match="choose one of blur, noise"):
        degrade(x, "jpeg", 1)
