"""The data flow of a network, traced with torch.fx: which rectifier really follows each conv/linear layer.

Module registration order (`named_modules`) is how a class *declares* its layers, not how `forward` uses
them: a block may register its shortcut conv after its second activation, reuse one ReLU module twice, or
declare layers in any order. Kaiming init (He et al. 2015 §2.2) pairs every layer with the rectifier that
acts on its responses (Eq. 10/14), and CReLU's "half" construction (Shang et al. 2016 §3) must know that a
conv's output reaches one rectifier and nothing else. Both are facts of the graph that `forward` computes.

`trace` records that graph symbolically (no data flows) with timm's leaf-module and auto-wrapped function
lists, plus every conv/linear, norm and rectifier module as a leaf, so each appears as one node. A graph is
read here, never run: the model the user gets back keeps its own class and `forward`.

Roles of a node in the walks below:

* weight: a conv or linear module;
* site: a rectifier (ReLU, ReLU6, LeakyReLU, PReLU, RReLU, rectnet's rectifiers), or a norm module that
  applies a rectifier itself (timm's BatchNormAct2d and friends: norm, then its `act`);
* norm: BatchNorm / InstanceNorm / GroupNorm / LayerNorm without a rectifier inside;
* pass: nodes that keep each unit's value up to reshaping, selection or dropout (identity, dropout,
  pooling, flatten/view);
* add: a residual sum;
* functional: a rectifier called as a function (`F.relu(x)`, `x.relu()`), which module replacement
  cannot reach;
* other: anything else (concatenation, products, smooth activations such as GELU or SiLU, ...).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from rectnet.layers.activations import Identity, Rectifier
from rectnet.layers.facts import DROPOUTS, WEIGHT_LAYERS

RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, Rectifier)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_MODULES = (nn.Identity, nn.Flatten, *DROPOUTS, *POOLS)
PASS_FUNCTIONS = (
    torch.flatten,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
)
PASS_METHODS = ("flatten", "view", "reshape", "contiguous", "mean")
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
FUNCTIONAL_RECTIFIERS = (F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_)
# `x.shape`, `x.size()`, `x.dim()`: reading a tensor's metadata is not a use of its values
METADATA_METHODS = ("size", "dim")


class TraceFailure(Exception):
    """torch.fx could not follow `forward`; `module` is the innermost module being traced when it stopped."""

    def __init__(self, module: str, error: Exception) -> None:
        self.module = module
        self.error = error
        super().__init__(f"tracing stopped in module {module!r}: {type(error).__name__}: {error}")


def _is_rectifier(module: nn.Module) -> bool:
    return isinstance(module, RECTIFIERS) and not isinstance(module, Identity)


def norm_act_rectifier(module: nn.Module) -> nn.Module | None:
    """The rectifier a norm module applies after normalising (timm's BatchNormAct2d `act`), else None."""
    act = getattr(module, "act", None)
    return act if isinstance(module, NORMS) and isinstance(act, nn.Module) and _is_rectifier(act) else None


class _Tracer(fx.Tracer):
    """torch.fx with timm's leaf modules and auto-wrapped functions, and every layer we rewrite as a leaf."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self._timm_leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*WEIGHT_LAYERS, *NORMS, *RECTIFIERS, *self._timm_leaves)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The graph of `model.forward`; raises TraceFailure naming the module where tracing stopped."""
    tracer = _Tracer()
    try:
        return tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, AttributeError, ... from user code
        # Tracer.call_module pushes each module it enters and pops it only on a normal return.
        stack = list(tracer.module_stack.values())
        raise TraceFailure(stack[-1][0] if stack else type(model).__name__, err) from err


@dataclass
class Site:
    """One call of a rectifier in the data flow, 1-based in execution order (what `act_at` counts)."""

    index: int
    node: fx.Node
    path: str | None  # the rectifier module's name (`layer1.0.act1`, `bn1.act`); None for a functional call
    module: nn.Module | None
    norm: str | None = None  # the norm module that applies this rectifier itself (BatchNormAct2d), if any
    inside: str | None = None  # the closed leaf module (fx does not trace into it) that holds this rectifier

    @property
    def where(self) -> str:
        return self.path or f"{self.node.name} (functional call)"


@dataclass
class Graph:
    """A traced model: its nodes' roles, its rectifier sites and its weight layers in data-flow order."""

    model: nn.Module
    fx_graph: fx.Graph
    sites: list[Site] = field(default_factory=list)
    # first call of each conv/linear module, and the closed leaves that hold such layers (`_add_closed`)
    weights: list[fx.Node] = field(default_factory=list)
    _site_of: dict[fx.Node, Site] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module) -> Graph:
        graph = cls(model, trace(model))
        seen_weights: set[int] = set()
        for node in graph.fx_graph.nodes:
            role = graph.role(node)
            if role == "site" or role == "functional":
                module, path, norm = None, None, None
                if role == "site":
                    module = graph.module(node)
                    path, norm = node.target, None
                    inner = norm_act_rectifier(module)
                    if inner is not None:
                        module, path, norm = inner, f"{node.target}.act", node.target
                site = Site(len(graph.sites) + 1, node, path, module, norm)
                graph.sites.append(site)
                graph._site_of[node] = site
            elif role == "weight" and id(graph.module(node)) not in seen_weights:
                seen_weights.add(id(graph.module(node)))
                graph.weights.append(node)
            elif role == "other" and node.op == "call_module" and _holds_layers(graph.module(node)):
                graph._add_closed(node)
        return graph

    def _add_closed(self, node: fx.Node) -> None:
        """A leaf that holds rectifiers or weight layers (timm's notrace modules, e.g. VGG's ConvMlp head):
        fx cannot see inside it, so its rectifiers become sites at its place in the data flow, in registration
        order, and its weight layers are paired in registration order inside it (`inside` names the leaf)."""
        self.weights.append(node)
        seen: set[int] = set()
        for sub_path, sub in self.module(node).named_modules():
            inner = norm_act_rectifier(sub)
            path = f"{node.target}.{sub_path}.act" if inner is not None else f"{node.target}.{sub_path}"
            sub = inner if inner is not None else sub
            if _is_rectifier(sub) and id(sub) not in seen:
                seen.add(id(sub))
                self.sites.append(Site(len(self.sites) + 1, node, path, sub, inside=node.target))

    def module(self, node: fx.Node) -> nn.Module:
        return self.model.get_submodule(node.target)

    def role(self, node: fx.Node) -> str:
        if node.op == "call_module":
            module = self.module(node)
            if isinstance(module, WEIGHT_LAYERS):
                return "weight"
            if _is_rectifier(module) or norm_act_rectifier(module) is not None:
                return "site"
            if isinstance(module, NORMS):
                act = getattr(module, "act", None)
                return "norm" if act is None or isinstance(act, nn.Identity) else "other"
            return "pass" if isinstance(module, PASS_MODULES) else "other"
        if node.op == "call_function":
            if node.target in FUNCTIONAL_RECTIFIERS:
                return "functional"
            if node.target in ADD_FUNCTIONS:
                return "add"
            return "pass" if node.target in PASS_FUNCTIONS else "other"
        if node.op == "call_method":
            if node.target in ("relu", "relu_"):
                return "functional"
            if node.target in ("add", "add_"):
                return "add"
            return "pass" if node.target in PASS_METHODS else "other"
        return node.op  # placeholder, get_attr, output

    def site_at(self, node: fx.Node) -> Site | None:
        return self._site_of.get(node)

    def users(self, node: fx.Node) -> list[fx.Node]:
        """The nodes that read `node`'s values (metadata reads such as `x.shape` do not count)."""
        return [u for u in node.users if not _reads_metadata(u)]

    def sites_of_module(self, module: nn.Module) -> list[Site]:
        return [s for s in self.sites if s.module is module]

    def keep(self, node: fx.Node) -> float:
        """Keep probability 1 - p of a dropout node (1 for any other node)."""
        module = self.module(node) if node.op == "call_module" else None
        return 1.0 - module.p if isinstance(module, DROPOUTS) else 1.0

    def following(self, weight: fx.Node) -> tuple[Site | None, float]:
        """The rectifier acting on `weight`'s responses, and the keep probability of the dropout on the way.

        The walk passes norms (their rectifier follows them), pass nodes and a residual sum: the gradient that
        reaches the layer's output is the one leaving the rectifier after the sum (Eq. 11-14 hold per unit). It
        stops with None where the output forks or meets anything else (the classifier meets the output).
        """
        node, keep = weight, 1.0
        while True:
            users = self.users(node)
            if len(users) != 1:
                return None, keep
            node = users[0]
            role = self.role(node)
            if role in ("site", "functional"):
                return self._site_of[node], keep
            if role not in ("norm", "pass", "add"):
                return None, keep
            keep *= self.keep(node)

    def feeding(self, weight: fx.Node) -> tuple[Site | str, float]:
        """The rectifier whose output `weight` reads, or "input" (raw pixels) or "other"; and the dropout keep.

        The walk passes only pass nodes: after a norm, a sum or anything else, the layer reads values with
        E[x²] = Var[x] (a norm output, a residual stream), the linear case (q = 1 in Eq. 7).
        """
        node, keep = weight.args[0], 1.0
        while isinstance(node, fx.Node):
            if node.op == "placeholder":
                return "input", keep
            role = self.role(node)
            if role in ("site", "functional"):
                return self._site_of[node], keep
            closed = [s for s in self.sites if s.inside is not None and s.node is node]
            if closed:  # a closed leaf: its last rectifier in registration order
                return closed[-1], keep
            if role != "pass":
                return "other", keep
            keep *= self.keep(node)
            node = node.args[0] if node.args else None
        return "other", keep

    def crelu_blocker(self, site: Site) -> tuple[str | None, fx.Node | None, fx.Node | None]:
        """Why `site` cannot take CReLU's "half" construction (None if it can), and its conv and norm nodes.

        Shang et al. 2016 §3 / Table 1 ("half"): a conv with half the filters followed by CReLU emits as many
        channels as the full conv followed by ReLU. That holds here when the rectifier reads
        conv -> [norm] -> [identity/dropout] and nothing else reads the conv's or the norm's output: the conv
        is then the only place the halved width shows.
        """
        if site.module is None:
            return "a functional call in forward code (not a module)", None, None
        if site.inside is not None:
            return f"it is inside {site.inside}, which torch.fx keeps closed", None, None
        if len(self.sites_of_module(site.module)) > 1:
            return f"its module is called at {len(self.sites_of_module(site.module))} places", None, None
        node, norm = site.node, None
        if site.norm is not None:
            norm, node = node, node.args[0]
        else:
            node = node.args[0]
        while isinstance(node, fx.Node) and self.role(node) in ("pass", "norm"):
            elementwise = node.op == "call_module" and isinstance(self.module(node), (nn.Identity, *DROPOUTS))
            if self.role(node) == "pass" and not elementwise:
                return f"{node.name} (pooling/reshaping) sits between it and the conv", None, None
            if self.role(node) == "norm":
                if norm is not None:
                    return "two norms before it", None, None
                norm = node
            if len(self.users(node)) != 1:
                return f"{node.name}'s output is also read elsewhere", None, None
            node = node.args[0]
        if not isinstance(node, fx.Node) or self.role(node) != "weight":
            kind = self.role(node) if isinstance(node, fx.Node) else "input"
            return f"it reads a {kind} node ({getattr(node, 'name', node)}), not a conv", None, None
        conv = self.module(node)
        if not isinstance(conv, nn.modules.conv._ConvNd):
            return f"it follows {type(conv).__name__} {node.target}, not a conv", None, None
        if conv.groups != 1:
            return f"{node.target} is a grouped conv (groups={conv.groups})", None, None
        if conv.out_channels % 2:
            return f"{node.target} has an odd number of filters ({conv.out_channels})", None, None
        if len(self.users(node)) != 1:
            return f"{node.target}'s output is also read elsewhere", None, None
        if sum(1 for n in self.fx_graph.nodes if n.op == "call_module" and n.target == node.target) > 1:
            return f"{node.target} is called at several places", None, None
        return None, node, norm


def _holds_layers(module: nn.Module) -> bool:
    return any(isinstance(m, WEIGHT_LAYERS) or _is_rectifier(m) for m in module.modules())


def _reads_metadata(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in METADATA_METHODS:
        return True
    return node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype")
