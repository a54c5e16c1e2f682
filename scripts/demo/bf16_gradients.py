"""How far bf16 autocast's gradients are from exact, per weight layer, and how much of that is bf16 itself.

    python scripts/demo/bf16_gradients.py [--steps K] OVERRIDES...
    python scripts/demo/bf16_gradients.py experiment=quickstart dataset=cifar10 dataset.root=data

Builds the model and its training batches as train.py does (`rectnet.analysis.sharpness.prepare`), trains it
K plain SGD steps in fp32 (default 10: at init the class-score layer is zero and no gradient reaches the layers
below it), then takes the gradient of the cross-entropy on the next batch four ways: in float64 (the
reference), in fp32, under bf16 autocast as train.py runs it (`trainer.precision=bf16`), and in float64 with
every weight layer's input and weight rounded to bf16 first (what autocast's convolutions and linear layers
read; the arithmetic exact). Per layer it prints |g - g_ref| / |g_ref| for the last three. Where autocast's
error is that of the rounded operands, it comes from bf16's 8-bit significand, not from how the kernels
accumulate; it grows towards the input as each layer adds its rounding to the gradient it passes down.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.analysis.sharpness import _real_batches, prepare
from rectnet.config import ConfigError
from rectnet.layers.facts import weight_layers


def gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, **how) -> list:
    """Each weight layer's weight gradient (float64) of the loss on one batch, `model` copied to `dtype`;
    how: autocast=True (bf16 autocast), round_operands=True (weight layers read bf16-rounded operands)."""
    copied = copy.deepcopy(model).to(dtype)
    layers = [layer.module for layer in weight_layers(copied)]
    if how.get("round_operands"):
        for module in layers:
            module.weight.data = _bf16(module.weight.data)
            module.register_forward_pre_hook(lambda _, args: tuple(_bf16(a) for a in args))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(how.get("autocast"))):
        loss = F.cross_entropy(copied(images.to(dtype)).float(), labels)
    loss.backward()
    return [module.weight.grad.double() for module in layers]


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def warm_up(model: nn.Module, batches: list, lr: float) -> None:
    """Plain SGD in fp32, one step per batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for images, labels in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def errors(overrides: list[str], steps: int) -> dict:
    settings, source, model = prepare(overrides)
    batches = list(_real_batches(source, steps + 1))
    warm_up(model, batches[:steps], settings.optim.lr)
    images, labels = batches[steps]
    exact = gradients(model, images, labels, torch.float64)
    ways: dict[str, Callable[[], list]] = {
        "fp32": lambda: gradients(model, images, labels, torch.float32),
        "bf16_autocast": lambda: gradients(model, images, labels, torch.float32, autocast=True),
        "bf16_operands": lambda: gradients(model, images, labels, torch.float64, round_operands=True),
    }
    found = {name: way() for name, way in ways.items()}
    rows = []
    for i, layer in enumerate(weight_layers(model)):
        size = exact[i].norm().item()
        row = {"layer": layer.facts.name}
        row |= {name: (g[i] - exact[i]).norm().item() / size if size else None for name, g in found.items()}
        rows.append(row)
    return {"model": settings.model.name, "warm_up_steps": steps, "layers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="fp32 SGD steps before measuring (>= 1)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1: at init the class-score layer is zero and the others get no gradient")
    try:
        found = errors(args.overrides, args.steps)
    except ConfigError as err:
        raise SystemExit(f"bf16_gradients.py: {err}") from None
    print(f"{'layer':<10} {'fp32':>9} {'bf16 autocast':>14} {'bf16 operands':>14}  (|g - g_float64| / |g_float64|)")
    for row in found["layers"]:
        cells = [f"{row[k]:.2e}" if row[k] is not None else "—" for k in ("fp32", "bf16_autocast", "bf16_operands")]
        print(f"{row['layer']:<10} {cells[0]:>9} {cells[1]:>14} {cells[2]:>14}")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
