"""Chaos check (not a test): kill -9 training at random moments, resume, compare with an uninterrupted run.

    python scripts/chaos.py --trials 20            # about 10 s per trial on 2 CPU cores
    python scripts/chaos.py --trials 40 --out /tmp/chaos --keep

One reference run trains a tiny synthetic configuration (dropout on, a checkpoint every 2 steps, so the RNG
streams and mid-epoch positions matter) without interruption. Each trial starts the same run in a fresh
directory and SIGKILLs it, then resumes it (`trainer.resume=auto`) until it finishes. Half of the trials
kill at a uniformly random moment of the run (startup and the last epoch included); the other half wait for
the k-th checkpoint write to begin (its temporary file appears) and kill inside it. The finished trial is
compared with the reference tensor by tensor: every tensor and value of `checkpoints/last.pt` and
`best.pt` (model, optimizer, schedule, RNG states, position, counts; the config, which names the run
directory, excepted) and every metrics.jsonl record (wall-clock fields excepted).

The last line printed is one JSON object: trials, identical, the kills that landed inside a checkpoint
write (a temporary file was left), the kills that came after the run had finished, seconds, and the
mismatches (empty when every trial is identical).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGES, BATCH, EPOCHS, EVERY = 512, 64, 3, 2
LAST_WRITES = EPOCHS * (IMAGES // BATCH // EVERY)  # last.pt at steps 2, 4, 6 and at the epoch's end
CONFIG = [
    "dataset=synthetic",
    "dataset.image_size=16",
    f"dataset.num_train={IMAGES}",
    "dataset.num_test=200",
    "model.width=0.125",
    "model.dropout=0.3",
    "schedule=constant",
    f"trainer.batch_size={BATCH}",
    f"trainer.epochs={EPOCHS}",
    f"trainer.checkpoint_every_steps={EVERY}",
    "trainer.progress=none",
    "trainer.threads=1",
]
WALL_CLOCK_KEYS = ("time_s", "train/images_per_s")
TEMPORARIES = (".*.tmp-*", ".last.pt.new")


def start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *CONFIG, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(run_dir: Path) -> None:
    proc = start(run_dir)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{run_dir}: the run exited {proc.returncode}:\n{err[-3000:]}")


def temporaries(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return [p for pattern in TEMPORARIES for p in folder.glob(pattern)] if folder.is_dir() else []


def kill_at_random(proc: subprocess.Popen, duration: float, rng: random.Random) -> None:
    try:
        proc.wait(timeout=rng.uniform(0, duration))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)


def kill_inside_a_write(proc: subprocess.Popen, run_dir: Path, writes: int) -> None:
    """SIGKILL as soon as the `writes`-th checkpoint write has begun (polls for its temporary file)."""
    seen, writing = 0, False
    while proc.poll() is None:
        now = bool(temporaries(run_dir))
        if now and not writing:
            seen += 1
            if seen >= writes:
                proc.send_signal(signal.SIGKILL)
                break
        writing = now
        time.sleep(0.0002)  # a tiny checkpoint takes milliseconds to write and fsync


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint values differ: tensors bit for bit, containers element by element."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b or (a != a and b != b) else [where]  # a != a: NaN equals NaN here


def compare(run_dir: Path, reference: Path) -> list[str]:
    found = []
    for name in ("last.pt", "best.pt"):
        ours = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        theirs = torch.load(reference / "checkpoints" / name, weights_only=True)
        ours.pop("config"), theirs.pop("config")  # names the run directory
        ours.pop("resumes"), theirs.pop("resumes")  # the record of the kills themselves
        found += differences(ours, theirs, name)
    records = [_without_clock(r) for r in _records(run_dir)]
    if records != [_without_clock(r) for r in _records(reference)]:
        found.append("metrics.jsonl")
    return found


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="rectnet-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    reference = out / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    finish(reference)
    duration = time.perf_counter() - began

    identical, in_write, after_end, mismatches = 0, 0, 0, {}
    for trial in range(args.trials):
        run_dir = out / f"trial{trial:03d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = start(run_dir)
        if trial % 2:
            kill_inside_a_write(proc, run_dir, rng.randint(1, LAST_WRITES))
        else:
            kill_at_random(proc, duration, rng)
        proc.wait()
        after_end += proc.returncode == 0
        in_write += bool(temporaries(run_dir))
        finish(run_dir)
        found = compare(run_dir, reference)
        identical += not found
        if found:
            mismatches[run_dir.name] = found[:5]
        print(f"trial {trial}: exit {proc.returncode}, {'identical' if not found else found[:3]}", flush=True)
        if not args.keep and not found:
            shutil.rmtree(run_dir)
    if not args.keep and not mismatches and args.out is None:
        shutil.rmtree(out)
    summary = {
        "trials": args.trials,
        "identical": identical,
        "killed_inside_checkpoint_write": in_write,
        "finished_before_kill": after_end,
        "seconds": round(time.perf_counter() - began, 1),
        "mismatches": mismatches,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
