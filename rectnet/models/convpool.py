"""ConvPool-CNN-C (Springenberg et al. 2014), the CReLU paper's CIFAR baseline (Shang et al. 2016, Table 1).

Layer list: Springenberg et al.'s Model C with a dense 3x3 conv before each max-pool, as re-implementations
(asnadyvt/all_conv_net) build it. Choices
where the sources are silent:

* Max-pools are 3x3/2 with padding 1 so that 32 -> 16 -> 8, and conv7 is "valid", giving the 6x6 map
  that Springenberg averages globally ("global averaging over 6 x 6 spatial dimensions").
* The class-score layer (1x1 conv, one filter per class) has no activation after it, whatever activation
  is studied: its outputs are the logits (a ReLU there would clip every negative class score to 0 before
  the softmax), and CReLU there would double the class count where the CReLU paper's counts (Table 1) fit a
  10/100-output classifier. Springenberg's table lists a ReLU after every conv, this one
  included; dropping it is our choice.
* Dropout 0.2 on the input and 0.5 after each pool, as in Springenberg's recipe; the CReLU paper tuned
  only the dropout rate and did not publish it, so `model.dropout` overrides both.

Parameter counts (weights + biases), against Table 1: baseline 1.37M (1.4M), double 5.47M (5.6M),
CReLU 2.74M (2.8M), CReLU half 0.69M (0.7M).
"""

from rectnet.models.spec import CLASSES, Conv, Dropout, GlobalAvgPool, LayerSpec, Pool
from rectnet.models.zoo import register


@register("convpool_cnn_c")
def convpool_cnn_c() -> list[LayerSpec]:
    """ConvPool-CNN-C: 3x(3x3,96) pool 3x(3x3,192) pool 3x3,192 valid, 1x1,192, 1x1,classes, global average."""
    return [
        Dropout(0.2),
        *[Conv(96, 3, padding=1) for _ in range(3)],
        Pool(3, 2, padding=1),
        Dropout(0.5),
        *[Conv(192, 3, padding=1) for _ in range(3)],
        Pool(3, 2, padding=1),
        Dropout(0.5),
        Conv(192, 3),
        Conv(192, 1),
        Conv(CLASSES, 1, act=None),
        GlobalAvgPool(),
    ]
