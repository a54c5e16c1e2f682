"""torch.distributed under torchrun (or srun): ranks from the environment, one process per device.

NCCL on CUDA, gloo on CPU. A single process (no RANK/WORLD_SIZE in the environment) runs the same code
with world size 1 and no process group. Only rank 0 writes files; `Dist.sum` makes counts global.

NCCL reduces CUDA tensors only. Rather than a second (gloo) group for CPU tensors, every collective goes
through `Dist`, which first moves its tensor to `Dist.device`, the device the backend serves: the tensors
it sees are tiny (counts, flags). Objects travel as bytes in tensors Dist owns, so that each collective
returns only once gloo's worker thread has let go of them (`released`: an exit right after a collective
could otherwise abort the process).

Timeouts, one rule: a collective that waits on rank 0's one-time setup work goes through
`Dist.setup_broadcast`; every other collective goes through the default group. srun and submitit do not
stop a task's siblings when it dies (torchrun does), so the survivors wait in their next collective until
the group's timeout: the default group's is short (trainer.dist_timeout_min), and NCCL's async error
handling then ends the process instead of leaving it hung. Training's collectives reach every rank within
seconds of one another, but the others wait for rank 0 alone to index the ImageNet tree (1.28M files,
minutes on a shared filesystem) before the first step: that wait goes through the one second group, gloo
(its payloads are pickles on the host), created once in `init_distributed` with its own long timeout
(trainer.setup_timeout_min).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rectnet.config import TrainerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node
    # Where collectives' tensors must live: the rank's GPU under NCCL, the CPU under gloo (`init_distributed`).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # The gloo group with the long timeout, for `setup_broadcast` (`init_distributed`); None: the default group.
    setup_group: dist.ProcessGroup | None = None

    @property
    def enabled(self) -> bool:
        """Collectives and DDP: with several ranks, or in a process group the caller set up before `run`
        (scripts/checks/gpu_check.py runs the NCCL paths with one rank that way)."""
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks: a new tensor on `self.device` (`t` itself is left alone)."""
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, dist.ReduceOp.MAX)

    def _all_reduce(self, t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        if not self.enabled:
            return t
        out = t.to(self.device, copy=True)
        dist.all_reduce(out, op=op)
        return released(out)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (tensors and plain containers), in rank order, on every rank.

        Objects travel as torch.save bytes and come back through torch.load(weights_only=True): CPU tensors
        inside plain pickles do not survive all_gather_object on every torch release.
        """
        if not self.enabled:
            return [obj]
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        payload = buffer.getvalue()
        mine = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(sizes, mine)
        released(mine, *sizes)
        lengths = [int(size.item()) for size in sizes]
        padded = bytes_tensor(payload.ljust(max(lengths), b"\0"), self.device)  # all_gather: equal sizes
        parts = [torch.empty_like(padded) for _ in lengths]
        dist.all_gather(parts, padded)
        released(padded, *parts)
        loaded = [io.BytesIO(tensor_bytes(part[:n])) for part, n in zip(parts, lengths, strict=True)]
        return [torch.load(b, weights_only=True) for b in loaded]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank; the others wait at most the default group's timeout for rank 0."""
        return self._broadcast(obj, None)

    def setup_broadcast(self, obj: Any) -> Any:
        """Rank 0's result of one-time setup work (an ImageFolder index) on every rank, through the setup
        group: the others may wait for rank 0 to finish that work up to trainer.setup_timeout_min."""
        return self._broadcast(obj, self.setup_group)

    def _broadcast(self, obj: Any, group: dist.ProcessGroup | None) -> Any:
        """Rank 0's `obj` as a pickle: its length, then its bytes, each in one broadcast (the setup group is
        gloo: its tensors stay on the host)."""
        if not self.enabled:
            return obj
        device = self.device if group is None else torch.device("cpu")
        payload = pickle.dumps(obj) if self.is_main else b""
        size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0, group=group)
        length = int(released(size).item())
        data = bytes_tensor(payload, device) if self.is_main else torch.empty(length, dtype=torch.uint8, device=device)
        dist.broadcast(data, src=0, group=group)
        released(data)
        return obj if self.is_main else pickle.loads(tensor_bytes(data))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def released(*tensors: torch.Tensor) -> torch.Tensor:
    """Wait until the backend has let go of host tensors a collective was given; returns the first.

    gloo's worker thread drops a finished collective's references a moment after wait() has returned (in a
    third of all-reduces here). Were the tensor's Python object gone by then, the worker would have to take
    the GIL to free it; if the interpreter is exiting (a rank raising right after the agreement all-reduce),
    the thread is stopped inside a C++ destructor and the process aborts ("terminate called without an
    active exception", exit -6 instead of the error's 1: 2 of 96 two-rank runs here). Device tensors are
    not waited for: NCCL's work holds them until the kernel ends, and waiting would synchronize the host.
    """
    deadline = time.monotonic() + RELEASE_WAIT_S
    for t in tensors:
        while t.device.type == "cpu" and _holders(t) > 1 and time.monotonic() < deadline:
            time.sleep(0)  # let the worker thread run
    return tensors[0]


def _holders(t: torch.Tensor) -> int:
    """Owners of `t`'s TensorImpl, this Python tensor included (a private torch method; a torch
    without it is not waited on)."""
    use_count = getattr(t, "_use_count", None)
    return use_count() if use_count else 1


RELEASE_WAIT_S = 5.0  # past it (a tensor held elsewhere too) the collective's result is used as is


def bytes_tensor(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def env_ranks() -> Dist:
    """Ranks from torchrun's variables, else from submitit's job environment (SLURM or local tasks, through
    the Hydra submitit launcher), else from SLURM's (srun), else a single process."""
    env = os.environ
    if "RANK" not in env and env.get("SUBMITIT_EXECUTOR"):
        import submitit

        # Sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK; device choice stays ours (cuda:LOCAL_RANK, every
        # task seeing all of its node's GPUs: configs/hydra/launcher/slurm.yaml).
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        return Dist(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), local)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        local = slurm_tasks_on_this_node(env.get("SLURM_TASKS_PER_NODE", env["SLURM_NTASKS"]))
        return Dist(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), local)
    return Dist()


def slurm_tasks_on_this_node(tasks_per_node: str) -> int:
    """The first node's count in SLURM_TASKS_PER_NODE ("4", "4(x2)", "4(x2),3"): a rank's node-local
    world size for thread and GPU checks (uneven layouts are rare in training jobs)."""
    return int(tasks_per_node.split(",")[0].split("(")[0])


def init_distributed(ranks: Dist, device: torch.device, trainer: TrainerConfig) -> Dist:
    """Join the process group when there is more than one rank (timeout: trainer.dist_timeout_min) and create
    the setup group (trainer.setup_timeout_min); returns `ranks` with its collective device and setup group."""
    if not ranks.enabled:
        return ranks
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                f"rank {ranks.rank} of {ranks.world_size}: MASTER_ADDR/MASTER_PORT are not set; launch with "
                "torchrun (it sets them) or export them for srun"
            )
        # What NCCL's watchdog does when a collective fails or times out: 0 nothing (the rank hangs on), 1 abort
        # the communicators, then end the process, 2 abort the communicators only (the process lives on and
        # waits elsewhere), 3 end the process without aborting them (an abort can itself hang when a peer or
        # the GPU is gone). 3: the process ends, and the launcher reports the failure. Read when the group is
        # created; a value set in the environment is kept.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(minutes=trainer.dist_timeout_min)
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size, timeout=timeout)
        log.info("joined the %s process group as rank %d of %d", backend, ranks.rank, ranks.world_size)
    setup_group = dist.new_group(backend="gloo", timeout=timedelta(minutes=trainer.setup_timeout_min))
    return replace(ranks, device=collective_device(device), setup_group=setup_group)


def collective_device(device: torch.device) -> torch.device:
    """The device whose tensors the default group's backend reduces: the training GPU when the group serves
    CUDA (NCCL, or any backend registered for cuda only), else the CPU."""
    serves = set(dist.get_backend_config().replace(" ", "").split(","))  # e.g. {"cuda:nccl"} or {"cpu:gloo"}
    serves_cpu = any(entry.startswith("cpu:") for entry in serves) or not any(":" in e for e in serves)
    return torch.device("cpu") if serves_cpu else device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class RankFilter(logging.Filter):
    """Prefix log records with the rank that speaks (only when there are several)."""

    def __init__(self, ranks: Dist) -> None:
        super().__init__()
        self.prefix = f"[rank {ranks.rank}/{ranks.world_size}] " if ranks.enabled else ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.prefix and not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def label_log_records(ranks: Dist) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(RankFilter(ranks))
