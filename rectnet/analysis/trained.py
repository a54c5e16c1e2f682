"""What every checkpoint analysis shares: rebuild a run's network from its checkpoint.

`load_model` rebuilds the network from the checkpoint's own config (through the same builder as train.py)
and loads its weights. Its layers, under the names of its paper (conv21 for He et al. 2015 Table 1,
conv1..conv9 for Shang et al. 2016), with the activation module that follows each, are
`rectnet.layers.facts.weight_layers(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rectnet.config import settings_from_dict
from rectnet.engine.checkpoint import load_weights
from rectnet.models import SpecNet
from rectnet.models.build import build_model


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
    """Rebuild the checkpoint's network from its config and load its weights (CPU, eval mode). The file is checked
    as a resume checks it, as far as the weights go (rectnet.engine.checkpoint.load_weights: CRCs, a model and a
    config entry, finite weights): a damaged or foreign file stops the analysis with one line, not a traceback
    or a table of garbage."""
    checkpoint = resolve_checkpoint(path, which)
    payload = load_weights(checkpoint)
    state = payload["model"]
    first_conv = next(v for v in state.values() if v.ndim == 4)  # input channels: the data's, not the config's
    model = build_from_config(payload["config"], in_chans=first_conv.shape[1])
    model.load_state_dict(state)
    return LoadedModel(model.eval(), payload["config"], checkpoint, payload.get("epoch"))
