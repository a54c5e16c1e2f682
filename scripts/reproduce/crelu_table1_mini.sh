#!/usr/bin/env bash
# Shang et al. 2016 (CReLU), Table 1 in miniature, trained until it converges on a CPU (issue 20): the rows
# baseline, CReLU, + (half), AVR and, optionally, + (double) (configs/experiment/convpool_*.yaml), plus PReLU
# (He et al. 2015's PReLU < ReLU carried to ConvPool-CNN-C: configs/experiment/convpool_prelu.yaml), each at
# WIDTH_SCALE times its width, on all 50,000 CIFAR-10 training images, tested on all 10,000, with the recipe's
# schedule (configs/recipe/convpool.yaml: 350 epochs, lr x0.1 at 200, 250 and 300) compressed to EPOCHS.
#
#   scripts/reproduce/crelu_table1_mini.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Environment (besides common.sh's SWEEP_DIR, DRY_RUN, PYTHON; the default sweep is sweeps/crelu_table1_mini):
#   WIDTH_SCALE       each row's width x this (default 0.25): baseline, CReLU, AVR, PReLU at 0.25, + (half) at
#                     0.125, + (double) at 0.5; rectnet.tables --width-scale puts them in Table 1's rows
#   EPOCHS            epochs per run (default 10); lr x0.1 at round(EPOCHS x 200/350), round(EPOCHS x 250/350) and
#                     round(EPOCHS x 300/350), the recipe's milestones at the same fractions of the schedule
#   SEEDS             seeds of the baseline and CReLU (default 0,1,2,3,4: the claim CReLU < baseline needs them)
#   OTHER_SEEDS       seeds of + (half), AVR and PReLU (default 0,1,2; OTHER_SEEDS= runs none)
#   DOUBLE_SEEDS      seeds of + (double) (default none: a run costs about 4x a baseline run)
#   ONLY              the rows to run, comma-separated, among baseline, crelu, crelu_half, avr, prelu, double
#                     (default: every row with seeds), e.g. ONLY=crelu SEEDS=0 for CReLU's seed 0 alone
#   THREADS           trainer.threads (default 1)
#   JOBS              runs trained at once (default 1; common.sh): JOBS=2 THREADS=1 on a 2-core CPU
#   CHECKPOINT_EVERY  trainer.checkpoint_every_steps (default 300: ~4 minutes of a quarter-width baseline on one
#                     core, so an interruption loses minutes)
#   PAGE              the results page written at the end (default docs/results/crelu_table1_mini.md of this
#                     checkout; PAGE= writes none)
#   ARCHIVE           where the completed runs' records are kept beyond the git-ignored sweep directory (common.sh;
#                     default none): ARCHIVE=docs/results/crelu_table1_mini/runs, committed, is what the page is
#                     made from, and what a fresh clone restores so that it trains only the runs still missing
#
# Every run: dataset=cifar10 (whole splits), trainer.precision=fp32 (the same numbers on CPUs with and without
# native bf16), model.width set per row (the experiment files set 0.5 and 2.0 for half and double: each row is
# its own grid). Runs go seed by seed: seed 0 of every row, then seed 1 of every row, ..., so an interrupted
# sweep leaves every row with about as many seeds as the others (with JOBS > 1, each worker takes the next run
# in that order that no other worker holds). Re-running continues it: finished runs are
# skipped, an interrupted one resumes from its last checkpoint (common.sh); each invocation is appended to
# <sweep>/commands.txt, which the page quotes. At the end: learning curves (<sweep>/curves), the tables at the
# width scale (<sweep>/tables) and the page.
#
#   scripts/reproduce/crelu_table1_mini.sh --dry-run
#   EPOCHS=30 scripts/reproduce/crelu_table1_mini.sh dataset.root=data
#   EPOCHS=30 JOBS=2 scripts/reproduce/crelu_table1_mini.sh dataset.root=data
#   EPOCHS=30 JOBS=2 ARCHIVE=docs/results/crelu_table1_mini/runs scripts/reproduce/crelu_table1_mini.sh dataset.root=data
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup crelu_table1_mini "$@"

WIDTH_SCALE=${WIDTH_SCALE:-0.25}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-0,1,2,3,4}
OTHER_SEEDS=${OTHER_SEEDS-0,1,2}
DOUBLE_SEEDS=${DOUBLE_SEEDS:-}
ONLY=${ONLY:-}
THREADS=${THREADS:-1}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-300}
PAGE=${PAGE-$REPO/docs/results/crelu_table1_mini.md}

[[ $WIDTH_SCALE =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && awk -v s="$WIDTH_SCALE" 'BEGIN { exit !(s > 0) }' ||
    { echo "WIDTH_SCALE must be a number > 0, got '$WIDTH_SCALE'" >&2; exit 2; }
for name in EPOCHS THREADS CHECKPOINT_EVERY; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || { echo "$name must be a whole number > 0, got '${!name}'" >&2; exit 2; }
done
for name in SEEDS OTHER_SEEDS DOUBLE_SEEDS; do
    [[ -z ${!name} || ${!name} =~ ^[0-9]+(,[0-9]+)*$ ]] ||
        { echo "$name must be comma-separated seeds (0,1,2), got '${!name}'" >&2; exit 2; }
done

# more threads than cores: each run's OpenMP threads would wait on the others' (scripts/bench/threads.py).
# The cores this process may use (nproc counts OMP_NUM_THREADS instead where it is set).
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
if ((THREADS * ${JOBS:-1} > cores)); then
    echo "warning: JOBS=${JOBS:-1} x THREADS=$THREADS intra-op threads on $cores core(s): OpenMP threads will wait" \
        "on each other and every run slows down several times; THREADS x JOBS = the cores runs at full speed" >&2
fi

# relative PATH: PATH relative to the current directory when it lies under it (as the commands quoted on the page
# should read: sweeps/crelu_table1_mini, not the machine's absolute path), else absolute
relative() {
    "$PYTHON" -c 'import os, sys; p = os.path.relpath(sys.argv[1]); print(os.path.abspath(p) if p.startswith("..") else p)' "$1"
}

# milestone FRACTION: round(EPOCHS x FRACTION/350), FRACTION one of the recipe's 200, 250, 300. EPOCHS x 200/350
# is EPOCHS x 4/7 (5/7, 6/7): never halfway between two integers, so rounding half up is rounding.
milestone() { echo $(((EPOCHS * $1 * 2 + 350) / 700)); }

# row_width FACTOR: the width of a row whose recipe width is FACTOR (1, 0.5, 2), at WIDTH_SCALE
row_width() { awk -v s="$WIDTH_SCALE" -v f="$1" 'BEGIN { printf "%g", s * f }'; }

COMMON=(
    dataset=cifar10
    "trainer.epochs=$EPOCHS"
    "schedule.milestones=[$(milestone 200),$(milestone 250),$(milestone 300)]"
    trainer.precision=fp32
    "trainer.threads=$THREADS"
    "trainer.checkpoint_every_steps=$CHECKPOINT_EVERY"
)
# experiment, its width relative to the paper's baseline, its seeds; in the order each seed trains them
ROWS=(
    "convpool_baseline 1 $SEEDS"
    "convpool_crelu 1 $SEEDS"
    "convpool_crelu_half 0.5 $OTHER_SEEDS"
    "convpool_avr 1 $OTHER_SEEDS"
    "convpool_prelu 1 $OTHER_SEEDS"
    "convpool_double 2 $DOUBLE_SEEDS"
)
# a row's name in ONLY: its experiment without the convpool_ prefix
row_names=$(for row in "${ROWS[@]}"; do read -r experiment _ <<<"$row" && echo "${experiment#convpool_}"; done)
[[ -z $ONLY || $ONLY =~ ^[a-z_]+(,[a-z_]+)*$ ]] ||
    { echo "ONLY must be comma-separated row names (crelu,avr), got '$ONLY'" >&2; exit 2; }
for name in ${ONLY//,/ }; do
    grep -qx -- "$name" <<<"$row_names" ||
        { echo "ONLY must list rows among $(paste -s -d, <<<"$row_names"), got '$name'" >&2; exit 2; }
done

for seed in $(printf '%s\n' ${SEEDS//,/ } ${OTHER_SEEDS//,/ } ${DOUBLE_SEEDS//,/ } | sort -n -u); do
    for row in "${ROWS[@]}"; do
        read -r experiment factor seeds <<<"$row"
        [[ ,${seeds:-}, == *,$seed,* ]] || continue
        [[ -z $ONLY || ,$ONLY, == *,${experiment#convpool_},* ]] || continue
        queue_run "experiment=$experiment" "model.width=$(row_width "$factor")" "seed=$seed" "${COMMON[@]}"
    done
done
if ((${#QUEUE[@]} == 0)); then
    echo "nothing to run: no row${ONLY:+ of ONLY=$ONLY} has a seed (SEEDS=$SEEDS OTHER_SEEDS=$OTHER_SEEDS" \
        "DOUBLE_SEEDS=$DOUBLE_SEEDS)" >&2
    exit 2
fi

if [[ $DRY_RUN == 0 ]]; then
    mkdir -p "$SWEEP_DIR"
    invocation="WIDTH_SCALE=$WIDTH_SCALE EPOCHS=$EPOCHS SEEDS=$SEEDS OTHER_SEEDS=$OTHER_SEEDS DOUBLE_SEEDS=$DOUBLE_SEEDS"
    invocation+=" THREADS=$THREADS CHECKPOINT_EVERY=$CHECKPOINT_EVERY JOBS=${JOBS:-1}"
    [[ -z $ONLY ]] || invocation+=" ONLY=$ONLY"
    [[ -z $ARCHIVE ]] || invocation+=" ARCHIVE=$(relative "$ARCHIVE")"
    invocation+=" scripts/reproduce/crelu_table1_mini.sh"
    for arg in "$@"; do invocation+=" $(quote "$arg")"; done
    echo "$invocation  # $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$SWEEP_DIR/commands.txt"
fi

run_queue

# the curves, tables and page from the archive where there is one (common.sh: ARCHIVE), the committed record that a
# fresh clone regenerates them from; it holds the completed runs only
sweep=$(relative "$SWEEP_DIR") runs=$(relative "${ARCHIVE:-$SWEEP_DIR}")
show_or_run "$PYTHON" -m rectnet.analysis.curves "$runs" --out "$sweep/curves" || echo "no curves written" >&2
tables=("$runs" --width-scale "$WIDTH_SCALE" --out "$sweep/tables")
[[ -n $PAGE ]] && tables+=(--page "$(relative "$PAGE")" --curves "$sweep/curves")
show_or_run "$PYTHON" -m rectnet.tables "${tables[@]}"
finish
