"""Why AVR starts slowly: what ConvPool-CNN-C's initial features look like per activation, on real CIFAR-10.

    python scripts/demo/avr_plateau.py --data DATA [--images 4000] [--width 0.25]

At the default init (Kaiming Eq. 10, no dropout, seed 0) and for each activation (AVR with zero biases and with
its initial bias, 0.5), on the first `--images`
training images (per-channel normalized):

* cos_conv8: the mean cosine similarity between two different images' conv8 responses (the net's last
  rectified layer, flattened); `theory` gives the value the infinite-width correlation map predicts for two
  uncorrelated inputs after the eight rectified layers with zero biases (ReLU: Cho & Saul 2009's arc-cosine
  kernel; AVR: E|u||v| = (2/pi)(sqrt(1-c^2) + c arcsin c) for unit Gaussians of correlation c);
* top_pc_share: the share of the globally pooled features' variance along their first principal component,
  and rms_corr, its correlation with each image's RMS (its contrast);
* probe_loss: the training loss of the classifier alone, trained on the frozen initial features by 200
  full-batch steps of SGD (lr 0.01, momentum 0.9, from zero, as the recipe starts it): how much the
  initial features let the first layer that learns lower the loss (chance: ln 10 = 2.303).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from rectnet.config import DatasetConfig
from rectnet.data import load_dataset
from rectnet.models.zoo import create

# (label, activation, its parameters): AVR with He et al.'s zero biases and with its initial bias (the default)
VARIANTS = (
    ("relu", "relu", {}),
    ("prelu", "prelu", {}),
    ("crelu", "crelu", {}),
    ("avr, bias 0", "avr", {"initial_bias": 0.0}),
    ("avr, bias 0.5", "avr", {"initial_bias": 0.5}),
)
RECTIFIED_LAYERS = 8  # conv1..conv8; conv9 is the class-score layer


def correlation_map(activation: str, c: float) -> float:
    """E[f(u) f(v)] / E[f(u)^2] for unit Gaussians u, v of correlation c (Kaiming keeps E[f^2] fixed)."""
    if activation == "relu":
        return (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
    if activation == "avr":
        return 2 / math.pi * (math.sqrt(1 - c * c) + c * math.asin(c))
    raise KeyError(activation)


def predicted_similarity(activation: str) -> float | None:
    if activation not in ("relu", "avr"):
        return None
    c = 0.0
    for _ in range(RECTIFIED_LAYERS):
        c = min(correlation_map(activation, c), 1.0)
    return c


def conv8_responses(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    name = next(n for n in dict(model.features.named_children()) if n.startswith("conv8_"))
    found = []
    hook = getattr(model.features, name).register_forward_hook(lambda m, i, out: found.append(out))
    with torch.no_grad():
        for start in range(0, len(images), 500):
            model(images[start : start + 500])
    hook.remove()
    return torch.cat(found)


def mean_pair_cosine(responses: torch.Tensor) -> float:
    flat = F.normalize(responses.flatten(1), dim=1)
    half = len(flat) // 2
    return (flat[:half] * flat[half : 2 * half]).sum(1).mean().item()


def principal_share(features: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    values, vectors = torch.linalg.eigh(torch.cov(features.T))
    along = (features - features.mean(0)) @ vectors[:, -1]
    rms = images.pow(2).mean((1, 2, 3)).sqrt()
    return (values[-1] / values.sum()).item(), abs(torch.corrcoef(torch.stack([along, rms]))[0, 1].item())


def classifier_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    weight = torch.zeros(10, features.shape[1], requires_grad=True)
    bias = torch.zeros(10, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=0.01, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(features @ weight.T + bias, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return F.cross_entropy(features @ weight.T + bias, labels).item()


def measure(
    label: str, activation: str, params: dict, images: torch.Tensor, labels: torch.Tensor, width: float
) -> dict:
    torch.manual_seed(0)
    model = create("convpool_cnn_c", act=activation, init="kaiming", width=width, dropout=0.0, **params).eval()
    responses = conv8_responses(model, images)
    features = responses.mean((2, 3))
    share, rms_corr = principal_share(features, images)
    theory = predicted_similarity(activation) if not params.get("initial_bias") else None
    return {
        "activation": label,
        "cos_conv8": round(mean_pair_cosine(responses), 3),
        "theory": None if theory is None else round(theory, 3),
        "top_pc_share": round(share, 3),
        "rms_corr": round(rms_corr, 3),
        "probe_loss": round(classifier_probe(features, labels), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 root (the python-pickle layout)")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--width", type=float, default=0.25)
    args = parser.parse_args()
    cfg = DatasetConfig(name="cifar10", root=args.data, num_train=args.images, num_test=100, num_classes=10)
    train = load_dataset(cfg, 0).train
    images = train.images.float() / 255
    images = (images - images.mean((0, 2, 3), keepdim=True)) / images.std((0, 2, 3), keepdim=True)
    rows = [measure(*variant, images, train.labels, args.width) for variant in VARIANTS]
    print("| activation | cos conv8 (theory) | top PC share | corr(top PC, image RMS) | classifier-only loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        theory = "" if r["theory"] is None else f" ({r['theory']})"
        cells = [r["activation"], f"{r['cos_conv8']}{theory}", r["top_pc_share"], r["rms_corr"], r["probe_loss"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(json.dumps({"images": args.images, "width": args.width, "rows": rows}))


if __name__ == "__main__":
    main()
