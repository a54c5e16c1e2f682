"""C++ kernels built on the user's machine: compiled once with the system compiler, cached, loaded by ctypes.

rectnet ships kernel sources (`*.cpp` beside this file), not binaries: a build made here with -march=native
vectorizes for the CPU it runs on, and nothing has to be compiled at install time. The cache key holds the
source, the compiler, the flags and the CPU (model and flags), so a home directory shared by a cluster's
different nodes keeps one build per CPU kind, and an edited source is rebuilt.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

# Flags, most capable first: -march=native vectorizes for this CPU, -fopenmp runs on PyTorch's thread pool
# (the kernel links `libgomp.so.1`, the runtime PyTorch has already loaded: the loader shares a library by
# its soname; -fopenmp-simd: one thread, the `omp simd` loops still vectorized); a compiler without one gets
# the next set. -ffp-contract=off: no fused multiply-adds, whose single rounding would make sums differ from
# the plain formula's. -fno-trapping-math: GCC otherwise keeps a select on a float compare a branch (the
# compare may trap) and leaves the loops scalar; no result changes, only whether FP flags could be raised.
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math")
FLAG_SETS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-fopenmp-simd",), ())


def compiler() -> str | None:
    """The C++ compiler: $CXX, else g++, else clang++ (the order TorchInductor uses)."""
    for name in (os.environ.get("CXX", "g++"), "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir() -> Path:
    """Where built kernels are kept: $RECTNET_CACHE_DIR, else $XDG_CACHE_HOME/rectnet, else ~/.cache/rectnet."""
    if os.environ.get("RECTNET_CACHE_DIR"):
        return Path(os.environ["RECTNET_CACHE_DIR"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rectnet" / "kernels"


def _cpu_signature() -> str:
    """The CPU's model and flags: a library built with -march=native runs only where those match."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor() or platform.machine()


def _build(source: Path, cxx: str, flags: tuple[str, ...], directory: Path) -> Path:
    """The library of `source` built with these flags, compiled unless the cache holds it. Written under a
    temporary name and renamed: processes building at once (DDP ranks, a sweep) each see a whole file or none."""
    text = source.read_text()
    key = hashlib.sha256("\0".join([text, cxx, *flags, platform.machine(), _cpu_signature()]).encode())
    library = directory / f"{source.stem}_{key.hexdigest()[:20]}.so"
    if library.is_file():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        copy, built = Path(scratch) / source.name, Path(scratch) / f"{source.stem}.so"
        copy.write_text(text)
        command = [cxx, *BASE_FLAGS, *flags, str(copy), "-o", str(built)]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        os.replace(built, library)
    return library


def build_and_load(name: str) -> ctypes.CDLL:
    """`name`.cpp (beside this file) built and loaded: each flag set in the cache directory, then in a
    temporary one if the cache cannot be written. RuntimeError with the last compiler error when none builds."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler ($CXX, g++ or clang++)")
    source = Path(__file__).with_name(f"{name}.cpp")
    error: Exception | None = None
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"rectnet-kernels-{user}"):
        for flags in FLAG_SETS:
            try:
                return ctypes.CDLL(str(_build(source, cxx, flags, directory)))
            except (OSError, subprocess.SubprocessError) as err:
                error = err
    stderr = getattr(error, "stderr", "") or ""
    raise RuntimeError(f"{error} {stderr[-500:]}".strip())
