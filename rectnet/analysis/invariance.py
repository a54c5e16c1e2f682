"""Invariance scores per layer (Shang et al. 2016 §4.2, Fig. 4), with Goodfellow et al.'s (2009) measure.

    python -m rectnet.analysis.invariance <checkpoint.pt | run dir> [--data-root DIR | --synthetic]
        [--split test|train] [--num-images 1000] [--max-shift 3] [--angles 5 10 15] [--pool max|mean|center]
        [--rate 0.01] [--top 0.2] [--circular] [--layers conv1 ...] [--batch-size 250] [--out DIR]

Shang et al. 2016 §4.2 (Fig. 4); the paper's own procedure (its suppl. D) was not available, so this follows
Goodfellow et al. 2009:

* Units: the channels of each conv layer's output after its activation (BN and activation included; a CReLU
  layer's 2d channels count as 2d units, one per phase; a layer without activation is read before pooling).
  One number per channel and image: `--pool max` (default) the channel's spatial maximum, `mean` its spatial
  mean, `center` its value at the centre position (h//2, w//2), the closest to Goodfellow's single units,
  whose receptive field sits at one place. Max/mean pooling over the whole map already absorbs much of a
  translation, so with them translation scores are high at every depth; compare layers within one mode.
* Inputs: the first --num-images images of the checkpoint's dataset split (default test), normalised as in
  training (per-channel mean/std of the training split), via `rectnet.data.load_dataset` with the
  checkpoint's own dataset config (`--data-root` replaces its root; `--synthetic` uses the synthetic
  dataset, seeded by the checkpoint's seed as in training).
* Threshold: per unit, t_i is the (k+1)-th largest response over the inputs, k = max(1, round(rate·N)), so a
  unit "fires" (response > t_i) on k inputs: global firing rate G(i) = k/N = 1% (--rate 0.01). Ties at t_i
  (many ReLU zeros) can leave fewer firing inputs; G(i) is the rate actually measured, and a unit that never
  fires has no score.
* Transformations T(z) of each input z (none is the identity): translations by (dy, dx) in {(0, ±s), (±s, 0)}
  for s = 1..--max-shift pixels (default 12 shifts) and rotations by ±a degrees about the image centre for a
  in --angles (default ±5, ±10, ±15: 6 rotations). Rotations resample nearest-neighbour: bilinear
  resampling averages neighbouring pixels, which lowers pixel noise and with it the peak responses, and so
  biases rotation scores down (on a small synthetic-data ConvPool net, max-pooled conv1 scored 0 with
  bilinear and 67 with nearest). Pixels moved in from outside are 0 after normalisation, i.e. the training
  set's mean colour; `--circular` wraps translations around instead (rotations always fill).
* Local firing rate L(i): over the inputs on which unit i fires, the mean fraction of their transformed
  copies on which it still fires. Score S(i) = L(i) / G(i), at most 1/G = 100 at a 1% rate (fires on every
  transformed copy) and about 1 for a unit whose firing the transformation randomises.
* Layer score: the mean of the top 20% (--top; ceil of 20% of the units that fire) of its units' scores,
  Goodfellow et al.'s summary as we recall it (not verified). Reported for translations only,
  rotations only and both together.

Fig. 4 has no numbers in the text, so no paper column is printed. Written to --out (default <run
dir>/analysis): invariance.json (settings, layer scores and every unit's scores). The last line printed is
one JSON object with the settings and layer scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.analysis import command
from rectnet.analysis.trained import load_model
from rectnet.config import DatasetConfig
from rectnet.data import BatchAugment, load_dataset
from rectnet.layers.facts import WeightLayer, weight_layers

KINDS = ("translation", "rotation")


@dataclass(frozen=True)
class Transform:
    kind: str  # translation | rotation
    dy: int = 0
    dx: int = 0
    degrees: float = 0.0

    def label(self) -> str:
        return f"shift({self.dy:+d},{self.dx:+d})" if self.kind == "translation" else f"rotate({self.degrees:+g})"


def default_transforms(max_shift: int = 3, angles: Sequence[float] = (5, 10, 15)) -> list[Transform]:
    """Shifts of 1..max_shift pixels up, down, left, right, and rotations by ±each angle."""
    shifts = [(s * sy, s * sx) for s in range(1, max_shift + 1) for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    return [Transform("translation", dy, dx) for dy, dx in shifts] + [
        Transform("rotation", degrees=sign * a) for a in angles for sign in (1, -1)
    ]


def translate(images: torch.Tensor, dy: int, dx: int, circular: bool = False) -> torch.Tensor:
    """Move the content of (N, C, H, W) images by dy rows and dx columns; vacated pixels are 0 unless circular."""
    if circular:
        return images.roll((dy, dx), dims=(2, 3))
    h, w = images.shape[2:]
    out = torch.zeros_like(images)
    out[:, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre, nearest-neighbour (keeps pixel statistics); corners from outside are 0."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply(images: torch.Tensor, transform: Transform, circular: bool = False) -> torch.Tensor:
    if transform.kind == "translation":
        return translate(images, transform.dy, transform.dx, circular)
    return rotate(images, transform.degrees)


def firing_thresholds(responses: torch.Tensor, rate: float = 0.01) -> torch.Tensor:
    """Per unit (column of (N, U) responses) the (k+1)-th largest value, k = max(1, round(rate·N)):
    responses above it are the top k, a global firing rate of k/N ≈ rate."""
    n = len(responses)
    k = max(1, round(rate * n))
    if k >= n:
        raise ValueError(f"a firing rate of {rate} needs more than {n} inputs")
    return responses.topk(k + 1, dim=0).values[k]


def scores_from_rates(fire: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """S(i) = L(i)/G(i) from fire (N, U) bool, on which inputs unit i fires, and local (N, U), the fraction of
    each input's transformed copies on which it fires; NaN for a unit that never fires."""
    firing = fire.sum(dim=0).double()
    global_rate = firing / len(fire)
    local_rate = (local.double() * fire).sum(dim=0) / firing.clamp_min(1)
    return torch.where(firing > 0, local_rate / global_rate.clamp_min(1e-300), torch.nan)


def invariance_scores(original: torch.Tensor, transformed: Sequence[torch.Tensor], rate: float = 0.01) -> torch.Tensor:
    """Goodfellow et al. 2009 scores of U units from their (N, U) responses to N inputs and to each transform."""
    thresholds = firing_thresholds(original, rate)
    local = torch.stack([t > thresholds for t in transformed]).double().mean(dim=0)
    return scores_from_rates(original > thresholds, local)


def top_fraction_mean(scores: torch.Tensor, fraction: float = 0.2) -> float:
    """Mean of the highest `fraction` (rounded up) of the finite scores; NaN if there are none."""
    finite = scores[torch.isfinite(scores)]
    if not len(finite):
        return math.nan
    top = max(1, math.ceil(fraction * len(finite)))
    return finite.sort(descending=True).values[:top].mean().item()


def _pool(output: torch.Tensor, pool: str) -> torch.Tensor:
    if output.ndim == 2:
        return output
    if pool == "max":
        return output.amax(dim=(2, 3))
    if pool == "mean":
        return output.mean(dim=(2, 3))
    return output[:, :, output.shape[2] // 2, output.shape[3] // 2]


@torch.inference_mode()
def unit_responses(
    model: nn.Module, layers: Sequence[WeightLayer], images: torch.Tensor, pool: str = "max", batch_size: int = 250
) -> dict[str, torch.Tensor]:
    """(N, U) pooled responses of each layer's units: its activation's output (the layer's own without one)."""
    kept: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}

    def hook(name: str):
        # Pool at once: a later in-place op may reuse the tensor.
        return lambda module, args, output: kept[name].append(_pool(output.float(), pool).cpu())

    handles = [(layer.after or layer.module).register_forward_hook(hook(layer.name)) for layer in layers]
    try:
        for first in range(0, len(images), batch_size):
            model(images[first : first + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in kept.items()}


@dataclass
class LayerInvariance:
    layer: str
    units: int
    scored: int  # units that fire at all
    scores: dict[str, torch.Tensor]  # kind (translation, rotation, all) -> per-unit scores
    top: float

    def layer_scores(self) -> dict[str, float]:
        return {kind: top_fraction_mean(s, self.top) for kind, s in self.scores.items()}


def measure(
    model: nn.Module,
    layers: Sequence[WeightLayer],
    images: torch.Tensor,
    transforms: Sequence[Transform],
    pool: str = "max",
    rate: float = 0.01,
    top: float = 0.2,
    circular: bool = False,
    batch_size: int = 250,
) -> list[LayerInvariance]:
    """Invariance scores of every unit of `layers` over `images` and their `transforms` (module docstring)."""
    original = unit_responses(model, layers, images, pool, batch_size)
    thresholds = {name: firing_thresholds(r, rate) for name, r in original.items()}
    fire = {name: r > thresholds[name] for name, r in original.items()}
    counts = {kind: {name: torch.zeros(r.shape, dtype=torch.float64) for name, r in original.items()} for kind in KINDS}
    per_kind = {kind: sum(t.kind == kind for t in transforms) for kind in KINDS}
    for transform in transforms:  # accumulate firing counts: one transform's responses in memory at a time
        responses = unit_responses(model, layers, apply(images, transform, circular), pool, batch_size)
        for name, r in responses.items():
            counts[transform.kind][name] += r > thresholds[name]
    results = []
    for name in original:
        scores = {
            kind: scores_from_rates(fire[name], counts[kind][name] / per_kind[kind]) for kind in KINDS if per_kind[kind]
        }
        total = sum(counts[kind][name] for kind in KINDS) / len(transforms)
        scores["all"] = scores_from_rates(fire[name], total)
        units = original[name].shape[1]
        results.append(LayerInvariance(name, units, int(fire[name].any(dim=0).sum()), scores, top))
    return results


def load_images(config: dict, root: str | None, split: str, num_images: int, synthetic: bool = False) -> torch.Tensor:
    """The first `num_images` images of the checkpoint's dataset split, normalised as training normalises them."""
    fields = {f.name for f in dataclasses.fields(DatasetConfig)}
    cfg = DatasetConfig(**{k: v for k, v in config["dataset"].items() if k in fields})
    if synthetic:
        cfg.name = "synthetic"
    if root is not None:
        cfg.root = root
    splits = load_dataset(cfg, config.get("seed", 0))
    images = getattr(splits, split).images[:num_images]
    channels = images.shape[1]
    mean, std = splits.channel_stats() if cfg.normalize else ([0.0] * channels, [1.0] * channels)
    return BatchAugment(torch.tensor(mean), torch.tensor(std))(images, None)


def format_table(results: Sequence[LayerInvariance]) -> str:
    kinds = list(results[0].scores) if results else []
    rows = [f"{'layer':<8} {'units':>6} {'fire':>6} " + " ".join(f"{k:>12}" for k in kinds)]
    for r in results:
        scores = r.layer_scores()
        rows.append(f"{r.layer:<8} {r.units:>6} {r.scored:>6} " + " ".join(f"{scores[k]:>12.2f}" for k in kinds))
    return "\n".join(rows)


def _select_layers(model: nn.Module, names: Sequence[str]) -> list[WeightLayer]:
    layers = weight_layers(model)
    if not names:
        return [w for w in layers if w.is_conv]
    unknown = set(names) - {w.name for w in layers}
    if unknown:
        raise ValueError(f"no layer(s) {sorted(unknown)}; this model has {[w.name for w in layers]}")
    return [w for w in layers if w.name in names]


def _json_safe(values: dict[str, float] | list[float]) -> dict[str, float | None] | list[float | None]:
    """NaN (a unit or layer without firing units) as null: NaN is not JSON."""
    if isinstance(values, dict):
        return {k: None if math.isnan(v) else v for k, v in values.items()}
    return [None if math.isnan(v) else v for v in values]


def _parser() -> argparse.ArgumentParser:
    parser = command.checkpoint_parser(
        "invariance", "Goodfellow et al. (2009) invariance scores per layer (Shang et al. 2016 Fig. 4)."
    )
    parser.add_argument("--data-root", help="dataset.root for the checkpoint's dataset (default: its own)")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic dataset instead")
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--max-shift", type=int, default=3, help="translations of 1..N pixels (0: none)")
    parser.add_argument("--angles", type=float, nargs="*", default=[5.0, 10.0, 15.0], help="rotations by ±each")
    parser.add_argument("--pool", default="max", choices=("max", "mean", "center"))
    parser.add_argument("--rate", type=float, default=0.01, help="global firing rate")
    parser.add_argument("--top", type=float, default=0.2, help="fraction of top-scoring units averaged per layer")
    parser.add_argument("--circular", action="store_true", help="wrap translations around")
    parser.add_argument("--layers", nargs="*", default=[], help="layers (default: every conv)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", help="output folder (default: <run dir>/analysis)")
    return parser


def analyse(args: argparse.Namespace) -> dict:
    """Score the layers, print the table, write invariance.json; the record of the command's last line."""
    transforms = default_transforms(args.max_shift, args.angles)
    if not transforms:
        raise ValueError("no transformations: give --max-shift >= 1 or some --angles")
    loaded = load_model(args.path, args.which)
    layers = _select_layers(loaded.model, args.layers)
    images = load_images(loaded.config, args.data_root, args.split, args.num_images, args.synthetic)
    results = measure(
        loaded.model, layers, images, transforms, args.pool, args.rate, args.top, args.circular, args.batch_size
    )
    settings = {
        "checkpoint": str(loaded.checkpoint),
        "model": loaded.name,
        "activation": loaded.config["activation"]["name"],
        "images": len(images),
        "pool": args.pool,
        "rate": args.rate,
        "top": args.top,
        "circular": args.circular,
        "transforms": [t.label() for t in transforms],
    }
    print(f"{loaded.checkpoint}: {loaded.name}, {settings['activation']}; {len(images)} images, pool {args.pool}")
    print(format_table(results))
    out = Path(args.out) if args.out else loaded.run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    detail = [
        {
            "layer": r.layer,
            "layer_scores": _json_safe(r.layer_scores()),
            "unit_scores": {k: _json_safe(s.tolist()) for k, s in r.scores.items()},
        }
        for r in results
    ]
    (out / "invariance.json").write_text(json.dumps({**settings, "layers": detail}) + "\n")
    print(f"written: {out / 'invariance.json'}")
    return {**settings, "layers": {r.layer: _json_safe(r.layer_scores()) for r in results}}


def main(argv: Sequence[str] | None = None) -> None:
    command.run(_parser(), argv, analyse)


if __name__ == "__main__":
    main()
