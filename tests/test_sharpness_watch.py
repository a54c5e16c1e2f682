"""The edge-of-stability watch (`trainer.sharpness_every_steps`, rectnet/engine/curvature.py): its lambda_max is
the exact Hessian's, it leaves the run untouched (RNG, buffers, gradients, the trajectory), ranks measure the
global batch, every model family and activation works, and a resume logs no step twice."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import TINY, compose_train
from torch import nn
from torch.func import functional_call

import rectnet
from rectnet.config import ConfigError, OptimConfig, to_settings
from rectnet.engine.curvature import flat_average, loss_hvp, lr_limit, watch_step
from rectnet.engine.distributed import Dist
from rectnet.engine.train import run
from rectnet.layers import fused
from rectnet.layers.activations import make_activation

WEIGHT_DECAY = 5e-4
OPTIM = OptimConfig(weight_decay=WEIGHT_DECAY)


def _mlp(norm: bool = True, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4), *([nn.BatchNorm1d(4)] if norm else []), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4, 3)]
    return nn.Sequential(*layers).train()


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _exact_hessian(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, decayed: set[str], weight_decay: float
) -> torch.Tensor:
    """The full Hessian (torch.func, no Lanczos) of the loss + weight_decay / 2 x the squared norm of the
    parameters named in `decayed`, in float64, over the flattened parameters."""
    model = model.double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, at, l2 = {}, 0, 0.0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[at : at + shape.numel()].view(shape)
            at += shape.numel()
            l2 = l2 + (params[name].pow(2).sum() if name in decayed else 0.0)
        logits = functional_call(model, ({**params, **buffers},), (images.double(),))
        return F.cross_entropy(logits, labels) + weight_decay / 2 * l2

    with fused.unfused():  # a reference through F.prelu, independent of the kernel the watch runs through
        return torch.autograd.functional.hessian(loss, flat)


def _exact_top_eigenvalue(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    every = {name for name, _ in model.named_parameters()}
    return torch.linalg.eigvalsh(_exact_hessian(model, images, labels, every, WEIGHT_DECAY))[-1].item()


def test_lambda_max_is_the_top_eigenvalue_of_the_exact_hessian():
    model, (images, labels) = _mlp(), _batch()
    expected = _exact_top_eigenvalue(_mlp(), images, labels)
    value, loss, _ = watch_step(model, (images, labels), OPTIM, lr=0.01, iters=60, seed=0, tol=1e-9)
    assert value == pytest.approx(expected, rel=1e-5)
    quick, _, _ = watch_step(_mlp(), (images, labels), OPTIM, lr=0.01, iters=60, seed=0)  # the watch's tol, 1e-3
    assert expected * 0.99 <= quick <= expected * (1 + 1e-5)  # Lanczos approaches it from below
    assert loss == pytest.approx(F.cross_entropy(_mlp()(images), labels).item(), rel=1e-6)


def test_the_l2_term_is_the_optimizers_no_decay_on_prelu_slopes_or_exempt_biases():
    # SGD descends loss + sum over its groups of wd_g / 2 |theta_g|^2: the PReLU slopes (He et al. §2.1) and,
    # under decay_bias=false, the biases carry none, so their rows of the Hessian have no wd on the diagonal.
    # A large wd makes a wrong term show in every product.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), make_activation("prelu")(4), nn.Linear(4, 3)).double().train()
    images, labels = _batch()
    optim = OptimConfig(weight_decay=0.3, decay_bias=False)
    hessian = _exact_hessian(model, images, labels, {"0.weight", "2.weight"}, 0.3)
    hvp, params, _ = loss_hvp(model, [(images.double(), labels)], optim)
    v = torch.randn(hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pieces, at = [], 0
    for p in params:
        pieces.append(v[at : at + p.numel()].view_as(p))
        at += p.numel()
    product = torch.cat([x.reshape(-1) for x in hvp(pieces)])
    assert torch.allclose(product, hessian @ v, rtol=0, atol=1e-6)  # the loss is taken in fp32


def test_the_watch_leaves_the_run_untouched():
    model, batch = _mlp(dropout=0.3), _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    expected_draw = torch.rand(4)
    torch.manual_seed(7)
    watch_step(model, batch, OPTIM, lr=0.01, iters=10, seed=0)
    assert torch.equal(torch.rand(4), expected_draw)  # dropout's stream continues as if nothing ran
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm's running statistics included
    assert all(p.grad is None for p in model.parameters())


def test_the_lr_limit_is_polyaks_heavy_ball_bound():
    assert lr_limit(100.0, OptimConfig(momentum=0.9)) == pytest.approx(2 * 1.9 / 100)
    assert lr_limit(100.0, OptimConfig(momentum=0.9, nesterov=True)) == pytest.approx(2 * 1.9 / 2.8 / 100)


def _rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    images, labels = _batch()
    half = slice(rank * 8, (rank + 1) * 8)
    average = flat_average(Dist(rank, 2).sum, 2)
    value, loss, _ = watch_step(_mlp(norm=False), (images[half], labels[half]), OPTIM, 0.01, 30, 0, average)
    torch.save(torch.tensor([value, loss], dtype=torch.float64), f"{out}{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_measure_the_global_batch(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a, b)  # every rank runs the same iteration
    whole, loss, _ = watch_step(_mlp(norm=False), _batch(), OPTIM, 0.01, 30, 0)
    assert a[0].item() == pytest.approx(whole, rel=1e-5)
    assert a[1].item() == pytest.approx(loss, rel=1e-6)


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _tb_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.slow
def test_train_py_trains_as_without_it_and_a_resume_logs_no_step_twice(tmp_path):
    """512 images in batches of 64: 8 steps an epoch, a measurement every 3rd step of each epoch."""
    base = [*TINY, "model.dropout=0.3"]
    watched = [*base, "trainer.sharpness_every_steps=3", "trainer.sharpness_iters=5"]
    plain = run(compose_train(base, tmp_path / "plain"))
    straight = run(compose_train(watched, tmp_path / "straight"))
    assert straight["final"] == plain["final"]
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    expected = [3, 6, 11, 14]  # global steps: epoch 1 steps 3, 6; epoch 2 steps 3, 6
    assert _steps(tmp_path / "straight" / "sharpness.jsonl") == expected
    for tag in ("stability/lambda_max", "stability/lr_ratio"):
        assert _tb_steps(tmp_path / "straight", tag) == expected
    record = json.loads((tmp_path / "straight" / "sharpness.jsonl").read_text().splitlines()[0])
    assert record["lr_ratio"] == pytest.approx(record["lr"] * record["lambda_max"] / (2 * 1.9))

    cut = tmp_path / "cut"
    run(compose_train([*watched, "trainer.epochs=1"], cut))
    epoch_one = (cut / "checkpoints" / "last.pt").read_bytes()
    run(compose_train(watched, cut))
    assert _steps(cut / "sharpness.jsonl") == expected
    (cut / "checkpoints" / "last.pt").write_bytes(epoch_one)  # epoch 2's lines now belong to an abandoned attempt
    run(compose_train(watched, cut))
    assert _steps(cut / "sharpness.jsonl") == expected
    assert _tb_steps(cut, "stability/lambda_max") == expected


FAMILIES = {
    "rectnet": ["model.width=0.125"],
    "timm": [
        "model=timm",
        "model.name=resnet18",
        "model.cifar_stem=true",
        "+model.kwargs={channels:[8,8,16,16],layers:[1,1,1,1]}",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("activation", ["prelu", "crelu", "avr", "gelu"])
def test_every_family_and_activation(family, activation, tmp_path):
    args = [
        "dataset=synthetic",
        "dataset.image_size=16",
        "dataset.num_train=64",
        "dataset.num_test=32",
        "trainer.batch_size=16",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=2",
        "trainer.progress=none",
        "trainer.precision=bf16",  # the watch measures in fp32 whatever the step runs in
        "schedule=constant",
        "trainer.sharpness_every_steps=1",
        "trainer.sharpness_iters=4",
        f"activation={activation}",
        *FAMILIES[family],
    ]
    run(compose_train(args, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "sharpness.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["lambda_max"]) and r["lambda_max"] > 0 for r in records)


def test_a_converted_model():
    from test_activation_families import SmallNet, synthetic_batches

    torch.manual_seed(0)
    model, _ = rectnet.convert(SmallNet(), make_activation("prelu"), input_size=(3, 16, 16))
    model.train()
    images, labels = synthetic_batches(steps=1)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value, loss, _ = watch_step(model, (images, labels), OPTIM, 0.01, 8, 0)
    assert math.isfinite(value) and value > 0 and math.isfinite(loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "override, key",
    [("trainer.sharpness_every_steps=-1", "sharpness_every_steps"), ("trainer.sharpness_iters=1", "sharpness_iters")],
)
def test_bad_values_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        to_settings(compose_train([override]))


def test_each_product_is_one_all_reduce_through_dist(monkeypatch):
    """Two ranks holding the same shard (a fake all_reduce that doubles): the averaged products are this rank's,
    so lambda_max is unchanged, and every Hessian-vector product (and the loss) costs one collective through
    Dist, which puts it on the collective's device (tests/test_gpu_paths.py checks that part)."""
    calls = []

    def all_reduce(t, op=None):
        calls.append(t.numel())
        t.mul_(2)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(Dist, "enabled", property(lambda self: True))
    model, batch = _mlp(norm=False), _batch()
    alone, _, products = watch_step(_mlp(norm=False), batch, OPTIM, 0.01, 12, 0)
    shared, _, _ = watch_step(model, batch, OPTIM, 0.01, 12, 0, flat_average(Dist(0, 2).sum, 2))
    assert shared == pytest.approx(alone, rel=1e-6)
    size = sum(p.numel() for p in model.parameters())
    assert calls == [1] + [size] * products  # the loss, then one flat tensor per product
