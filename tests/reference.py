"""The reference implementation's facts that the tests read, carried in the repository (tests/data/reference,
whose README says where they come from): the released checkpoints' layouts and the numerical parity cases."""

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

from safetensors.torch import load_file, save_file

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
PARITY = REFERENCE / "parity"
# the stage-1 case's weights are the two-stage case's without its pixel decoder (README): not stored twice
SHARED_WEIGHTS = {"titok_legacy_stage1": "titok_legacy_twostage"}


def official_checkpoints() -> dict:
    return json.loads((REFERENCE / "official_checkpoints.json").read_text())


def parity_cases() -> list[str]:
    return sorted(p.name for p in PARITY.iterdir() if p.is_dir())


@cache
def parity_folder(name: str) -> Path:
    """A hub-style folder (config.json + model.safetensors) of one parity case."""
    folder = PARITY / name
    if name not in SHARED_WEIGHTS:
        return folder
    source = load_file(str(PARITY / SHARED_WEIGHTS[name] / "model.safetensors"))
    stage1 = {k: v for k, v in source.items() if not k.startswith(("pixel_decoder.", "pixel_quantize."))}
    made = Path(tempfile.mkdtemp(prefix=f"parity-{name}-"))
    atexit.register(shutil.rmtree, made, True)
    shutil.copy(folder / "config.json", made / "config.json")
    save_file(stage1, str(made / "model.safetensors"))
    return made


def parity_io(name: str) -> dict:
    return load_file(str(PARITY / name / "io.safetensors"))
