"""Stability probe: the sharpest curvature of the loss at initialisation and the learning rate it allows.

    python -m rectnet.analysis.sharpness [--batches K] [--iters N] [Hydra overrides, as for train.py]
    python -m rectnet.analysis.sharpness activation=prelu dataset.root=data      # the default recipe
    python -m rectnet.analysis.sharpness experiment=small14_prelu dataset.root=/data/imagenet
    python -m rectnet.analysis.sharpness --checkpoint RUN/checkpoints/last.pt <the run's overrides>

Run it before spending GPU time on a recipe. The config is composed as train.py composes it; the model is
built and initialised as train.py builds it (same seed; init=lsuv rescaled on its batches, as there), and
`--batches` real training batches of `trainer.batch_size` images come from the configured dataset, augmented as
in epoch 1. The model is in train
mode, as during training: dropout is on (one fixed mask per batch, drawn once) and BatchNorm normalises with
batch statistics.

The largest eigenvalue lambda_max of the Hessian of the mean cross-entropy loss (plus weight decay) is
found by Lanczos iteration on Hessian-vector products (Pearlmutter 1994: differentiate the gradient's dot
product with v; one double-backward per product through one retained graph). Heavy-ball SGD,
v <- mu v + g, theta <- theta - eta v (PyTorch's SGD without dampening), is stable on a quadratic with
curvature lambda only if eta lambda < 2 (1 + mu) (Polyak 1964; with Nesterov momentum:
eta lambda < 2 (1 + mu) / (1 + 2 mu)). So lr_max = 2 (1 + mu) / lambda_max; a configured lr above it makes
the sharpest direction grow geometrically from the first steps, and the loss spikes or becomes NaN before
the curvature has a chance to fall. lambda_max is a property of the starting point only: training changes
it, so a recipe well inside the limit (ratio lr / lr_max < 1) can still go wrong later (that is what
warmup and schedules are for), while a ratio far above 1 fails at once.

Which lr is checked: the lr of the first step, i.e. optim.lr x schedule.warmup_factor when the recipe warms
up (a linear warmup exists to start below the limit while the curvature falls; Goyal et al. 2017, §2.2),
else optim.lr. `--checkpoint` measures a run's saved weights instead of the init (e.g. at the end of warmup)
against the lr that run had reached there (the checkpoint's optimizer state): whether the peak lr is stable
once the warmup has done its work.

Where the curvature sits: the top eigenvector v is split by layer, and each layer reports its share
v_l . (H v)_l / lambda_max of the eigenvalue (the shares sum to 1) and the eigenvector's mass |v_l|^2. A
layer with a large share is the one whose init (or learning rate) sets the limit.

The last line printed is one JSON object with at least: lambda_max, lr, lr_max_stable, stable, ratio,
iterations, converged, initial_loss, layers (name, share, mass).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch
from torch import nn

from rectnet.analysis import command
from rectnet.config import TrainConfig
from rectnet.data.sources import Source, SourceContext, make_source
from rectnet.engine import checkpoint
from rectnet.engine.curvature import TopEigen, loss_hvp, lr_limit, top_eigen
from rectnet.engine.data_init import run_lsuv
from rectnet.engine.distributed import Dist
from rectnet.engine.runtime import seed_everything
from rectnet.layers.facts import layer_facts
from rectnet.models.build import build_model
from rectnet.summary import compose_settings


def layer_breakdown(model: nn.Module, top: TopEigen) -> list[dict]:
    """Per weight layer (its weights with its BatchNorm's and activation's parameters, under the layer's name,
    `rectnet.layers.facts`; any other module under its path): its share of lambda_max (v_l . (Hv)_l / lambda)
    and the eigenvector's mass on it."""
    owner = {id(p): name for name, module in model.named_modules() for p in module.parameters(recurse=False)}
    for layer in layer_facts(model):
        for path in filter(None, (layer.module, layer.norm, layer.act)):
            owner |= {id(p): layer.name for p in model.get_submodule(path).parameters(recurse=False)}
    rows: dict[str, dict] = {}
    for p, v, hv in zip((p for p in model.parameters() if p.requires_grad), top.vector, top.product, strict=True):
        row = rows.setdefault(owner[id(p)], {"name": owner[id(p)], "share": 0.0, "mass": 0.0})
        row["share"] += float((v * hv).sum()) / top.value if top.value else 0.0
        row["mass"] += float((v * v).sum())
    return list(rows.values())


def _real_batches(source: Source, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for images, labels, _ in source.train_epoch(1):
        batches.append((images, labels))
        if len(batches) == count:
            break
    return batches


def start_lr(settings: TrainConfig) -> float:
    """The lr of the first step: optim.lr scaled by the warmup's start factor when the schedule warms up."""
    warms_up = settings.schedule.warmup_steps or settings.schedule.warmup_epochs
    return settings.optim.lr * (settings.schedule.warmup_factor if warms_up else 1.0)


def load_weights(model: nn.Module, path: str) -> float:
    """Put a run's checkpointed weights into `model`; returns the lr the run had reached (its optimizer's)."""
    state = checkpoint.load(path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise checkpoint.CheckpointError(
            f"{path} does not fit the configured model; pass the run's own overrides ({first})"
        ) from None
    return float(state["optimizer"]["param_groups"][0]["lr"])


def prepare(overrides: Sequence[str]) -> tuple[TrainConfig, Source, nn.Module]:
    """Settings, data source and initialised model (train mode), built as train.py builds them."""
    settings = compose_settings(overrides)
    if settings.trainer.threads:
        torch.set_num_threads(settings.trainer.threads)
    seed_everything(settings.seed)  # as train.py: the same data and initial weights
    source = make_source(settings, SourceContext(torch.device("cpu")))
    model = build_model(settings, settings.dataset.num_classes, source.in_chans).train()
    if settings.init.name == "lsuv":  # its rescaling on the first training batches, as train.py runs it
        run_lsuv(settings, model, source, Dist(), settings.trainer.batch_sizes(1)[1])
    seed_everything(settings.seed)  # dropout masks
    return settings, source, model


def measure(
    settings: TrainConfig,
    source: Source,
    model: nn.Module,
    batches: int = 1,
    iters: int = 30,
    tol: float = 1e-3,
    lr: float | None = None,
) -> dict:
    """lambda_max of the model's loss on the source's first `batches` training batches, and what it implies
    for `lr` (default: the first step's, `start_lr`)."""
    hvp, params, loss = loss_hvp(model, _real_batches(source, batches), settings.optim)
    top = top_eigen(hvp, [p.detach() for p in params], iters, tol, settings.seed)
    lr = start_lr(settings) if lr is None else lr
    limit = lr_limit(top.value, settings.optim)
    return {
        "model": settings.model.name,
        "activation": settings.activation.name,
        "init": settings.init.name,
        "mode": settings.init.mode,
        "batch_size": settings.trainer.batch_size,
        "batches": batches,
        "initial_loss": loss,
        "chance_loss": math.log(settings.dataset.num_classes),
        "lambda_max": top.value,
        "lr": lr,
        "peak_lr": settings.optim.lr,
        "lr_max_stable": limit,
        "ratio": lr / limit,
        "stable": lr < limit,
        "iterations": top.iterations,
        "converged": top.converged,
        "layers": layer_breakdown(model, top),
    }


def probe(
    overrides: Sequence[str], batches: int = 1, iters: int = 30, tol: float = 1e-3, checkpoint_path: str | None = None
) -> dict:
    """Build the configured model and data as train.py does and measure lambda_max at initialisation (or at
    `checkpoint_path`'s weights, against the lr the run had reached there)."""
    settings, source, model = prepare(overrides)
    lr = load_weights(model, checkpoint_path) if checkpoint_path else None
    result = measure(settings, source, model, batches, iters, tol, lr)
    return {**result, "checkpoint": checkpoint_path}


def _lr_origin(result: dict) -> str:
    if result.get("checkpoint"):
        return " (the checkpoint's)"
    return f" (first step of warmup to {result['peak_lr']:.4g})" if result["lr"] != result["peak_lr"] else " (optim.lr)"


def format_report(result: dict) -> str:
    rows = [f"{'layer':<24} {'share':>8} {'mass':>8}"]
    for row in result["layers"]:
        rows.append(f"{row['name']:<24} {row['share']:>8.3f} {row['mass']:>8.3f}")
    verdict = "stable" if result["stable"] else "UNSTABLE"
    rows.append(
        f"lambda_max {result['lambda_max']:.4g} ({result['iterations']} products"
        f"{'' if result['converged'] else ', not converged'}); initial loss {result['initial_loss']:.4g} "
        f"(chance {result['chance_loss']:.4g}); largest stable lr {result['lr_max_stable']:.4g}; "
        f"lr {result['lr']:.4g}{_lr_origin(result)}: {verdict} (lr / limit = {result['ratio']:.3g})"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.parser(
        "sharpness", "Largest Hessian eigenvalue at init and the largest stable SGD learning rate it implies."
    )
    parser.add_argument("--batches", type=int, default=1, help="real training batches the loss averages (1)")
    parser.add_argument("--iters", type=int, default=30, help="most Lanczos steps (Hessian-vector products) (30)")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative change of lambda that stops (1e-3)")
    parser.add_argument("--checkpoint", help="measure this checkpoint's weights instead of the init")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. activation=prelu optim.lr=0.01")
    command.run(parser, argv, _measure)


def _measure(args: argparse.Namespace) -> dict:
    if args.batches < 1 or args.iters < 1 or args.tol <= 0:
        raise ValueError("--batches and --iters must be >= 1 and --tol > 0")
    result = probe(args.overrides, args.batches, args.iters, args.tol, args.checkpoint)
    print(format_report(result))
    return result


if __name__ == "__main__":
    main()
