"""init=lsuv (Mishkin & Matas 2016): the orthonormal start, unit output variances measured by the test's own
hooks, the zero class-score layer, timm models, DDP ranks in agreement, and a resume that does not redo it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import TINY, compose_train, run_cli
from torch import nn

from rectnet.config import ConfigError, to_settings
from rectnet.convert import create_timm
from rectnet.engine import train as engine_train
from rectnet.engine.distributed import Dist
from rectnet.engine.train import run
from rectnet.layers.activations import make_activation
from rectnet.layers.facts import WEIGHT_LAYERS, weight_layers
from rectnet.layers.init import InitSpec, init_model, is_head
from rectnet.layers.lsuv import lsuv
from rectnet.models import MODELS, create
from rectnet.models.spec import min_input_size

LSUV = InitSpec("lsuv", distribution="orthogonal")


def _net(activation: str = "relu", dropout: float = 0.0, seed: int = 0, head_scale: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    act, init = make_activation(activation), replace(LSUV, head_scale=head_scale)
    return create("convpool_cnn_c", num_classes=10, act=act, width=0.125, dropout=dropout, init=init)


def _batch(n: int = 32, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _weights(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]


def _output_variances(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Every weight layer's output variance in one training-mode pass, by hooks of the test's own."""
    found: dict[str, float] = {}

    def record(name: str, output: torch.Tensor) -> None:  # before an in-place rectifier overwrites it
        found.setdefault(name, output.double().var().item())

    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: record(name, o))
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYERS)
    ]
    model.train()
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return found


@pytest.mark.parametrize("activation", ["relu", "prelu", "crelu", "avr", "gelu"])
def test_every_layer_ends_at_unit_output_variance_and_the_head_at_zero(activation):
    model, batch = _net(activation), _batch()
    result = lsuv(model, [batch], tolerance=0.1, max_iters=10)
    variances = _output_variances(model, batch)
    *body, head = variances
    assert len(result) == len(variances) == 9
    assert all(abs(variances[name] - 1) < 0.1 for name in body), variances
    assert torch.count_nonzero(model.get_submodule(head).weight) == 0 and variances[head] == 0


@pytest.mark.parametrize("name", list(MODELS))
def test_every_rectnet_net(name):
    """CReLU: the activation whose channel doubling makes the in-widths the least regular. A class-score layer
    that a rectifier follows (All-CNN-B's) keeps the rule: unit variance, not zero (rectnet.layers.init). Without
    dropout, so that the test's own pass sees what LSUV's passes saw."""
    torch.manual_seed(0)
    width = 0.0625 if name.startswith("prelu") else 0.125
    model = create(name, num_classes=10, act=make_activation("crelu"), width=width, dropout=0, init=LSUV)
    size = max(16, min_input_size(MODELS.get(name)()))
    batch = _batch(8, size)
    result = lsuv(model, [batch])
    *body, head = _output_variances(model, batch).values()
    assert len(result) == len(body) + 1 and all(abs(v - 1) < 0.1 for v in body)
    assert head == 0 if is_head(weight_layers(model)[-1]) else abs(head - 1) < 0.1


def test_the_start_is_orthonormal_and_the_scale_one_per_layer():
    model = _net()
    every = {name: m.weight.detach().flatten(1).clone() for name, m in model.named_modules() if m in _weights(model)}
    before = {name: w for name, w in every.items() if w.any()}  # the class-score layer starts at zero
    assert len(every) == 9 and len(before) == 8
    for name, w in before.items():  # orthonormal rows (Saxe et al. 2014): every layer here has more columns
        assert w.shape[0] <= w.shape[1] and torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-5), name
    lsuv(model, [_batch()])
    for name, w in before.items():  # LSUV multiplies each layer by one number: the rows stay orthogonal
        after = model.get_submodule(name).weight.detach().flatten(1)
        scale = after.norm() / w.norm()
        assert torch.allclose(after, scale * w, atol=1e-6), name


def test_head_scale_puts_the_class_scores_at_that_std():
    model, batch = _net(head_scale=0.5), _batch()
    result = lsuv(model, [batch], head_scale=0.5)
    head = list(_output_variances(model, batch).values())[-1]
    assert head == pytest.approx(0.25, abs=0.025 + 0.1)  # 0.5² x a variance within the tolerance of 1
    assert result[-1].scale != 0


def test_dropout_masks_are_the_same_in_every_pass_and_the_global_rng_untouched():
    model, batch = _net(dropout=0.5), _batch()
    state = torch.get_rng_state()
    result = lsuv(model, [batch], tolerance=0.01)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(layer.passes <= 2 for layer in result)  # one rescale of a linear layer lands on 1: masks fixed


def test_a_converted_timm_resnet():
    torch.manual_seed(0)
    model, _ = create_timm(
        "resnet18", 10, image_size=16, cifar_stem=True, kwargs={"channels": (8, 16, 32, 64)}, activation="prelu"
    )
    init_model(model, LSUV)
    batch = _batch(16)
    result = lsuv(model, [batch])
    variances = _output_variances(model, batch)
    assert len(result) == len(variances) == len(_weights(model)) == 22  # 17 convs, 4 downsampling ones, fc
    assert result[-1].scale == 0  # fc: rectnet's facts read it as the class-score layer
    assert all(abs(v - 1) < 0.1 for name, v in variances.items() if name != "fc")
    assert torch.count_nonzero(model.fc.weight) == 0


def test_bad_values_are_refused_in_one_line():
    for key, value in [("tolerance", 0), ("max_iters", 0), ("batches", 0)]:
        with pytest.raises(ConfigError, match=f"init.lsuv.{key} must be"):
            to_settings(compose_train([*TINY, "init=lsuv", f"init.lsuv.{key}={value}"]))


def _rank(rank: int, store: str, batch: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = _net()
    half = batch[rank * len(batch) // 2 : (rank + 1) * len(batch) // 2]
    lsuv(model, [half], reduce=Dist(rank, 2).sum)
    torch.save(model.state_dict(), f"{out}{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_the_weights_of_the_whole_batch(tmp_path):
    batch = _batch()
    mp.spawn(_rank, args=(str(tmp_path / "store"), batch, str(tmp_path / "rank")), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    whole = _net()
    lsuv(whole, [batch])
    for key, value in whole.state_dict().items():
        assert torch.equal(a[key], b[key]), key  # identical on every rank
        assert torch.allclose(a[key], value, rtol=1e-5, atol=1e-7), key  # and what one process gets on the batch


@pytest.mark.slow
def test_a_resume_does_not_redo_it_and_ends_bit_for_bit(tmp_path, monkeypatch):
    args = [*TINY, "init=lsuv", "model.dropout=0.3", "trainer.epochs=2"]
    calls = []
    original = engine_train.run_lsuv
    monkeypatch.setattr(engine_train, "run_lsuv", lambda *a: calls.append(1) or original(*a))
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    fresh = run(compose_train(args, straight))
    run(compose_train([*args, "trainer.epochs=1"], interrupted))
    resumed = run(compose_train([*args, "trainer.resume=auto"], interrupted))
    assert len(calls) == 2  # the two fresh runs, not the resume
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = fresh["lsuv"]
    assert record["images"] == 64 and record["positions"] == [0, 64] and record["seed"] == 0
    measured = [layer["variance"] for layer in record["layers"] if layer["variance"] is not None]
    assert len(measured) == 8 and all(abs(v - 1) < 0.1 for v in measured)
    assert resumed["lsuv"]["layers"] is None and resumed["lsuv"]["images"] == 64


@pytest.mark.slow
def test_train_py_init_lsuv_end_to_end(tmp_path):
    proc = run_cli([*TINY, "init=lsuv", "trainer.epochs=1", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LSUV (Mishkin & Matas 2016) on images 0..63 of epoch 1 (seed 0)" in (tmp_path / "train.log").read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["lsuv"]["layers"][-1]["scale"] == 0
