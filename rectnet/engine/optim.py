"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rectnet.config import OptimConfig, ScheduleConfig
from rectnet.layers.activations import Rectifier
from rectnet.registry import Registry


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Weight decay on weights; none on PReLU slopes (He et al. §2.1: decay biases PReLU towards ReLU)
    unless `decay_slopes`; none on biases when `decay_bias` is false."""
    slopes = {id(p) for m in model.modules() if isinstance(m, Rectifier) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (id(param) in slopes and not cfg.decay_slopes) or (name.endswith("bias") and not cfg.decay_bias)
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
SCHEDULES: Registry[Callable[[torch.optim.Optimizer, ScheduleConfig], Scheduler]] = Registry("schedule")

SCHEDULES.register("constant")(lambda opt, cfg: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[]))
SCHEDULES.register("step")(lambda opt, cfg: torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma))
SCHEDULES.register("multistep")(
    lambda opt, cfg: torch.optim.lr_scheduler.MultiStepLR(opt, sorted(cfg.milestones), cfg.gamma)
)
SCHEDULES.register("plateau")(
    lambda opt, cfg: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.gamma, patience=cfg.patience, threshold=cfg.threshold, min_lr=cfg.min_lr
    )
)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> Scheduler:
    return SCHEDULES.get(cfg.name)(optimizer, cfg)


def step_schedule(schedule: Scheduler, top1_err: float) -> None:
    """Advance one epoch; the plateau schedule watches the test top-1 error ("when the error plateaus", §3)."""
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
        schedule.step(top1_err)
    else:
        schedule.step()
