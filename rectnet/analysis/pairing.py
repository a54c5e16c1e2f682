"""The pairing phenomenon (Shang et al. 2016 §2.1, Figs. 2-3): do conv filters come in opposite-phase pairs?

    python -m rectnet.analysis.pairing <checkpoint.pt | run dir> [--which last|best] [--layers conv1 conv2 ...]
                                       [--bins 40] [--seed 0] [--out DIR]

For each conv layer (all of them unless --layers names some), every filter φ_i (the k x k x C_in weights of
one output channel, flattened) is scaled to unit L2 norm and its pairing cosine similarity is

    μ_i = min_{j ≠ i} <φ_i, φ_j>            (Shang et al. 2016 §2.1; j = i never wins since <φ_i, φ_i> = 1)

The same statistic is computed for as many random filters of the same shape, i.i.d. N(0, 1) entries scaled
to unit norm (footnote 1), drawn once per layer from --seed. Learned μ well below the random ones (conv1 of
AlexNet, Fig. 2) means each filter has a near-negated partner; a CReLU layer's filters should not (Fig. 3),
since CReLU gives every filter its negative phase for free.

Written to --out (default <run dir>/analysis): pairing.json (per layer: filters, dimension, mean and std of
the learned and random μ, all μ values and the histogram), pairing_hist.csv (layer, kind, bin_lo, bin_hi,
count: the Fig. 2 histogram data; both kinds share one set of bins per layer, spanning both) and, only if
matplotlib is importable (it is not a dependency), pairing.png with one panel per layer. The last line
printed is one JSON object with the per-layer summary.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from rectnet.analysis import command
from rectnet.analysis.plotting import write_figure
from rectnet.analysis.trained import load_model
from rectnet.layers.facts import weight_layers


def unit_filters(weight: torch.Tensor) -> torch.Tensor:
    """(out_channels, k·k·C_in) rows of unit L2 norm, in float64."""
    flat = weight.detach().double().flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pairing_similarity(filters: torch.Tensor) -> torch.Tensor:
    """μ_i = min over j ≠ i of <φ_i, φ_j> for unit-norm rows φ (CReLU paper §2.1)."""
    if len(filters) < 2:
        raise ValueError("the pairing similarity needs at least two filters")
    gram = filters @ filters.T
    gram.fill_diagonal_(float("inf"))
    return gram.min(dim=1).values


def random_filters(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Unit-norm rows of i.i.d. standard-normal entries with the layer's filter shape (footnote 1)."""
    return unit_filters(torch.randn(*shape, generator=generator, dtype=torch.float64))


@dataclass
class LayerPairing:
    layer: str
    filters: int
    dim: int
    learned: torch.Tensor  # μ of the learned filters
    random: torch.Tensor  # μ of the random filters
    edges: torch.Tensor  # bins + 1 shared edges
    learned_counts: torch.Tensor
    random_counts: torch.Tensor

    def summary(self) -> dict:
        return {
            "layer": self.layer,
            "filters": self.filters,
            "dim": self.dim,
            "learned_mean": self.learned.mean().item(),
            "learned_std": self.learned.std().item(),
            "random_mean": self.random.mean().item(),
            "random_std": self.random.std().item(),
        }


def shared_histograms(a: torch.Tensor, b: torch.Tensor, bins: int) -> tuple[torch.Tensor, ...]:
    """Histograms of a and b over the same `bins` equal bins spanning both (Fig. 2 overlays them)."""
    both = torch.cat([a, b])
    low, high = both.min().item(), both.max().item()
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return edges, torch.histc(a, bins, low, high), torch.histc(b, bins, low, high)


def layer_pairing(name: str, weight: torch.Tensor, bins: int, generator: torch.Generator) -> LayerPairing:
    learned = pairing_similarity(unit_filters(weight))
    random = pairing_similarity(random_filters(weight.flatten(1).shape, generator))
    edges, learned_counts, random_counts = shared_histograms(learned, random, bins)
    return LayerPairing(name, weight.shape[0], weight[0].numel(), learned, random, edges, learned_counts, random_counts)


def analyse_model(
    model: torch.nn.Module, layers: Sequence[str] = (), bins: int = 40, seed: int = 0
) -> list[LayerPairing]:
    """LayerPairing for each conv layer with at least two filters (those named in `layers`, if any)."""
    generator = torch.Generator().manual_seed(seed)
    convs = [w for w in weight_layers(model) if w.is_conv and w.facts.out_channels > 1]
    unknown = set(layers) - {w.name for w in convs}
    if unknown:
        raise ValueError(f"no conv layer(s) {sorted(unknown)}; this model has {[w.name for w in convs]}")
    return [layer_pairing(w.name, w.module.weight, bins, generator) for w in convs if not layers or w.name in layers]


def format_table(results: Sequence[LayerPairing]) -> str:
    rows = [f"{'layer':<8} {'filters':>7} {'dim':>6} {'learned mu':>18} {'random mu':>18}"]
    for r in results:
        s = r.summary()
        learned = f"{s['learned_mean']:.3f} ± {s['learned_std']:.3f}"
        random = f"{s['random_mean']:.3f} ± {s['random_std']:.3f}"
        rows.append(f"{r.layer:<8} {r.filters:>7} {r.dim:>6} {learned:>18} {random:>18}")
    return "\n".join(rows)


def write_outputs(results: Sequence[LayerPairing], out: Path, title: str) -> list[Path]:
    """pairing.json, pairing_hist.csv and (with matplotlib) pairing.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    detail = [
        {
            **r.summary(),
            "learned_mu": r.learned.tolist(),
            "random_mu": r.random.tolist(),
            "bin_edges": r.edges.tolist(),
            "learned_counts": r.learned_counts.int().tolist(),
            "random_counts": r.random_counts.int().tolist(),
        }
        for r in results
    ]
    paths = [out / "pairing.json", out / "pairing_hist.csv"]
    paths[0].write_text(json.dumps({"title": title, "layers": detail}, indent=1) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "kind", "bin_lo", "bin_hi", "count"])
        for r in results:
            for kind, counts in (("learned", r.learned_counts), ("random", r.random_counts)):
                bins = zip(r.edges[:-1].tolist(), r.edges[1:].tolist(), counts.int().tolist(), strict=True)
                writer.writerows([r.layer, kind, f"{lo:.6g}", f"{hi:.6g}", count] for lo, hi, count in bins)
    draw = partial(_draw, results, title)
    if write_figure(out / "pairing.png", draw, ncols=len(results), figsize=(3 * len(results), 2.8), squeeze=False):
        paths.append(out / "pairing.png")
    return paths


def _draw(results: Sequence[LayerPairing], title: str, fig, axes) -> None:
    """One panel per layer: the learned and the random μ histograms overlaid (Fig. 2)."""
    for ax, r in zip(axes[0], results, strict=True):
        width = (r.edges[1] - r.edges[0]).item()
        ax.bar(r.edges[:-1].tolist(), r.learned_counts.tolist(), width, align="edge", alpha=0.6, label="learned")
        ax.bar(r.edges[:-1].tolist(), r.random_counts.tolist(), width, align="edge", alpha=0.6, label="random")
        ax.set_title(r.layer)
    axes[0][0].legend()
    fig.suptitle(title)


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.checkpoint_parser(
        "pairing", "Pairing cosine similarity of conv filters vs random filters (Shang et al. 2016 Figs. 2-3)."
    )
    parser.add_argument("--layers", nargs="*", default=[], help="conv layers to analyse (default: all)")
    parser.add_argument("--bins", type=int, default=40, help="histogram bins per layer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random filters")
    parser.add_argument("--out", help="output folder (default: <run dir>/analysis)")
    command.run(parser, argv, _report)


def _report(args: argparse.Namespace) -> dict:
    """Analyse the checkpoint, print the table, write the files; the record of the final JSON line."""
    loaded = load_model(args.path, args.which)
    results = analyse_model(loaded.model, args.layers, args.bins, args.seed)
    title = f"{loaded.name}, {loaded.config['activation']['name']} ({loaded.checkpoint})"
    print(title)
    print(format_table(results))
    command.print_written(write_outputs(results, Path(args.out) if args.out else loaded.run_dir / "analysis", title))
    return {"checkpoint": str(loaded.checkpoint), "model": loaded.name, "layers": [r.summary() for r in results]}


if __name__ == "__main__":
    main()
