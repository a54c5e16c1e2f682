"""Parameter groups (weight-decay exemptions) and the learning-rate schedules."""

from __future__ import annotations

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
