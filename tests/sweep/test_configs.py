"""Every preset x grid x data combination of sweeps/ composes and makes a plan (or fails on purpose, with its
message), and the presets compose to the recipe they held before `tiny` became a delta on `paper`. Nothing is
trained or evaluated: the weights cache and the ImageNet tree are empty stand-ins."""

import hashlib
import io
import itertools
import json
import tarfile

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

from bench import weights
from bench.plan import PlanError, make_plan
from bench.sweep import SWEEPS


def names(group):
    return sorted(p.stem for p in (SWEEPS / group).glob("*.yaml"))


COMBINATIONS = list(itertools.product(names("preset"), names("grid"), names("data")))
# (grid, data) pairs that must not make a plan, for any preset, and the message that says why
INVALID = {("released", "synthetic"): "grid=released evaluates the released ImageNet models: use data=imagenet"}
# sha256 of each composed preset (sorted-key JSON): a preset's recipe changes only on purpose, and a deliberate
# recipe change updates its hash here
PRESET_SHA256 = {
    "paper": "ef1d5b3cd3a9c0ae4610cae1fef7316697c430baeda85ac753626d371ca0fe8f",
    "tiny": "ffa85634f5ca9cabff352d3a02003a5055168da7a9b625b479ae51f9f3a91803",
    "rehearsal": "909dc43f11ef9e42a1a8d4c66686e4cf24834ae70999ca11cc2882fda7a61e80",
}


def config(*overrides):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        return compose("sweep", overrides=list(overrides))


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    """A cache holding every registered name (empty files): the plan looks weights up, it never reads them."""
    root = tmp_path_factory.mktemp("weights")
    for e in weights.registry().values():
        files = [root / e.filename / f for f in e.hub_files] if e.is_folder else [root / e.filename]
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """train/ and val/ with as many class folders as data=imagenet declares, one tiny PNG in each."""
    root = tmp_path_factory.mktemp("imagenet")
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (128, 64, 32)).save(png, format="PNG")
    for split in ("train", "val"):
        for c in range(OmegaConf.load(SWEEPS / "data" / "imagenet.yaml").num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            (folder / "0.png").write_bytes(png.getvalue())
    return root


@pytest.fixture(scope="module")
def imagenet_wds(tmp_path_factory):
    """Overrides naming one webdataset shard (one PNG of class 0) as data=imagenet_wds's train and val shards."""
    path = tmp_path_factory.mktemp("imagenet_wds") / "shard-0000.tar"
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (128, 64, 32)).save(png, format="PNG")
    with tarfile.open(path, "w") as tar:
        for name, data in (("0.png", png.getvalue()), ("0.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [f"data.train_shards='{path}'", f"data.val_shards='{path}'"]


@pytest.mark.parametrize("preset,grid,data", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_every_combination_makes_a_plan(
    preset, grid, data, weights_cache, imagenet, imagenet_wds, tmp_path, monkeypatch
):
    monkeypatch.setenv(weights.ENV_CACHE, str(weights_cache))
    overrides = [f"preset={preset}", f"grid={grid}", f"data={data}", f"outputs={tmp_path}"]
    data_overrides = {"imagenet": [f"data.root={imagenet}"], "imagenet_wds": imagenet_wds}
    cfg = config(*overrides, *data_overrides.get(data, []))
    if (grid, data) in INVALID:
        with pytest.raises(PlanError, match=INVALID[grid, data]):
            make_plan(cfg)
        return
    plan = make_plan(cfg)
    assert (plan.grid, plan.preset, plan.smoke) == (grid, preset, cfg.preset.smoke)
    assert len(plan.cells) == len(cfg.grid.sizes) * len(cfg.grid.num_tokens) + len(cfg.grid.models)
    for cell in plan.cells:
        stages = [t.stage for t in cell.tasks]
        assert stages and set(stages) <= set(cfg.grid.stages), (cell.name, stages)
    assert not any(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize("preset", sorted(PRESET_SHA256))
def test_presets_compose_to_their_recipe(preset):
    composed = OmegaConf.to_container(config(f"preset={preset}").preset, resolve=True)
    text = json.dumps(composed, sort_keys=True).replace(str(SWEEPS), "<sweeps>")  # wherever the checkout is
    assert hashlib.sha256(text.encode()).hexdigest() == PRESET_SHA256[preset], text


def test_the_shipped_teacher_has_the_presets_architecture_and_steps():
    """The file tiny.yaml names has its teacher block's architecture and step count (the optimiser is not recorded in
    the file, so not checked): a change to either without `python -m bench.tiny_teacher` rebuilding the file fails
    here, not as a mismatched checkpoint in a run."""
    teacher = config("preset=tiny").preset.teacher
    with safe_open(teacher.source, "pt") as f:
        meta = f.metadata()
    built = json.loads(meta["config"])["fields"]
    assert {k: built[k] for k in teacher.overrides} == OmegaConf.to_container(teacher.overrides)
    assert (meta["kind"], int(meta["steps"])) == ("teacher", teacher.loop.steps)


def _repeated(delta: dict, base: dict, path: str = ""):
    """The keys of `delta` that set what `base` already holds."""
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            yield from _repeated(value, base[key], f"{path}{key}.")
        elif key in base and value == base[key]:
            yield f"{path}{key}"


@pytest.mark.parametrize("preset", [n for n in names("preset") if n != "paper"])
def test_presets_are_deltas_on_paper(preset):
    delta = OmegaConf.to_container(OmegaConf.load(SWEEPS / "preset" / f"{preset}.yaml"))
    assert delta.pop("defaults") == ["paper", "_self_"]
    paper = OmegaConf.to_container(OmegaConf.load(SWEEPS / "preset" / "paper.yaml"))
    assert not list(_repeated(delta, paper)), f"preset {preset} repeats paper.yaml's values"
