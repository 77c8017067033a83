"""The loop's resume points are checked: checkpoint.pt carries the sha256 of its content, the previous one is kept,
and a torn or bit-flipped checkpoint.pt is named on stderr while the stage resumes from the previous one (or
restarts when there is none), to the uninterrupted run's weights."""

import pytest
import torch

from bench.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT
from bench.train.loop import train
from bench.train.optim import OptimConfig
from bench.train.trainer import LoopConfig, Objective


class Interrupt(Exception):
    pass


def run(out, steps=6, stop_at=None):
    """A linear model on step-dependent batches, checkpointed every 2 steps; `stop_at`: raise at that step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    def loss(name, wrapped, batch, step, cache):
        return ((wrapped["m"](batch) - 1) ** 2).mean() + 0.01 * torch.rand(()), {}

    def batches(start):
        step = start
        while True:
            yield torch.full((4, 3), float(step)) / 10
            step += 1

    def log(metrics, step):
        if step == stop_at:
            raise Interrupt

    objective = Objective(
        modules={"m": model}, optim={"m": OptimConfig(lr=1e-2, warmup_steps=1)}, loss=loss, ema_of="m"
    )
    return train(
        objective,
        batches,
        LoopConfig(steps=steps, batch_size=4, checkpoint_every=2, log_every=1, ema_max_decay=0.9),
        out,
        log=log,
    )


def interrupted(out):
    with pytest.raises(Interrupt):
        run(out, stop_at=5)  # checkpoints at steps 2 and 4
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 4
    assert torch.load(out / PREVIOUS_CHECKPOINT, weights_only=True)["step"] == 2


def flip_a_weight_bit(path):
    """One bit of a stored tensor's bytes: the file still loads, with a changed weight."""
    data = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["modules"]["m"]["weight"].numpy().tobytes()
    at = data.find(weight)
    assert at > 0
    data[at + 1] ^= 0x10
    path.write_bytes(bytes(data))


def tear(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full")).model.state_dict()


@pytest.mark.parametrize("damage", [tear, flip_a_weight_bit], ids=["torn", "bit-flipped"])
def test_a_damaged_resume_point_falls_back_to_the_previous_one(tmp_path, capsys, uninterrupted, damage):
    interrupted(tmp_path)
    damage(tmp_path / CHECKPOINT)
    capsys.readouterr()
    result = run(tmp_path)
    err = capsys.readouterr().err
    assert f"{tmp_path / CHECKPOINT} is damaged" in err
    assert f"resuming from the previous resume point {tmp_path / PREVIOUS_CHECKPOINT} (step 2)" in err
    assert result.resumed_from == 2
    assert all(torch.equal(uninterrupted[k], v) for k, v in result.model.state_dict().items())


def test_without_a_good_resume_point_the_stage_restarts_and_says_so(tmp_path, capsys, uninterrupted):
    interrupted(tmp_path)
    flip_a_weight_bit(tmp_path / CHECKPOINT)
    tear(tmp_path / PREVIOUS_CHECKPOINT)
    capsys.readouterr()
    result = run(tmp_path)
    err = capsys.readouterr().err
    assert f"{tmp_path / CHECKPOINT} is damaged" in err and f"{tmp_path / PREVIOUS_CHECKPOINT} is damaged" in err
    assert "no good resume point: the stage restarts from step 0" in err
    assert result.resumed_from == 0
    assert all(torch.equal(uninterrupted[k], v) for k, v in result.model.state_dict().items())


def test_a_good_resume_point_is_resumed_silently_and_replaced_in_turn(tmp_path, capsys, uninterrupted):
    interrupted(tmp_path)
    capsys.readouterr()
    result = run(tmp_path)
    assert "damaged" not in capsys.readouterr().err and result.resumed_from == 4
    assert all(torch.equal(uninterrupted[k], v) for k, v in result.model.state_dict().items())
    assert torch.load(tmp_path / PREVIOUS_CHECKPOINT, weights_only=True)["step"] == 4
