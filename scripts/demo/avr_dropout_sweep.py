"""AVR's first 300 steps on real CIFAR-10 under several dropout rates (the sweep behind AVR's own rate, 0.1).

    python scripts/demo/avr_dropout_sweep.py --data DATA [--rates default 0.2 0.1 0.05 0] [--act avr]
        [--center | --cancel-mean] [--lr 0.01] [--bias B] [--width 0.25]

A plain SGD loop, kept outside train.py so that only the dropout rate changes: ConvPool-CNN-C at quarter width,
the default init, lr 0.01 (`--lr`), momentum 0.9, weight decay 1e-3, batch 128 drawn with replacement from the
first 10,000 training images (per-channel normalized, no augmentation), seed 0. "default" is the model's own rates
(Springenberg's 0.2 / 0.5). Prints the mean training loss of each 25 steps (chance: ln 10 = 2.303).
`--center` makes the filters of conv2..conv8 sum to zero with the std scaled by 1/sqrt(1 - 2/pi), the forward
condition for zero-sum filters reading AVR; `--cancel-mean` instead sets the biases of conv2..conv8 so that
each channel's response has zero mean on the first 256 images at init (a data-dependent init). rectnet uses
neither (docs/recipes.md, AVR's slow start). `--bias B` sets the initial bias of conv1..conv8 (default: AVR's own,
0.5; `--bias 0` is He et al.'s b = 0).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from rectnet.config import DatasetConfig
from rectnet.data import load_dataset
from rectnet.models.zoo import create


def center_filters(model: torch.nn.Module) -> None:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[1:-1]:  # the layers reading a rectifier, not the classifier
            w = conv.weight.view(conv.weight.shape[0], -1)
            std = w.std()
            w.sub_(w.mean(1, keepdim=True)).mul_(std / w.std() / math.sqrt(1 - 2 / math.pi))


def mean_response(model: torch.nn.Module, conv: torch.nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    found = []
    hook = conv.register_forward_hook(lambda m, i, out: found.append(out.mean((0, 2, 3))))
    model(images)
    hook.remove()
    return found[0]


def cancel_mean_responses(model: torch.nn.Module, images: torch.Tensor) -> None:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        for conv in convs[1:-1]:  # in data-flow order: each bias is set on the responses the ones before give
            conv.bias.sub_(mean_response(model, conv, images))
    model.train()


def set_biases(model: torch.nn.Module, bias: float) -> None:
    """conv1..conv8's biases (every layer but the classifier) at `bias`."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[:-1]:
            conv.bias.fill_(bias)


def losses(x: torch.Tensor, y: torch.Tensor, rate: float | None, args: argparse.Namespace) -> list[float]:
    torch.manual_seed(0)
    model = create("convpool_cnn_c", act=args.act, init="kaiming", width=args.width, dropout=rate)
    if args.bias is not None:
        set_biases(model, args.bias)
    if args.center:
        center_filters(model)
    if args.cancel_mean:
        cancel_mean_responses(model, x[:256])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-3)
    draw = torch.Generator().manual_seed(0)
    found = []
    for _ in range(args.steps):
        idx = torch.randint(0, len(x), (128,), generator=draw)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        found.append(loss.item())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 root (the python-pickle layout)")
    parser.add_argument("--rates", nargs="*", default=["default", "0.2", "0.1", "0.05", "0"])
    parser.add_argument("--act", default="avr")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--center", action="store_true")
    start.add_argument("--cancel-mean", action="store_true")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--bias", type=float, default=None, help="conv1..conv8's initial bias (default: the model's)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = DatasetConfig(name="cifar10", root=args.data, num_train=10000, num_test=100, num_classes=10)
    train = load_dataset(cfg, 0).train
    x = train.images.float() / 255
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    for rate in args.rates:
        found = losses(x, train.labels, None if rate == "default" else float(rate), args)
        means = [round(sum(found[i : i + 25]) / 25, 3) for i in range(0, len(found), 25)]
        start = " centered" if args.center else " mean-cancelled" if args.cancel_mean else ""
        start += f" bias {args.bias}" if args.bias is not None else ""
        print(f"{args.act} dropout {rate}{start} lr {args.lr}: loss per 25 steps {means}", flush=True)


if __name__ == "__main__":
    main()
