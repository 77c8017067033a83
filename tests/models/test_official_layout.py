"""Every released architecture, built on the meta device, maps to exactly the official keys, shapes and
parameter count recorded in tests/data/reference/official_checkpoints.json."""

import pytest
import torch

from models import VARIANTS, build
from models.official_layout import from_official, to_official
from tests.reference import official_checkpoints

OFFICIAL = official_checkpoints()
RELEASED = sorted(name for name, v in VARIANTS.items() if v.official_key)


def test_every_official_checkpoint_has_a_variant():
    listed = {k for k in OFFICIAL if not k.startswith("_")}
    assert listed == {VARIANTS[name].official_key for name in RELEASED}


@pytest.mark.parametrize("name", RELEASED)
def test_official_layout(name):
    entry = OFFICIAL[VARIANTS[name].official_key]
    with torch.device("meta"):
        model = build(name)
    ours = model.state_dict()
    mapped = {k: list(v.shape) for k, v in to_official(ours, model).items()}
    expected = entry["state_dict"]
    assert sorted(set(expected) - set(mapped)) == [], "keys the model lacks"
    assert sorted(set(mapped) - set(expected)) == [], "keys the official layout lacks"
    assert {k: v for k, v in mapped.items() if v != expected[k]} == {}, "shape conflicts"
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    # and back: the official names map onto ours exactly
    back = from_official(to_official(ours, model))
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("name", [n for n in RELEASED if VARIANTS[n].kind == "tokenizer"])
def test_official_config_matches_registry(name):
    """The registry's architecture equals what the released config.json + shapes describe."""
    from models.official_layout import infer_config

    entry = OFFICIAL[VARIANTS[name].official_key]
    shapes = {k: tuple(v) for k, v in entry["state_dict"].items()}
    assert infer_config(shapes, {"model": {"vq_model": entry["config"]}}) == VARIANTS[name].config
