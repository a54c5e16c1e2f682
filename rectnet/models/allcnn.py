"""All-CNN-B (Springenberg et al. 2014, ImageNet version), the CReLU paper's ImageNet baseline (Shang et al.
2016, Tables 4-5). Layer list reconstructed from a third-party Caffe file (chakkritte/CReLU, train_val.prototxt)
and checked against Table 5's parameter counts; the paper's own table, suppl. F, was not available).

AlexNet-like, with pools replaced by strided convs and fc layers by 1x1 convs plus global averaging:
224 -> conv1 11x11/4 -> 54 -> conv3 3x3/2 -> 26 -> conv6 3x3/2 -> 12 -> conv9 3x3/2 (pad 1) -> 6.
The activation under study follows every conv, including conv12 whose output is averaged into the logits
(Springenberg's all-conv nets keep a ReLU there).

Variants of Table 4 (weight layers are conv1..conv12):

* CReLU / AVR (conv1-4, 1-7, 1-9): `act_at` = those layers, same filters (`configs/experiment/allcnn_b_*`).
* CReLU (conv1,4,7): `act_at=[1,4,7]`, `halve_at=[1,4,7]` (filters halved before CReLU, §3.2).
* CReLU (all): CReLU everywhere and every layer halved. conv12 is the classifier (`CLASSES`): it gets
  num_classes/2 = 500 filters and its CReLU gives the 1000 averaged logits, the reading that
  matches the paper's 4.7M (a 1000-filter conv12 without CReLU would give 5.2M). `spec.build` does this for
  any CLASSES layer: its filters times its activation's channel multiplier equal num_classes, so `halve_at`
  is irrelevant there.

Dropout 0.25 before conv10 as in that Caffe file (Springenberg's rate is not verified, the CReLU
paper tuned it and did not publish it); `model.dropout` overrides it.

Parameters (weights + biases), against Table 5: baseline 9.37M (9.4M), CReLU (conv1-4) 10.14M (10.1M),
CReLU (conv1,4,7) 8.61M (8.6M), CReLU (all) 4.69M (4.7M).
"""

from rectnet.models.spec import CLASSES, Conv, Dropout, GlobalAvgPool, LayerSpec
from rectnet.models.zoo import register


@register("allcnn_b")
def allcnn_b() -> list[LayerSpec]:
    """All-CNN-B: 11x11/4 96, 1x1 96, 3x3/2 96, 5x5 256, 1x1 256, 3x3/2 256, 3x3 384, 1x1 384, 3x3/2 384,
    dropout, 3x3 1024, 1x1 1024, 1x1 classes, global average pool."""
    return [
        Conv(96, 11, stride=4),
        Conv(96, 1),
        Conv(96, 3, stride=2),
        Conv(256, 5, padding=2),
        Conv(256, 1),
        Conv(256, 3, stride=2),
        Conv(384, 3, padding=1),
        Conv(384, 1),
        Conv(384, 3, stride=2, padding=1),
        Dropout(0.25),
        Conv(1024, 3, padding=1),
        Conv(1024, 1),
        Conv(CLASSES, 1),
        GlobalAvgPool(),
    ]
