"""Miniatures: the papers' tables filled by runs of proportionally narrower networks
(`python -m rectnet.tables DIR --width-scale S`).

A 2-core CPU cannot train Shang et al. 2016's Table 1 at the paper's width for its 350 epochs, but it can train
every row at a fraction S of it until the test error stops falling (issue 20). With --width-scale S a run of
width w*S fills the paper's row of width w: at S = 0.25 the baseline, AVR, CReLU and PReLU rows take runs of
model.width 0.25, "+ (half)" (the paper's width 0.5) takes 0.125 and "+ (double)" (width 2) takes 0.5, so
every row of the miniature keeps the paper's ratios between rows and gets its mean ± std (n), its difference
to the baseline and its claims' verdicts, exactly as at full size. The table's title says "at 1/4 of the
paper's width, E epochs" (E: the trainer.epochs of its runs) and a note under it says which widths fill which
rows and how the runs were trained. The paper's printed values stay beside as its full-size reference: the
miniature is not expected to reach them (its runs are marked ‡ when their schedule was shortened), and its
rows are compared with each other. Without the option nothing changes: runs whose width is not the paper's
go to "Other runs".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction

from rectnet.results.runs import Run
from rectnet.results.table import PaperTable
from rectnet.results.variants import Variant


def scaled_width(width: float, scale: float) -> float:
    """width * scale, rounded to 9 decimals so that it equals the float a config's "0.125" reads as (a product
    such as 0.5 * 0.3 may differ from float("0.15") in the last bit)."""
    return round(width * scale, 9)


def scale_variant(variant: Variant, scale: float) -> Variant:
    return replace(variant, width=scaled_width(variant.width, scale))


def scale_table(table: PaperTable, scale: float) -> PaperTable:
    """The table whose rows are filled by runs at `scale` times each row's width (printed values unchanged)."""
    if not scale > 0:
        raise ValueError(f"a width scale must be > 0, got {scale}")
    return replace(table, rows=tuple(replace(r, variant=scale_variant(r.variant, scale)) for r in table.rows))


def scale_text(scale: float) -> str:
    """ "1/4 of the paper's width" for 0.25, "2x the paper's width" for 2; a scale that is no simple fraction
    as a decimal ("0.3x")."""
    fraction = Fraction(scale).limit_denominator(1000)
    if abs(float(fraction) - scale) > 1e-9 or fraction >= 1:
        return "the paper's width" if scale == 1 else f"{scale:g}x the paper's width"
    return f"{fraction.numerator}/{fraction.denominator} of the paper's width"


def schedule_text(config: dict) -> str:
    """A run's lr schedule in words, e.g. "lr x0.1 at epochs 6, 7, 9" (the recipe's multistep schedule)."""
    schedule = config.get("schedule") or {}
    name = schedule.get("name")
    if name == "multistep":
        milestones = ", ".join(str(m) for m in schedule.get("milestones") or [])
        return f"lr x{schedule.get('gamma', 0.1):g} at epochs {milestones}"
    if name == "step":
        return f"lr x{schedule.get('gamma', 0.1):g} every {schedule.get('step_size')} epochs"
    return f"schedule {name}"


def _completed_configs(runs: Sequence[Run]) -> list[dict]:
    return [r.config for r in runs if r.status == "completed" and r.config]


def epochs_of(runs: Sequence[Run]) -> list[int]:
    """The distinct trainer.epochs of the completed runs, sorted."""
    return sorted({c.get("trainer", {}).get("epochs") for c in _completed_configs(runs)} - {None})


def heading(scale: float, runs: Sequence[Run]) -> str:
    """What the title gains: "at 1/4 of the paper's width, 10 epochs" (no epochs before any run completed)."""
    epochs = epochs_of(runs)
    trained = f", {' or '.join(map(str, epochs))} epochs" if epochs else ""
    return f"miniature at {scale_text(scale)}{trained}"


def note(table: PaperTable, scale: float, runs: Sequence[Run]) -> str:
    """The note under a miniature: which run widths fill which rows, how the runs were trained, and what the
    paper's values beside them are. `table` is the paper's (unscaled) table."""
    widths = sorted({r.variant.width for r in table.rows})
    fills = ", ".join(f"model.width {scaled_width(w, scale):g} the paper's width-{w:g} rows" for w in widths)
    trained = sorted(
        {f"{c.get('trainer', {}).get('epochs')} epochs, {schedule_text(c)}" for c in _completed_configs(runs)}
    )
    how = f" The runs trained {'; '.join(trained)}." if trained else ""
    return (
        f"Miniature (`--width-scale {scale:g}`): every row at {scale_text(scale)}: {fills}.{how} The paper's "
        "columns give its printed full-size values as a reference, which these runs are not expected to reach; "
        "the rows are compared with each other (differences to the baseline and claims below)."
    )
