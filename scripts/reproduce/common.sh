# shellcheck shell=bash
# Shared by scripts/reproduce/<paper>_<table>.sh (sourced, not run): options, the re-runnable sweep, evaluation
# with eval.py, tables. Every script accepts
#
#   [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# and these environment variables:
#
#   SWEEP_DIR   the sweep directory (default: sweeps/<script name>, under the current directory)
#   DRY_RUN=1   print the commands instead of running them (same as --dry-run)
#   SEEDS       seeds of the grid (each script has its default)
#   LAUNCHER    basic (default: Hydra's, the jobs one after another in this process), local (submitit on this
#               machine: GPUS processes per job) or slurm (one SLURM job per run: add hydra.launcher.partition=...
#               and other configs/hydra/launcher/slurm.yaml settings as overrides)
#   JOBS        runs trained at once on this machine by scripts that queue their runs (queue_run, run_queue:
#               crelu_table1_mini.sh), default 1: JOBS worker processes take the queued runs in order, each the
#               next one that nobody is training (a CPU with cores to spare: THREADS x JOBS = the cores). Those
#               scripts need LAUNCHER=basic; the workers share the machine's devices
#   GPUS        processes (= GPUs) per run, default 1. The recipes state their global mini-batch
#               (trainer.batch_size=128, batch_scope=global): each process takes 128/GPUS; a GPUS that does not divide it
#               is refused. A sweep directory may be continued with another GPUS: run directory names do not
#               depend on it, and a run resumes exactly on any number of processes.
#   ARCHIVE     a folder that keeps the record files of the sweep's completed runs (results.json, metrics.jsonl,
#               .hydra/, eval_*.json; no checkpoints) where a git-ignored sweep directory would be lost, e.g.
#               docs/results/<page>/runs, committed: restored into the sweep before it trains, so that a fresh
#               clone skips those runs, and brought up to date after every run that completes
#               (python -m rectnet.results.archive). Default: none
#   PYTHON      the interpreter (default: .venv/bin/python of the repository if present, else python)
#   EVAL_CMD    how eval.py is started (default: "$PYTHON <repo>/eval.py"; e.g. "srun --gres=gpu:1 python eval.py")
#   EVAL_ARGS   extra overrides for eval.py, space-separated (dataset.root=... is passed on from OVERRIDEs)
#
# Overrides go to every train.py run (e.g. dataset.root=/data/imagenet trainer.precision=bf16); one that names a
# key of the grid replaces the grid's values (seed=0 runs only seed 0). Each run's directory is
# <sweep dir>/<its overrides> (scripts/reproduce/grid.py), so re-running a script skips finished runs, resumes
# interrupted ones from checkpoints/last.pt and re-does failed ones; do not re-run while jobs of a previous
# invocation are still queued or running on SLURM (both would write the same run directories).
# Evaluation scores the final model (checkpoints/last.pt), as the papers report it: eval.py's default, best.pt,
# is chosen on the test split (ImageNet's validation set) and would select on the numbers being reported.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi

# reproduce_setup NAME "$@": reads the options, sets SWEEP_DIR, DRY_RUN, EXTRA (the pass-through overrides) and
# LAUNCH (the overrides every sweep gets: its directory, the stable run names, the launcher).
reproduce_setup() {
    local name=$1
    shift
    DRY_RUN=${DRY_RUN:-0}
    SWEEP_DIR=${SWEEP_DIR:-sweeps/$name}
    EXTRA=()
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --sweep-dir) SWEEP_DIR=${2:?--sweep-dir needs a directory}; shift ;;
            --sweep-dir=*) SWEEP_DIR=${1#--sweep-dir=} ;;
            -h | --help) sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; exit 0 ;;
            -*) echo "$0: unknown option $1 (overrides have no leading dash; see --help)" >&2; exit 2 ;;
            *) EXTRA+=("$1") ;;
        esac
        shift
    done
    [[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || { echo "DRY_RUN must be 0 or 1" >&2; exit 2; }
    [[ ${JOBS:-1} =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be a whole number > 0, got '$JOBS'" >&2; exit 2; }
    SWEEP_DIR=$("$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$SWEEP_DIR")
    ARCHIVE=${ARCHIVE:-}
    [[ -z $ARCHIVE ]] || ARCHIVE=$("$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$ARCHIVE")

    local gpus=${GPUS:-1} launcher=${LAUNCHER:-basic}
    LAUNCH=(
        "hydra.sweep.dir=$SWEEP_DIR"
        'hydra.sweep.subdir=${hydra.job.override_dirname}'
        "hydra.job.config.override_dirname.exclude_keys=[$("$PYTHON" "$REPO/scripts/reproduce/grid.py" exclude-keys)]"
    )
    case $launcher in
        basic) ((gpus == 1)) || { echo "GPUS=$gpus needs LAUNCHER=local or LAUNCHER=slurm" >&2; exit 2; } ;;
        local | slurm)
            LAUNCH+=("hydra/launcher=$launcher" "hydra.launcher.tasks_per_node=$gpus" "hydra.launcher.gpus_per_node=$gpus")
            ;;
        *) echo "LAUNCHER must be basic, local or slurm, got $launcher" >&2; exit 2 ;;
    esac
    echo "sweep directory: $SWEEP_DIR (how far it has got, at any time: python -m rectnet.results.progress $(quote "$SWEEP_DIR"))" >&2
}

# quote ARG: ARG as the shell reads it back: unchanged when it is plain, else in single quotes.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./=,:@+%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# show_or_run CMD...: prints the command (copy-pasteable), and runs it unless this is a dry run. Commands run in
# the current directory, so relative paths in overrides (dataset.root=data) mean what they say.
show_or_run() {
    local arg line="+"
    for arg in "$@"; do line+=" $(quote "$arg")"; done
    echo "$line"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# grid_py COMMAND [OPTION...] -- OVERRIDE...: scripts/reproduce/grid.py's NUL-separated answer, one item per element
# in the array GRID_OUT (the pass-through overrides are added); stops the script if grid.py fails.
grid_py() {
    local answer
    answer=$(mktemp)
    if ! "$PYTHON" "$REPO/scripts/reproduce/grid.py" "$@" "${LAUNCH[@]}" "${EXTRA[@]}" >"$answer"; then
        rm -f "$answer"
        echo "scripts/reproduce/grid.py failed" >&2
        exit 1
    fi
    mapfile -d '' GRID_OUT <"$answer"
    rm -f "$answer"
}

# archive_restore / archive_save: with ARCHIVE set, the completed runs it holds into the sweep directory (those the
# sweep lacks), and the sweep's completed runs into it; a failed save warns and training goes on.
archive_restore() {
    [[ -n $ARCHIVE && -d $ARCHIVE ]] || return 0
    show_or_run "$PYTHON" -m rectnet.results.archive "$ARCHIVE" "$SWEEP_DIR" >&2
}
archive_save() {
    [[ -n $ARCHIVE ]] || return 0
    show_or_run "$PYTHON" -m rectnet.results.archive "$SWEEP_DIR" "$ARCHIVE" >&2 ||
        echo "warning: could not update the archive $ARCHIVE (the sweep directory keeps the runs)" >&2
}

# train_grid OVERRIDE...: `train.py -m` over the grid (plus the pass-through overrides), launching only the
# smallest sub-grid that covers the runs not yet finished; nothing when every run is.
train_grid() {
    archive_restore
    [[ $DRY_RUN == 1 ]] || grid_py queue --sweep-dir "$SWEEP_DIR" -- "$@"  # progress.py lists the runs not started yet
    grid_py pending --sweep-dir "$SWEEP_DIR" -- "$@"  # GRID_OUT: what train.py -m launches
    if ((${#GRID_OUT[@]} == 0)); then
        echo "every run of this grid has finished: nothing to train" >&2
        return 0
    fi
    local status=0
    show_or_run "$PYTHON" "$REPO/train.py" -m "${GRID_OUT[@]}" || status=$?
    archive_save
    if ((status == 130 || status == 143)); then  # a run stopped at a checkpoint by Ctrl-C or SIGTERM: so does the sweep
        echo "stopped by a signal: re-run this script to continue (finished runs are kept)" >&2
        exit $status
    elif ((status)); then
        # Hydra runs every job and then reports the first failure: go on with the finished runs, fail at the end
        echo "some runs failed (see FAILED in their run directories); evaluating and tabulating the others" >&2
        SWEEP_FAILED=1
    fi
}

# queue_run OVERRIDE...: adds one run (one value per key) to the queue that run_queue trains, in the order queued.
QUEUE=()
queue_run() {
    local IFS=$'\x1f'  # overrides hold commas, brackets and spaces, never this
    QUEUE+=("$*")
}

# run_queue: trains the queued runs, each as a single `train.py` run in <sweep dir>/<its overrides> (the directory
# a sweep of the same overrides would use: grid.py), skipping finished runs and resuming interrupted ones, by JOBS
# workers (default 1). A worker trains a run while it holds <sweep dir>/.claims/<run name> with flock(1) and
# passes over a run whose claim another worker holds, of this invocation or of another one started on the same
# sweep; the kernel drops a claim when its holder exits, killed or not, so a claim is never stale (without
# flock(1), JOBS=1 trains every run in turn and train.py's run-directory lock still refuses a second owner). With
# JOBS > 1 each worker writes to <sweep dir>/workers/<n>.log and this prints which worker took which run; Ctrl-C
# or SIGTERM stops every run at a checkpoint (train.py's SIGTERM handling). Sets SWEEP_FAILED when a run failed.
run_queue() {
    local jobs=${JOBS:-1} failed n code status=0 claims=1
    [[ ${LAUNCHER:-basic} == basic ]] ||
        { echo "this script trains its runs one by one on this machine: it needs LAUNCHER=basic" >&2; exit 2; }
    archive_restore
    if [[ $DRY_RUN == 1 ]]; then
        _queue_worker "" "" 0
        return
    fi
    local listed
    listed=$(mktemp)
    printf '%s\n' "${QUEUE[@]}" >"$listed"
    grid_py queue --sweep-dir "$SWEEP_DIR" --jobs "$listed" --  # progress.py lists the runs not started yet
    rm -f "$listed"
    if ! command -v flock >/dev/null; then
        ((jobs == 1)) || { echo "JOBS=$jobs needs flock(1) (util-linux) to share the runs out; use JOBS=1" >&2; exit 2; }
        claims=0
    fi
    ((claims == 0)) || mkdir -p "$SWEEP_DIR/.claims"
    ((jobs == 1)) || mkdir -p "$SWEEP_DIR/workers"
    failed=$(mktemp -d)  # runs that failed in this invocation: the other workers do not retry them
    # The workers run in the background, even one, each in a process group of its own (set -m): bash runs a trap
    # only once the command it waits for returns, while `wait` returns at once on a signal; and the trap can stop a
    # worker with all it started, without signalling whoever started this script
    trap '_stop_workers 130' INT
    trap '_stop_workers 143' TERM
    WORKERS=()
    set -m
    for ((n = 1; n <= jobs; n++)); do
        # a worker outlives the SIGTERM until its train.py has saved its checkpoint and stopped, and starts no
        # other run after it (STOPPING)
        if ((jobs == 1)); then
            { trap 'STOPPING=1' TERM; _queue_worker "$failed" "" "$claims"; } &
        else
            { trap 'STOPPING=1' TERM; _queue_worker "$failed" "$n" 1; } 3>&2 >"$SWEEP_DIR/workers/$n.log" 2>&1 &
        fi
        WORKERS+=($!)
    done
    set +m
    for n in "${WORKERS[@]}"; do
        code=0
        wait "$n" || code=$?
        ((code <= status)) || status=$code
    done
    trap - INT TERM
    rm -rf "$failed"
    if ((status > 1)); then  # a run stopped by a signal (130, 143): so does the script, before the tables
        echo "stopped by a signal: re-run this script to continue (finished runs are kept)" >&2
        exit $status
    fi
    ((status == 0)) || SWEEP_FAILED=1
    ((claims == 0)) || _report_busy
}

# _queue_worker FAILED_DIR NUMBER CLAIMS: one worker's pass over the queue; status 1 when a run it trained failed,
# 130 or 143 when a run was stopped by SIGINT or SIGTERM (the worker stops with it).
# NUMBER names the worker in the lines it prints to the script's stderr (fd 3); CLAIMS=0 takes no claims.
_queue_worker() {
    local failed=$1 number=$2 claims=$3 entry state dir name fd status=0 failures=0
    local -a run
    for entry in "${QUEUE[@]}"; do
        ((${STOPPING:-0} == 0)) || return 143
        IFS=$'\x1f' read -ra run <<<"$entry"
        grid_py state --sweep-dir "$SWEEP_DIR" -- "${run[@]}"
        state=${GRID_OUT[0]} dir=${GRID_OUT[1]} name=${GRID_OUT[1]##*/}
        if [[ $state == completed || -e $failed/$name ]]; then continue; fi
        if ((claims)); then
            exec {fd}>"$SWEEP_DIR/.claims/$name"
            if ! flock -n "$fd"; then
                exec {fd}>&-
                continue
            fi
            grid_py state --sweep-dir "$SWEEP_DIR" -- "${run[@]}"  # again: it may have finished since
            state=${GRID_OUT[0]}
            if [[ $state == completed || ${STOPPING:-0} == 1 ]]; then
                exec {fd}>&-
                continue
            fi
        fi
        [[ -n $number ]] && echo "worker $number: $name ($state)" >&3
        # the directory through the environment (configs/train.yaml): as an override, its '=' and ',' would need
        # Hydra's quoting
        show_or_run env "RECTNET_RUN_DIR=$dir" "$PYTHON" "$REPO/train.py" "${run[@]}" "${EXTRA[@]}" || status=$?
        if ((claims)); then exec {fd}>&-; fi
        if ((status == 130 || status == 143)); then  # stopped by Ctrl-C or SIGTERM at a checkpoint: stop here too
            echo "stopped: $dir holds a checkpoint; re-run this script to continue" >&2
            return $status
        elif ((status)); then
            echo "failed: $dir (see its FAILED)" >&2
            : >"$failed/$name"
            failures=1 status=0
        else
            archive_save
        fi
    done
    return $failures
}

# _stop_workers STATUS: Ctrl-C or SIGTERM while workers run: SIGTERM to each worker's process group (the worker and
# its train.py, which saves a checkpoint and stops), wait for the workers, exit with STATUS.
_stop_workers() {
    local pid
    trap '' INT TERM
    echo "stopping: each run in training saves a checkpoint; re-run this script to continue" >&2
    for pid in "${WORKERS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait
    exit "$1"
}

# _report_busy: names the queued runs that another invocation is still training (their claims are held).
_report_busy() {
    local entry busy=0
    local -a run
    for entry in "${QUEUE[@]}"; do
        IFS=$'\x1f' read -ra run <<<"$entry"
        grid_py state --sweep-dir "$SWEEP_DIR" -- "${run[@]}"
        if [[ ${GRID_OUT[0]} != completed ]] && ! flock -n "$SWEEP_DIR/.claims/${GRID_OUT[1]##*/}" true; then
            echo "still training in another invocation on this sweep: ${GRID_OUT[1]##*/}" >&2
            busy=1
        fi
    done
    ((busy == 0)) || echo "the tables leave those runs out: re-run this script once they finish" >&2
}

# grid_runs OVERRIDE...: the run directories of a grid in GRID_OUT: the finished ones (every one in a dry run).
grid_runs() {
    local only=(--completed)
    [[ $DRY_RUN == 1 ]] && only=()
    grid_py runs "${only[@]}" --sweep-dir "$SWEEP_DIR" -- "$@"
}

# evaluate PROTOCOL [TAG] [OVERRIDE...] -- GRID...: eval.py on every finished run of the grid that lacks
# eval_<PROTOCOL>.json, or eval_<PROTOCOL>_<TAG>.json when TAG is given (eval.py writes eval_dense_s<S>.json
# for a dense test at the single scale S: TAG s<S>).
evaluate() {
    local protocol=$1 tag="" args=() eval_cmd=() extra_eval=() passed=() runs=() run out
    shift
    while (($#)) && [[ $1 != -- ]]; do
        if [[ -z $tag && ${#args[@]} == 0 && $1 != *=* ]]; then tag=$1; else args+=("$1"); fi
        shift
    done
    shift  # --
    read -ra eval_cmd <<<"${EVAL_CMD:-$PYTHON $REPO/eval.py}"
    read -ra extra_eval <<<"${EVAL_ARGS:-}"
    for arg in "${EXTRA[@]}"; do [[ $arg == dataset.root=* ]] && passed+=("$arg"); done
    grid_runs "$@"
    runs=("${GRID_OUT[@]}")
    for run in "${runs[@]}"; do
        out="$run/eval_${protocol}${tag:+_$tag}.json"
        if [[ -f $out ]]; then
            echo "already evaluated: $out" >&2
            continue
        fi
        local cmd=("${eval_cmd[@]}" "run_dir=$run" "checkpoint=$run/checkpoints/last.pt" "eval.protocol=$protocol")
        cmd+=("${args[@]}" "${passed[@]}" "${extra_eval[@]}")
        show_or_run "${cmd[@]}"
    done
}

# single_protocol EXPERIMENTS DATASETS SEEDS (comma lists): the CReLU paper's "Single" protocol (scripts/reproduce/single.sh)
# over a grid. Stage 1 (every experiment x dataset x seed): train on all folds but one (SINGLE_FOLDS, default 5)
# and record the training loss at the best held-out error. Stage 2, per stage-1 run: retrain from scratch on
# every image until the held-out loss reaches that value. rectnet.tables reads stage 2 as "Single".
single_protocol() {
    local stage1=("dataset.num_folds=${SINGLE_FOLDS:-5}" dataset.fold=0) experiment dataset seed target
    local -A staged=()  # stage-1 runs already given their stage 2: pass-through overrides can merge cells
    train_grid "experiment=$1" "dataset=$2" "seed=$3" "${stage1[@]}" trainer.record_train_loss_at_best=true
    for experiment in ${1//,/ }; do
        for dataset in ${2//,/ }; do
            for seed in ${3//,/ }; do
                local cell=("experiment=$experiment" "dataset=$dataset" "seed=$seed" "${stage1[@]}")
                grid_runs "${cell[@]}" trainer.record_train_loss_at_best=true
                if ((${#GRID_OUT[@]} == 0)); then
                    echo "Single: stage 1 of ${cell[*]} has not finished; no stage 2" >&2
                    continue
                fi
                [[ -n ${staged[${GRID_OUT[0]}]:-} ]] && continue
                staged[${GRID_OUT[0]}]=1
                target=0.0  # a dry run shows 0.0 where stage 1's recorded loss goes
                if [[ $DRY_RUN == 0 ]]; then
                    target=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["train_loss_at_best"])' \
                        "${GRID_OUT[0]}/results.json")
                fi
                train_grid "${cell[@]}" dataset.holdout_in_train=true "trainer.stop_at_val_loss=$target"
            done
        done
    done
}

# cifar_table EXPERIMENTS (comma list): the CReLU paper's CIFAR tables (1 and 2). Each experiment x CIFAR-10/100
# x SEEDS (default 0,1,2) for "Single" (SINGLE=1: the two-stage protocol, single_protocol), x 10 folds (FOLDS,
# default 0..9, empty skips them; seeds FOLD_SEEDS, default 0) for "Average" and "Vote"; then the tables.
cifar_table() {
    local datasets=cifar10,cifar100 seeds=${SEEDS:-0,1,2} folds=${FOLDS-0,1,2,3,4,5,6,7,8,9}
    if [[ ${SINGLE:-0} == 1 ]]; then
        single_protocol "$1" "$datasets" "$seeds"
    else  # "Single" approximated by the recipe's fixed schedule on the whole training split
        train_grid "experiment=$1" "dataset=$datasets" "seed=$seeds"
    fi
    if [[ -n $folds ]]; then
        train_grid "experiment=$1" "dataset=$datasets" "seed=${FOLD_SEEDS:-0}" dataset.num_folds=10 "dataset.fold=$folds"
    fi
    tables
}

# finish: the script's exit status: 1 when a run of its grids failed.
finish() {
    if [[ ${SWEEP_FAILED:-0} == 1 ]]; then
        echo "done, but some runs failed: re-run this script to retry them (finished runs are kept)" >&2
        exit 1
    fi
}

# tables: the papers' tables from everything in the sweep directory, written to <sweep dir>/tables.
tables() {
    show_or_run "$PYTHON" -m rectnet.tables "$SWEEP_DIR" --out "$SWEEP_DIR/tables"
}
