"""Typed schema of the Hydra config (structured configs in Hydra's ConfigStore).

`configs/train.yaml` starts from `train_schema`, so every group file is merged into these dataclasses:
an unknown key or a wrong type (`optim.lr=abc`) fails at composition; `to_settings` then turns the
composed config into these objects and runs each section's `validate` (ranges: `optim.lr=-1`). Every
numeric key has a range; on top of them no float anywhere may be infinite or NaN (`optim.lr=1e400`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rectnet.layers.init import DISTRIBUTIONS, InitSpec  # the layers import nothing from the config

# The repository's configs/ next to the package (an editable install or a checkout on sys.path).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def _one_of(key: str, value: Any, valid: tuple[str, ...]) -> None:
    _require(value in valid, key, f"must be one of {', '.join(valid)}", value)


@dataclass
class DatasetConfig:
    name: str = MISSING  # cifar10 | cifar100 | synthetic | imagenet
    root: str = "${oc.env:RECTNET_DATA,./data}"
    num_classes: int = MISSING
    image_size: int = 32
    download: bool = False  # opt-in download through torchvision's utilities (checksums checked there)
    # first N training / test images (all when null); synthetic: how many to make; imagenet: a fixed random
    # sample of N (seed 0, the same in every run: He et al. Fig. 2 tests on 3,000 validation images)
    num_train: int | None = None
    num_test: int | None = None
    flip: bool = True  # random horizontal flip (CReLU paper §3.1)
    crop_padding: int = 0  # random shifts of up to this many pixels (pad, then crop back); 0 = off
    padding_mode: str = "zeros"  # zeros | reflect
    normalize: bool = True  # per-channel mean/std of the training split (CReLU paper §3.1)
    on_device: bool = True  # hold the uint8 split on the training device (GPU-resident CIFAR)
    synthetic_noise: float = 1.5  # synthetic only: noise std relative to the class patterns
    num_folds: int = 0  # k-fold cross-validation (CReLU paper: 10): train on k-1 folds; 0 = off
    fold: int = 0  # the held-out fold, 0..num_folds-1: evaluated every epoch as val/...
    # Train on every fold, the held-out one included, and still report it as val/: the retraining stage of the
    # CReLU paper's "Single" protocol (Shang et al. 2016 §3.1, after Goodfellow et al. 2013);
    # scripts/reproduce/single.sh
    holdout_in_train: bool = False
    # ImageFolder datasets (imagenet) only; image_size is the training crop (224).
    train_split: str = "train"  # <root>/<train_split>/<class>/*.JPEG ("" = root itself)
    test_split: str = "val"  # the papers report ImageNet's validation set; it is this run's test/ split
    scale_min: int = 256  # shorter side s ~ U{scale_min..scale_max} (He et al. §3; 14-layer net: 256..256)
    scale_max: int = 512
    lighting_std: float = 0.0  # AlexNet PCA colour augmentation, alpha ~ N(0, std) (papers use 0.1); 0 = off
    per_pixel_mean: bool = False  # subtract the mean image (He et al.) instead of per-channel mean/std
    stats_images: int = 10000  # training images (a fixed sample) that estimate the mean/std or mean image
    skip_corrupt: bool = False  # skip, count and report undecodable images instead of stopping
    # Decoding processes per rank (0: the training process decodes) and the batches each prepares ahead; a rank
    # lowers both at start-up to what its cores and /dev/shm allow (rectnet/data/imagenet/resources.py).
    workers: int = 8
    prefetch_factor: int = 2
    draft_gap: float = 1.0  # reduced-size JPEG decoding when the source is >= 2*draft_gap times the target

    def image_folder_checks(self) -> None:
        _require(
            self.image_size <= self.scale_min <= self.scale_max,
            "dataset.scale_min/scale_max",
            f"must satisfy image_size ({self.image_size}) <= scale_min <= scale_max",
            (self.scale_min, self.scale_max),
        )
        _require(self.num_folds == 0, "dataset.num_folds", "is for tensor datasets (CIFAR) only", self.num_folds)
        _require(self.lighting_std >= 0, "dataset.lighting_std", "must be >= 0", self.lighting_std)
        _require(self.stats_images >= 1, "dataset.stats_images", "must be >= 1", self.stats_images)
        _require(self.workers >= 0, "dataset.workers", "must be >= 0", self.workers)
        _require(self.prefetch_factor >= 1, "dataset.prefetch_factor", "must be >= 1", self.prefetch_factor)
        _require(self.draft_gap >= 1, "dataset.draft_gap", "must be >= 1", self.draft_gap)

    def validate(self) -> None:
        _one_of("dataset.padding_mode", self.padding_mode, ("zeros", "reflect"))
        _require(self.num_classes >= 2, "dataset.num_classes", "must be >= 2", self.num_classes)
        _require(self.image_size >= 8, "dataset.image_size", "must be >= 8", self.image_size)
        _require(self.crop_padding >= 0, "dataset.crop_padding", "must be >= 0", self.crop_padding)
        _require(
            self.crop_padding < self.image_size,
            "dataset.crop_padding",
            f"must be smaller than dataset.image_size ({self.image_size}): a shift by the image's size leaves none "
            "of it in the crop, and reflect padding cannot reach past the image",
            self.crop_padding,
        )
        _require(self.num_folds == 0 or self.num_folds >= 2, "dataset.num_folds", "must be 0 or >= 2", self.num_folds)
        _require(
            self.num_folds == 0 or 0 <= self.fold < self.num_folds,
            "dataset.fold",
            "must be in [0, num_folds)",
            self.fold,
        )
        _require(
            not self.holdout_in_train or self.num_folds >= 2,
            "dataset.holdout_in_train",
            "needs a held-out fold (dataset.num_folds >= 2)",
            self.holdout_in_train,
        )
        for key in ("num_train", "num_test"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"dataset.{key}", "must be >= 1 or null", value)
        _require(self.synthetic_noise >= 0, "dataset.synthetic_noise", "must be >= 0", self.synthetic_noise)


@dataclass
class ModelConfig:
    name: str = "convpool_cnn_c"
    # rectnet: the papers' layer-spec nets (rectnet/models); timm: any timm architecture, converted by
    # rectnet.convert (docs/convert.md). With timm, act_at and init_std count the network's rectifiers and
    # weight layers in data-flow order.
    source: str = "rectnet"
    width: float = 1.0  # filter multiplier: 1 baseline, 2 "double", 0.5 "half" (CReLU paper Table 1)
    act_at: list[int] | None = None  # weight layers (1-based) that take `activation`; others base_act; null = all
    halve_at: list[int] = field(default_factory=list)  # weight layers whose filters are halved
    base_act: str = "relu"
    dropout: float | None = None  # replaces every dropout rate of the layer list when set
    init_std: dict[int, float] = field(default_factory=dict)  # weight layer -> fixed init std
    cifar_stem: bool = False  # timm: 3x3 stride-1 first conv, stem pooling removed (rectnet/convert/stem.py)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm: arguments of timm.create_model (channels, ...)

    def _source_checks(self) -> None:
        _one_of("model.source", self.source, ("rectnet", "timm"))
        if self.source == "rectnet":
            for key in ("cifar_stem", "kwargs"):
                _require(
                    not getattr(self, key), f"model.{key}", "is for model=timm (model.source=timm)", getattr(self, key)
                )
            return
        # A timm network has no layer list to scale: its widths and dropout are its own arguments.
        for key, neutral, instead in (
            ("width", 1.0, "its widths through model.kwargs (resnet: channels=[...])"),
            ("halve_at", [], "activation=crelu, which halves every conv it can (docs/convert.md)"),
            ("dropout", None, "its dropout through model.kwargs (drop_rate=...)"),
        ):
            _require(
                getattr(self, key) == neutral,
                f"model.{key}",
                f"is for rectnet's nets; a timm model takes {instead}",
                getattr(self, key),
            )

    def validate(self) -> None:
        self._source_checks()
        _require(self.width > 0, "model.width", "must be > 0", self.width)
        _require(self.dropout is None or 0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)", self.dropout)
        for key in ("act_at", "halve_at"):
            layers = getattr(self, key) or []
            _require(all(i >= 1 for i in layers), f"model.{key}", "must list weight layers >= 1", layers)
        _require(
            all(int(k) >= 1 for k in self.init_std), "model.init_std", "keys must be weight layers >= 1", self.init_std
        )
        _require(all(v > 0 for v in self.init_std.values()), "model.init_std", "values must be > 0", self.init_std)


@dataclass
class ActivationConfig:
    # relu | prelu | prelu_shared | crelu | avr | leaky_relu | gelu | silu | mish | elu | selu | softplus | tanh |
    # hardswish | custom (configs/activation/; rectnet/layers/: activations.py, smooth.py, custom.py)
    name: str = "relu"
    # The defaults are the classes' (PRELU_INITIAL_SLOPE, LEAKY_RELU_SLOPE, AVR_INITIAL_BIAS in
    # rectnet/layers/activations.py), which the activation configs read: ${activation_default:prelu,slope}
    slope: float | None = None  # prelu/prelu_shared: initial a; leaky_relu: fixed slope
    initial_bias: float | None = None  # avr: the initial bias of the layers it follows
    target: str | None = None  # custom: <module>.<name> of an nn.Module class or a function (docs/activations.md)
    gain: float | None = None  # custom and the smooth activations: the Kaiming gain, instead of the derived one
    # The dropout rate this activation trains with (AVR's: configs/activation/avr.yaml); null: the model's own.
    # rectnet's nets take it as their model.dropout (configs/model/<net>.yaml); a timm model has its own rates.
    dropout: float | None = None
    # Whether the init centres the layers this activation feeds (init.center's default in configs/init/kaiming.yaml
    # and xavier.yaml): softplus's mean otherwise makes every image alike (docs/activations.md).
    center: bool = False

    def params(self) -> dict[str, Any]:
        """The activation class's constructor arguments (dropout is the model's business, not the class's)."""
        given = {"slope": self.slope, "initial_bias": self.initial_bias, "target": self.target, "gain": self.gain}
        return {k: v for k, v in given.items() if v is not None}

    def validate(self) -> None:
        _require(self.dropout is None or 0 <= self.dropout < 1, "activation.dropout", "must be in [0, 1)", self.dropout)


@dataclass
class LSUVConfig:
    """init=lsuv's data-driven stage (Mishkin & Matas 2016, Algorithm 1; rectnet/layers/lsuv.py); read by no
    other init."""

    tolerance: float = 0.1  # Tol_var: a layer is done when |Var(its output) - 1| < tolerance
    max_iters: int = 10  # T_max: rescalings per layer at most
    batches: int = 1  # measured on the first N global batches of epoch 1's training stream (trainer.batch_size each)

    def validate(self) -> None:
        _require(self.tolerance > 0, "init.lsuv.tolerance", "must be > 0", self.tolerance)
        _require(self.max_iters >= 1, "init.lsuv.max_iters", "must be >= 1", self.max_iters)
        _require(self.batches >= 1, "init.lsuv.batches", "must be >= 1", self.batches)


@dataclass
class InitConfig:
    # The fields and defaults are InitSpec's (rectnet/layers/init.py): `spec()` hands them over whole; `lsuv` is
    # the engine's, for init=lsuv's rescaling on data.
    name: str = InitSpec.name  # kaiming | xavier | lsuv
    mode: str = InitSpec.mode  # kaiming: fan_in (Eq. 10) | fan_out (Eq. 14); xavier also: avg
    distribution: str = InitSpec.distribution  # normal | uniform | orthogonal (Saxe et al. 2014)
    # The class-score layer's std is the init's rule times head_scale: 0 (default) starts it at zero, 1 is the
    # rule, as every other layer. Why zero: rectnet/layers/init.py and docs/recipes.md.
    head_scale: float = InitSpec.head_scale
    count_dropout: bool = InitSpec.count_dropout  # kaiming: count inverted dropout's 1/(1-p) in Eq. 7
    # Centring: each layer that reads an activation gets the bias -E[f] sum(W) and, under kaiming fan_in, its gain
    # from Var[f] instead of E[f^2] (rectnet/layers/init.py). Off (the papers' init) unless the activation asks for
    # it (activation.center: softplus). Not with init=lsuv.
    center: bool = InitSpec.center
    lsuv: LSUVConfig = field(default_factory=LSUVConfig)

    def spec(self) -> InitSpec:
        """The init policy this section configures, for `rectnet.models.create` and `rectnet.convert`."""
        return InitSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(InitSpec)})

    def validate(self) -> None:
        _require(self.head_scale >= 0, "init.head_scale", "must be >= 0", self.head_scale)
        _one_of("init.mode", self.mode, ("fan_in", "fan_out", "avg"))
        _one_of("init.distribution", self.distribution, DISTRIBUTIONS)
        _require(
            not (self.center and self.name == "lsuv"),
            "init.center",
            "is for kaiming and xavier: LSUV rescales each layer's weights on data and would leave the centring "
            "bias behind",
            self.center,
        )
        self.lsuv.validate()


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    decay_bias: bool = True  # false: no weight decay on biases
    decay_slopes: bool = False  # PReLU slopes: no decay (He et al. §2.1); true only for ablations

    def validate(self) -> None:
        _one_of("optim.name", self.name, ("sgd",))
        _require(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _require(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # constant | step | multistep | cosine | plateau
    gamma: float = 0.1  # lr factor at each switch (1e-2 -> 1e-3 -> 1e-4 in He et al. §3)
    step_size: int = 30  # step: epochs between switches
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which to switch
    patience: int = 5  # plateau: epochs without improvement of the test top-1 error before a switch
    threshold: float = 1e-3  # plateau: relative improvement that counts
    min_lr: float = 0.0  # plateau: the floor; cosine: the value at the last epoch
    # Linear warmup from warmup_factor * lr to lr over the first steps (per step), before and on top of any
    # schedule above: warmup_steps, or warmup_epochs (a fraction allowed) converted to steps; 0 = none.
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.1

    def validate(self) -> None:
        _one_of("schedule.name", self.name, ("constant", "step", "multistep", "cosine", "plateau"))
        _require(self.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0", self.warmup_steps)
        _require(self.warmup_epochs >= 0, "schedule.warmup_epochs", "must be >= 0", self.warmup_epochs)
        _require(
            not (self.warmup_steps and self.warmup_epochs),
            "schedule.warmup_steps/warmup_epochs",
            "are two ways to say one thing: set one of them",
            (self.warmup_steps, self.warmup_epochs),
        )
        _require(0 < self.warmup_factor <= 1, "schedule.warmup_factor", "must be in (0, 1]", self.warmup_factor)
        _require(0 < self.gamma <= 1, "schedule.gamma", "must be in (0, 1]", self.gamma)
        _require(self.step_size >= 1, "schedule.step_size", "must be >= 1", self.step_size)
        _require(all(m >= 1 for m in self.milestones), "schedule.milestones", "must be >= 1", self.milestones)
        _require(self.patience >= 0, "schedule.patience", "must be >= 0", self.patience)
        _require(self.threshold >= 0, "schedule.threshold", "must be >= 0", self.threshold)
        _require(self.min_lr >= 0, "schedule.min_lr", "must be >= 0", self.min_lr)


@dataclass
class TrainerConfig:
    epochs: int = 350
    # The batch: with batch_scope=global (default) the images of one SGD step over all processes, each process
    # taking batch_size / processes, so a run computes the same on any GPU count; with batch_scope=process the
    # images of each process (the global batch then grows with the processes). See `batch_sizes`.
    batch_size: int = 128
    batch_scope: str = "global"  # global | process
    eval_batch_size: int = 500
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto (bf16 autocast where the hardware has native bf16: CUDA with bf16, CPUs with avx512_bf16/amx_bf16;
    # fp32 elsewhere; the choice is logged) | fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler, CUDA only)
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    fused_prelu: bool = True  # PReLU's one-pass CPU kernel, both passes (rectnet/layers/fused.py); false: F.prelu
    keep_freed_memory: bool = True  # CPU: malloc keeps freed activation buffers for the next step (runtime.py)
    resume: str | None = "auto"  # "auto": <run_dir>/checkpoints/last.pt if it exists; a path; null: never
    threads: int | None = None  # CPU intra-op threads; null: $OMP_NUM_THREADS, else usable cores / local ranks
    # torch.use_deterministic_algorithms(warn_only=True) + cudnn.benchmark off: ops without a deterministic
    # kernel (adaptive_max_pool2d's CUDA backward, SPP nets) warn instead of failing (runtime.set_determinism)
    deterministic: bool = False
    # progress every N steps; also how often the host reads losses from the device (the bar then redraws) and
    # the ranks agree on stop signals and NaN (engine/agreement.py, read_window)
    log_every_steps: int = 50
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines | none
    max_steps_per_epoch: int | None = None  # cap for quick checks; null = the whole epoch
    checkpoint_every_steps: int = 0  # also write last.pt every N steps inside an epoch (0: at epoch ends only)
    # Edge-of-stability watch (rectnet/engine/curvature.py): every N steps, lambda_max of the training loss on
    # that step's batch (Lanczos, at most sharpness_iters Hessian-vector products, each about two steps' cost)
    # and lr / lr_max, in train.log, sharpness.jsonl and TensorBoard (stability/); 0: off. Training is unchanged.
    sharpness_every_steps: int = 0
    sharpness_iters: int = 20
    # Keys whose value may differ from the checkpoint's on resume (rectnet/engine/fingerprint.py): any other
    # difference in what defines the run refuses the resume, naming the keys.
    resume_allow: list[str] = field(default_factory=list)
    # Minutes a rank waits in a collective for the others (torch.distributed's timeout) before it fails: under
    # srun/submitit the ranks of a dead rank's job wait that long in their next collective (torchrun stops them).
    dist_timeout_min: float = 15.0
    # The same for waits on rank 0's one-time setup work (indexing an ImageFolder tree): engine/distributed.py.
    setup_timeout_min: float = 120.0
    # "Single" protocol (Shang et al. 2016 §3.1): stage 1 measures the training loss (eval mode, whole
    # training split) at each new best held-out error; stage 2 stops once the held-out loss reaches it.
    record_train_loss_at_best: bool = False
    stop_at_val_loss: float | None = None

    def batch_sizes(self, world_size: int) -> tuple[int, int]:
        """(images per process, images per SGD step over all `world_size` processes).

        A global batch that the processes cannot share equally is refused rather than rounded: a recipe's
        learning rate holds for its global batch (He et al. 2015 §3 keep 128 on 4 or 8 GPUs "because the
        accuracy may be decreased")."""
        if self.batch_scope == "process":
            return self.batch_size, self.batch_size * world_size
        _require(
            self.batch_size % world_size == 0,
            "trainer.batch_size",
            f"(the global batch, trainer.batch_scope=global) must divide among the {world_size} processes; choose "
            f"a multiple of {world_size}, or trainer.batch_scope=process to give each process its own batch",
            self.batch_size,
        )
        return self.batch_size // world_size, self.batch_size

    def validate(self) -> None:
        _require(self.epochs >= 1, "trainer.epochs", "must be >= 1", self.epochs)
        _require(self.batch_size >= 1, "trainer.batch_size", "must be >= 1", self.batch_size)
        _one_of("trainer.batch_scope", self.batch_scope, ("global", "process"))
        _require(self.eval_batch_size >= 1, "trainer.eval_batch_size", "must be >= 1", self.eval_batch_size)
        _one_of("trainer.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _one_of("trainer.progress", self.progress, ("auto", "bar", "lines", "none"))
        _require(self.log_every_steps >= 1, "trainer.log_every_steps", "must be >= 1", self.log_every_steps)
        _require(
            self.checkpoint_every_steps >= 0,
            "trainer.checkpoint_every_steps",
            "must be >= 0",
            self.checkpoint_every_steps,
        )
        _require(
            self.sharpness_every_steps >= 0, "trainer.sharpness_every_steps", "must be >= 0", self.sharpness_every_steps
        )
        _require(self.sharpness_iters >= 2, "trainer.sharpness_iters", "must be >= 2", self.sharpness_iters)
        _require(self.threads is None or self.threads >= 1, "trainer.threads", "must be >= 1", self.threads)
        _require(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "trainer.max_steps_per_epoch",
            "must be >= 1 or null",
            self.max_steps_per_epoch,
        )
        _require(
            self.stop_at_val_loss is None or self.stop_at_val_loss >= 0,
            "trainer.stop_at_val_loss",
            "must be >= 0 or null",
            self.stop_at_val_loss,
        )
        for key in ("dist_timeout_min", "setup_timeout_min"):
            _require(getattr(self, key) > 0, f"trainer.{key}", "must be > 0", getattr(self, key))


@dataclass
class EvalConfig:
    """Test protocols (He et al. 2015 §3; Shang et al. 2016 §3.2): how every epoch's test split is scored, and
    eval.py's default."""

    protocol: str = "center"  # center | ten_view | dense (ImageFolder datasets); tensor datasets: whole images
    size: int = 256  # center / ten_view: shorter side before the crop (dataset.image_size) is cut
    scales: list[int] = field(default_factory=lambda: [256, 384, 480])  # dense: shorter sides (He et al. Table 4)
    dense_stride: int = 1  # dense: step between windows on the last feature map (not given in the paper)
    average: str = "softmax"  # how views are combined: mean of softmax scores | mean of logits

    def validate(self) -> None:
        _one_of("eval.protocol", self.protocol, ("center", "ten_view", "dense"))
        _one_of("eval.average", self.average, ("softmax", "logits"))
        _require(self.size >= 1, "eval.size", "must be >= 1", self.size)
        _require(bool(self.scales) and min(self.scales) >= 1, "eval.scales", "must list sizes >= 1", self.scales)
        _require(self.dense_stride >= 1, "eval.dense_stride", "must be >= 1", self.dense_stride)


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    slope_histograms: bool = True  # PReLU slopes per layer as TensorBoard histograms, every epoch


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    run_dir: str = "${hydra:runtime.output_dir}"


def activation_default(name: str, key: str) -> Any:
    """`${activation_default:prelu,slope}` in an activation config: the default of that activation class's parameter,
    stated once in rectnet/layers/activations.py; the config names it and the resolved config records its value."""
    from rectnet.layers.activations import parameter_defaults  # the layers import nothing from the config

    return parameter_defaults(key)[name]


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    register_resolvers()


def register_resolvers() -> None:
    """rectnet's `${...}` resolvers: train.py's run directory names and the activation defaults."""
    from rectnet.launch import default_run_dir, hydra_output_subdir  # it raises this module's ConfigError

    OmegaConf.register_new_resolver("rectnet_run_dir", default_run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("rectnet_output_subdir", hydra_output_subdir, replace=True)
    OmegaConf.register_new_resolver("activation_default", activation_default, replace=True)


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a mistyped `word` (difflib's ratio >= 0.6: "epoch" finds "epochs", "learning_rate"
    does not find "lr"), or None."""
    found = difflib.get_close_matches(word, sorted(candidates), n=1)
    return found[0] if found else None


def _reject_unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """`+key=value` can add keys that no dataclass field holds; they would be dropped silently."""
    names = {f.name for f in dataclasses.fields(schema)}
    for key in cfg:
        if key == "hydra":
            continue
        if key not in names:
            match = close_match(key, names)
            guess = f"did you mean {prefix}{match}? " if match else ""
            raise ConfigError(f"unknown config key {prefix}{key}; {guess}valid keys here: {', '.join(sorted(names))}")
        field_type = next(f.type for f in dataclasses.fields(schema) if f.name == key)
        sub_schema = globals().get(field_type) if isinstance(field_type, str) else field_type
        if dataclasses.is_dataclass(sub_schema):
            _reject_unknown_keys(cfg[key], sub_schema, f"{prefix}{key}.")


def _reject_non_finite(value: Any, key: str) -> None:
    """No float anywhere in the config may be inf or NaN (`optim.lr=1e400` parses as inf)."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _reject_non_finite(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _reject_non_finite(v, key)
    elif isinstance(value, float):
        _require(math.isfinite(value), key, "must be a finite number", value)


def to_settings(cfg: DictConfig, training: bool = True) -> TrainConfig:
    """Resolve and validate a composed config into `TrainConfig` (raises ConfigError with the key).

    After the ranges, rectnet/engine/preflight.py checks what the registries, the model's layer list and (with
    `training`: for a training run, not for eval.py or a summary) the data split and this machine's memory say."""
    _reject_unknown_keys(cfg, TrainConfig)
    settings = OmegaConf.to_object(cfg)
    if not isinstance(settings, TrainConfig):
        raise ConfigError("the config was not composed from train_schema (configs/train.yaml's defaults)")
    _reject_non_finite(settings, "")
    _require(0 <= settings.seed < 2**32, "seed", "must be in [0, 2**32) (numpy's seed range)", settings.seed)
    for section in vars(settings).values():
        if hasattr(section, "validate"):
            section.validate()
    from rectnet.engine import preflight  # the registries it asks import this module

    preflight.check(settings, training)
    return settings


def settings_from_dict(config: dict) -> TrainConfig:
    """A saved, resolved config (a checkpoint's `config`, results.json's `config`) back into TrainConfig, to read
    or evaluate what it trained (so not checked as a training run on this machine: `to_settings`)."""
    saved = {**config, "run_dir": config.get("run_dir", ".")}  # outside Hydra ${hydra:...} cannot resolve
    return to_settings(OmegaConf.merge(OmegaConf.structured(TrainConfig), saved), training=False)


register_configs()
