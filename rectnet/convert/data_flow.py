"""Each conv/linear layer of a traced network with the rectifiers that feed it and follow it, in data-flow order.

Init pairs a layer with these (Eq. 10 reads the feeding rectifier, Eq. 14 the following one), not with its
neighbours in registration order (`Graph.feeding`, `Graph.following`); the report lists the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from rectnet.convert.graph import Graph, Site
from rectnet.convert.report import LayerReport
from rectnet.layers.activations import Identity, ReLU
from rectnet.layers.facts import WEIGHT_LAYERS, LayerFacts, WeightLayer, weight_layers


def _gain_module(model: nn.Module, site: Site | str | None) -> nn.Module | None:
    """The rectifier module that init reads the gains of: a site's module now, ReLU for a functional call,
    Identity (q = 1) for "other", None for the input (init's first-layer rule)."""
    if site is None or site == "input":
        return None
    if site == "other":
        return Identity(0)
    return model.get_submodule(site.path) if site.path else ReLU(0)


def _site_label(site: Site | str | None) -> str:
    if site is None:
        return "-"
    if isinstance(site, str):
        return site
    return f"#{site.index}"


@dataclass
class _FlowLayer:
    layer: WeightLayer
    reads: str
    followed_by: str


def data_flow_layers(model: nn.Module, graph: Graph) -> list[_FlowLayer]:
    """Every conv/linear layer in data-flow order with the rectifiers that feed and follow it (`Graph.feeding`,
    `Graph.following`). Inside a closed leaf the layers are paired in registration order, and its first and last
    layer take the leaf's feeding and following rectifiers. The last layer in data-flow order is the classifier."""
    out = []
    for node in graph.weights:
        before, keep_in = graph.feeding(node)
        after, keep_out = graph.following(node)
        module = model.get_submodule(node.target)
        if isinstance(module, WEIGHT_LAYERS):
            facts = _flow_facts(len(out) + 1, node.target, module, keep_in, keep_out)
            layer = WeightLayer(facts, module, _gain_module(model, before), _gain_module(model, after))
            out.append(_FlowLayer(layer, _site_label(before), _site_label(after)))
            continue
        inner = weight_layers(module)
        for i, layer in enumerate(inner):
            name = f"{node.target}.{layer.facts.module}"
            facts = replace(layer.facts, index=len(out) + 1, name=name, classifier=False)
            reads, follows = "(registration order)", "(registration order)"
            first_before, last_after = layer.before, layer.after
            if i == 0 and first_before is None:
                first_before, reads = _gain_module(model, before), _site_label(before)
                facts = replace(facts, keep_in=keep_in)
            if i == len(inner) - 1 and last_after is None:
                last_after, follows = _gain_module(model, after), _site_label(after)
                facts = replace(facts, keep_out=keep_out)
            out.append(_FlowLayer(WeightLayer(facts, layer.module, first_before, last_after), reads, follows))
    if out:
        last = out[-1].layer
        out[-1].layer = replace(last, facts=replace(last.facts, classifier=True))
    return out


def _flow_facts(index: int, path: str, module: nn.Module, keep_in: float, keep_out: float) -> LayerFacts:
    """A traced layer's facts, named by its module path (a timm or torchvision model has no paper names)."""
    linear = isinstance(module, nn.Linear)
    channels = (module.in_features, module.out_features) if linear else (module.in_channels, module.out_channels)
    return LayerFacts(
        index=index,  # in data-flow order
        name=path,
        module=path,
        kind="fc" if linear else "conv",
        in_channels=channels[0],
        out_channels=channels[1],
        norm=None,
        act=None,
        activation=None,
        studied=False,
        classifier=False,
        keep_in=keep_in,
        keep_out=keep_out,
    )


def layer_reports(model: nn.Module, graph: Graph, used: dict[str, float]) -> list[LayerReport]:
    return [
        LayerReport(i, f.layer.name, _describe(f.layer.module), f.reads, f.followed_by, used.get(f.layer.name))
        for i, f in enumerate(data_flow_layers(model, graph), 1)
    ]


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features} -> {module.out_features}"
    kernel = "x".join(map(str, module.kernel_size))
    text = f"conv {kernel}, {module.in_channels} -> {module.out_channels}"
    if module.groups > 1:
        text += f", groups {module.groups}"
    stride = max(module.stride)
    return text + (f", /{stride}" if stride > 1 else "")
