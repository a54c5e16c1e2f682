"""PReLU with a one-pass backward on CPUs, so a PReLU layer costs about what a ReLU layer costs.

He et al. 2015 §2.1 call PReLU's extra cost negligible, and in principle it is: the backward needs
dL/dy = g where y > 0 and a·g elsewhere, and dL/da = Σ g·y over the non-positive y of each channel, one
read of y and g. PyTorch's CPU kernel (`_prelu_kernel_backward`) instead writes a full-size tensor of
per-element slope gradients and reduces it afterwards; measured on this project's 2-core CPU, a PReLU
layer's forward + backward on a 128x96x32x32 batch takes about 2x ReLU's (about 3.5x for the backward
alone), which makes a ConvPool-CNN-C training step about 17% slower with PReLU than with ReLU.

Here the backward is that one formula, compiled by TorchInductor into a single fused loop (`dynamic=True`:
one compilation serves every layer shape; the compiled code is cached on disk between processes). The
forward stays `F.prelu`, which already costs what ReLU's does. Used on CPU tensors only: on CUDA
`F.prelu`'s kernels are used as they are. If compilation is unavailable or fails (no C++ compiler, an
unsupported platform), a warning is logged once and PReLU falls back to `F.prelu` everywhere: the numbers
are the same (tests compare both paths), only the speed differs. `trainer.fused_prelu=false` turns it off.

At y == 0 the slope branch is taken, as in `F.prelu` (a subgradient choice).

TorchInductor's C++ toolchain imports `torch.utils.cpp_extension`, which on import looks for a CUDA toolkit
(for CUDA extensions) and, with a CUDA build of PyTorch on a machine without a GPU but with a toolkit
installed (nvcc on the PATH, /usr/local/cuda, $CUDA_HOME), logs "No CUDA runtime is found, using
CUDA_HOME=...". The kernel compiled here is CPU code that never uses that toolkit, so `quiet_toolchain_import`
imports the module first with exactly that one message filtered out; every other message passes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger("rectnet")

_enabled = True
_compiled: Callable | None = None
# TorchInductor compiles the backward again for every new thread count (a guard on torch.get_num_threads()),
# tensor rank, memory layout and slope shape it meets; its default limit of 8 per function is reached by a
# process that changes its thread count often (a test session, a benchmark). Past the limit, layouts already
# compiled keep the fused kernel and new ones use the eager formula for that call.
_RECOMPILE_LIMIT = 64
_limit_warned = False


def set_enabled(enabled: bool) -> None:
    """Turn the fused CPU backward on or off for every PReLU in this process (trainer.fused_prelu)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """PReLUs run forward inside the block record F.prelu's backward, which can be differentiated again
    (Hessian-vector products); the process's setting is back as it was after the block."""
    global _enabled
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def prelu_backward(y: torch.Tensor, slope: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dy, dL/dslope) of PReLU at input y for output gradient `grad`; channels on dim 1 (or one slope)."""
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
    compilers = (os.environ.get("CXX", "g++"), "g++", "clang++")
    return torch._dynamo.is_dynamo_supported() and any(shutil.which(cc) for cc in compilers)


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


def _fused_backward() -> Callable | None:
    """The compiled backward, or None once compilation is known not to work here."""
    global _compiled, _enabled
    if _compiled is None:
        if not cpu_compiler_available():
            log.warning("PReLU: no C++ compiler for TorchInductor; using F.prelu's slower CPU backward")
            _enabled = False
            return None
        quiet_toolchain_import()
        _compiled = torch.compile(prelu_backward, dynamic=True, fullgraph=True)
    return _compiled


class _FusedPReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, slope)
        return F.prelu(y, slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        global _enabled, _limit_warned
        y, slope = ctx.saved_tensors
        backward = _fused_backward() if _enabled else None
        if backward is not None:
            try:
                return _call_compiled(backward, y, slope, grad)
            except Exception as err:  # whatever the compiler stack raises: fall back, the numbers are the same
                if not _is_recompile_limit(err):
                    log.warning("PReLU: the fused CPU backward failed to compile (%s); using F.prelu's", err)
                    _enabled = False
                elif not _limit_warned:
                    log.warning("PReLU: %d fused backward variants compiled; new ones use F.prelu's", _RECOMPILE_LIMIT)
                    _limit_warned = True
        return prelu_backward(y, slope, grad)


def _call_compiled(backward: Callable, y: torch.Tensor, slope: torch.Tensor, grad: torch.Tensor):
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    with config.patch(**{limit: _RECOMPILE_LIMIT}):
        return backward(y, slope, grad)


def _is_recompile_limit(err: Exception) -> bool:
    return isinstance(err, getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ()))


def prelu(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """F.prelu, with the fused backward where it helps: CPU tensors that need gradients, outside torch.compile
    (which fuses the whole model itself)."""
    if _enabled and y.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _FusedPReLU.apply(y, slope)
    return F.prelu(y, slope)
