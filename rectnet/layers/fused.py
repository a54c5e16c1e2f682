"""PReLU on CPUs at the cost of a ReLU: one pass over memory forward, one backward, in every precision.

He et al. 2015 §2.1 call PReLU's extra cost negligible, and in principle it is: the backward needs
dL/dy = g where y > 0 and a·g elsewhere, and dL/da = Σ g·y over the non-positive y of each channel, one
read of y and g. PyTorch's CPU kernels are far from that (one thread, 128x24x32x32 batch, this project's
2-core EPYC; ReLU: 1.7 ms forward in place, 3 ms backward):

* `_prelu_kernel_backward` writes a full-size tensor of per-element slope gradients, then reduces it, in a
  scalar loop: 50 ms fp32, 65 ms bf16.
* The forward in bf16 with one slope per channel on a channels_last tensor (rectnet's layout) takes a scalar
  path too: 58 ms, against 2.3 ms in fp32, in NCHW or with one shared slope. Under bf16 autocast every
  PReLU layer of every step pays it.

A TorchInductor-compiled backward (this module until issue 23) fixed the first in steady state but cost every
process 5 s (warm cache) to 15 s (cold) in its first step, tracing and compiling or loading its graphs: at width
0.25 a 40-step epoch of ConvPool-CNN-C lasts about 25 s, so PReLU measured 0.5-0.6x ReLU's images/s from
that alone. Its guards and `dynamic=True` kernel added a per-call cost, and under bf16 autocast it computed
dL/dy in fp32 (bf16 gradient times fp32 slope) for autograd to cast back.

So both directions are a small C++ kernel (prelu_kernel.cpp), compiled once per machine with the system
compiler (a few seconds; cached by source, compiler, flags and CPU: rectnet.layers.native) and called through
ctypes, which releases the GIL; a process then pays a millisecond to load it. Layouts: one slope per channel
with the channels innermost (channels_last, [N, C]) or outermost (NCHW), one shared slope on any dense tensor;
dtypes float32, float64 and bfloat16. The slope gradient sums runs of 32 products in the compute type (float
for float32 and bfloat16, as PyTorch sums float products in float), those sums in float64 over fixed blocks of
elements, then the blocks in order: the same bits at any thread count. Threads are torch's: the kernel is
built with OpenMP and links `libgomp.so.1`, the runtime PyTorch has already loaded (the loader shares a
library by its soname), so it runs on PyTorch's thread pool at torch.get_num_threads().

Numbers are F.prelu's: the output and dL/dy bit for bit (y > 0 ? y : a·y, the same single rounding; bf16 is
computed in float and rounded to nearest even as c10::BFloat16 does), dL/da to the summation order (and in
bf16 closer to the exact sum: F.prelu rounds it to bf16). At y == 0 the slope branch is taken, as in F.prelu
(a subgradient choice). Under CPU autocast PReLU is one of the ops cast to the low precision (its input and
slope become bf16); `prelu` applies exactly that cast, as an autograd op, before the kernel, and uses the
slope rounded to bf16, as autocast would.

Anything else (other dtypes, strided views, CUDA tensors, inside torch.compile, which fuses the model
itself, under torch.func's transforms) runs F.prelu. Second derivatives (create_graph=True: Hessian-vector
products, autograd's hessian) go through the kernel's forward and the same backward formula in PyTorch ops,
which autograd can differentiate again. If no compiler is found or the build fails, a warning is logged once
and every PReLU runs F.prelu: the same numbers, slower. `trainer.fused_prelu=false` turns the kernel off.

`cpu_compiler_available` and `quiet_toolchain_import` serve `trainer.compile` (rectnet.engine.runtime):
TorchInductor's C++ toolchain imports `torch.utils.cpp_extension`, which on import looks for a CUDA toolkit
and, with a CUDA build of PyTorch on a machine without a GPU but with a toolkit installed, logs "No CUDA
runtime is found, using CUDA_HOME=..."; `quiet_toolchain_import` imports it first with exactly that message
filtered out.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rectnet.layers import native

log = logging.getLogger("rectnet")

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn the fused CPU kernel on or off for every PReLU in this process (trainer.fused_prelu)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """PReLUs run forward inside the block are F.prelu (a probe that should not load the kernel, a reference
    computed without it); the process's setting is back as it was after the block."""
    global _enabled
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def prelu_backward(y: torch.Tensor, slope: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dy, dL/dslope) of PReLU at input y for output gradient `grad`; channels on dim 1 (or one slope).
    The formula the kernel computes, in PyTorch ops: the backward for inputs the kernel does not take."""
    positive = y > 0
    shape = [1] * y.dim()
    shape[1 if y.dim() > 1 else 0] = -1
    grad_input = torch.where(positive, grad, grad * slope.view(shape))
    per_element = torch.where(positive, torch.zeros((), dtype=grad.dtype), grad * y)
    reduce_dims = [d for d in range(y.dim()) if d != 1] if y.dim() > 1 else [0]
    grad_slope = per_element.sum(reduce_dims)
    return grad_input, grad_slope.sum().view(1) if slope.numel() == 1 else grad_slope


def cpu_compiler_available() -> bool:
    """Whether TorchInductor can build CPU code here: a supported platform and a C++ compiler."""
    return torch._dynamo.is_dynamo_supported() and native.compiler() is not None


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def quiet_toolchain_import() -> None:
    """Import `torch.utils.cpp_extension` (TorchInductor's C++ toolchain) without its CUDA_HOME note (module
    docstring), before anything compiles; a no-op once it is imported."""
    name = "torch.utils.cpp_extension"
    if name in sys.modules:
        return
    logger, note = logging.getLogger(name), _DropNoCudaRuntime()
    logger.addFilter(note)
    try:
        importlib.import_module(name)
    finally:
        logger.removeFilter(note)


# ------------------------------------------------------------------ the kernel: prelu_kernel.cpp, loaded

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
_ROWS, _PLANES = 0, 1
_SHARED_PLANE = 16384  # elements per plane when one slope covers a whole tensor (the C++ kBlock)

_library: ctypes.CDLL | None = None
_build_failed = False


def _build_and_load() -> ctypes.CDLL:
    """prelu_kernel.cpp built (once per machine, rectnet.layers.native) and its two functions declared."""
    library = native.build_and_load("prelu_kernel")
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.rectnet_prelu_forward.argtypes = [i32, i32, pointer, pointer, pointer, i64, i64, i64, i64, i32]
    library.rectnet_prelu_backward.argtypes = [i32, i32, pointer, pointer, pointer, pointer, pointer]
    library.rectnet_prelu_backward.argtypes += [i64, i64, i64, i64, i32]
    library.rectnet_prelu_forward.restype = library.rectnet_prelu_backward.restype = i32
    return library


def _kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None once it is known not to build here: then a warning, once, and
    PReLU is F.prelu for the rest of the process, autocast and double backward included."""
    global _library, _build_failed, _enabled
    if _library is None and not _build_failed:
        try:
            _library = _build_and_load()
        except RuntimeError as err:
            _build_failed, _enabled = True, False
            log.warning("PReLU: the CPU kernel could not be built (%s); using F.prelu, which is slower", err)
    return _library


# ------------------------------------------------------------------ which tensors the kernel takes, and how


@dataclass(frozen=True)
class _Plan:
    """How the kernel walks a tensor's memory: _ROWS (outer rows of C channels) or _PLANES (outer planes of
    `inner` elements, plane p with slope p % C)."""

    layout: int
    outer: int
    channels: int
    inner: int


def _channels_innermost(y: torch.Tensor) -> bool:
    return y.movedim(1, -1).is_contiguous()


def _plan(y: torch.Tensor, slope: torch.Tensor) -> _Plan | None:
    """The kernel's walk for PReLU of y (channels on dim 1) with `slope`, or None for F.prelu: dtypes the
    kernel has no code for, strided views, empty tensors, slope counts F.prelu would refuse (it says why)."""
    if y.dtype not in _DTYPE_CODES or y.device.type != "cpu" or y.dim() < 2 or y.numel() == 0:
        return None
    numel, channels = y.numel(), y.shape[1]
    dense_channels_inner, contiguous = _channels_innermost(y), y.is_contiguous()
    if slope.numel() == 1 and (dense_channels_inner or contiguous):
        return _Plan(_PLANES, -(-numel // _SHARED_PLANE), 1, _SHARED_PLANE)  # the last plane ends at numel
    if slope.numel() != channels:
        return None
    if dense_channels_inner:
        return _Plan(_ROWS, numel // channels, channels, 1)
    if contiguous:
        planes = y.shape[0] * channels
        return _Plan(_PLANES, planes, channels, numel // planes)
    return None


def _kernel_slope(slope: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The slopes as the kernel reads them: rounded to the input's dtype (what autocast does to F.prelu's
    weight, and what F.prelu multiplies by), held in the kernel's compute type."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return slope.detach().to(dtype).to(compute).contiguous()


def _check(status: int, direction: str) -> None:
    """The kernel's return code: 0 fine, 2 out of memory for the slope sums' scratch, 1 an unknown dtype."""
    if status == 2:
        raise MemoryError(f"PReLU kernel ({direction}): no memory for the slope gradient's partial sums")
    if status != 0:
        raise RuntimeError(f"PReLU kernel ({direction}) returned {status}")


def _kernel_forward(library: ctypes.CDLL, plan: _Plan, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU of y, through the kernel (`plan` from `_plan`)."""
    out = torch.empty_like(y)  # a dense y's strides: element k of out's memory is element k of y's
    a = _kernel_slope(slope, y.dtype)
    status = library.rectnet_prelu_forward(
        _DTYPE_CODES[y.dtype], plan.layout, y.data_ptr(), a.data_ptr(), out.data_ptr(),
        plan.outer, plan.channels, plan.inner, y.numel(), torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "forward")
    return out


def _kernel_backward(
    library: ctypes.CDLL, plan: _Plan, y: torch.Tensor, slope: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dy, dL/dslope) for output gradient `grad`, through the kernel (`plan` from `_plan`)."""
    if grad.dtype != y.dtype or grad.stride() != y.stride():
        # the kernel walks y and grad as one memory order; autograd's grad usually has y's layout already
        # (convolution and pooling backward keep the memory format), an expanded or other-layout one is copied
        grad = torch.empty_like(y).copy_(grad)
    grad_y = torch.empty_like(y)
    grad_slope = torch.empty(plan.channels, dtype=torch.float64)
    a = _kernel_slope(slope, y.dtype)
    status = library.rectnet_prelu_backward(
        _DTYPE_CODES[y.dtype], plan.layout, y.data_ptr(), grad.data_ptr(), a.data_ptr(), grad_y.data_ptr(),
        grad_slope.data_ptr(), plan.outer, plan.channels, plan.inner, y.numel(), torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "backward")
    return grad_y, grad_slope.to(slope.dtype).view(slope.shape)


# ------------------------------------------------------------------ autograd and the entry point


class _FusedPReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, slope)
        return _forward(y, slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        y, slope = ctx.saved_tensors
        plan, library = _plan(y, slope), _kernels()
        # Grad mode is on here only under create_graph=True (Hessian-vector products, autograd's hessian): the
        # kernel's result has no graph, so the same formula runs in PyTorch ops for autograd to differentiate
        # again (PReLU's mixed second derivatives: of dL/dy in the slope and of dL/dslope in y, both g·[y <= 0])
        if plan is not None and library is not None and not torch.is_grad_enabled():
            grad_y, grad_slope = _kernel_backward(library, plan, y, slope, grad)
        else:
            grad_y, grad_slope = prelu_backward(y, slope.to(y.dtype), grad.to(y.dtype))
            grad_slope = grad_slope.to(slope.dtype).view(slope.shape)
        return (grad_y if ctx.needs_input_grad[0] else None), (grad_slope if ctx.needs_input_grad[1] else None)


def _forward(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    plan, library = _plan(y, slope), _kernels()
    if plan is not None and library is not None:
        return _kernel_forward(library, plan, y, slope)
    return F.prelu(y, slope.to(y.dtype))


def _autocast_input(y: torch.Tensor) -> torch.Tensor:
    """y as CPU autocast hands it to F.prelu: PReLU is on autocast's low-precision list, so an fp32 input is
    cast to the autocast dtype (float64 is left alone); outside autocast, y itself."""
    if not torch.is_autocast_enabled("cpu") or not y.is_floating_point() or y.dtype == torch.float64:
        return y
    return y.to(torch.get_autocast_dtype("cpu"))


# torch has no public test for "a torch.func transform is tracing"; this private one is read once, so a torch
# release without it costs the kernel's speed (a warning, then F.prelu throughout), never a wrong answer.
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_warned_no_probe = False


def _under_torch_func() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, hessian) is tracing: its tensors are wrappers with
    no memory of their own for the kernel to read, and an autograd.Function needs extra methods to run there.
    Where this torch cannot tell, the answer is yes (F.prelu is right either way)."""
    global _warned_no_probe
    if _transforms_active is not None:
        return _transforms_active()
    if not _warned_no_probe:
        _warned_no_probe = True
        log.warning(
            "PReLU: torch %s cannot tell whether torch.func is tracing; using F.prelu, which is slower",
            torch.__version__,
        )
    return True


def prelu(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """F.prelu, through the one-pass kernel on CPU tensors, outside torch.compile (which fuses the whole
    model itself); training and evaluation alike (F.prelu's bf16 channels_last forward is slow either way)."""
    if not _enabled or y.device.type != "cpu" or torch.compiler.is_compiling() or _under_torch_func():
        return F.prelu(y, slope)
    y = _autocast_input(y)
    if torch.is_grad_enabled() and (y.requires_grad or slope.requires_grad):
        return _FusedPReLU.apply(y, slope)
    return _forward(y, slope)
