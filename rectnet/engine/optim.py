"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    """SGD; fused (one kernel for all parameters' updates instead of a few per tensor list) on CUDA, where
    kernel launches weigh on small nets' steps. On the CPU the foreach loop stays: the fused CPU kernel
    rounds differently in the last bits, and CPU runs reproduce earlier results bit for bit."""
    groups = param_groups(model, cfg)
    fused = fused_sgd_applies(list(model.parameters()))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)


def fused_sgd_applies(params: list[torch.Tensor]) -> bool:
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
SCHEDULES: Registry[Callable[[torch.optim.Optimizer, ScheduleConfig, int], Scheduler]] = Registry("schedule")

SCHEDULES.register("constant")(lambda opt, cfg, epochs: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[]))
SCHEDULES.register("step")(lambda opt, cfg, epochs: torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma))
SCHEDULES.register("multistep")(
    lambda opt, cfg, epochs: torch.optim.lr_scheduler.MultiStepLR(opt, sorted(cfg.milestones), cfg.gamma)
)
SCHEDULES.register("cosine")(
    lambda opt, cfg, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=cfg.min_lr)
)
SCHEDULES.register("plateau")(
    lambda opt, cfg, epochs: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.gamma, patience=cfg.patience, threshold=cfg.threshold, min_lr=cfg.min_lr
    )
)


@dataclass
class Schedule:
    """An epoch schedule (stepped after each epoch) times an optional linear warmup (stepped after each step).

    Both are torch.optim.lr_scheduler objects in their chainable form, each multiplying the learning rate
    the other left: lr(step) = lr * warmup(step) * epoch_factor(epoch). Warmup runs from
    `warmup_factor * lr` to lr over its steps and then stays at 1, whatever the epoch schedule does.
    """

    epoch: Scheduler
    warmup: torch.optim.lr_scheduler.LinearLR | None = None

    def after_step(self) -> None:
        if self.warmup is not None and self.warmup.last_epoch < self.warmup.total_iters:
            self.warmup.step()

    def after_epoch(self, top1_err: float) -> None:
        """Advance one epoch; the plateau schedule watches the top-1 error ("when the error plateaus", §3)."""
        if isinstance(self.epoch, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.epoch.step(top1_err)
        else:
            self.epoch.step()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch.state_dict(), "warmup": self.warmup.state_dict() if self.warmup else None}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state:  # checkpoints written before warmup existed hold the epoch schedule's state
            state = {"epoch": state, "warmup": None}
        self.epoch.load_state_dict(state["epoch"])
        if self.warmup is not None and state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    """schedule.warmup_steps, or schedule.warmup_epochs converted to steps (at least one step when set)."""
    if cfg.warmup_steps:
        return cfg.warmup_steps
    return max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs else 0


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int = 1, steps_per_epoch: int = 1
) -> Schedule:
    """The configured epoch schedule over `epochs` epochs, with warmup when schedule.warmup_* asks for it."""
    epoch = SCHEDULES.get(cfg.name)(optimizer, cfg, epochs)
    steps = warmup_steps(cfg, steps_per_epoch)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, cfg.warmup_factor, 1.0, steps) if steps else None
    return Schedule(epoch, warmup)


def step_schedule(schedule: Schedule, top1_err: float) -> None:
    """Advance one epoch (see `Schedule.after_epoch`)."""
    schedule.after_epoch(top1_err)
