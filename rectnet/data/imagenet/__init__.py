"""ImageNet from an ImageFolder tree: the papers' training pipeline at full speed and their test protocols.

Training input (He et al. 2015 §3; the CReLU paper, Shang et al. 2016 §3.2, follows Krizhevsky et al. 2012):
shorter side s drawn uniformly from the integers [s_min, s_max] ([256, 512], fixed s = 256 for the 14-layer
net), a random 224x224 crop, a horizontal flip for half of the samples, AlexNet's PCA colour augmentation,
then mean subtraction: per pixel (He et al.) or per channel with std division (Shang et al.).

Fast path. The plain pipeline decodes the JPEG, resizes the whole image to shorter side s, then crops.
Here the crop is drawn exactly as there (offsets uniform over the valid integer positions in the resized
frame), mapped back to source coordinates, and only that region is resampled:

- one decode per image, by libjpeg-turbo: through torchvision's decoder where present (the same pixels as
  PIL's, straight into a tensor) or PIL. When the image is at least twice the resized frame (times
  `draft_gap`), the decoder is asked for a reduced-size decode (PIL `draft`: DCT scaling by 1/2, 1/4 or 1/8),
  never smaller than the resized frame, so large sources cost a fraction of a full decode;
- the crop's region is resampled with torch's antialiased bilinear filter (PIL's triangle filter, about four
  times faster on uint8 images) at the plain pipeline's scale, reading across the crop's edges as the whole
  resize would. Its grid starts on a whole decoded pixel, within half a pixel of the exact box (median 1/30
  on ImageNet-like sizes; `_plan`): the crops are the plain pipeline's to about one grey level on average,
  and their scales and positions have its distribution (tests and scripts/bench/data.py check both);
- the worker returns uint8 images in HWC memory, stacked without transposition into channels-last batches;
  lighting and normalization run batched on the training device (`Preprocess`).

Every random choice for sample i in epoch e comes from a generator seeded by (seed, e, i), so batches do
not depend on the number of workers or on how they are seeded, and a run resumed mid-epoch is exact.

Files, one concern each: `index` (the split's files and labels), `decode` (reading and decoding one image),
`resample` (a box of a decoded image at a given scale), `crops` (which box: training crops and evaluation
views), `lighting` (PCA colour augmentation), `preprocess` (uint8 batches to network input on the device),
`datasets` (samples keyed by (epoch, index) and by index), `loaders` (samplers and DataLoaders per rank) and
`resources` (how many decoding workers a rank's cores and /dev/shm afford).
"""

from rectnet.data.imagenet.crops import CropDraw, ScaleJitterCrop, render_views, train_crop
from rectnet.data.imagenet.datasets import (
    EvalBatch,
    EvalSample,
    TrainBatch,
    TrainCollate,
    TrainDataset,
    TrainSample,
    ViewDataset,
    collate_views,
)
from rectnet.data.imagenet.decode import CorruptImageError, EncodedImage, to_rgb
from rectnet.data.imagenet.index import IMAGE_SUFFIXES, LAYOUT, ImageFolderError, ImageIndex, index_image_folder
from rectnet.data.imagenet.lighting import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    LIGHTING_STD,
    apply_lighting,
    draw_lighting,
)
from rectnet.data.imagenet.loaders import (
    GlobalBatchSampler,
    ShardSampler,
    TrainLoader,
    eval_loader,
    loader_options,
)
from rectnet.data.imagenet.preprocess import Preprocess, normalize_channels, subtract_mean_image
from rectnet.data.imagenet.resample import resample

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "IMAGE_SUFFIXES",
    "LAYOUT",
    "LIGHTING_STD",
    "CorruptImageError",
    "CropDraw",
    "EncodedImage",
    "EvalBatch",
    "EvalSample",
    "GlobalBatchSampler",
    "ImageFolderError",
    "ImageIndex",
    "Preprocess",
    "ScaleJitterCrop",
    "ShardSampler",
    "TrainBatch",
    "TrainCollate",
    "TrainDataset",
    "TrainLoader",
    "TrainSample",
    "ViewDataset",
    "apply_lighting",
    "collate_views",
    "draw_lighting",
    "eval_loader",
    "index_image_folder",
    "loader_options",
    "normalize_channels",
    "resample",
    "render_views",
    "subtract_mean_image",
    "to_rgb",
    "train_crop",
]
