"""rectnet/layers/fused.py's CPU kernel against F.prelu: every layout and dtype it takes, bf16 autocast, the
inputs it leaves to F.prelu, evaluation without gradients, and its build cache. (The basic fp32 cases, the
fallback without a compiler and finite differences are in test_activations.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rectnet.layers import fused

LAYOUTS = {  # name: (shape, memory format)
    "nchw": ((6, 5, 4, 7), torch.contiguous_format),
    "channels_last": ((6, 5, 4, 7), torch.channels_last),
    "ncl": ((6, 5, 9), torch.contiguous_format),
    "nc": ((40, 5), torch.contiguous_format),
    "channels_last_3d": ((3, 5, 2, 3, 4), torch.channels_last_3d),
    "big_channels_last": ((8, 130, 12, 12), torch.channels_last),  # several units of work per thread
}


def _inputs(layout: str, dtype: torch.dtype, slopes: str, seed: int = 0):
    shape, memory_format = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=gen).to(dtype)
    y.view(-1)[::11] = 0.0  # y == 0 takes the slope branch in both
    upstream = torch.randn(shape, generator=gen).to(dtype)
    y, upstream = (t.contiguous(memory_format=memory_format) for t in (y, upstream))
    slope = torch.linspace(0.05, 0.7, 1 if slopes == "shared" else shape[1]).to(dtype)  # 0.05 is inexact in bf16
    return y, slope, upstream


def _grads(prelu, y, slope, upstream, autocast: bool = False):
    y, slope = y.clone().requires_grad_(), slope.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = prelu(y, slope)
    out.backward(upstream)
    return out.detach(), y.grad, slope.grad


def _exact_slope_grad(y: torch.Tensor, slope: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Σ g·y over y <= 0 per channel, in float64 from the values as stored."""
    y, upstream = y.double(), upstream.double()
    per_channel = torch.where(y > 0, 0.0, upstream * y).movedim(1, 0).reshape(y.shape[1], -1).sum(1)
    return per_channel.sum().view(1) if slope.numel() == 1 else per_channel


@pytest.mark.parametrize("slopes", ["channelwise", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kernel_matches_f_prelu_bit_for_bit_and_sums_the_slope_gradient(layout, dtype, slopes):
    y, slope, upstream = _inputs(layout, dtype, slopes)
    assert fused._plan(y, slope) is not None  # the kernel takes it
    out, grad_y, grad_slope = _grads(fused.prelu, y, slope, upstream)
    ref_out, ref_y, ref_slope = _grads(F.prelu, y, slope, upstream)
    assert fused._library is not None and fused._enabled
    assert torch.equal(out, ref_out) and torch.equal(grad_y, ref_y)
    assert out.stride() == y.stride() and grad_y.stride() == y.stride() and grad_slope.dtype == dtype
    exact = _exact_slope_grad(y, slope, upstream)
    if dtype == torch.bfloat16:  # F.prelu rounds every product and its sum to bf16; the kernel only the sum
        assert torch.allclose(grad_slope.double(), exact, rtol=2**-8, atol=1e-3)
        assert torch.allclose(grad_slope.double(), ref_slope.double(), rtol=0.05, atol=0.1)
    else:
        assert torch.allclose(grad_slope.double(), exact, rtol=1e-5, atol=1e-5)
        assert torch.allclose(grad_slope, ref_slope, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slopes", ["channelwise", "shared"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_under_bf16_autocast_it_casts_as_autocast_casts_f_prelu(input_dtype, slopes):
    # fp32 slopes (parameters stay fp32), an fp32 or bf16 input: autocast puts PReLU in bf16
    y, slope, upstream = _inputs("channels_last", torch.float32, slopes)
    y, upstream = y.to(input_dtype), upstream.to(torch.bfloat16)
    out, grad_y, grad_slope = _grads(fused.prelu, y, slope, upstream, autocast=True)
    ref_out, ref_y, ref_slope = _grads(F.prelu, y, slope, upstream, autocast=True)
    assert out.dtype == ref_out.dtype == torch.bfloat16 and torch.equal(out, ref_out)
    assert grad_y.dtype == ref_y.dtype == input_dtype and torch.equal(grad_y, ref_y)
    assert grad_slope.dtype == torch.float32  # summed in float, not rounded to bf16 on the way
    exact = _exact_slope_grad(y.to(torch.bfloat16), slope, upstream)
    assert torch.allclose(grad_slope.double(), exact, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad_slope, ref_slope, rtol=0.05, atol=0.1)


def test_f_prelu_serves_what_the_kernel_does_not_take_with_the_same_numbers():
    y, slope, upstream = _inputs("nchw", torch.float32, "channelwise")
    strided = y[:, :, ::2]  # not dense: F.prelu
    assert fused._plan(strided, slope) is None
    out, grad_y, grad_slope = _grads(fused.prelu, strided, slope, upstream[:, :, ::2])
    ref_out, ref_y, ref_slope = _grads(F.prelu, strided, slope, upstream[:, :, ::2])
    assert torch.equal(out, ref_out) and torch.equal(grad_y, ref_y) and torch.allclose(grad_slope, ref_slope)
    with pytest.raises(RuntimeError):  # a slope count F.prelu refuses is refused as F.prelu refuses it
        fused.prelu(y, torch.full((3,), 0.25))


def test_a_gradient_in_another_layout_or_expanded_is_read_correctly():
    y, slope, upstream = _inputs("channels_last", torch.float32, "channelwise")
    for grad in (upstream.contiguous(), torch.ones(()).expand(y.shape)):
        _, grad_y, grad_slope = _grads(fused.prelu, y, slope, grad)
        _, ref_y, ref_slope = _grads(F.prelu, y, slope, grad)
        assert torch.equal(grad_y, ref_y) and torch.allclose(grad_slope, ref_slope, rtol=1e-5, atol=1e-5)


def test_evaluation_without_gradients_uses_the_kernel_and_gives_f_prelus_output(monkeypatch):
    y, slope, _ = _inputs("channels_last", torch.bfloat16, "channelwise")
    calls = []
    monkeypatch.setattr(fused, "_kernel_forward", lambda *args: calls.append(args) or F.prelu(args[2], args[3]))
    with torch.no_grad():
        out = fused.prelu(y, slope)
    assert calls and torch.equal(out, F.prelu(y, slope))


@pytest.mark.parametrize("slopes", ["channelwise", "shared"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc"])
def test_second_derivatives_through_the_kernel_agree_with_finite_differences(layout, slopes):
    y, slope, _ = _inputs(layout, torch.float64, slopes)
    y = torch.where(y >= 0, y + 0.1, y - 0.1)  # off the kink: finite differences need PReLU smooth there
    assert fused._plan(y, slope) is not None  # the forward is the kernel's
    torch.autograd.gradgradcheck(fused.prelu, (y.requires_grad_(), slope.requires_grad_()))


def _two_layer_loss(prelu, x: torch.Tensor, w2: torch.Tensor):
    return lambda w1, a: (prelu(x @ w1.T, a) @ w2.T).pow(2).sum()


def _hand_prelu(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.where(z > 0, z, a * z)


HESSIANS = {  # name: (loss, arguments) -> the blocks of the Hessian in those arguments
    "autograd": lambda loss, args: torch.autograd.functional.hessian(loss, args),
    "torch_func": lambda loss, args: torch.func.hessian(loss, argnums=tuple(range(len(args))))(*args),
}


@pytest.mark.parametrize("hessian", list(HESSIANS))
def test_a_hessian_through_the_fused_prelu_is_the_hand_written_prelus(hessian):
    """autograd's hessian (strict=False) once returned zeros, silently, through the kernel's backward, and
    torch.func's transforms refused it. The reference is PReLU written out, y > 0 ? y : a·y."""
    gen = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((6, 3), (4, 3), (2, 4)))
    a = torch.full((4,), 0.25, dtype=torch.float64)
    got = HESSIANS[hessian](_two_layer_loss(fused.prelu, x, w2), (w1, a))
    expected = torch.autograd.functional.hessian(_two_layer_loss(_hand_prelu, x, w2), (w1, a))
    for got_row, expected_row in zip(got, expected, strict=True):
        for block, reference in zip(got_row, expected_row, strict=True):
            assert reference.abs().max() > 1.0 and torch.allclose(block, reference, rtol=1e-10, atol=1e-10)


def test_a_torch_without_the_private_tracing_probe_gets_f_prelu_and_one_warning(monkeypatch, caplog):
    """`torch._C._are_functorch_transforms_active` is private: where a torch release drops it, torch.func's
    hessian and plain training both still get PReLU's values (through F.prelu, the kernel never called)."""
    monkeypatch.setattr(fused, "_transforms_active", None)
    monkeypatch.setattr(fused, "_warned_no_probe", False)
    monkeypatch.setattr(fused, "_kernels", lambda: pytest.fail("the kernel ran without the tracing probe"))
    test_a_hessian_through_the_fused_prelu_is_the_hand_written_prelus("torch_func")
    y = torch.randn(2, 3, 4, 4, requires_grad=True)
    slope = torch.full((3,), 0.25, requires_grad=True)
    fused.prelu(y, slope).sum().backward()
    assert torch.equal(y.grad, torch.where(y > 0, 1.0, 0.25))
    assert torch.allclose(slope.grad, y.detach().clamp(max=0).sum(dim=(0, 2, 3)))
    assert sum("cannot tell whether torch.func is tracing" in r.message for r in caplog.records) == 1


@pytest.mark.slow
def test_the_kernel_builds_into_an_empty_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RECTNET_CACHE_DIR", str(tmp_path))
    first = fused._build_and_load()
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no scratch files left beside it
    modified = built[0].stat().st_mtime_ns
    second = fused._build_and_load()  # from the cache: not compiled again
    assert list((tmp_path / "kernels").iterdir()) == built and built[0].stat().st_mtime_ns == modified
    assert first._name == second._name == str(built[0])
