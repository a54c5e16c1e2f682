"""The loop's state round-trips through checkpoints; a checkpoint of another format is refused; the "Single"
protocol's rules record and stop as the protocol says."""

from __future__ import annotations

import json
import math

import pytest
from helpers import TINY, compose_train

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
        attempts=[{"epoch": 0, "step": 0, "git": {"sha": "a"}}, {"epoch": 3, "step": 5, "git": {"sha": "b"}}],
    )
    other_rank = Counts(9.0, 9, 9, 9).as_tensor()
    saved = state.to_dict([other_rank, state.partial.as_tensor()])
    assert State.from_dict(saved, rank=1, world_size=2) == state


def test_a_checkpoint_from_before_the_attempts_record_stands_in_one_unrecorded_entry():
    saved = State(epoch=2, resumes=[{"epoch": 1}]).to_dict([Counts().as_tensor()])
    del saved["attempts"]  # as rectnet wrote it before State.attempts
    assert State.from_dict(saved, rank=0, world_size=1).attempts == [{"epoch": 0, "step": 0, "recorded": False}]


def test_on_another_number_of_ranks_rank_0_carries_the_epochs_counts_so_far():
    """The interrupted epoch's training loss and errors count every sample trained before the resume once."""
    saved = State(epoch=1, step=4, position=256).to_dict(
        [Counts(1.5, 2, 3, 4).as_tensor(), Counts(9.0, 9, 9, 9).as_tensor()]
    )
    on_three = [State.from_dict(saved, rank=r, world_size=3) for r in range(3)]
    assert on_three[0].partial == Counts(10.5, 11, 12, 13)
    assert on_three[1].partial == on_three[2].partial == Counts()
    assert all((s.epoch, s.step, s.position) == (1, 4, 256) for s in on_three)


def test_a_run_a_stopping_rule_ended_keeps_its_records_and_its_stop_when_resumed(tmp_path):
    """A "Single" stage 2 whose target is above chance stops after epoch 1; resumed with more epochs, it trains
    nothing more and its results keep what the rules recorded."""
    stage = [*TINY, "dataset.num_folds=5", "trainer.record_train_loss_at_best=true", "logger.tensorboard=false"]
    stage += ["trainer.stop_at_val_loss=100"]
    first = run(compose_train([*stage, "trainer.epochs=3"], tmp_path))
    assert first["stopped_at_epoch"] == 1
    results = run(compose_train([*stage, "trainer.epochs=4", "trainer.resume=auto"], tmp_path))
    assert [m["epoch"] for m in metrics(tmp_path)] == [1]  # a stopped run trains nothing more
    assert (results["epochs"], results["stopped_at_epoch"]) == (1, 1)
    assert results["train_loss_at_best"] == first["train_loss_at_best"]


@pytest.mark.parametrize("written", [2, ckpt.CHECKPOINT_FORMAT + 1], ids=["earlier", "later"])
def test_a_checkpoint_of_another_format_is_refused_in_one_line(tmp_path, written):
    """Formats before 3 existed only on development machines (rectnet/engine/checkpoint.py): no upgrade."""
    path = tmp_path / "other.pt"
    keys = dict.fromkeys(ckpt.REQUIRED_KEYS, 0) | {"model": {}, "optimizer": {}}
    ckpt.atomic_save(keys | {"format": written}, path)
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load(path)
    assert str(refused.value) == f"{path} has checkpoint format {written}; this rectnet reads format 3 only"


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
