"""What every checkpoint analysis shares: rebuild a run's network from its checkpoint, name its layers.

`load_model` rebuilds the network from the checkpoint's own config (through the same builder as train.py)
and loads its weights; `weight_layers` lists its conv/fc layers under the papers' names with the activation
module that follows each. Names:

* He et al. models (`prelu_*`): convs are numbered per stage, a stage ending at each pooling layer, as in
  Table 1: conv1, conv21..conv24, conv31..conv36 (conv3_10 and up for the 22-conv stage of the 30-layer
  model); fc layers fc1, fc2, fc3.
* Every other model (Shang et al.'s ConvPool-CNN-C, VGG, All-CNN-B): the layer's 1-based index among all
  weight layers, as `model.act_at` counts them and the CReLU paper names convs: conv1..conv9, VGG's
  conv1..conv13 then fc14, fc15.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rectnet.config import settings_from_dict
from rectnet.engine.build import build_model
from rectnet.layers.activations import CReLU, Rectifier
from rectnet.models import SpecNet

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode, with the checkpoint's resolved config."""

    model: SpecNet
    config: dict
    checkpoint: Path
    epoch: int | None

    @property
    def name(self) -> str:
        return self.config["model"]["name"]

    @property
    def run_dir(self) -> Path:
        """The run directory: the folder above checkpoints/, else the checkpoint's own folder."""
        folder = self.checkpoint.parent
        return folder.parent if folder.name == "checkpoints" else folder


def resolve_checkpoint(path: Path | str, which: str = "last") -> Path:
    """`path` itself if it is a file, else `<path>/checkpoints/<which>.pt`."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = path / "checkpoints" / f"{which}.pt"
    if not candidate.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (looked for {candidate})")
    return candidate


def build_from_config(config: dict, in_chans: int = 3) -> SpecNet:
    """The network a saved, resolved config describes, built as train.py builds it (weights then loaded)."""
    settings = settings_from_dict(config)
    # weights are what the analyses read; a config's image_size below the net's minimum does not matter here
    return build_model(settings, settings.dataset.num_classes, in_chans, check_input=False)


def load_model(path: Path | str, which: str = "last") -> LoadedModel:
    """Rebuild the checkpoint's network from its config and load its weights (CPU, eval mode)."""
    checkpoint = resolve_checkpoint(path, which)
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = payload["model"]
    first_conv = next(v for v in state.values() if v.ndim == 4)  # input channels: the data's, not the config's
    model = build_from_config(payload["config"], in_chans=first_conv.shape[1])
    model.load_state_dict(state)
    return LoadedModel(model.eval(), payload["config"], checkpoint, payload.get("epoch"))


@dataclass
class WeightLayer:
    """One conv/fc layer under its paper name, with the activation module that follows it (None: none)."""

    name: str
    module_name: str
    layer: nn.Conv2d | nn.Linear
    act: Rectifier | None

    @property
    def is_conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)

    @property
    def is_crelu(self) -> bool:
        return isinstance(self.act, CReLU)

    def spec(self) -> str:
        """Table 1's layer description: "7x7, 64, /2" for a conv, the width for an fc."""
        if not self.is_conv:
            return str(self.layer.out_features)
        kh, kw = self.layer.kernel_size
        stride = self.layer.stride[0]
        return f"{kh}x{kw}, {self.layer.out_channels}" + (f", /{stride}" if stride > 1 else "")


def _walk(model: nn.Module) -> list[tuple[WeightLayer, int]]:
    """Weight layers in forward order, each with its activation and the number of pooling layers before it."""
    order: list[tuple[WeightLayer, int]] = []
    pools = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            order.append((WeightLayer("", name, module, None), pools))
        elif isinstance(module, Rectifier) and order and order[-1][0].act is None:
            order[-1][0].act = module  # conv [-> BN] -> activation: the first rectifier after a weight layer
        elif isinstance(module, POOLS):
            pools += 1
    return order


def _conv_name(stage: int, j: int, stage_size: int) -> str:
    if stage_size == 1:
        return f"conv{stage}"
    return f"conv{stage}{j}" if j < 10 else f"conv{stage}_{j}"  # conv3_10: "conv310" would read as stage 31


def _staged_names(walked: list[tuple[WeightLayer, int]]) -> list[str]:
    """He et al. names: conv<stage><j> (conv<stage> for a one-conv stage), fc1, fc2, ..."""
    conv_pools = [pools for layer, pools in walked if layer.is_conv]
    stages = {pools: i for i, pools in enumerate(sorted(set(conv_pools)), 1)}  # pools seen -> stage number
    names, seen, fcs = [], dict.fromkeys(stages, 0), 0
    for layer, pools in walked:
        if layer.is_conv:
            seen[pools] += 1
            names.append(_conv_name(stages[pools], seen[pools], conv_pools.count(pools)))
        else:
            fcs += 1
            names.append(f"fc{fcs}")
    return names


def weight_layers(model: nn.Module, model_name: str) -> list[WeightLayer]:
    """The model's conv/fc layers in forward order, named as the papers name them (module docstring)."""
    walked = _walk(model)
    if model_name.startswith("prelu_"):
        names = _staged_names(walked)
    else:
        names = [f"{'conv' if layer.is_conv else 'fc'}{i}" for i, (layer, _) in enumerate(walked, 1)]
    for name, (layer, _) in zip(names, walked, strict=True):
        layer.name = name
    return [layer for layer, _ in walked]
