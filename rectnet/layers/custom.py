"""An activation the user brings (`activation=custom activation.target=mypkg.mymod.MyAct`): imported, checked to be
pointwise, its gains derived by quadrature like torch's smooth ones (`rectnet.layers.gain`) or stated."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable

import torch
from torch import nn

from rectnet.layers.rectifier import ACTIVATIONS, ActivationError, Rectifier, checked_gain

PROBE_SHAPE = (2, 3, 5, 4)  # the tensor a custom activation is probed with: batch, channels, height, width


@ACTIVATIONS.register("custom")
class Custom(Rectifier):
    """An activation the user brings: `activation=custom activation.target=mypkg.mymod.MyAct`.

    `target` names an `nn.Module` class (made without arguments), an `nn.Module` (copied for every layer) or a
    function of a tensor. It must be pointwise, the same function of each element alone; a probe checks that
    it keeps the shape and commutes with a permutation of the elements. Its gains are derived by quadrature
    from its own function (`rectnet.layers.gain`, which always cuts at 0, and at the `breakpoints` the target
    declares, if any: where f or f' has a kink or a jump), unless `gain` states one.
    """

    def __init__(self, channels: int, target: str | None = None, gain: float | None = None) -> None:
        super().__init__()
        if not target:
            raise ActivationError(
                "activation=custom needs activation.target=<module>.<name>: an nn.Module class or a function of a "
                "tensor, importable here (e.g. activation.target=mypkg.acts.MyAct)"
            )
        self.target = target
        self.label = f"activation.target={target}"
        self.stated_gain = checked_gain(gain, self.label)
        self.fn = load_target(target)
        self.breakpoints = tuple(float(b) for b in getattr(self.fn, "breakpoints", ()))
        check_pointwise(self.fn, self.label)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"target={self.target}" + ("" if self.stated_gain is None else f", gain={self.stated_gain:g}")


def load_target(target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Import `module.name`: an nn.Module class is instantiated, an nn.Module copied, a function returned."""
    module_name, _, attribute = target.rpartition(".")
    label = f"activation.target={target}"
    if not module_name:
        raise ActivationError(f"{label}: name it as <module>.<name> (e.g. mypkg.acts.MyAct)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ActivationError(f"{label} is not importable: {err} (is its package on PYTHONPATH?)") from None
    if not hasattr(module, attribute):
        raise ActivationError(f"{label} is not importable: module {module_name} has no attribute {attribute!r}")
    obj = getattr(module, attribute)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        try:
            return obj()
        except Exception as err:  # the user's constructor: whatever it raises, one line
            raise ActivationError(
                f"{label}: {attribute}() failed ({type(err).__name__}: {err}); an activation class must be "
                "constructible without arguments (or name a function)"
            ) from None
    if isinstance(obj, nn.Module):
        return copy.deepcopy(obj)
    if callable(obj) and not isinstance(obj, type):
        return obj
    raise ActivationError(f"{label} is a {type(obj).__name__}, not an nn.Module class or a function of a tensor")


def check_pointwise(fn: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
    """Refuse `fn` unless it maps each element alone, the same way everywhere: on a probe tensor it must keep the
    shape, and permuting the input's elements must permute the output's the same way (a softmax over channels,
    a per-channel parameter or a pooling fails). Checked in eval mode: a random activation (RReLU) is judged by
    the function it computes at test time."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_SHAPE, generator=generator)
    order = torch.randperm(x.numel(), generator=generator)
    training = fn.training if isinstance(fn, nn.Module) else None
    if training is not None:
        fn.eval()
    try:
        with torch.no_grad():
            out, out_of_permuted = fn(x.clone()), fn(x.flatten()[order].reshape(x.shape))
    except Exception as err:  # the user's code: whatever it raises, one line
        raise ActivationError(
            f"{label} fails on a {tuple(x.shape)} probe tensor ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    finally:
        if training is not None:
            fn.train(training)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ActivationError(
            f"{label} is not pointwise: a {tuple(x.shape)} tensor comes out as {got}; an activation must keep the shape"
        )
    permuted = out.flatten()[order].reshape(x.shape)
    if not torch.allclose(out_of_permuted, permuted, rtol=1e-5, atol=1e-6, equal_nan=True):
        raise ActivationError(
            f"{label} is not pointwise: an output depends on other elements or on its position (permuting the "
            "input's elements does not permute the output's the same way)"
        )
