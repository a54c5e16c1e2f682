"""Forward and backward variance propagation at initialisation (He et al. 2015 §2.2, Eqs. 7-14).

    python -m rectnet.analysis.propagation [--plot PATH] [Hydra overrides, as for train.py]
    python -m rectnet.analysis.propagation model=prelu_plain30 model.width=0.25 activation=relu \\
        init=kaiming init.mode=fan_in dataset.image_size=224 trainer.batch_size=16

The model is composed and built as train.py builds it (init included; `seed` seeds it), with the paper's rule
on every layer: `init.head_scale=1` and `init.count_dropout=false` unless the overrides say otherwise. One random batch,
`trainer.batch_size` images of `dataset.image_size`² N(0, 1) pixels (what per-channel normalised data looks
like) with uniform random labels, goes forward and, through the cross-entropy loss, backward. The model is
in eval mode: dropout is off and BatchNorm applies its initial running statistics (the identity, up to eps),
so the variances are those of the weight layers and rectifiers alone. For each conv/fc layer l it records

* forward_var: Var[y_l], the variance of the layer's responses (its output, before BN and activation);
* backward_var: Var[Δx_l], the variance of the loss gradient with respect to the layer's input (Eq. 11).

Over the pairs (l, l+1) of consecutive conv layers with no pooling between them it reports the geometric
means

* forward_factor = Var[y_{l+1}] / Var[y_l], which Eq. 8 predicts to be ½·n·Var[w] for ReLU (1 with
  Kaiming init, mode fan_in, Eq. 10; 1/2 with Xavier's n·Var[w] = 1);
* backward_factor = Var[Δx_l] / Var[Δx_{l+1}], which Eq. 12 predicts to be ½·n̂·Var[w] (1 with Kaiming,
  mode fan_out, Eq. 14).

So both are ~1 where the init keeps the signal, and 1/2 per layer is the Xavier-with-ReLU decay that makes the
30-layer net stall (Fig. 3).

Two effects keep a measured factor a little off the theory, which assumes unbounded maps and widths:

* Zero padding: an output on the border of a padded conv reads fewer real inputs. Measured on prelu_plain30
  (width 0.25, Kaiming fan_in, ReLU/AVR/CReLU) the forward factor is ~0.79 at CIFAR's 32x32 (the last stage's
  maps are 2x2), ~0.91 at 64, ~0.96 at 128 and 224. Analyse the ImageNet nets at >= 128 pixels; a small
  `model.width` keeps that cheap.
* Finite width: the factors of one random draw are noisy, and the geometric mean (the per-layer decay of the
  signal from the first to the last conv of a stage, since the ratios telescope) sits below the
  expected-value theory, as a log-normal's median sits below its mean. Rectifiers that drop half the signal
  (ReLU, PReLU) are the noisiest: ReLU at width 0.25, 128 px, seeds 0-4 gives 0.88-0.99 (Kaiming fan_in) and
  0.42-0.50 (Xavier); AVR 0.94-0.97.

The backward factor under mode fan_in is ~1.05 on prelu_plain30, not 1: the first conv of stages 2 and 3
doubles the filters (n̂/n = 2), and Eq. 12 gives 2^(2/24) over its 24 pairs (He et al.'s c_2/d_L remark).

The last line printed is one JSON object: model, activation, init, mode, input_size, layers, forward_var,
backward_var, forward_factor, backward_factor, pairs (the number of conv pairs averaged). With --plot, and
only if matplotlib is importable (it is not a dependency), both variances are also plotted per layer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.analysis.plotting import pyplot, save_figure
from rectnet.engine.build import build_model
from rectnet.layers.facts import weight_layers
from rectnet.layers.spp import SpatialPyramidPool
from rectnet.summary import compose_settings

# The paper's rule on every layer, the classifier too (its scale sets every backward variance measured), and
# no dropout counted (eval mode: dropout is off).
PAPER_INIT = ("init.head_scale=1", "init.count_dropout=false")
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, SpatialPyramidPool)
KINDS = {nn.Conv2d: "conv", nn.Linear: "linear"}


@dataclass
class LayerRecord:
    name: str
    kind: str  # conv | linear
    segment: int  # pooling layers run before this layer: equal segments mean "not separated by pooling"
    forward_var: float = math.nan
    backward_var: float = math.nan


def _variance(t: torch.Tensor) -> float:
    return t.detach().double().var().item()


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[LayerRecord]:
    """Forward `images`, backward the cross-entropy with `labels`; one record per conv/linear call, in order,
    under the layer's name (`rectnet.layers.facts`)."""
    records: list[LayerRecord] = []
    segment = 0

    def on_pool(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal segment
        segment += 1

    def on_layer(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # Variance now: an in-place activation overwrites `output` right after this hook.
            record = LayerRecord(name, KINDS[type(module)], segment, forward_var=_variance(output))
            records.append(record)
            args[0].register_hook(lambda grad: setattr(record, "backward_var", _variance(grad)))

        return hook

    handles = [layer.module.register_forward_hook(on_layer(layer.name)) for layer in weight_layers(model)]
    handles += [m.register_forward_hook(on_pool) for m in model.modules() if isinstance(m, POOLS)]
    try:
        F.cross_entropy(model(images.requires_grad_(True)), labels).backward()
    finally:
        for handle in handles:
            handle.remove()
    return records


def conv_pairs(records: Sequence[LayerRecord]) -> list[tuple[LayerRecord, LayerRecord]]:
    """Consecutive conv layers with no pooling between them."""
    return [(a, b) for a, b in pairwise(records) if a.kind == b.kind == "conv" and a.segment == b.segment]


def _geometric_mean(ratios: Sequence[float]) -> float | None:
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def factors(records: Sequence[LayerRecord]) -> tuple[float | None, float | None]:
    """(forward_factor, backward_factor): geometric means of the per-layer variance ratios over conv pairs."""
    pairs = conv_pairs(records)
    forward = _geometric_mean([b.forward_var / a.forward_var for a, b in pairs])
    backward = _geometric_mean([a.backward_var / b.backward_var for a, b in pairs])
    return forward, backward


def format_table(records: Sequence[LayerRecord]) -> str:
    rows = [f"{'layer':<16} {'kind':<7} {'seg':>3} {'Var[y]':>12} {'Var[dL/dx]':>12}"]
    for r in records:
        rows.append(f"{r.name:<16} {r.kind:<7} {r.segment:>3} {r.forward_var:>12.4e} {r.backward_var:>12.4e}")
    return "\n".join(rows)


def _plot(records: Sequence[LayerRecord], title: str, path: str) -> None:
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return
    index = range(1, len(records) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(index, [r.forward_var for r in records], "o-", label="forward: Var[y_l]")
    ax.semilogy(index, [r.backward_var for r in records], "s-", label="backward: Var[dL/dx_l]")
    ax.set_xlabel("weight layer")
    ax.set_title(title)
    ax.legend()
    save_figure(plt, fig, path)


def analyse(overrides: Sequence[str], plot: str | None = None) -> dict:
    """Build the configured model, measure it, print the table; returns the JSON record."""
    settings = compose_settings([*PAPER_INIT, *overrides])
    num_classes, size, batch = settings.dataset.num_classes, settings.dataset.image_size, settings.trainer.batch_size
    torch.manual_seed(settings.seed)
    model = build_model(settings, num_classes).eval()
    generator = torch.Generator().manual_seed(settings.seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(num_classes, (batch,), generator=generator)
    records = measure(model, images, labels)
    forward, backward = factors(records)
    result = {
        "model": settings.model.name,
        "activation": settings.activation.name,
        "init": settings.init.name,
        "mode": settings.init.mode,
        "input_size": size,
        "layers": [r.name for r in records],
        "forward_var": [r.forward_var for r in records],
        "backward_var": [r.backward_var for r in records],
        "forward_factor": forward,
        "backward_factor": backward,
        "pairs": len(conv_pairs(records)),
    }
    print(format_table(records))
    print(f"forward factor {forward}, backward factor {backward} over {result['pairs']} conv pairs")
    if plot:
        _plot(records, f"{result['model']}, {result['activation']}, {result['init']} ({result['mode']})", plot)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.analysis.propagation",
        description="Per-layer forward/backward variances at init and their per-layer factors (He et al. 2015 §2.2).",
    )
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG plot (needs matplotlib)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=prelu_plain30 init.mode=fan_out")
    args = parser.parse_args(argv)
    print(json.dumps(analyse(args.overrides, args.plot)))


if __name__ == "__main__":
    main()
