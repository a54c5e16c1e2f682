"""The CUDA/NCCL paths, covered on a CPU machine.

Where a GPU is needed to run the code itself, a process group whose backend serves only CUDA tensors shows
what NCCL would refuse, and fakes stand in for torch.cuda and stand between the code and the collectives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import CONFIGS, ROOT, TINY, compose_train, make_image_folder
from hydra import compose, initialize_config_dir
from hydra.core.utils import configure_log
from omegaconf import DictConfig, read_write

from rectnet.config import (
    ConfigError,
    EvalConfig,
    OptimConfig,
    TrainerConfig,
    to_settings,
)
from rectnet.data import sources
from rectnet.data.batches import to_device
from rectnet.data.imagenet import ImageFolderError, index_image_folder
from rectnet.data.sources import SourceContext, make_source
from rectnet.engine import distributed
from rectnet.engine import job as job_module
from rectnet.engine import runtime as rt
from rectnet.engine.agreement import NonFiniteLossError, Window, agreed_resume, any_rank_empty, read_window
from rectnet.engine.distributed import Dist, collective_device, init_distributed, slurm_tasks_on_this_node
from rectnet.engine.hydra_callbacks import OwnRunDir
from rectnet.engine.metrics import Counts
from rectnet.engine.optim import fused_sgd_applies, make_optimizer
from rectnet.engine.preemption import StopSignals
from rectnet.engine.scoring import Evaluator
from rectnet.engine.state import rng_state, set_rng_state
from rectnet.engine.train import run
from rectnet.launch import default_run_dir, hydra_output_subdir
from rectnet.layers import make_activation

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
NATIVE_BF16_FLAGS = rt.native_bf16_flags  # conftest's autouse fixture replaces it in every test


# ------------------------------------------------------------------------------ 1. collectives' device


def _join(rank: int, world: int, store: Path, backend: str) -> None:
    dist.init_process_group(
        backend, init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )


def test_a_group_serving_only_cuda_refuses_cpu_tensors_and_dist_reduces_on_its_device(tmp_path):
    """gloo registered for `cuda` only behaves as NCCL does: a CPU tensor in a collective is an error. Dist
    learns from the backend which device its collectives need: cuda:LOCAL_RANK here, the CPU under gloo."""
    _join(0, 1, tmp_path / "store", "cuda:gloo")
    try:
        with pytest.raises(RuntimeError, match="device type cpu"):
            dist.all_reduce(torch.ones(2))
        assert collective_device(torch.device("cuda", 3)) == torch.device("cuda", 3)
    finally:
        dist.destroy_process_group()
    _join(0, 1, tmp_path / "store2", "gloo")
    try:
        assert collective_device(torch.device("cuda", 3)) == torch.device("cpu")
        assert Dist().enabled  # a group set up by the caller is used, even with one rank (gpu_check.py)
    finally:
        dist.destroy_process_group()
    assert not Dist().enabled


class FakeCollectives:
    """Two ranks holding the same values: all_reduce doubles, after checking the tensor is on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seen = device, []

    def all_reduce(self, t: torch.Tensor, op=None) -> None:
        self.seen.append(t.device)
        assert t.device == self.device, f"collective on {t.device}, the backend serves {self.device}"
        if t.device.type != "meta":
            t.mul_(2)


def test_dist_moves_every_reduced_tensor_to_its_collective_device(monkeypatch):
    fake = FakeCollectives(torch.device("meta"))  # a device other than the CPU the tensors start on
    monkeypatch.setattr(dist, "all_reduce", fake.all_reduce)
    ranks = Dist(0, 2, device=torch.device("meta"))
    ranks.sum(Counts(1.5, 1, 2, 3).as_tensor())
    ranks.max(torch.tensor([1]))
    assert fake.seen == [torch.device("meta")] * 2


def test_evaluation_statistics_and_epoch_sums_go_through_dist(monkeypatch, tmp_path):
    """Every count the run sums over ranks reaches the collective as Dist hands it over: with two ranks of
    identical shards faked, the totals are exactly twice one rank's."""
    fake = FakeCollectives(torch.device("cpu"))
    monkeypatch.setattr(dist, "all_reduce", fake.all_reduce)
    ranks = Dist(0, 2)
    settings = to_settings(compose_train([*TINY, "dataset.num_test=10"], tmp_path))
    source = make_source(settings, SourceContext(torch.device("cpu"), 0, 1, ranks.sum))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    runtime = rt.Runtime(torch.device("cpu"), "fp32", None)
    evaluator = Evaluator(model, model, runtime, Dist(), settings.eval, 16)
    one, _ = evaluator(source.eval_sets["test"])
    evaluator.ranks = ranks
    with pytest.raises(RuntimeError, match="evaluated 20 images"):  # 2 x 10 of a 10-image split: caught
        evaluator(source.eval_sets["test"])
    assert Counts.from_tensor(ranks.sum(one.as_tensor())).n == 20
    assert fake.seen == [torch.device("cpu")] * 2
    # ImageFolder statistics: sums and image count both doubled, so the same mean and std as one rank's
    root = make_image_folder(tmp_path / "images")
    overrides = ["dataset=imagenet", "dataset.num_classes=2", f"dataset.root={root}", "dataset.workers=0"]
    folder = to_settings(compose_train(overrides))
    index = index_image_folder(root, "train")
    alone = sources.image_statistics(index, folder, SourceContext(torch.device("cpu")))
    paired = sources.image_statistics(index, folder, SourceContext(torch.device("cpu"), 0, 1, ranks.sum))
    assert len(fake.seen) == 3 and all(torch.allclose(alone[k], paired[k]) for k in alone)


# ------------------------------------------------------------------------------ 2. device per local rank


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_cuda_means_the_local_ranks_gpu(four_gpus):
    assert rt.select_device("cuda", 2, 4) == torch.device("cuda", 2)
    assert rt.select_device("auto", 3, 4) == torch.device("cuda", 3)
    assert rt.select_device("cuda:1", 0, 1) == torch.device("cuda", 1)  # one process per node may pin one
    with pytest.raises(ConfigError, match="cuda:1 with 4 processes on this node"):
        rt.select_device("cuda:1", 0, 4)


def test_a_local_rank_beyond_the_visible_gpus_is_refused(monkeypatch):
    """Per-task GPU binding (gpu-bind, CUDA_VISIBLE_DEVICES per task) leaves one visible GPU per task."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="local rank 1 needs cuda:1 but this process sees 1 GPU"):
        rt.select_device("cuda", 1, 2)


def test_one_process_on_a_node_of_several_gpus_says_it_uses_one(four_gpus, caplog):
    with caplog.at_level(logging.INFO, logger=rt.__name__):
        assert rt.select_device("auto", 0, 1) == torch.device("cuda", 0)
    assert "runs on cuda:0 of the 4 GPUs it sees" in caplog.text and "torchrun --nproc_per_node=4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=rt.__name__):
        rt.select_device("cuda", 2, 4)  # one process per GPU: nothing to say
    assert not caplog.records


def test_the_slurm_launcher_config_states_one_binding_rule():
    text = (CONFIGS / "hydra" / "launcher" / "slurm.yaml").read_text()
    assert "gpu-bind: closest" not in text and "rank r of a node uses cuda:r" in text


# ------------------------------------------------------------------------------ 3. batches on the device


def test_batches_of_a_host_held_split_arrive_on_the_device(tmp_path):
    """dataset.on_device=false: the split stays on the host, batches are made on the device (here `meta`,
    a device other than the CPU that needs no GPU)."""
    settings = to_settings(compose_train([*TINY, "dataset.on_device=false", "dataset.crop_padding=2"], tmp_path))
    source = make_source(settings, SourceContext(torch.device("meta")))
    images, labels, _ = next(iter(source.train_epoch(1)))
    views, eval_labels, _ = next(iter(source.eval_sets["test"].batches()))
    assert {images.device.type, labels.device.type, views[0].device.type, eval_labels.device.type} == {"meta"}
    assert images.shape == (64, 3, 16, 16)


def test_host_to_gpu_copies_are_pinned_and_do_not_block():
    calls = []

    class Host:
        device = torch.device("cpu")

        def pin_memory(self):
            calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            calls.append((str(device), non_blocking))
            return "on the gpu"

    assert to_device(Host(), torch.device("cuda", 0)) == "on the gpu"
    assert calls == ["pin", ("cuda:0", True)]


# ------------------------------------------------------------------------------ 4. CUDA RNG of the rank's GPU


def test_only_the_ranks_gpu_rng_is_saved_and_restored(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([device.index]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.tolist(), device)))
    state = rng_state(torch.device("cuda", 5))
    assert state["cuda"].tolist() == [5]
    set_rng_state(state, torch.device("cuda", 0))  # requeued on a smaller allocation: its own GPU, no IndexError
    assert restored == [([5], torch.device("cuda", 0))]
    set_rng_state({**state, "cuda": []}, torch.device("cuda", 0))  # written by a CPU rank: no CUDA state to restore
    assert len(restored) == 1


# ------------------------------------------------------------------------------ 5. deterministic, warn-only


def test_deterministic_runs_warn_where_an_op_has_no_deterministic_kernel(tmp_path):
    settings = to_settings(compose_train([*TINY, "trainer.deterministic=true", "trainer.device=cpu"], tmp_path))
    try:
        rt.make_runtime(settings.trainer)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------------------ 7 and resume: ranks agree


def _window(losses: list[float]) -> Window:
    window = Window()
    logits, labels = torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])  # top-1 hits: 1 of 2
    for step, value in enumerate(losses, start=1):
        window.add(step, torch.tensor(value), logits, labels)
    return window


def _two_rank_worker(rank: int, folder: str) -> None:
    folder_path = Path(folder)
    _join(rank, 2, folder_path / "store", "gloo")
    ranks, out = Dist(rank, 2), {}
    settings = SimpleNamespace(dataset=SimpleNamespace(skip_corrupt=True, num_classes=2))
    try:
        # a window whose step 2 is NaN on rank 1 only: every rank raises the same error at the same point
        handled: list[int] = []  # the handler that was there before ours (submitit's, which requeues)
        signal.signal(signal.SIGUSR2, lambda signum, frame: handled.append(signum))
        signals = StopSignals().install()
        job = SimpleNamespace(ranks=ranks, stop=signals, run_dir=folder_path, settings=settings)
        try:
            read_window(job, _window([0.5, math.nan if rank == 1 else 0.4, 0.3]), Counts(), 2)
            out["nan"] = "no error"
        except NonFiniteLossError as err:
            out["nan"] = str(err)
        # a stop signal on rank 0 only: both stop; the window's counts join the epoch's
        if rank == 0:
            job.stop.received = signal.SIGUSR2
        counts = Counts()
        stop = read_window(job, _window([0.5, 0.25]), counts, 2)
        out["stop"] = stop
        out["counts"] = [counts.loss_sum, counts.top1, counts.top5, counts.n]
        try:  # rank 1 got no signal: it acts on rank 0's (submitit's requeue is keyed to the signal)
            job.stop.hand_over(stop)
        except SystemExit as stopped:
            out["exit"] = stopped.code
        out["handled"] = handled
        # an all-corrupt batch on rank 1 only: both skip the step
        out["skip"] = any_rank_empty(job, 0 if rank == 1 else 5)
        # rank 1 sees no checkpoint (a stale directory listing): it still resumes rank 0's choice
        out["epoch"] = agreed_resume("auto", folder_path / f"checkpoints{rank}", ranks)[1]["epoch"]
    finally:
        dist.destroy_process_group()
    (folder_path / f"rank{rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_two_ranks_agree_on_a_nan_a_signal_an_empty_batch_and_the_checkpoint(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=1", "logger=none"], tmp_path / "run"))  # a real checkpoint: epoch 1
    (tmp_path / "run" / "checkpoints").rename(tmp_path / "checkpoints0")
    context = mp.start_processes(_two_rank_worker, args=(str(tmp_path),), nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=120)  # the process group's 30 s timeout bounds a hang
    assert [p.exitcode for p in context.processes] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    message = "training loss is not finite on rank(s) [1] at epoch 2, step 2: stopped before writing anything"
    assert all(r["nan"].startswith(message) for r in results)
    assert [r["stop"] for r in results] == [[signal.SIGUSR2, [0]]] * 2
    assert [r["exit"] for r in results] == [128 + signal.SIGUSR2] * 2
    assert [r["handled"] for r in results] == [[signal.SIGUSR2]] * 2  # rank 1 too: its requeue handler ran
    assert [r["counts"] for r in results] == [[2 * 0.5 + 2 * 0.25, 2, 4, 4]] * 2  # this rank's, 2 steps of 2
    assert [r["skip"] for r in results] == [True, True]
    assert [r["epoch"] for r in results] == [1, 1]


def _release_worker(rank: int, folder: str) -> None:
    """200 sums and maxima, and objects of different sizes per rank through gather and both broadcasts."""
    folder_path = Path(folder)
    _join(rank, 2, folder_path / "store", "gloo")
    ranks = replace(Dist(rank, 2), setup_group=dist.new_group(backend="gloo"))
    out: dict = {"held": 0, "raw_held": 0}
    try:
        for i in range(100):
            for reduced in (ranks.sum(torch.full((3,), float(rank + i))), ranks.max(torch.tensor([rank + i]))):
                out["held"] += reduced._use_count() > 1  # the backend's thread still holds it after return
            raw = torch.ones(3)
            dist.all_reduce(raw)
            out["raw_held"] += raw._use_count() > 1
        out["sum"] = ranks.sum(torch.tensor([1.0, rank])).tolist()
        mine = {"rank": rank, "path": f"run{rank}", "weights": torch.arange(3 * rank + 1.0)}
        out["gathered"] = [{**g, "weights": g["weights"].tolist()} for g in ranks.gather(mine)]
        sent = {"index": [Path("a") / str(n) for n in range(50)], "from": rank}
        out["broadcast"] = str(ranks.broadcast(sent if rank == 0 else None))
        out["setup_broadcast"] = str(ranks.setup_broadcast(sent if rank == 0 else "not sent"))
    finally:
        dist.destroy_process_group()
    (folder_path / f"rank{rank}.json").write_text(json.dumps(out))


def test_collectives_return_tensors_the_backend_has_let_go_of(tmp_path):
    """gloo's worker thread drops a finished all-reduce's tensors a moment after wait() returns. Were their
    Python objects gone by then, that thread would need the GIL, and during interpreter shutdown (a rank
    exiting on the agreed NaN error) the process aborted instead of exiting 1 (2 of 96 two-rank
    runs of gpu_check's ddp_nan). Dist's collectives return only after the backend has let go."""
    context = mp.start_processes(_release_worker, args=(str(tmp_path),), nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=120)
    assert [p.exitcode for p in context.processes] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["held"] for r in results] == [0, 0]
    assert [r["sum"] for r in results] == [[2.0, 1.0]] * 2
    expected = [{"rank": 0, "path": "run0", "weights": [0.0]}, {"rank": 1, "path": "run1", "weights": [0.0, 1, 2, 3]}]
    assert [r["gathered"] for r in results] == [expected] * 2
    sent = str({"index": [Path("a") / str(n) for n in range(50)], "from": 0})
    assert [(r["broadcast"], r["setup_broadcast"]) for r in results] == [(sent, sent)] * 2
    # The race the waiting removes, seen on the plain collective (on this machine, in about a third of calls);
    # printed rather than asserted: it depends on thread scheduling.
    print("plain all_reduce results still held by gloo after return:", [r["raw_held"] for r in results], "of 100")


# ------------------------------------------------------------------------------ a dead rank, rank 0's setup


def test_the_timeouts_reach_the_process_groups(monkeypatch):
    created = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: created.update(default=(backend, kwargs)))
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: created.setdefault("setup", kwargs))
    monkeypatch.setattr(distributed, "collective_device", lambda device: device)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "")
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING")  # unset here; monkeypatch restores it afterwards
    trainer = TrainerConfig(dist_timeout_min=2.5, setup_timeout_min=90)
    ranks = init_distributed(Dist(1, 2), torch.device("cpu"), trainer)
    assert created["default"] == ("gloo", {"rank": 1, "world_size": 2, "timeout": timedelta(minutes=2.5)})
    assert created["setup"] == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    assert ranks.setup_group is created["setup"]
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"  # a timed-out NCCL collective ends the process
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    init_distributed(Dist(1, 2), torch.device("cpu"), trainer)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # the user's choice is kept
    for key in ("dist_timeout_min", "setup_timeout_min"):
        with pytest.raises(ConfigError, match=f"trainer.{key} must be > 0"):
            TrainerConfig(**{key: 0.0}).validate()


def _timeouts_worker(rank: int, folder: str, port: int) -> None:
    """Rank 0 does 4 s of setup work (twice the 2 s timeout) before the setup broadcast; then rank 1 enters
    a collective that rank 0, alive, never joins."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = init_distributed(Dist(rank, 2), torch.device("cpu"), TrainerConfig(dist_timeout_min=2 / 60))
    folder_path, out, joined = Path(folder), {}, time.monotonic()
    try:
        if rank == 0:
            time.sleep(4)
        out["shared"] = ranks.setup_broadcast("rank 0's index" if rank == 0 else None)
        if rank == 1:
            start = time.monotonic()
            try:
                ranks.sum(torch.ones(1))
                out["alone"] = "no error"
            except RuntimeError as err:
                out["alone"] = str(err)
            out["waited_s"] = time.monotonic() - start
        out["since_joining_s"] = time.monotonic() - joined
        (folder_path / f"rank{rank}.json").write_text(json.dumps(out))
        deadline = time.monotonic() + 30
        while rank == 0 and not (folder_path / "rank1.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_setup_work_outlasts_the_timeout_but_a_missing_rank_fails_within_it(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(
        _timeouts_worker, args=(str(tmp_path), port), nprocs=2, join=False, start_method="spawn"
    )
    for process in context.processes:
        process.join(timeout=90)  # importing this module takes most of it on a busy 2-core machine
    assert [p.exitcode for p in context.processes] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["shared"] for r in results] == ["rank 0's index"] * 2
    rank_1 = results[1]
    assert "timed out" in rank_1["alone"].lower() and 1.5 < rank_1["waited_s"] < 10, rank_1
    assert rank_1["since_joining_s"] < 20, rank_1  # 4 s of setup, 2 s of timeout: no rank hung


# ------------------------------------------------------------------------------ wrong results across ranks


def test_only_rank_0_writes_hydra_files_under_submitit(monkeypatch):
    for key in ("RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    assert hydra_output_subdir() is None
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    assert hydra_output_subdir() == ".hydra"


def _with_hydra_config() -> DictConfig:
    """train.yaml composed as Hydra's entry point sees it, with its `hydra` node."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=TINY, return_hydra_config=True)


LAUNCH_KEYS = ("RECTNET_RUN_DIR", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID",
               "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID")  # fmt: skip
GENERATED_RUN_ID = str(uuid.uuid4())  # what torchrun --standalone names every launch


@pytest.fixture
def launch(monkeypatch):
    """Sets a launcher's environment, on top of none (no torchrun, no SLURM, no pinned folder)."""
    for key in LAUNCH_KEYS:
        monkeypatch.delenv(key, raising=False)

    def set_environment(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return set_environment


@pytest.mark.parametrize(
    "env, run_dir",
    [
        ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "prelu-a"}, "outputs/torchrun/prelu-a"),  # --rdzv-id=prelu-a
        ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "4242"}, "outputs/slurm/4242"),
        ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": GENERATED_RUN_ID, "SLURM_JOB_ID": "4242"}, "outputs/slurm/4242"),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_JOB_ID": "4242"}, "outputs/slurm/4242"),  # srun
        (
            {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "4245", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"},
            "outputs/slurm/4242_3",
        ),
        ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "none", "RECTNET_RUN_DIR": "/runs/pinned"}, "/runs/pinned"),
    ],
    ids=["rdzv_id", "slurm_job", "standalone_in_a_slurm_job", "srun", "slurm_array_task", "pinned"],
)
def test_a_multi_process_launch_runs_in_a_folder_named_after_its_job(launch, env, run_dir):
    """Every rank and every relaunch of the job (a SLURM requeue keeps the job id) name the same folder."""
    launch(**env)
    assert default_run_dir() == run_dir


@pytest.mark.parametrize("run_id", ["none", GENERATED_RUN_ID], ids=["no_rdzv_id", "standalone"])
def test_a_multi_process_launch_that_names_no_job_is_refused(launch, run_id):
    """'none' is every launch's id without --rdzv-id (another job would resume this run); a generated uuid is
    new at every launch (a relaunch would not resume it)."""
    launch(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", TORCHELASTIC_RUN_ID=run_id)
    with pytest.raises(ConfigError, match=r"set hydra.run.dir=<folder> \(or RECTNET_RUN_DIR\) the same on every rank"):
        default_run_dir()


def test_a_single_process_runs_in_a_folder_of_its_start_time_or_of_its_slurm_job(launch):
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", default_run_dir())
    launch(WORLD_SIZE="1", TORCHELASTIC_RUN_ID=GENERATED_RUN_ID)
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", default_run_dir())
    launch(SLURM_JOB_ID="4242", SLURM_NTASKS="1")  # a one-GPU sbatch job: its requeue resumes from the same folder
    assert default_run_dir() == "outputs/slurm/4242"


def test_the_refusal_ends_each_rank_in_one_line_before_hydra_writes(launch):
    """Hydra resolves hydra.run.dir first in OwnRunDir.on_run_start: the ConfigError, wrapped twice by
    OmegaConf, ends the rank in its one line (every rank resolves the same environment)."""
    launch(WORLD_SIZE="2", RANK="1", TORCHELASTIC_RUN_ID="none")
    with pytest.raises(SystemExit) as exit_info:
        OwnRunDir().on_run_start(config=_with_hydra_config())
    message = str(exit_info.value.code)
    assert message.startswith("ConfigError: a 2-process launch needs a run directory") and "\n" not in message


def test_slurm_tasks_per_node_forms():
    assert [slurm_tasks_on_this_node(v) for v in ("4", "4(x2)", "3(x2),1")] == [4, 4, 3]


# ------------------------------------------------------------------------------ precision=auto and threads


def test_auto_precision_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(rt, "native_bf16_flags", NATIVE_BF16_FLAGS)
    monkeypatch.setattr(rt, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert rt.resolve_precision("auto", cpu) == ("bf16", "the CPU has native bf16 (avx512_bf16)")
    monkeypatch.setattr(rt, "cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert rt.resolve_precision("auto", cpu)[0] == "bf16"
    monkeypatch.setattr(rt, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert rt.resolve_precision("auto", cpu)[0] == "fp32"
    assert rt.resolve_precision("bf16", cpu) == ("bf16", "set by trainer.precision")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert rt.resolve_precision("auto", torch.device("cuda", 0)) == ("bf16", "H100 supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert rt.resolve_precision("auto", torch.device("cuda", 0))[0] == "fp32"


def test_the_default_precision_is_auto():
    assert TrainerConfig().precision == "auto"


def test_thread_default_is_this_ranks_share_of_the_usable_cores(monkeypatch, tmp_path):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rt, "usable_cores", lambda: (8, "CPU affinity"))
    assert rt.choose_threads(None, 2) == (4, "CPU affinity: 8 core(s) / 2 local rank(s)")
    # Two Slurm tasks (srun, submitit), each bound to its own 8 CPUs: a rank's share is all 8, not 8 / 2.
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert rt.choose_threads(None, 2) == (8, "CPU affinity")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun's two ranks inside one 8-CPU task share them
    assert rt.choose_threads(None, 2)[0] == 4
    assert rt.choose_threads(3, 2) == (3, "trainer.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert rt.choose_threads(None, 2) == (5, "OMP_NUM_THREADS")
    quota = tmp_path / "cpu.max"
    for text, cpus in (("200000 100000", 2), ("150000 100000", 2), ("max 100000", None)):
        quota.write_text(text + "\n")
        assert rt.cgroup_cpu_quota(str(quota)) == cpus
    assert rt.cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_more_threads_than_the_ranks_cores_is_said_fewer_or_as_many_are_not(monkeypatch, caplog):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rt, "usable_cores", lambda: (4, "CPU affinity"))
    for threads, ranks in ((4, 1), (2, 2), (1, 4)):  # the 4 cores exactly taken
        rt.warn_oversubscribed(threads, ranks)
    assert not caplog.records
    rt.warn_oversubscribed(3, 2)  # 2 ranks x 3 threads on 4 cores
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "3 intra-op threads for 2 core(s)" in record.message
    assert "trainer.threads=2 or fewer" in record.message


def test_usable_cores_do_not_exceed_the_affinity():
    assert 1 <= rt.usable_cores()[0] <= len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------ host syncs in the hot loop

SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy")  # every way a value reaches the host


def _host_reads(overrides: list[str], run_dir: Path) -> int:
    """How many times a whole run reads a tensor's value on the host."""
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                calls.append(1)
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        run(compose_train(overrides, run_dir))
    return len(calls)


@pytest.mark.parametrize("grouped", [False, True], ids=["one_process", "ddp"])
def test_training_steps_read_the_device_once_per_log_interval(tmp_path, one_thread, grouped):
    """Eight more steps (two more log intervals of 4) cost exactly two more host reads: none per step, one
    per interval, with DDP too (its stop/NaN all-reduce rides in the same read). Before, each step read the
    loss (.item), its finiteness (bool) and two top-k counts (int), and under DDP the stop flag (.item)."""
    base = [*TINY, "trainer.batch_size=32", "trainer.epochs=1", "trainer.log_every_steps=4", "logger=none"]
    reads = []
    for steps in (8, 16):
        if grouped:
            _join(0, 1, tmp_path / f"store{steps}", "gloo")  # run() takes it (DDP) and destroys it
        reads.append(_host_reads([*base, f"trainer.max_steps_per_epoch={steps}"], tmp_path / str(steps)))
    assert reads[1] - reads[0] == 2


def test_sgd_is_fused_on_cuda_and_keeps_the_cpu_loop():
    assert not make_optimizer(torch.nn.Linear(2, 2), OptimConfig()).defaults["fused"]  # CPU: bitwise as before
    cuda = SimpleNamespace(device=torch.device("cuda", 0), is_floating_point=lambda: True)
    cpu = SimpleNamespace(device=torch.device("cpu"), is_floating_point=lambda: True)
    assert fused_sgd_applies([cuda, cuda]) and not fused_sgd_applies([cuda, cpu]) and not fused_sgd_applies([])


def test_dense_scoring_turns_cudnn_autotuning_off_and_back_on(monkeypatch):
    seen = []
    evaluator = Evaluator(None, None, None, Dist(), EvalConfig("dense"), 32)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with evaluator._autotuning():
        seen.append(torch.backends.cudnn.benchmark)
    assert seen == [False] and torch.backends.cudnn.benchmark
    with Evaluator(None, None, None, Dist(), EvalConfig("ten_view"), 32)._autotuning():
        assert torch.backends.cudnn.benchmark  # fixed-size crops: autotuning pays


@pytest.mark.slow
def test_the_gpu_check_dry_run_composes_every_stage_on_a_cpu_machine():
    """Every stage composes as its processes would see it on 8 GPUs (tests/test_gpu_check.py runs the script)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--gpus", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[0]["dry_run"] and rows[0]["cuda_available"] == torch.cuda.is_available() and rows[0]["nproc"] == 8
    stages = {row["stage"]: row for row in rows[1:]}
    assert list(stages) == [
        "cifar_bf16",
        "cifar_fp16",
        "cifar_fp32",
        "nccl_1rank",
        "ddp_1rank",
        "ddp_nranks",
        "ddp_imagenet",
        "eval_center",
        "eval_ten_view",
        "eval_dense",
        "ddp_nan",
        "ddp_stop",
        "ddp_resume",
        "cifar_auto_compile",
        "ddp_compile",
    ]
    launches = {name: row["launches"] for name, row in stages.items() if row["launches"]}
    assert all(row["train_gflops_per_image"] > 0 for name, row in stages.items() if name in launches)
    assert {launch["launcher"] for name in launches for launch in launches[name]} == {"in_process", "torchrun", "ranks"}
    for name in ("ddp_nranks", "ddp_imagenet", "ddp_nan", "ddp_stop", "ddp_compile"):
        (launch,) = launches[name]
        assert launch["nproc"] == 8 and launch["batch_per_process"] * 8 == launch["global_batch"], name
    for name in ("ddp_1rank", "ddp_resume"):  # the same run on one process: the same global batch
        (launch,) = launches[name]
        assert launch["nproc"] == 1 and launch["global_batch"] == launches["ddp_nranks"][0]["global_batch"] == 256
        assert "--nproc_per_node=1 " in launch["command"]
    (stop,), (resume,), (nan,) = launches["ddp_stop"], launches["ddp_resume"], launches["ddp_nan"]
    assert "--nproc_per_node=8 " in stop["command"]
    assert stop["command"].split("hydra.run.dir=")[1] == resume["command"].split("hydra.run.dir=")[1]  # the run
    assert nan["env_of_rank_r"]["WORLD_SIZE"] == "8" and "optim.lr=1e38" in nan["command"]  # started as srun would
    assert (stages["cifar_bf16"]["min_images_per_s"], stages["nccl_1rank"]["max_syncs_per_step"]) == (8000, 0.1)
    assert (stages["ddp_nranks"]["min_scaling"], stages["ddp_compile"]["min_compile_ratio"]) == (0.3, 0.5)
    assert stages["eval_dense"]["command"].endswith("eval.protocol=dense 'eval.scales=[256]'")


def test_only_rank_0_scans_the_image_tree_and_its_error_reaches_every_rank(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images")
    settings = to_settings(compose_train(["dataset=imagenet", "dataset.num_classes=2", f"dataset.root={root}"]))
    scanned = index_image_folder(root, "train")
    monkeypatch.setattr(sources, "index_image_folder", lambda *args: pytest.fail("rank 1 scanned the tree"))
    rank_1 = SourceContext(torch.device("cpu"), 1, 2, share=lambda obj: (scanned, None))
    assert sources._index_split(settings, rank_1, "train", None) is scanned
    failed = SourceContext(torch.device("cpu"), 1, 2, share=lambda obj: (None, "the image folder x does not exist"))
    with pytest.raises(ImageFolderError, match="the image folder x does not exist"):
        sources._index_split(settings, failed, "train", None)


def test_preprocessing_constants_live_on_the_device():
    state = {"mean": torch.zeros(3), "std": torch.ones(3), "mean_image": torch.zeros(3, 4, 4)}
    for per_pixel in (False, True):
        prep = sources.make_preprocess(state, True, per_pixel, False, SourceContext(torch.device("meta")))
        tensors = [prep.eigval, prep.eigvec, *((prep.mean_image,) if per_pixel else (prep.mean, prep.std))]
        assert {t.device.type for t in tensors} == {"meta"}


def _job_logging(output_dir: Path) -> DictConfig:
    """hydra.job_logging as train.yaml composes it, for a job whose output directory is `output_dir`."""
    config = _with_hydra_config()
    with read_write(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir)
    return config.hydra.job_logging


@contextlib.contextmanager
def _hydra_job_setup(output_dir: Path):
    """The root logger as Hydra's job setup configures it (in every rank's process), then as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    output_dir.mkdir()  # Hydra makes the run directory before it sets logging up
    configure_log(_job_logging(output_dir))
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    "launcher",
    [{"RANK": "{rank}"}, {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": "{rank}"}],
    ids=["torchrun", "submitit"],  # submitit: no RANK until the run exports it, after Hydra's job setup
)
def test_ranks_other_than_0_stop_appending_to_train_log(tmp_path, monkeypatch, capsys, launcher):
    """Rank 1 never creates train.log and logs to its console; rank 0 writes it in Hydra's format."""
    for key in ("RANK", "SLURM_PROCID", "SLURM_NTASKS", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    for rank in (1, 0):
        for key, value in launcher.items():
            monkeypatch.setenv(key, value.format(rank=rank))
        with _hydra_job_setup(tmp_path / str(rank)):
            logging.getLogger("rectnet").info("rank %d speaking", rank)
    assert not (tmp_path / "1" / "train.log").exists()
    line = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[rectnet\]\[INFO\] - rank 0 speaking\n"
    assert re.fullmatch(line, (tmp_path / "0" / "train.log").read_text())
    assert "rank 1 speaking" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the activations under bf16


def _grads(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("act", ["relu", "prelu", "prelu_shared", "crelu", "avr", "leaky_relu"])
def test_activations_learn_the_same_under_bf16_autocast(act, one_thread):
    """One conv block (conv, the activation, a 1x1 conv): every gradient, PReLU slopes included, under CPU
    bf16 autocast is the fp32 gradient to bf16's precision (8-bit mantissa, ~0.4% per rounding; 3% allowed
    for a few roundings), the activation sees bf16 and the parameters stay fp32."""
    torch.manual_seed(0)
    activation = make_activation(act)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), activation(16), torch.nn.Conv2d(activation.out_channels(16), 4, 1)
    )
    seen = []
    block[1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].dtype))
    x = torch.randn(8, 3, 12, 12)
    exact, mixed = _grads(block, x, False), _grads(block, x, True)
    assert seen == [torch.float32, torch.bfloat16]
    assert exact.keys() == mixed.keys() == {name for name, _ in block.named_parameters()}
    for name, grad in exact.items():
        assert grad.norm() > 0, name  # a real gradient to compare, not zeros
        assert (mixed[name] - grad).norm() <= 0.03 * grad.norm(), name
    assert all(p.dtype == torch.float32 for p in block.parameters())


def test_compile_uses_cuda_graphs_for_one_cuda_process_only():
    assert rt.compile_mode(torch.device("cuda", 0), distributed=False) == "reduce-overhead"
    assert rt.compile_mode(torch.device("cuda", 0), distributed=True) is None
    assert rt.compile_mode(torch.device("cpu"), distributed=False) is None


def test_a_callers_one_rank_group_runs_the_distributed_paths_and_learns_the_same(tmp_path, one_thread, monkeypatch):
    """What gpu_check.py's nccl_1rank stage does, with gloo: DDP, summed counts and agreed flags in a 1-rank
    group give exactly the plain run's weights; run() leaves no group behind."""
    args = [*TINY, "trainer.epochs=1", "logger=none"]
    run(compose_train(args, tmp_path / "plain"))
    wrapped = []

    class Recorded(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            wrapped.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(job_module, "DistributedDataParallel", Recorded)
    _join(0, 1, tmp_path / "store", "gloo")
    results = run(compose_train(args, tmp_path / "grouped"))
    assert wrapped == [1] and not dist.is_initialized() and results["world_size"] == 1
    a, b = (
        torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in ("plain", "grouped")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
