"""gpu_check.py's parts and how it starts runs: a stage (`Stage`) and its launches (`Launch`), the running check
(`Check`) and a stage's report (`Row`); starting a launch (torchrun, or each rank on its own as srun starts them),
killing whatever of it outlives its timeout, and reading its ranks' logs and exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir

import rectnet.config  # noqa: F401  (registers the schema)

ROOT = Path(__file__).resolve().parents[2]


class Failed(Exception):
    """A stage cannot go on: its launch failed or hung, or a stage it needs failed."""


class Row(dict):
    """A stage's JSON line: its figures, and why it failed (none: "ok": true)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage=stage)
        self.failures: list[str] = []

    def require(self, condition: bool, reason: str) -> None:
        if not condition:
            self.failures.append(reason)

    def at_least(self, key: str, value: float, minimum: float | None) -> None:
        """The figure beside its threshold (None: not checked, as on the CPU stand-in)."""
        self[key], self[f"min_{key}"] = round(value, 4), minimum
        self.require(minimum is None or value >= minimum, f"{key} {value:.4g} is below the minimum {minimum}")

    def at_most(self, key: str, value: float, maximum: float) -> None:
        self[key], self[f"max_{key}"] = float(f"{value:.4g}"), maximum
        self.require(value <= maximum, f"{key} {value:.4g} is above the maximum {maximum}")


@dataclass(frozen=True)
class Launch:
    """One training run of `nproc` processes, started by `launcher`:
    "torchrun"    torchrun --standalone: its agent starts the ranks, and stops them all once one has ended;
    "ranks"       every rank on its own with the environment torchrun gives it, as srun starts them: no agent
                  stops the others, so each rank's own end shows (its status and last line, or a hang);
    "in_process"  run() in this process, for the CUDA stages that look into it (one process)."""

    name: str
    launcher: str
    nproc: int
    overrides: tuple[str, ...]
    run_dir: Path
    logs: Path  # each rank's stdout.log and stderr.log in a folder named by its local rank; torchrun.log
    timeout_s: int

    def command(self) -> list[str]:
        train = [str(ROOT / "train.py"), *self.overrides, f"hydra.run.dir={self.run_dir}"]
        if self.launcher == "ranks":
            return [sys.executable, *train]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                "--redirects=3", f"--log-dir={self.logs}", *train]  # fmt: skip


@dataclass
class Stage:
    name: str
    check: Callable[[Check, Stage, Row], None]
    launches: list[Launch] = field(default_factory=list)
    needs: tuple[str, ...] = ()  # stages whose runs this one reads or compares with
    params: dict = field(default_factory=dict)  # thresholds and the like, shown by --dry-run too


@dataclass
class Check:
    stages: dict[str, Stage]
    args: argparse.Namespace
    deadline: float  # time.monotonic() at which --budget-s is spent
    passed: set[str] = field(default_factory=set)

    def run_dir(self, stage: str) -> Path:
        return self.stages[stage].launches[0].run_dir

    def timeout(self, launch: Launch) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failed(f"the time budget (--budget-s {self.args.budget_s}) is spent")
        return min(launch.timeout_s, left)


# ---------------------------------------------------------------------------------------------- launching


def compose_config(launch: Launch):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*launch.overrides, f"run_dir={launch.run_dir}"])


def settings_of(launch: Launch):
    from rectnet.config import to_settings

    return to_settings(compose_config(launch))  # the validation a run does


def run_launch(check: Check, launch: Launch, during: Callable | None = None) -> list[int]:
    """Start `launch`, call `during` with its first process (torchrun's agent, or rank 0) and wait for its end:
    the exit status of each process started (the agent, or every rank). Everything it started is killed if it
    outlives its timeout or this script."""
    timeout = check.timeout(launch)
    deadline = time.monotonic() + timeout
    procs = start(launch)
    try:
        if during:
            during(procs[0])
        return [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        why = "its timeout: a hang?" if timeout == launch.timeout_s else "the end of --budget-s"
        raise Failed(f"{launch.name}: still running after {timeout:.0f} s ({why}); killed") from None
    finally:
        kill(launch, procs)


def kill(launch: Launch, procs: list[subprocess.Popen]) -> None:
    """Whatever of a launch still runs. torchrun starts each rank in a session of its own, which killing the agent
    leaves running: the ranks are found through /proc, and killed with their groups (data-loading workers)."""
    for pid in [*training_processes(launch.run_dir).values(), *(p.pid for p in procs if p.poll() is None)]:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile, or leads no group
            os.kill(pid, signal.SIGKILL)
            os.killpg(pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def start(launch: Launch) -> list[subprocess.Popen]:
    if launch.launcher == "torchrun":
        return [popen(launch.command(), launch.logs / "torchrun.log", None, {})]  # its ranks': --redirects
    with socket.socket() as s:  # a free port for the ranks' rendezvous (MASTER_PORT)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        popen(launch.command(), launch.logs / str(r) / "stdout.log", launch.logs / str(r) / "stderr.log",
              rank_env(r, launch.nproc, port))
        for r in range(launch.nproc)
    ]  # fmt: skip


def rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """What torchrun --standalone exports to each rank (one node), less its own run id."""
    sizes = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), **sizes, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def popen(command: list[str], stdout: Path, stderr: Path | None, env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session (a group that `kill` ends with whatever it forked), writing to files (None:
    stderr into stdout's)."""
    stdout.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout, "wb") as out, open(stderr or os.devnull, "wb") as err:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err if stderr else subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def run_to_end(check: Check, launch: Launch) -> dict:
    """Launch, require a clean end, and return its results.json."""
    statuses = run_launch(check, launch)
    if any(statuses):
        reason = last_line(rank_logs(launch).get(0, "")) or last_line(agent_output(launch))
        raise Failed(f"{launch.name} exited {statuses}: {reason}")
    return json.loads((launch.run_dir / "results.json").read_text())


def agent_output(launch: Launch) -> str:
    path = launch.logs / "torchrun.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def rank_logs(launch: Launch) -> dict[int, str]:
    """Each rank's console by local rank (torchrun puts it in <run id>/attempt_0/<local rank>/): stdout, then
    stderr, whose last line is a failed run's reason."""
    return {
        int(err.parent.name): err.with_name("stdout.log").read_text(errors="replace") + err.read_text(errors="replace")
        for err in launch.logs.rglob("stderr.log")
    }


def last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def exit_codes(launch: Launch) -> dict[int, int]:
    """{local rank: exit status} of the ranks that torchrun's failure summary lists: those that ended by themselves
    before the agent stopped the others."""
    found = re.findall(r"local_rank: (\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)", agent_output(launch))
    return {int(rank): int(code) for rank, code in sorted(found)}


def devices(launch: Launch) -> list[str]:
    """The device each rank says it trains on, by local rank (the log line "... N rank(s) on <device>")."""
    logs = rank_logs(launch)
    return [next(iter(re.findall(r"rank\(s\) on (\S+)", logs.get(r, ""))), "?") for r in range(launch.nproc)]


def training_processes(run_dir: Path) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the training processes (train.py under torchrun's agent) of the run in `run_dir`."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if f"hydra.run.dir={run_dir}".encode() not in args or any(a.endswith(b".distributed.run") for a in args):
                continue
            environ = (cmdline.parent / "environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        local = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"LOCAL_RANK=")]
        if local:
            found[int(local[0])] = int(cmdline.parent.name)
    return found
