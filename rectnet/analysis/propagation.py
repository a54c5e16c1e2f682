"""Forward and backward variance propagation at initialisation (He et al. 2015 §2.2, Eqs. 7-14).

    python -m rectnet.analysis.propagation [--plot PATH] [Hydra overrides, as for train.py]
    python -m rectnet.analysis.propagation model=prelu_plain30 model.width=0.25 activation=relu \\
        init=kaiming init.mode=fan_in dataset.image_size=224 trainer.batch_size=16

The model is composed and built as train.py builds it (init included; `seed` seeds it), with the paper's rule
on every layer: `init.head_scale=1` and `init.count_dropout=false` unless the overrides say otherwise. One random batch,
`trainer.batch_size` images of `dataset.image_size`² N(0, 1) pixels (what per-channel normalised data looks
like) with uniform random labels, goes forward and, through the cross-entropy loss, backward. The model is
in eval mode: dropout is off and BatchNorm applies its initial running statistics (the identity, up to eps),
so the variances are those of the weight layers and rectifiers alone. init=lsuv rescales the model on that
batch first (rectnet.layers.lsuv: in training mode, as train.py runs it). For each conv/fc layer l it records

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

Every activation (issue 24): `--table PATH` measures each registered activation with its derived gains
(`rectnet.layers.gain`) under mode fan_in (the forward factor) and fan_out (the backward factor), and ReLU's gain
used for the smooth ones (`activation.gain=1.41421356`, the naive choice), next to what the length map predicts,
and writes a Markdown table with the command that made it:

    python -m rectnet.analysis.propagation --table docs/results/propagation_gains.md \
        model=prelu_plain30 model.width=0.25 dataset.image_size=224 trainer.batch_size=8

Where f is not positively homogeneous (every activation but the rectifiers) the factor per layer depends on the
scale, and the net's own layers move the scale: a max-pool raises E[x²] several fold at each stage's entry, and
for GELU, SiLU, Mish and hard-swish the fixed point q* = 1 repels (h'(1) > 1), so their forward factor leans
towards the large-q limit of their map (GELU: gain²/2 = 1.18). Under fan_out, the backward gain holds the
gradient at q = 1, but nothing holds the forward scale at 1 (`rectnet.layers.gain.settle`), so the measured
backward factor is the one at the scale the forward pass reaches.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.analysis import command
from rectnet.analysis.plotting import write_figure
from rectnet.layers.activations import ACTIVATIONS, make_activation
from rectnet.layers.facts import weight_layers
from rectnet.layers.gain import map_slope, moments, settle
from rectnet.layers.lsuv import lsuv
from rectnet.layers.spp import SpatialPyramidPool
from rectnet.models.build import build_model
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


def _draw(records: Sequence[LayerRecord], title: str, fig, ax) -> None:
    index = range(1, len(records) + 1)
    ax.semilogy(index, [r.forward_var for r in records], "o-", label="forward: Var[y_l]")
    ax.semilogy(index, [r.backward_var for r in records], "s-", label="backward: Var[dL/dx_l]")
    ax.set_xlabel("weight layer")
    ax.set_title(title)
    ax.legend()


def analyse(overrides: Sequence[str], plot: str | None = None) -> dict:
    """Build the configured model, measure it, print the table; returns the JSON record."""
    result, records = _measure_config(overrides)
    print(format_table(records))
    print(
        f"forward factor {result['forward_factor']}, backward factor {result['backward_factor']} over "
        f"{result['pairs']} conv pairs"
    )
    title = f"{result['model']}, {result['activation']}, {result['init']} ({result['mode']})"
    if plot and not write_figure(plot, partial(_draw, records, title), figsize=(7, 4)):
        print("matplotlib is not installed: no plot written", file=sys.stderr)
    return result


def _measure_config(overrides: Sequence[str]) -> tuple[dict, list[LayerRecord]]:
    """The JSON record and the per-layer records of the configured model (built and measured as `analyse` says)."""
    settings = compose_settings([*PAPER_INIT, *overrides])
    num_classes, size, batch = settings.dataset.num_classes, settings.dataset.image_size, settings.trainer.batch_size
    torch.manual_seed(settings.seed)
    model = build_model(settings, num_classes)
    generator = torch.Generator().manual_seed(settings.seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(num_classes, (batch,), generator=generator)
    if settings.init.name == "lsuv":  # its data-driven stage, as train.py runs it before step 0
        config = settings.init.lsuv
        lsuv(model, [images], config.tolerance, config.max_iters, settings.init.head_scale, seed=settings.seed)
    model.eval()
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
    return result, records


# ------------------------------------------------------------------ every activation: derived against naive gains

BOUNDS = (0.8, 1.25)  # a factor per layer that keeps the signal (issue 24)
NAIVE = ("gelu", "silu")  # the smooth activations measured with ReLU's gain too
RELU_GAIN = "1.41421356"  # sqrt(2), He et al.'s Eq. 10 gain, as activation.gain states it
SKIP = ("identity", "custom")  # not a choice to measure: no non-linearity; the user's own


@dataclass
class GainRow:
    """One activation and gain choice: the gains, what the length map predicts, what the net measures."""

    activation: str
    choice: str  # "derived" or "ReLU's gain"
    forward_gain: float
    backward_gain: float
    predicted_factor: float  # h(1) = gain² E_1[f²] (1 for the derived forward gain)
    map_slope: float  # h'(1): below 1 the fixed point attracts, above 1 it repels
    predicted_signal: float  # q after the net's convs by the length map alone, from q = 1 (no pooling)
    large_scale_factor: float  # h(q)/q at q = 1e4: where a repelling fixed point sends a growing scale
    fan_out_scale: float  # the scale the fan_out weights' forward pass reaches after the net's convs, from q = 1
    fan_out_factor: float  # the backward factor per layer there: backward gain² E_q[f'²]
    forward_factor: float | None = None  # measured, mode fan_in
    forward_signal: float | None = None  # measured Var[y] at the last conv / at the first, mode fan_in
    backward_factor: float | None = None  # measured, mode fan_out
    backward_signal: float | None = None  # measured Var[dL/dx] at the first conv / at the last, mode fan_out

    def within(self) -> bool:
        low, high = BOUNDS
        factors = [f for f in (self.forward_factor, self.backward_factor) if f is not None]
        return bool(factors) and all(low <= f <= high for f in factors)


def _signal(records: Sequence[LayerRecord], backward: bool) -> float:
    """How much the signal grows across the conv layers: forward last/first Var[y], backward first/last Var[dL/dx]."""
    convs = [r for r in records if r.kind == "conv"]
    first, last = convs[0], convs[-1]
    return first.backward_var / last.backward_var if backward else last.forward_var / first.forward_var


LARGE_SCALE = 1e4  # a pre-activation variance where every activation here is in its large-scale (linear) regime


def _theory(name: str, gain: float | None, layers: int) -> tuple[float, ...]:
    """GainRow's theory fields, in order, for activation `name` with `gain` (None: the derived gains), for a net
    of `layers` + 1 convs (the length map of rectnet/layers/gain.py)."""
    act = make_activation(name, **({} if gain is None else {"gain": gain}))(1)
    gains, cuts = act.gains(), act.breakpoints
    forward, backward = gains.forward, gains.backward
    at_one = moments(act, 1.0, cuts).second
    large = forward**2 * moments(act, LARGE_SCALE, cuts).second / LARGE_SCALE
    reached = settle(act, forward, layers, 1.0, cuts)[-1]
    fan_out_scale = settle(act, backward, layers, 1.0, cuts)[-1]
    fan_out_factor = backward**2 * moments(act, fan_out_scale, cuts).slope
    slope = map_slope(act, forward, 1.0, cuts)
    return forward, backward, forward**2 * at_one, slope, reached, large, fan_out_scale, fan_out_factor


def gain_rows(overrides: Sequence[str], activations: Sequence[str] | None = None) -> list[GainRow]:
    """Measure every activation (default: every registered one but identity and custom) with its derived gains, and
    the NAIVE ones with ReLU's gain, under fan_in (forward) and fan_out (backward)."""
    names = [n for n in (activations or ACTIVATIONS.names()) if n not in SKIP]
    choices = [(n, None) for n in names] + [(n, float(RELU_GAIN)) for n in NAIVE if n in names]
    rows = []
    for name, gain in choices:
        # the gains alone: no centring bias (activation=softplus asks for one; docs/activations.md)
        extra = [f"activation={name}", "init.center=false"] + ([] if gain is None else [f"activation.gain={RELU_GAIN}"])
        fan_in, in_records = _measure_config([*overrides, *extra, "init=kaiming", "init.mode=fan_in"])
        fan_out, out_records = _measure_config([*overrides, *extra, "init=kaiming", "init.mode=fan_out"])
        convs = sum(1 for r in in_records if r.kind == "conv")
        theory = _theory(name, gain, convs - 1)
        row = GainRow(name, "derived" if gain is None else "ReLU's gain", *theory)
        row.forward_factor, row.forward_signal = fan_in["forward_factor"], _signal(in_records, backward=False)
        row.backward_factor, row.backward_signal = fan_out["backward_factor"], _signal(out_records, backward=True)
        rows.append(row)
        print(
            f"{name} ({row.choice}): forward {row.forward_factor:.3f}, backward {row.backward_factor:.3f}", flush=True
        )
    return rows


def format_gain_rows(rows: Sequence[GainRow], command: str) -> str:
    """The Markdown page: the command, how to read the columns, one table row per activation and gain choice."""
    low, high = BOUNDS
    lines = [
        "# Kaiming gains for every activation, measured (issue 24)",
        "",
        "Made by (do not edit by hand):",
        "",
        f"    {command}",
        "",
        "Gains: `rectnet/layers/gain.py` (closed forms for the rectifiers, quadrature for the others; the derivation "
        "and the role of f's mean are in its docstring and in docs/activations.md). Theory columns, by the length map "
        "h(q) = gain² E_{z~N(0,q)}[f(z)²] of an infinitely wide net without pooling: h(1) is the forward factor per "
        "layer at unit pre-activation variance, h'(1) its slope (above 1 the fixed point repels), q_L the variance "
        "after the net's conv layers from q = 1. Measured columns (`python -m rectnet.analysis.propagation`, one "
        "random batch, eval mode): the geometric-mean factor per layer over conv pairs within a stage, mode fan_in "
        "for the forward signal and fan_out for the backward one, and the whole net's ratio from the first conv to "
        f"the last (pools included). 'in bounds': both measured factors within [{low}, {high}].",
        "",
        "| activation | gains | fwd gain | bwd gain | h(1) | h'(1) | q_L (theory) | fan_in: fwd factor | "
        "fan_in: Var[y] last/first | fan_out: bwd factor | fan_out: Var[dx] first/last | in bounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.activation} | {r.choice} | {r.forward_gain:.4f} | {r.backward_gain:.4f} | {r.predicted_factor:.3f} "
            f"| {r.map_slope:.3f} | {r.predicted_signal:.3g} | {r.forward_factor:.3f} | {r.forward_signal:.3g} "
            f"| {r.backward_factor:.3f} | {r.backward_signal:.3g} | {'yes' if r.within() else 'no'} |"
        )
    reasons = [reason for r in rows for reason in _reasons(r)]
    if reasons:
        lines += ["", "Rows out of bounds, and what the length map says of them:", "", *reasons]
    return "\n".join(lines) + "\n"


def _reasons(row: GainRow) -> list[str]:
    """Why a measured factor leaves BOUNDS, by the theory columns (none for a row within them)."""
    low, high = BOUNDS
    name, out = f"{row.activation} ({row.choice})", []
    if row.forward_factor is not None and not low <= row.forward_factor <= high:
        if row.predicted_factor < low:
            why = f"the gain loses variance already at unit scale (h(1) = {row.predicted_factor:.3f})"
        elif row.map_slope > 1:
            why = (
                f"the fixed point repels (h'(1) = {row.map_slope:.2f}) and each stage starts above it (a max-pool "
                f"raises E[x²]): the scale grows to f's large-scale regime, where the factor is "
                f"{row.large_scale_factor:.3f}"
            )
        else:
            why = "the length map does not explain it"
        out.append(f"* {name}, forward {row.forward_factor:.3f}: {why}.")
    if row.backward_factor is not None and not low <= row.backward_factor <= high:
        out.append(
            f"* {name}, backward {row.backward_factor:.3f}: under fan_out nothing holds the forward scale at 1; it "
            f"reaches q = {row.fan_out_scale:.3g} (no pooling), where the backward factor is {row.fan_out_factor:.3f}."
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.parser(
        "propagation", "Per-layer forward/backward variances at init and their per-layer factors (He et al. 2015 §2.2)."
    )
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG plot (needs matplotlib)")
    parser.add_argument(
        "--table",
        metavar="PATH",
        help="measure every activation (derived gains; ReLU's gain for gelu and silu) and write a Markdown table",
    )
    parser.add_argument("--activations", metavar="A,B,...", help="with --table: only these activations")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=prelu_plain30 init.mode=fan_out")
    command.run(parser, argv, _report)


def _report(args: argparse.Namespace) -> dict | None:
    """The one configured model's record for the final JSON line; with --table, the page alone (no JSON line)."""
    if args.table:
        _write_table(args.table, args.overrides, args.activations.split(",") if args.activations else None)
        return None
    return analyse(args.overrides, args.plot)


def _write_table(path: str, overrides: Sequence[str], activations: Sequence[str] | None) -> None:
    words = ["python -m rectnet.analysis.propagation", f"--table {path}"]
    words += [f"--activations {','.join(activations)}"] if activations else []
    page = format_gain_rows(gain_rows(overrides, activations), " ".join([*words, *overrides]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(page)
    print(page)


if __name__ == "__main__":
    main()
