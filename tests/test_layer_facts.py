"""One list of layer facts per network, read by init, tables and analyses; modules named as the papers name
layers; state dicts written before the modules had names (keys by position, `features.17.weight`) still load.

Expected values come from the papers' layer lists (He et al. 2015 Table 1; Zagoruyko's VGG for Shang et al.
2016 Table 2) and from hand-written tables of the old positional keys."""

from __future__ import annotations

import pytest
import torch

from rectnet.layers.activations import make_activation
from rectnet.layers.facts import layer_facts, walk_layer_facts, weight_layers
from rectnet.models import create
from rectnet.models.spec import CLASSES, Conv, Dropout, GlobalAvgPool, Linear, Pool, build

# ConvPool-CNN-C with PReLU as rectnet laid it out before modules had names: features = dropout, conv1, prelu,
# conv2, prelu, conv3, prelu, pool, dropout, conv4, ..., conv9 (no activation); head = global average pooling.
# Old key -> (layer, what): the conv's weight or bias, or the slopes of the PReLU after it.
OLD_CONVPOOL_PRELU = {
    "features.1": "conv1", "features.2": "conv1 slopes", "features.3": "conv2", "features.4": "conv2 slopes",
    "features.5": "conv3", "features.6": "conv3 slopes", "features.9": "conv4", "features.10": "conv4 slopes",
    "features.11": "conv5", "features.12": "conv5 slopes", "features.13": "conv6", "features.14": "conv6 slopes",
    "features.17": "conv7", "features.18": "conv7 slopes", "features.19": "conv8", "features.20": "conv8 slopes",
    "features.21": "conv9",
}  # fmt: skip

# A small net with BatchNorm and fc layers (below), as the old layout keyed it: features = conv1, bn, prelu, pool,
# dropout, conv2, prelu; head = global average pooling, fc3, bn, prelu, fc4.
SMALL = [Conv(4, 3, bn=True), Pool(2, 2), Dropout(0.5), Conv(8, 3), GlobalAvgPool(), Linear(6, bn=True)]
SMALL += [Linear(CLASSES, act=None)]
OLD_SMALL = {
    "features.0": "conv1", "features.1": "conv1 bn", "features.2": "conv1 slopes", "features.5": "conv2",
    "features.6": "conv2 slopes", "head.1": "fc3", "head.2": "fc3 bn", "head.3": "fc3 slopes", "head.4": "fc4",
}  # fmt: skip


def old_state_dict(model: torch.nn.Module, old: dict[str, str]) -> dict[str, torch.Tensor]:
    """`model`'s tensors under the old positional keys, looked up layer by layer through `weight_layers`."""
    parts = {}
    for layer in weight_layers(model):
        norm = model.get_submodule(layer.facts.norm) if layer.facts.norm else None
        parts |= {layer.name: layer.module, f"{layer.name} slopes": layer.after, f"{layer.name} bn": norm}
    state = {}
    for prefix, part in old.items():
        state |= {f"{prefix}.{key}": value.clone() for key, value in parts[part].state_dict().items()}
    return state


@pytest.mark.parametrize(
    ("make", "old"),
    [
        (lambda: create("convpool_cnn_c", act="prelu", width=0.125, init_head_scale=1.0), OLD_CONVPOOL_PRELU),
        (lambda: build(SMALL, make_activation("prelu"), 10), OLD_SMALL),
    ],
)
def test_a_state_dict_in_the_old_positional_keys_loads_into_the_named_modules(make, old):
    torch.manual_seed(0)
    trained = make()
    with torch.no_grad():  # every tensor distinct from a fresh model's, BN statistics and slopes included
        for tensor in trained.state_dict().values():
            tensor.add_(torch.rand_like(tensor.float()).to(tensor.dtype) + 1)
    saved = old_state_dict(trained, old)
    assert len(saved) == len(trained.state_dict())  # the hand-written table covers every tensor
    assert all(key.split(".")[1].isdigit() for key in saved)

    fresh = make()
    fresh.load_state_dict(saved)  # strict: every key must find its module
    expected = trained.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in fresh.state_dict().items())


def test_modules_are_named_as_table_1_names_the_layers():
    model = create("prelu_small14", act="prelu", width=0.0625)
    modules = [name for name, _ in model.named_children()]
    assert modules == ["features", "head"]
    assert [name for name, _ in model.features.named_children()][:5] == [
        "conv1", "conv1_prelu", "pool1", "conv21", "conv21_prelu"
    ]  # fmt: skip
    assert [name for name, _ in model.head.named_children()] == [
        "spp", "fc1", "fc1_prelu", "dropout1", "fc2", "fc2_prelu", "dropout2", "fc3"
    ]  # fmt: skip
    assert [f.name for f in model.layer_facts] == [
        "conv1", "conv21", "conv22", "conv23", "conv24", "conv31", "conv32", "conv33", "conv34", "conv35", "conv36",
        "fc1", "fc2", "fc3",
    ]  # fmt: skip


def test_facts_of_vgg_with_crelu_at_conv1_and_conv3_halved():
    """Zagoruyko's VGG (Shang et al. 2016 Table 2, "CReLU (conv1,3)"): 64 -> 32 filters at conv1 and 128 -> 64 at
    conv3, each CReLU doubling what the next layer reads; dropout 0.3 after conv1, 0.4 after conv3, 0.5 twice in
    the classifier; fc15 scores the classes with no activation."""
    facts = create("vgg_cifar", act="crelu", act_at=[1, 3], halve_at=[1, 3], num_classes=100).layer_facts
    conv1, conv2, conv3, conv4 = facts[:4]
    assert [f.index for f in facts] == list(range(1, 16)) and facts[-2].name == "fc14" and facts[-1].name == "fc15"
    assert (conv1.out_channels, conv2.in_channels, conv3.out_channels, conv4.in_channels) == (32, 64, 64, 128)
    assert [f.activation for f in facts[:4]] == ["crelu", "relu", "crelu", "relu"]
    assert [f.index for f in facts if f.studied] == [1, 3]
    assert conv1.norm == "features.conv1_bn" and conv1.act == "features.conv1_crelu"
    assert (conv1.keep_out, conv2.keep_in, conv3.keep_out, conv4.keep_in) == (0.7, 0.7, 0.6, 0.6)
    assert (facts[-2].keep_in, facts[-2].keep_out, facts[-1].keep_in) == (0.5, 0.5, 0.5)
    assert [f.classifier for f in facts].count(True) == 1 and facts[-1].classifier
    assert (facts[-1].act, facts[-1].out_channels, facts[-1].kind) == (None, 100, "fc")


def test_a_plain_module_stack_is_read_off_its_modules():
    relu = make_activation("relu")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), relu(5), torch.nn.Dropout(0.2), torch.nn.Conv2d(5, 2, 1))
    assert layer_facts(model) == walk_layer_facts(model)
    first, second = layer_facts(model)
    assert (first.name, first.module, first.act, first.activation, first.keep_out) == ("conv1", "0", "1", "relu", 0.8)
    assert (second.name, second.in_channels, second.act) == ("conv2", 5, None)
    assert second.classifier and not second.studied


def test_init_std_and_act_at_keep_their_1_based_indices():
    model = create("prelu_a", width=0.0625, init_std={17: 0.01, 19: 0.001})
    layers = {layer.name: layer for layer in weight_layers(model)}
    assert (layers["fc1"].facts.index, layers["fc3"].facts.index) == (17, 19)
    assert (layers["fc1"].module.init_std, layers["fc3"].module.init_std) == (0.01, 0.001)
    assert not hasattr(layers["fc2"].module, "init_std")
    facts = create("allcnn_b", act="crelu", act_at=[1, 4, 7], width=0.0625).layer_facts
    assert [f.name for f in facts if f.activation == "crelu"] == ["conv1", "conv4", "conv7"]


def test_two_layers_of_one_name_are_refused():
    with pytest.raises(ValueError, match=r"layer names \['conv1'\] occur more than once"):
        build([Conv(4, 3), Conv(4, 3, name="conv1"), GlobalAvgPool()], make_activation("relu"), 10)
