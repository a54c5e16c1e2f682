"""VGG-BN-dropout for CIFAR (Zagoruyko 2015, "92.45% on CIFAR-10 in Torch"), the deeper net of the CReLU
paper (Shang et al. 2016, Table 2). Layer list: Zagoruyko's models/vgg_bn_drop.lua (szagoruyko/cifar.torch).

13 convs 3x3 pad 1 (64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3), each followed by BatchNorm and the
activation, a 2x2/2 max-pool (ceil mode) after each stage, dropout 0.3 after the first conv and 0.4 after every
other conv that is not last in its stage; classifier: dropout 0.5, Linear 512->512, BN, activation, dropout
0.5, Linear 512->classes (no activation). Weight layers: conv1..conv13, fc14, fc15.

CReLU variants (Table 2): `act_at=[1]`/`[1,3]`/`[1,3,5]` with `halve_at` the same list, i.e. CReLU after conv1
(64 -> 32 filters), conv3 (the first 128) and conv5 (the first 256) with those layers' filters halved
(`configs/experiment/vgg_cifar_crelu*`).

Differences from Zagoruyko's Torch model, none of which changes a layer's shape:

* After five pools a 32x32 image is 1x1x512; Zagoruyko flattens it (View(512)), this file averages it
  globally, which is the same at 32x32 and keeps the net usable at other input sizes.
* The convs and fc1, each followed by BN, have no bias (BN's shift makes it redundant; 4,736 fewer
  parameters), and BN uses PyTorch's eps 1e-5 instead of 1e-3.
"""

from rectnet.models.spec import CLASSES, Conv, Dropout, GlobalAvgPool, LayerSpec, Linear, Pool
from rectnet.models.zoo import register


def _stage(filters: int, convs: int, dropout: float) -> list[LayerSpec]:
    """`convs` Conv-BN-act layers with dropout after every one but the last, then a 2x2/2 ceil-mode max-pool."""
    layers: list[LayerSpec] = []
    for i in range(convs):
        layers.append(Conv(filters, 3, padding=1, bn=True))
        if i < convs - 1:
            layers.append(Dropout(dropout))
    return [*layers, Pool(2, 2, ceil_mode=True)]


@register("vgg_cifar")
def vgg_cifar() -> list[LayerSpec]:
    """Zagoruyko's VGG-BN-dropout: 2x64, 2x128, 3x256, 3x512, 3x512 (3x3, BN), pools; fc 512 (BN) -> classes."""
    return [
        *_stage(64, 2, dropout=0.3),
        *_stage(128, 2, dropout=0.4),
        *_stage(256, 3, dropout=0.4),
        *_stage(512, 3, dropout=0.4),
        *_stage(512, 3, dropout=0.4),
        GlobalAvgPool(),
        Dropout(0.5),
        Linear(512, bn=True),
        Dropout(0.5),
        Linear(CLASSES, act=None),
    ]
