"""Hydra callbacks of train.py (configs/train.yaml, hydra.callbacks): run-directory checks and error reports.

`OwnRunDir` acts before Hydra writes anything: Hydra opens `train.log` and writes `.hydra/` before the task
function runs, so an empty `hydra.run.dir`, the repository itself, a read-only or full folder or a folder
that another run owns must be refused in `on_run_start` (a sweep's folder in `on_multirun_start`), or the
refused run would already have appended to the owner's log and replaced its `.hydra/config.yaml`. For the
same reason a single run refuses there a relaunch whose config differs from the checkpoint it would resume
(the fingerprint check that `run` makes too, engine/fingerprint.py): a run directory's record must always
describe the weights in it. A sweep's job cannot be checked that early (Hydra writes its `.hydra/` before any
job callback), so a relaunched sweep keeps a copy of its jobs' `.hydra/` (`keep_job_records`) and a job that
`run` refuses (another config, a folder in use) gets its record back (`restore_job_record`).

`ReportFailures` makes a user error (bad config value, missing data, bad checkpoint, NaN loss, busy run
directory) end in its one-line reason instead of a traceback; `HYDRA_FULL_ERROR=1` keeps the traceback, as
for Hydra's own errors, and `<run dir>/FAILED` always has it. In a sweep every failed job is printed when
it ends, and the sweep ends listing them all.

Both exit through SystemExit with the message: Hydra's callback runner turns any other exception raised in
a callback into a warning and carries on, and Hydra's error printer appends a hint line after the message,
while an uncaught SystemExit prints its message as the process's last line (exit status 1).
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import InterpolationResolutionError

from rectnet.config import ConfigError
from rectnet.data.cifar import DatasetError
from rectnet.data.imagenet import CorruptImageError, ImageFolderError
from rectnet.engine import rundir
from rectnet.engine.agreement import NonFiniteLossError
from rectnet.engine.checkpoint import CheckpointError, peek_fingerprint
from rectnet.engine.distributed import env_ranks
from rectnet.engine.fingerprint import ResumeMismatchError, check_resume, launch_fingerprint

USER_ERRORS = (ConfigError, CheckpointError, DatasetError, ImageFolderError, CorruptImageError, NonFiniteLossError)

log = logging.getLogger(__name__)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class OwnRunDir(Callback):
    """Check and own the run directory (single run) or the sweep directory (-m) before Hydra writes there."""

    def __init__(self) -> None:
        self.lock: rundir.RunDirLock | None = None

    def __getstate__(self) -> dict:  # submitit pickles the callbacks into its jobs: the lock stays here
        return {"lock": None}

    def _own(self, config: DictConfig, key: str) -> None:
        folder = _folder(config, key)
        try:
            rundir.check_location(folder)
            if env_ranks().is_main:  # torchrun / srun: every rank runs Hydra, rank 0 owns the folder
                self.lock, _ = rundir.claim(Path(folder))
            else:
                rundir.check_writable(Path(folder))
        except (rundir.RunDirError, OSError) as err:  # an OSError here would become a mere warning of Hydra's
            raise SystemExit(one_line_reason(err)) from None

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._own(config, "hydra.run.dir")
        try:
            refuse_another_run(config)
        except ConfigError as err:
            self._release()
            raise SystemExit(one_line_reason(err)) from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._own(config, "hydra.sweep.dir")
        sweep_dir = Path(_folder(config, "hydra.sweep.dir"))
        # A launch that ends on a failed job never reaches on_multirun_end (Hydra's sweeper raises that job's
        # error once its batch is done, when no job needs the copy any more): end it when this process exits.
        atexit.register(self._end_launch, sweep_dir)
        if not env_ranks().is_main:  # the rank that owns the folder keeps, restores and drops the copy
            return
        try:
            keep_job_records(sweep_dir)
        except OSError as err:
            self._end_launch(sweep_dir)
            raise SystemExit(f"cannot keep a copy of the sweep's job records: {one_line_reason(err)}") from None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job that `run` refused before taking its folder: put back the record Hydra replaced."""
        refused = job_return.status == JobStatus.FAILED and isinstance(
            job_return._return_value, (ResumeMismatchError, rundir.RunDirError)
        )
        if refused and config.hydra.mode == RunMode.MULTIRUN and env_ranks().is_main:
            restore_job_record(Path(str(config.hydra.sweep.dir)), Path(str(config.hydra.runtime.output_dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end_launch(Path(_folder(config, "hydra.sweep.dir")))

    def _end_launch(self, sweep_dir: Path) -> None:
        """The folder's owner (the main rank) drops the copy of the job records and lets the folder go; once."""
        if self.lock is not None:
            drop_job_records(sweep_dir)
            self._release()


KEPT_RECORDS = ".hydra_kept"  # in a sweep directory, while a launch on it runs: its jobs' .hydra/ from before


def keep_job_records(sweep_dir: Path) -> None:
    """Copy each job's `.hydra/` under `sweep_dir` (a relaunch: jobs of an earlier launch are there) to
    <sweep_dir>/.hydra_kept/<job folder>/, before Hydra rewrites them for this launch's jobs."""
    kept = sweep_dir / KEPT_RECORDS
    shutil.rmtree(kept, ignore_errors=True)
    for folder, subfolders, _ in os.walk(sweep_dir):
        here = Path(folder)
        if ".hydra" in subfolders and here != sweep_dir:
            shutil.copytree(here / ".hydra", kept / here.relative_to(sweep_dir))
            subfolders.clear()  # a job's own folders (checkpoints, tb) hold no other job
        else:  # nor do bookkeeping folders (.submitit, this copy)
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]


def drop_job_records(sweep_dir: Path) -> None:
    """Remove the copy `keep_job_records` made (the launch is over)."""
    shutil.rmtree(sweep_dir / KEPT_RECORDS, ignore_errors=True)


def restore_job_record(sweep_dir: Path, job_dir: Path) -> None:
    """Put back the `.hydra/` files of `job_dir` that `keep_job_records` copied (each replaced atomically);
    nothing when the folder had no record before this launch."""
    kept = sweep_dir / KEPT_RECORDS / job_dir.relative_to(sweep_dir)
    if not kept.is_dir():
        return
    try:
        for saved in kept.iterdir():
            target = job_dir / ".hydra" / saved.name
            partial = target.with_name(f".{saved.name}.restoring")
            shutil.copyfile(saved, partial)
            os.replace(partial, target)
    except OSError as err:  # the job's own error says why it stopped; this one only adds to it
        log.warning("could not restore %s/.hydra from %s: %s", job_dir, kept, err)
    else:
        log.info("%s/.hydra restored: this launch did not take that run over", job_dir)


def refuse_another_run(config: DictConfig) -> None:
    """Raise the ResumeMismatchError (or the ConfigError of a refused trainer.resume_allow) that `run` would
    raise for this launch, before Hydra writes `.hydra/`: the checkpoint's fingerprint is read without its
    tensors (checkpoint.peek_fingerprint) and compared as `_train` compares it (on every rank, so that all
    stop). Whatever cannot be read or resolved here is left to `run`, which names it."""
    task = _resolved_task(config)
    if task is None:
        return
    trainer = task.get("trainer") or {}
    found = peek_fingerprint(trainer.get("resume"), Path(str(task.get("run_dir"))) / "checkpoints")
    if found is None:
        return
    try:
        current = launch_fingerprint(task, env_ranks().world_size)
    except (ConfigError, KeyError, TypeError):  # e.g. a global batch the processes cannot share: `run` says so
        return
    check_resume(found[1], current, list(trainer.get("resume_allow") or []), str(found[0]))


def _resolved_task(config: DictConfig) -> dict | None:
    """The task's config as `run` receives it, resolved; None when it does not resolve (`run` reports that).

    `run_dir` names hydra.runtime.output_dir, which Hydra sets only when the job starts: it is set here on a
    copy the way Hydra's run_job sets it (the absolute hydra.run.dir), for the `${hydra:...}` resolver."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        full = copy.deepcopy(config)
        with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
            full.hydra.runtime.output_dir = os.path.abspath(str(OmegaConf.select(full, "hydra.run.dir")))
        hydra_config.set_config(full)
        task = copy.deepcopy(full)
        with read_write(task), open_dict(task):
            del task["hydra"]
        resolved = OmegaConf.to_container(task, resolve=True)
    except Exception as err:  # a config that does not resolve fails in `run`, named
        log.debug("the launch's config does not resolve before the job starts: %s", err)
        return None
    finally:
        hydra_config.cfg = before
    return resolved if isinstance(resolved, dict) else None


def _folder(config: DictConfig, key: str) -> str:
    """The folder `key` names. Its default may refuse to name one (rectnet.launch.default_run_dir: a multi-process
    launch outside SLURM without --rdzv-id): that ConfigError, raised inside OmegaConf's resolver, ends the
    run as one line on every rank (each resolves the same default from the same launch environment)."""
    try:
        return str(OmegaConf.select(config, key))
    except InterpolationResolutionError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ConfigError):  # nested interpolations wrap it again
            cause = cause.__context__
        if cause is None:
            raise
        raise SystemExit(one_line_reason(cause)) from None


@dataclass(frozen=True)
class Failure:
    job: str
    overrides: str
    reason: str

    def line(self) -> str:
        return f"job {self.job} failed ({self.overrides or 'no overrides'}): {self.reason}"


def one_line_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}"


@dataclass(frozen=True)
class SweepSummary:
    """Every failed job of a sweep, formatted when printed (after the last job).

    Jobs that ran in this process are in `seen` (a list the callback keeps appending to); jobs that ran
    elsewhere (submitit) are found through the FAILED files their runs left in the sweep directory.
    """

    seen: list[Failure]
    sweep_dir: str

    def __str__(self) -> str:
        failures = {f.job: f for f in _failures_on_disk(Path(self.sweep_dir))} | {f.job: f for f in self.seen}
        ordered = sorted(failures.values(), key=lambda f: (len(f.job), f.job))
        lines = [f"{len(ordered)} job(s) of the sweep in {self.sweep_dir} failed:"]
        return "\n".join(lines + [f"  {f.line()}" for f in ordered])


def _failures_on_disk(sweep_dir: Path) -> list[Failure]:
    failures = []
    for failed in sweep_dir.glob("*/FAILED"):
        overrides_file = failed.parent / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        reason = failed.read_text().split("\n", 1)[0]
        failures.append(Failure(failed.parent.name, " ".join(map(str, overrides)), reason))
    return failures


class ReportFailures(Callback):
    """One-line reasons for user errors; in sweeps, each failure as it happens and all of them at the end."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def on_run_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A single run: exit with the reason before Hydra prints its "Error executing job" line and traceback.

        Listed before OwnRunDir in train.yaml: run-end callbacks go in reverse, so the lock is released first.
        """
        err = job_return._return_value
        if job_return.status == JobStatus.FAILED and isinstance(err, USER_ERRORS) and not _full_error():
            raise SystemExit(one_line_reason(err))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        err = job_return._return_value
        failure = Failure(str(config.hydra.job.num), " ".join(job_return.overrides or []), one_line_reason(err))
        self.failures.append(failure)
        print(f"[sweep] {failure.line()}", file=sys.stderr, flush=True)
        if not _full_error():  # the sweep ends on the first failed job's error: make it the summary
            job_return.return_value = SystemExit(SweepSummary(self.failures, str(config.hydra.sweep.dir)))
