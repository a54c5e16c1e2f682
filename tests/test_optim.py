"""Parameter groups (weight-decay exemptions) and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from rectnet.config import OptimConfig, ScheduleConfig
from rectnet.engine.optim import make_optimizer, make_schedule, param_groups, step_schedule
from rectnet.models import create


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_slopes_never_decay_and_biases_decay_unless_switched_off():
    model = create("convpool_cnn_c", act="prelu", width=0.25)
    slopes = _ids(p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 1)
    biases = _ids(p for n, p in model.named_parameters() if n.endswith("bias"))
    decay, no_decay = param_groups(model, OptimConfig(weight_decay=5e-4))
    assert no_decay["weight_decay"] == 0 and _ids(no_decay["params"]) == slopes and len(slopes) == 8
    decay, no_decay = param_groups(model, OptimConfig(weight_decay=5e-4, decay_bias=False))
    assert _ids(no_decay["params"]) == slopes | biases
    assert all(p.dim() == 4 for p in decay["params"])


def _lrs(schedule_cfg: ScheduleConfig, errors: list[float]) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, OptimConfig(lr=0.1))
    schedule = make_schedule(optimizer, schedule_cfg)
    lrs = []
    for err in errors:
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # an epoch of training happens between schedule steps
        step_schedule(schedule, err)
    return lrs


def test_multistep_switches_at_the_milestones():
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1), [50.0] * 5)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_step_switches_every_step_size_epochs():
    lrs = _lrs(ScheduleConfig(name="step", step_size=2, gamma=0.5), [50.0] * 5)
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_plateau_switches_when_the_error_stops_improving():
    # improving for 3 epochs, then flat: with patience 1 the lr drops after the 2nd epoch without improvement
    lrs = _lrs(ScheduleConfig(name="plateau", patience=1, gamma=0.1), [50.0, 40.0, 30.0, 30.0, 30.0, 30.0])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_constant_keeps_the_rate():
    assert _lrs(ScheduleConfig(name="constant"), [1.0] * 4) == pytest.approx([0.1] * 4)


def _lrs_per_step(schedule_cfg: ScheduleConfig, epochs: int, steps: int) -> list[list[float]]:
    """The lr each optimizer step used, per epoch, with the loop's order: step, after_step; after_epoch."""
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, OptimConfig(lr=0.1))
    schedule = make_schedule(optimizer, schedule_cfg, epochs, steps)
    out = []
    for _ in range(epochs):
        out.append([])
        for _ in range(steps):
            out[-1].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        step_schedule(schedule, 50.0)
    return out


def test_cosine_follows_its_closed_form():
    epochs, base, floor = 6, 0.1, 0.001
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, OptimConfig(lr=base))
    schedule = make_schedule(optimizer, ScheduleConfig(name="cosine", min_lr=floor), epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_schedule(schedule, 50.0)
    expected = [floor + (base - floor) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert lrs == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "epoch_factor"),
    [
        ("multistep", lambda e: 0.1 ** sum(e >= m for m in (2, 3))),
        ("step", lambda e: 0.1 ** (e // 30)),
        ("constant", lambda e: 1.0),
        ("cosine", lambda e: (1 + math.cos(math.pi * e / 4)) / 2),
    ],
)
def test_linear_warmup_multiplies_every_schedule(name, epoch_factor):
    # warmup over 6 steps of 4-step epochs (1.5 epochs): lr = 0.1 * (f + (1 - f) * min(s, W) / W) * schedule(e)
    cfg = ScheduleConfig(name=name, milestones=[2, 3], warmup_epochs=1.5, warmup_factor=0.2)
    lrs = _lrs_per_step(cfg, epochs=4, steps=4)
    for e, epoch in enumerate(lrs):
        for i, lr in enumerate(epoch):
            s = 4 * e + i
            assert lr == pytest.approx(0.1 * (0.2 + 0.8 * min(s, 6) / 6) * epoch_factor(e), rel=1e-9), (e, i)


def test_warmup_steps_and_the_plateau_schedule_compose():
    # warmup for 3 steps of 2-step epochs; the plateau drop (patience 0: the error of epoch 1 improves on
    # none, epoch 2's repeats it) multiplies whatever warmup left
    cfg = ScheduleConfig(name="plateau", patience=0, gamma=0.5, warmup_steps=3, warmup_factor=0.25)
    lrs = _lrs_per_step(cfg, epochs=3, steps=2)
    warm = [0.25 + 0.75 * min(s, 3) / 3 for s in range(6)]
    assert lrs[0] == pytest.approx([0.1 * w for w in warm[:2]])
    assert lrs[1] == pytest.approx([0.1 * w for w in warm[2:4]])
    assert lrs[2] == pytest.approx([0.1 * w * 0.5 for w in warm[4:6]])


def test_warmup_state_resumes_mid_warmup():
    model = torch.nn.Linear(2, 2)
    cfg = ScheduleConfig(name="multistep", milestones=[1], warmup_steps=10, warmup_factor=0.1)
    optimizer = make_optimizer(model, OptimConfig(lr=0.1))
    schedule = make_schedule(optimizer, cfg, 3, 5)
    for _ in range(4):
        optimizer.step()
        schedule.after_step()
    state, lr = schedule.state_dict(), optimizer.param_groups[0]["lr"]
    fresh_optimizer = make_optimizer(model, OptimConfig(lr=0.1))  # as a resume does: build, then load both
    fresh = make_schedule(fresh_optimizer, cfg, 3, 5)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(state)
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    fresh_optimizer.step()
    fresh.after_step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (0.1 + 0.9 * 5 / 10))


def test_a_checkpoint_from_before_warmup_loads_its_epoch_schedule():
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, OptimConfig(lr=0.1))
    old = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], 0.1)
    optimizer.step()
    old.step()
    schedule = make_schedule(make_optimizer(model, OptimConfig(lr=0.1)), ScheduleConfig(milestones=[1]))
    schedule.load_state_dict(old.state_dict())
    assert schedule.epoch.last_epoch == 1
