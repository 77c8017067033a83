"""One optimisation step (bench/train/trainer.py) through the loop, on toy objectives: fp16 skips non-finite steps
with the scaler backing off and stops after too many in a row, bf16/fp32 stop at the first; logged values are read
from the device on log steps only, with one non-finite check per update."""

import pytest
import torch

from bench.core import dist as D
from bench.train import trainer as T
from bench.train.checkpoint import CHECKPOINT
from bench.train.loop import train
from bench.train.trainer import NonFiniteLossError
from tests.train.test_loop import _batches, _cfg, _objective, _same_weights


# ---- fp16: skip non-finite steps, stop after too many in a row ------------------------------------------------------
@pytest.fixture
def fp16(monkeypatch):
    """fp16 autocast and the gradient scaler on this CPU, however slow its fp16 matmuls."""
    monkeypatch.setattr(D, "runnable_precision", lambda precision, device: precision)


def _inf_at(steps):
    return lambda step, out: out * float("inf") if step in steps else out


def test_fp16_skips_non_finite_steps_and_backs_off(tmp_path, fp16):
    logged = []
    result = train(
        _objective(_inf_at({2, 3, 6})),
        _batches(),
        _cfg(8, precision="fp16", log_every=1),
        tmp_path,
        log=lambda metrics, step: logged.append(metrics),
    )
    assert [m["m/skipped_steps"] for m in logged] == [0, 0, 1, 2, 2, 2, 3, 3]
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["scaler"]["scale"] == 2.0**16 * 0.5**3 and ckpt["skips"]["m"] == {"total": 3, "in_a_row": 0}
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_fp16_skipped_steps_leave_the_weights(tmp_path, fp16):
    """A skipped step changes no weight: the run with inf at step 2 has step 1's weights after step 2."""
    two = train(_objective(_inf_at(())), _batches(), _cfg(2, precision="fp16", ema_max_decay=0.0), tmp_path / "two")
    skipped = train(
        _objective(_inf_at({2})), _batches(), _cfg(3, precision="fp16", ema_max_decay=0.0), tmp_path / "skipped"
    )
    assert _same_weights(two.model, skipped.model)


def test_fp16_stops_after_max_consecutive_skips(tmp_path, fp16):
    with pytest.raises(
        NonFiniteLossError,
        match=r"4 fp16 steps in a row \(the last at step 6\).*"
        r"max_consecutive_skips=4.*last good checkpoint",
    ):
        train(
            _objective(_inf_at(range(3, 100))),
            _batches(),
            _cfg(20, precision="fp16", max_consecutive_skips=4, checkpoint_every=2),
            tmp_path,
        )
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 6


def test_bf16_still_stops_at_the_first_non_finite_step(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "runnable_precision", lambda precision, device: precision)
    with pytest.raises(NonFiniteLossError, match="non-finite m loss at step 2 in bf16"):
        train(_objective(_inf_at({2})), _batches(), _cfg(5, precision="bf16"), tmp_path)


def test_a_non_finite_gradient_with_a_finite_loss_stops_fp32(tmp_path):
    def nan_gradient_at_1(step, out):  # sqrt at 0: a finite value, an infinite derivative
        return out + 0.0 * (out - out.detach()).abs().sqrt() if step == 1 else out

    with pytest.raises(NonFiniteLossError, match="non-finite m gradient at step 1 in fp32"):
        train(_objective(nan_gradient_at_1), _batches(), _cfg(3), tmp_path)


# ---- logged values: read on log steps only -----------------------------------------------------------------------
def test_log_values_are_read_on_log_steps_only(tmp_path, monkeypatch):
    calls = []
    reads = []
    real_read = T._read
    monkeypatch.setattr(T, "_read", lambda values: (reads.append(1), real_read(values))[1])

    def logs(out):
        return {"m/loss": out.detach(), "m/deferred": lambda: calls.append(1) or 1.0}

    logged = {}
    train(
        _objective(logs=logs),
        _batches(),
        _cfg(7, grad_accum=2, log_every=3),
        tmp_path,
        log=lambda metrics, step: logged.update({step: metrics}),
    )
    assert sorted(logged) == [3, 6, 7] and len(reads) == 3
    assert len(calls) == 3 * 2  # two micro-batches on each of the three log steps
    every = {}
    train(
        _objective(logs=logs),
        _batches(),
        _cfg(7, grad_accum=2, log_every=1),
        tmp_path / "every",
        log=lambda metrics, step: every.update({step: metrics}),
    )
    for step in (3, 6, 7):  # the values are those of logging every step
        assert {k: v for k, v in logged[step].items() if k != "steps_per_s"} == {
            k: v for k, v in every[step].items() if k != "steps_per_s"
        }
    assert {"m/loss", "m/deferred", "m/grad_norm", "m/lr"} <= set(logged[7])


def test_one_non_finite_check_per_update(tmp_path, monkeypatch):
    checks = []
    real = T.Trainer._nonfinite
    monkeypatch.setattr(T.Trainer, "_nonfinite", lambda self, bad: (checks.append(1), real(self, bad))[1])
    train(_objective(), _batches(), _cfg(5, grad_accum=4), tmp_path)
    assert len(checks) == 5


# ---- an optimizer whose schedule starts later ------------------------------------------------------------------------
def test_a_schedule_that_starts_late_warms_up_then_decays_over_the_steps_left(tmp_path):
    """`schedule_start`: the optimizer's warm-up begins at that step and its cosine spans the steps left; an
    optimizer without one keeps the stage's schedule."""
    from bench.train.optim import OptimConfig, lr_at

    optim = OptimConfig(lr=1e-2, warmup_steps=2, end_lr=1e-4)
    base = _objective()
    late = torch.nn.Linear(4, 2)
    objective = T.Objective(
        modules={"m": base.modules["m"], "late": late},
        optim={"m": optim, "late": optim},
        loss=lambda name, wrapped, batch, step, cache: ((wrapped[name](batch) - 1).pow(2).mean(), {}),
        active=lambda name, step: name == "m" or step >= 4,
        schedule_start={"late": 4},
        ema_of="m",
    )
    lrs = []
    train(objective, _batches(), _cfg(10, log_every=1), tmp_path, log=lambda m, step: lrs.append(m))
    late_lrs = [m.get("late/lr") for m in lrs]
    assert late_lrs[:4] == [None] * 4  # not active yet
    # warm-up over its first two steps, then the cosine over the six steps left (not the stage's ten)
    assert late_lrs[4:] == pytest.approx([lr_at(s, 6, optim) for s in range(6)])
    assert late_lrs[4] == pytest.approx(optim.lr / 2)  # on the stage's step it would be past warm-up
    assert [m["m/lr"] for m in lrs] == pytest.approx([lr_at(s, 10, optim) for s in range(10)])
