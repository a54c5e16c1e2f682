"""LSUV, layer-sequential unit-variance init (Mishkin & Matas 2016, "All you need is a good init", ICLR).

Their Algorithm 1: start every conv/linear weight orthonormal (Saxe et al. 2014), then, layer by layer in forward
order, pass a mini-batch and divide the layer's weight by the std of its output, until that output's variance is
1 within Tol_var (0.1) or T_max passes (10) are spent. The start is `init_model` with init=lsuv (distribution
`orthogonal`, biases 0: rectnet.layers.init); `lsuv` below is the rescaling. He et al.'s Eq. 10 keeps the
output variance from a formula; LSUV measures it, so it needs no gain for the activation, any architecture
included, at the price of a batch of data.

How rectnet runs it, where the paper leaves it open:

* Forward order is the order in which the layers compute on the batch (forward hooks): residual and branched
  nets (converted timm models) need no graph. A pass stops at the layer being rescaled: what comes after it
  cannot change its output.
* The variance is of all the layer's outputs on the batch (every position and channel), from sums: count, sum
  and sum of squares over the batches this rank holds, then summed over ranks by `reduce`. Under DDP every rank
  holds its shard of the same global batch, so every rank gets the same sums and the same scales: identical
  weights without a broadcast.
* The model runs in training mode, so LSUV sets the variance that the first steps see: inverted dropout's
  1/(1-p) included (what init=kaiming's count_dropout derives), batch norm normalising the batch. Each pass
  draws the same dropout masks (the global RNG forked and seeded per pass): the variance is then a function of
  the weight alone, and one rescale of a layer that is linear in its weight lands on 1. The global RNG and the
  norms' running statistics are left as they were.
* The class-score layer (`rectnet.layers.init.is_head`) gets head_scale times its LSUV scale, as InitSpec's
  head_scale does for the other inits: 0 (the default) starts it at zero and costs no pass.
* A layer with a model's fixed `init_std` keeps it: a model config wins over every init (rectnet.layers.init).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rectnet.layers.facts import WEIGHT_LAYERS, WeightLayer, weight_layers
from rectnet.layers.init import is_head

Reduce = Callable[[torch.Tensor], torch.Tensor]  # a sum over ranks (identity on one process)


@dataclass(frozen=True)
class ScaledLayer:
    """What LSUV did to one layer: its name, the factor its weight got in all, its output variance on the batch
    after the last rescale (None where it was not measured: the zero head, a fixed init_std), the passes."""

    name: str
    scale: float
    variance: float | None
    passes: int


class _Reached(Exception):
    """Ends a forward pass at the layer being measured."""


def lsuv(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    tolerance: float = 0.1,
    max_iters: int = 10,
    head_scale: float = 0.0,
    reduce: Reduce = lambda t: t,
    seed: int = 0,
) -> list[ScaledLayer]:
    """Rescale every conv/linear weight of `model` until its output variance on `batches` is 1 within `tolerance`,
    at most `max_iters` rescalings per layer; returns what each layer got, in forward order. `model` is started
    by `init_model` with init=lsuv and the same head_scale (a layer that starts at zero stays there). `reduce`
    sums a tensor over ranks; `seed` fixes the dropout masks of the passes."""
    if not tolerance > 0 or max_iters < 1:
        raise ValueError(f"LSUV needs tolerance > 0 and max_iters >= 1, got {tolerance} and {max_iters}")
    layers = {id(layer.module): layer for layer in weight_layers(model)}
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        measure = _Measure(model, batches, reduce, seed)
        done = []
        for module in measure.order():
            layer = layers.get(id(module))
            name = layer.name if layer is not None else measure.names[module]
            if hasattr(module, "init_std"):
                done.append(ScaledLayer(name, 1.0, None, 0))
            elif layer is not None and is_head(layer) and head_scale == 0:
                with torch.no_grad():
                    module.weight.zero_()
                done.append(ScaledLayer(name, 0.0, None, 0))
            else:
                done.append(_rescale(module, name, measure, tolerance, max_iters, head_scale, layer))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    return done


def _rescale(
    module: nn.Module,
    name: str,
    measure: _Measure,
    tolerance: float,
    max_iters: int,
    head_scale: float,
    layer: WeightLayer | None,
) -> ScaledLayer:
    """Algorithm 1's inner loop for one layer: W <- W / sqrt(Var(B_L)) until |Var(B_L) - 1| < tolerance."""
    scale, passes = 1.0, 1
    variance = measure.variance(module)
    while abs(variance - 1.0) >= tolerance and passes <= max_iters:
        if not (variance > 0 and math.isfinite(variance)):
            break  # a dead layer (all-zero output) or an overflow: no scale makes it 1, leave it as measured
        factor = 1.0 / math.sqrt(variance)
        with torch.no_grad():
            module.weight.mul_(factor)
        scale *= factor
        variance = measure.variance(module)
        passes += 1
    if layer is not None and is_head(layer) and head_scale != 1:
        with torch.no_grad():
            module.weight.mul_(head_scale)
        return ScaledLayer(name, scale * head_scale, None, passes)
    return ScaledLayer(name, scale, variance, passes)


class _Measure:
    """Forward passes of `model` on the batches, each with the same dropout masks, stopped at one layer."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], reduce: Reduce, seed: int) -> None:
        self.model, self.batches, self.reduce, self.seed = model, batches, reduce, seed
        self.names = {m: path for path, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}

    def order(self) -> list[nn.Module]:
        """The weight layers in the order they compute on the first batch (each once, at its first call)."""
        seen: dict[nn.Module, None] = {}
        hooks = [m.register_forward_hook(lambda m, i, o: seen.setdefault(m)) for m in self.names]
        try:
            self._pass(self.batches[0], 0)
        finally:
            for hook in hooks:
                hook.remove()
        return list(seen)

    def variance(self, module: nn.Module) -> float:
        """The variance of all of `module`'s outputs over every batch, on every rank (population variance)."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.batches[0].device)

        def record(m, inputs, output):
            y = output.detach().double()
            sums.add_(torch.stack([y.new_tensor(float(y.numel())), y.sum(), y.square().sum()]))
            raise _Reached

        hook = module.register_forward_hook(record)
        try:
            for index, batch in enumerate(self.batches):
                self._pass(batch, index)
        finally:
            hook.remove()
        n, total, squares = self.reduce(sums).tolist()
        return squares / n - (total / n) ** 2

    def _pass(self, batch: torch.Tensor, index: int) -> None:
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + index)  # batch `index` sees the same dropout masks in every pass
            try:
                self.model(batch)
            except _Reached:
                pass
