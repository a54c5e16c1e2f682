"""How alike the network's features are for different images at init, layer by layer, per activation: the mean
cosine between every pair of images' inputs to each conv/fc layer (1.0: every image looks the same to that
layer, so nothing the classifier can learn from depends on the image).

    python scripts/demo/correlation.py --data data [--width 0.25] [--images 64] [--activations relu softplus ...]
        [overrides: init.center=false shows softplus without its centring bias, init.center=true centres any]

He et al.'s variance argument (2015 §2.2) keeps the size of the signal; it is blind to its direction. An
activation with a large mean (softplus: E[f(z)] = 0.81 for z ~ N(0, 1)) adds the same positive vector to every
image's features, layer after layer, until the common part is all that is left (the correlation map of Poole et
al. 2016 and Schoenholz et al. 2017 converging to c = 1). Prints one row per activation and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch
from torch import nn

from rectnet.models.build import build_model
from rectnet.summary import compose_settings


def test_images(data: Path, count: int) -> torch.Tensor:
    """The first `count` CIFAR-10 test images, normalised per channel."""
    with open(data / "cifar-10-batches-py" / "test_batch", "rb") as file:
        batch = pickle.load(file, encoding="latin1")
    x = torch.tensor(batch["data"][:count], dtype=torch.float32).reshape(-1, 3, 32, 32) / 255
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    flat = features.flatten(1)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosines = unit @ unit.T
    return cosines[~torch.eye(len(flat), dtype=torch.bool)].mean().item()


def cosines(activation: str, images: torch.Tensor, width: float, seed: int, overrides: list[str]) -> list[float]:
    """The mean pairwise cosine of each weight layer's input, in forward order, at init."""
    torch.manual_seed(seed)
    settings = compose_settings([f"activation={activation}", f"model.width={width}", f"seed={seed}", *overrides])
    model = build_model(settings, 10, 3).eval()
    inputs: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda _m, args, _out: inputs.append(args[0].detach()))
    with torch.no_grad():
        model(images)
    return [round(mean_pairwise_cosine(x), 4) for x in inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activations", nargs="+", default=["relu", "gelu", "elu", "tanh", "softplus"])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. init.center=false")
    args = parser.parse_args()
    images = test_images(args.data, args.images)
    table = {a: cosines(a, images, args.width, args.seed, args.overrides) for a in args.activations}
    for activation, row in table.items():
        print(f"{activation:>10}: " + " ".join(f"{c:.3f}" for c in row))
    print(json.dumps({"width": args.width, "images": args.images, "seed": args.seed, "cosines": table}))


if __name__ == "__main__":
    main()
