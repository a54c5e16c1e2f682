"""The rewrite behind `rectnet.convert`: rectnet's activations and activation-aware init in any network.

    model, report = rectnet.convert(timm.create_model("resnet18", num_classes=10), activation="crelu")
    print(report.format())

Steps, on the model itself (it is changed in place and returned, keeping its class and `forward`):

1. Trace the data flow (`rectnet.convert.graph`). Every rectifier call is a *site*, numbered in execution
   order; `act_at` lists the sites that take `activation`, the others take `base_act` (default: every site
   takes `activation`). A model torch.fx cannot trace falls back to replacing its rectifier modules in
   registration order, with a warning that names the module where tracing stopped; CReLU is refused there.
2. CReLU (Shang et al. 2016, Def. 2.1) doubles its input's channels. Its "half" construction (§3, Table 1)
   keeps every width: a conv -> [norm] -> rectifier chain whose conv and norm feed nothing else gets half the
   filters (and the norm half its channels), and CReLU doubles them back, so the layers after it are
   unchanged. Sites that do not fit (a rectifier after a residual sum, after a grouped or depthwise conv, a
   module called at several places) keep `base_act`, and the report says why.
3. Init: each conv/linear layer is paired with the rectifier that feeds it and the one that acts on its
   responses in the traced graph (`rectnet.convert.data_flow`), not with its neighbours in
   registration order, and `rectnet.layers.init.init_model` applies Eq. 10 (fan_in) or Eq. 14 (fan_out).

A conv followed by a normalization layer and then a rectifier gets the gain of that rectifier, as if the
norm were absent. Why: with batch statistics a norm divides the conv's responses by their own std, so in
training the forward signal after it and the gradient through it do not depend on the conv's weight scale at
all (the scale cancels: y -> c·y gives the same normalized output, and Δy -> Δy/c, Δx -> Δx). Eq. 10/14 then
decide nothing for the signal, and any gain would do; the rectifier's gain is the one that keeps the
*pre-norm* responses at unit variance, Var[y] = n·Var[w]·E[x²] = 1 with E[x²] = q·Var[norm output] = q
(He et al. 2015 Eq. 7 with the norm's unit output), which is exactly the norm's initial running variance
(1): the network computes the same function in eval mode as in training mode from the first step, and the
variance analyses (which run in eval mode) see the paper's per-layer factors. It also keeps the weight norms,
and so the effective step size of scale-invariant weights (lr / |w|²), those of the same net without norms.
A layer that *reads* a norm's output (or a residual sum) reads values with E[x²] = Var[x]: the linear case,
forward gain 1 (q = 1 in Eq. 7).
"""

from __future__ import annotations

import copy
import inspect
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from rectnet.config import ConfigError
from rectnet.convert.data_flow import data_flow_layers, layer_reports
from rectnet.convert.graph import NORMS, Graph, Site, TraceFailure, norm_act_rectifier
from rectnet.convert.report import ConversionReport, SiteReport
from rectnet.layers.activations import ActivationFactory, make_activation
from rectnet.layers.facts import WEIGHT_LAYERS
from rectnet.layers.init import InitSpec, init_model


class ConversionError(ConfigError):
    """The network cannot be converted as asked; the message says where and why."""


def convert(
    model: nn.Module,
    activation: str | ActivationFactory = "relu",
    init: InitSpec | str | None = InitSpec(),
    *,
    act_at: Sequence[int] | None = None,
    base_act: str = "relu",
    init_std: dict[int, float] | None = None,
    input_size: tuple[int, int, int] | None = None,
    **act_params: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Give `model`'s rectifiers `activation` and re-initialise it with `init`; returns (model, report).

    `act_at`: 1-based rectifier sites (data-flow order) that take `activation`; the rest take `base_act`.
    `init`: the init policy (`rectnet.layers.init.InitSpec`, or an init's name with the spec's other defaults:
    the classifier starts at zero); `init=None` keeps the weights (a halved conv keeps its first half of
    filters). `init_std` maps 1-based weight layers (data-flow order) to a fixed std. `input_size` (C, H, W):
    one example image, run before and after to read each rectifier's channels and to check that the output
    shape is unchanged; default the model's timm `pretrained_cfg` input size, else (3, 224, 224). Extra
    keywords go to the activation (`slope=0.1`).
    """
    act = activation if isinstance(activation, ActivationFactory) else make_activation(activation, **act_params)
    base = make_activation(base_act)
    if base.out_channels(1) != 1:
        raise ConversionError(f"base_act={base_act!r} changes the width; it must keep the channels (relu, prelu, avr)")
    example = _example_input(model, input_size)
    params_before = _count(model)
    shape_before = _output_shape(model, example)
    graph, stopped = _trace(model, act)
    sites = graph.sites if graph else _registered_sites(model)
    if not sites:
        raise ConversionError(
            f"{type(model).__name__} has no rectifier (ReLU, ReLU6, LeakyReLU, PReLU) to convert; networks built "
            "on GELU/SiLU can often be built with ReLU (timm: model.kwargs={act_layer: relu})"
        )
    _check_act_at(act_at, len(sites))
    channels = _site_channels(model, sites, example)
    plan = _plan(graph, sites, act, base, act_at)
    report = ConversionReport(type(model).__name__, act.name, graph is not None, stopped, params_before, 0)
    report.sites = _apply(model, graph, plan, channels, example)
    if stopped:
        report.notes.append(
            f"torch.fx stopped in {stopped}: rectifiers replaced in registration order, init paired in "
            "registration order (rectnet.layers.init.weight_layers)"
        )
    if init is not None:
        used = _initialise(model, graph, init, init_std)
    else:
        used = {}
    if graph is not None:
        report.layers = layer_reports(model, graph, used)
    report.params_after = _count(model)
    notes = list(dict.fromkeys(s.note for s in report.sites if s.note and not s.note.startswith("not CReLU")))
    if notes:  # one warning for the whole conversion (torchvision's resnet18 has 8 shared modules), a line each
        _warn("\n  ".join([f"converting {type(model).__name__} to {act.name}:", *notes]))
        report.notes.extend(notes)
    shape_after = _output_shape(model, example)
    if shape_after != shape_before:
        raise ConversionError(f"conversion changed the output shape {shape_before} -> {shape_after}")
    return model, report


def _warn(message: str) -> None:
    """A warning at the caller's line: the first frame outside rectnet.convert (`rectnet.convert(...)` reaches
    `convert` through the package's __call__, `from rectnet.convert import convert` directly)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("rectnet.convert"):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example_input(model: nn.Module, input_size: tuple[int, int, int] | None) -> torch.Tensor:
    size = input_size or tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, *size, device=device)


def _output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except RuntimeError as err:
        raise ConversionError(
            f"{type(model).__name__} does not take a {tuple(example.shape[1:])} input: {err}"
        ) from None
    finally:
        model.train(was_training)
    return tuple(out.shape)


def _trace(model: nn.Module, act: ActivationFactory) -> tuple[Graph | None, str | None]:
    try:
        return Graph.of(model), None
    except TraceFailure as failure:
        if act.out_channels(1) != 1:
            raise ConversionError(
                f"CReLU needs the data flow (which conv feeds which rectifier), and torch.fx cannot trace "
                f"{type(model).__name__}: {failure}"
            ) from None
        _warn(
            f"{failure}; falling back to replacing rectifier modules in registration order (init paired in "
            "registration order, functional rectifiers untouched)"
        )
        return None, failure.module


def _registered_sites(model: nn.Module) -> list[Site]:
    """Without a graph: every rectifier module once, in registration order."""
    from rectnet.convert.graph import _is_rectifier

    sites, seen = [], set()
    for path, module in model.named_modules():
        inner = norm_act_rectifier(module)
        if inner is not None:
            module, path = inner, f"{path}.act"
        if _is_rectifier(module) and id(module) not in seen:
            seen.add(id(module))
            sites.append(Site(len(sites) + 1, None, path, module))
    return sites


def _check_act_at(act_at: Sequence[int] | None, count: int) -> None:
    bad = [i for i in act_at or () if not 1 <= i <= count]
    if bad:
        raise ConversionError(
            f"act_at={list(act_at)}: this network has rectifiers 1..{count} (in data-flow order), got {bad}"
        )


def _site_channels(model: nn.Module, sites: list[Site], example: torch.Tensor) -> dict[int, tuple[int, ...]]:
    """Each site's input shape, read from one example forward (hooks on the rectifier modules)."""
    calls: dict[int, list[tuple[int, ...]]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        calls.setdefault(id(module), []).append(tuple(args[0].shape))

    modules = {id(s.module): s.module for s in sites if s.module is not None}
    handles = [m.register_forward_pre_hook(hook) for m in modules.values()]
    try:
        _output_shape(model, example)
    finally:
        for handle in handles:
            handle.remove()
    shapes, taken = {}, {}
    for site in sites:
        if site.module is None:
            continue
        k = taken.get(id(site.module), 0)
        taken[id(site.module)] = k + 1
        recorded = calls.get(id(site.module), [])
        if k < len(recorded):
            shapes[site.index] = recorded[k]
    return shapes


def _plan(
    graph: Graph | None, sites: list[Site], act: ActivationFactory, base: ActivationFactory, act_at
) -> list[tuple[Site, ActivationFactory, fx.Node | None, fx.Node | None, str]]:
    """(site, activation, conv to halve, norm to halve, note) for every site."""
    chosen = set(range(1, len(sites) + 1)) if act_at is None else set(act_at)
    plan = []
    for site in sites:
        want, conv, norm, note = (act if site.index in chosen else base), None, None, ""
        if want.out_channels(1) != 1:
            blocker, conv, norm = graph.crelu_blocker(site)
            if blocker:
                want, note = base, f"not CReLU: {blocker}"
        if site.module is None:
            call = getattr(site.node.target, "__name__", site.node.target)
            note = f"{site.node.name} left as {call}: a function call in forward code, not a module to replace"
        plan.append((site, want, conv, norm, note))
    if act.out_channels(1) != 1 and not any(conv is not None for _, _, conv, _, _ in plan):
        reasons = sorted({note.removeprefix("not CReLU: ") for *_, note in plan if note})
        raise ConversionError(
            "CReLU: no rectifier of this network can take the half construction (conv -> [norm] -> rectifier, "
            f"read by nothing else): {'; '.join(reasons[:4])}"
        )
    _check_shared(plan)
    return plan


def _check_shared(plan) -> None:
    """A module forward calls at several places can hold only one activation."""
    by_module: dict[int, list] = {}
    for site, want, *_ in plan:
        if site.module is not None:
            by_module.setdefault(id(site.module), []).append((site, want))
    for entries in by_module.values():
        if len({(want.name, repr(want.params)) for _, want in entries}) > 1:
            indices = [site.index for site, _ in entries]
            raise ConversionError(
                f"rectifiers {indices} are one module ({entries[0][0].path}) that forward calls at each of these "
                "places; act_at must list all of them or none"
            )


def _apply(
    model: nn.Module, graph: Graph | None, plan, shapes: dict[int, tuple[int, ...]], example: torch.Tensor
) -> list[SiteReport]:
    """Halve the convs and norms of CReLU sites, then put every site's activation in place."""
    reports, placed = [], {}
    for site, want, conv, norm, note in plan:
        shape = shapes.get(site.index)
        halved = ""
        if conv is not None:
            halved = _halve(model, conv.target, norm.target if norm is not None else None)
        if site.module is None:
            reports.append(SiteReport(site.index, site.where, site.node.name, site.node.name, None, note=note))
            continue
        channels = shape[1] if shape and len(shape) > 1 else None
        if id(site.module) not in placed:
            _check_layout(graph, site, shape, want)
            # on the model's device, in its parameters' dtype (a model converted on a GPU stays there)
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            placed[id(site.module)] = _make(want, channels, site.module).to(example.device, dtype)
            _set(model, site.path, placed[id(site.module)])
        if (
            graph is not None
            and len(graph.sites_of_module(site.module)) > 1
            and list(placed[id(site.module)].parameters())
        ):
            note = note or f"{site.path} is called at several places: they share one set of {want.name} parameters"
        reports.append(SiteReport(site.index, site.path, type(site.module).__name__, want.name, channels, halved, note))
    return reports


def _check_layout(graph: Graph | None, site: Site, shape: tuple[int, ...] | None, want: ActivationFactory) -> None:
    """Channel-wise parameters act on dim 1 (NCHW): refuse a site whose channels are last (a Linear on tokens)."""
    per_channel = any(p.numel() == 2 for p in want(2).parameters())  # a parameter per channel (PReLU's slopes)
    if not per_channel or graph is None or site.node is None or site.inside or shape is None or len(shape) <= 2:
        return
    node = site.node.args[0]
    while isinstance(node, fx.Node) and graph.role(node) in ("pass", "norm", "add"):
        node = node.args[0]
    if isinstance(node, fx.Node) and graph.role(node) == "weight" and isinstance(graph.module(node), nn.Linear):
        raise ConversionError(
            f"rectifier {site.index} ({site.path}) follows Linear {node.target} on a {len(shape)}-D tensor: its "
            f"channels are last, and {want.name}'s per-channel slopes act on dim 1. Use prelu_shared there, or "
            "leave it out of act_at"
        )


def _make(want: ActivationFactory, channels: int | None, original: nn.Module) -> nn.Module:
    """The new activation, in place as the original was (an in-place ReLU stays in place, and only then)."""
    params = dict(want.params)
    if "inplace" in inspect.signature(want.cls.__init__).parameters:
        params.setdefault("inplace", bool(getattr(original, "inplace", False)))
    return want.cls(channels or 1, **params)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _halve(model: nn.Module, conv_path: str, norm_path: str | None) -> str:
    """Halve a conv's filters (and the norm after it); returns what changed, e.g. "conv1 64 -> 32"."""
    conv = model.get_submodule(conv_path)
    half = conv.out_channels // 2
    new = copy.deepcopy(conv)
    new.out_channels = half
    new.weight = nn.Parameter(conv.weight.detach()[:half].clone())
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach()[:half].clone())
    _set(model, conv_path, new)
    done = f"{conv_path} {conv.out_channels} -> {half}"
    if norm_path is not None:
        _set(model, norm_path, _halved_norm(model.get_submodule(norm_path), conv.out_channels, norm_path))
        done += f", {norm_path} too"
    return done


def _halved_norm(norm: nn.Module, channels: int, path: str) -> nn.Module:
    """A copy of `norm` over half the channels, its affine parameters and running statistics reset."""
    from timm.layers import LayerNorm2d

    half = channels // 2
    new = copy.deepcopy(norm)
    if isinstance(norm, nn.modules.batchnorm._NormBase):
        new.num_features = half
    elif isinstance(norm, nn.GroupNorm):
        if norm.num_groups % 2 and norm.num_groups != 1:
            raise ConversionError(f"{path}: GroupNorm with {norm.num_groups} groups cannot be halved")
        new.num_channels, new.num_groups = half, max(1, norm.num_groups // 2)
    elif isinstance(norm, LayerNorm2d):
        new.normalized_shape = (half,)
    else:
        raise ConversionError(f"{path}: cannot halve a {type(norm).__name__}")
    for name, tensor in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
        if tensor is not None and tensor.ndim == 1 and tensor.shape[0] == channels:
            value = tensor.detach()[:half].clone()
            if isinstance(tensor, nn.Parameter):
                setattr(new, name, nn.Parameter(value))
            else:
                new.register_buffer(name, value)
    if hasattr(new, "reset_parameters"):
        new.reset_parameters()
    return new


def _initialise(
    model: nn.Module, graph: Graph | None, init: InitSpec | str, init_std: dict[int, float] | None
) -> dict[str, float]:
    layers = [entry.layer for entry in data_flow_layers(model, graph)] if graph is not None else None
    ordered = (
        [layer.module for layer in layers] if layers else [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    )
    for index, std in (init_std or {}).items():
        if not 1 <= int(index) <= len(ordered):
            raise ConversionError(f"init_std names weight layer {index}; this network has 1..{len(ordered)}")
        ordered[int(index) - 1].init_std = float(std)
    used = init_model(model, init, layers=layers)
    _reset_norms(model)
    return dict(used)


def _reset_norms(model: nn.Module) -> None:
    """Every norm back to the identity (scale 1, shift 0, running mean 0 and variance 1).

    Models may start some norms elsewhere: timm's ResNets zero the scale of each block's last BN
    (`zero_init_last`, Goyal et al. 2017), which takes every residual branch out of the forward signal and
    stops the gradient into its convs at init. He et al.'s Eq. 10/14 are about layers that carry the signal,
    and rectnet's init owns the whole network, so the norms start where the derivation assumes them.
    """
    for module in model.modules():
        if isinstance(module, NORMS) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
