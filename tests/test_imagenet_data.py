"""ImageNet input pipeline (rectnet.data.imagenet, rectnet.data.views): indexing, crop geometry against the
plain torchvision pipeline, PCA lighting statistics, evaluation protocols, dense scoring, odd and corrupt
files, determinism across worker counts and resume. Expected values come from geometry and theory."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from rectnet.data.batches import generator
from rectnet.data.imagenet import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    CorruptImageError,
    EncodedImage,
    GlobalBatchSampler,
    ImageFolderError,
    Preprocess,
    ScaleJitterCrop,
    TrainDataset,
    TrainLoader,
    ViewDataset,
    apply_lighting,
    draw_lighting,
    eval_loader,
    index_image_folder,
    normalize_channels,
    subtract_mean_image,
    train_crop,
)
from rectnet.data.imagenet.decode import jpeg_decoder
from rectnet.data.views import (
    PROTOCOLS,
    View,
    center_box,
    dense_scores,
    resized_size,
    ten_views,
)
from rectnet.layers.spp import SpatialPyramidPool

# name -> (size, mode, format); a smooth pattern (see `pattern`) so that sub-pixel effects stay small
IMAGES = {
    "a/wide.JPEG": ((500, 375), "RGB", "JPEG"),
    "a/tall.jpg": ((375, 500), "RGB", "JPEG"),
    "a/large.jpeg": ((1200, 900), "RGB", "JPEG"),  # twice the resized frame for s <= 450: reduced decode
    "b/gray.JPEG": ((320, 240), "L", "JPEG"),
    "b/cmyk.JPEG": ((300, 300), "CMYK", "JPEG"),
    "b/alpha.png": ((260, 200), "RGBA", "PNG"),
    "b/palette.png": ((240, 240), "P", "PNG"),
    "c/exact.JPEG": ((224, 224), "RGB", "JPEG"),
    "c/tiny.JPEG": ((60, 40), "RGB", "JPEG"),  # shorter side < 224: upscaled
    "c/panorama.JPEG": ((2000, 300), "RGB", "JPEG"),
}
GRADIENT = 60 * 2 * math.pi / 64  # the pattern's steepest slope, levels per source pixel


def pattern(width: int, height: int) -> np.ndarray:
    """uint8 (h, w, 3): per channel 128 + 60 sin(2 pi t / 64 + phase), t a distance along a unit direction,
    so that no slope exceeds GRADIENT."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 60 * np.sin(2 * np.pi * (x * math.cos(a) + y * math.sin(a)) / 64 + a) for a in (0.3, 1.4, 2.5)]
    return np.stack(channels, -1).round().astype(np.uint8)


def position(index, name: str) -> int:
    """The dataset index of the file `name` (class/file)."""
    return [Path(index.path(i)).relative_to(index.root).as_posix() for i in range(len(index))].index(name)


def save(path: Path, size: tuple[int, int], mode: str, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(pattern(*size))
    image = rgb.quantize(64) if mode == "P" else rgb.convert(mode)
    image.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet") / "train"
    for name, (size, mode, fmt) in IMAGES.items():
        save(root / name, size, mode, fmt)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


@pytest.fixture(scope="module")
def corrupt_folder(folder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corrupt") / "train"
    shutil.copytree(folder, root)
    data = (root / "a" / "wide.JPEG").read_bytes()
    (root / "a" / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (root / "c" / "garbage.JPEG").write_bytes(b"this is not a JPEG" * 50)
    return root


def plain_crop(path: Path, resized: tuple[int, int], offset: tuple[int, int], crop: int, flip: bool) -> torch.Tensor:
    """The plain pipeline at given geometry: PIL RGB, Resize (bilinear, antialiased), crop, flip."""
    image = Image.open(path).convert("RGB").resize(resized, Image.BILINEAR)
    x, y = offset
    out = torch.from_numpy(np.array(image.crop((x, y, x + crop, y + crop)))).permute(2, 0, 1)
    return out.flip(-1) if flip else out


# ------------------------------------------------------------------------------------------- index


def test_index_sorts_classes_and_ignores_other_files(folder):
    index = index_image_folder(folder.parent, "train")
    assert index.classes == ("a", "b", "c")
    assert len(index) == len(IMAGES)
    assert np.bincount(index.labels).tolist() == [3, 4, 3]
    names = [Path(index.path(i)).relative_to(folder).as_posix() for i in range(len(index))]
    assert sorted(names) == sorted(IMAGES) and "a/notes.txt" not in names
    assert all(index.labels[i] == "abc".index(name[0]) for i, name in enumerate(names))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "does not exist"),
        ([], "no class folders .*an empty folder"),
        (["x.JPEG", "a/y.JPEG"], "1 image files at the top level"),
        (["a/x.JPEG", "b/readme.txt"], "1 of 2 class folders .* have no images.*: b"),
        (["train/a/x.JPEG", "val/a/y.JPEG"], "pass the split"),
    ],
)
def test_index_errors_say_what_was_found(tmp_path, files, message):
    root = tmp_path / "root"
    if files is not None:
        root.mkdir()
    for name in files or []:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    with pytest.raises(ImageFolderError, match=message) as error:
        index_image_folder(root)
    assert "one folder per class" in str(error.value)


def test_index_root_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ImageFolderError, match="is a file"):
        index_image_folder(tmp_path / "f")


# ---------------------------------------------------------------------------------------- geometry


def test_resized_size_keeps_the_shorter_side_and_truncates_the_longer():
    assert resized_size(400, 300, 256) == (341, 256)  # 256 * 4/3 = 341.33
    assert resized_size(300, 400, 256) == (256, 341)
    assert resized_size(300, 300, 384) == (384, 384)
    assert resized_size(60, 40, 256) == (384, 256)


def test_ten_view_boxes_on_a_400x300_image():
    views = ten_views(400, 300)  # resized to 341 x 256; 341 - 224 = 117, 256 - 224 = 32
    five = [(0, 0, 224, 224), (117, 0, 341, 224), (0, 32, 224, 256), (117, 32, 341, 256), (58, 16, 282, 240)]
    assert views == [View((341, 256), box, flip) for flip in (False, True) for box in five]
    assert center_box(256, 256, 224) == (16, 16, 240, 240)


def test_views_match_torchvision_resize_and_ten_crop(folder):
    path = folder / "a" / "wide.JPEG"
    index = index_image_folder(folder)
    ours = ViewDataset(index, "ten_view")[position(index, "a/wide.JPEG")].views[0].float()
    image = Image.open(path).convert("RGB")
    theirs = [torch.from_numpy(np.array(v)).permute(2, 0, 1).float() for v in TF.ten_crop(TF.resize(image, 256), 224)]
    for k in range(5):  # the same filter at the same scale: torch's and PIL's uint8 rounding differ by <= 1
        assert (ours[k] - theirs[k]).abs().max() <= 1
        assert torch.equal(ours[5 + k], ours[k].flip(-1))


def test_random_crop_stays_inside_the_image_at_every_scale():
    spec = ScaleJitterCrop()
    for width, height in [(500, 375), (375, 500), (60, 40), (2000, 300), (224, 224), (1, 1)]:
        for i in range(300):
            draw = spec.draw(width, height, generator(1, 2, i))
            w, h = draw.resized
            assert min(w, h) == draw.scale and 256 <= draw.scale <= 512
            assert 0 <= draw.offset[0] <= w - 224 and 0 <= draw.offset[1] <= h - 224
            left, top, right, bottom = draw.box((width, height))
            assert 0 <= left < right <= width * (1 + 1e-12) and 0 <= top < bottom <= height * (1 + 1e-12)
            assert right - left == pytest.approx(224 * width / w) and bottom - top == pytest.approx(224 * height / h)


def ks_distance(samples: np.ndarray, values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the samples and the uniform distribution over `values`."""
    empirical = np.searchsorted(np.sort(samples), values, side="right") / len(samples)
    return float(np.abs(empirical - np.arange(1, len(values) + 1) / len(values)).max())


def test_scale_and_offset_distributions_are_uniform():
    n = 20000
    critical = 1.63 / math.sqrt(n)  # KS critical distance at the 1% level
    scales = np.array([ScaleJitterCrop().draw(500, 375, generator(0, 0, i)).scale for i in range(n)])
    assert ks_distance(scales, np.arange(256, 513)) < critical
    assert scales.min() == 256 and scales.max() == 512
    fixed = ScaleJitterCrop(384, 384)  # resized 512 x 384: x in 0..288, y in 0..160
    offsets = np.array([fixed.draw(500, 375, generator(0, 1, i)).offset for i in range(n)])
    assert ks_distance(offsets[:, 0], np.arange(289)) < critical
    assert ks_distance(offsets[:, 1], np.arange(161)) < critical
    flips = [ScaleJitterCrop().draw(500, 375, generator(0, 2, i)).flip for i in range(n)]
    assert abs(np.mean(flips) - 0.5) < 4 * 0.5 / math.sqrt(n)
    assert {ScaleJitterCrop(256, 256).draw(375, 500, generator(0, 3, i)).scale for i in range(100)} == {256}


def test_training_crop_is_the_plain_pipelines_crop(folder):
    """The same draw as Resize(s) + crop + flip. The fast crop's sampling grid starts on a whole source pixel,
    within half a pixel of the plain one's along each axis, so on a pattern whose slope is at most GRADIENT a
    pixel changes by at most GRADIENT * sqrt(2) / 2, plus 1 for the two pipelines' uint8 rounding."""
    spec = ScaleJitterCrop()
    for name in ["a/wide.JPEG", "a/tall.jpg", "c/tiny.JPEG", "c/panorama.JPEG", "b/gray.JPEG"]:
        for i in range(3):
            path = folder / name
            draw = spec.draw(*Image.open(path).size, generator(5, 0, i))
            ours = train_crop(str(path), spec, generator(5, 0, i), draft_gap=16.0).float()  # no reduced decode
            theirs = plain_crop(path, draw.resized, draw.offset, 224, draw.flip).float()
            assert (ours - theirs).abs().max() <= GRADIENT * math.sqrt(2) / 2 + 1, name


@pytest.mark.parametrize("factor", [1, 2])
def test_training_crop_on_whole_pixels_equals_the_plain_crop(tmp_path, factor):
    """At s = 384 a (512 f) x (384 f) image scales by exactly f, so every crop starts on a whole source pixel:
    the fast crop is the plain one up to uint8 rounding."""
    path = tmp_path / "image.JPEG"
    save(path, (512 * factor, 384 * factor), "RGB", "JPEG")
    spec = ScaleJitterCrop(384, 384)
    for i in range(5):
        draw = spec.draw(512 * factor, 384 * factor, generator(0, 0, i))
        ours = train_crop(str(path), spec, generator(0, 0, i), draft_gap=16.0).float()
        theirs = plain_crop(path, draw.resized, draw.offset, 224, draw.flip).float()
        assert (ours - theirs).abs().max() <= 1


def test_reduced_decode_keeps_the_needed_resolution(folder):
    path = str(folder / "a" / "large.jpeg")
    encoded = EncodedImage.read(path)
    pixels, content = encoded.decode((341, 256))  # 1200 x 900 >= 2 x (341, 256): decoded at 1/2
    assert pixels.shape == (3, 450, 600) and content == (600, 450)
    encoded = EncodedImage.read(path)
    assert encoded.decode((700, 525))[0].shape == (3, 900, 1200)  # 1/2 would be smaller than needed
    spec = ScaleJitterCrop(256, 256)  # resized 341 x 256: the crop comes from the decode at 1/2
    draw = spec.draw(1200, 900, generator(0, 0, 0))
    ours = train_crop(path, spec, generator(0, 0, 0)).float()
    theirs = plain_crop(folder / "a" / "large.jpeg", draw.resized, draw.offset, 224, draw.flip).float()
    assert (ours - theirs).abs().mean() <= 2.0  # the decoder's DCT scaling is a slightly different lowpass


def test_both_jpeg_decoders_give_the_same_pixels(folder):
    assert jpeg_decoder() is not None, "torchvision's JPEG decoder is gone: only PIL's path is tested here"
    for name in ["a/wide.JPEG", "b/gray.JPEG"]:
        pixels, _ = EncodedImage.read(str(folder / name)).decode()
        direct = jpeg_decoder()(torch.frombuffer(bytearray((folder / name).read_bytes()), dtype=torch.uint8))
        reference = np.array(Image.open(folder / name).convert("RGB"))
        assert torch.equal(pixels.permute(1, 2, 0), torch.from_numpy(reference))
        assert torch.equal(direct, pixels)


# ----------------------------------------------------------------------------------- colour, normalization


def test_lighting_offsets_have_the_pca_covariance():
    n = 40000
    alphas = draw_lighting(n, torch.Generator().manual_seed(0), std=0.1)
    images = torch.zeros(n, 3, 2, 2)
    shifted = apply_lighting(images, alphas) / 255.0  # back to [0, 1] units, where the eigen-data live
    assert torch.equal(shifted, shifted[:, :, :1, :1].expand_as(shifted))  # one shift per image
    offsets = shifted[:, :, 0, 0].double()
    eigval, eigvec = IMAGENET_EIGVAL.double(), IMAGENET_EIGVEC.double()
    expected = eigvec @ torch.diag((0.1 * eigval) ** 2) @ eigvec.T
    assert offsets.mean(0).abs().max() < 4 * 0.1 * eigval[0] / math.sqrt(n)
    covariance = torch.cov(offsets.T)
    # in the eigenbasis: variances (0.1 lambda_i)^2, each estimated to about sqrt(2 / n) = 0.7% relative
    rotated = eigvec.T @ covariance @ eigvec
    assert torch.allclose(rotated.diagonal(), (0.1 * eigval) ** 2, rtol=0.04)
    assert torch.allclose(covariance, expected, atol=0.04 * expected.abs().max())


def test_normalizations():
    mean, std = torch.tensor([0.5, 0.25, 0.75]), torch.tensor([0.2, 0.1, 0.4])
    images = (255 * mean).round().view(1, 3, 1, 1).expand(2, 3, 4, 4).to(torch.uint8)
    assert normalize_channels(images.float(), mean, std).abs().max() < 0.5 / 255 / 0.1
    assert torch.allclose(normalize_channels(torch.full((1, 3, 1, 1), 255.0), mean, std).flatten(), (1 - mean) / std)
    mean_image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    assert torch.equal(subtract_mean_image(mean_image.expand(2, 3, 4, 4), mean_image), torch.zeros(2, 3, 4, 4))
    flat = torch.full((3, 4, 4), 100.0)  # a mean image of another size is resized: a constant stays constant
    assert torch.allclose(subtract_mean_image(torch.full((1, 3, 9, 7), 100.0), flat), torch.zeros(1, 3, 9, 7))
    per_pixel = Preprocess(mean_image=flat)
    assert torch.allclose(per_pixel(torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)), torch.zeros(1, 3, 4, 4))
    lit = Preprocess(mean=mean, std=std)(images, lighting=torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    shift = 0.2175 * IMAGENET_EIGVEC[:, 0] / std  # alpha_1 = 1 adds lambda_1 p_1 in [0, 1] units
    assert torch.allclose(lit[0, :, 0, 0] - lit[1, :, 0, 0], shift, atol=1e-5)
    with pytest.raises(ValueError, match="either"):
        Preprocess(mean=mean, std=std, mean_image=flat)


# ----------------------------------------------------------------------------------- evaluation protocols


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_image_evaluated_exactly_once(folder, protocol):
    index = index_image_folder(folder)
    dataset = ViewDataset(index, protocol)
    batch_size = 1 if protocol == "dense" else 3
    for world_size in (1, 2, 3):
        seen = []
        for rank in range(world_size):
            for batch in eval_loader(dataset, batch_size, rank, world_size):
                seen += batch.indices.tolist()
                assert batch.labels.tolist() == index.labels[batch.indices.numpy()].tolist()
                check_view_shapes(protocol, batch.views, [Image.open(index.path(i)).size for i in batch.indices])
        assert seen == list(range(len(index))), (protocol, world_size)


def check_view_shapes(protocol: str, views: list[torch.Tensor], sizes: list[tuple[int, int]]) -> None:
    if protocol != "dense":
        assert len(views) == 1 and views[0].shape == (len(sizes), {"center": 1, "ten_view": 10}[protocol], 3, 224, 224)
        return
    (width, height), groups = sizes[0], views
    expected = [
        (1, 2, 3, resized_size(width, height, s)[1], resized_size(width, height, s)[0]) for s in (256, 384, 480)
    ]
    assert [tuple(g.shape) for g in groups] == expected
    assert all(torch.equal(g[0, 1], g[0, 0].flip(-1)) for g in groups)


class StrideSixteen(nn.Module):
    """A conv stack of total stride 16 (224 -> 14) and an SPP + fc head, like the PReLU paper's nets."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.ReLU(), nn.Conv2d(8, 6, 4, 4), nn.ReLU())
        self.head = nn.Sequential(SpatialPyramidPool((3, 2, 1)), nn.Linear(6 * 14, 5))
        gen = torch.Generator().manual_seed(0)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=gen) * 0.3


def test_dense_evaluation_equals_center_on_a_224_image(folder):
    index = index_image_folder(folder)
    i = position(index, "c/exact.JPEG")
    center = ViewDataset(index, "center", size=224)[i].views[0]  # (1, 3, 224, 224)
    dense = ViewDataset(index, "dense", scales=(224,))[i].views[0][:1]  # the unflipped whole image
    assert torch.equal(center, dense)
    net, x = StrideSixteen(), center.float() / 255
    with torch.no_grad():
        expected = net.head(net.features(x)).softmax(-1)
        assert torch.allclose(dense_scores(net.features, net.head, x), expected, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("size", [(20, 17), (10, 23), (9, 9)])
def test_dense_scores_average_every_window(size, stride):
    maps = torch.randn(2, 6, *size, generator=torch.Generator().manual_seed(1))
    head = StrideSixteen().head
    h, w = min(14, size[0]), min(14, size[1])  # a map smaller than the window is used whole
    corners = [(i, j) for i in range(0, size[0] - h + 1, stride) for j in range(0, size[1] - w + 1, stride)]
    windows = [maps[:, :, i : i + h, j : j + w] for i, j in corners]
    with torch.no_grad():
        expected = torch.stack([head(window).softmax(-1) for window in windows]).mean(0)
        logits = torch.stack([head(window) for window in windows]).mean(0)
        got = dense_scores(nn.Identity(), head, maps, stride=stride, max_windows=3)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(
            dense_scores(nn.Identity(), head, maps, stride=stride, average="logits"), logits, atol=1e-5
        )


# ----------------------------------------------------------------------------------- odd and corrupt files


def test_odd_images_become_rgb_training_crops(folder):
    index = index_image_folder(folder)
    dataset = TrainDataset(index, seed=0)
    for i in range(len(index)):
        sample = dataset[(0, i)]
        assert sample.image.shape == (3, 224, 224) and sample.image.dtype == torch.uint8, index.path(i)
    gray = dataset[(0, position(index, "b/gray.JPEG"))].image
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_corrupt_files_raise_or_are_skipped_and_counted(corrupt_folder):
    index = index_image_folder(corrupt_folder)
    bad = [i for i in range(len(index)) if Path(index.path(i)).name in ("truncated.JPEG", "garbage.JPEG")]
    with pytest.raises(CorruptImageError, match="truncated.JPEG"):
        TrainDataset(index, seed=0)[(0, bad[0])]
    with pytest.raises(CorruptImageError, match="garbage.JPEG"):
        ViewDataset(index, "center")[bad[1]]
    loader = TrainLoader(TrainDataset(index, seed=0, skip_corrupt=True), batch_size=len(index))
    (batch,) = list(loader.epoch(0))
    assert sorted(batch.skipped.tolist()) == bad
    assert len(batch.images) == len(batch.labels) == len(batch.lighting) == len(index) - 2
    assert not set(batch.indices.tolist()) & set(bad)
    batches = list(eval_loader(ViewDataset(index, "center", skip_corrupt=True), batch_size=4))
    assert sorted(i for b in batches for i in b.skipped.tolist()) == bad
    assert sum(len(b.labels) for b in batches) == len(index) - 2


# ----------------------------------------------------------------------------------- determinism, resume


def batches_of(loader: TrainLoader, epoch: int, start: int = 0) -> list:
    return [tuple(t.clone() for t in batch) for batch in loader.epoch(epoch, start)]


def assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batches_do_not_depend_on_workers_and_resume_exactly(folder):
    dataset = TrainDataset(index_image_folder(folder), seed=7)
    serial = TrainLoader(dataset, batch_size=3)
    parallel = TrainLoader(dataset, batch_size=3, workers=2)
    assert len(serial) == len(IMAGES) // 3
    for epoch in (0, 1):  # the persistent workers learn the epoch from the sampler's keys
        assert_same_batches(batches_of(serial, epoch), batches_of(parallel, epoch))
    assert_same_batches(batches_of(serial, 1, start=2 * 3), batches_of(serial, 1)[2:])
    assert not torch.equal(batches_of(serial, 0)[0][3], batches_of(serial, 1)[0][3])  # new order each epoch


def test_ranks_split_each_global_batch():
    n, seed, epoch = 23, 3, 4
    whole = GlobalBatchSampler(n, 6, seed)
    whole.set_epoch(epoch)
    ranks = [GlobalBatchSampler(n, 2, seed, rank, 3) for rank in range(3)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    order = torch.randperm(n, generator=generator(seed, epoch)).tolist()  # as TrainBatches orders a split
    for step, (batch, *parts) in enumerate(zip(whole, *ranks, strict=True)):
        assert [i for _, i in batch] == order[6 * step : 6 * step + 6] == [i for part in parts for _, i in part]
        assert {e for e, _ in batch} == {epoch}
    assert len(whole) == n // 6


# ----------------------------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def imagenet_sample(tmp_path_factory) -> Path:
    archive = SHARED / "data" / "imagenet-sample-100.tar"
    if not archive.is_file():
        pytest.skip("../shared/data/imagenet-sample-100.tar is not here")
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    return out / "imagenet-sample"


def test_real_imagenet_sample_goes_through_the_pipeline(imagenet_sample):
    index = index_image_folder(imagenet_sample)
    assert len(index.classes) == 100 and len(index) == 100
    (batch,) = list(TrainLoader(TrainDataset(index, seed=0), batch_size=100).epoch(0))
    assert batch.images.shape == (100, 3, 224, 224) and len(batch.skipped) == 0
    assert sorted(batch.labels.tolist()) == list(range(100))
    views = [b.views[0] for b in eval_loader(ViewDataset(index, "ten_view"), batch_size=50)]
    assert torch.cat(views).shape == (100, 10, 3, 224, 224)
