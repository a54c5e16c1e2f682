"""The stability probe against known Hessians, the default recipe's first steps, and what the user is told."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import nn

from rectnet.analysis.sharpness import loss_hvp, lr_limit, main, top_eigen
from rectnet.config import ConfigError, OptimConfig, to_settings
from rectnet.engine.agreement import NonFiniteLossError
from rectnet.engine.run_log import Progress
from rectnet.engine.train import run
from rectnet.layers.facts import weight_layers
from rectnet.models.build import build_model
from tests.helpers import TINY, compose_train


def _symmetric(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed))
    )
    return q @ torch.diag(torch.tensor(eigenvalues)) @ q.T


def _matrix_hvp(a: torch.Tensor):
    return lambda v: [a @ v[0]]


def test_lanczos_finds_the_top_eigenvalue_of_a_quadratic():
    a = _symmetric([50.0, 20.0, 3.0, 1.0, -4.0, 0.5])
    top = top_eigen(_matrix_hvp(a), [torch.zeros(6)], iters=30, tol=1e-9)
    assert top.converged and top.value == pytest.approx(50.0, rel=1e-6)
    assert torch.allclose(a @ top.vector[0], 50.0 * top.vector[0], atol=1e-3)


def test_lanczos_returns_the_largest_not_the_most_negative_eigenvalue():
    # a saddle: the eigenvalue of largest magnitude is negative; the step size limit is set by the top one
    a = _symmetric([-90.0, 30.0, 10.0, -5.0, 2.0])
    top = top_eigen(_matrix_hvp(a), [torch.zeros(5)], iters=30, tol=1e-10)
    assert top.value == pytest.approx(30.0, rel=1e-4)


def test_lanczos_handles_plus_minus_pairs_and_large_operators():
    # a zero classifier makes the Hessian's top eigenvalues come in +/- pairs, where power iteration stalls at 0
    spectrum = [12.0, -12.0, 7.0, -7.0] + torch.linspace(-3.0, 3.0, 296).tolist()
    a = _symmetric(spectrum, seed=3)
    top = top_eigen(_matrix_hvp(a), [torch.zeros(300)], iters=40, tol=1e-8)
    assert top.value == pytest.approx(12.0, rel=1e-4)
    assert torch.allclose(a @ top.vector[0], 12.0 * top.vector[0], atol=1e-2)


def test_softmax_regression_hessian_at_zero_matches_its_closed_form():
    # At W = 0 the class probabilities are uniform, p = 1/C, and the Hessian of the mean cross-entropy of a
    # linear model z = W x is (I/C - 11ᵀ/C²) ⊗ XᵀX/N: top eigenvalue λ_max(XᵀX/N) / C (the other factor's
    # eigenvalues are 1/C and 0). Weight decay adds wd to every eigenvalue.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=gen) * torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0])
    labels = torch.randint(4, (64,), generator=gen)
    model = nn.Linear(5, 4, bias=False)
    nn.init.zeros_(model.weight)
    expected = torch.linalg.eigvalsh(x.T @ x / 64).max().item() / 4
    for wd in (0.0, 0.01):
        hvp, params, loss = loss_hvp(model, [(x, labels)], OptimConfig(weight_decay=wd))
        top = top_eigen(hvp, [p.detach() for p in params], iters=30, tol=1e-9)
        assert top.value == pytest.approx(expected + wd, rel=1e-4)
        assert loss == pytest.approx(math.log(4), rel=1e-6)


def test_two_batches_average_their_hessians():
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(32, 3, generator=gen) * s for s in (1.0, 4.0)]
    labels = torch.zeros(32, dtype=torch.long)
    model = nn.Linear(3, 2, bias=False)
    nn.init.zeros_(model.weight)
    expected = torch.linalg.eigvalsh(sum(x.T @ x / 32 for x in xs) / 2).max().item() / 2
    hvp, params, _ = loss_hvp(model, [(x, labels) for x in xs], OptimConfig(weight_decay=0.0))
    assert top_eigen(hvp, [p.detach() for p in params], 30, 1e-9).value == pytest.approx(expected, rel=1e-4)


def _heavy_ball_on_quadratic(curvature: float, lr: float, momentum: float, nesterov: bool, steps: int = 400) -> float:
    """|x| after `steps` of torch's SGD on f(x) = curvature x² / 2 from x = 1."""
    x = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        optimizer.zero_grad()
        (curvature * x**2 / 2).sum().backward()
        optimizer.step()
    return abs(x.item())


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_stable_learning_rate_is_the_edge_for_torchs_sgd(nesterov):
    cfg = OptimConfig(lr=0.1, momentum=0.9, nesterov=nesterov)
    limit = lr_limit(100.0, cfg)
    assert _heavy_ball_on_quadratic(100.0, 0.97 * limit, 0.9, nesterov) < 1e-3
    assert not _heavy_ball_on_quadratic(100.0, 1.03 * limit, 0.9, nesterov) < 1e3  # grown (or overflowed)
    assert lr_limit(0.0, cfg) == math.inf


def test_probe_cli_prints_a_report_and_one_json_line(capsys):
    main(["--iters", "8", *TINY, "activation=prelu", "trainer.batch_size=32"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["lambda_max"] > 0 and result["lr"] == 0.01
    assert result["lr_max_stable"] == pytest.approx(2 * 1.9 / result["lambda_max"])
    assert result["stable"] == (result["lr"] < result["lr_max_stable"])
    assert sum(row["share"] for row in result["layers"]) == pytest.approx(1.0, abs=0.02)
    assert result["initial_loss"] == pytest.approx(math.log(10), rel=1e-5)  # zero classifier at init
    assert "largest stable lr" in lines[-2]


def test_a_warming_up_recipe_is_checked_at_its_first_steps_lr(capsys):
    main(["--iters", "4", *TINY, "trainer.batch_size=32", "schedule.warmup_steps=50", "schedule.warmup_factor=0.25"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lr"] == pytest.approx(0.0025) and result["peak_lr"] == 0.01
    assert result["ratio"] == pytest.approx(0.0025 / result["lr_max_stable"])


def test_a_checkpoint_is_probed_at_its_weights_and_the_lr_it_reached(tmp_path, capsys):
    # 16 of 40 warmup steps (512 images, batch 32, one epoch): LinearLR's lr is lr * (f + (1 - f) * 16 / 40).
    train = [*TINY, "trainer.batch_size=32", "schedule.warmup_steps=40", "schedule.warmup_factor=0.1"]
    run(compose_train([*train, "trainer.epochs=1"], tmp_path))
    capsys.readouterr()
    main(["--iters", "4", "--checkpoint", str(tmp_path / "checkpoints" / "last.pt"), *train])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lr"] == pytest.approx(0.01 * (0.1 + 0.9 * 16 / 40))
    assert result["initial_loss"] != pytest.approx(math.log(10), rel=1e-3)  # the classifier is no longer zero
    with pytest.raises(SystemExit, match="does not fit the configured model"):
        main(["--checkpoint", str(tmp_path / "checkpoints" / "last.pt"), *train, "model.width=0.25"])


def _training_losses(overrides: list[str], run_dir) -> list[float]:
    losses = []
    original = torch.nn.functional.cross_entropy

    def recording(*args, **kwargs):
        loss = original(*args, **kwargs)
        if torch.is_grad_enabled():
            losses.append(loss.item())
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "cross_entropy", recording)
        run(compose_train(overrides, run_dir))
    return losses


AVR_SLOW_START = pytest.mark.xfail(
    strict=True,
    reason="on this 16x16 synthetic task at 1/8 width AVR stays at chance for 150 steps, initial bias or not; "
    "on real CIFAR-10 its initial bias removes the plateau (test_avr_leaves_chance_from_the_first_steps_...)",
)

# Measured when flips and shifts became one draw per place in the epoch's order (a new random stream, as another
# seed would be): CReLU at lr 0.01 on this task diverges at step 84-104 in seeds 0-3, and at d5613f4's stream in 2
# of seeds 0-3 as well. Lucky before, not changed now: the edge of stability that issue 20 (item 5) studies.
# Not strict: on a CPU whose kernels round differently it may hold; any other failure still fails the test.
CRELU_EDGE = pytest.mark.xfail(
    strict=False,
    raises=NonFiniteLossError,
    reason="CReLU at lr 0.01 on this 16x16 synthetic task at 1/8 width diverges near step 100 in most seeds",
)


@pytest.mark.parametrize(
    "act",
    [
        "relu",
        "prelu",
        "prelu_shared",
        pytest.param("crelu", marks=CRELU_EDGE),
        pytest.param("avr", marks=AVR_SLOW_START),
        "leaky_relu",
    ],
)
def test_the_default_recipe_descends_at_its_learning_rate(tmp_path, act):
    # ConvPool-CNN-C with the default init, lr 0.01 and momentum 0.9, as `python train.py activation=X` runs it;
    # an eighth of the width, 16x16 synthetic images and no dropout keep it to seconds (the default dropout,
    # 0.2/0.5/0.5, slows the first few hundred steps: docs/recipes.md shows the real-data runs with it).
    overrides = [
        "dataset=synthetic",
        "dataset.image_size=16",
        "dataset.num_train=4800",
        "dataset.num_test=100",
        "dataset.synthetic_noise=0.5",
        "model.width=0.125",
        "model.dropout=0",
        f"activation={act}",
        "trainer.batch_size=32",
        "trainer.epochs=1",
        "trainer.progress=none",
        "logger.tensorboard=false",
    ]
    losses = _training_losses(overrides, tmp_path)
    assert len(losses) == 150 and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(10), rel=1e-4)  # the classifier starts at zero
    assert sum(losses[-20:]) / 20 < 0.85 * math.log(10)


def test_avr_brings_its_own_dropout_rate_and_an_override_wins():
    # Springenberg's 0.2 / 0.5 keeps AVR at chance (configs/activation/avr.yaml): AVR states activation.dropout, the
    # rectnet model files read it as their model.dropout, and a model.dropout on the command line replaces it.
    def rates(*overrides: str) -> list[float]:
        settings = to_settings(compose_train(list(overrides)))
        model = build_model(settings, 10, 3)
        return sorted({m.p for m in model.modules() if isinstance(m, nn.Dropout)})

    assert rates("activation=relu") == [0.2, 0.5]
    assert rates("activation=avr") == [0.1]
    assert rates("experiment=convpool_avr") == [0.1]
    assert rates("activation=avr", "model.dropout=0.3") == [0.3]


@pytest.mark.slow
def test_avr_leaves_chance_from_the_first_steps_on_real_cifar10(shared_cifar10, tmp_path):
    # The default command with AVR (its dropout 0.1 and initial bias 0.5) at quarter width, 100 steps of 128 real
    # images: the loss falls within the first 100 steps; with He et al.'s zero biases it is still at chance
    # (2.303), the plateau the bias removes (docs/recipes.md, "AVR's slow start").
    common = [
        f"dataset.root={shared_cifar10}",
        "dataset.num_train=12800",
        "dataset.num_test=100",
        "model.width=0.25",
        "activation=avr",
        "trainer.epochs=1",
        "trainer.progress=none",
        "logger.tensorboard=false",
    ]
    biased = _training_losses(common, tmp_path / "biased")
    zero = _training_losses([*common, "activation.initial_bias=0"], tmp_path / "zero")
    assert len(biased) == len(zero) == 100 and all(math.isfinite(v) for v in biased + zero)
    late = {name: sum(losses[-25:]) / 25 for name, losses in (("biased", biased), ("zero", zero))}
    assert late["biased"] < 2.2 < 2.28 < late["zero"], late


def test_avr_brings_its_initial_bias_and_an_override_wins():
    def biases(*overrides: str) -> set[float]:
        model = build_model(to_settings(compose_train(list(overrides))), 10, 3)
        return {v for layer in weight_layers(model)[:-1] for v in layer.module.bias.tolist()}

    assert biases("activation=relu") == {0.0}
    assert biases("experiment=convpool_avr") == {0.5} == biases("activation=avr", "init=xavier")
    assert biases("activation=avr", "activation.initial_bias=0") == {0.0}


def test_unscaled_pixels_without_small_fc_stds_are_refused():
    for model in ("allcnn_b", "prelu_small14"):
        with pytest.raises(ConfigError, match=r"dataset.per_pixel_mean=true.*model.init_std"):
            to_settings(compose_train(["dataset=imagenet", "dataset.per_pixel_mean=true", f"model={model}"]))
    paper = "+model.init_std={12: 0.01, 13: 0.01, 14: 0.001}"
    settings = to_settings(
        compose_train(["dataset=imagenet", "dataset.per_pixel_mean=true", "model=prelu_small14", paper])
    )
    assert settings.model.init_std == {12: 0.01, 13: 0.01, 14: 0.001}


def test_progress_shows_the_recent_loss_beside_the_epoch_mean(caplog):
    progress = Progress("lines", every=5, window=3)
    with caplog.at_level(logging.INFO, logger="rectnet"):
        for step, loss in enumerate([9.0, 9.0, 1.0, 2.0, 3.0], start=1):
            progress.update(1, 1, step, 5, loss, 24.0 / step, 100.0, 1.0)
    assert "loss 2.0000 (last 3 steps; epoch mean 4.8000)" in caplog.text


def test_a_first_loss_far_above_chance_names_the_probe(tmp_path, caplog):
    overrides = [*TINY, "init.head_scale=1", "trainer.epochs=1", "dataset.num_train=64", "logger.tensorboard=false"]
    with caplog.at_level(logging.WARNING, logger="rectnet"):
        run(compose_train([*overrides, "dataset.synthetic_noise=0", "+model.init_std={9: 30.0}"], tmp_path / "a"))
    assert "far above chance (ln 10 = 2.3)" in caplog.text and "rectnet.analysis.sharpness" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rectnet"):
        run(compose_train(overrides, tmp_path / "b"))
    assert "far above chance" not in caplog.text


def test_recipe_check_writes_a_table_row_per_recipe(tmp_path, capsys):
    from rectnet.analysis.recipe_check import main as recipe_check

    out = tmp_path / "recipes.md"
    code = recipe_check(
        ["--cifar", str(tmp_path), "--imagenet", str(tmp_path), "--only", "quickstart", "--steps", "4", "--iters", "4"]
        + ["--out", str(out), "trainer.batch_size=16", "dataset.num_train=64", "dataset.num_test=16", "optim.lr=0.01"]
    )
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["recipe"] for r in rows] == ["quickstart"] and rows[0]["steps"] == 4
    assert rows[0]["first_loss"] == pytest.approx(math.log(10), rel=1e-5) and rows[0]["stable"]
    assert code == (0 if rows[0]["passed"] else 1)
    table = out.read_text()
    assert "| quickstart | synthetic (10) | convpool_cnn_c, 0.25 |" in table and "recipes pass" in table
    assert rows[0]["lr"] == rows[0]["peak_lr"] == 0.01


def test_recipe_check_probes_a_warming_up_recipe_at_its_first_step(tmp_path, capsys):
    from rectnet.analysis.recipe_check import main as recipe_check

    out = tmp_path / "recipes.md"
    recipe_check(
        ["--cifar", str(tmp_path), "--imagenet", str(tmp_path), "--only", "quickstart", "--steps", "2", "--iters", "4"]
        + ["--out", str(out), "trainer.batch_size=16", "dataset.num_train=64", "dataset.num_test=16", "optim.lr=0.01"]
        + ["schedule.warmup_steps=10", "schedule.warmup_factor=0.2"]
    )
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["lr"] == pytest.approx(0.002) and row["peak_lr"] == 0.01
    assert row["stable"] == (0.002 < row["lr_max_stable"])
    assert "| 0.002 → 0.01 |" in out.read_text()
