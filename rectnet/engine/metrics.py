"""Exact top-k counts: metrics are ratios of summed integer counts, never means of per-batch means."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the k highest logits, for each k (k capped at the class count):
    an int64 tensor on the logits' device, so counting never waits for the device."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


class DeviceCounts:
    """Summed loss and top-1/top-5 hits kept on the device, batch after batch; the sample count on the host.
    Nothing here synchronizes: `totals` hands the sums over as a tensor for one transfer (or all-reduce)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss_sum, top1, top5
        self.n = 0

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums += torch.cat([loss_sum.detach().view(1), topk_hits(logits.detach(), labels)]).double()
        self.n += len(labels)

    def totals(self, skipped: int = 0) -> torch.Tensor:
        """Counts.as_tensor's layout, on the device."""
        return torch.cat([self.sums, torch.tensor([self.n, skipped], dtype=torch.float64, device=self.sums.device)])


@dataclass
class Counts:
    """Summed loss and top-1/top-5 hits over `n` samples, and how many samples were `skipped` (corrupt files,
    dataset.skip_corrupt=true): n + skipped is the number of samples the split offered."""

    loss_sum: float = 0.0
    top1: int = 0
    top5: int = 0
    n: int = 0
    skipped: int = 0

    def add_batch(self, loss_sum: float, top1: int, top5: int, n: int) -> None:
        self.loss_sum += loss_sum
        self.top1 += top1
        self.top5 += top5
        self.n += n

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss_sum, self.top1, self.top5, self.n, self.skipped], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Counts:
        loss_sum, top1, top5, n, skipped = t.tolist()
        return cls(loss_sum, round(top1), round(top5), round(n), round(skipped))

    def summary(self) -> dict[str, float]:
        """Errors (as the papers report them) and accuracies in percent, plus the mean loss and the count."""
        if self.n == 0:
            raise ValueError("no samples were evaluated")
        top1_acc, top5_acc = 100.0 * self.top1 / self.n, 100.0 * self.top5 / self.n
        return {
            "loss": self.loss_sum / self.n,
            "top1_err": 100.0 - top1_acc,
            "top5_err": 100.0 - top5_acc,
            "top1_acc": top1_acc,
            "top5_acc": top5_acc,
            "count": self.n,
            **({"skipped": self.skipped} if self.skipped else {}),
        }
