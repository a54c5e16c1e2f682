"""ImageNet through the training loop and eval.py, on a tiny ImageFolder tree these tests write: four
colour classes of JPEGs in assorted sizes. Expected values come from PIL (the preprocessing statistics), from
hand-written view averaging, and from the run's own per-epoch log (eval.py must reproduce it exactly)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, compose_train, run_cli
from PIL import Image
from torch import nn

from rectnet.config import EvalConfig
from rectnet.data.imagenet import CorruptImageError, ImageFolderError, index_image_folder
from rectnet.engine.distributed import Dist
from rectnet.engine.runtime import Runtime
from rectnet.engine.scoring import Evaluator
from rectnet.engine.train import run

COLOURS = {"n01": (200, 40, 40), "n02": (40, 200, 40), "n03": (40, 40, 200), "n04": (200, 200, 40)}
PER_CLASS = {"train": 10, "val": 3}
SMALL = [  # 32x32 crops from shorter sides 36..48, an eighth-width ConvPool-CNN-C, decoding in-process
    "dataset=imagenet",
    "dataset.num_classes=4",
    "dataset.image_size=32",
    "dataset.scale_min=36",
    "dataset.scale_max=48",
    "dataset.workers=0",
    "dataset.stats_images=40",
    "dataset.per_pixel_mean=false",
    "eval.size=36",
    "model.width=0.125",
    "model.dropout=0",
    "optim.lr=0.01",
    "schedule=constant",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=20",
    "trainer.progress=none",
    "logger.tensorboard=false",
]


def write_tree(root: Path) -> Path:
    """<root>/{train,val}/<class>/*.JPEG: each class a colour plus noise, sizes 40..71 px per side."""
    rng = np.random.default_rng(0)
    for split, count in PER_CLASS.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                h, w = rng.integers(40, 72, size=2)
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{k}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tiny_imagenet"))


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    results = run(compose_train([*SMALL, f"dataset.root={tree}", "trainer.epochs=4"], run_dir))
    return run_dir, results


def reference_centre_crops(folder: Path, shorter: int, crop: int) -> torch.Tensor:
    """PIL: resize each image to shorter side `shorter` (bilinear, antialiased), take the centre crop."""
    crops = []
    for path in sorted(folder.rglob("*.JPEG")):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        size = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
        image = image.resize(size, Image.BILINEAR)
        left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
        crops.append(torch.from_numpy(np.array(image.crop((left, top, left + crop, top + crop)))).permute(2, 0, 1))
    return torch.stack(crops).double()


def test_trains_and_tests_every_validation_image_each_epoch(trained):
    run_dir, results = trained
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["test/count"] for e in epochs] == [12] * 4
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]
    assert results["final"]["top1_err"] <= 25.0  # chance is 75% error with four classes


def test_channel_statistics_are_those_of_the_training_centre_crops(trained, tree):
    run_dir, _ = trained
    data = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["data"]
    crops = reference_centre_crops(tree / "train", 36, 32)
    mean = crops.mean((0, 2, 3)) / 255
    std = crops.transpose(0, 1).reshape(3, -1).std(1, correction=0) / 255
    assert torch.allclose(data["mean"], mean, atol=1.5 / 255)  # torch's resampler vs PIL's: ~1 grey level
    assert torch.allclose(data["std"], std, atol=1.5 / 255)


@pytest.mark.slow
def test_eval_py_reproduces_the_runs_own_test_of_its_best_checkpoint(trained):
    run_dir, results = trained
    done = run_cli([f"run_dir={run_dir}", "eval.protocol=center", "dataset.workers=0", "trainer.threads=1"], "eval.py")
    assert done.returncode == 0, done.stderr
    out = json.loads((run_dir / "eval_center.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = epochs[results["best_epoch"] - 1]
    assert out["count"] == 12 and out["epoch"] == results["best_epoch"]
    for key in ("top1_err", "top5_err", "top1_acc", "top5_acc"):
        assert out[key] == pytest.approx(best[f"test/{key}"])
    assert out["loss"] == pytest.approx(best["test/loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["ten_view", "dense"])
def test_eval_py_multi_view_protocols_count_every_image(trained, protocol):
    run_dir, _ = trained
    args = [f"run_dir={run_dir}", f"eval.protocol={protocol}", "eval.scales=[36,48]", "dataset.workers=0"]
    done = run_cli([*args, "trainer.threads=1"], "eval.py")
    assert done.returncode == 0, done.stderr
    out = json.loads((run_dir / f"eval_{protocol}.json").read_text())
    assert out["count"] == 12 and out["protocol"] == protocol
    assert 0.0 <= out["top1_err"] <= 100.0 and out["top5_err"] == 0.0  # four classes: the top 5 holds all
    assert (out.get("scales") == [36, 48]) == (protocol == "dense")


@pytest.mark.slow
def test_eval_py_keeps_each_single_scale_dense_result_apart(trained):
    run_dir, _ = trained
    for scale in (36, 48):
        args = [f"run_dir={run_dir}", "eval.protocol=dense", f"eval.scales=[{scale}]", "dataset.workers=0"]
        assert run_cli([*args, "trainer.threads=1"], "eval.py").returncode == 0
    for scale in (36, 48):
        out = json.loads((run_dir / f"eval_dense_s{scale}.json").read_text())
        assert out["scales"] == [scale] and out["count"] == 12


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_dir=/nonexistent/run"], "does not exist"),
        (["eval.protocol=dense"], "run_dir=<run directory> is required"),
        (["run_dir=."], "does not exist"),
        (["oops"], "key=value"),
    ],
)
def test_eval_py_bad_input_exits_with_a_message(args, message):
    done = run_cli(args, "eval.py", timeout=120)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.slow
def test_eval_py_rejects_unknown_keys_and_wrong_types(trained):
    run_dir, _ = trained
    for arg, message in (("eval.prot=x", "prot"), ("eval.size=abc", "abc"), ("eval.protocol=six", "eval.protocol")):
        done = run_cli([f"run_dir={run_dir}", arg], "eval.py", timeout=120)
        assert done.returncode == 2 and message in done.stderr, (arg, done.stderr)


def test_view_protocols_on_a_tensor_dataset_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="eval.protocol=ten_view is for ImageFolder"):
        run(compose_train([*TINY, "eval.protocol=ten_view"], tmp_path))


def test_per_pixel_mean_is_the_mean_centre_crop(tree, tmp_path):
    # unscaled pixels need fixed small stds somewhere (rectnet refuses them otherwise): the classifier's here
    overrides = [*SMALL, f"dataset.root={tree}", "dataset.per_pixel_mean=true", "+model.init_std={9: 0.001}"]
    overrides.append("optim.lr=0.0001")
    results = run(compose_train([*overrides, "trainer.epochs=1", "dataset.lighting_std=0.1"], tmp_path))
    assert np.isfinite(results["final"]["loss"])
    mean_image = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["data"]["mean_image"]
    expected = reference_centre_crops(tree / "train", 36, 32).mean(0)
    assert mean_image.shape == (3, 32, 32)
    assert (mean_image.double() - expected).abs().mean() < 1.0  # grey levels


@pytest.fixture
def corrupt_tree(tree, tmp_path) -> Path:
    root = tmp_path / "corrupt"
    shutil.copytree(tree, root)
    (root / "train" / "n02" / "broken.JPEG").write_bytes(b"not a JPEG at all" * 40)
    good = (root / "val" / "n03" / "n03_0.JPEG").read_bytes()
    (root / "val" / "n03" / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root


def test_corrupt_images_stop_the_run_naming_the_file(corrupt_tree, tmp_path):
    with pytest.raises(CorruptImageError, match="broken.JPEG"):
        run(compose_train([*SMALL, f"dataset.root={corrupt_tree}", "trainer.epochs=1"], tmp_path))


def test_skip_corrupt_skips_counts_and_reports(corrupt_tree, tmp_path):
    overrides = [*SMALL, f"dataset.root={corrupt_tree}", "dataset.skip_corrupt=true", "trainer.batch_size=41"]
    results = run(compose_train([*overrides, "trainer.epochs=1"], tmp_path))
    epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["train/skipped"] == 1  # one global batch of all 41 training files, one of them broken
    assert results["final"]["count"] == 12 and results["final"]["skipped"] == 1


def test_missing_or_mismatched_trees_say_what_is_expected(tree, tmp_path):
    with pytest.raises(ImageFolderError, match="does not exist; expected <root>/<split>/<class>"):
        run(compose_train([*SMALL, f"dataset.root={tmp_path / 'nowhere'}"], tmp_path / "a"))
    with pytest.raises(ImageFolderError, match="dataset.num_classes=4"):
        run(compose_train([*SMALL, f"dataset.root={tree}", "dataset.num_classes=5"], tmp_path / "b"))
    with pytest.raises(ValueError, match="dataset.scale_min"):
        run(compose_train([*SMALL, f"dataset.root={tree}", "dataset.scale_min=30"], tmp_path / "c"))


def test_subsets_are_fixed_samples_across_classes(tree):
    index = index_image_folder(tree, "train")
    first, again = index.sample(8), index.sample(8)
    assert list(first.relative_paths) == list(again.relative_paths)
    assert len(set(first.labels.tolist())) > 1  # not the first 8 files, which are all class 0
    assert len(set(first.relative_paths.tolist())) == 8


# ------------------------------------------------------------------------------- scoring of the views


class Flat(nn.Module):
    """A linear classifier of the whole input, with the `features`/`head` split dense scoring uses."""

    def __init__(self, size: int, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))

    def forward(self, x):
        return self.head(self.features(x))


def evaluator(protocol: str, size: int, average: str = "softmax") -> Evaluator:
    torch.manual_seed(0)
    model = Flat(size).eval()
    runtime = Runtime(torch.device("cpu"), "fp32", None)
    return Evaluator(model, model, runtime, Dist(), EvalConfig(protocol, average=average), size)


def test_ten_views_average_softmax_scores_per_image():
    images, views = 3, torch.randn(30, 3, 8, 8)
    scorer = evaluator("ten_view", 8)
    with torch.no_grad():
        got = scorer.view_logits([views], images)
        for i in range(images):
            probs = [scorer.model(views[10 * i + v : 10 * i + v + 1]).softmax(-1) for v in range(10)]
            assert torch.allclose(got[i].softmax(-1), torch.cat(probs).mean(0), atol=1e-6)
            assert torch.allclose(got[i].exp().sum(), torch.tensor(1.0), atol=1e-5)  # log of a distribution
        by_logits = evaluator("ten_view", 8, "logits").view_logits([views], images)
        assert torch.allclose(by_logits, scorer.model(views).view(images, 10, -1).mean(1), atol=1e-6)


def test_one_view_returns_the_networks_logits():
    views = torch.randn(4, 3, 8, 8)
    scorer = evaluator("center", 8)
    with torch.no_grad():
        assert torch.equal(scorer.view_logits([views], 4), scorer.model(views))


def test_dense_scores_of_crop_sized_images_average_image_and_mirror():
    # At the training crop's size the feature map is one window: dense = mean softmax of image and mirror.
    pairs = torch.randn(2, 3, 8, 8)
    views = torch.stack([pairs, pairs.flip(-1)], 1).flatten(0, 1)  # (image, mirror) rows per image
    scorer = evaluator("dense", 8)
    with torch.no_grad():
        got = scorer.view_logits([views], 2).softmax(-1)
        expected = (scorer.model(pairs).softmax(-1) + scorer.model(pairs.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(got, expected, atol=1e-6)
