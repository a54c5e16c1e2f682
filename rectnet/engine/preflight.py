"""A validated config checked against what only the rest of rectnet knows, before anything is built or written.

`rectnet.config.to_settings` runs `check` after every section's own ranges, so that a value no run can honour
ends as one ConfigError naming its key (train.py: one line, exit 1), not as a KeyError, ValueError or an
allocator's error after the start. Each check asks the part that knows and only words the answer here:

* the registries their names (an unknown dataset, model, activation or init lists the valid ones);
* the activation classes their parameters (`activation.slope` for an activation without a slope);
* the model's layer list its weight layers (`model.act_at`, `halve_at`, `init_std` beyond them) and, planned
  without building it (`rectnet.models.spec.plan`), its parameters and layer outputs.

`training` adds what a training run needs and eval.py or a summary do not: a training split that can fill its
folds and one global batch as far as the config tells (dataset.num_train; the loaders check the real count once
the data are read), a warmup within the run, and the memory of one training step on this machine's training
device.
"""

from __future__ import annotations

import os

import torch

from rectnet.config import ConfigError, TrainConfig
from rectnet.convert.timm_models import check_name
from rectnet.data.sources import SOURCES
from rectnet.data.split import check_batch, check_folds, held_out
from rectnet.engine.distributed import env_ranks
from rectnet.layers.activations import ACTIVATIONS, activation_parameters, make_activation
from rectnet.layers.gain import GainError
from rectnet.layers.init import INITS, MODES
from rectnet.layers.rectifier import ActivationError
from rectnet.models import MODELS
from rectnet.models.spec import Footprint, check_layer_indices, footprint, plan
from rectnet.registry import Registry

# ActivationConfig's parameters: the keys of `activation.params()`
ACTIVATION_KEYS = ("slope", "initial_bias", "target", "gain")
HOST = "this machine's memory"


def check(settings: TrainConfig, training: bool = True) -> None:
    """Refuse, as a ConfigError naming the key, what `settings` asks for and rectnet cannot give."""
    _check_pixel_scaling(settings)
    _check_names(settings)
    _check_activation_parameters(settings)
    _check_init_mode(settings)
    planned = _check_model(settings)
    if training:
        ranks = env_ranks()
        _check_training_split(settings, ranks.world_size)
        _check_warmup(settings)
        _check_memory(settings, planned, ranks.world_size, ranks.local_rank, ranks.local_world_size)


def _check_pixel_scaling(settings: TrainConfig) -> None:
    """Refuse unscaled pixels without the small fc stds that no paper ran them without and that cannot train."""
    # He et al. 2015 §2.2: the init keeps the input's variance up to the last layer, so unscaled pixels (about
    # ±128 after the mean image is subtracted) need a small factor somewhere; the paper puts it in the fc
    # stds (0.01/0.01/0.001, §3). Without them the logits start with RMS ~190 (an initial loss ~760).
    if settings.dataset.per_pixel_mean and not settings.model.init_std:
        raise ConfigError(
            "dataset.per_pixel_mean=true feeds unscaled pixels (about +-128), which He et al. pair with small "
            "fixed fc stds; model.init_std is empty for this model. Set model.init_std (e.g. the paper's "
            "{fc1: 0.01, fc2: 0.01, fc3: 0.001} by weight-layer index), or use dataset.per_pixel_mean=false "
            "(per-channel mean/std)"
        )


def _known(registry: Registry, key: str, name: str) -> None:
    try:
        registry.get(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def _check_names(settings: TrainConfig) -> None:
    _known(SOURCES, "dataset.name", settings.dataset.name)
    if settings.model.source == "rectnet":
        _known(MODELS, "model.name", settings.model.name)
    else:
        check_name(settings.model.name)  # timm's own list, with close matches (a ConversionError: a ConfigError)
    _known(ACTIVATIONS, "activation.name", settings.activation.name)
    _known(ACTIVATIONS, "model.base_act", settings.model.base_act)
    _known(INITS, "init.name", settings.init.name)


def _check_activation_parameters(settings: TrainConfig) -> None:
    name, given = settings.activation.name, settings.activation.params()
    takes = activation_parameters(name)
    for key, value in given.items():
        if key in takes:
            continue
        own = " and ".join(f"activation.{k}" for k in ACTIVATION_KEYS if k in takes)
        others = ", ".join(n for n in ACTIVATIONS if key in activation_parameters(n))
        raise ConfigError(
            f"activation.{key}={value} is not a parameter of activation {name} ({name} takes "
            f"{own or 'no activation.* parameter'}; {key} is for {others})"
        )
    _check_activation(settings)


def _check_activation(settings: TrainConfig) -> None:
    """Make the activation once, for every model source: a custom target that does not import or is not pointwise,
    or a gain the quadrature cannot derive (with init=kaiming), ends here as one line."""
    act = settings.activation
    try:
        module = make_activation(act.name, **act.params())(1)
        if settings.init.name == "kaiming":
            module.gains()
    except (ActivationError, GainError) as err:
        raise ConfigError(str(err)) from None


def _check_init_mode(settings: TrainConfig) -> None:
    init = settings.init
    modes = MODES.get(init.name)
    if modes is not None and init.mode not in modes:
        raise ConfigError(
            f"init.mode={init.mode} is not a mode of init {init.name}: {init.name} takes {', '.join(modes)}"
        )


def _check_model(settings: TrainConfig) -> Footprint | None:
    """rectnet's nets: the weight-layer indices within the layer list, then the plan (None for timm models, whose
    layers only their conversion knows)."""
    m = settings.model
    if m.source != "rectnet":
        return None
    specs = MODELS.get(m.name)()
    try:
        check_layer_indices(specs, m.name, act_at=m.act_at or [], halve_at=m.halve_at, init_std=m.init_std)
    except ValueError as err:
        raise ConfigError(f"model.{err}") from None
    act = make_activation(settings.activation.name, **settings.activation.params())
    num_classes = settings.dataset.num_classes
    try:
        layers = plan(specs, act, num_classes, 3, m.width, m.act_at, m.halve_at, m.base_act, m.dropout)
    except ValueError as err:  # a classifier whose activation cannot emit num_classes features (CReLU, odd count)
        raise ConfigError(f"dataset.num_classes={num_classes} with activation={act.name}: {err}") from None
    return footprint(layers, settings.dataset.image_size)


def _check_training_split(settings: TrainConfig, world_size: int) -> None:
    """dataset.num_train caps the training split: check it now, before any data are read."""
    data = settings.dataset
    if data.num_train is None:
        return
    source = f"dataset.num_train={data.num_train}"
    check_folds(data.num_train, data, source, at_most=True)
    train = data.num_train - held_out(data.num_train, data)
    check_batch(train, data, settings.trainer, world_size, source, at_most=True)


def _check_warmup(settings: TrainConfig) -> None:
    epochs, warmup = settings.trainer.epochs, settings.schedule.warmup_epochs
    if warmup > epochs:
        raise ConfigError(
            f"schedule.warmup_epochs={warmup:g} is longer than the run (trainer.epochs={epochs}): the learning "
            "rate would never reach optim.lr; use at most trainer.epochs"
        )


def _check_memory(
    settings: TrainConfig, planned: Footprint | None, world_size: int, local_rank: int, local_world_size: int
) -> None:
    """Refuse a training step that cannot fit the training device (on the CPU: the processes of this node together).
    The estimate is a lower bound: the weights, gradients and momentum (fp32), the float input batch and every
    weight layer's output (kept for the backward pass; 16 bits under autocast); the activations' own outputs, the
    optimizer's temporaries and the allocator's slack come on top. timm models count the input only (their layers
    are known once converted)."""
    device = _device_memory(settings.trainer.device, local_rank)
    if device is None:
        return
    where, memory = device
    sharing = local_world_size if where == HOST else 1  # the ranks of a node share its memory
    trainer, size = settings.trainer, settings.dataset.image_size
    per_process, _ = trainer.batch_sizes(world_size)
    parameters = planned.parameters if planned else 0
    outputs = planned.outputs if planned else 0
    weights = parameters * 4 * (3 if settings.optim.momentum > 0 else 2)
    layer_bytes = 4 if trainer.precision == "fp32" else 2
    batch = per_process * (3 * size * size * 4 + outputs * layer_bytes)
    if (weights + batch) * sharing <= memory:
        return
    model_part = f"{_count(parameters)} parameters: {_size(weights)} with their gradients and momentum"
    knobs = f"dataset.image_size ({size}) or trainer.batch_size ({trainer.batch_size})"
    if planned is None:
        model_part, knobs = "the timm model's own memory not counted", f"lower {knobs}"
    else:
        knobs = f"lower model.width ({settings.model.width:g}), {knobs}"
    processes = f" x {sharing} processes on this node" if sharing > 1 else ""
    raise ConfigError(
        f"one training step needs at least {_size(weights + batch)} of memory{processes} ({per_process} images "
        f"of {size}x{size} per process: {_size(batch)} of inputs and layer outputs; {model_part}), more than the "
        f"{_size(memory)} of {where}: {knobs}"
    )


def _device_memory(name: str, local_rank: int) -> tuple[str, int] | None:
    """(the device, its memory in bytes) that trainer.device names for this rank, as make_runtime will choose it;
    None where it names none that is here (make_runtime then says so)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        return None
    if device.type == "cpu":
        if not hasattr(os, "sysconf"):
            return None
        return HOST, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda" and torch.cuda.is_available():
        index = local_rank if device.index is None else device.index
        if index < torch.cuda.device_count():
            properties = torch.cuda.get_device_properties(index)  # nothing is allocated on the device
            return f"cuda:{index} ({properties.name})", properties.total_memory
    return None


def _size(count: int) -> str:
    """Bytes in binary units, from exact integers of any size (model.width=1e300 has more parameters than a float
    can hold)."""
    for power, unit in enumerate(("B", "KiB", "MiB", "GiB", "TiB", "PiB")):
        if count < 1024 ** (power + 1):
            return f"{count / 1024**power:.3g} {unit}"
    try:
        return f"{count / 1024**6:.3g} EiB"
    except OverflowError:
        return f"{_count(count // 1024**6)} EiB"


def _count(count: int) -> str:
    """An exact integer in three significant digits: 22,042; 1.36e+18."""
    if count < 10**6:
        return f"{count:,}"
    digits = str(count)
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1:02d}"
