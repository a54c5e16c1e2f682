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
import atexit
import contextlib
import gc
import hashlib
import itertools
import json
import os
import pickle
import queue
import random
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
# Faults: the launcher


HUNG_S = 180  # a tiny run takes seconds: one still running after this long is hung
FAULT_ENV = {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}  # as a user runs it
LAUNCHER_MODE = "--launcher-for"  # chaos.py's own hidden mode: the launcher process of `Launcher`


@dataclass(frozen=True)
class Outcome:
    """What a user saw: the exit status (None: killed after HUNG_S) and stdout and stderr, in order."""

    code: int | None
    output: str

    @property
    def lines(self) -> list[str]:
        """The non-empty lines, less Hydra's hint line (which follows any error Hydra reports)."""
        return [line for line in self.output.splitlines() if line.strip() and not line.startswith(HYDRA_HINT)]

    @property
    def last_line(self) -> str:
        return self.lines[-1] if self.lines else "(no output)"

    @property
    def message(self) -> str:
        """The error as the user reads it: the last line; for an error Hydra reports (a composition error: a
        wrong type, an unknown key or option), the block it prints after the last log record."""
        if HYDRA_HINT not in self.output:
            return self.last_line
        lines = self.lines
        records = [i for i, line in enumerate(lines) if LOG_RECORD.match(line)]
        return "\n".join(lines[records[-1] + 1 if records else 0 :])


HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
TRACEBACK = "Traceback (most recent call last)"
LOG_RECORD = re.compile(r"\[\d{4}-\d\d-\d\d ")  # [2026-01-01 12:00:00,000][rectnet][INFO] - ...


def serve(repo: Path) -> None:
    """The launcher process: import train.py's modules once, then fork a child per request line (JSON: args,
    log, prelude, timeout) and answer with its exit status."""
    sys.path.insert(0, str(repo))  # what `python train.py` puts first: that checkout's rectnet
    import hydra  # noqa: F401

    import rectnet
    import rectnet.config  # noqa: F401
    import rectnet.engine.train  # noqa: F401

    gc.freeze()  # what the children inherit is never garbage: their collections skip it (and leave it shared)
    print(json.dumps({"rectnet": rectnet.__file__}), flush=True)
    for line in sys.stdin:
        print(json.dumps({"code": _fork_and_wait(repo, json.loads(line))}), flush=True)


def _fork_and_wait(repo: Path, request: dict) -> int | None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _be_train_py(repo, request)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)  # the child and its data-loading workers
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


def _be_train_py(repo: Path, request: dict) -> None:
    """In the forked child: become `python train.py ARGS` with stdout and stderr in the log, and end as the
    interpreter would end it: a traceback and status 1, a SystemExit's message and status, or 0."""
    os.setpgid(0, 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(repo)
    sys.argv = [str(repo / "train.py"), *request["args"]]
    try:
        if request["prelude"]:
            exec(request["prelude"], {"__name__": "chaos_prelude"})
        runpy.run_path(str(repo / "train.py"), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _exit_without_teardown(code)


def _exit_status(stop: SystemExit) -> int:
    """The status the interpreter gives an uncaught SystemExit, printing a message as it does."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def _exit_without_teardown(code: int) -> None:
    """End the child as the interpreter ends a script (wait for its threads, run the atexit functions, collect
    the garbage whose finalizers flush and close files, flush stdio) but without tearing down every imported
    module one by one: with torch that takes 2 s, most of a case's time."""
    threading._shutdown()
    atexit._run_exitfuncs()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)


class Launcher:
    """Starts train.py of `repo` through one launcher process (see `serve`), one case at a time."""

    def __init__(self, repo: Path) -> None:
        path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), LAUNCHER_MODE, str(repo)],
            cwd=repo,
            env={**os.environ, **FAULT_ENV, "PYTHONPATH": path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"the launcher for {repo} did not start (its error is printed above)")
        imported = Path(json.loads(ready)["rectnet"]).resolve()
        if repo.resolve() not in imported.parents:
            self.close()
            raise RuntimeError(f"the launcher for {repo} imported {imported}: not that checkout's rectnet")

    def launch(self, args: list[str], log: Path, prelude: str | None = None) -> Outcome:
        request = {"args": args, "log": str(log), "prelude": prelude, "timeout": HUNG_S}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the launcher died running {args} (its error is printed above)")
        return Outcome(json.loads(answer)["code"], log.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# =========================================================================================================
# Faults: cases and their judge

REFUSE, FINISH, EITHER = "refuse", "finish", "either"  # what a survivor does: refuse, train, or either
CATEGORIES = ("checkpoint", "disk", "data", "config", "nonfinite")


class Skip(Exception):
    """This machine cannot set the case up (the message says why): counted as skipped, not tried."""


@dataclass
class Lab:
    """What the cases share: the work folder, the seed, and the finished runs the checkpoint cases start from
    (`base`: 2 epochs, last.pt = epoch 2, prev.pt = epoch 1) and compare with (`reference`: 3 epochs)."""

    out: Path
    seed: int
    base: Path | None = None
    reference: Path | None = None

    def rng(self, name: str) -> random.Random:
        """A generator of the case's own: the same bytes whatever the order or number of jobs."""
        return random.Random(f"{self.seed}:{name}")


@dataclass(frozen=True)
class Trial:
    """One case run: where, what the run directory held before the launch (content hash -> paths), and the
    outcome."""

    lab: Lab
    folder: Path
    run_dir: Path
    before: dict[str, list[str]]
    outcome: Outcome


Prepare = Callable[[Lab, Path, contextlib.ExitStack], list[str]]  # makes the fault; returns train.py's args
Check = Callable[[Trial], "str | None"]  # what the run left: why that is wrong, or None


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    prepare: Prepare
    expect: str = REFUSE
    says: tuple[str, ...] = ()  # what a refusal must name (case-insensitive; {run_dir} is the run directory)
    checks: tuple[Check, ...] = ()
    prelude: str | None = None  # Python run before train.py, in its process (the NaN injection)
    needs_base: bool = False

    @property
    def label(self) -> str:
        return f"{self.category}/{self.name}"

    @property
    def folder(self) -> str:
        """The name as a folder that Hydra's override grammar takes in hydra.run.dir (no = [ ] : , ...)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.name)


def judge(case: Case, outcome: Outcome, run_dir: Path) -> str | None:
    """Why the run did not survive its fault, from what the user saw; None when it did (then its checks)."""
    if outcome.code is None:
        return f"hung: still running after {HUNG_S} s, killed"
    if TRACEBACK in outcome.output:
        return f"a traceback, exit {outcome.code}: {outcome.last_line}"
    if outcome.code < 0:
        return f"killed by signal {-outcome.code}: {outcome.last_line}"
    if outcome.code == 0:
        return "exit 0: the fault was accepted" if case.expect == REFUSE else None
    if case.expect == FINISH:
        return f"refused a valid run, exit {outcome.code}: {outcome.last_line}"
    message = outcome.message.lower()
    missing = [s.format(run_dir=run_dir) for s in case.says if s.format(run_dir=run_dir).lower() not in message]
    if missing:
        return f"exit {outcome.code}, the message does not name {', '.join(missing)}: {outcome.last_line}"
    return None


def run_case(case: Case, lab: Lab, launcher: Launcher) -> tuple[Case, str | None, str | None]:
    """(the case, why it failed or None, why it was skipped or None)."""
    folder = lab.out / case.category / case.folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_dir = folder / "run"
    with contextlib.ExitStack() as cleanup:  # unmounts and permissions restored whatever happens
        try:
            args = case.prepare(lab, folder, cleanup)
        except Skip as why:
            return case, None, str(why)
        before = contents(run_dir)
        outcome = launcher.launch([*args, f"hydra.run.dir={run_dir}"], folder / "output.txt", case.prelude)
        reason = judge(case, outcome, run_dir)
        trial = Trial(lab, folder, run_dir, before, outcome)
        for check in case.checks:
            reason = reason or check(trial)
    return case, reason, None


# Files a launch writes whatever happens: the lock's record, the log it appends to, the failure record, and
# Hydra's record of the launch. Everything else in a run directory is what a run must not lose.
REWRITTEN = {".lock", "train.log", "FAILED"}


def contents(run_dir: Path) -> dict[str, list[str]]:
    """Content hash -> the paths holding it, of every file of the run directory that a launch must keep."""
    found: dict[str, list[str]] = {}
    if not run_dir.is_dir():
        return found
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == ".hydra" or relative.name in REWRITTEN:
            continue
        found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(str(relative))
    return found


def nothing_lost_on_refusal(trial: Trial) -> str | None:
    """A refusal leaves every file it found, byte for byte (moving a damaged one aside is fine)."""
    if trial.outcome.code == 0:
        return None
    after = contents(trial.run_dir)
    lost = [paths[0] for digest, paths in trial.before.items() if digest not in after]
    return f"refused, but changed or removed {', '.join(lost)}" if lost else None


def not_trained(trial: Trial) -> str | None:
    """Refused before training: metrics.jsonl is as it was (absent in a fresh run)."""
    metrics = trial.run_dir / "metrics.jsonl"
    was = [digest for digest, paths in trial.before.items() if "metrics.jsonl" in paths]
    now = [hashlib.sha256(metrics.read_bytes()).hexdigest()] if metrics.is_file() else []
    return None if now == was else "trained before refusing (metrics.jsonl written)"


def continued(keeps: int) -> Check:
    """A finished run continued from a checkpoint holding at least `keeps` epochs of the base run: metrics.jsonl
    keeps those epochs' records (wall-clock times included: a fresh start rewrites them), lists epochs 1..3,
    and the weights equal an uninterrupted 3-epoch run's."""

    def check(trial: Trial) -> str | None:
        if trial.outcome.code != 0:
            return None
        records = _records(trial.run_dir)
        epochs = [r.get("epoch") for r in records]
        if epochs != [1, 2, 3]:
            return f"metrics.jsonl lists epochs {epochs}, not 1, 2, 3"
        if records[:keeps] != _records(trial.lab.base)[:keeps]:
            return f"epochs 1..{keeps} trained again: a fresh start or an older checkpoint than the intact one"
        return _same_weights(trial.run_dir, trial.lab.reference)

    return check


def _same_weights(run_dir: Path, reference: Path) -> str | None:
    try:
        ours = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    except Exception as err:  # whatever is wrong with it, the run did not leave a usable last.pt
        return f"the finished run's last.pt does not load ({type(err).__name__})"
    theirs = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    return None if same else "the continued run's weights differ from an uninterrupted run's"


def no_file(name: str) -> Check:
    def check(trial: Trial) -> str | None:
        return f"code from the pickle ran ({name} was created)" if (trial.folder / name).exists() else None

    return check


def kept(text: str) -> Check:
    """A user's file found where a checkpoint should be is still somewhere in the run directory."""
    digest = hashlib.sha256(text.encode()).hexdigest()

    def check(trial: Trial) -> str | None:
        return None if digest in contents(trial.run_dir) else "the file found in place of a checkpoint is gone"

    return check


# =========================================================================================================
# Faults: the runs

# A few seconds per run (most of it Hydra and the model's build): an eighth-width ConvPool-CNN-C on 16x16
# synthetic images, 2 steps an epoch, fp32 (the weights compared across runs), no TensorBoard.
FAULT_RUN = [
    "dataset=synthetic",
    "dataset.image_size=16",
    "dataset.num_train=256",
    "dataset.num_test=64",
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=32",
    "trainer.epochs=2",
    "trainer.max_steps_per_epoch=2",
    "trainer.progress=none",
    "trainer.threads=1",
    "trainer.precision=fp32",
    "logger=none",
]
CONTINUED = [*FAULT_RUN, "trainer.epochs=3"]  # the base run relaunched for one more epoch
RUNS_CODE = "owned"  # the file a crafted pickle would create in the case's folder


def tiny(overrides: list[str]) -> Prepare:
    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        return [*FAULT_RUN, *overrides]

    return prepare


def make_fixtures(lab: Lab, launcher: Launcher) -> None:
    """The base and reference runs; they must finish, or no checkpoint case can be judged."""
    for name, epochs in (("base", 2), ("reference", 3)):
        run_dir = lab.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        outcome = launcher.launch(
            [*FAULT_RUN, f"trainer.epochs={epochs}", f"hydra.run.dir={run_dir}"], lab.out / f"{name}.txt"
        )
        if outcome.code != 0:
            raise RuntimeError(f"the {name} run failed (exit {outcome.code}):\n{outcome.output[-3000:]}")
        setattr(lab, name, run_dir)


def copy_base(lab: Lab, folder: Path) -> Path:
    run_dir = folder / "run"
    shutil.copytree(lab.base, run_dir, ignore=shutil.ignore_patterns(".lock"))
    return run_dir


class RunsCode:
    """Pickles as a call of os.system: loading it with plain pickle would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------------------------------------- checkpoint

DIRECTORY_NOTE = "a user's notes, left where last.pt was"
Damage = Callable[[Path, random.Random], None]


def truncated(path: Path, rng: random.Random) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def zero_bytes(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(path.stat().st_size))


def a_directory(path: Path, rng: random.Random) -> None:
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text(DIRECTORY_NOTE)


def removed(path: Path, rng: random.Random) -> None:
    path.unlink()


def rewritten(change: Callable[[dict, Path], None]) -> Damage:
    """Load, change the state, save with torch.save: a well-formed archive (every CRC right) with bad content."""

    def damage(path: Path, rng: random.Random) -> None:
        state = torch.load(path, weights_only=True)
        change(state, path)
        torch.save(state, path)

    return damage


def entry(key: str, value: Any) -> Damage:
    return rewritten(lambda state, path: state.__setitem__(key, value))


def without(key: str) -> Damage:
    return rewritten(lambda state, path: state.pop(key))


def nan_weights(state: dict, path: Path) -> None:
    next(iter(state["model"].values())).fill_(float("nan"))


def runs_code(state: dict, path: Path) -> None:
    state["epoch"] = RunsCode(path.parents[2] / RUNS_CODE)  # <case folder>/run/checkpoints/last.pt


def moved_to(name: str) -> Damage:
    def damage(path: Path, rng: random.Random) -> None:
        os.replace(path, path.with_name(name))

    return damage


def copied_to(name: str, then: Damage) -> Damage:
    """A copy of the file at `name`, damaged by `then`; the file itself stays intact."""

    def damage(path: Path, rng: random.Random) -> None:
        shutil.copyfile(path, path.with_name(name))
        then(path.with_name(name), rng)

    return damage


def damaged(damages: dict[str, Damage]) -> Prepare:
    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        checkpoints = copy_base(lab, folder) / "checkpoints"
        for name, damage in damages.items():
            damage(checkpoints / name, lab.rng(f"{folder.name}/{name}"))
        return CONTINUED

    return prepare


# (name, {checkpoint file: damage}, epochs of the base run a continuation must keep, extra checks)
CHECKPOINT_FAULTS: list[tuple[str, dict[str, Damage], int, tuple[Check, ...]]] = [
    ("last_truncated", {"last.pt": truncated}, 1, ()),
    ("last_zero_bytes", {"last.pt": zero_bytes}, 1, ()),
    ("last_random_bytes", {"last.pt": random_bytes}, 1, ()),
    ("last_missing", {"last.pt": removed}, 1, ()),
    ("last_a_directory", {"last.pt": a_directory}, 1, (kept(DIRECTORY_NOTE),)),
    ("last_model_a_list", {"last.pt": entry("model", [])}, 1, ()),
    ("last_rng_wrong_type", {"last.pt": entry("rng", [{"python": 1}])}, 1, ()),
    ("last_epoch_a_string", {"last.pt": entry("epoch", "2")}, 1, ()),
    ("last_without_optimizer", {"last.pt": without("optimizer")}, 1, ()),
    ("last_nan_weights", {"last.pt": rewritten(nan_weights)}, 1, ()),
    ("last_pickle_runs_code", {"last.pt": rewritten(runs_code)}, 1, (no_file(RUNS_CODE),)),
    ("prev_truncated", {"prev.pt": truncated}, 2, ()),
    ("both_truncated", {"last.pt": truncated, "prev.pt": truncated}, 1, ()),
    ("both_random_bytes", {"last.pt": random_bytes, "prev.pt": random_bytes}, 1, ()),
    # killed between the rotation's renames: last.pt gone, the newest state complete in .last.pt.new
    ("interrupted_rotation", {"last.pt": moved_to(".last.pt.new")}, 2, ()),
    ("leftover_temporary", {"last.pt": copied_to(".last.pt.tmp-12345", truncated)}, 2, ()),
    ("leftover_new_damaged", {"last.pt": copied_to(".last.pt.new", truncated)}, 2, ()),
]


def checkpoint_cases() -> list[Case]:
    return [
        Case(
            name,
            "checkpoint",
            damaged(damages),
            EITHER,
            says=("{run_dir}/checkpoints",),  # a refusal names the checkpoint it cannot use
            checks=(continued(keeps), nothing_lost_on_refusal, *extra),
            needs_base=True,
        )
        for name, damages, keeps, extra in CHECKPOINT_FAULTS
    ]


# ---------------------------------------------------------------------------------------------------- disk


def mount_tmpfs(folder: Path, cleanup: contextlib.ExitStack, size: str = "8m") -> None:
    """A tmpfs at `folder` holding a copy of what the folder held (the folder itself, hidden under the mount,
    is left as it was); unmounted by `cleanup`. Needs mount rights: Skip without them."""
    folder.mkdir(parents=True, exist_ok=True)
    held = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        shutil.copytree(folder, held, dirs_exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        if subprocess.run(mount, capture_output=True).returncode:
            raise Skip("cannot mount a tmpfs here (needs root where mounting is allowed)")
        cleanup.callback(subprocess.run, ["umount", "-l", str(folder)], check=False, capture_output=True)
        shutil.copytree(held, folder, dirs_exist_ok=True)
    finally:
        shutil.rmtree(held)


def read_only(folder: Path, cleanup: contextlib.ExitStack) -> None:
    """Make `folder` read-only as the kernel enforces it for this process: chmod for a normal user; root
    passes permission checks, so a read-only tmpfs holding the folder's files instead."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        cleanup.callback(folder.chmod, 0o755)
        return
    mount_tmpfs(folder, cleanup)
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode:
        raise Skip("cannot remount a tmpfs read-only here")


def fill(folder: Path) -> None:
    """Write until the filesystem is full."""
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def checkpoints_a_file(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    (folder / "run").mkdir()
    (folder / "run" / "checkpoints").write_text(DIRECTORY_NOTE)
    return FAULT_RUN


def run_dir_read_only(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    (folder / "run").mkdir()
    read_only(folder / "run", cleanup)
    return FAULT_RUN


def checkpoints_read_only(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    read_only(copy_base(lab, folder) / "checkpoints", cleanup)
    return CONTINUED


def disk_full(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    mount_tmpfs(folder / "run", cleanup, size="1m")
    fill(folder / "run")
    return FAULT_RUN


def disk_too_small(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    """Room for the run's records and two checkpoints, not for the four a rotation holds at once."""
    mount_tmpfs(folder / "run", cleanup, size="600k")
    return FAULT_RUN


def disk_cases() -> list[Case]:
    refused = (nothing_lost_on_refusal, not_trained)
    return [
        Case(
            "checkpoints_a_file",
            "disk",
            checkpoints_a_file,
            says=("{run_dir}/checkpoints",),
            checks=(*refused, kept(DIRECTORY_NOTE)),
        ),
        Case("run_dir_read_only", "disk", run_dir_read_only, says=("{run_dir}",), checks=refused),
        Case(
            "checkpoints_read_only",
            "disk",
            checkpoints_read_only,
            says=("{run_dir}/checkpoints",),
            checks=refused,
            needs_base=True,
        ),
        Case("disk_full_at_start", "disk", disk_full, says=("{run_dir}", "space"), checks=refused),
        Case("disk_too_small", "disk", disk_too_small, says=("{run_dir}/checkpoints", "space")),
    ]


# ---------------------------------------------------------------------------------------------------- data

CIFAR_IMAGES = 32  # per batch file: 160 training images, 32 test images
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_RUN = [
    "dataset=cifar10",
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=32",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "trainer.progress=none",
    "trainer.threads=1",
    "trainer.precision=fp32",
    "logger=none",
]
CifarFault = Callable[[dict, Path, random.Random], "dict | bytes | None"]  # good entry -> bad entry or bytes


def cifar_entry(rng: random.Random) -> dict:
    import numpy as np

    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (CIFAR_IMAGES, 3072), dtype=np.uint8)
    return {"data": pixels, "labels": [rng.randrange(10) for _ in range(CIFAR_IMAGES)]}


def float_pixels(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "data": entry["data"].astype("float32") / 255}  # scaled images, as some converters store


def nan_pixels(entry: dict, path: Path, rng: random.Random) -> dict:
    data = entry["data"].astype("float32")
    data[0, :5] = float("nan")
    return {**entry, "data": data}


def label_out_of_range(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "labels": [*entry["labels"][:-1], 10]}  # CIFAR-10: labels 0..9


def wrong_shape(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "data": entry["data"].reshape(-1, 1024)}  # one channel's worth per row


def cut_short(entry: dict, path: Path, rng: random.Random) -> bytes:
    whole = pickle.dumps(entry, protocol=2)
    return whole[: len(whole) // 2]


def missing(entry: dict, path: Path, rng: random.Random) -> None:
    return None


def cifar_runs_code(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "labels": RunsCode(path.parents[2] / RUNS_CODE)}  # <case folder>/data/<layout>/<file>


def cifar_tree(bad_file: str, fault: CifarFault) -> Prepare:
    """A CIFAR-10 tree of small batch files, `bad_file` written as `fault` makes it (None: not written)."""

    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        layout = folder / "data" / "cifar-10-batches-py"
        layout.mkdir(parents=True)
        rng = lab.rng(folder.name)
        for name in CIFAR_FILES:
            entry = cifar_entry(rng)
            content = fault(entry, layout / name, rng) if name == bad_file else entry
            if content is not None:
                data = content if isinstance(content, bytes) else pickle.dumps(content, protocol=2)
                (layout / name).write_bytes(data)
        return [*CIFAR_RUN, f"dataset.root={folder / 'data'}"]

    return prepare


IMAGENET_RUN = [
    "dataset=imagenet",
    "dataset.num_classes=2",
    "dataset.image_size=32",
    "dataset.scale_min=36",
    "dataset.scale_max=40",
    "dataset.stats_images=16",
    "eval.size=36",
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.threads=1",
    "trainer.precision=fp32",
    "logger=none",
]
JPEG_FAULTS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda good: good[: len(good) // 3],
    "zero_bytes": lambda good: b"",
    "text": lambda good: b"this is a text file, not a JPEG\n" * 20,
}


def image_tree(root: Path, rng: random.Random) -> None:
    """<root>/{train,val}/<class>/*.JPEG: 2 classes, 8 training and 4 validation images each, 48x40."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(rng.getrandbits(32))
    for c in range(2):
        for split, count in (("train", 8), ("val", 4)):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(noise.normal(80 + 100 * c, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", "JPEG", quality=90)


def corrupt_jpeg(kind: str, workers: int) -> Prepare:
    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        root = folder / "data"
        image_tree(root, lab.rng(folder.name))
        good = (root / "train" / "n00000001" / "train_1_0.JPEG").read_bytes()
        (root / "train" / "n00000001" / f"{kind}.JPEG").write_bytes(JPEG_FAULTS[kind](good))
        return [*IMAGENET_RUN, f"dataset.root={root}", f"dataset.workers={workers}"]

    return prepare


def data_cases() -> list[Case]:
    cifar = [
        ("cifar_float_pixels", "data_batch_2", float_pixels, ("data_batch_2",), ()),
        ("cifar_nan_pixels", "data_batch_2", nan_pixels, ("data_batch_2",), ()),
        ("cifar_label_out_of_range", "data_batch_2", label_out_of_range, ("label",), ()),
        ("cifar_wrong_shape", "data_batch_2", wrong_shape, ("data_batch_2",), ()),
        ("cifar_cut_short", "data_batch_4", cut_short, ("data_batch_4",), ()),
        ("cifar_missing_file", "data_batch_3", missing, ("data_batch_3",), ()),
        ("cifar_pickle_runs_code", "test_batch", cifar_runs_code, ("test_batch",), (no_file(RUNS_CODE),)),
    ]
    jpegs = [
        Case(f"jpeg_{kind}_workers{workers}", "data", corrupt_jpeg(kind, workers), says=(f"{kind}.JPEG",))
        for kind, workers in itertools.product(JPEG_FAULTS, (0, 2))
    ]
    return [
        Case(name, "data", cifar_tree(bad, fault), says=says, checks=checks) for name, bad, fault, says, checks in cifar
    ] + jpegs


# -------------------------------------------------------------------------------------------------- config

# Issue 21's values (and wrong types, unknown keys and options): refused, naming what the refusal says.
# A name no registry or config group holds, nor will: a plausible one (swish, mnist, adamw, fp8) may become valid.
NO_SUCH = "nonesuch"
CONFIG_REFUSED: list[tuple[list[str], tuple[str, ...]]] = [
    (["trainer.batch_size=100000"], ("trainer.batch_size",)),
    (["dataset.num_train=10"], ("dataset.num_train",)),  # fewer images than one batch of 32
    (["dataset.num_folds=1000"], ("dataset.num_folds",)),  # more folds than the 256 training images
    (["model.act_at=[99]"], ("model.act_at",)),  # ConvPool-CNN-C has 9 weight layers
    (["model.halve_at=[50]"], ("model.halve_at",)),
    ([f"activation.name={NO_SUCH}"], ("activation.name",)),
    ([f"model.base_act={NO_SUCH}"], ("model.base_act",)),
    ([f"model.name={NO_SUCH}"], ("model.name",)),
    ([f"init.name={NO_SUCH}"], ("init.name",)),
    ([f"dataset.name={NO_SUCH}"], ("dataset.name",)),
    (["activation=relu", "activation.slope=0.5"], ("activation.slope",)),  # ReLU has no slope
    (["dataset.padding_mode=reflect", "dataset.crop_padding=40"], ("dataset.crop_padding",)),
    (["schedule.warmup_epochs=1e308"], ("schedule.warmup_epochs",)),
    (["model.width=1e6"], ("model.width",)),  # terabytes of activations
    (["dataset.image_size=100000"], ("dataset.image_size",)),
    (["dataset.crop_padding=1000000"], ("dataset.crop_padding",)),
    (["trainer.epochs=abc"], ("trainer.epochs",)),
    (["optim.lr=abc"], ("optim.lr",)),
    (["optim.learning_rate=0.1"], ("learning_rate",)),  # no such key
    ([f"activation={NO_SUCH}"], (NO_SUCH,)),  # no such option of the activation group
    (["trainer.resume=/nonexistent/last.pt"], ("/nonexistent/last.pt",)),
]
# Values at the edge of the valid range: a run that refuses them is wrong too.
CONFIG_VALID: list[list[str]] = [
    ["trainer.batch_size=256"],  # the whole split in one batch
    ["dataset.crop_padding=15"],  # one pixel less than the image
    ["model.act_at=[9]"],  # the last weight layer
    ["dataset.num_folds=2"],  # 128 images left to train on, four batches
    ["schedule.warmup_epochs=1"],
]
# The fuzz table: values no run of FAULT_RUN can honour, by what the key means (a count below 1, a rate
# outside its range, a name nothing has, a type that is not the key's, a size beyond any machine). A key of
# a part FAULT_RUN does not use (the step schedule's step size under schedule=constant) is left out: whether
# an unused setting must be valid is a matter of taste.
FUZZ: dict[str, list[str]] = {
    "trainer.epochs": ["abc", "-1", "0", "2.5", "null"],
    "trainer.batch_size": ["0", "-32", "abc", "100000"],
    "trainer.eval_batch_size": ["0", "-1"],
    "trainer.log_every_steps": ["0"],
    "trainer.checkpoint_every_steps": ["-1"],
    "trainer.threads": ["0", "-2"],
    "trainer.precision": [NO_SUCH],
    "trainer.device": [NO_SUCH, "cuda:99"],
    "trainer.progress": [NO_SUCH],
    "optim.lr": ["0", "-0.1", "abc", "nan", "inf", "1e400"],
    "optim.momentum": ["1", "-0.5", "1.5"],
    "optim.weight_decay": ["-1", "nan"],
    "optim.name": [NO_SUCH],
    "schedule.name": [NO_SUCH],
    "schedule.warmup_factor": ["-0.1", "1.5"],
    "schedule.warmup_steps": ["-1"],
    "schedule.warmup_epochs": ["-0.5", "inf"],
    "model.width": ["0", "-1", "abc", "1e6"],
    "model.dropout": ["1", "-0.1", "1.5"],
    "model.act_at": ["[0]", "[10]", "abc"],
    "model.halve_at": ["[0]", "[10]"],
    "model.name": [NO_SUCH],
    "model.base_act": [NO_SUCH],
    "model.source": [NO_SUCH],
    "activation.name": [NO_SUCH],
    "init.name": [NO_SUCH],
    "init.mode": [NO_SUCH],
    "init.distribution": [NO_SUCH],
    "init.head_scale": ["-1"],
    "dataset.name": [NO_SUCH],
    "dataset.image_size": ["0", "-16", "100000"],
    "dataset.num_train": ["0", "-5", "10"],
    "dataset.num_test": ["0", "-1"],
    "dataset.num_classes": ["0", "1"],
    "dataset.crop_padding": ["-1", "16"],
    "dataset.padding_mode": [NO_SUCH],
    "dataset.num_folds": ["1", "-2", "1000"],
    "dataset.synthetic_noise": ["-1", "nan"],
    "seed": ["abc"],
}


def fuzz_overrides(n: int, seed: int) -> list[str]:
    """The first n of FUZZ's key=value overrides in a seeded order, none of CONFIG_REFUSED's: a larger n only
    adds cases, so a longer fuzz includes a shorter one with the same seed."""
    named = {override for overrides, _ in CONFIG_REFUSED for override in overrides}
    pool = [f"{key}={value}" for key, values in FUZZ.items() for value in values if f"{key}={value}" not in named]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def case_name(overrides: list[str]) -> str:
    """The overrides as one folder name: `a=1+b=2` (a / in a value would make it a path)."""
    return "+".join(overrides).replace("/", "_")


def config_cases(fuzz: int, seed: int) -> list[Case]:
    refused = [Case(case_name(o), "config", tiny(o), says=says) for o, says in CONFIG_REFUSED]
    valid = [Case(f"valid:{case_name(o)}", "config", tiny(o), FINISH) for o in CONFIG_VALID]
    fuzzed = [
        Case(f"fuzz:{case_name([o])}", "config", tiny([o]), says=(o.split("=")[0],)) for o in fuzz_overrides(fuzz, seed)
    ]
    return refused + valid + fuzzed


# ----------------------------------------------------------------------------------------------- nonfinite

# Run in train.py's process before it starts: every training loss (a gradient being recorded) becomes NaN,
# evaluation losses stay finite; what a diverging run or a bad batch produces.
NAN_LOSS = """
import torch
import torch.nn.functional as F

real_cross_entropy = F.cross_entropy

def cross_entropy(logits, labels, *args, **kwargs):
    loss = real_cross_entropy(logits, labels, *args, **kwargs)
    return loss * float("nan") if torch.is_grad_enabled() else loss

F.cross_entropy = cross_entropy
"""


def resumed(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    copy_base(lab, folder)
    return CONTINUED


def nonfinite_cases() -> list[Case]:
    return [
        Case("nan_loss_fresh", "nonfinite", tiny([]), says=("loss", "epoch 1"), prelude=NAN_LOSS),
        Case(
            "nan_loss_resumed",
            "nonfinite",
            resumed,
            says=("loss", "epoch 3"),
            prelude=NAN_LOSS,
            checks=(nothing_lost_on_refusal,),
            needs_base=True,
        ),
    ]


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [LAUNCHER_MODE]:
        serve(Path(argv[1]))
        return {}
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
