"""Chaos checks (not tests): kill -9 training at random moments (default), or attack it with faults (--faults).

    python scripts/checks/chaos.py --trials 20            # kills: about 10 s per trial on 2 CPU cores
    python scripts/checks/chaos.py --trials 40 --out /tmp/chaos --keep
    python scripts/checks/chaos.py --faults               # every fault case: a few minutes on 2 CPU cores
    python scripts/checks/chaos.py --faults --only config checkpoint/last_truncated --fuzz 50 --seed 3
    python scripts/checks/chaos.py --faults --repo /tmp/before   # judge another checkout (a worktree of an old commit)

Kills. One reference run trains a tiny synthetic configuration (dropout on, a checkpoint every 2 steps, so the
RNG streams and mid-epoch positions matter) without interruption. Each trial starts the same run in a fresh
directory and SIGKILLs it, then resumes it (`trainer.resume=auto`) until it finishes. Half of the trials
kill at a uniformly random moment of the run (startup and the last epoch included); the other half wait for
the k-th checkpoint write to begin (its temporary file appears) and kill inside it. The finished trial is
compared with the reference tensor by tensor: every tensor and value of `checkpoints/last.pt` and
`best.pt` (model, optimizer, schedule, RNG states, position, counts; the config, which names the run
directory, excepted) and every metrics.jsonl record (wall-clock fields excepted). The last line printed is
one JSON object: trials, identical, the kills that landed inside a checkpoint write (a temporary file was
left), the kills that came after the run had finished, seconds, and the mismatches (empty when every trial
is identical).

Faults (--faults). A catalogue of small named cases in five categories, each a tiny run of train.py (as a
user starts it: argv, exit status, stdout and stderr) meeting one fault, and what surviving it means:

  checkpoint  last.pt/prev.pt damaged (cut short, zero or random bytes, a directory, entries missing or of
              the wrong type, NaN weights, a pickle that would run code), a leftover temporary or an
              interrupted rotation, under a finished 2-epoch run relaunched for 3 epochs. Survived: the run
              continues from an intact checkpoint (its metrics keep the epochs that checkpoint holds; its
              final weights equal an uninterrupted run's) or refuses in one line naming the checkpoints,
              every file it found still there; never a silent fresh start; no code from the file ran.
  disk        checkpoints/ a plain file or read-only, a read-only run directory, a full or too small disk.
              Survived: a one-line refusal naming the place, before training, nothing lost. Read-only
              folders need a non-root user (chmod) or, for root (whom permissions do not stop), a tmpfs
              mount; disks need the mount. A case this machine cannot set up is skipped, not tried.
  data        CIFAR batch files with float or NaN pixels, out-of-range labels, the wrong shape, cut short,
              missing, or a pickle that would run code; ImageNet-style JPEGs cut short, empty, or text,
              decoded with dataset.workers=0 and 2. Survived: a one-line refusal naming the problem.
  config      the values of issue 21 and wrong types, valid edge values (which must train), and --fuzz N
              more drawn (seeded) from a table of keys and values that no run can honour. Survived: a
              refusal naming the key, or exit 0 for the valid ones.
  nonfinite   a NaN training loss (injected into F.cross_entropy before train.py runs) in a fresh and in a
              resumed run. Survived: a one-line refusal naming the loss and the epoch, nothing lost.

Everywhere a Python traceback, a signal, a hang (killed after HUNG_S) or exit 0 after a fault no run can
honour is a failure. Hydra's own composition errors (a wrong type, an unknown key) are a short block ending
in Hydra's hint line; without a traceback and naming the key, that block counts as the one-line refusal.

train.py starts are served by a launcher process per job (`Launcher`): it imports what train.py imports
once, then forks a child per case that runs train.py as `python train.py` would (argv, cwd, stdio, exit
status); that saves the ~8 s of imports each start would pay. The last line printed is one JSON object:
tried, survived, skipped, failures ({case, category, reason}), seconds, and the checkout judged (repo) and
the skipped cases with why (skips). Failed cases keep their folder (output.txt: what the run printed).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however this file is loaded

import torch  # noqa: E402
from fault_inputs import config_cases, data_cases  # noqa: E402
from fault_launcher import Launcher  # noqa: E402
from fault_state import checkpoint_cases, disk_cases, nonfinite_cases  # noqa: E402
from faults import CATEGORIES, Case, Lab, _records, make_fixtures, run_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
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


def start(run_dir: Path, repo: Path = ROOT) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [sys.executable, str(repo / "train.py"), *CONFIG, f"hydra.run.dir={run_dir}"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(run_dir: Path, repo: Path = ROOT) -> None:
    proc = start(run_dir, repo)
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


def _without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS}


def kill_trials(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="rectnet-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    reference = out / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    finish(reference, args.repo)
    duration = time.perf_counter() - began

    identical, in_write, after_end, mismatches = 0, 0, 0, {}
    for trial in range(args.trials):
        run_dir = out / f"trial{trial:03d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = start(run_dir, args.repo)
        if trial % 2:
            kill_inside_a_write(proc, run_dir, rng.randint(1, LAST_WRITES))
        else:
            kill_at_random(proc, duration, rng)
        proc.wait()
        after_end += proc.returncode == 0
        in_write += bool(temporaries(run_dir))
        finish(run_dir, args.repo)
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


# =========================================================================================================
# Faults: the catalogue and its run (the lab: faults.py; the cases: fault_state.py, fault_inputs.py)


def catalogue(fuzz: int, seed: int) -> list[Case]:
    return checkpoint_cases() + disk_cases() + data_cases() + config_cases(fuzz, seed) + nonfinite_cases()


def selected(cases: list[Case], only: list[str] | None) -> list[Case]:
    """The cases named by --only: categories (`config`) or single cases (`checkpoint/last_truncated`)."""
    if not only:
        return cases
    chosen = [c for c in cases if c.category in only or c.label in only]
    unknown = set(only) - {c.category for c in chosen} - {c.label for c in chosen}
    if unknown:
        raise SystemExit(f"chaos.py: --only: no such category or case: {', '.join(sorted(unknown))}")
    return chosen


def fault_trials(args: argparse.Namespace) -> dict:
    cases = selected(catalogue(args.fuzz, args.seed), args.only)
    out = args.out or Path(tempfile.mkdtemp(prefix="rectnet-faults-"))
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab(out, args.seed)
    began = time.perf_counter()
    launchers = [Launcher(args.repo) for _ in range(max(1, min(args.jobs, len(cases))))]
    idle: queue.Queue[Launcher] = queue.Queue()
    printing = threading.Lock()

    def attempt(case: Case) -> tuple[Case, str | None, str | None]:
        launcher = idle.get()
        try:
            result = run_case(case, lab, launcher)
        finally:
            idle.put(launcher)
        _, reason, skipped = result
        with printing:
            verdict = f"skipped ({skipped})" if skipped else f"FAILED: {reason}" if reason else "survived"
            print(f"{case.label}: {verdict}", flush=True)
        if not reason and not args.keep:
            shutil.rmtree(out / case.category / case.folder, ignore_errors=True)
        return result

    try:
        if any(c.needs_base for c in cases):
            make_fixtures(lab, launchers[0])
        for launcher in launchers:
            idle.put(launcher)
        with ThreadPoolExecutor(len(launchers)) as pool:
            results = list(pool.map(attempt, cases))
    finally:
        for launcher in launchers:
            launcher.close()
    failures = [{"case": c.name, "category": c.category, "reason": r} for c, r, s in results if r and not s]
    skips = [{"case": c.name, "category": c.category, "reason": s} for c, _, s in results if s]
    tried = len(results) - len(skips)
    if not args.keep and not failures and args.out is None:
        shutil.rmtree(out)
    summary = {
        "tried": tried,
        "survived": tried - len(failures),
        "skipped": len(skips),
        "failures": failures,
        "seconds": round(time.perf_counter() - began, 1),
        "repo": str(args.repo),
        "skips": skips,
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kills: how many")
    parser.add_argument("--faults", action="store_true", help="the fault catalogue instead of kills")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="CATEGORY_OR_CASE",
        help=f"faults: categories ({', '.join(CATEGORIES)}) or cases (category/name)",
    )
    parser.add_argument("--fuzz", type=int, default=20, help="faults: random config cases added (default 20)")
    parser.add_argument("--jobs", type=int, default=1, help="faults: cases run at once")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments, the fuzz and damaged bytes")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose train.py runs (default: this)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args(argv)
    args.repo = args.repo.resolve()
    return fault_trials(args) if args.faults else kill_trials(args)


if __name__ == "__main__":
    main()
