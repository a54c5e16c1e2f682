"""Training streams and evaluation sets are built by separate factories: evaluation alone (eval.py) prepares
no training stream, and with a checkpoint's statistics never reads the training tree. Expected values: the
split sizes the tests write, and the statistics the training stream computes from the same tree."""

from __future__ import annotations

import shutil

import torch
from helpers import TINY, compose_train, make_image_folder

from rectnet.config import to_settings
from rectnet.data.sources import SourceContext, make_evaluation, make_source

CPU = SourceContext(torch.device("cpu"))


def test_tensor_evaluation_holds_the_test_split_and_the_training_streams_statistics(tmp_path):
    settings = to_settings(compose_train(TINY, tmp_path))
    source = make_source(settings, CPU)
    evaluation = make_evaluation(settings, CPU)
    assert not hasattr(evaluation, "train_epoch")
    assert evaluation.in_chans == source.in_chans == 3
    assert set(evaluation.eval_sets) == {"test"} and len(evaluation.eval_sets["test"]) == 200
    assert all(torch.equal(evaluation.state[k], source.state[k]) for k in ("mean", "std"))


def test_image_folder_evaluation_with_saved_statistics_never_reads_the_training_tree(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=2, train=4, val=3)
    overrides = ["dataset=imagenet", "dataset.num_classes=2", f"dataset.root={root}", "dataset.workers=0"]
    overrides += ["trainer.batch_size=4"]
    settings = to_settings(compose_train(overrides, tmp_path))
    source = make_source(settings, CPU)  # statistics from the training tree, as train.py computes them
    assert source.num_train == 8 and len(source.eval_sets["test"]) == 6

    shutil.rmtree(root / "train")
    evaluation = make_evaluation(settings, CPU, source.state)
    assert not hasattr(evaluation, "train_epoch")
    assert len(evaluation.eval_sets["test"]) == 6 and evaluation.state is source.state
    views, labels, _ = next(iter(evaluation.eval_sets["test"].batches()))
    assert views[0].shape[1:] == (3, settings.dataset.image_size, settings.dataset.image_size)
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
