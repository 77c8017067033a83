"""The real images' per-image features: rank 0 decides whether evaluate_reconstruction reads them from their cache
(2 gloo ranks that see the shared file differently agree and give the single-process numbers), and the real_stats
stage computes them once, beside the statistics, so that an eval_recon reads them instead of computing them."""

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import models
from bench.core.dist import setup
from bench.eval.inception import InceptionFeatures
from bench.eval.reconstruction import evaluate_reconstruction
from bench.stages import Context, EvalReconSpec, RealStatsSpec, eval_recon, real_stats
from bench.train.recipes import DataConfig
from tests.distributed import join, spawn
from tests.eval.test_run import N, cache, inception, toys, val_images  # noqa: F401 (fixtures)

RESAMPLES = 20


def _worker(rank, world, port, folder):
    join(rank, world, port)
    # a short timeout: ranks that join different collectives fail here instead of waiting half an hour
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    info = setup("cpu")
    tok, teacher = models.load(f"{folder}/tok.safetensors"), models.load(f"{folder}/teacher.safetensors")
    inc = InceptionFeatures("cpu", allow_random=True)
    out = {}
    # each rank sees the shared file differently: there on rank 0 only, then on rank 1 only
    for case, seen_by in (("rank0", 0), ("rank1", 1)):
        path = Path(folder, "pool.npy") if rank == seen_by else Path(folder, f"missing-{case}-{rank}.npy")
        out[case] = evaluate_reconstruction(
            tok,
            val_images(),
            num_images=N,
            batch_size=3,
            info=info,
            inception=inc,
            teacher=teacher,
            fid_method="eigh",
            bootstrap=RESAMPLES,
            real_pool_cache=path,
        )
    Path(folder, f"out{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_that_see_the_cache_differently_agree(toys, inception, tmp_path):  # noqa: F811
    tok, teacher, folder = toys
    for name in ("tok.safetensors", "teacher.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    single = evaluate_reconstruction(
        tok,
        val_images(),
        num_images=N,
        batch_size=3,
        inception=inception,
        teacher=teacher,
        fid_method="eigh",
        bootstrap=RESAMPLES,
        real_pool_cache=tmp_path / "pool.npy",
    )  # writes the cache
    assert np.load(tmp_path / "pool.npy").shape == (N, 2048)
    spawn(_worker, 2, str(tmp_path))
    outs = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in (0, 1)]
    assert outs[0] == outs[1]
    for case in ("rank0", "rank1"):
        for key in ("rfid", "rfid_lo", "rfid_hi", "psnr_lo"):
            assert outs[0][case][key] == pytest.approx(single[key], rel=1e-5), (case, key)
    # rank 0 saw no cache in the second case: it computed the features and wrote them where it looked
    assert (tmp_path / "missing-rank1-0.npy").is_file() and not (tmp_path / "missing-rank1-1.npy").exists()


def test_real_stats_writes_the_per_image_features_that_eval_recon_reads(
    toys,  # noqa: F811
    cache,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    _, _, folder = toys
    data = DataConfig(name="synthetic", image_size=32, num_workers=0)
    common = dict(
        data=data, num_images=N, inception_dtype="float32", allow_random_weights=True, batch_size=5, device="cpu"
    )
    result = real_stats.run(RealStatsSpec(**common), Context(tmp_path / "stats"))
    pool_file = tmp_path / "stats" / "real_stats.pool.npy"
    assert result["pool_features"] == str(pool_file) and np.load(pool_file).shape == (N, 2048)

    seen = []
    call = InceptionFeatures.__call__

    def counting(self, images):
        seen.append(len(images))
        return call(self, images)

    monkeypatch.setattr(InceptionFeatures, "__call__", counting)
    spec = EvalReconSpec(
        tokenizer=str(folder / "tok.safetensors"),
        real_stats=result["path"],
        teacher=str(folder / "teacher.safetensors"),
        lpips=False,
        fid_method="eigh",
        bootstrap=10,
        gallery=0,
        **common,
    )
    out = eval_recon.run(spec, Context(tmp_path / "eval"))
    assert out["metrics"]["rfid_lo"] <= out["metrics"]["rfid"] <= out["metrics"]["rfid_hi"]
    assert sum(seen) == N  # the reconstructions only: the real images' features came from real_stats
