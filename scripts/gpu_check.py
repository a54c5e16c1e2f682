"""The CUDA paths on one GPU in a few minutes: what scripts/gpu_check.sh runs.

    python scripts/gpu_check.py [--dry-run] [--out DIR] [--cifar-root DIR]

Stages (each prints one JSON line: images/s, achieved TFLOP/s against the device's peak, and its checks):
  cifar_*      CIFAR-shaped data held on the GPU (dataset.on_device), channels_last, bf16 / fp16 / fp32 /
               torch.compile; real CIFAR-10 with --cifar-root, else synthetic 32x32 images
  nccl_1rank   the same run inside a 1-rank NCCL process group (DDP, NCCL sums and flags) under
               torch.cuda.set_sync_debug_mode("warn"): host synchronizations are counted
  imagenet     a generated ImageFolder sample through the decoding workers and pinned host memory
  eval_*       eval.py's three protocols (center, ten_view, dense) on the imagenet stage's checkpoint
  resume       two epochs straight vs one epoch + resume (deterministic): the weights must agree

--dry-run (no GPU needed): composes and validates every stage's config, checks what this machine has
(CUDA, nvidia-smi, a C++ compiler for compile) and prints what it would run; exits 0 when all configs compose.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers: the config composition and the tiny image folder

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import rectnet.config  # noqa: E402,F401  (registers the schema)

# Dense peak TFLOP/s (no sparsity) by device-name substring: bf16/fp16 tensor cores, and fp32 (no TF32).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}
CIFAR = ["model=convpool_cnn_c", "trainer.epochs=1", "trainer.max_steps_per_epoch=200", "logger=none"]
CIFAR += ["trainer.progress=none", "trainer.device=cuda", "dataset.on_device=true", "trainer.channels_last=true"]
SYNTHETIC_CIFAR = ["dataset=synthetic", "dataset.image_size=32", "dataset.num_train=25600", "dataset.num_test=1000"]
IMAGENET = ["experiment=small14_prelu", "dataset.num_classes=4", "dataset.image_size=224", "dataset.scale_min=256"]
IMAGENET += ["dataset.scale_max=256", "dataset.stats_images=16", "dataset.num_test=null", "dataset.workers=4"]
IMAGENET += ["eval.size=256", "eval.scales=[256]", "trainer.batch_size=32", "trainer.epochs=1", "logger=none"]
IMAGENET += ["trainer.progress=none", "trainer.device=cuda"]


def stages(cifar: list[str]) -> list[tuple[str, str, list[str]]]:
    """(name, kind, overrides) in the order they run."""
    return [
        ("cifar_bf16", "train", [*cifar, "trainer.precision=bf16"]),
        ("cifar_fp16", "train", [*cifar, "trainer.precision=fp16"]),
        ("cifar_fp32", "train", [*cifar, "trainer.precision=fp32"]),
        ("cifar_auto_compile", "train", [*cifar, "trainer.precision=auto", "trainer.compile=true"]),
        ("nccl_1rank", "nccl", [*cifar, "trainer.precision=auto"]),
        ("imagenet", "train", [*IMAGENET, "trainer.precision=auto"]),
        ("eval_center", "eval", ["eval.protocol=center"]),
        ("eval_ten_view", "eval", ["eval.protocol=ten_view"]),
        ("eval_dense", "eval", ["eval.protocol=dense", "eval.scales=[256]"]),
        ("resume", "resume", [*cifar, "trainer.precision=fp32", "trainer.deterministic=true", "trainer.epochs=2"]),
    ]


def compose_config(overrides: list[str], run_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"run_dir={run_dir}"])


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "bf16": torch.cuda.is_bf16_supported() if cuda else None,
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "cxx": any(shutil.which(c) for c in ("g++", "clang++", "c++")),
    }


def train_flops_per_image(settings) -> float:
    """Forward FLOPs of one image (torch's FLOP counter, on the CPU) times 3: forward, and a backward of
    about twice the forward's cost."""
    from torch.utils.flop_counter import FlopCounterMode

    from rectnet.engine.build import build_model

    model = build_model(settings, settings.dataset.num_classes, 3).eval()
    size = settings.dataset.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()


def throughput(name: str, results: dict, flops: float, precision: str, extra: dict) -> dict:
    images_per_s = results.get("train_images_per_s") or 0.0
    achieved = images_per_s * flops / 1e12
    device = torch.cuda.get_device_name()
    peak = next((p.get(precision) for key, p in PEAK_TFLOPS.items() if key in device), None)
    return {
        "stage": name,
        "device": device,
        "precision": precision,
        "images_per_s": round(images_per_s, 1),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "fraction_of_peak": round(achieved / peak, 4) if peak else None,
        "final_loss": results["final"].get("loss"),
        **extra,
    }


def run_train(name: str, overrides: list[str], out: Path, nccl: bool = False) -> tuple[dict, Path]:
    from rectnet.config import to_settings
    from rectnet.engine.runtime import resolve_precision
    from rectnet.engine.train import run

    run_dir = out / name
    cfg = compose_config(overrides, run_dir)
    settings = to_settings(cfg)
    precision = resolve_precision(settings.trainer.precision, torch.device("cuda", 0))[0]
    extra: dict = {}
    start = time.perf_counter()
    if nccl:
        import torch.distributed as dist

        dist.init_process_group("nccl", init_method=f"file://{out / 'nccl_store'}", rank=0, world_size=1)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = run(cfg)  # takes the group: DDP, NCCL sums and flags; destroys it at the end
        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        steps = settings.trainer.max_steps_per_epoch
        extra = {"host_syncs": len(syncs), "steps": steps, "host_syncs_per_step": round(len(syncs) / steps, 3)}
    else:
        results = run(cfg)
    extra["wall_s"] = round(time.perf_counter() - start, 1)
    assert results["final"]["count"] > 0 and results["final"]["loss"] == results["final"]["loss"], results["final"]
    return throughput(name, results, train_flops_per_image(settings), precision, extra), run_dir


def run_eval(name: str, overrides: list[str], run_dir: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"run_dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    protocol = overrides[0].split("=")[1]
    result = json.loads((run_dir / f"eval_{protocol}.json").read_text())
    return {
        "stage": name,
        "images_per_s": result["images_per_s"],
        "top1_err": result["top1_err"],
        "count": result["count"],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def run_resume(overrides: list[str], out: Path) -> dict:
    from rectnet.engine.train import run

    straight, resumed = out / "resume_straight", out / "resume_resumed"
    run(compose_config(overrides, straight))
    run(compose_config([*overrides, "trainer.epochs=1"], resumed))
    run(compose_config(overrides, resumed))
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (straight, resumed))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, f"resumed weights differ by {worst}"
    return {"stage": "resume", "max_weight_difference": worst}


def dry_run(plan: list[tuple[str, str, list[str]]], out: Path) -> int:
    from rectnet.config import to_settings

    print(json.dumps({"dry_run": True, **machine()}))
    for name, kind, overrides in plan:
        row = {"stage": name, "kind": kind, "would_run": overrides}
        if kind != "eval":
            settings = to_settings(compose_config(overrides, out / name))  # the same validation a run does
            row["train_gflops_per_image"] = round(train_flops_per_image(settings) / 1e9, 3)
        print(json.dumps(row), flush=True)
    if not torch.cuda.is_available():
        print("no CUDA device here: every config composes; run without --dry-run on a GPU machine", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary folder)")
    parser.add_argument("--cifar-root", default=None, help="real CIFAR-10 (dataset.root); synthetic without")
    args = parser.parse_args()
    out = args.out or (Path(tempfile.gettempdir()) / "gpu_check" if args.dry_run else Path(tempfile.mkdtemp()))
    cifar = [*CIFAR, f"dataset.root={args.cifar_root}"] if args.cifar_root else [*CIFAR, *SYNTHETIC_CIFAR]
    folder = out / "imagenet_sample"
    plan = [
        (name, kind, [*o, f"dataset.root={folder}"] if name == "imagenet" else o) for name, kind, o in stages(cifar)
    ]
    if args.dry_run:
        return dry_run(plan, out)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run here", file=sys.stderr)
        return 2
    from helpers import make_image_folder

    make_image_folder(folder, classes=4, train=64, val=8, size=(320, 288))
    print(json.dumps(machine()))
    imagenet_dir = None
    for name, kind, overrides in plan:
        if kind in ("train", "nccl"):
            row, run_dir = run_train(name, overrides, out, nccl=kind == "nccl")
            imagenet_dir = run_dir if name == "imagenet" else imagenet_dir
        elif kind == "eval":
            row = run_eval(name, overrides, imagenet_dir)
        else:
            row = run_resume(overrides, out)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
