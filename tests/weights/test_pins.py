"""One weights cache, pinned hub revisions, source records and the provenance tags of a stage.

No network: a tiny official-format tokenizer (the parity folder titok_singlestage_vq) is registered as a released
variant of a made-up hub repo, and huggingface_hub's download functions are replaced by fakes that copy it."""

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

import models
from bench import weights
from bench.stages import SpeedSpec, StageTask, run_task
from bench.weights import download, entries
from models.pretrained import from_pretrained
from models.state_dicts import CheckpointError
from tests.reference import PARITY

NAME, REPO = "TiTok-Tiny-Test", "someone/tiny_titok"
TINY = PARITY / "titok_singlestage_vq"
PINNED = "1" * 40  # a commit the pin file names
MAIN = "2" * 40  # the commit the fake hub's main resolves to


class FakeHub:
    """huggingface_hub.model_info and hf_hub_download, recording their calls; downloads copy the tiny folder."""

    def __init__(self):
        self.infos, self.downloads = [], []

    def model_info(self, repo, revision=None, **kw):
        self.infos.append((repo, revision))
        return SimpleNamespace(sha=MAIN)

    def hf_hub_download(self, repo, filename, *, revision=None, local_dir=None, **kw):
        self.downloads.append((repo, filename, revision))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TINY / filename, dest)
        return str(dest)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights cache, a pin file of our own, and the tiny tokenizer registered as a released variant."""
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a real hub call fails at once instead of reaching out
    monkeypatch.delenv(weights.ENV_OFFLINE, raising=False)
    pins = tmp_path / "hub_revisions.json"
    pins.write_text(json.dumps({"_about": "test pins", REPO: ""}))
    monkeypatch.setattr(models.variants, "PINS_FILE", pins)
    config = from_pretrained(TINY).config
    monkeypatch.setitem(models.VARIANTS, NAME, models.Variant(NAME, "tokenizer", config, hub_repo=REPO))
    monkeypatch.setattr(entries, "_REGISTRY", None)  # rebuilt with the tiny variant and these pins
    return tmp_path / "w"


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "model_info", fake.model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


def pin(pins_file: Path, commit: str) -> None:
    pins_file.write_text(json.dumps({REPO: commit}))
    entries._REGISTRY = None  # the entries carry the revision (the fixture's monkeypatch restores it)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def place_by_hand(cache: Path) -> Path:
    folder = cache / "hub" / REPO.replace("/", "--")
    shutil.copytree(TINY, folder)
    return folder


def test_from_pretrained_reads_the_weights_cache_of_bench_weights(cache, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("asked the hub although the cache holds the files")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    folder = place_by_hand(cache)
    assert weights.path_of(NAME) == folder == models.hub.hub_folder(REPO)
    assert weights.path_of("TiTok-L-32") == models.hub.hub_folder("yucornetto/tokenizer_titok_l32_imagenet")
    for name in (NAME, REPO):  # a variant name and a hub repo id
        model = from_pretrained(name)
        assert model.config == models.VARIANTS[NAME].config
        assert torch.equal(model.latent_tokens, from_pretrained(TINY).latent_tokens)


def test_from_pretrained_fetches_a_missing_repo_into_the_cache_at_the_pinned_commit(cache, hub):
    pin(models.variants.PINS_FILE, PINNED)
    assert models.VARIANTS[NAME].revision == PINNED == weights.entry(NAME).revision
    from_pretrained(NAME)
    assert hub.downloads == [(REPO, "config.json", PINNED), (REPO, "model.safetensors", PINNED)]
    assert hub.infos == []  # a full commit needs no lookup
    folder = weights.path_of(NAME)
    record = json.loads((folder / ".source.json").read_text())
    assert record["repo"] == REPO and record["revision"] == record["commit"] == PINNED
    assert record["files"] == {f: sha256(folder / f) for f in ("config.json", "model.safetensors")}
    from_pretrained(NAME)  # present and unchanged: no second download
    assert len(hub.downloads) == 2


def test_an_unpinned_fetch_records_the_commit_it_got_and_pin_writes_it(cache, hub):
    assert weights.entry(NAME).revision is None
    weights.fetch(NAME)
    assert hub.infos == [(REPO, None)] and {d[2] for d in hub.downloads} == {MAIN}  # main, resolved once
    record = models.source_records.read_source_record(weights.path_of(NAME))
    assert record["revision"] is None and record["commit"] == MAIN
    assert weights.pin([NAME, weights.VGG16]) == {REPO: MAIN}
    data = json.loads(models.variants.PINS_FILE.read_text())
    assert data[REPO] == MAIN and data["_about"] == "test pins"  # the note is kept
    assert weights.entry(NAME).revision == MAIN == models.VARIANTS[NAME].revision


def test_a_changed_file_is_refused_at_load(cache, hub):
    weights.fetch(NAME)
    folder = weights.path_of(NAME)
    assert weights.verify(NAME) and weights.require(NAME) == folder
    config = folder / "config.json"
    config.write_text(config.read_text() + " ")  # still valid JSON, another file
    with pytest.raises(CheckpointError, match="config.json is not the file that was fetched"):
        from_pretrained(NAME)
    with pytest.raises(CheckpointError, match="not the file that was fetched"):
        from_pretrained(folder)  # by path too, as the stages load it
    with pytest.raises(CheckpointError, match="not the file that was fetched"):
        weights.resolve(NAME, allow_random=True)  # never replaced by a stand-in
    assert not weights.verify(NAME)


def test_a_file_fetched_at_another_commit_than_the_pin_is_refused_by_stages_refetched_by_the_front_door(cache, hub):
    weights.fetch(NAME)  # unpinned: main
    pin(models.variants.PINS_FILE, PINNED)
    with pytest.raises(CheckpointError, match=f"holds commit {MAIN}.*pins {PINNED}"):
        weights.require(NAME)
    assert not weights.verify(NAME)
    from_pretrained(NAME)
    assert hub.downloads[-1] == (REPO, "model.safetensors", PINNED)
    assert weights.require(NAME) == weights.path_of(NAME)


def test_a_fixed_url_file_records_its_url_and_sha256(cache, monkeypatch):
    def fake_download(url, dest, timeout):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"lpips layers")

    monkeypatch.setattr(download, "_download", fake_download)
    monkeypatch.setattr(download, "verify", lambda name: weights.locate(name) is not None)
    path = weights.fetch(weights.LPIPS_VGG)
    e = weights.entry(weights.LPIPS_VGG)
    record = models.source_records.read_source_record(path)
    assert record == {"url": e.url, "files": {path.name: hashlib.sha256(b"lpips layers").hexdigest()}}
    assert weights.provenance(weights.LPIPS_VGG, path) == {"revision": e.url, "sha256": record["files"][path.name]}


def speed_spec(tokenizer: str, generator: Path) -> SpeedSpec:
    return SpeedSpec(
        tokenizer=tokenizer,
        generator=str(generator),
        batch_size=1,
        repeats=1,
        warmup=0,
        sampler={"num_steps": 2},
        device="cpu",
    )


def tiny_generator(path: Path) -> Path:
    torch.manual_seed(0)
    t = models.VARIANTS[NAME].config
    models.save(
        models.build(
            "MaskGIT-ViT",
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            intermediate_size=64,
            num_tokens=t.num_latent_tokens,
            codebook_size=t.codebook_size,
        ),
        path,
    )
    return path


def test_a_stage_tags_the_revision_and_sha256_of_each_registry_file_it_used(cache, hub, tmp_path):
    weights.fetch(NAME)
    folder = weights.path_of(NAME)
    want = {
        "titok.weights.TiTok-Tiny-Test.revision": MAIN,
        "titok.weights.TiTok-Tiny-Test.sha256": f"config.json={sha256(folder / 'config.json')};"
        f"model.safetensors={sha256(folder / 'model.safetensors')}",
    }
    generator = tiny_generator(tmp_path / "gen.safetensors")
    # the speed stage, the tokenizer by name (resolved by bench.core.loading) and by its cache path (as plans pass)
    for i, source in enumerate((NAME, str(folder))):
        task = StageTask("g", "c", "speed", f"id{i}", str(tmp_path / f"speed{i}"), speed_spec(source, generator))
        result = run_task(task)
        tags = {k: v for k, v in result["tags"].items() if k.startswith("titok.weights.")}
        assert tags == want
        assert json.loads((Path(task.out_dir) / "result.json").read_text())["tags"] == result["tags"]


def test_stand_ins_and_hand_placed_files_say_so_in_the_tags(cache, tmp_path, monkeypatch):
    import bench.stages as stages

    vgg = weights.path_of(weights.VGG16)
    vgg.parent.mkdir(parents=True)
    vgg.write_bytes(b"not vgg")  # placed by hand: no source record

    def run(spec, ctx):
        weights.resolve(weights.VGG16, allow_random=True)
        weights.resolve(weights.LPIPS_VGG, allow_random=True)  # missing: a stand-in
        return {"metrics": {}, "random_weights": {"lpips": True}}

    @dataclasses.dataclass(frozen=True)
    class Spec:
        device: str = "cpu"

    monkeypatch.setitem(stages.STAGES, "fake", SimpleNamespace(NAME="fake", run=run, PRODUCT=None))
    result = run_task(StageTask("g", "c", "fake", "x", str(tmp_path / "fake"), Spec()))
    e = weights.entry(weights.VGG16)
    assert result["tags"] == {
        "titok.weights.lpips-vgg.revision": "random stand-in (no file: seeded random weights)",
        "titok.weights.lpips-vgg.sha256": "none (random stand-in)",
        "titok.weights.vgg16.revision": e.url,
        "titok.weights.vgg16.sha256": hashlib.sha256(b"not vgg").hexdigest(),
    }
    assert all(re.fullmatch(r"[/\w.\- ]+", k) for k in result["tags"])  # MLflow's tag keys (Windows too)
