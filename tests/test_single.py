"""The CReLU paper's "Single" protocol (scripts/reproduce/single.sh, Shang et al. 2016 §3.1): stage 1 records the
training loss at its best held-out error, stage 2 retrains on every image until the held-out loss reaches it. The
recorded loss is checked against a hand-written evaluation of stage 1's best checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, TINY

from rectnet.config import DatasetConfig, settings_from_dict
from rectnet.data import load_dataset
from rectnet.models.build import build_model

# The classifier at the init's own scale: the protocol's mechanics, not the init, are under test, and the
# held-out loss of stage 1 must be reached within a few epochs of stage 2.
# An easier task (noise 0.25) at lr 0.05 so that this 1/8-width net leaves the chance plateau within 6 epochs: at
# lr 0.01 it did only by luck of the random stream (measured: held-out loss 2.30 after 6 epochs since flips are drawn
# per sample), and the protocol needs a stage 1 that learned something for stage 2 to aim at.
ARGS = [*TINY, "trainer.epochs=6", "trainer.threads=1", "logger.tensorboard=false", "init.head_scale=1"]
ARGS += ["dataset.synthetic_noise=0.25", "optim.lr=0.05"]


def single_sh(out, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce" / "single.sh"), str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def training_loss_by_hand(run_dir) -> float:
    """Mean cross-entropy of best.pt over stage 1's training images (all folds but the held-out one),
    normalized by hand with the checkpoint's mean/std, in eval mode (no dropout, no augmentation)."""
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    settings = settings_from_dict(payload["config"])
    model = build_model(settings, settings.dataset.num_classes)
    model.load_state_dict(payload["model"])
    train = load_dataset(settings.dataset, settings.seed).train
    mean, std = payload["data"]["mean"].float().view(1, 3, 1, 1), payload["data"]["std"].float().view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.eval()((train.images.float() / 255 - mean) / std)
        return F.cross_entropy(logits, train.labels).item()


@pytest.mark.slow
def test_two_stages_stop_where_the_protocol_says_and_rerunning_retrains_nothing(tmp_path):
    out = tmp_path / "single"
    done = single_sh(out, *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    stage1 = json.loads((out / "stage1" / "results.json").read_text())
    target = stage1["train_loss_at_best"]
    assert abs(target - training_loss_by_hand(out / "stage1")) < 1e-4 * max(1.0, target)

    stage2 = json.loads((out / "stage2" / "results.json").read_text())
    config = stage2["config"]
    assert config["dataset"]["holdout_in_train"] and config["trainer"]["stop_at_val_loss"] == target
    held_out = [json.loads(line)["val/loss"] for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert stage2["stopped_at_epoch"] == len(held_out) <= 6
    assert held_out[-1] <= target and all(loss > target for loss in held_out[:-1])
    # stage 2 trains on every image: the held-out fold is part of its training split
    full = load_dataset(DatasetConfig(**{**config["dataset"], "root": "."}), 0)
    rows = {image.numpy().tobytes() for image in full.train.images}
    assert len(full.train) == 512 and len(full.val) in (102, 103)  # a fifth of 512
    assert all(image.numpy().tobytes() in rows for image in full.val.images)

    logs = {stage: (out / stage / "metrics.jsonl").read_text() for stage in ("stage1", "stage2")}
    again = single_sh(out, *ARGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {stage: (out / stage / "metrics.jsonl").read_text() for stage in logs} == logs
    assert json.loads((out / "stage1" / "results.json").read_text())["train_loss_at_best"] == target
