"""Comparing rows: the difference of two rows' means with a 95% interval, and the verdict on a paper's claim.

* Difference: for two groups of per-seed values (e.g. the final test errors of the baseline's runs and of
  CReLU's), mean(A) - mean(B) with a 95% confidence interval by Welch's t: standard error
  sqrt(s_A²/n_A + s_B²/n_B) (sample variances), Welch-Satterthwaite degrees of freedom, and the Student t
  quantile computed here (no SciPy): the t distribution function through the regularized incomplete beta
  function (its continued fraction), inverted by bisection. It agrees with printed t tables to every printed
  digit and with the closed forms for 1, 2 and 4 degrees of freedom to 1e-9 (tests/test_statistics.py). No
  interval when a group has fewer than 2 values, or when neither group varies (the t statistic is 0/0).
* Verdicts: a claim "A < B" (lower error) is "reproduced" when the whole interval of A - B lies below 0,
  "opposite" when it lies wholly above 0, else "not established at n=<n_A>,<n_B>". A claim "A ≈ B" is
  "reproduced" when the whole interval lies within ±δ, "opposite" when it lies wholly outside (|A - B| > δ
  established), else not established. δ = 0.5 points of error unless a claim sets its own (CLOSE_DELTA):
  about the smallest gain Shang et al.'s Table 1 prints for CReLU over the baseline on CIFAR-10 (0.46-0.81),
  so "close to CReLU" means closer than CReLU is to the baseline. Fewer than two values in a group: "not established
  (n=1)"; no value: "not measured (no runs of <row>)".
* A table's comparison: every row with runs against the table's baseline row (its runs of the same init, else
  its only init with runs), in every error column (Column.compare) and train/test gap (Gap); then each of the
  paper's claims defined with its table (rectnet/results/papers/), in the columns where the paper's printed
  values make that claim (a "<" claim where the paper prints A below B, an "≈" claim where it prints them
  within δ): a claim is not checked where the paper's own numbers do not show it. A claim carried from
  another paper (Claim.carried: He et al. 2015's PReLU < ReLU, beside Shang et al.'s Table 1) has no printed
  value in the table to show it, and is checked in every compared column.

The intervals treat seeds as independent draws and nothing else: a 95% interval per cell, not corrected for
the number of cells and claims a table checks (with a dozen of them, one can miss by chance).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rectnet.results.statistics import Cell
    from rectnet.results.table import PaperTable, TableRow

LEVEL = 0.95  # two-sided confidence level of every interval

# δ of an "≈" claim, in points of error (%): about the smallest gain Shang et al.'s Table 1 prints for CReLU over
# the baseline on CIFAR-10 (Vote 7.55 -> 7.09, 0.46; Single 9.17 -> 8.43, 0.74; Average 10.20 -> 9.39, 0.81),
# so "close to CReLU" means closer than CReLU is to the baseline; 1 point would call a row that lost all of
# CReLU's gain close. The paper's own CReLU-half vs CReLU differences there are <= 0.06. With seeds spread by
# ~0.2 points, an interval fits within ±0.5 from about 5 seeds a row (n=3: half-width ~0.45).
CLOSE_DELTA = 0.5

RELATIONS = ("<", "≈")


# ---------------------------------------------------------------------------------------------------------
# Student's t quantile


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes §6.4), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}): continued fraction did not converge")


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (any real df > 0)."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` (real, > 0) degrees of freedom: t with P(T <= t) = p.

    Bisection on the upper tail (no cancellation near p = 1) to 1e-12 relative."""
    if not 0.0 < p < 1.0 or not df > 0.0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail = 1.0 - p
    low, high = 0.0, 1.0
    while t_upper_tail(high, df) > tail:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        mid = 0.5 * (low + high)
        if t_upper_tail(mid, df) > tail:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


# ---------------------------------------------------------------------------------------------------------
# The difference of two groups


@dataclass(frozen=True)
class Difference:
    """mean(A) - mean(B) with its Welch interval; low/high/df are None where no interval exists."""

    diff: float
    n_a: int
    n_b: int
    low: float | None = None
    high: float | None = None
    df: float | None = None
    level: float = LEVEL

    @property
    def n(self) -> str:
        return f"n={self.n_a},{self.n_b}"

    def text(self, digits: int = 2) -> str:
        """E.g. "-0.74 [-1.20, -0.28] (n=3,3)", or "-0.74 (n=1,3)" without an interval."""
        value = f"{self.diff:+.{digits}f}"
        if self.low is not None:
            value += f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        return f"{value} ({self.n})"


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """mean(a) - mean(b) with its two-sided `level` interval by Welch's t (module docstring)."""
    if not a or not b:
        raise ValueError("a difference needs at least one value in each group")
    n_a, n_b = len(a), len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if n_a < 2 or n_b < 2:
        return Difference(diff, n_a, n_b, level=level)
    var_a, var_b = statistics.variance(a) / n_a, statistics.variance(b) / n_b  # squared standard errors
    if var_a + var_b == 0.0:  # neither group varies: the t statistic is 0/0
        return Difference(diff, n_a, n_b, level=level)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(var_a + var_b)
    return Difference(diff, n_a, n_b, diff - half, diff + half, df, level)


def verdict(relation: str, difference: Difference | None, delta: float = CLOSE_DELTA) -> str:
    """The verdict on "A < B" or "A ≈ B" (within ±delta) from the interval of A - B (module docstring)."""
    if relation not in RELATIONS:
        raise ValueError(f"relation {relation!r}: one of {RELATIONS}")
    if difference is None:
        return "not measured"
    if min(difference.n_a, difference.n_b) < 2:
        return "not established (n=1)"
    if difference.low is None:
        return "not established (no spread between seeds)"
    low, high = difference.low, difference.high
    if relation == "<":
        holds, contradicted = high < 0.0, low > 0.0
    else:
        holds, contradicted = -delta < low and high < delta, low > delta or high < -delta
    if holds:
        return "reproduced"
    if contradicted:
        return "opposite"
    return f"not established at {difference.n}"


def difference_of(a: Cell, b: Cell) -> Difference | None:
    """The Welch difference of two cells' values (per seed, fold net or fold set); None if one is empty."""
    return welch(a.values, b.values) if a.values and b.values else None


# ---------------------------------------------------------------------------------------------------------
# A paper's claims and a table's comparison


@dataclass(frozen=True)
class Claim:
    """A paper's claim about two rows of one of its tables: "A < B" (lower error) or "A ≈ B" (within ±delta).

    quantity "test": the table's error columns (Column.compare); "gap": its train/test gaps (Gap). carried: the
    claim comes from another paper than the table's (`source` names it) and holds in general, not in columns
    of this table's printed values, so it is checked in every compared column (made_by)."""

    a: str  # row label
    relation: str  # "<" or "≈"
    b: str  # row label
    source: str  # where the paper makes it: "Table 1, §3.1"
    quantity: str = "test"
    delta: float = CLOSE_DELTA
    carried: bool = False

    def text(self) -> str:
        what = "train/test gap" if self.quantity == "gap" else "error"
        if self.relation == "≈":
            return f"{self.a} ≈ {self.b} ({what} within ±{self.delta:g})"
        return f"{self.a} < {self.b} ({what})"

    def made_by(self, paper_a: float | None, paper_b: float | None) -> bool:
        """Whether this claim is made in a column: a carried claim in every one; a table's own claim where the
        paper prints both values, in its direction."""
        if self.carried:
            return True
        if paper_a is None or paper_b is None:
            return False
        return paper_a < paper_b if self.relation == "<" else abs(paper_a - paper_b) < self.delta


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    column: str  # column or gap title
    init: str | None  # the init of A's runs (None: A has none)
    init_b: str | None  # the init of the runs of B it is compared with (None: B has none)
    difference: Difference | None  # A - B; None: a row has no value there
    verdict: str
    paper_a: float | None  # the table's printed values (None: not printed, a carried claim's rows)
    paper_b: float | None


@dataclass
class TableComparison:
    """A filled table's differences to its baseline row and its claims' verdicts."""

    baseline: str | None
    columns: list[str]  # the compared (error) column titles
    gaps: dict[str, tuple[str, str]]  # the train/test gaps: title -> (train column title, test column title)
    differences: list[dict[str, Difference | None]]  # per line of the table (empty for the baseline's)
    references: list[str | None]  # per line: the init of the baseline's runs it is compared with
    claims: list[ClaimResult] = field(default_factory=list)

    def has_differences(self) -> bool:
        return any(d is not None for per_line in self.differences for d in per_line.values())


def paper_value(line: TableRow, title: str, gaps: dict[str, tuple[str, str]]) -> float | None:
    """The paper's printed value of `line` in a column, or its printed test - train gap for a gap title."""
    if title in gaps:
        train, test = (line.paper.get(t) for t in gaps[title])
        return None if train is None or test is None else test.value - train.value
    printed = line.paper.get(title)
    return None if printed is None else printed.value


def _cell(line: TableRow, title: str) -> Cell:
    return line.gaps[title] if title in line.gaps else line.cells[title]


def counterpart(line: TableRow, others: Sequence[TableRow]) -> TableRow | None:
    """The line of another row to compare `line` with: the one with runs of the same init, else the only one
    with runs; None when there is none or several of other inits."""
    measured = [o for o in others if o.init is not None]
    same = [o for o in measured if o.init == line.init]
    if same:
        return same[0]
    return measured[0] if len(measured) == 1 else None


def compare_table(table: PaperTable, lines: Sequence[TableRow]) -> TableComparison:
    """Differences of every line to the table's baseline row, and the verdicts of the table's claims."""
    columns = [c.title for c in table.columns if c.compare]
    gap_of = {g.title: (g.train, g.test) for g in table.gaps}
    titles = columns + list(gap_of)
    by_label: dict[str, list[TableRow]] = {}
    for line in lines:
        by_label.setdefault(line.label, []).append(line)

    differences: list[dict[str, Difference | None]] = []
    references: list[str | None] = []
    for line in lines:
        reference = None
        if table.baseline is not None and line.label != table.baseline and line.init is not None:
            reference = counterpart(line, by_label.get(table.baseline, []))
        references.append(reference.init if reference else None)
        differences.append({t: difference_of(_cell(line, t), _cell(reference, t)) for t in titles} if reference else {})

    results = []
    for claim in table.claims:
        claim_titles = list(gap_of) if claim.quantity == "gap" else columns
        lines_b = by_label[claim.b]
        for line_a in by_label[claim.a]:
            line_b = counterpart(line_a, lines_b)
            for title in claim_titles:
                paper_a, paper_b = paper_value(line_a, title, gap_of), paper_value(lines_b[0], title, gap_of)
                if not claim.made_by(paper_a, paper_b):
                    continue  # the paper does not make this claim in this column
                values_a = _cell(line_a, title).values
                values_b = _cell(line_b, title).values if line_b else []
                if not values_a and not values_b:
                    continue  # neither row measured here: nothing to say
                if values_a and values_b:
                    difference = welch(values_a, values_b)
                    outcome = verdict(claim.relation, difference, claim.delta)
                else:
                    difference, outcome = None, f"not measured (no runs of {claim.b if values_a else claim.a})"
                    if values_a and line_b is None and any(b.init for b in lines_b):
                        outcome = f"not measured (no runs of {claim.b} with init {line_a.init})"
                init_b = line_b.init if line_b else None
                results.append(ClaimResult(claim, title, line_a.init, init_b, difference, outcome, paper_a, paper_b))
    return TableComparison(table.baseline, columns, gap_of, differences, references, results)
