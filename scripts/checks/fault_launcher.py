"""How chaos.py --faults starts train.py, and what the user saw of it (`Outcome`).

One launcher process per job (`Launcher`, this file run with --launcher-for REPO: `serve`) imports what train.py
imports once, then forks a child per case that runs train.py as `python train.py` would (argv, cwd, stdio, exit
status); that saves the ~8 s of imports each start would pay.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HUNG_S = 180  # a tiny run takes seconds: one still running after this long is hung
FAULT_ENV = {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}  # as a user runs it
LAUNCHER_MODE = "--launcher-for"  # this file run as the launcher process of `Launcher`


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


if __name__ == "__main__":  # the launcher process that `Launcher` starts
    if sys.argv[1:2] != [LAUNCHER_MODE] or len(sys.argv) != 3:
        raise SystemExit(f"usage: {Path(__file__).name} {LAUNCHER_MODE} REPO (started by chaos.py --faults)")
    serve(Path(sys.argv[2]))
