"""A 32x32 stem for ImageNet-shaped networks (`model.cifar_stem=true`).

ImageNet stems shrink the input 4x before the first block (ResNet: 7x7 conv stride 2, then a 3x3 max-pool
stride 2): a CIFAR image would reach the last stage as 1x1. timm offers no CIFAR stem in general, so rectnet
makes the usual one: the first conv in the data flow becomes 3x3, stride 1, padding 1 (same filters), and
every pooling layer of the stem is removed, as in He et al. 2016's CIFAR ResNets and the common
"ResNet-18 on CIFAR" recipes. The stem is the data flow from the input up to its first fork (the first
output that two layers read: a ResNet's first residual connection); a network that never forks (VGG, plain
nets) has no such stem, and `cifar_stem` is refused there: those nets take 32x32 inputs as they are, or
their stem can be set through their own arguments (`model.kwargs`).
"""

from __future__ import annotations

from torch import nn

from rectnet.convert.graph import Graph
from rectnet.convert.rewrite import ConversionError

STEM_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def cifar_stem(model: nn.Module) -> list[str]:
    """Make `model`'s stem keep 32x32 inputs at full resolution (module docstring); returns what changed."""
    graph = Graph.of(model)
    stem = []
    for node in graph.fx_graph.nodes:
        stem.append(node)
        if node.op != "placeholder" and len(graph.users(node)) > 1:
            break
    else:
        raise ConversionError(
            f"model.cifar_stem: {type(model).__name__} never forks (no residual connection), so it has no stem to "
            "replace; train it at dataset.image_size as it is, or set its stem through model.kwargs"
        )
    convs = [n for n in stem if graph.role(n) == "weight"]
    if not convs or not isinstance(graph.module(convs[0]), nn.Conv2d):
        raise ConversionError(f"model.cifar_stem: the stem of {type(model).__name__} does not start with a Conv2d")
    first = convs[0]
    old = graph.module(first)
    changes = [f"{first.target}: {_conv_text(old)} -> 3x3, stride 1"]
    new = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=old.bias is not None)
    _set(model, first.target, new.to(old.weight.device, old.weight.dtype))
    for node in stem:
        pool = graph.module(node) if node.op == "call_module" else None
        if isinstance(pool, STEM_POOLS):
            _set(model, node.target, nn.Identity())
            changes.append(f"{node.target}: {type(pool).__name__} removed")
    return changes


def _conv_text(conv: nn.Conv2d) -> str:
    return f"{'x'.join(map(str, conv.kernel_size))}, stride {conv.stride[0]}"


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
