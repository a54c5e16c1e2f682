"""What sharing the cores costs a training process: its steps/s alone, and beside a second process just like it.

    python scripts/bench/threads.py [--threads N] [--seconds 10] [--nets plain30 convpool] [--batch 64]

Two of rectnet's nets train on random 32x32 batches (forward, backward, SGD step): `plain30`, He et al. 2015's
30-layer plain net at 1/8 width (Fig. 3's miniature: many small layers, so many short OpenMP parallel regions
per step) and `convpool`, ConvPool-CNN-C at 1/4 width (fewer, larger convolutions). Per net, each in fresh
interpreters (OpenMP reads its environment when torch loads):

* `alone`: one process with N intra-op threads (default: the cores this process may use), and with one;
* `side_by_side`: two such processes at once, with N threads each and with one each;
* `side_by_side_passive`: two N-thread processes under OMP_WAIT_POLICY=PASSIVE (a thread that waits at
  the end of a parallel region sleeps at once instead of spinning first), and `alone_passive` for its cost.

Each process reports its median steps/s over `--seconds` of steps after two warm-up steps. The JSON (last line)
gives them and `ratios` (steps/s of a process beside another over steps/s alone, at the same thread count):
with more threads than cores, an OpenMP thread waits at every region's end for a partner that another process
holds off its core. Run it on an otherwise idle machine; the numbers in README.md ("Benchmark") came from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's rectnet, as train.py from its root imports it

NETS = {  # name: (rectnet model, width)
    "plain30": ("prelu_plain30", 0.125),
    "convpool": ("convpool_cnn_c", 0.25),
}


def measure(net: str, threads: int, seconds: float, batch: int) -> float:
    """Median steps/s of one training process (runs in the child interpreter)."""
    import torch

    from rectnet.models.zoo import create

    torch.set_num_threads(threads)
    name, width = NETS[net]
    model = create(name, num_classes=10, width=width, dropout=0.0).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def run_processes(net: str, threads: int, copies: int, passive: bool, args: argparse.Namespace) -> list[float]:
    """steps/s of each of `copies` processes started together (one: the process alone)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--child", net, str(threads), str(args.seconds), str(args.batch)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"threads.py: a measuring process failed ({' '.join(cmd)})")
        rates.append(round(float(out.strip()), 2))
    return rates


def bench_net(net: str, args: argparse.Namespace) -> dict:
    n = args.threads
    cases = {
        f"alone_{n}t": (n, 1, False),
        "alone_1t": (1, 1, False),
        f"side_by_side_{n}t": (n, 2, False),
        "side_by_side_1t": (1, 2, False),
        f"alone_passive_{n}t": (n, 1, True),
        f"side_by_side_passive_{n}t": (n, 2, True),
    }
    steps = {case: run_processes(net, *spec, args) for case, spec in cases.items()}
    mean = {case: statistics.fmean(rates) for case, rates in steps.items()}
    ratios = {
        f"side_by_side_over_alone_{n}t": mean[f"side_by_side_{n}t"] / mean[f"alone_{n}t"],
        "side_by_side_over_alone_1t": mean["side_by_side_1t"] / mean["alone_1t"],
        f"passive_over_default_alone_{n}t": mean[f"alone_passive_{n}t"] / mean[f"alone_{n}t"],
        f"passive_side_by_side_over_alone_{n}t": mean[f"side_by_side_passive_{n}t"] / mean[f"alone_{n}t"],
    }
    return {"net": net, "model": NETS[net], "steps_per_s": steps, "ratios": {k: round(v, 3) for k, v in ratios.items()}}


def hardware() -> dict:
    import torch

    from rectnet.engine.runtime import cpu_model, native_bf16_flags, usable_cores

    return {
        "cpu": cpu_model() or platform.machine(),
        "cpu_bf16_flags": native_bf16_flags(),
        "usable_cores": usable_cores()[0],
        "torch": torch.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the usable cores)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per process")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS))
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1 or args.seconds <= 0 or args.batch < 1:
        parser.error("--threads, --seconds and --batch must be > 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    machine = hardware()
    args.threads = args.threads or machine["usable_cores"]
    result = {"benchmark": "threads", "threads": args.threads, "seconds": args.seconds, "batch": args.batch}
    result |= {"hardware": machine, "nets": [bench_net(net, args) for net in args.nets]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        net, threads, seconds, batch = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(measure(net, threads, seconds, batch))
    else:
        main()
