"""Why a net does not start: the first SGD step per weight layer, relative to the layer's weights, at init.

    python scripts/demo/first_step.py [--input-scale S ...] [--batches K] OVERRIDES...
    python scripts/demo/first_step.py --input-scale 1 60 experiment=fig2_b_xavier dataset=cifar10 \
        dataset.per_pixel_mean=false dataset.lighting_std=0 dataset.root=data model.width=0.125 model.dropout=0

Builds the model and its first training batches as train.py does (`rectnet.analysis.sharpness.prepare`), takes
the gradient of the mean cross-entropy over `--batches` batches, and prints per weight layer
lr x |dL/dW| / |W| (the relative change the first step makes; the class-score layer, started at zero, gets
lr x |dL/dW| alone), with the output's std and the loss. A layer whose relative step is ~1e-7 needs ~1e7 steps
to change by its own size: the net has not "stalled", it cannot move yet. `--input-scale S` multiplies the
batch by S first: with S = 60 a per-channel-normalized batch has the spread of He et al.'s unscaled pixels
(mean image subtracted only, std about 60 per channel), the input the paper's Xavier runs saw. One JSON line per
scale.
"""

from __future__ import annotations

import argparse
import json

import torch.nn.functional as F

from rectnet.analysis.sharpness import _real_batches, prepare
from rectnet.layers.facts import weight_layers


def first_step(overrides: list[str], scale: float, batches: int) -> dict:
    settings, source, model = prepare(overrides)
    layers = weight_layers(model)
    model.zero_grad()
    losses, spread = [], []
    for images, labels in _real_batches(source, batches):
        logits = model(images * scale)
        loss = F.cross_entropy(logits.float(), labels) / batches
        loss.backward()
        losses.append(loss.item() * batches)
        spread.append(logits.float().std().item())
    lr = settings.optim.lr
    rows = []
    for layer in layers:
        weight = layer.module.weight
        grad = lr * weight.grad.norm().item()
        size = weight.norm().item()
        rows.append({"layer": layer.facts.name, "step": grad, "relative": grad / size if size else None})
    return {
        "scale": scale,
        "loss": sum(losses) / len(losses),
        "logit_std": sum(spread) / len(spread),
        "lr": lr,
        "layers": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-scale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for scale in args.input_scale:
        found = first_step(args.overrides, scale, args.batches)
        print(f"input x {scale:g}: loss {found['loss']:.4f}, logit std {found['logit_std']:.3g}, lr {found['lr']:g}")
        for row in found["layers"]:
            relative = "(starts at 0)" if row["relative"] is None else f"{row['relative']:.2e}"
            print(f"  {row['layer']:<10} lr|g| {row['step']:.2e}  relative {relative}")
        print(json.dumps(found))


if __name__ == "__main__":
    main()
