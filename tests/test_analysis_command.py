"""What every analysis command line shares (`rectnet.analysis.command`, `rectnet.analysis.plotting`): the tables
are written without matplotlib, which is not a dependency, and an unusable input ends in one error line."""

from __future__ import annotations

import json

import pytest
import torch

from rectnet.analysis import curves, plotting, slopes


def _run_with_metrics(folder, errors: list[float]):
    """A finished run directory as train.py leaves it, as far as the curves read it."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": "completed"}))
    lines = [json.dumps({"epoch": epoch, "test/top1_err": err}) for epoch, err in enumerate(errors, 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_without_matplotlib_the_tables_are_written_and_the_missing_png_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plotting, "pyplot", lambda: None)  # as where matplotlib is not installed
    _run_with_metrics(tmp_path / "runs" / "a", [90.0, 80.0])
    out = tmp_path / "curves"
    curves.main([str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "curves.md"]
    assert printed[-2] == f"written: {out / 'curves.csv'}, {out / 'curves.md'} (no PNG: matplotlib not installed)"
    assert json.loads(printed[-1])["runs"][0]["final"] == 80.0  # the final JSON line all the same


def test_an_unusable_input_ends_with_its_message_and_no_json_line(tmp_path, capsys):
    _run_with_metrics(tmp_path / "a", [90.0])
    with pytest.raises(SystemExit) as stop:
        curves.main([str(tmp_path), "--metric", "val/top1_err", "--out", str(tmp_path / "curves")])
    assert stop.value.code == f"error: no run under {tmp_path} logged 'val/top1_err' in metrics.jsonl"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content", ["foreign", "flipped"])
def test_a_damaged_or_foreign_checkpoint_ends_an_analysis_in_one_line(tmp_path, capsys, content):
    # the analyses read checkpoints through the checks a resume makes: a dict without rectnet's entries, or a
    # saved file with one byte of a tensor changed (torch.load reads it silently), is named, not analysed
    path = tmp_path / "last.pt"
    torch.save({"weights": torch.ones(64)}, path)
    if content == "flipped":
        data = bytearray(path.read_bytes())
        at = data.index(torch.ones(64).numpy().tobytes())  # the tensor's stored bytes
        data[at] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as stop:
        slopes.main([str(path)])
    reason = "is corrupted: the content of" if content == "flipped" else "is not a rectnet checkpoint (missing model"
    assert stop.value.code.startswith(f"error: {path} {reason}"), stop.value.code
    assert capsys.readouterr().out == ""
