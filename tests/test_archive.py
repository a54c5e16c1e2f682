"""python -m rectnet.results.archive: a sweep's completed runs, without checkpoints, into a committed folder and back.
The tables read from the archive must be the tables read from the sweep, byte for byte."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat

import pytest
from helpers import ROOT
from test_page import RECORDED
from test_tables import make_miniature_sweep, make_run

from rectnet.results import archive
from rectnet.results.cli import main as tables_main
from rectnet.results.runs import read_run


@pytest.fixture
def grid():
    """scripts/reproduce/grid.py, whose status() decides which runs a reproduce script skips."""
    spec = importlib.util.spec_from_file_location("grid", ROOT / "scripts" / "reproduce" / "grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BULK = ("checkpoints/last.pt", "tb/events.out.tfevents.1", "train.log", "test_logits.pt")


def _sweep(root):
    """The miniature sweep, each completed run with the bulk a real one has, plus a failed and an unfinished run."""
    folders = make_miniature_sweep(root, results={**RECORDED, "epochs": 10})  # all 10 epochs run
    for folder in folders:
        for name in BULK:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x" * 100)
        (folder / "eval_center.json").write_text('{"top1_err": 50.0}')
    make_run(root / "failed_run", seed=7, status="failed")
    make_run(root / "unfinished_run", seed=8, status="missing")
    (root / "unfinished_run" / "checkpoints").mkdir()
    (root / "unfinished_run" / "checkpoints" / "last.pt").write_bytes(b"x")
    (root / "commands.txt").write_text("first  # 1\nsecond  # 2\n")
    return folders


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_the_archive_holds_the_completed_runs_records_and_the_same_tables(tmp_path):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    folders = _sweep(sweep)
    outcome = archive.sync(sweep, kept)

    assert sorted(outcome.copied) == sorted(f.name for f in folders)  # 14 completed; failed, unfinished left out
    assert (outcome.present, outcome.kept, outcome.commands_added) == ([], [], 2)
    expected = ["commands.txt"]
    for f in folders:
        expected += [f"{f.name}/{n}" for n in ("results.json", "metrics.jsonl", "eval_center.json")]
        expected += [f"{f.name}/.hydra/{n}" for n in ("config.yaml", "overrides.yaml")]
    assert _files(kept) == sorted(expected)  # no checkpoint, TensorBoard, train.log or logits
    for f in folders:
        for name in ("results.json", "metrics.jsonl"):
            assert (kept / f.name / name).read_bytes() == (f / name).read_bytes()

    for unfinished in ("failed_run", "unfinished_run"):  # what the archive leaves out, the tables count
        shutil.rmtree(sweep / unfinished)
    tables_main([str(sweep), "--width-scale", "0.25", "--out", str(tmp_path / "from_sweep")])
    tables_main([str(kept), "--width-scale", "0.25", "--out", str(tmp_path / "from_archive")])
    for name in ("tables.md", "crelu_table1.csv", "claims.csv"):
        ours, theirs = (tmp_path / d / name for d in ("from_sweep", "from_archive"))
        assert ours.read_text() == theirs.read_text(), name
    runs_csv = (tmp_path / "from_archive" / "runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 14


def test_a_restored_sweep_counts_its_runs_as_finished_and_a_second_sync_copies_nothing(tmp_path, grid):
    sweep, kept, fresh = tmp_path / "sweep", tmp_path / "kept", tmp_path / "fresh"
    folders = _sweep(sweep)
    archive.sync(sweep, kept)
    restored = archive.sync(kept, fresh)
    assert len(restored.copied) == 14
    for f in folders:
        assert read_run(fresh / f.name).status == "completed"
        assert grid.status(fresh / f.name) == "completed"  # what the reproduce scripts skip
    again = archive.sync(sweep, kept)
    assert (again.copied, len(again.present), again.kept, again.commands_added) == ([], 14, [], 0)


def test_a_run_the_destination_holds_is_never_touched(tmp_path):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    make_run(sweep / "same", seed=0, top1=30.0)
    make_run(sweep / "other", seed=1, top1=30.0)
    make_run(sweep / "resuming", seed=2, top1=30.0)
    make_run(kept / "same", seed=0, top1=30.0)
    make_run(kept / "other", seed=1, top1=31.0)  # the same place, other final numbers
    make_run(kept / "resuming", seed=2, status="missing")  # unfinished: its checkpoint would resume it
    before = {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()}

    outcome = archive.sync(sweep, kept)

    assert (outcome.copied, outcome.present) == ([], ["same"])
    assert sorted(line.split(":")[0] for line in outcome.kept) == ["other", "resuming"]
    assert "other final numbers" in next(line for line in outcome.kept if line.startswith("other"))
    assert "missing there" in next(line for line in outcome.kept if line.startswith("resuming"))
    assert before == {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()}


def test_an_interrupted_copy_leaves_nothing_that_reads_as_a_run(tmp_path, monkeypatch):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    make_run(sweep / "r", top1=30.0)
    real_copy = shutil.copy2
    calls = []

    def copy_then_fail(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(archive.shutil, "copy2", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        archive.sync(sweep, kept)
    assert list(kept.iterdir()) == []  # neither the run nor its staging folder
    monkeypatch.setattr(archive.shutil, "copy2", real_copy)
    assert archive.sync(sweep, kept).copied == ["r"]  # the next sync copies it whole


def test_archived_run_folders_get_the_umasks_mode_not_a_private_one(tmp_path):
    """A shared archive on disk must be readable by the group the umask lets in: with umask 022 every folder the
    archive creates is 0755 (0777 & ~022), as os.makedirs would make it; a private 0700 folder would not be."""
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    make_run(sweep / "grid" / "r", top1=30.0)
    old = os.umask(0o022)
    try:
        archive.sync(sweep, kept)
    finally:
        os.umask(old)
    folders = [kept / "grid", kept / "grid" / "r", kept / "grid" / "r" / ".hydra"]
    assert [stat.S_IMODE(f.stat().st_mode) for f in folders] == [0o755] * 3


def test_commands_are_merged_in_order_without_repeats(tmp_path):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    make_run(sweep / "r")
    kept.mkdir()
    (kept / "commands.txt").write_text("first  # 1\n")
    (sweep / "commands.txt").write_text("first  # 1\nsecond  # 2\n\nthird  # 3\n")
    assert archive.sync(sweep, kept).commands_added == 2
    assert (kept / "commands.txt").read_text() == "first  # 1\nsecond  # 2\nthird  # 3\n"


@pytest.mark.parametrize("layout", ["same", "inside", "missing"])
def test_bad_directories_are_refused_with_a_message(tmp_path, capsys, layout):
    sweep = tmp_path / "sweep"
    make_run(sweep / "r")
    dst = {"same": sweep, "inside": sweep / "archive", "missing": tmp_path / "kept"}[layout]
    src = tmp_path / "nowhere" if layout == "missing" else sweep
    with pytest.raises(SystemExit) as stop:
        archive.main([str(src), str(dst)])
    message = str(stop.value.code) if layout == "missing" else capsys.readouterr().err
    assert stop.value.code != 0
    assert ("is not a directory" if layout == "missing" else "lie one inside the other") in message
    assert not (sweep / "archive").exists()


def test_the_command_says_what_it_did(tmp_path, capsys):
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    make_run(sweep / "a", seed=0)
    make_run(sweep / "b", seed=1)
    make_run(kept / "b", seed=1, top1=99.0)
    archive.main([str(sweep), str(kept)])
    out, err = capsys.readouterr()
    assert "1 run(s) copied, 0 there already, 1 kept as they were; 0 line(s) added to commands.txt" in out
    assert err.startswith("kept: b: completed there with other final numbers")
    assert json.loads((kept / "a" / "results.json").read_text())["final"]["top1_err"] == 10.0
