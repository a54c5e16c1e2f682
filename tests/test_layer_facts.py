"""One list of layer facts per network, read by init, tables and analyses; modules named as the papers name
layers.

Expected values come from the papers' layer lists (He et al. 2015 Table 1; Zagoruyko's VGG for Shang et al.
2016 Table 2)."""

from __future__ import annotations

import pytest
import torch

from rectnet.layers.activations import make_activation
from rectnet.layers.facts import layer_facts, walk_layer_facts, weight_layers
from rectnet.models import create
from rectnet.models.spec import Conv, GlobalAvgPool, build


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
