"""Learned PReLU slopes per layer in He et al. 2015 Table 1's layout (channel-shared value / channel-wise mean).

    python -m rectnet.analysis.slopes <checkpoint.pt | run dir> [--which last|best]

A run directory means its `checkpoints/<which>.pt` (default last.pt: the final model). For every weight
layer followed by a PReLU it prints the layer's paper-style name, its shape ("7x7, 64, /2" as in Table 1),
whether the slope is channel-shared (one a) or channel-wise (one a per channel), and the mean, std, min and
max of the slopes; a channel-shared layer's mean is its single value. When the model is `prelu_small14` (the
Table 1 network) the paper's value for the same variant stands beside it. The last line printed is one JSON
object: checkpoint, model, activation, epoch, layers (name, module, mode, channels, mean, std, min, max,
paper).

Layer names: `rectnet.layers.facts`; checkpoint loading: `rectnet.analysis.trained`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rectnet.analysis import command
from rectnet.analysis.trained import LoadedModel, load_model
from rectnet.layers.activations import PReLU
from rectnet.layers.facts import WeightLayer, weight_layers

# He et al. 2015 Table 1: layer -> (channel-shared a, channel-wise mean a).
TABLE1 = {
    "conv1": (0.681, 0.596),
    "conv21": (0.103, 0.321),
    "conv22": (0.099, 0.204),
    "conv23": (0.228, 0.294),
    "conv24": (0.561, 0.464),
    "conv31": (0.126, 0.196),
    "conv32": (0.089, 0.152),
    "conv33": (0.124, 0.145),
    "conv34": (0.062, 0.124),
    "conv35": (0.008, 0.134),
    "conv36": (0.210, 0.198),
    "fc1": (0.063, 0.074),
    "fc2": (0.031, 0.075),
}


@dataclass
class SlopeRecord:
    layer: str
    module: str
    spec: str
    mode: str  # channel-shared | channel-wise
    channels: int
    mean: float
    std: float
    min: float
    max: float
    paper: float | None


def slope_records(loaded: LoadedModel) -> list[SlopeRecord]:
    """One record per PReLU-followed weight layer; the Table 1 value beside it for prelu_small14."""
    records = []
    for layer in weight_layers(loaded.model):
        if not isinstance(layer.after, PReLU):
            continue
        a = layer.after.weight.detach().double()
        shared = a.numel() == 1
        paper = TABLE1.get(layer.name) if loaded.name == "prelu_small14" else None
        records.append(
            SlopeRecord(
                layer.name,
                layer.facts.module,
                table1_spec(layer),
                "channel-shared" if shared else "channel-wise",
                a.numel(),
                a.mean().item(),
                0.0 if shared else a.std().item(),
                a.min().item(),
                a.max().item(),
                None if paper is None else paper[0 if shared else 1],
            )
        )
    return records


def table1_spec(layer: WeightLayer) -> str:
    """Table 1's layer description: "7x7, 64, /2" for a conv, the width for an fc."""
    if not layer.is_conv:
        return str(layer.facts.out_channels)
    kh, kw = layer.module.kernel_size
    stride = layer.module.stride[0]
    return f"{kh}x{kw}, {layer.facts.out_channels}" + (f", /{stride}" if stride > 1 else "")


def format_table(records: Sequence[SlopeRecord]) -> str:
    """Table 1's layout; the paper column only when there are paper values (prelu_small14)."""
    with_paper = any(r.paper is not None for r in records)
    rows = [f"{'layer':<9} {'spec':<14} {'slopes':<15} {'mean':>7} {'std':>7} {'min':>7} {'max':>7}"]
    rows[0] += f" {'paper':>7}" if with_paper else ""
    for r in records:
        stats = " ".join(f"{v:>7.3f}" for v in (r.mean, r.std, r.min, r.max))
        paper = f" {r.paper:>7.3f}" if r.paper is not None else ""
        rows.append(f"{r.layer:<9} {r.spec:<14} {r.mode:<15} {stats}{paper}")
    return "\n".join(rows)


def analyse(path: Path | str, which: str = "last", out: Path | None = None) -> dict:
    """Print the slope table of a checkpoint (and write it to `out`); returns the JSON record."""
    loaded = load_model(path, which)
    records = slope_records(loaded)
    activation = loaded.config["activation"]["name"]
    if not records:
        raise ValueError(f"{loaded.checkpoint}: model {loaded.name} with activation {activation} has no PReLU layers")
    lines = [f"{loaded.checkpoint}: {loaded.name}, {activation}, epoch {loaded.epoch}", format_table(records)]
    if loaded.name == "prelu_small14":
        lines.append("paper: He et al. 2015 Table 1, the same variant's column (channel-shared / channel-wise mean)")
    print("\n".join(lines))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    return {
        "checkpoint": str(loaded.checkpoint),
        "model": loaded.name,
        "activation": activation,
        "epoch": loaded.epoch,
        "layers": [vars(r) for r in records],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.checkpoint_parser(
        "slopes", "PReLU slopes per layer (He et al. 2015 Table 1) from a checkpoint or run directory."
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    command.run(parser, argv, lambda args: analyse(args.path, args.which, args.out))


if __name__ == "__main__":
    main()
