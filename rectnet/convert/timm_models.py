"""Any timm architecture as a rectnet model: `model=timm model.name=<timm name>` (configs/model/timm.yaml).

The network is built by `timm.create_model` without pretrained weights (nothing is downloaded), optionally
given a 32x32 stem (`rectnet.convert.stem`), then converted (`rectnet.convert.convert`): rectifiers, CReLU's
half construction and the data-flow Kaiming init.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from rectnet.convert import stem
from rectnet.convert.report import ConversionReport
from rectnet.convert.rewrite import ConversionError, convert


def check_name(name: str) -> None:
    """Refuse a name timm does not know, listing the closest ones (a pretrained tag, `.a1_in1k`, is allowed)."""
    if name == "timm":  # configs/model/timm.yaml names itself; the architecture is the user's choice
        raise ConversionError("model=timm needs an architecture: add model.name=<a timm model>, e.g. resnet18")
    import timm  # here, not at module level: `import rectnet` does not import timm (rectnet/models/zoo.py)

    known = timm.list_models()
    if name.split(".")[0] in known:
        return
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
    raise ConversionError(f"model.name={name!r} is not a timm architecture{hint}")


def create_timm(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    image_size: int = 224,
    cifar_stem: bool = False,
    kwargs: dict[str, Any] | None = None,
    **convert_args: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Build timm model `name` (no pretrained weights), give it a CIFAR stem if asked, and convert it.

    `kwargs` go to `timm.create_model` (e.g. resnet's `channels`, `stem_width`, `act_layer`, `drop_rate`);
    `convert_args` to `rectnet.convert.convert` (activation, init: a `rectnet.layers.init.InitSpec`, act_at, ...).
    """
    import timm

    check_name(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **(kwargs or {}))
    except TypeError as err:
        raise ConversionError(f"timm model {name} does not take model.kwargs {sorted(kwargs or {})}: {err}") from None
    changes = stem.cifar_stem(model) if cifar_stem else []
    model, report = convert(model, input_size=(in_chans, image_size, image_size), **convert_args)
    report.model = name
    report.notes = [f"cifar stem: {change}" for change in changes] + report.notes
    return model, report
