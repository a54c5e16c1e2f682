"""Spatial pyramid pooling (He et al. 2014, SPP-net), the layer before fc1 in He et al. 2015 (Tables 1 and 3).

For each pyramid level n the feature map is max-pooled into n x n bins; the bins of all levels are
flattened and concatenated, so a C-channel map of any size gives C·Σn² features: 63·C for the levels
{7, 3, 2, 1} of models A/B/C (§2.3: "63 bins in total"), 50·C for {6, 3, 2, 1} of the 14-layer model.

Bin geometry. SPP-net uses window ⌈a/n⌉ and stride ⌊a/n⌋ on an a x a map (He et al. 2014). That rule does
not always give n bins (a=10, n=7: window 2, stride 1, 9 bins) and fails when a < n (stride 0), which
happens at small test inputs. This layer uses adaptive max pooling instead: bin i spans
[⌊i·a/n⌋, ⌈(i+1)·a/n⌉), always n bins, covering the whole map. Where n divides a (the 14x14 map of
models A/B/C at levels 7, 2, 1; the 18x18 map of the 14-layer model at every level) both rules give the
same bins. At 14x14 with n=3 they differ: SPP-net pools [0,5), [4,9), [8,13) (the last row is never
read), adaptive pools [0,5), [4,10), [9,14). The multiply-add count is unaffected (SPP has no weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class SpatialPyramidPool(nn.Module):
    """Max-pool (N, C, H, W) into n x n bins per level; returns (N, C·Σn²), level by level, channel-major."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        if not levels or any(n < 1 for n in levels):
            raise ValueError(f"SPP levels must be positive integers, got {list(levels)}")
        self.levels = tuple(levels)

    def bins(self) -> int:
        """Σn²: features per input channel."""
        return sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


@dataclass(frozen=True)
class SPP:
    """Layer spec (`rectnet.models.spec`): SPP with `levels`; starts the head and flattens the map."""

    levels: tuple[int, ...]
    starts_head: ClassVar[bool] = True
    module_name: ClassVar[str] = "spp"

    def to_module(self, channels: int) -> nn.Module:
        return SpatialPyramidPool(self.levels)

    def out_channels(self, channels: int) -> int:
        return channels * sum(n * n for n in self.levels)
