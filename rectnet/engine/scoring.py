"""Scoring a test split under the papers' protocols, with exact counts across ranks.

Each image arrives with the views of `eval.protocol` (data/sources.py). One view: the network's logits.
Several (ten_view: 5 crops and their mirrors, He et al. Tables 2/5, CReLU Table 4; dense: every window of
every scale and its mirror, He et al. Tables 4/6): the views' softmax scores are averaged (`eval.average`
"softmax"; "logits" averages logits instead) and the result is returned as log-scores, so that softmax of
what comes out is the protocol's score and cross-entropy is its loss, whatever the protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.config import EvalConfig
from rectnet.data.sources import EvalSet
from rectnet.data.views import dense_scores
from rectnet.engine.distributed import Dist
from rectnet.engine.metrics import Counts, DeviceCounts
from rectnet.engine.runtime import Runtime


@dataclass
class Evaluator:
    model: nn.Module  # the bare model: `features` and `head` for dense scoring
    forward: nn.Module  # what computes whole views: the model or its DDP / compiled wrapper
    runtime: Runtime
    ranks: Dist
    protocol: EvalConfig
    crop: int  # the training crop size: dense windows cover what a training crop covers
    _window: int | None = field(default=None, init=False)

    @torch.inference_mode()
    def __call__(self, evalset: EvalSet, keep_logits: bool = False) -> tuple[Counts, dict | None]:
        """Loss and top-1/top-5 hits over every image of `evalset`, each exactly once across ranks (corrupt
        files skipped by request are counted as such); with `keep_logits`, also {"logits", "labels"} of the
        whole split in its order, on every rank."""
        self.forward.eval()
        counts, skipped_files, kept = DeviceCounts(self.runtime.device), 0, []
        with self._autotuning():
            for views, labels, skipped in evalset.batches():
                skipped_files += skipped
                if len(labels) == 0:
                    continue
                with self.runtime.autocast():
                    logits = self.view_logits(views, len(labels))
                counts.add(F.cross_entropy(logits, labels, reduction="sum"), logits, labels)
                if keep_logits:
                    kept.append((logits.cpu(), labels.cpu()))
        total = Counts.from_tensor(self.ranks.sum(counts.totals(skipped_files)))  # the evaluation's one host sync
        if total.n + total.skipped != len(evalset):
            raise RuntimeError(
                f"evaluated {total.n} images (+{total.skipped} skipped) over {self.ranks.world_size} rank(s); "
                f"the split has {len(evalset)}"
            )
        if not keep_logits:
            return total, None
        mine = {"logits": [k[0] for k in kept], "labels": [k[1] for k in kept]}
        shards = self.ranks.gather(mine)  # contiguous shards in rank order: concatenated, the split's order
        return total, {key: torch.cat([part for shard in shards for part in shard[key]]) for key in mine}

    def _autotuning(self) -> contextlib.AbstractContextManager:
        """cudnn.benchmark off while scoring dense views: every new image size would autotune every conv
        again (three scales, and as many sizes as the images' aspect ratios), costing more than it saves."""
        return _cudnn_benchmark_off() if self.protocol.protocol == "dense" else contextlib.nullcontext()

    def view_logits(self, views: list[torch.Tensor], images: int) -> torch.Tensor:
        """(images, K) logits from each image's views (consecutive rows of each tensor in `views`)."""
        dense = self.protocol.protocol == "dense"
        score = self._dense if dense else self.forward
        rows = [score(group).float() for group in views]
        scores = torch.cat([r.view(images, len(r) // images, r.shape[-1]) for r in rows], 1)  # (images, views, K)
        if scores.shape[1] == 1 and not dense:
            return scores[:, 0]
        if self.protocol.average == "logits":
            return scores.mean(1)
        probs = scores if dense else scores.softmax(-1)  # dense_scores returns softmax scores already
        return probs.mean(1).clamp_min(torch.finfo(probs.dtype).tiny).log()

    def _dense(self, images: torch.Tensor) -> torch.Tensor:
        features, head = self.model.features, self.model.head
        return dense_scores(features, head, images, self.window, self.protocol.dense_stride, self.protocol.average)

    @property
    def window(self) -> int:
        """The last feature map's side for a crop x crop input: 14 for the PReLU nets' 224 crops (stride 16)."""
        if self._window is None:
            probe = torch.zeros(1, 3, self.crop, self.crop, device=self.runtime.device)
            self._window = self.model.features(probe).shape[-1]
        return self._window


@contextlib.contextmanager
def _cudnn_benchmark_off() -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
