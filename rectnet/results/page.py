"""A results page for docs/results/, generated from a sweep (`python -m rectnet.tables DIR ... --page FILE`).

Issue 20 asks that the committed pages be written by the command that fills the tables, not by hand, with a
header that says how they were made. The page holds, in order:

* the commands: the sweep script's invocations as it logged them (`<sweep>/commands.txt`, one line per
  invocation: scripts/reproduce/crelu_table1_mini.sh writes it; a resumed sweep shows every attempt), every
  run's train.py overrides (`.hydra/overrides.yaml`) with the seeds of otherwise identical runs merged into
  one `train.py -m ... seed=0,1,2` line, and the command that wrote the page;
* the machine: what the runs recorded in results.json (platform, processor, CPU model and its native bf16
  flags, cores, torch threads, Python and torch versions, rectnet commit, precision as run), each run counted
  once: a run resumed on another machine, commit or thread count shows its attempts' values in order ("A then
  B", from results.json's `attempts`; runs from before that record show their last attempt's), then the
  trainer.precision they were given and the CPU model, core count and native bf16 flags of the machine that
  generated the page;
* the compute: CPU-hours per table row and in all, per attempt wall time x torch threads x processes. A run's
  results.json wall_time_s covers only its last attempt; the earlier attempts of a resumed run are added from
  metrics.jsonl (the time_s of the last epoch each attempt logged before the next resume), so a resumed run's
  time is a lower bound (what an attempt trained after its last epoch end is not logged); each attempt counts
  its own threads and processes where `attempts` recorded them, else the last attempt's. Wall time counts what
  a run spent paused (SIGSTOP) or slowed by other work on the machine; the column "at the median epoch time"
  does not: median seconds between two epoch ends (metrics.jsonl's time_s, over all attempts) x epochs x the
  last attempt's threads x processes, the run's own pace without its start-up;
* the tables with runs, exactly as tables.md prints them (render.table_section), "Other runs" where there are
  any, and the legend;
* with --curves DIR (python -m rectnet.analysis.curves' output): its curves.md, curves.csv and curves.png
  copied to a folder named after the page beside it, and linked.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from rectnet.engine.runtime import NATIVE_BF16_FLAGS, cpu_model, native_bf16_flags
from rectnet.results.render import LEGEND, FilledTable, other_runs_section, runs_text, table_section
from rectnet.results.runs import Run, count_statuses, epoch_durations, epoch_times_by_attempt, read_metrics
from rectnet.results.table import TableRow

COMMANDS_FILE = "commands.txt"  # in a sweep directory: the sweep script's invocations, one per line
CURVE_FILES = ("curves.md", "curves.csv", "curves.png")


# ---------------------------------------------------------------------------------------------------------
# Commands


def sweep_invocations(dirs: Iterable[Path]) -> list[str]:
    """The lines of `<dir>/commands.txt` of each given directory that has one."""
    lines = []
    for folder in dirs:
        path = Path(folder) / COMMANDS_FILE
        if path.is_file():
            lines += [line for line in path.read_text().splitlines() if line.strip()]
    return lines


def _seed_order(seed: str) -> tuple[int, str]:
    """Whole-number seeds in numeric order (2 before 10), anything else after them."""
    return (int(seed), "") if seed.isdigit() else (sys.maxsize, seed)


def train_commands(runs: Sequence[Run]) -> list[str]:
    """One `python train.py -m <overrides> seed=<seeds>` line per set of runs that differ only in their seed,
    from each run's saved command-line overrides; runs without `.hydra/overrides.yaml` are left out."""
    seeds: dict[tuple[str, ...], set[str]] = {}
    for run in runs:
        overrides = run.overrides()
        if overrides:
            rest = tuple(o for o in overrides if not o.startswith("seed="))
            seeds.setdefault(rest, set()).update(o.partition("=")[2] for o in overrides if o.startswith("seed="))
    commands = []
    for rest, values in sorted(seeds.items()):
        seed = [f"seed={','.join(sorted(values, key=_seed_order))}"] if values else []
        commands.append(shlex.join(["python", "train.py", "-m", *rest, *seed]))
    return commands


# ---------------------------------------------------------------------------------------------------------
# Machine


def this_machine() -> str:
    """The machine generating the page: CPU model, cores, native bf16 flags."""
    flags = native_bf16_flags()
    bf16 = ", ".join(flags) if flags else f"none of {', '.join(NATIVE_BF16_FLAGS)} (bf16 would be emulated)"
    return f"{cpu_model() or 'CPU model unknown'}, {os.cpu_count()} cores; native bf16 flags: {bf16}"


def _counted(values: Iterable[object]) -> str:
    """Distinct values with how many runs gave each, most frequent first: "fp32 (19)"."""
    counts = Counter(str(v) for v in values)
    return ", ".join(f"{value} ({n})" for value, n in counts.most_common()) or "—"


def _commit(git: dict) -> str:
    return (git.get("sha") or "unknown") + (" (with uncommitted changes)" if git.get("dirty") else "")


def recorded_attempts(results: dict) -> list[dict]:
    """The attempts of a run whose machine results.json recorded, first to last: its `attempts` entries (each
    with git, versions, hardware, precision, world_size), or for a run from before that record the results
    themselves (the last attempt's, under the same keys)."""
    recorded = [a for a in results.get("attempts") or [] if a.get("recorded", True)]
    return recorded or [results]


def _per_run(runs: Sequence[Run], value) -> list[str]:
    """`value(attempt)` of each run's recorded attempts, distinct values in order: "A", or "A then B" for a run
    resumed where it differed."""
    return [" then ".join(dict.fromkeys(str(value(a)) for a in recorded_attempts(r.results))) for r in runs]


def recorded_machine(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(what, distinct values with run counts) from the completed runs' results.json and configs."""
    completed = [r for r in runs if r.results]

    def hardware(key: str, missing: str | None = None):
        return _counted(_per_run(completed, lambda a: (a.get("hardware") or {}).get(key, missing)))

    def version(key: str):
        return _counted(_per_run(completed, lambda a: (a.get("versions") or {}).get(key)))

    precision = [(r.config.get("trainer") or {}).get("precision") for r in completed if r.config]
    return [
        ("platform", hardware("platform")),
        ("processor", hardware("processor")),
        ("CPU model", hardware("cpu_model", "not recorded")),
        ("native bf16 flags", _counted(_per_run(completed, lambda a: _bf16_flags(a.get("hardware") or {})))),
        ("cores (os.cpu_count)", hardware("cpu_count")),
        ("torch threads per process", hardware("torch_threads")),
        ("trainer.precision", _counted(precision)),
        ("precision as run", _counted(_precisions_as_run(r) for r in completed)),
        ("python", version("python")),
        ("torch", version("torch")),
        ("rectnet commit", _counted(_per_run(completed, lambda a: _commit(a.get("git") or {})))),
    ]


def _precisions_as_run(run: Run) -> str:
    """The precision of each recorded attempt in order (run_precision for a run from before the record)."""
    attempts = recorded_attempts(run.results)
    if attempts == [run.results]:
        return run_precision(run)
    return " then ".join(dict.fromkeys(str(a.get("precision")) for a in attempts))


def _bf16_flags(hardware: dict) -> str:
    """A run's native bf16 flags as one value ("avx512_bf16 and amx_bf16"; "none": bf16 emulated there)."""
    if "cpu_native_bf16" not in hardware:  # runs from before the record
        return "not recorded"
    return " and ".join(hardware["cpu_native_bf16"]) or "none"


def run_precision(run: Run) -> str:
    """The precision a completed run computed in: results.json's record, else a trainer.precision other than
    `auto` (runs from before the record; `auto` depended on their CPU, which is all one knows then)."""
    recorded = (run.results or {}).get("precision")
    configured = ((run.config or {}).get("trainer") or {}).get("precision")
    if recorded:
        return str(recorded)
    return str(configured) if configured and configured != "auto" else "not recorded (trainer.precision=auto)"


# ---------------------------------------------------------------------------------------------------------
# Compute


def attempt_seconds(run: Run) -> list[float] | None:
    """Wall time of each attempt of a completed run, first to last (module docstring); None without
    results.json's wall time."""
    if not run.results or run.results.get("wall_time_s") is None:
        return None
    resumed_at = sorted(int(r.get("epoch", 0)) for r in run.results.get("resumed_from") or [])
    records = read_metrics(run.path)
    starts = [0, *resumed_at][: len(resumed_at)]  # attempt k started after resume k-1 (the first at epoch 0)
    seconds = []
    for start, end in zip(starts, resumed_at, strict=True):  # its epochs: after its start, to the next resume
        times = [r["time_s"] for r in records if "time_s" in r and start < r.get("epoch", 0) <= end]
        seconds.append(max(times, default=0.0))
    return [*seconds, float(run.results["wall_time_s"])]


def run_seconds(run: Run) -> float | None:
    """Wall time of a completed run over all its attempts; None without results.json's wall time."""
    seconds = attempt_seconds(run)
    return None if seconds is None else sum(seconds)


def run_threads(run: Run) -> int | None:
    """Threads the run computed with: results.json's torch threads, else its trainer.threads setting."""
    recorded = ((run.results or {}).get("hardware") or {}).get("torch_threads")
    configured = ((run.config or {}).get("trainer") or {}).get("threads")
    threads = recorded if recorded is not None else configured
    return int(threads) if threads is not None else None


def cpu_hours(runs: Sequence[Run]) -> tuple[float, int]:
    """(CPU-hours of the completed runs whose time and threads are known, how many completed runs are not)."""
    hours, unknown = 0.0, 0
    for run in runs:
        if run.status != "completed":
            continue
        seconds = attempt_seconds(run)
        cores = attempt_cores(run, len(seconds)) if seconds else [None]
        if seconds is None or None in cores:
            unknown += 1
            continue
        hours += sum(s * c for s, c in zip(seconds, cores, strict=True)) / 3600.0
    return hours, unknown


def attempt_cores(run: Run, attempts: int) -> list[int | None]:
    """Torch threads x processes of each of a completed run's `attempts` attempts, first to last: as each
    attempt recorded them (results.json's `attempts`, matched from the last), else as the last attempt did."""
    threads = run_threads(run)
    last = None if threads is None else threads * int(run.results.get("world_size") or 1)
    own = []
    for attempt in [a for a in run.results.get("attempts") or [] if a.get("recorded", True)][-attempts:]:
        recorded = (attempt.get("hardware") or {}).get("torch_threads")
        own.append(last if recorded is None else int(recorded) * int(attempt.get("world_size") or 1))
    return [last] * (attempts - len(own)) + own


def _resumes(run: Run) -> int:
    return len((run.results or {}).get("resumed_from") or [])


def paced_cpu_minutes(run: Run) -> float | None:
    """A completed run's CPU-minutes at its median epoch time: median seconds between consecutive epoch ends
    (over all its attempts) x epochs trained x the last attempt's threads x processes. Time a run spent paused
    (SIGSTOP) or slowed by other work on the machine, and start-up, do not count; None with fewer than two epochs
    in one attempt or no thread count."""
    records = read_metrics(run.path)
    durations = [d for times in epoch_times_by_attempt(records) for d in epoch_durations(times)]
    threads = run_threads(run)
    if not durations or threads is None:
        return None
    epochs = max(int(r["epoch"]) for r in records if "epoch" in r)
    return statistics.median(durations) * epochs * threads * int(run.results.get("world_size") or 1) / 60.0


def compute_table(lines: Sequence[TableRow]) -> str:
    """CPU-hours per table line with runs, and in all (each run counted once)."""
    header = (
        "| row | variant | completed runs | CPU-hours | CPU-minutes per run (mean) | at the median epoch time (mean) "
        "| resumed runs |"
    )
    out = [header, "|---|---|---|---|---|---|---|"]
    seen: dict[Path, Run] = {}
    for line in lines:
        done = [r for r in line.runs if r.status == "completed"]
        if not done:
            continue
        seen.update((r.path, r) for r in done)
        hours, unknown = cpu_hours(done)
        counted = len(done) - unknown
        per_run = f"{60 * hours / counted:.1f}" if counted else "—"
        paced = [m for m in map(paced_cpu_minutes, done) if m is not None]
        paced_mean = f"{statistics.mean(paced):.1f}" if paced else "—"
        resumed = sum(_resumes(r) > 0 for r in done)
        label = f"`{line.variant.label()}`"
        out.append(f"| {line.label} | {label} | {len(done)} | {hours:.2f} | {per_run} | {paced_mean} | {resumed} |")
    total, unknown = cpu_hours(list(seen.values()))
    out.append(f"| all | | {len(seen)} | {total:.2f} | | | {sum(_resumes(r) > 0 for r in seen.values())} |")
    if unknown:
        out.append(f"\n{unknown} completed runs recorded no wall time or thread count and are not counted.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Curves and the page


def copy_curves(curves: Path, page: Path) -> list[Path]:
    """curves.md / .csv / .png from `curves` into the folder <page stem>/ beside the page; the copies."""
    target = page.parent / page.stem
    copied = []
    for name in CURVE_FILES:
        if (curves / name).is_file():
            target.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copyfile(curves / name, target / name)))
    return copied


def _code(lines: Sequence[str]) -> list[str]:
    return ["```bash", *lines, "```", ""]


def commands_section(runs: Sequence[Run], dirs: Sequence[Path], command: str) -> list[str]:
    """The sweep's invocations, every run's train.py overrides, the page's own command."""
    out = ["## Commands", ""]
    invocations = sweep_invocations(dirs)
    if invocations:
        out += [f"The sweep, as invoked (`{COMMANDS_FILE}` of the sweep directory, one line per invocation):", ""]
        out += _code(invocations)
    trains = train_commands(runs)
    if trains:
        out += ["Each run's `train.py` overrides (`.hydra/overrides.yaml`), the seeds of otherwise equal runs merged:"]
        out += ["", *_code(trains)]
    return [*out, "This page:", "", *_code([command])]


def machine_section(runs: Sequence[Run]) -> list[str]:
    """What the runs recorded, and the machine generating the page."""
    intro = "As the runs recorded it (results.json, a resumed run's last attempt; values with their number of runs):"
    out = ["## Machine", "", intro, ""]
    out += [f"- {what}: {values}" for what, values in recorded_machine(runs)]
    return [*out, "", f"The machine that generated this page: {this_machine()}.", ""]


def compute_section(lines: Sequence[TableRow]) -> list[str]:
    intro = (
        "Completed runs; per run: wall time x torch threads x processes, over all its attempts, which counts the time"
        " a run sat paused or shared the machine with other work; at the median epoch time: the median seconds"
        " between two epoch ends x epochs x threads x processes, the run's own pace (start-up left out)."
    )
    return ["## Compute", "", intro, "", compute_table(lines), ""]


def curves_section(links: Sequence[str]) -> list[str]:
    """Links to the copied curves, and the plot shown where there is one."""
    if not links:
        return []
    listed = ", ".join(f"[{Path(link).name}]({link})" for link in links)
    plots = [f"![test error per epoch]({link})" for link in links if link.endswith(".png")]
    out = ["## Curves", "", f"Per run, per epoch (`python -m rectnet.analysis.curves`): {listed}.", ""]
    return out + ([*plots, ""] if plots else [])


def page_text(
    runs: Sequence[Run],
    filled: Sequence[FilledTable],
    extra: Sequence[TableRow],
    dirs: Sequence[Path],
    command: str,
    curve_links: Sequence[str] = (),
) -> str:
    """The page's Markdown (module docstring): commands, machine, compute, the tables with runs, curves."""
    measured = [t for t in filled if t.measured()]
    title = "; ".join(t.title for t in measured) or "Results of " + ", ".join(f"`{Path(d).name}`" for d in dirs)
    out = [f"# {title}", ""]
    out += [f"Generated from the run directories by `{command}`; regenerate it rather than edit it. "]
    out[-1] += f"{len(runs)} run directories: {runs_text(count_statuses(runs))}."
    out += ["", *commands_section(runs, dirs, command), *machine_section(runs)]
    out += compute_section([line for t in measured for line in t.lines] + list(extra))
    out += [table_section(t) for t in measured]
    out += [other_runs_section(extra)] if extra else []
    out += [*curves_section(curve_links), "## Legend", "", LEGEND, ""]
    return "\n".join(out)


def write_page(
    page: Path,
    runs: Sequence[Run],
    filled: Sequence[FilledTable],
    extra: Sequence[TableRow],
    dirs: Sequence[Path],
    argv: Sequence[str],
    curves: Path | None = None,
) -> Path:
    """Write the page (and copy the curves beside it); `argv` is the rectnet.tables command line it names."""
    page.parent.mkdir(parents=True, exist_ok=True)
    links = [os.path.relpath(p, page.parent) for p in copy_curves(curves, page)] if curves else []
    command = shlex.join(["python", "-m", "rectnet.tables", *argv])
    page.write_text(page_text(runs, filled, extra, dirs, command, links))
    return page
