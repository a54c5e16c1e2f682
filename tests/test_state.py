"""The loop's state round-trips through checkpoints; checkpoints of the previous layout (format 1, written before
the stopping rules kept their records apart and before modules had names) still resume exactly; the "Single"
protocol's rules record and stop as the protocol says. Old payloads are written here by hand, key by key, as
format 1 laid them out."""

from __future__ import annotations

import json
import math

import pytest
from helpers import TINY, as_format_1, compose_train

from rectnet.config import ConfigError, TrainerConfig
from rectnet.engine import checkpoint as ckpt
from rectnet.engine.metrics import Counts
from rectnet.engine.state import State
from rectnet.engine.stopping import EpochEnd, RecordTrainLossAtBest, StopAtValLoss, ask, make_rules
from rectnet.engine.train import run


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_state_round_trips_through_its_dict():
    state = State(
        epoch=3,
        step=5,
        position=320,
        partial=Counts(1.5, 2, 3, 4, 1),
        best_top1_err=12.5,
        best_epoch=2,
        records={"train_loss_at_best": 0.25},
        resumes=[{"checkpoint": "last.pt", "world_size": [1, 2]}],
    )
    other_rank = Counts(9.0, 9, 9, 9).as_tensor()
    saved = state.to_dict([other_rank, state.partial.as_tensor()])
    assert State.from_dict(saved, rank=1, world_size=2) == state


def test_on_another_number_of_ranks_rank_0_carries_the_epochs_counts_so_far():
    """The interrupted epoch's training loss and errors count every sample trained before the resume once."""
    saved = State(epoch=1, step=4, position=256).to_dict(
        [Counts(1.5, 2, 3, 4).as_tensor(), Counts(9.0, 9, 9, 9).as_tensor()]
    )
    on_three = [State.from_dict(saved, rank=r, world_size=3) for r in range(3)]
    assert on_three[0].partial == Counts(10.5, 11, 12, 13)
    assert on_three[1].partial == on_three[2].partial == Counts()
    assert all((s.epoch, s.step, s.position) == (1, 4, 256) for s in on_three)


def test_a_format_1_single_protocol_checkpoint_keeps_its_records_and_its_stop(tmp_path):
    stage = [*TINY, "dataset.num_folds=5", "trainer.record_train_loss_at_best=true", "logger.tensorboard=false"]
    run(compose_train([*stage, "trainer.epochs=2"], tmp_path))
    as_format_1(tmp_path / "checkpoints" / "last.pt", train_loss_at_best=0.5, stopped_at=2)
    upgraded = ckpt.load(tmp_path / "checkpoints" / "last.pt")
    assert (upgraded["format"], upgraded["records"], upgraded["stopped_at"]) == (3, {"train_loss_at_best": 0.5}, 2)
    results = run(compose_train([*stage, "trainer.epochs=4", "trainer.resume=auto"], tmp_path))
    assert [m["epoch"] for m in metrics(tmp_path)] == [1, 2]  # a stopped run trains nothing more
    assert (results["epochs"], results["stopped_at_epoch"], results["train_loss_at_best"]) == (2, 2, 0.5)


def test_a_checkpoint_of_a_later_format_is_refused(tmp_path):
    path = tmp_path / "later.pt"
    keys = dict.fromkeys(ckpt.REQUIRED_KEYS, 0) | {"model": {}, "optimizer": {}}
    ckpt.atomic_save(keys | {"format": ckpt.CHECKPOINT_FORMAT + 1}, path)
    with pytest.raises(ckpt.CheckpointError, match=f"format {ckpt.CHECKPOINT_FORMAT + 1}; this rectnet reads"):
        ckpt.load(path)


def test_record_train_loss_at_best_records_only_at_a_new_best():
    losses = iter([0.9, 0.4])
    rule = RecordTrainLossAtBest(lambda: next(losses))
    records: dict[str, float] = {}
    for epoch, best in enumerate([True, False, True], 1):
        assert rule.after_epoch(EpochEnd(epoch, best, {"loss": 1.0}), records) is None
    assert records == {"train_loss_at_best": 0.4}


def test_stop_at_val_loss_stops_at_or_below_the_target():
    rule = StopAtValLoss(0.5)
    assert rule.after_epoch(EpochEnd(1, True, {"loss": 0.5001}), {}) is None
    assert "0.5000 <= trainer.stop_at_val_loss" in rule.after_epoch(EpochEnd(2, False, {"loss": 0.5}), {})
    # every rule sees the epoch even when an earlier one stops: the recorder still records
    records: dict[str, float] = {}
    both = [rule, RecordTrainLossAtBest(lambda: math.pi)]
    assert ask(both, EpochEnd(3, True, {"loss": 0.1}), records) and records == {"train_loss_at_best": math.pi}


def test_rules_refuse_a_missing_evaluation_set():
    with pytest.raises(ConfigError, match="stop_at_val_loss needs a held-out fold"):
        make_rules(TrainerConfig(stop_at_val_loss=0.5), {"test": None}, lambda: 0.0)
    with pytest.raises(ConfigError, match="record_train_loss_at_best is for tensor datasets"):
        make_rules(TrainerConfig(record_train_loss_at_best=True), {"test": None}, lambda: 0.0)
    assert make_rules(TrainerConfig(), {"test": None}, lambda: 0.0) == []
