"""The loss's sharpest curvature: Lanczos on Hessian-vector products, the SGD step size it allows, and the
in-training watch (`trainer.sharpness_every_steps`) that follows it through a run.

The probe at init (`python -m rectnet.analysis.sharpness`) and the watch share this code. Why the watch:
training changes the curvature. Full-batch and SGD training sharpen until lr x lambda_max reaches the
stability bound and hover there ("edge of stability", Cohen et al. 2021); a net whose curvature rises past the
bound faster than training can flatten it spikes or diverges later in the run, where the probe at init saw a
comfortable margin. The watch measures lambda_max on the step's own batch every N steps and logs the ratio
lr / lr_max: a ratio near or above 1 before a spike names the cause.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.config import OptimConfig
from rectnet.engine.optim import param_groups

Vector = list[torch.Tensor]  # one tensor per parameter, the layout of model.parameters()


@dataclass
class TopEigen:
    value: float
    vector: Vector
    product: Vector  # H v for the returned vector
    iterations: int
    converged: bool


def _dot(a: Vector, b: Vector) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _scale(a: Vector, factor: float) -> Vector:
    return [x * factor for x in a]


def top_eigen(
    hvp: Callable[[Vector], Vector], like: Vector, iters: int = 30, tol: float = 1e-3, seed: int = 0
) -> TopEigen:
    """The algebraically largest eigenvalue of the symmetric operator `hvp`, by Lanczos iteration.

    Lanczos (with full reorthogonalization) builds an orthonormal Krylov basis q_1..q_k in which the operator
    is tridiagonal; the largest eigenvalue of that k x k matrix (a Ritz value) converges to the operator's
    largest one from below, typically in a few tens of products. Plain power iteration does not do here: a
    Hessian at init is indefinite, and when the classifier starts at zero its eigenvalues come in +/- pairs
    of equal size (the mixed classifier/feature block), where power iteration's Rayleigh quotient hovers near
    0 instead of converging. Stops when the top Ritz value changes by less than `tol` (relative); the returned
    vector is the Ritz vector and `product` its H v (one extra product).
    """
    generator = torch.Generator().manual_seed(seed)
    q = [torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) for x in like]
    q = _scale(q, 1 / math.sqrt(_dot(q, q)))
    basis, alphas, betas = [q], [], []
    value, converged = math.nan, False
    w = hvp(q)
    for k in range(1, iters + 1):
        alpha = _dot(w, basis[-1])
        alphas.append(alpha)
        ritz = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))[-1].item()
        if k > 1 and abs(ritz - value) <= tol * abs(ritz):
            value, converged = ritz, True
            break
        value = ritz
        for b in basis:  # full reorthogonalization: keeps the basis orthonormal in floating point
            w = [x - _dot(w, b) * y for x, y in zip(w, b, strict=True)]
        beta = math.sqrt(_dot(w, w))
        if k == iters or beta <= 1e-10 * max(abs(value), 1e-30):  # done, or the Krylov space is exhausted
            converged = converged or beta <= 1e-10 * max(abs(value), 1e-30)
            break
        betas.append(beta)
        basis.append(_scale(w, 1 / beta))
        w = [x - beta * y for x, y in zip(hvp(basis[-1]), basis[-2], strict=True)]
    _, vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
    weights = vectors[:, -1].tolist()
    vector = [sum(c * b[i] for c, b in zip(weights, basis, strict=False)) for i in range(len(like))]
    vector = _scale(vector, 1 / math.sqrt(_dot(vector, vector)))
    product = hvp(vector)
    return TopEigen(_dot(vector, product), vector, product, len(alphas) + 1, converged)


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    return t + torch.diag(off, 1) + torch.diag(off, -1)


def lr_limit(lambda_max: float, optim: OptimConfig) -> float:
    """Largest stable SGD learning rate on curvature `lambda_max` (heavy ball; Nesterov when configured)."""
    if lambda_max <= 0:
        return math.inf
    mu = optim.momentum
    bound = 2 * (1 + mu) / (1 + 2 * mu) if optim.nesterov else 2 * (1 + mu)
    return bound / lambda_max


def loss_hvp(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    average: Callable[[Vector], Vector] | None = None,
) -> tuple[Callable[[Vector], Vector], list[nn.Parameter], float]:
    """(H v for the mean training loss over `batches` + the optimizer's L2 term, the parameters, the loss at these
    weights). The L2 term is the one SGD descends: each parameter's decay from its group (none on PReLU slopes,
    none on biases under `decay_bias=false`), so lambda_max is the curvature of the objective the run follows.

    Each batch's forward pass runs once (so dropout keeps one mask) and its gradient graph is retained;
    every product then costs one double-backward per batch. `average` turns this process's product into the
    mean over processes (DDP: each holds its shard of the global batch, and the mean of the shards' Hessians
    is the global batch's), so every rank runs the same Lanczos iteration.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = {id(p): group["weight_decay"] for group in param_groups(model, optim) for p in group["params"]}
    grads, loss_sum = [], 0.0
    for images, labels in batches:
        loss = F.cross_entropy(model(images).float(), labels) / len(batches)
        loss_sum += loss.item()
        grads.append(torch.autograd.grad(loss, params, create_graph=True))

    def hvp(v: Vector) -> Vector:
        out = [decay[id(p)] * x for p, x in zip(params, v, strict=True)]
        for grad in grads:
            dot = sum((g * x).sum() for g, x in zip(grad, v, strict=True))
            for acc, h in zip(out, torch.autograd.grad(dot, params, retain_graph=True), strict=True):
                acc.add_(h)
        return average(out) if average else out

    return hvp, params, loss_sum


def flat_average(ranks_sum: Callable[[torch.Tensor], torch.Tensor], world_size: int) -> Callable[[Vector], Vector]:
    """The mean over ranks of a Vector, in one all-reduce of the flattened tensors (`ranks_sum`: Dist.sum)."""

    def average(vector: Vector) -> Vector:
        flat = ranks_sum(torch.cat([x.reshape(-1) for x in vector])) / world_size
        out, at = [], 0
        for x in vector:
            out.append(flat[at : at + x.numel()].view_as(x).to(x.device))
            at += x.numel()
        return out

    return average


@dataclass(frozen=True)
class Sharpness:
    """One measurement of the watch: lambda_max of the training loss at global step `step`, the lr of the next
    step, and lr / lr_max (above 1: the sharpest direction grows from step to step)."""

    step: int
    epoch: int
    lambda_max: float
    lr: float
    lr_ratio: float
    loss: float
    products: int

    def as_record(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "lambda_max": self.lambda_max,
            "lr": self.lr,
            "lr_ratio": self.lr_ratio,
            "loss": self.loss,
            "products": self.products,
        }


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def watch_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    optim: OptimConfig,
    lr: float,
    iters: int,
    seed: int,
    average: Callable[[Vector], Vector] | None = None,
    tol: float = 1e-3,
) -> tuple[float, float, int] | None:
    """(lambda_max, loss, products) on `batch` at the model's current weights, in fp32, to `tol` (the relative
    change of the Lanczos estimate, which approaches lambda_max from below, that stops), without touching the
    run: the RNG streams (dropout) are forked, buffers (BatchNorm's running statistics) restored and no .grad
    written, so a run with the watch trains exactly as one without it. None when the loss is not finite (the
    loop's own check stops the run)."""
    images, labels = batch
    devices = [images.device] if images.device.type == "cuda" else []
    saved = _buffers(model)
    with torch.random.fork_rng(devices=devices):
        hvp, params, loss = loss_hvp(model, [(images, labels)], optim, average)
        if average is not None:  # every rank sees the same loss, hence the same decision below
            loss = float(average([torch.tensor([loss], device=images.device)])[0])
        if not math.isfinite(loss):
            return None
        top = top_eigen(hvp, [p.detach() for p in params], iters, tol, seed)
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.copy_(value)
    return top.value, loss, top.iterations
