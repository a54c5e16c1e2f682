"""End to end: training learns, the run directory is complete, resume is exact, bad input fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, compose_train, run_cli

from rectnet.engine import job as job_module
from rectnet.engine.agreement import NonFiniteLossError
from rectnet.engine.checkpoint import CheckpointError
from rectnet.engine.fingerprint import ResumeMismatchError
from rectnet.engine.train import run

LEARNABLE = [*TINY, "trainer.epochs=8", "dataset.num_train=1024", "model.width=0.25", "dataset.synthetic_noise=0.75"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("learned")
    return run_dir, run(compose_train([*LEARNABLE, "activation=prelu"], run_dir))


def test_training_learns_the_synthetic_task(learned):
    run_dir, results = learned
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["train/loss"] < 0.8 * metrics[0]["train/loss"]
    assert results["final"]["top1_acc"] > 40.0  # chance is 10%
    assert results["final"]["count"] == 200


def test_run_directory_holds_everything(learned):
    run_dir, results = learned
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((run_dir / "results.json").read_text())
    for key in ("final", "best_top1_err", "config", "git", "versions", "hardware", "params", "train_images_per_s"):
        assert key in saved
    assert saved["config"]["activation"]["name"] == "prelu"
    assert torch.__version__.startswith(saved["versions"]["torch"])
    for key in ("top1_err", "top5_err", "top1_acc", "top5_acc"):
        assert key in saved["final"]
    assert saved["final"]["top1_err"] == pytest.approx(100 - saved["final"]["top1_acc"])
    assert set(saved["prelu_slopes_mean"]) and not (run_dir / "FAILED").exists()


def test_results_record_the_commit_the_run_was_set_up_from(tmp_path, monkeypatch):
    """A commit made while a run trains is not its code: results.json keeps the checkout's state at set-up."""
    states = iter([{"sha": "at-set-up", "dirty": False}])
    monkeypatch.setattr(job_module, "git_state", lambda: next(states, {"sha": "later", "dirty": True}))
    results = run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert results["git"] == {"sha": "at-set-up", "dirty": False}
    assert json.loads((tmp_path / "results.json").read_text())["git"] == results["git"]


def test_tensorboard_has_scalars_slope_histograms_and_hparams(learned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = learned
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "test/top1_err", "test/top5_err", "lr", "train/images_per_s"):
        assert tag in tags["scalars"] and len(events.Scalars(tag)) == 8
    assert any(tag.startswith("prelu_slopes/") for tag in tags["histograms"])
    # add_hparams writes the hparams plugin's session summary (what TensorBoard's HParams tab reads)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))


def test_prelu_slopes_have_one_naming_in_tensorboard_results_and_the_slopes_analysis(learned):
    """ConvPool-CNN-C's PReLUs follow conv1 .. conv8 (conv9 scores the classes, with no activation after it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rectnet.analysis.slopes import slope_records
    from rectnet.analysis.trained import load_model

    run_dir, results = learned
    expected = {f"conv{i}" for i in range(1, 9)}
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0}).Reload()
    assert set(events.Tags()["histograms"]) == {f"prelu_slopes/{name}" for name in expected}
    assert set(results["prelu_slopes_mean"]) == expected
    assert {record.layer for record in slope_records(load_model(run_dir))} == expected


def test_checkpoint_loads_weights_only_and_holds_the_state(learned):
    run_dir, _ = learned
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "schedule", "epoch", "rng", "config", "scaler", "step"):
        assert key in state
    assert state["epoch"] == 8 and any(k.endswith("weight") for k in state["model"])


def test_prelu_slopes_have_no_weight_decay(learned):
    run_dir, _ = learned
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0005, 0.0]
    n_slopes = sum(1 for k in state["model"] if ".weight" in k and state["model"][k].dim() == 1)
    assert len(groups[1]["params"]) == n_slopes  # biases keep decay by default: only slopes are exempt


def test_resume_continues_bit_for_bit(tmp_path):
    with_dropout = [*TINY, "model.dropout=0.3", "trainer.epochs=3"]
    straight = tmp_path / "straight"
    run(compose_train(with_dropout, straight))
    interrupted = tmp_path / "interrupted"
    run(compose_train([*with_dropout, "trainer.epochs=2"], interrupted))
    run(compose_train([*with_dropout, "trainer.resume=auto"], interrupted))
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["epoch"] for m in _metrics(interrupted)] == [1, 2, 3]


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    results = run(compose_train([*TINY, "trainer.epochs=1", "trainer.resume=auto"], tmp_path))
    assert results["epochs"] == 1


def test_resume_from_missing_or_foreign_files_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run(compose_train([*TINY, f"trainer.resume={tmp_path / 'nope.pt'}"], tmp_path / "a"))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        run(compose_train([*TINY, f"trainer.resume={text}"], tmp_path / "b"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a rectnet checkpoint"):
        run(compose_train([*TINY, f"trainer.resume={foreign}"], tmp_path / "c"))


def test_resume_with_another_model_is_refused(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    with pytest.raises(ResumeMismatchError, match="activation.name: 'relu' -> 'crelu'"):
        run(compose_train([*TINY, "trainer.epochs=2", "activation=crelu", "trainer.resume=auto"], tmp_path))
    # allowed on purpose, the weights still cannot be loaded into the other network: refused by the loader
    with pytest.raises(CheckpointError, match="does not fit"):
        run(
            compose_train(
                [*TINY, "trainer.epochs=2", "activation=crelu", "trainer.resume_allow=[activation.name]"], tmp_path
            )
        )


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    results = run(compose_train([*TINY, "trainer.epochs=3", "trainer.resume=auto"], tmp_path))
    assert results["epochs"] == 3
    assert [m["epoch"] for m in _metrics(tmp_path)] == [1, 2, 3]  # epoch 2 was redone from prev.pt (epoch 1)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real = F.cross_entropy

    def poisoned(logits, labels, reduction="mean"):
        loss = real(logits, labels, reduction=reduction)
        return loss * float("nan") if torch.is_grad_enabled() and reduction == "mean" else loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1: .*last.pt still holds the last good state"):
        run(compose_train([*TINY, "trainer.epochs=2", "trainer.resume=auto"], tmp_path))
    assert last.read_bytes() == before
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1: .* no checkpoint had been written yet"):
        run(compose_train([*TINY, "trainer.epochs=2"], tmp_path / "fresh"))
    assert "NonFiniteLossError" in (tmp_path / "FAILED").read_text()
    assert [m["epoch"] for m in _metrics(tmp_path)] == [1]


@pytest.mark.parametrize(("cpu_flags", "expected"), [([], "fp32"), (["avx512_bf16"], "bf16")])
def test_results_record_the_precision_auto_chose(tmp_path, monkeypatch, cpu_flags, expected):
    # trainer.precision=auto: bf16 autocast on a CPU with native bf16, else fp32 (configs/trainer/default.yaml).
    # A page that quotes the config alone would say "auto"; results.json must say what the numbers came from.
    from rectnet.engine import runtime

    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: cpu_flags)
    overrides = [o for o in TINY if not o.startswith("trainer.precision")]
    results = run(compose_train([*overrides, "trainer.precision=auto", "trainer.epochs=1"], tmp_path))
    assert results["precision"] == expected
    assert json.loads((tmp_path / "results.json").read_text())["precision"] == expected


def test_fp16_on_cpu_fails_clearly(tmp_path):
    from rectnet.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("fp16 is supported here")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run(compose_train([*TINY, "trainer.precision=fp16"], tmp_path))


@pytest.mark.slow
def test_cli_run_writes_hydra_config_and_prints_where(tmp_path):
    proc = run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".hydra" / "config.yaml").is_file() and (tmp_path / "results.json").is_file()
    assert "top-1 error" in proc.stderr + proc.stdout and str(tmp_path) in proc.stderr + proc.stdout


@pytest.mark.slow
def test_a_prelu_run_prints_no_cuda_home_note(tmp_path, monkeypatch):
    """The fused PReLU backward compiles CPU code; TorchInductor's toolchain module notes "No CUDA runtime is
    found, using CUDA_HOME=..." when it is imported by a CUDA build of PyTorch without a GPU that finds a CUDA
    toolkit. $CUDA_HOME naming a folder makes it find one on any machine; the run must not say it."""
    from rectnet.layers import fused

    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    probe = subprocess.run([sys.executable, "-c", "import torch.utils.cpp_extension"], capture_output=True, text=True)
    if "CUDA_HOME" not in probe.stderr:
        pytest.skip("this PyTorch build has no CUDA, or a GPU is present: the toolchain import has nothing to note")
    if not fused.cpu_compiler_available():
        pytest.skip("no C++ compiler: the fused backward is not compiled here")
    proc = run_cli([*TINY, "activation=prelu", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "CUDA_HOME" not in output and "using F.prelu" not in output  # quiet, and the fused kernel ran


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["optim.lr=abc"], "optim.lr"),
        (["optim.lr=-1"], "optim.lr must be > 0"),
        (["trainer.epochs=-1"], "trainer.epochs must be >= 1"),
        (["activation=swish"], "Available options"),
        (["optim.learning_rate=1"], "learning_rate"),
        (["dataset=cifar10", "dataset.root=/nonexistent/rectnet"], "/nonexistent/rectnet/cifar-10-batches-py"),
        (["trainer.resume=/nonexistent/last.pt"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_a_clear_message(tmp_path, args, message):
    proc = run_cli([*TINY, *args, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_multirun_grid_makes_one_directory_per_job(tmp_path):
    proc = run_cli(
        [
            "-m",
            *TINY,
            "trainer.epochs=1",
            "activation=relu,prelu,crelu,avr",
            "init=kaiming,xavier",
            f"hydra.sweep.dir={tmp_path}",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/results.json"))]
    grid = {(r["hparams"]["activation"], r["hparams"]["init"]) for r in results}
    assert len(results) == 8 and grid == {
        (a, i) for a in ("relu", "prelu", "crelu", "avr") for i in ("kaiming", "xavier")
    }


def test_compile_without_a_compiler_fails_clearly(tmp_path, monkeypatch):
    from rectnet.config import ConfigError
    from rectnet.layers import native

    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        run(compose_train([*TINY, "trainer.compile=true", "trainer.device=cpu"], tmp_path))


def test_cuda_device_without_cuda_fails_clearly(tmp_path):
    from rectnet.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run(compose_train([*TINY, "trainer.device=cuda"], tmp_path))


def test_k_fold_holds_out_one_fold_and_saves_test_logits(tmp_path):
    results = run(compose_train([*TINY, "trainer.epochs=1", "dataset.num_folds=4", "dataset.fold=1"], tmp_path))
    record = _metrics(tmp_path)[0]
    assert record["val/count"] == 128 and record["test/count"] == 200  # 512 / 4 folds held out
    assert results["selected_on"] == "val" and results["final_val"]["count"] == 128
    logits = torch.load(tmp_path / "test_logits.pt", weights_only=True)
    assert logits["logits"].shape == (200, 10) and logits["labels"].shape == (200,)
    top1 = (logits["logits"].argmax(1) == logits["labels"]).float().mean().item() * 100
    assert top1 == pytest.approx(results["final"]["top1_acc"])


def test_a_run_a_stopping_rule_ends_early_saves_the_test_logits_of_its_last_epoch(tmp_path):
    # "Single" stage 2 stops once the held-out loss is at or below the target: a target above chance stops it
    # after the first of three epochs, and that epoch's model is the final one the ensembles read.
    stop = ["trainer.epochs=3", "dataset.num_folds=4", "dataset.fold=1", "trainer.stop_at_val_loss=100"]
    results = run(compose_train([*TINY, *stop], tmp_path))
    assert results["stopped_at_epoch"] == 1 and len(_metrics(tmp_path)) == 1
    logits = torch.load(tmp_path / "test_logits.pt", weights_only=True)
    assert logits["logits"].shape == (200, 10)
    top1 = (logits["logits"].argmax(1) == logits["labels"]).float().mean().item() * 100
    assert top1 == pytest.approx(results["final"]["top1_acc"])


def test_folds_partition_the_training_split():
    from rectnet.data.split import Split

    split = Split(torch.zeros(103, 1, 1, 1, dtype=torch.uint8), torch.arange(103))
    held = [split.folds(10, k)[1].labels for k in range(10)]
    assert sorted(torch.cat(held).tolist()) == list(range(103))  # every image in exactly one fold
    kept, out = split.folds(10, 3)
    assert set(kept.labels.tolist()).isdisjoint(out.labels.tolist()) and len(kept) + len(out) == 103


FAULTS = """
import resource, sys, torch
from rectnet.engine.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_one_allocation():  # a 64 MiB buffer written and freed, as every training step does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64 * 2**20 // 4)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, [faults_of_one_allocation() for _ in range(4)][-1])  # steady state, as step after step
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc")
def test_kept_memory_is_reused_without_page_faults():
    def second_allocation(mode: str) -> tuple[str, int]:
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
        applied, faults = done.stdout.split()
        return applied, int(faults)

    applied, kept = second_allocation("keep")
    _, default = second_allocation("default")
    assert applied == "True"
    # glibc's default maps 64 MiB afresh every time: a fault per page (16,384 of 4 KiB; 32 if the kernel backs
    # it with 2 MiB pages); kept memory is reused once the heap holds a free block that size: none
    assert default >= 32 and kept * 100 <= default


def _scalar_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return [event.step for event in events.Scalars(tag)]


def _stop_at_the_sync_number(monkeypatch, calls: int) -> None:
    """A stop signal (SIGTERM) arriving just before the `calls`-th agreement of the run (one per log interval)."""
    import signal

    from rectnet.engine.preemption import StopSignals

    original, seen = StopSignals.agreement, []

    def agreement(self, ranks, first_bad):
        seen.append(1)
        if len(seen) == calls:
            self.received = signal.SIGTERM
        return original(self, ranks, first_bad)

    monkeypatch.setattr(StopSignals, "agreement", agreement)


def test_tensorboard_has_every_log_interval_on_one_step_axis_and_a_resume_repeats_none(tmp_path, monkeypatch):
    """512 images in batches of 64: 8 steps an epoch; a log interval of 2 reads the device at the run's first
    step and every second step. Interrupted in epoch 2, resumed, then resumed again from the mid-epoch checkpoint
    after the run had finished (an abandoned attempt's points must go): the same points, once each."""
    args = [*TINY, "trainer.log_every_steps=2"]
    run(compose_train(args, tmp_path / "straight"))
    expected = [1, 2, 4, 6, 8, 10, 12, 14, 16]
    for tag in ("step/train_loss", "step/lr", "step/images_per_s"):
        assert _scalar_steps(tmp_path / "straight", tag) == expected, tag
    for tag in ("train/loss", "test/top1_err", "lr", "epoch"):
        assert _scalar_steps(tmp_path / "straight", tag) == [8, 16], tag

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _stop_at_the_sync_number(patch, 7)  # syncs at steps 1, 2, 4, 6, 8, 10, 12: stops at 12 (epoch 2, step 4)
        with pytest.raises(SystemExit):
            run(compose_train(args, cut))
    last = cut / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 4
    mid_epoch = last.read_bytes()
    run(compose_train(args, cut))
    assert _scalar_steps(cut, "step/train_loss") == expected
    last.write_bytes(mid_epoch)  # the finished run's later points now belong to an abandoned attempt
    run(compose_train(args, cut))
    assert _scalar_steps(cut, "step/train_loss") == expected
    assert _scalar_steps(cut, "test/top1_err") == [8, 16]
