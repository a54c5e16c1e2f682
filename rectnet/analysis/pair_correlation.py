"""Do CReLU layers treat the two phases alike? Shang et al. 2016 §4.3, Table 6: outgoing-weight correlations.

    python -m rectnet.analysis.pair_correlation <checkpoint.pt | run dir> [--which last|best]

A CReLU layer with d filters emits 2d channels: channel i is [y_i]₊ (positive phase of filter i) and
channel i + d is [-y_i]₊ (negative phase), `rectnet.layers.activations.CReLU`. The next weight layer reads
both; its weights out of input channel c, W[:, c] (all its filters x kernel positions, flattened), are c's
"outgoing weights". Procedure (Shang et al. 2016 §4.3, Table 6; the paper's own, in its supplement, was not available):

1. For every CReLU layer whose next weight layer reads exactly its 2d channels (a conv, or an fc after
   global pooling; a layer feeding SPP or nothing, such as a CReLU classifier, is skipped), take the
   outgoing weights w⁺_i = W[:, i] and w⁻_i = W[:, i + d] for i = 1..d.
2. Normalise each vector: subtract its mean, divide by its L2 norm. The dot product of two normalised
   vectors is then their Pearson correlation.
3. "pair": r(w⁺_i, w⁻_i) for the d filters. "non-pair": r(w⁺_i, w⁻_j) for every i ≠ j, i.e. all d(d-1)
   non-matching positive/negative combinations rather than a random sample of them (the mean and std of a
   random sample estimate exactly these).
4. Report mean ± std (population std) of each, signed. Whether the paper averaged signed or absolute
   correlations is not stated, so mean ± std of |r| is reported as well.

A pair correlation near 1 would mean the next layer weighs both phases the same, i.e. behaves as |y| (AVR);
near -1, as y itself (no non-linearity). The paper finds both well below 1 (Table 6, ImageNet CReLU (conv1-7)),
whose values are printed beside an All-CNN-B checkpoint's layers. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rectnet.analysis import command
from rectnet.analysis.trained import load_model
from rectnet.layers.facts import weight_layers

# Shang et al. 2016 Table 6 (p.7), All-CNN-B CReLU (conv1-7) on ImageNet: layer -> (pair, non-pair) (mean, std).
TABLE6 = {
    "conv1": ((0.372, 0.372), (0.165, 0.154)),
    "conv2": ((0.180, 0.149), (0.157, 0.137)),
    "conv3": ((0.462, 0.249), (0.120, 0.120)),
    "conv4": ((0.175, 0.146), (0.119, 0.100)),
    "conv5": ((0.206, 0.136), (0.105, 0.093)),
    "conv6": ((0.256, 0.124), (0.086, 0.080)),
    "conv7": ((0.131, 0.122), (0.080, 0.070)),
}


def outgoing_weights(next_layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """(input channels, everything else) of the next layer's weights: row c is channel c's outgoing weights."""
    return next_layer.weight.detach().double().transpose(0, 1).flatten(1)


def _normalise(rows: torch.Tensor) -> torch.Tensor:
    centred = rows - rows.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)


def phase_correlations(outgoing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair, non-pair) Pearson correlations of the 2d rows [positive phases; negative phases] (steps 2-3)."""
    d = len(outgoing) // 2
    corr = _normalise(outgoing[:d]) @ _normalise(outgoing[d:]).T  # corr[i, j] = r(w⁺_i, w⁻_j)
    off_diagonal = ~torch.eye(d, dtype=torch.bool)
    return corr.diagonal(), corr[off_diagonal]


@dataclass
class PairStats:
    layer: str
    filters: int
    pair_mean: float
    pair_std: float
    nonpair_mean: float
    nonpair_std: float
    pair_abs_mean: float
    pair_abs_std: float
    nonpair_abs_mean: float
    nonpair_abs_std: float


def pair_stats(name: str, outgoing: torch.Tensor) -> PairStats:
    pair, nonpair = phase_correlations(outgoing)
    return PairStats(
        name,
        len(pair),
        pair.mean().item(),
        pair.std(correction=0).item(),
        nonpair.mean().item(),
        nonpair.std(correction=0).item(),
        pair.abs().mean().item(),
        pair.abs().std(correction=0).item(),
        nonpair.abs().mean().item(),
        nonpair.abs().std(correction=0).item(),
    )


def analyse_model(model: nn.Module) -> tuple[list[PairStats], list[str]]:
    """PairStats of every CReLU layer whose next weight layer reads its 2d channels; and the skipped layers."""
    layers = weight_layers(model)
    stats, skipped = [], []
    for layer, following in zip(layers, [*layers[1:], None], strict=True):
        if layer.facts.activation != "crelu":
            continue
        d = layer.facts.out_channels
        if following is None or following.facts.in_channels != 2 * d or d < 2:
            skipped.append(layer.name)
            continue
        stats.append(pair_stats(layer.name, outgoing_weights(following.module)))
    return stats, skipped


def format_table(stats: Sequence[PairStats], with_paper: bool) -> str:
    def pm(mean: float, std: float) -> str:
        return f"{mean:.3f} ± {std:.3f}"

    header = f"{'layer':<7} {'d':>5} {'pair':>15} {'non-pair':>15} {'|pair|':>15} {'|non-pair|':>15}"
    rows = [header + (f" {'paper pair':>15} {'paper non-pair':>15}" if with_paper else "")]
    for s in stats:
        row = (
            f"{s.layer:<7} {s.filters:>5} {pm(s.pair_mean, s.pair_std):>15} {pm(s.nonpair_mean, s.nonpair_std):>15} "
            f"{pm(s.pair_abs_mean, s.pair_abs_std):>15} {pm(s.nonpair_abs_mean, s.nonpair_abs_std):>15}"
        )
        if with_paper and s.layer in TABLE6:
            pair, nonpair = TABLE6[s.layer]
            row += f" {pm(*pair):>15} {pm(*nonpair):>15}"
        rows.append(row)
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.checkpoint_parser(
        "pair_correlation", "Pair vs non-pair correlations of CReLU outgoing weights (Shang et al. 2016 Table 6)."
    )
    command.run(parser, argv, _report)


def _report(args: argparse.Namespace) -> dict:
    """Analyse the checkpoint and print the table; the record of the final JSON line."""
    loaded = load_model(args.path, args.which)
    stats, skipped = analyse_model(loaded.model)
    if not stats:
        raise ValueError(f"{loaded.checkpoint}: no CReLU layer followed by a layer reading both phases")
    with_paper = loaded.name == "allcnn_b"
    print(f"{loaded.checkpoint}: {loaded.name}, {loaded.config['activation']['name']}")
    print(format_table(stats, with_paper))
    if skipped:
        print(f"skipped (no next layer reading both phases): {', '.join(skipped)}")
    if with_paper:
        print("paper: Shang et al. 2016 Table 6 (All-CNN-B, CReLU conv1-7, ImageNet)")
    return {"checkpoint": str(loaded.checkpoint), "model": loaded.name, "layers": [vars(s) for s in stats]}


if __name__ == "__main__":
    main()
