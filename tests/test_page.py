"""rectnet.results.page (`python -m rectnet.tables DIR --page FILE`): the results page of a sweep, generated on
run directories fabricated as in test_tables.py: its commands, machine, CPU-hours (hand-computed, resumed runs
included), the tables exactly as tables.md prints them, and the curves copied beside it."""

from __future__ import annotations

import pytest
from test_tables import MINI_RUNS, make_miniature_sweep, make_run

from rectnet.results.cli import main
from rectnet.results.page import (
    cpu_hours,
    cpu_model,
    paced_cpu_minutes,
    recorded_machine,
    run_precision,
    run_seconds,
    this_machine,
    train_commands,
)
from rectnet.results.runs import Run, read_run, read_runs

# What train.py records in results.json, as far as the page reads it: 25 minutes on one thread, one process.
RECORDED = {
    "wall_time_s": 1500.0,
    "world_size": 1,
    "precision": "fp32",
    "hardware": {
        "platform": "Linux-6.1-x86_64",
        "processor": "x86_64",
        "cpu_model": "AMD EPYC 7B13",
        "cpu_native_bf16": [],
        "cpu_count": 2,
        "torch_threads": 1,
    },
    "versions": {"python": "3.11.7", "torch": "2.14.1"},
    "git": {"sha": "3413352", "dirty": False},
}


def _attempts(*attempts: list[tuple[int, float]]) -> list[dict]:
    """metrics.jsonl of a run trained in several attempts: (epoch, seconds since the attempt started) each."""
    return [{"epoch": e, "time_s": t, "test/top1_err": 50.0} for attempt in attempts for e, t in attempt]


def test_cpu_hours_count_every_attempt_of_a_resumed_run(tmp_path):
    # A: one attempt, 1800 s on 1 thread: 1800 CPU-s.
    # B: interrupted after epoch 2 (its attempt logged 100 s, 200 s), resumed from epoch 2's checkpoint and
    #    finished in 100 s (wall_time_s, which counts the last attempt only): 200 + 100 = 300 s x 2 threads = 600.
    # C: resumed twice (after epochs 1 and 3) on 1 thread x 2 processes: 50 + 80 + 35 = 165 s x 2 = 330.
    # D: no wall time recorded: not counted. Total 1800 + 600 + 330 = 2730 CPU-s = 0.758333 CPU-hours.
    a = make_run(tmp_path / "a", results={**RECORDED, "wall_time_s": 1800.0})
    b_log = _attempts([(1, 100.0), (2, 200.0)], [(3, 90.0)])
    b_results = {**RECORDED, "wall_time_s": 100.0, "resumed_from": [{"epoch": 2, "step": 0}]}
    b_results["hardware"] = {**RECORDED["hardware"], "torch_threads": 2}
    b = make_run(tmp_path / "b", seed=1, results=b_results, epochs_log=b_log)
    c_log = _attempts([(1, 50.0)], [(2, 40.0), (3, 80.0)], [(4, 30.0)])
    c_results = {**RECORDED, "wall_time_s": 35.0, "world_size": 2, "resumed_from": [{"epoch": 1}, {"epoch": 3}]}
    c = make_run(tmp_path / "c", seed=2, results=c_results, epochs_log=c_log)
    make_run(tmp_path / "d", seed=3)
    assert [run_seconds(read_run(p)) for p in (a, b, c)] == [1800.0, 300.0, 165.0]
    hours, unknown = cpu_hours(read_runs([tmp_path]))
    assert (hours, unknown) == (pytest.approx(2730 / 3600), 1)


def test_cpu_minutes_at_the_median_epoch_time_leave_out_a_pause_and_the_start_up(tmp_path):
    # H: epochs end at 100, 200, 1300 (paused 1000 s), 1400 s; resumed, ending epochs 5 and 6 at 30 and 130 s.
    #    Between epoch ends: 100, 1100, 100 and 100 s: median 100 s x 6 epochs x 2 threads = 1200 CPU-s = 20 min.
    #    Its wall time: 1400 + 130 s x 2 threads = 3060 CPU-s = 51 min.
    # I: 1 thread x 2 processes, one attempt ending epochs at 70, 130, 200 s: median of 60 and 70 = 65 s x 3 x 2
    #    = 390 CPU-s = 6.5 min. J: one epoch in each attempt: no time between two epoch ends.
    h_log = _attempts([(1, 100.0), (2, 200.0), (3, 1300.0), (4, 1400.0)], [(5, 30.0), (6, 130.0)])
    h_results = {**RECORDED, "wall_time_s": 130.0, "resumed_from": [{"epoch": 4}]}
    h_results["hardware"] = {**RECORDED["hardware"], "torch_threads": 2}
    h = read_run(make_run(tmp_path / "h", results=h_results, epochs_log=h_log))
    i_log = _attempts([(1, 70.0), (2, 130.0), (3, 200.0)])
    i = read_run(make_run(tmp_path / "i", seed=1, results={**RECORDED, "world_size": 2}, epochs_log=i_log))
    j_log = _attempts([(1, 70.0)], [(2, 60.0)])
    j = read_run(make_run(tmp_path / "j", seed=2, results=RECORDED, epochs_log=j_log))
    assert [paced_cpu_minutes(run) for run in (h, i, j)] == [20.0, 6.5, None]
    assert cpu_hours([h]) == (pytest.approx(3060 / 3600), 0)


def _attempt(epoch: int, threads: int, world_size: int = 1, cpu: str = "AMD EPYC 7B13", sha: str = "3413352") -> dict:
    """An entry of results.json's `attempts` as train.py writes it (record.attempt_record)."""
    hardware = {**RECORDED["hardware"], "torch_threads": threads, "cpu_model": cpu}
    return {
        "epoch": epoch,
        "step": 0,
        "world_size": world_size,
        "precision": "fp32",
        "git": {"sha": sha},
        "versions": RECORDED["versions"],
        "hardware": hardware,
    }


def test_cpu_hours_count_each_attempt_at_its_own_threads_and_processes(tmp_path):
    # E: 2 threads for its first attempt (logged 100 s, 200 s), resumed after epoch 2 on 1 thread x 2 processes
    #    for 100 s (wall_time_s): 200 x 2 + 100 x 1 x 2 = 600 CPU-s. Counted with the last attempt's cores
    #    throughout (what results.json's top level says) it would be 300 x 2 = 600 too: F tells them apart.
    # F: 4 threads for 300 s, resumed after epoch 3 on 1 thread for 50 s: 300 x 4 + 50 x 1 = 1250 CPU-s.
    # G: resumed twice from a checkpoint that predates the record (attempts: the stand-in, then the last one,
    #    1 thread): every attempt counts the last one's thread, (50 + 80 + 35) x 1 = 165 CPU-s.
    e_log = _attempts([(1, 100.0), (2, 200.0)], [(3, 90.0)])
    e_results = {**RECORDED, "wall_time_s": 100.0, "world_size": 2, "resumed_from": [{"epoch": 2}]}
    e_results["attempts"] = [_attempt(0, threads=2), _attempt(2, threads=1, world_size=2)]
    make_run(tmp_path / "e", seed=4, results=e_results, epochs_log=e_log)
    f_log = _attempts([(1, 100.0), (2, 200.0), (3, 300.0)], [(4, 45.0)])
    f_results = {**RECORDED, "wall_time_s": 50.0, "resumed_from": [{"epoch": 3}]}
    f_results["attempts"] = [_attempt(0, threads=4), _attempt(3, threads=1)]
    make_run(tmp_path / "f", seed=5, results=f_results, epochs_log=f_log)
    g_log = _attempts([(1, 50.0)], [(2, 40.0), (3, 80.0)], [(4, 30.0)])
    g_results = {**RECORDED, "wall_time_s": 35.0, "resumed_from": [{"epoch": 1}, {"epoch": 3}]}
    g_results["attempts"] = [{"epoch": 0, "step": 0, "recorded": False}, _attempt(3, threads=1)]
    make_run(tmp_path / "g", seed=6, results=g_results, epochs_log=g_log)
    hours, unknown = cpu_hours(read_runs([tmp_path]))
    assert (hours, unknown) == (pytest.approx((600 + 1250 + 165) / 3600), 0)


def test_a_run_resumed_on_another_machine_and_commit_shows_both_in_order(tmp_path):
    moved = {**RECORDED, "attempts": [_attempt(0, 1, cpu="Intel Xeon", sha="aaa"), _attempt(5, 1, sha="bbb")]}
    stayed = {**RECORDED, "attempts": [_attempt(0, 1), _attempt(5, 1)]}
    old = dict(RECORDED)  # from before the record: its top level, the last attempt's
    runs = [Run(tmp_path, "completed", config={}, results=r) for r in (moved, stayed, old)]
    machine = dict(recorded_machine(runs))
    assert machine["CPU model"] == "AMD EPYC 7B13 (2), Intel Xeon then AMD EPYC 7B13 (1)"
    assert machine["rectnet commit"] == "3413352 (2), aaa then bbb (1)"
    assert machine["torch threads per process"] == "1 (3)" and machine["precision as run"] == "fp32 (3)"


@pytest.mark.parametrize(
    ("configured", "recorded", "expected"),
    [
        ("auto", "bf16", "bf16"),  # what auto chose on that machine
        ("fp32", None, "fp32"),  # a run from before the record: a pinned precision is what it ran in
        ("auto", None, "not recorded (trainer.precision=auto)"),  # ...auto is not: it depended on the CPU
    ],
)
def test_the_precision_as_run_is_the_record_else_a_pinned_setting(tmp_path, configured, recorded, expected):
    results = {"status": "completed"} | ({"precision": recorded} if recorded else {})
    run = Run(tmp_path, "completed", config={"trainer": {"precision": configured}}, results=results)
    assert run_precision(run) == expected


def test_each_runs_cpu_and_bf16_flags_are_counted_and_older_runs_say_not_recorded(tmp_path):
    intel = {"cpu_model": "Intel Xeon", "cpu_native_bf16": ["avx512_bf16", "amx_bf16"]}
    runs = [
        Run(tmp_path, "completed", config={}, results={"hardware": hardware})
        for hardware in (intel, intel, {"cpu_model": "AMD EPYC", "cpu_native_bf16": []}, {"processor": "x86_64"})
    ]
    machine = dict(recorded_machine(runs))
    assert machine["CPU model"] == "Intel Xeon (2), AMD EPYC (1), not recorded (1)"
    assert machine["native bf16 flags"] == "avx512_bf16 and amx_bf16 (2), none (1), not recorded (1)"


def test_train_commands_merge_the_seeds_of_otherwise_equal_runs(tmp_path):
    make_miniature_sweep(tmp_path)
    for seed in (10, 2):  # numeric order, not text order
        make_run(tmp_path / f"q{seed}", seed=seed, overrides=["experiment=quickstart", f"seed={seed}"])
    commands = train_commands(read_runs([tmp_path]))
    assert len(commands) == len(MINI_RUNS) + 1
    assert (
        "python train.py -m experiment=convpool_crelu_half model.width=0.125 dataset=cifar10 trainer.epochs=10 "
        "'schedule.milestones=[6,7,9]' trainer.precision=fp32 seed=0,1,2" in commands
    )
    assert "python train.py -m experiment=quickstart seed=2,10" in commands


def test_the_page_says_how_it_was_made_and_holds_the_tables_with_runs(tmp_path):
    sweep, docs, curves = tmp_path / "sweeps" / "crelu_table1_mini", tmp_path / "docs", tmp_path / "curves"
    make_miniature_sweep(sweep, results=RECORDED)
    (sweep / "commands.txt").write_text("WIDTH_SCALE=0.25 EPOCHS=10 scripts/reproduce/crelu_table1_mini.sh  # t\n")
    curves.mkdir()
    (curves / "curves.md").write_text("# test/top1_err per epoch\n")
    (curves / "curves.png").write_bytes(b"\x89PNG\r\n")
    page = docs / "crelu_table1_mini.md"
    argv = [str(sweep), "--width-scale", "0.25", "--out", str(tmp_path / "tables"), "--page", str(page)]
    main([*argv, "--curves", str(curves)])
    text = page.read_text()

    title = "Shang et al. 2016, Table 1: ConvPool-CNN-C on CIFAR, error (%), miniature at 1/4 of the paper's width"
    assert text.startswith(f"# {title}, 10 epochs\n")
    assert "WIDTH_SCALE=0.25 EPOCHS=10 scripts/reproduce/crelu_table1_mini.sh  # t\n" in text
    assert "python train.py -m experiment=convpool_baseline model.width=0.25 dataset=cifar10 " in text
    assert f"python -m rectnet.tables {' '.join(argv)} --curves {curves}\n" in text
    for line in (
        "- CPU model: AMD EPYC 7B13 (14)",
        "- native bf16 flags: none (14)",
        "- torch threads per process: 1 (14)",
        "- precision as run: fp32 (14)",
        "- torch: 2.14.1 (14)",
        "- rectnet commit: 3413352 (14)",
    ):
        assert line in text
    assert "native bf16 flags:" in text
    # 14 runs x 1500 s x 1 thread = 21000 CPU-s = 5.83 CPU-hours; 3 baseline runs 1.25, 25.0 minutes each; no
    # run logged two epoch times in one attempt: no median epoch time
    assert "| Baseline | `convpool_cnn_c relu width=0.25` | 3 | 1.25 | 25.0 | — | 0 |" in text
    assert "| all | | 14 | 5.83 | | | 0 |" in text
    # Table 1 exactly as tables.md prints it; the tables without runs are left out
    tables = (tmp_path / "tables" / "tables.md").read_text()
    start = tables.index("## Shang et al. 2016, Table 1")
    section = tables[start : tables.index("\n## ", start)]
    assert section in text and "Table 2: VGG" not in text
    # the curves beside the page, linked from it
    assert (docs / "crelu_table1_mini" / "curves.png").read_bytes() == b"\x89PNG\r\n"
    assert "![test error per epoch](crelu_table1_mini/curves.png)" in text
    assert "[curves.md](crelu_table1_mini/curves.md)" in text


def test_curves_need_a_page(tmp_path, capsys):
    make_run(tmp_path / "r")
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "t"), "--curves", str(tmp_path)])
    assert "--curves goes with --page" in capsys.readouterr().err


def test_the_cpu_model_comes_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
    assert cpu_model(str(tmp_path / "absent")) is None
    assert " cores; native bf16 flags: " in this_machine()
