"""What defines a run, so that a resume continues only the run its checkpoint came from.

Every checkpoint carries the run's fingerprint: its resolved config flattened to `section.key` entries, minus
what may change between two segments of one run (where and how fast it runs, how much it logs, where its data
lies, how many epochs it is extended to), with the global batch in place of the per-process one (a requeue on
another GPU count keeps the global batch). A resume compares the checkpoint's fingerprint with its own and
refuses any difference in one line naming the keys, unless `trainer.resume_allow` lists them.

Without this a second launch into an occupied run directory (a fixed `hydra.run.dir`, a launcher's run id that
repeats) "resumes" another run: it trains nothing, reports the first run's error under the second run's
hyper-parameters, or continues mid-epoch with another seed's data order while the optimizer keeps the old lr.

Some keys can never be allowed to change: the optimizer's and the schedule's settings (the learning rate,
momentum, milestones, ...) are restored from the checkpoint's state, so a new value would be recorded but not
used. Those need a new run.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from rectnet.config import ConfigError, TrainConfig, TrainerConfig

# Keys (or `section.` prefixes) that may differ between segments of one run: they change where and how fast it
# runs, what it logs and where files lie, not what it computes (beyond floating-point order). trainer.epochs may
# grow to extend a run, except under the cosine schedule, whose period is the epoch count (`fingerprint`).
MAY_CHANGE = (
    "run_dir",
    "logger.",
    "dataset.root",
    "dataset.download",
    "dataset.workers",
    "dataset.prefetch_factor",
    "dataset.on_device",
    "dataset.draft_gap",
    "trainer.epochs",
    "trainer.batch_scope",  # how batch_size is counted: the global batch (`fingerprint`) is what defines the run
    "trainer.eval_batch_size",
    "trainer.device",
    "trainer.precision",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.fused_prelu",
    "trainer.keep_freed_memory",
    "trainer.resume",
    "trainer.resume_allow",
    "trainer.threads",
    "trainer.deterministic",
    "trainer.log_every_steps",
    "trainer.progress",
    "trainer.checkpoint_every_steps",
    "trainer.dist_timeout_min",
    "trainer.setup_timeout_min",
)


class ResumeMismatchError(ConfigError):
    """The checkpoint to resume from was written by a run with another fingerprint."""


GLOBAL_BATCH = "trainer.batch_size"  # holds the global batch in a fingerprint, whatever trainer.batch_scope says
# Restored from the checkpoint's optimizer and schedule state whatever the config says.
HELD_BY_CHECKPOINT = ("optim.", "schedule.")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def fingerprint(config: dict, global_batch: int) -> dict[str, Any]:
    """The entries of `config` (a resolved config dict) that define the run, with its global batch."""
    flat = flatten(config)
    cosine = flat.get("schedule.name") == "cosine"  # its period is trainer.epochs: extending it changes the lrs
    kept = {k: v for k, v in flat.items() if not _matches(k, MAY_CHANGE) or (cosine and k == "trainer.epochs")}
    kept[GLOBAL_BATCH] = global_batch  # the same run on another number of processes has the same global batch
    return kept


def launch_fingerprint(config: dict, world_size: int) -> dict[str, Any]:
    """The fingerprint of launching the resolved `config` on `world_size` processes: its global batch is what
    trainer.batch_size and trainer.batch_scope make of that many processes (`TrainerConfig.batch_sizes`, which
    raises ConfigError for a global batch the processes cannot share). The training loop and the check that
    train.py makes before Hydra writes `.hydra/` (engine/hydra_callbacks.py) both compute it here."""
    trainer = config["trainer"]
    sizes = TrainerConfig(batch_size=trainer["batch_size"], batch_scope=trainer["batch_scope"])
    return fingerprint(config, sizes.batch_sizes(world_size)[1])


def differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (the checkpoint's value, this run's value) for every key whose values differ. A key that only one
    side has (a checkpoint of a rectnet version before or after the key existed) counts as its schema default
    there, and "absent" where it has none."""
    defaults = schema_defaults()
    keys = sorted(set(saved) | set(current))
    old = {k: saved.get(k, defaults.get(k, "absent")) for k in keys}
    new = {k: current.get(k, defaults.get(k, "absent")) for k in keys}
    return {k: (old[k], new[k]) for k in keys if old[k] != new[k]}


def schema_defaults() -> dict[str, Any]:
    """The typed schema's default of every key (rectnet.config.TrainConfig), flattened."""
    schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False, throw_on_missing=False)
    return flatten(schema)


def check_resume(saved: dict[str, Any], current: dict[str, Any], allowed: list[str], checkpoint: str) -> dict:
    """The differences `allowed` lets through (to record); raises ConfigError naming any other difference."""
    held = [k for k in allowed if _matches(k, HELD_BY_CHECKPOINT)]
    if held:
        raise ConfigError(
            f"trainer.resume_allow cannot let {', '.join(held)} change: the optimizer and schedule "
            f"settings of a resumed run come from its checkpoint's state, so a new value would be recorded but not "
            f"used; start a new run (another hydra.run.dir) instead"
        )
    changed = differences(saved, current)
    refused = {k: v for k, v in changed.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        fixed = [k for k in refused if _matches(k, HELD_BY_CHECKPOINT)]
        if fixed:
            held_by = "the checkpoint's optimizer/schedule state holds it"
            way = f" ({', '.join(fixed)} cannot change within a run: {held_by})"
        else:
            way = f", or resume it on purpose with 'trainer.resume_allow=[{','.join(refused)}]'"
        raise ResumeMismatchError(
            f"{checkpoint} was written by a different run ({listed}): resuming would continue that run under this "
            f"config. Choose another hydra.run.dir for a new run{way}"
        )
    return changed
