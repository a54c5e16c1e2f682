"""What the launcher says before any process group exists: this process's rank, and the run folder a job
(a single process, torchrun, SLURM, Hydra's submitit launcher) writes to and resumes from. configs/train.yaml
reads both through resolvers (`${rectnet_run_dir:}`, `${rectnet_output_subdir:}`, registered in rectnet.config).
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime

from rectnet.config import ConfigError


def default_run_dir() -> str:
    """A folder named after the job where there is one, so that a relaunch of the job finds it again to resume
    while another job does not: inside a SLURM job outputs/slurm/<job id> (a requeue keeps the id), for any
    number of processes. Else outputs/<date>/<time> for one process; several processes each compose their own
    config (their clocks may straddle a second), so they need torchrun's explicit --rdzv-id, outputs/torchrun/<id>.
    torchrun's own run ids name no job ("none" for every launch without --rdzv-id, a fresh uuid for every
    --standalone one): such a launch is refused unless the folder is pinned."""
    env = os.environ
    if "RECTNET_RUN_DIR" in env:  # it wins (train.yaml), but OmegaConf resolves this default anyway
        return env["RECTNET_RUN_DIR"]
    if "SLURM_JOB_ID" in env:  # also for one process: a requeued job must find its folder to resume
        return f"outputs/slurm/{_slurm_job_id()}"
    processes = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    if processes == 1:
        return datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")
    run_id = env.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none" or _is_uuid(run_id):
        raise ConfigError(
            f"a {processes}-process launch needs a run directory named after its job, and torchrun's run id "
            f"{run_id!r} names none ('none' for every launch without --rdzv-id, a fresh uuid for every --standalone "
            "one): set hydra.run.dir=<folder> (or RECTNET_RUN_DIR) the same on every rank, or give torchrun "
            "--rdzv-id=<job name> without --standalone, so that a relaunch resumes the run and another job does not"
        )
    return f"outputs/torchrun/{run_id}"


def _slurm_job_id() -> str:
    """The SLURM job's id as squeue shows it: <array job id>_<task id> for an array task, else the job id."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def _is_uuid(text: str) -> bool:
    """Whether `text` is a uuid in its canonical form (torchrun's generated run ids: str(uuid.uuid4()))."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def launch_rank() -> int:
    """This process's rank as its launcher states it, read before any process group exists: torchrun's RANK,
    a submitit task's global rank (Hydra's submitit launcher runs Hydra's job setup in every task), srun's
    SLURM_PROCID; 0 for a single process."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if env.get("SUBMITIT_EXECUTOR"):
        import submitit

        return submitit.JobEnvironment().global_rank
    return int(env.get("SLURM_PROCID", 0)) if int(env.get("SLURM_NTASKS", 1)) > 1 else 0


def hydra_output_subdir() -> str | None:
    """hydra.output_subdir: `.hydra` on rank 0, none on the other ranks (only rank 0 writes the run folder)."""
    return ".hydra" if launch_rank() == 0 else None
