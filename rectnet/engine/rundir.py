"""Run-directory ownership: one training process (rank 0) owns a run directory for the whole run.

Two processes in one run directory (a requeued job overlapping the old one, a fixed RECTNET_RUN_DIR, a
sweep re-launched by hand) would interleave metrics.jsonl and overwrite each other's checkpoints. The owner
holds `<run dir>/.lock` with two guards:

1. `fcntl.flock(LOCK_EX | LOCK_NB)` on the open lock file, for the life of the run. The kernel drops it when
   the process dies, kill -9 included, so a lock is never stale on one machine.
2. A record in the same file, `{"host", "pid", "started", "beat", "released"}`, for filesystems on which
   flock does not reach other machines: Lustre mounted `localflock`, NFS without a lock manager (`nolock`),
   or flock refused outright (Lustre `noflock`). The owner rewrites `beat` every HEARTBEAT_S seconds (a
   daemon thread) and sets `released` when it lets go. A claimant that holds the flock but finds the record
   of another machine, not released, re-reads it after STALE_BEATS heartbeat periods: if `beat` moved, that
   owner is alive and the claim is refused; if not, it died without releasing (kill -9, a node crash) and
   the claimant takes over. Only counters are compared, never clocks, so clock skew between nodes does not
   matter; each read opens the file anew, which NFS's close-to-open consistency makes current. On the
   claimant's own machine a working flock is the whole answer; where flock fails there, the record's pid
   is checked instead (alive and started when the record says).

The wait costs HEARTBEAT_S * STALE_BEATS (25 s) only when a job moves to another node after its previous
owner died without releasing; a clean exit, a requeue after a checkpoint and every same-node restart claim
at once. Only rank 0 claims (`claim_for`): under torchrun and submitit the other ranks write nothing.

A claim also checks that the run can write where it will (`check_writes`): a probe file written, fsynced and
removed in the run directory and in `checkpoints/`, so a full disk, an exhausted quota, a read-only mount or a
`checkpoints` that is not a folder is refused in one line before Hydra writes `.hydra/`, not found at the
first checkpoint after a training segment. A failed claim closes its lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rectnet.config import ConfigError
from rectnet.engine.distributed import Dist

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = float(os.environ.get("RECTNET_LOCK_HEARTBEAT_S", "10"))
STALE_BEATS = 2.5  # heartbeat periods a claimant watches a foreign record before calling its owner dead
# Left behind by a write that was killed: checkpoint.atomic_save's and check_writes' `.<name>.tmp-<pid>`,
# write_json's and the metrics rewrite's `.<name>.tmp`. (save_last's complete `.last.pt.new` is not waste: the
# next start makes it last.pt, checkpoint.finish_rotation.)
STALE_TEMPORARIES = (".*.tmp-*", ".*.tmp")
# errno values with which flock says "not on this filesystem" rather than "held by someone else"
FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
NO_ROOM = {errno.ENOSPC, errno.EDQUOT}
PROBE_BYTES = 65536  # more than Hydra's .hydra/ files and the lock record together


class RunDirError(ConfigError):
    """The run directory cannot be used: it is owned by another live run, not writable, or not a run folder."""


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def check_location(run_dir: str | Path) -> Path:
    """Refuse an empty run directory (the run would land in the current folder) and the repository itself."""
    if not str(run_dir).strip():
        raise RunDirError(
            "the run directory is empty (hydra.run.dir= or run_dir=): the run would write into the current folder; "
            "give it a folder of its own, e.g. hydra.run.dir=runs/try1"
        )
    path = Path(run_dir).expanduser().resolve()
    repo = _repository_root()
    if path == repo or (path / ".git").exists():
        raise RunDirError(
            f"the run directory {path} is a source repository; runs write checkpoints and logs there: "
            "give the run a folder of its own, e.g. hydra.run.dir=runs/try1"
        )
    return path


def check_writable(run_dir: Path) -> None:
    """An existing run directory on a read-only filesystem (or without permission) fails here, by name."""
    if run_dir.is_dir() and not os.access(run_dir, os.W_OK):
        reason = "read-only file system" if _read_only_mount(run_dir) else "permission denied"
        raise _not_writable(run_dir, reason)


def _not_writable(run_dir: Path, reason: str) -> RunDirError:
    return RunDirError(f"the run directory {run_dir} is not writable ({reason}); pick another hydra.run.dir")


def _cannot_write(run_dir: Path, err: OSError) -> RunDirError:
    """The refusal for an OSError met writing in the run directory itself."""
    reason = (err.strerror or str(err)).lower()
    if err.errno in NO_ROOM:
        return RunDirError(
            f"the run directory {run_dir} has no room to write ({reason}): free space there or pick another "
            "hydra.run.dir"
        )
    return _not_writable(run_dir, reason)


def _cannot_write_checkpoints(folder: Path, err: OSError) -> RunDirError:
    reason = (err.strerror or str(err)).lower()
    if err.errno in NO_ROOM:
        return RunDirError(
            f"{folder} has no room to write ({reason}): the run writes its checkpoints there; free space or pick "
            "another hydra.run.dir"
        )
    return RunDirError(
        f"{folder} is not writable ({reason}): the run writes its checkpoints there; make it writable or pick "
        "another hydra.run.dir"
    )


def _probe(folder: Path) -> OSError | None:
    """Write PROBE_BYTES to a new file in `folder`, fsync it (network filesystems report a full disk there) and
    remove it; the first error, or None. A removal that fails after a failed write does not hide the write's
    error; one that fails alone is returned too (the checkpoint rotation removes and renames files there)."""
    probe = folder / f".probe.tmp-{os.getpid()}"  # a kill's leftover matches STALE_TEMPORARIES
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = memoryview(bytes(PROBE_BYTES))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        return err
    try:
        probe.unlink()
    except OSError as err:
        return err
    return None


def check_writes(run_dir: Path) -> None:
    """Refuse a run directory the run could not write in, before anything is written: a probe in the run
    directory and, when it exists, in `checkpoints/` (which must be a folder; when missing, the run directory's
    probe stands for it). Free space for the checkpoints themselves needs the model's size: checked once it is
    built (checkpoint.check_room)."""
    error = _probe(run_dir)
    if error is not None:
        raise _cannot_write(run_dir, error)
    folder = run_dir / "checkpoints"
    if os.path.lexists(folder) and not folder.is_dir():
        what, thing = ("a file, not a folder", "file") if folder.is_file() else ("not a folder", "entry")
        raise RunDirError(
            f"{folder} is {what}: the run writes its checkpoints there; move the {thing} away or pick another "
            "hydra.run.dir"
        )
    if folder.is_dir():
        error = _probe(folder)
        if error is not None:
            raise _cannot_write_checkpoints(folder, error)


def _read_only_mount(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return started is None or _process_start(pid) in (None, started)


def _read_record(path: Path) -> dict | None:
    """The lock file's record; None when there is none (new file) or it is unreadable (a torn write)."""
    for _ in range(3):  # the owner rewrites it in place: a read can land in the middle of a write
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        with contextlib.suppress(ValueError):
            record = json.loads(text)
            if isinstance(record, dict):
                return record
        time.sleep(0.05)
    return None


def holder(run_dir: Path) -> str | None:
    """Who holds `run_dir` now, read from its lock record without touching the lock (a probe of the flock
    could make a claim that lands at the same moment fail): "pid N" for a live process on this host, "host H"
    for a claim from another machine that was not released (whether that owner is alive only its heartbeat
    tells, over STALE_BEATS periods); None when nobody does (released, owner dead, never claimed)."""
    record = _read_record(run_dir / LOCK_NAME)
    if not record or record.get("released"):
        return None
    if record.get("host") != socket.gethostname():
        return f"host {record.get('host')}"
    pid = record.get("pid")
    return f"pid {pid}" if isinstance(pid, int) and _pid_alive(pid, record.get("started")) else None


def _describe(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started_at", 0)))
    return f"process {record.get('pid')} on host {record.get('host')} (since {since})"


@dataclass
class RunDirLock:
    """The held lock of one run directory; `release` lets go (the kernel does it if the process dies)."""

    path: Path
    fd: int
    record: dict
    flock_held: bool
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _write(self) -> None:
        data = (json.dumps(self.record) + "\n").encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        os.fsync(self.fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.record["beat"] += 1
            with contextlib.suppress(OSError):  # a full disk must not kill the run through its heartbeat
                self._write()

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="rectnet-rundir-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.record["released"] = True
        with contextlib.suppress(OSError):
            self._write()
        os.close(self.fd)  # closing drops the flock
        _HELD.pop(self.path, None)


_HELD: dict[Path, RunDirLock] = {}  # this process's locks: a second claim of the same folder reuses the first


def _forget_in_child() -> None:
    """A forked child (DataLoader workers) closes its copy of the lock: the lock must end with the owner.

    flock belongs to the open file, which fork shares; a worker outliving a killed owner by a few seconds
    would otherwise still hold it. Closing a copy releases nothing while the owner keeps its own.
    """
    for lock in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(lock.fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def claim(run_dir: Path) -> tuple[RunDirLock, bool]:
    """Own `run_dir` (created if needed); returns the lock and whether this call took it (False: already ours).

    Raises RunDirError naming the owner's host and pid when another live process owns it.
    """
    run_dir = check_location(run_dir)
    check_writable(run_dir)
    path = run_dir / LOCK_NAME
    if path in _HELD:
        return _HELD[path], False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _cannot_write(run_dir, err) from None
    try:
        flock_held = _flock(fd, path)
        took_over = _check_record(path, flock_held)
        check_writes(run_dir)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _process_start(os.getpid()),
            "started_at": time.time(),
            "beat": 0,
            "released": False,
        }
        lock = RunDirLock(path, fd, record, flock_held)
        lock._write()
        if took_over:
            _confirm(lock)
    except BaseException as err:
        os.close(fd)  # the flock goes with it
        if isinstance(err, OSError):  # the record's write (a full disk), or flock failing in an unexpected way
            raise _cannot_write(run_dir, err) from None
        raise
    lock.start_heartbeat()
    _HELD[path] = lock
    return lock, True


def _flock(fd: int, path: Path) -> bool:
    """True when we hold the flock; False when this filesystem has none (the record alone decides then)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record = _read_record(path)
        owner = _describe(record) if record else "another process"
        raise RunDirError(
            f"the run directory {path.parent} is in use by {owner}: two runs in one folder would mix their "
            "metrics and checkpoints; wait for it to end, stop it, or choose another hydra.run.dir"
        ) from None
    except OSError as err:
        if err.errno not in FLOCK_UNSUPPORTED:
            raise
        log.warning("flock is not supported on the filesystem of %s (%s): the lock record guards it", path, err)
        return False
    return True


def _check_record(path: Path, flock_held: bool) -> bool:
    """Refuse a live owner that the flock cannot see: another host (flock node-local), or no flock at all.

    Returns True when this claim takes over from another host's dead owner (to be confirmed: `_confirm`).
    """
    record = _read_record(path)
    if record is None or record.get("released"):
        return False
    if record.get("host") == socket.gethostname():
        if not flock_held and _pid_alive(int(record.get("pid", 0)), record.get("started")):
            raise RunDirError(f"the run directory {path.parent} is in use by {_describe(record)}")
        return False  # a working flock on this host is proof that the recorded owner is gone
    wait = HEARTBEAT_S * STALE_BEATS
    log.warning("%s names %s, not released: watching its heartbeat for %.0f s", path, _describe(record), wait)
    time.sleep(wait)
    later = _read_record(path)
    moved = later is not None and (later.get("pid"), later.get("beat")) != (record.get("pid"), record.get("beat"))
    if moved and not later.get("released"):
        raise RunDirError(
            f"the run directory {path.parent} is in use by {_describe(later)} (its heartbeat in {path.name} "
            "moves; flock does not reach across hosts on this filesystem); wait for it to end or stop it"
        )
    log.warning("%s: the previous owner %s stopped beating; taking over", path, _describe(record))
    return True


def _confirm(lock: RunDirLock) -> None:
    """Two nodes that watched the same dead owner may both take over: the last record written wins, and a
    claimant that reads back someone else's record one second after writing its own backs off."""
    time.sleep(min(1.0, HEARTBEAT_S))
    record = _read_record(lock.path)
    if record is None or (record.get("host"), record.get("pid")) != (lock.record["host"], lock.record["pid"]):
        raise RunDirError(  # `claim` closes the lock file
            f"the run directory {lock.path.parent} was claimed at the same time by "
            f"{_describe(record) if record else 'another process'}"
        )


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that were killed; call only while owning `run_dir`."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for pattern in STALE_TEMPORARIES:
            for path in folder.glob(pattern):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
    if removed:
        log.info("removed temporary files left by an interrupted write: %s", ", ".join(p.name for p in removed))
    return removed


def claim_for(run_dir: Path, ranks: Dist) -> RunDirLock | None:
    """Rank 0 claims the run directory (None when it already held it); every rank raises if the claim fails."""
    lock, error = None, None
    if ranks.is_main:
        try:
            lock, taken = claim(run_dir)
            remove_stale_temporaries(run_dir)
            lock = lock if taken else None
        except RunDirError as err:
            error = str(err)
    error = ranks.broadcast(error)
    if error is not None:
        raise RunDirError(error if ranks.is_main else f"rank 0 could not claim the run directory: {error}")
    return lock
