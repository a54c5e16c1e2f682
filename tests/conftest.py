"""Fixtures shared by the tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_reaches_the_processes_tests_start():
    """Tests press Ctrl-C on the processes they start (SIGINT, as a terminal sends it to its foreground job).
    Started in the background of a non-interactive shell (`pytest &`, `nohup ... &`), pytest inherits SIGINT
    ignored, every child would inherit that too, and train.py keeps an inherited-ignored SIGINT ignored by design:
    those tests would see nothing happen. A handled SIGINT is reset to the default in a child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(autouse=True)
def fp32_unless_pinned(monkeypatch):
    """trainer.precision=auto reads as fp32 in-process: tests compare numbers computed in fp32, and this
    machine's avx512_bf16 would make auto pick bf16 (tests of the choice patch the flags themselves)."""
    from rectnet.engine import runtime

    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: [])


@pytest.fixture(autouse=True)
def fused_prelu_as_found(monkeypatch):
    """A run's trainer.fused_prelu is a process-wide switch (make_runtime sets it); in-process runs must not
    pass their choice on to the next test."""
    from rectnet.layers import fused

    monkeypatch.setattr(fused, "_enabled", fused._enabled)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: small tensors gain nothing from two, and lose a lot on a shared, busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_cifar10(tmp_path_factory) -> Path:
    """Real CIFAR-10 converted from ../shared/data (skips when ../shared is absent)."""
    archive = SHARED / "data" / "cifar10-jpg.tar.gz"
    tool = SHARED / "tools" / "make_cifar10.py"
    if not archive.is_file() or not tool.is_file():
        pytest.skip("../shared/data/cifar10-jpg.tar.gz is not here")
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, str(tool), "--out", str(out)], check=True, capture_output=True, timeout=600)
    return out
