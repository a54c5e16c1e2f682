"""rectnet's activations and data-flow Kaiming init in any network (timm, torchvision, your own).

`rectnet.convert(model, activation="crelu", init="kaiming")` -> (model, report); `create_timm(name, ...)`
builds a timm architecture and converts it (train.py's `model=timm`). Details: docs/convert.md.

This package is itself callable: `rectnet.convert(...)` is `rectnet.convert.convert(...)`, while
`rectnet.convert.graph` and `import rectnet.convert as rc` still name the package (a plain function bound
to that name would hide the package from attribute access).
"""

import sys
import types

from rectnet.convert.graph import Graph, TraceFailure
from rectnet.convert.report import ConversionReport, LayerReport, SiteReport
from rectnet.convert.rewrite import ConversionError, convert
from rectnet.convert.timm_models import check_name, create_timm

__all__ = [
    "ConversionError",
    "ConversionReport",
    "Graph",
    "LayerReport",
    "SiteReport",
    "TraceFailure",
    "check_name",
    "convert",
    "create_timm",
]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
