"""He et al. 2015 Fig. 3 in a few CPU minutes: the 30-layer plain net with ReLU on real CIFAR-10, initialised
"ours" (Kaiming, Eq. 10) vs "Xavier" (n·Var[w] = 1). The paper (ImageNet, full width): ours converges,
Xavier "completely stalls" because every layer halves the signal's variance (Eq. 8), 2^-27 over its 27 convs.

    .venv/bin/python scripts/demo/fig3_small.py --data data       # 2-6 min on 2 CPU cores; data/: README, CIFAR data
    .venv/bin/python scripts/demo/fig3_small.py --data data --figure 2 --out outputs/fig2_small   # Fig. 2: model B
    .venv/bin/python scripts/demo/fig3_small.py --data data --compare gain --activation silu    # a smooth activation

Each run is `python train.py experiment=fig3_plain30_<init> ...` with the same overrides (printed), so the two
differ only in the init policy (both mode fan_in; Xavier uniform as in Caffe, Kaiming normal). The demo is
scaled down, not a reproduction of the figure's numbers:

* `model.width` 1/8 (8..32 filters, fc 512) and 32x32 inputs, on which the net's last stage works on 2x2 maps;
* `model.dropout=0`: the question is whether optimisation starts, not generalisation;
* short "epochs" of `--steps` steps (trainer.max_steps_per_epoch), each followed by a test on `--num-test` images.

`--compare gain --activation A` asks Fig. 3's question of a smooth activation instead (issue 24): both runs
Kaiming fan_in with activation A, one with the gain derived for A (`rectnet.layers.gain`), one with ReLU's
sqrt(2) stated as `activation.gain` (the naive choice: `calculate_gain('relu')` for every activation).
`--compare lsuv`: Kaiming vs LSUV (`init=lsuv`, Mishkin & Matas 2016), ReLU.

It prints the train loss and test error of both runs after every short epoch, then one JSON line. With ReLU and
10 classes, a stalled net sits at the chance loss ln 10 = 2.303 and 90% error. With the defaults (8 x 100 steps
of 64 images, about one pass over the training set) one run gave (docs/results/fig3_small.md):

    steps          100   200   300   400   500   600   700   800
    Kaiming loss  2.302 2.209 2.108 2.030 1.997 1.970 1.936 1.911   test error 78.9% at 800
    Xavier loss   2.303 2.303 2.303 2.303 2.303 2.303 2.303 2.304   test error 90.1% at 800 (chance)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELU_GAIN = 2**0.5  # He et al. Eq. 10
# He et al. 2015 Fig. 3: the 30-layer plain net (both inits must start; Xavier stalls); Fig. 2: model B of
# Table 3 (22 layers; both converge, Kaiming starts reducing the error earlier).
FIGURES = {"3": "fig3_plain30", "2": "fig2_b"}
CHANCE_LOSS = 2.302585  # ln 10


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """The compared runs: name -> the overrides that make it differ from the other."""
    net = FIGURES[args.figure]
    if args.compare == "init":
        return {init: [f"experiment={net}_{init}"] for init in ("kaiming", "xavier")}
    if args.compare == "lsuv":
        return {"kaiming": [f"experiment={net}_kaiming"], "lsuv": [f"experiment={net}_kaiming", "init=lsuv"]}
    kaiming = [f"experiment={net}_kaiming", f"activation={args.activation}"]
    return {"derived": kaiming, "relu_gain": [*kaiming, f"activation.gain={RELU_GAIN!r}"]}


def train_overrides(args: argparse.Namespace, name: str, differ: list[str]) -> list[str]:
    return [
        *differ,
        "dataset=cifar10",  # the recipe is ImageNet's: keep its model, init and optimizer, not its input pipeline
        "dataset.per_pixel_mean=false",
        "dataset.lighting_std=0",
        f"dataset.root={args.data}",
        f"dataset.num_test={args.num_test}",
        f"model.width={args.width}",
        "model.dropout=0",
        f"optim.lr={args.lr}",
        "schedule=constant",
        f"trainer.epochs={args.epochs}",
        f"trainer.max_steps_per_epoch={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.device=cpu",
        "trainer.progress=none",
        "logger=none",
        f"seed={args.seed}",
        f"hydra.run.dir={Path(args.out) / name}",
        *args.overrides,
    ]


def run(args: argparse.Namespace, name: str, differ: list[str]) -> list[dict]:
    """Train one variant; returns its metrics.jsonl records (one per short epoch)."""
    overrides = train_overrides(args, name, differ)
    print("python train.py " + " ".join(overrides), flush=True)
    subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, check=True)
    lines = (Path(args.out) / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def report(curves: dict[str, list[dict]], steps: int) -> dict:
    print(f"\n{'steps':>6}  " + "  ".join(f"{init + ' loss':>13} {init + ' err%':>13}" for init in curves))
    for i, records in enumerate(zip(*curves.values(), strict=True)):
        cells = "  ".join(f"{r['train/loss']:>13.4f} {r['test/top1_err']:>13.2f}" for r in records)
        print(f"{(i + 1) * steps:>6}  {cells}")
    return {
        init: {
            "train_loss": [round(r["train/loss"], 4) for r in records],
            "test_top1_err": [round(r["test/top1_err"], 2) for r in records],
        }
        for init, records in curves.items()
    } | {"steps_per_point": steps, "chance_loss": CHANCE_LOSS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--figure", choices=sorted(FIGURES), default="3", help="3: the 30-layer net; 2: model B")
    parser.add_argument("--out", default="outputs/fig3_small", help="run directories: <out>/<variant>")
    parser.add_argument(
        "--compare",
        choices=("init", "gain", "lsuv"),
        default="init",
        help="init: Kaiming vs Xavier (ReLU); gain: see above; lsuv: Kaiming vs init=lsuv (ReLU)",
    )
    parser.add_argument("--activation", default="silu", help="--compare gain: the activation (default silu)")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8, help="short epochs per run")
    parser.add_argument("--steps", type=int, default=100, help="SGD steps per short epoch")
    parser.add_argument("--num-test", type=int, default=2000, help="test images evaluated after each short epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for both runs, e.g. trainer.threads=1")
    args = parser.parse_args()
    curves = {name: run(args, name, differ) for name, differ in variants(args).items()}
    print(json.dumps(report(curves, args.steps)))


if __name__ == "__main__":
    main()
