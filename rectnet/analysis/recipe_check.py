"""Every pinned recipe in miniature on real data: is it stable at its own learning rate, and does it descend?

    python -m rectnet.analysis.recipe_check --cifar data --imagenet /data/imagenet-sample \\
        [--steps 20] [--imagenet-batch 32] [--only convpool_crelu ...] [--out docs/results/recipes.md]

For each `configs/experiment/<name>.yaml`, the recipe is composed as `python train.py experiment=<name>` composes
it, with only the data pointed at what is here:

* CIFAR recipes read CIFAR-10 from `--cifar` (the python-pickle layout) at their own batch size;
* ImageNet recipes read an ImageFolder tree at `--imagenet` (class folders of JPEGs, e.g. the 100-image sample;
  it serves as both training and test split), at 224 pixels, with the tree's class count and a batch of
  `--imagenet-batch` (the sample has fewer images than the recipes' batch of 128); `--imagenet-width` scales
  the ImageNet nets when the full ones do not fit the machine's time.

Then the stability probe (`rectnet.analysis.sharpness`) measures lambda_max at init on the first training
batch, and the same initial model trains `--steps` SGD steps with the recipe's optimizer and schedule
(warmup included). A recipe passes when the probe calls its lr stable and the steps do not diverge: every loss
is finite and none exceeds twice the larger of the first loss and chance (ln of the class count), which is
what the unstable starts did (losses of ~50 or NaN within ten steps). The table also gives the mean loss of the
last quarter of the steps: a few steps of a heavily regularised net at a paper's lr often stay near chance or
rise a little before falling, so descent is reported, not required; the demonstrations in docs/results show
the recipes learning over epochs.

The table (Markdown) is written to --out and printed; the last line printed is one JSON object per recipe
list.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from rectnet.analysis.sharpness import measure, prepare
from rectnet.config import CONFIG_DIR
from rectnet.engine.optim import make_optimizer, make_schedule
from rectnet.engine.provenance import versions
from rectnet.summary import compose_settings

IMAGE_FOLDER = ("imagenet",)


def recipes() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def data_overrides(name: str, args: argparse.Namespace) -> list[str]:
    """Point recipe `name` at the data here, leaving everything else as the recipe says."""
    dataset = compose_settings([f"experiment={name}"]).dataset.name
    if dataset in IMAGE_FOLDER:
        classes = sum(1 for p in Path(args.imagenet).iterdir() if p.is_dir())
        return [
            f"dataset.root={args.imagenet}",
            "dataset.train_split=",
            "dataset.test_split=",
            f"dataset.num_classes={classes}",
            "dataset.workers=0",
            f"dataset.stats_images={args.stats_images}",
            f"trainer.batch_size={args.imagenet_batch}",
            f"model.width={args.imagenet_width}",
        ]
    if dataset.startswith("cifar"):
        return ["dataset=cifar10", f"dataset.root={args.cifar}"]
    return []  # synthetic recipes (quickstart) make their own data


def train_steps(settings, source, model, steps: int) -> list[float]:
    """`steps` training steps of the recipe's SGD and schedule from the model's current weights."""
    optimizer = make_optimizer(model, settings.optim)
    schedule = make_schedule(optimizer, settings.schedule, settings.trainer.epochs, len(source))
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        epoch += 1
        for images, labels, _ in source.train_epoch(epoch):
            loss = F.cross_entropy(model(images).float(), labels)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]) or len(losses) == steps:
                return losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.after_step()
    return losses


def check(name: str, overrides: Sequence[str], steps: int, iters: int) -> dict:
    started = time.perf_counter()
    settings, source, model = prepare([f"experiment={name}", *overrides])
    probe = measure(settings, source, model, 1, iters)
    losses = train_steps(settings, source, model, steps)
    finite = all(math.isfinite(v) for v in losses)
    tail = losses[-max(1, len(losses) // 4) :]
    end = sum(tail) / len(tail) if finite else math.nan
    diverged = not finite or max(losses) > 2 * max(losses[0], probe["chance_loss"])
    return {
        "recipe": name,
        "dataset": settings.dataset.name,
        "classes": settings.dataset.num_classes,
        "model": settings.model.name,
        "width": settings.model.width,
        "activation": settings.activation.name,
        "init": f"{settings.init.name}/{settings.init.mode}",
        "batch": settings.trainer.batch_size,
        "lr": probe["lr"],  # the first step's: a warming-up recipe starts at lr x warmup_factor
        "peak_lr": settings.optim.lr,
        "steps": len(losses),
        "first_loss": losses[0],
        "end_loss": end,
        "max_loss": max(losses) if finite else math.nan,
        "finite": finite,
        "lambda_max": probe["lambda_max"],
        "lr_max_stable": probe["lr_max_stable"],
        "stable": probe["stable"],
        "sharpest_layer": max(probe["layers"], key=lambda row: row["share"])["name"],
        "diverged": diverged,
        "passed": probe["stable"] and not diverged,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _lr(row: dict) -> str:
    """The lr the probe checked, with the peak a warmup leads to."""
    return f"{row['lr']:g}" if row["lr"] == row["peak_lr"] else f"{row['lr']:g} → {row['peak_lr']:g}"


def render(rows: Sequence[dict], command: str) -> str:
    header = (
        "| recipe | data (classes) | model, width | act | init | batch | lr | λ_max | stable lr < | "
        "first loss | loss, last quarter | max | steps | sharpest | pass |"
    )
    lines = [
        "# Every pinned recipe in miniature: stability at init and the first steps on real data",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"versions: {json.dumps(versions())}",
        "",
        "λ_max: the largest Hessian eigenvalue of the training loss at init on the first batch (Lanczos iteration);"
        " 'stable lr <': the heavy-ball SGD limit 2(1+μ)/λ_max; 'sharpest': the layer with the largest share of"
        " λ_max; 'lr': the first step's, with the peak of a warmup after the arrow. A recipe passes when its"
        " first step's lr is below the limit and its steps do not diverge (a loss that is not"
        " finite or above twice the larger of the first loss and chance, ln classes).",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['dataset']} ({r['classes']}) | {r['model']}, {r['width']:g} | {r['activation']} | "
            f"{r['init']} | {r['batch']} | {_lr(r)} | {r['lambda_max']:.4g} | {r['lr_max_stable']:.3g} | "
            f"{r['first_loss']:.4g} | {r['end_loss']:.4g} | {r['max_loss']:.4g} | {r['steps']} | "
            f"{r['sharpest_layer']} | {'yes' if r['passed'] else '**NO**'} |"
        )
    passed = sum(r["passed"] for r in rows)
    lines += ["", f"{passed} of {len(rows)} recipes pass."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rectnet.analysis.recipe_check", description=__doc__.split("\n")[0])
    parser.add_argument("--cifar", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--imagenet", required=True, help="ImageFolder tree: <dir>/<class>/*.JPEG")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--iters", type=int, default=20, help="most Hessian-vector products per probe")
    parser.add_argument("--imagenet-batch", type=int, default=32)
    parser.add_argument("--imagenet-width", type=float, default=1.0)
    parser.add_argument("--stats-images", type=int, default=100)
    parser.add_argument("--only", nargs="*", help="recipe names (default: every configs/experiment file)")
    parser.add_argument("--out", help="Markdown file to write the table to")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every recipe after the data's")
    args = parser.parse_args(argv)
    names = args.only or recipes()
    unknown = sorted(set(names) - set(recipes()))
    if unknown:
        parser.error(f"no such recipe: {', '.join(unknown)}")
    rows = []
    for name in names:
        rows.append(check(name, [*data_overrides(name, args), *args.overrides], args.steps, args.iters))
        print(json.dumps(rows[-1]), flush=True)
    table = render(rows, "python -m rectnet.analysis.recipe_check " + " ".join(sys.argv[1:] if argv is None else argv))
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    print(json.dumps(rows))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
