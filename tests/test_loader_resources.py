"""Decoding workers against cores and /dev/shm (rectnet/data/imagenet/resources.py), and the SLURM launcher
config that gives srun the tasks' cores.

Expected values are computed by hand: a 224x224 RGB uint8 crop is 3 x 224 x 224 = 150,528 bytes, so a
training batch of 128 is 19,267,584 B (19.3 MB), 8 workers x prefetch 2 hold 16 of them (308 MB, 294 MiB);
an evaluation batch of 500 centre crops is 75,264,000 B and 16 of them 1,204,224,000 B (1.2 GB, 1.1 GiB).
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import CONFIGS, compose_train, make_image_folder
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rectnet.config import to_settings
from rectnet.data import sources
from rectnet.data.imagenet import resources
from rectnet.data.imagenet.resources import (
    WorkerPlan,
    batch_bytes,
    eval_batch_images,
    plan_workers,
)
from rectnet.data.sources import SourceContext, make_evaluation, make_source
from rectnet.engine import runtime
from rectnet.engine.runtime import rank_cores

CROP = 3 * 224 * 224  # bytes of one uint8 crop
TRAIN_128 = 128 * CROP  # 19,267,584
EVAL_500 = 500 * CROP  # 75,264,000
SLOT = TRAIN_128 + EVAL_500  # one training and one evaluation batch: 94,531,584
MiB = 2**20


@pytest.fixture(autouse=True)
def outside_slurm_and_torchrun(monkeypatch):
    """rank_cores reads these; a test run inside a Slurm job or torchrun must not see them."""
    for name in ("SLURM_CPUS_PER_TASK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def imagenet(*overrides: str):
    return to_settings(compose_train(["dataset=imagenet", *overrides], "."))


# --------------------------------------------------------------------------------------- batch bytes


def test_a_prefetch_slot_holds_one_training_and_one_evaluation_batch():
    assert (TRAIN_128, EVAL_500) == (19_267_584, 75_264_000)
    assert 16 * TRAIN_128 == 308_281_344 and 16 * EVAL_500 == 1_204_224_000  # 8 workers x prefetch 2
    assert batch_bytes(imagenet(), 128) == SLOT
    assert batch_bytes(imagenet(), None) == EVAL_500  # eval.py: no training loader


def test_evaluation_batches_by_protocol():
    """ten_view: eval_batch_size counts inputs, 50 images of 10 crops; dense: one image, a 500x375 frame at
    each scale and its mirror: 2 x 3 x (341x256 + 512x384 + 640x480) = 3,546,624 B."""
    assert [eval_batch_images(p, 500) for p in ("center", "ten_view", "dense")] == [500, 50, 1]
    assert eval_batch_images("ten_view", 8) == 1
    assert batch_bytes(imagenet("eval.protocol=ten_view"), None) == 50 * 10 * CROP
    assert batch_bytes(imagenet("eval.protocol=dense"), None) == 3_546_624
    assert batch_bytes(imagenet("eval.protocol=dense", "eval.scales=[256]"), None) == 2 * 3 * 341 * 256


# ------------------------------------------------------------------------------------------ planning


def test_what_fits_is_kept():
    """4 ranks of 9 cores each, 6 GB of batches against 24 GiB free."""
    assert plan_workers(8, 2, SLOT, 4, 9, 24 * 2**30) == WorkerPlan(8, 2, None)
    assert plan_workers(8, 2, SLOT, 4, 9, None) == WorkerPlan(8, 2, None)  # no /dev/shm: unchecked
    assert plan_workers(0, 2, SLOT, 1, 1, 0) == WorkerPlan(0, 2, None)


@pytest.mark.parametrize(("cores", "workers"), [(9, 8), (4, 3), (2, 1), (1, 0)])
def test_workers_leave_one_core_to_the_training_process(cores, workers):
    plan = plan_workers(8, 2, SLOT, 1, cores, None, "CPU affinity")
    assert (plan.workers, plan.prefetch_factor) == (workers, 2)
    if workers < 8:
        assert plan.reason == (
            f"dataset.workers 8 -> {workers}: {cores} usable core(s) for this rank (CPU affinity) "
            f"leave {workers} for decoding"
        )


def test_a_containers_64_mib_of_shm_leaves_decoding_to_the_training_process():
    """48 MiB may be planned (3/4 of 64): not one slot of 90 MiB."""
    plan = plan_workers(8, 2, SLOT, 1, 9, 64 * MiB)
    assert (plan.workers, plan.prefetch_factor) == (0, 2)
    assert plan.reason.startswith("dataset.workers 8 -> 0: /dev/shm has 64 MiB free and the loaders of 1 rank(s)")
    assert "would queue 1.4 GiB there (90 MiB per worker and prefetched batch" in plan.reason
    assert "docker --shm-size" in plan.reason and "\n" not in plan.reason


def shm_for(slots: int, local_ranks: int = 4) -> int:
    """Free /dev/shm whose planned 3/4 holds exactly `slots` worker-prefetch slots on every local rank."""
    return slots * local_ranks * SLOT * 4 // 3  # SLOT is a multiple of 3


def test_short_shm_lowers_the_prefetch_before_the_workers():
    """Budgets of 16, 12 and 5 slots per rank (4 ranks), against 8 workers x prefetch 2 = 16 wanted."""
    assert plan_workers(8, 2, SLOT, 4, 9, shm_for(16)) == WorkerPlan(8, 2, None)  # exactly fits
    plan = plan_workers(8, 2, SLOT, 4, 9, shm_for(15))
    assert (plan.workers, plan.prefetch_factor) == (8, 1)
    assert plan.reason.startswith("dataset.prefetch_factor 2 -> 1: /dev/shm has")
    assert plan_workers(8, 4, SLOT, 4, 9, shm_for(20))[:2] == (8, 2)
    assert plan_workers(8, 2, SLOT, 4, 9, shm_for(5)).reason.startswith(
        "dataset.workers 8 -> 5, dataset.prefetch_factor 2 -> 1: /dev/shm has"
    )


def test_both_reasons_on_one_line():
    assert plan_workers(8, 2, SLOT, 4, 4, shm_for(8))[:2] == (3, 2)  # 3 workers for the cores; 6 slots fit
    plan = plan_workers(8, 2, SLOT, 4, 4, shm_for(4))
    assert plan[:2] == (3, 1)
    assert plan.reason.startswith("dataset.workers 8 -> 3, dataset.prefetch_factor 2 -> 1: 4 usable core(s)")
    assert plan.reason.count("; ") == 1 and "leave 3 for decoding; /dev/shm has" in plan.reason


# ---------------------------------------------------------------------------------------- rank cores


@pytest.mark.parametrize(
    ("cores", "env", "expected"),
    [
        (36, {}, 9),  # torchrun on a workstation, or the local launcher: the ranks share the CPU set
        (36, {"TORCHELASTIC_RUN_ID": "x", "SLURM_CPUS_PER_TASK": "36"}, 9),  # torchrun as one Slurm task per node
        (9, {"SLURM_CPUS_PER_TASK": "9"}, 9),  # a Slurm task bound to its own 9 CPUs
        (36, {"SLURM_CPUS_PER_TASK": "9"}, 9),  # an unbound Slurm task sees the node's CPUs
        (64, {"SLURM_CPUS_PER_TASK": "9"}, 9),  # ... or the whole machine's
        (1, {"SLURM_CPUS_PER_TASK": "9"}, 1),  # srun without --cpus-per-task (Slurm 22.05-23.02)
        (3, {}, 1),  # fewer cores than ranks: each still counts one
    ],
)
def test_a_ranks_share_of_the_cores(monkeypatch, cores, env, expected):
    monkeypatch.setattr(runtime, "usable_cores", lambda: (cores, "CPU affinity"))
    assert rank_cores(4, env)[0] == expected


def test_a_task_bound_to_fewer_cpus_than_it_asked_for_says_why(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: (1, "CPU affinity"))
    _, source = rank_cores(4, {"SLURM_CPUS_PER_TASK": "9"})
    assert "srun got no --cpus-per-task" in source and "SRUN_CPUS_PER_TASK" in source


# ----------------------------------------------------------------------------------- in the source


@pytest.fixture
def folder(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=2, train=4, val=3)
    overrides = ["dataset=imagenet", "dataset.num_classes=2", f"dataset.root={root}", "dataset.workers=8"]
    overrides += ["dataset.image_size=32", "dataset.scale_min=40", "dataset.scale_max=48", "eval.size=40"]
    overrides += ["trainer.batch_size=4", "trainer.eval_batch_size=6", "dataset.stats_images=8"]
    return to_settings(compose_train(overrides, tmp_path))


@pytest.fixture
def loaders(monkeypatch):
    """The eval_loader calls of the source (statistics, test split): (batch size, workers, prefetch, persistent)."""
    calls = []

    def spy(dataset, batch_size, rank, world_size, workers, prefetch_factor, persistent):
        calls.append((batch_size, workers, prefetch_factor, persistent))
        return real(dataset, batch_size, rank, world_size, workers, prefetch_factor, persistent)

    real = sources.eval_loader
    monkeypatch.setattr(sources, "eval_loader", spy)
    return calls


def test_the_imagenet_source_runs_the_workers_its_cores_allow(folder, loaders, monkeypatch, caplog):
    """Two usable cores on one rank: one decoding worker, for the statistics, the test split and training."""
    monkeypatch.setattr(runtime, "usable_cores", lambda: (2, "CPU affinity"))
    monkeypatch.setattr(resources, "free_shm", lambda: None)  # whatever this machine has: cores alone decide
    with caplog.at_level(logging.INFO, logger="rectnet"):
        source = make_source(folder, SourceContext(torch.device("cpu")))
    assert "dataset.workers 8 -> 1: 2 usable core(s) for this rank" in caplog.text
    assert loaders == [(64, 1, 2, False), (6, 1, 2, False)]  # statistics, then the test split (not persistent)
    train = source.loader.loader
    assert (train.num_workers, train.prefetch_factor, train.persistent_workers) == (1, 2, True)
    images, labels, _ = next(iter(source.train_epoch(0)))
    assert images.shape == (4, 3, 32, 32) and len(labels) == 4
    assert sum(len(b.labels) for b in source.eval_sets["test"].batches()) == 6
    assert folder.dataset.workers == 8  # the run's own config is left as it is (checkpoints, results.json)


def test_eval_py_lowers_the_workers_for_its_shm_alone(folder, loaders, monkeypatch):
    """Evaluation only: a slot is one 6-crop batch (18,432 B; no training batch). 98,304 B free, 3/4 planned,
    hold 4 slots: 2 per rank on 2 local ranks."""
    monkeypatch.setattr(runtime, "usable_cores", lambda: (64, "CPU affinity"))
    monkeypatch.setattr(resources, "free_shm", lambda: 98_304)
    make_evaluation(folder, SourceContext(torch.device("cpu"), local_world_size=2))
    assert loaders[-1] == (6, 2, 1, False)


# --------------------------------------------------------------------------------------------- SLURM


def test_the_slurm_batch_script_gives_srun_the_tasks_cores(tmp_path, monkeypatch):
    """The launcher config as hydra-submitit-launcher 1.2.0 hands it to submitit (its parameter mapping),
    and submitit's own batch script: srun gets the cores through SRUN_CPUS_PER_TASK, set before it runs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    overrides = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=5", "hydra.launcher.tasks_per_node=4"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        launcher = compose(config_name="train", overrides=overrides, return_hydra_config=True).hydra.launcher
    params = OmegaConf.to_container(launcher, resolve=True)
    assert params["setup"][0] == "export SRUN_CPUS_PER_TASK=5"

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip})
    script = executor._executor._make_submission_file_text("python train.py", "0").splitlines()
    srun = next(i for i, line in enumerate(script) if line.startswith("srun "))
    assert "#SBATCH --cpus-per-task=5" in script and "#SBATCH --ntasks-per-node=4" in script
    assert script.index("export SRUN_CPUS_PER_TASK=5") < srun
