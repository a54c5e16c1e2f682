"""Per-layer summary of a configured model: output shapes, parameters and multiply-adds.

    python -m rectnet.summary [Hydra overrides, as for train.py]
    python -m rectnet.summary model=prelu_c dataset.image_size=224 dataset.num_classes=1000

The config is composed exactly as train.py composes it (configs/train.yaml, the typed schema of
rectnet/config.py) and the model is built by `rectnet.models.build.build_model`. The input is one image of
`dataset.image_size` x `dataset.image_size` pixels with 3 channels; use `dataset.image_size=224` for the
ImageNet models' figures (the CIFAR configs say 32; the summary never reads the data).

Multiply-adds (the papers' "complexity", He et al. 2015 Table 3) count conv and linear layers only, per
image: a conv gives (output elements)·(in_channels/groups)·k_h·k_w, a linear in·out. Biases, BN,
activations and pooling are not counted.

Modules are listed under their paths, named as the model's paper names its layers (features.conv21,
head.fc1); the `#` column is a weight layer's 1-based index, the number `model.act_at`, `model.halve_at` and
`model.init_std` take (`rectnet.layers.facts`).

The last line printed is one JSON object: model, activation, input_size, num_classes, params, macs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from rectnet.config import CONFIG_DIR, ConfigError, TrainConfig, to_settings
from rectnet.layers.facts import layer_facts
from rectnet.models.build import build_model


def compose_settings(overrides: Sequence[str]) -> TrainConfig:
    """Compose configs/train.yaml with `overrides` as train.py does, and validate it (as a config to read, not as
    a training run on this machine: `rectnet.config.to_settings`).

    `run_dir` defaults to ${hydra:runtime.output_dir}, which only resolves inside a Hydra run; it is set to
    "." unless an override names it (nothing is written there).
    """
    defaults = [] if any(o.startswith("run_dir=") for o in overrides) else ["run_dir=."]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*defaults, *overrides])
    return to_settings(cfg, training=False)


@dataclass
class LayerStats:
    name: str
    index: int | None  # 1-based among the weight layers; None for other modules
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv/linear call per image; 0 for any other module."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * math.prod(output.shape[1:-1])
    return 0


def layer_stats(model: nn.Module, input_size: int, in_chans: int = 3) -> list[LayerStats]:
    """Run one image through `model` (on its device, meta included) and record every leaf module's call."""
    stats: list[LayerStats] = []
    indices = {layer.module: layer.index for layer in layer_facts(model)}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            shape, macs = tuple(output.shape), layer_macs(module, output)
            stats.append(LayerStats(name, indices.get(name), type(module).__name__, shape, params, macs))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not any(m.children())]
    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return stats


def format_table(stats: Sequence[LayerStats]) -> str:
    rows = [f"{'layer':<20} {'#':>3} {'type':<20} {'output':<20} {'params':>12} {'mult-adds':>16}"]
    for s in stats:
        shape = "x".join(str(d) for d in s.output_shape[1:])
        index = "" if s.index is None else s.index
        rows.append(f"{s.name:<20} {index:>3} {s.kind:<20} {shape:<20} {s.params:>12,} {s.macs:>16,}")
    return "\n".join(rows)


def summarize(overrides: Sequence[str]) -> dict:
    """Print the table for the composed config and return the JSON record."""
    settings = compose_settings(overrides)
    model = build_model(settings, settings.dataset.num_classes)
    size = settings.dataset.image_size
    stats = layer_stats(model, size)
    params = sum(p.numel() for p in model.parameters())
    macs = sum(s.macs for s in stats)
    print(format_table(stats))
    print(f"total: {params:,} parameters ({params / 1e6:.2f}M), {macs:,} multiply-adds ({macs:.3e}) at {size}x{size}")
    return {
        "model": settings.model.name,
        "activation": settings.activation.name,
        "input_size": size,
        "num_classes": settings.dataset.num_classes,
        "params": params,
        "macs": macs,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.summary",
        description="Per-layer output shapes, parameters and multiply-adds of a configured model.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=prelu_a dataset.image_size=224")
    args = parser.parse_args(argv)
    try:
        record = summarize(args.overrides)
    except ConfigError as err:  # a user error: its reason, not a traceback, is the last line
        sys.exit(f"ConfigError: {err}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
