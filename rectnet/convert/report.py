"""What a conversion did, layer by layer: `rectnet.convert` returns it, train.py logs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SiteReport:
    """One rectifier call, in data-flow order (its `index` is what `act_at` counts)."""

    index: int
    where: str  # the module that now computes it (`layer1.0.act1`), or the functional call's node
    was: str  # the original module's class
    now: str  # the activation there now
    channels: int | None  # channels it reads
    halved: str = ""  # CReLU "half": the conv (and norm) whose filters were halved, "conv 64 -> 32"
    note: str = ""  # why the chosen activation is not there, or what else to know


@dataclass
class LayerReport:
    """One conv/linear layer in data-flow order, with the rectifiers its init was paired with."""

    index: int
    name: str
    shape: str  # "conv 3x3, 64 -> 128, /2" or "linear 512 -> 10"
    reads: str  # site index ("#3 relu"), "input" (pixels) or "other" (a norm, a sum: q = 1)
    followed_by: str  # site index, or "-" (nothing: the classifier, a fork)
    std: float | None = None  # the init's std (None: init not run)


@dataclass
class ConversionReport:
    model: str
    activation: str
    traced: bool  # False: torch.fx could not trace it; module replacement in registration order
    stopped_at: str | None  # the module where tracing stopped
    params_before: int
    params_after: int
    sites: list[SiteReport] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # stem changes, warnings

    @property
    def halved(self) -> list[SiteReport]:
        """The sites that took CReLU's "half" construction."""
        return [s for s in self.sites if s.halved]

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A plain-text table of the sites and the layers, then the parameter counts."""
        how = (
            "traced data flow (torch.fx)"
            if self.traced
            else f"registration order (tracing stopped at {self.stopped_at})"
        )
        lines = [f"{self.model} -> {self.activation}, {how}", "rectifiers:"]
        lines.append(f"  {'#':>3} {'module':<28} {'was':<14} {'now':<13} {'ch':>5}  halved / note")
        for s in self.sites:
            extra = "; ".join(x for x in (s.halved, s.note) if x)
            lines.append(f"  {s.index:>3} {s.where:<28} {s.was:<14} {s.now:<13} {s.channels or '?':>5}  {extra}")
        if self.layers:
            lines.append("weight layers (data flow):")
            lines.append(f"  {'#':>3} {'module':<28} {'layer':<28} {'reads':<16} {'followed by':<16} std")
            for w in self.layers:
                std = "-" if w.std is None else f"{w.std:.4g}"
                lines.append(f"  {w.index:>3} {w.name:<28} {w.shape:<28} {w.reads:<16} {w.followed_by:<16} {std}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            f"parameters: {self.params_before:,} before, {self.params_after:,} after; "
            f"{len(self.halved)} of {len(self.sites)} rectifiers took CReLU's half construction"
            if self.activation == "crelu"
            else f"parameters: {self.params_before:,} before, {self.params_after:,} after"
        )
        return "\n".join(lines)
