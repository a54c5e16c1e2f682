"""He et al. 2015 ("Delving Deep into Rectifiers") networks: the 14-layer model (Table 1), its 30-layer plain
extension (Fig. 3, described in §2.2) and the large models A, B, C (Table 3, §2.3).

The activation under study (ReLU / PReLU) follows every conv layer and fc1/fc2; fc3 has none (§2.3,
Table 1 lists PReLU coefficients for conv and fc1/fc2 only). Layers are named as Table 1 names them: conv1,
then conv<stage><j> for the j-th conv of each stage that a pooling layer closes (conv21 .. conv24, conv31 ..),
and fc1 .. fc3.

Choices where the paper is silent:

* 14-layer model (Table 1, from He & Sun 2014). conv1 7x7/2 has no padding and pool1 3x3/3 none, so a
  224 input gives 109 -> 36 -> (pool2 2x2/2) 18. The 2x2 convs alternate padding 1 and 0 (a -> a+1 -> a):
  a 2x2 kernel cannot keep the size with symmetric padding, and alternating keeps every stage's size after
  an even number of convs without the half-pixel drift that one-sided "same" padding accumulates. The last
  map is then 18x18, which every SPP level {6, 3, 2, 1} divides exactly (50 bins).
* Dropout 0.5 after fc1 and fc2 in the 14/30-layer models as in the large models (§3); He & Sun 2014's own
  rate is not in the paper. `model.dropout` overrides it.
* 30-layer model (Fig. 3: "the 14-layer model plus up to sixteen extra 2x2 conv layers of 256 filters";
  where is not stated): all sixteen go into the 256-filter stage, after conv31-36, giving 22 convs of
  2x2x256 on the 18x18 map (27 conv + 3 fc = 30 weight layers).
* Models A/B/C: conv1 7x7/2 with padding 3 (224 -> 112), 2x2/2 max-pools without padding, 3x3 convs with
  padding 1, so the maps are 112 -> 56 -> 28 -> 14 as in Table 3; SPP {7, 3, 2, 1} = 63 bins on 14x14.

Complexity at 224x224 (multiply-adds of conv and fc layers, `python -m rectnet.summary model=prelu_a
dataset.image_size=224 dataset.num_classes=1000`), against Table 3: A 1.906e10 (1.90), B 2.322e10 (2.32),
C 5.346e10 (5.30). C is 0.9% above the table with this layout (an independent count by hand gets the same,
~5.35); the paddings are fixed by the table's 112/56/28/14 maps, so the gap is not a layout choice here. Where it comes
from (rounding, or a counting convention that differs for C) is not known; A and B match to 0.3%.

fc initialisation (§3): Gaussian std 0.01 for fc1/fc2 and 0.001 for fc3, through `model.init_std`
(weight-layer index -> std; fc1-fc3 are layers 12-14 of the 14-layer model, 28-30 of the 30-layer one, 17-19
of A, 20-22 of B/C). The paper pairs them with unscaled, mean-subtracted pixels (dataset.per_pixel_mean=true),
and rectnet refuses that input without them: Eq. 10/14 fc layers on such input start with logits of RMS ~190.
With per-channel normalized input (the default) the fc layers follow the init like the conv layers;
docs/recipes.md has the measurements behind both.
"""

from rectnet.layers.spp import SPP
from rectnet.models.spec import CLASSES, Conv, Dropout, LayerSpec, Linear, Pool
from rectnet.models.zoo import register


def _stage_name(stage: int, j: int) -> str:
    """Table 1's name of the j-th conv of a stage (a stage ends at a pooling layer): conv21 .. conv24; from the
    tenth conv of a stage on (the 30-layer model's 22-conv stage) conv3_10, as "conv310" would read as stage 31."""
    return f"conv{stage}{j}" if j < 10 else f"conv{stage}_{j}"


def _convs_2x2(filters: int, count: int, stage: int) -> list[LayerSpec]:
    """`count` 2x2 convs; padding alternates 1, 0 so each pair maps a x a -> (a+1) x (a+1) -> a x a."""
    return [Conv(filters, 2, padding=1 - i % 2, name=_stage_name(stage, i + 1)) for i in range(count)]


def _convs_3x3(filters: int, count: int, stage: int) -> list[LayerSpec]:
    return [Conv(filters, 3, padding=1, name=_stage_name(stage, i + 1)) for i in range(count)]


def _classifier(levels: tuple[int, ...]) -> list[LayerSpec]:
    """SPP, fc1 4096, fc2 4096 (each with the activation and dropout 0.5, §3), fc3 to the classes."""
    return [
        SPP(levels),
        Linear(4096, name="fc1"),
        Dropout(0.5),
        Linear(4096, name="fc2"),
        Dropout(0.5),
        Linear(CLASSES, act=None, name="fc3"),
    ]


def _small(stage3_convs: int) -> list[LayerSpec]:
    """Table 1 layout with `stage3_convs` 2x2 convs of 256 filters after pool2."""
    return [
        Conv(64, 7, stride=2, name="conv1"),
        Pool(3, 3),
        *_convs_2x2(128, 4, stage=2),
        Pool(2, 2),
        *_convs_2x2(256, stage3_convs, stage=3),
        *_classifier((6, 3, 2, 1)),
    ]


@register("prelu_small14")
def prelu_small14() -> list[LayerSpec]:
    """Table 1: conv1 7x7/2 64, pool 3x3/3, 4 x (2x2, 128), pool 2x2/2, 6 x (2x2, 256), SPP {6,3,2,1}, fc 4096-4096."""
    return _small(6)


@register("prelu_plain30")
def prelu_plain30() -> list[LayerSpec]:
    """Fig. 3: the 14-layer model plus sixteen 2x2 convs of 256 filters (22 in the last stage, 30 weight layers)."""
    return _small(6 + 16)


def _large(widths: tuple[int, int, int], convs_per_stage: int) -> list[LayerSpec]:
    """Table 3 layout: conv1 7x7/2 96, pool, then three stages of 3x3 convs each closed by a 2x2/2 pool or SPP."""
    w56, w28, w14 = widths
    return [
        Conv(96, 7, stride=2, padding=3, name="conv1"),
        Pool(2, 2),
        *_convs_3x3(w56, convs_per_stage, stage=2),
        Pool(2, 2),
        *_convs_3x3(w28, convs_per_stage, stage=3),
        Pool(2, 2),
        *_convs_3x3(w14, convs_per_stage, stage=4),
        *_classifier((7, 3, 2, 1)),
    ]


@register("prelu_a")
def prelu_a() -> list[LayerSpec]:
    """Table 3 model A (19 layers): 5 x (3x3, 256 / 512 / 512) at 56 / 28 / 14, SPP {7,3,2,1}, fc 4096-4096."""
    return _large((256, 512, 512), 5)


@register("prelu_b")
def prelu_b() -> list[LayerSpec]:
    """Table 3 model B (22 layers): A with one more conv per stage, 6 x (3x3, 256 / 512 / 512)."""
    return _large((256, 512, 512), 6)


@register("prelu_c")
def prelu_c() -> list[LayerSpec]:
    """Table 3 model C (22 layers): B made wider, 6 x (3x3, 384 / 768 / 896)."""
    return _large((384, 768, 896), 6)
