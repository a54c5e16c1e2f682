"""The lab of chaos.py --faults: what a case is (`Case`: how it makes its fault, what surviving it means), the
judge of what the user saw (`judge`), the checks of what a run left in its run directory, one case's run
(`run_case`), and the tiny runs the cases start from (FAULT_RUN; `make_fixtures`: the base and reference runs).

The cases: fault_state.py (checkpoint, disk, nonfinite) and fault_inputs.py (data, config); how train.py is
started: fault_launcher.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from fault_launcher import HUNG_S, TRACEBACK, Launcher, Outcome

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


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
