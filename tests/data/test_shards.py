"""Tests of bench/data's webdataset tar shards (shards, shard_index, shard_stream, shard_dataset): shards written
here, with real JPEG/PNG bytes, a corrupt image and a sample without a class, as a training stream with exact
resume, as an evaluation dataset, over http, and in a plan.

    .venv/bin/python -m pytest tests/data/test_shards.py -x -q
"""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import tarfile
import threading

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from bench.core.dist import DistInfo
from bench.data import DatasetError, ShardStream, build_dataset, make_stream_loader, shard_list
from bench.data.shards import check_shards, expand_braces
from bench.sweep import SWEEPS
from bench.train.recipes import DataConfig
from bench.train.stage import batches_for

NUM_SHARDS, PER_SHARD, SIZE = 4, 6, 32


def image_bytes(i: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    w, h = 40 + i % 5 * 3, 36 + i % 3 * 4
    Image.new("RGB", (w, h), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TITOK_BENCH_SHARD_INDEX", str(tmp_path / "index"))


@pytest.fixture
def shards(tmp_path):
    """NUM_SHARDS shards of PER_SHARD samples (JPEG and PNG, labels 0..4); shard 1 holds a corrupt JPEG
    (sample s1-002) and a sample without a class (s1-004)."""
    folder = tmp_path / "wds"
    folder.mkdir()
    for s in range(NUM_SHARDS):
        samples = []
        for j in range(PER_SHARD):
            i = s * PER_SHARD + j
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            members = {ext: image_bytes(i, fmt), "cls": str(i % 5).encode()}
            if (s, j) == (1, 2):
                members = {"jpg": image_bytes(i, "JPEG")[:60] + b"\x00" * 40, "cls": b"3"}
            if (s, j) == (1, 4):
                members.pop("cls")
            samples.append((f"s{s}-{j:03d}", members))
        write_shard(folder / f"train-{s:04d}.tar", samples)
    return folder


def pattern(folder) -> str:
    return str(folder / f"train-{{0000..{NUM_SHARDS - 1:04d}}}.tar")


def stream_batches(shards_, start, n, **kw):
    stream = ShardStream(
        shard_list(shards_),
        image_size=SIZE,
        train=True,
        batch_size=kw.pop("batch_size", 3),
        seed=kw.pop("seed", 0),
        start_step=start,
        num_classes=5,
        **kw,
    )
    return list(itertools.islice(make_stream_loader(stream), n)), stream


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_brace_expansion():
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}/p{1..2}") == ["x/p1", "x/p2", "y/p1", "y/p2"]
    assert expand_braces("https://h/s-{0..1}.tar") == ["https://h/s-0.tar", "https://h/s-1.tar"]
    with pytest.raises(DatasetError, match="neither a range"):
        expand_braces("a{b}c")


def test_one_line_errors(shards, tmp_path):
    with pytest.raises(DatasetError, match="no shard matches"):
        shard_list(str(tmp_path / "nope-{0..3}.tar"))
    with pytest.raises(DatasetError, match="1 of 5 shards do not exist"):
        shard_list(str(shards / "train-{0000..0004}.tar"))
    with pytest.raises(DatasetError, match="is not set"):
        shard_list(None)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DatasetError, match="not a readable tar file"):
        check_shards(str(tmp_path / "junk.tar"), "data.train_shards")
    write_shard(tmp_path / "nolabel.tar", [("a", {"jpg": image_bytes(0, "JPEG")})])
    with pytest.raises(DatasetError, match="has no class label"):
        check_shards(str(tmp_path / "nolabel.tar"), "data.train_shards")
    assert check_shards(pattern(shards), "data.train_shards", num_classes=5) == NUM_SHARDS


def test_stream_skips_and_counts_bad_samples(shards):
    # one stream, one epoch of 24 positions = 8 batches of 3: every position gets a usable sample
    batches, stream = stream_batches(pattern(shards), 0, 8)
    assert all(x.shape == (3, 3, SIZE, SIZE) and x.dtype == torch.float32 for x, _ in batches)
    assert all(0 <= int(y) < 5 for _, ys in batches for y in ys)
    skipped = dict(stream.skipped())
    assert set(skipped) == {f"{shards}/train-0001.tar#s1-002", f"{shards}/train-0001.tar#s1-004"}
    assert "no class label" in skipped[f"{shards}/train-0001.tar#s1-004"]


@pytest.mark.parametrize("start", [1, 4, 7, 9, 13])
def test_stream_resume_is_exact(shards, start):
    """Resuming at any step (inside a block, at an epoch boundary, after the corrupt samples) gives the batches of
    the uninterrupted read, across epochs."""
    full, _ = stream_batches(pattern(shards), 0, 18)
    resumed, _ = stream_batches(pattern(shards), start, 18 - start)
    assert same(resumed, full[start:])
    assert not same(full[:8], full[8:16])  # epochs differ (shard order, in-shard order, crops)


def test_stream_small_blocks_and_seed(shards):
    full, _ = stream_batches(pattern(shards), 0, 10, block=4)
    assert same(stream_batches(pattern(shards), 3, 7, block=4)[0], full[3:])
    assert not same(stream_batches(pattern(shards), 0, 10, seed=1, block=4)[0], full)


def test_stream_ranks_and_workers_resume_exactly(shards):
    """2 ranks x 2 workers = 4 streams of one shard each: each rank's resumed batches equal its uninterrupted ones,
    and the ranks read disjoint shards in an epoch."""
    for rank in range(2):
        full, _ = stream_batches(pattern(shards), 0, 8, batch_size=2, rank=rank, world_size=2, num_workers=2)
        resumed, _ = stream_batches(pattern(shards), 3, 5, batch_size=2, rank=rank, world_size=2, num_workers=2)
        assert same(resumed, full[3:])
    stream = ShardStream(
        shard_list(pattern(shards)), image_size=SIZE, train=True, batch_size=2, seed=0, world_size=2, num_workers=2
    )
    assert sorted(i for s in range(4) for i in stream.stream_shards(s, 0)) == list(range(NUM_SHARDS))
    with pytest.raises(DatasetError, match="4 shards cannot feed 2 ranks x 3 data-loader workers"):
        ShardStream(
            shard_list(pattern(shards)), image_size=SIZE, train=True, batch_size=2, seed=0, world_size=2, num_workers=3
        )


def test_stream_over_http(shards):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{0000..{NUM_SHARDS - 1:04d}}}.tar"
        local, _ = stream_batches(pattern(shards), 0, 10)
        remote, stream = stream_batches(url, 0, 10)
        assert same(remote, local)
        assert len(stream.skipped()) == 2
        assert same(stream_batches(url, 6, 4)[0], local[6:])
        assert check_shards(url, "data.train_shards") == NUM_SHARDS
        with pytest.raises(DatasetError, match="must be local files"):
            build_dataset("imagenet_wds", split="val", image_size=SIZE, train=False, shards=url)
    finally:
        server.shutdown()
        server.server_close()


def test_eval_dataset(shards):
    ds = build_dataset("imagenet_wds", split="val", image_size=SIZE, train=False, shards=pattern(shards), num_classes=5)
    assert len(ds) == NUM_SHARDS * PER_SHARD - 1  # the sample without a class is left out (and reported)
    reads = [ds.read(i) for i in range(len(ds))]
    assert sum(r is None for r in reads) == 1  # the corrupt JPEG
    x, y = next(r for r in reads if r is not None)
    assert x.shape == (3, SIZE, SIZE) and 0 <= y < 5
    assert len(ds.skipped()) == 2 and ds.describe()["num_shards"] == NUM_SHARDS
    sub = build_dataset(
        "imagenet_wds",
        split="val",
        image_size=SIZE,
        train=False,
        shards=pattern(shards),
        num_classes=5,
        num_images=10,
        seed=0,
    )
    assert sorted(sub[i][1] for i in range(10)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # class-balanced


def test_batches_for_streams_shards(shards):
    data = DataConfig(name="imagenet_wds", train_shards=pattern(shards), image_size=SIZE, num_classes=5, num_workers=0)
    batches = batches_for(data, batch_size=4, seed=0, info=DistInfo())
    first = list(itertools.islice(batches(0), 5))
    again = list(itertools.islice(batches(2), 3))
    assert same(again, first[2:]) and first[0][0].shape == (4, 3, SIZE, SIZE)


def test_plan_composes_with_imagenet_wds(shards, tmp_path):
    from bench.plan import PlanError, make_plan

    def config(*overrides):
        with initialize_config_dir(str(SWEEPS), version_base=None):
            return compose("sweep", overrides=["data=imagenet_wds", f"outputs={tmp_path / 'out'}", *overrides])

    # a brace pattern is quoted for Hydra's override grammar ('...'), as on the command line
    good = [f"data.train_shards='{pattern(shards)}'", f"data.val_shards='{pattern(shards)}'", "data.num_classes=5"]
    with pytest.warns(UserWarning, match="preset.generator.train_images=160 is ignored"):
        plan = make_plan(config(*good))  # the tiny preset's limit cannot cut streamed shards
    assert plan.task(f"{plan.cells[0].name}/generator").spec.data.num_images is None
    stage1 = plan.task(f"{plan.cells[0].name}/stage1").spec
    assert stage1.data.name == "imagenet_wds" and stage1.data.train_shards == pattern(shards)
    # where the shards lie is not part of a stage's identity (as data.root is not)
    moved = make_plan(config(*good[:2], f"data.val_shards='{shards}/train-{{0000..0001}}.tar'", "data.num_classes=5"))
    assert [t.identity for t in moved.tasks()] == [t.identity for t in plan.tasks()]
    with pytest.raises((PlanError, DatasetError), match="no shard matches"):
        make_plan(config(f"data.train_shards='{tmp_path}/none-{{0..2}}.tar'", good[1], good[2]))
    with pytest.raises(PlanError, match="data.train_images=100"):
        make_plan(config(*good, "data.train_images=100"))


def test_sweep_cli_plans_imagenet_wds(shards, tmp_path):
    import subprocess
    import sys

    from tests.sweep.test_plan import REPO

    args = [
        sys.executable,
        "-m",
        "bench.sweep",
        "grid=latent_vs_size",
        "action=plan",
        "data=imagenet_wds",
        f"data.train_shards='{pattern(shards)}'",
        f"data.val_shards='{pattern(shards)}'",
        "data.num_classes=5",
        f"outputs={tmp_path / 'out'}",
    ]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing submitted" in r.stdout
    bad = [*args[:6], f"data.train_shards='{tmp_path}/none-{{0..1}}.tar'", *args[7:]]
    r = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no shard matches" in r.stderr and "Traceback" not in r.stderr, r.stderr
