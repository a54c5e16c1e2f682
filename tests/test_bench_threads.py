"""scripts/bench/threads.py: each case launches the processes it names, with the thread count and wait policy it
names, and each ratio is the quotient of the mean steps/s printed for its two cases."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("bench.threads")


def test_the_cases_and_ratios_from_the_printed_rates(bench, monkeypatch, capsys):
    launched = []
    # made-up steps/s per (threads, copies, passive): what each case's processes report
    rates = {(2, 1, False): [20.0], (1, 1, False): [12.0], (2, 2, False): [0.8, 1.0], (1, 2, False): [11.0, 12.0]}
    rates |= {(2, 1, True): [10.0], (2, 2, True): [8.0, 9.0]}

    def fake(net, threads, copies, passive, args):
        launched.append((net, threads, copies, passive))
        return rates[threads, copies, passive]

    monkeypatch.setattr(bench, "run_processes", fake)
    result = bench.main(["--threads", "2", "--nets", "plain30", "convpool"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    assert sorted(launched) == sorted((net, *spec) for net in ("plain30", "convpool") for spec in rates)
    plain30 = result["nets"][0]
    assert plain30["steps_per_s"]["side_by_side_2t"] == [0.8, 1.0]
    assert plain30["ratios"] == {
        "side_by_side_over_alone_2t": 0.045,  # (0.8 + 1.0) / 2 / 20
        "side_by_side_over_alone_1t": 0.958,  # 11.5 / 12
        "passive_over_default_alone_2t": 0.5,  # 10 / 20
        "passive_side_by_side_over_alone_2t": 0.425,  # 8.5 / 20
    }


def test_a_measuring_process_trains_and_reports_its_rate():
    """The child as the benchmark starts it: a fresh interpreter that trains the net and prints steps/s."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "threads.py"), "--child", "plain30", "1", "0.2", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) > 0


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--seconds", "0"], ["--nets", "resnet"]])
def test_bad_arguments_are_refused(bench, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and "error" in capsys.readouterr().err
