"""The default command, one epoch per activation and fan mode, on real CIFAR-10: does every start learn?

    python scripts/demo/default_command.py --data DATA [--width 0.25] [--out runs/default_command]
        [--report docs/results/default_command.md] [--report-only] [--activations A ...] [--modes M ...] [--init I]
        [--steps N]
        [extra train.py overrides...]

Runs `python train.py activation=<a> init=kaiming init.mode=<m>` for every activation and both fan modes, with
the default recipe (ConvPool-CNN-C, lr 0.01, momentum 0.9, dropout, batch 128, all 50,000 training images, one
epoch) at a reduced width so that twelve runs fit a CPU, logging the recent training loss every 10 steps.
`--init lsuv` (or xavier) runs that init instead of Kaiming's (runs named <activation>_<init>_<mode>);
`--steps N` stops each run after its first N steps (trainer.max_steps_per_epoch), then tests it.
Finished runs are skipped when the script runs again. Then writes a Markdown table: the training loss over
the first 10 steps, after 100 and 200 steps and at the end of the epoch (each the mean of the last 20 steps,
as the progress line shows it), and the test error after the epoch (chance: 90%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from rectnet.layers import ACTIVATIONS as REGISTRY
from rectnet.summary import compose_settings

REPO = Path(__file__).resolve().parents[2]
ACTIVATIONS = ("relu", "prelu", "prelu_shared", "avr", "crelu", "leaky_relu")  # the default set: the papers' rectifiers
CHOICES = tuple(name for name in REGISTRY if name not in ("identity", "custom"))  # custom needs a target
MODES = ("fan_in", "fan_out")
LOG_EVERY = 10
# "epoch 1/1 step 120/391 loss 2.1234 (last 20 steps; ..." in train.log
STEP_LINE = re.compile(r"step (\d+)/\d+ loss ([0-9.naif]+) \(last")


def run_name(activation: str, init: str, mode: str) -> str:
    return f"{activation}_{mode}" if init == "kaiming" else f"{activation}_{init}_{mode}"


def train(run_dir: Path, activation: str, mode: str, args: argparse.Namespace) -> None:
    if (run_dir / "results.json").is_file():
        print(f"done: {run_dir}")
        return
    print(f"run: {run_dir}", flush=True)
    overrides = [
        f"activation={activation}",
        f"init={args.init}",
        f"init.mode={mode}",
        f"model.width={args.width}",
        f"dataset.root={args.data}",
        "trainer.epochs=1",
        *([f"trainer.max_steps_per_epoch={args.steps}"] if args.steps else []),
        f"trainer.log_every_steps={LOG_EVERY}",
        "trainer.progress=lines",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], check=False, stdout=subprocess.DEVNULL)


def losses_by_step(log: Path) -> dict[int, float]:
    found = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        match = STEP_LINE.search(line)
        if match:
            found[int(match.group(1))] = float(match.group(2))
    return found


def row(run_dir: Path, activation: str, mode: str) -> str:
    losses = losses_by_step(run_dir / "train.log")
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    last = max(losses) if losses else None

    def at(step: int | None) -> str:
        return f"{losses[step]:.3f}" if step in losses else "—"

    error = results.get("final", {}).get("top1_err")
    status = results.get("status", "not run")
    err = f"**{error:.2f}**" if error is not None else status
    return f"| {activation} | {mode} | {at(LOG_EVERY)} | {at(100)} | {at(200)} | {at(last)} | {err} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 root (the python-pickle layout)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("runs/default_command"))
    parser.add_argument("--report", type=Path, default=None, help="Markdown table to write (default: OUT/report.md)")
    parser.add_argument("--report-only", action="store_true", help="write the table from the runs already there")
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=CHOICES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--init", default="kaiming", choices=("kaiming", "xavier", "lsuv"))
    parser.add_argument("--steps", type=int, default=None, help="stop each run after N steps (default: one epoch)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    runs = [(args.out / run_name(a, args.init, m), a, m) for m in args.modes for a in args.activations]
    for run_dir, activation, mode in [] if args.report_only else runs:
        train(run_dir, activation, mode, args)
    subset = [f"--activations {' '.join(args.activations)}"] if tuple(args.activations) != ACTIVATIONS else []
    subset += [f"--modes {' '.join(args.modes)}"] if tuple(args.modes) != MODES else []
    subset += [f"--init {args.init}"] if args.init != "kaiming" else []
    subset += [f"--steps {args.steps}"] if args.steps else []
    length = f"the first {args.steps} steps of one epoch" if args.steps else "one epoch"
    script = "python scripts/demo/default_command.py --data DATA"
    command = " ".join([script, f"--width {args.width}", *subset, *args.overrides])
    scale = (
        "at the model's full width"
        if args.width == 1
        else f"at width {args.width} so that the runs fit a CPU (the probe checks full width: docs/recipes.md)"
    )
    optim = compose_settings([]).optim  # the defaults the runs used, not a copy of them
    lines = [
        "# The default command, one epoch per activation and fan mode, on real CIFAR-10",
        "",
        f"`python train.py activation=<a> init={args.init} init.mode=<m>`: ConvPool-CNN-C, lr {optim.lr:g}, "
        f"momentum {optim.momentum:g},",
        f"weight decay {optim.weight_decay:g}, dropout (Springenberg's 0.2/0.5; AVR: its own 0.1 and initial bias "
        "0.5), flips, batch 128,",
        f"all 50,000 training images, {length}, {scale}.",
        "Training loss: the mean of the last 20 steps (the first 10 at step 10), as the progress line shows it",
        "(chance: ln 10 = 2.303); test error on all 10,000 test images at the end (chance: 90%). One seed each:",
        "what this shows is that every start learns, not how the activations rank after a full schedule.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; one run at a time.",
        "",
        "| activation | init.mode | loss, steps 1-10 | steps 81-100 | 181-200 | last 20 | test top-1 err % |",
        "|---|---|---|---|---|---|---|",
        *(row(*run) for run in runs),
    ]
    report = args.report or args.out / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
