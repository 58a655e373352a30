"""The paper's image models: shapes, layer counts, parameter counts, the protocol's default init."""

import pytest
import torch

import emergeinit as ei
from emergeinit.models import build_model, model_input_shape

# 16 biased 3x3 convs of the VGG-19 configuration, then Linear(512, 10)
_VGG_WIDTHS = [3, 64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
VGG19_PARAMS = sum(a * b * 9 + b for a, b in zip(_VGG_WIDTHS[:-1], _VGG_WIDTHS[1:])) + 512 * 10 + 10


@pytest.mark.parametrize(
    "name, weight_layers, params",
    [
        ("mlp", 4, 784 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10),
        ("vgg19", 17, VGG19_PARAMS),
        ("vgg19_bn", 17, VGG19_PARAMS + 2 * (2 * 64 + 2 * 128 + 4 * 256 + 8 * 512)),
        # stem 432+32; stage 1: 18 x (2 x 2304 + 64); stage 2: 4608+9216+128 + shortcut BN 32,
        # then 17 x (2 x 9216 + 128); stage 3: 18432+36864+256 + 64, then 17 x (2 x 36864 + 256); fc 650
        ("resnet110_bn", 110, 1_728_058),
    ],
)
def test_shapes_layers_and_parameter_counts(name, weight_layers, params):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(2, *model_input_shape(name))
    assert model(x).shape == (2, 10)
    assert len(ei.find_weight_layers(model, x)) == weight_layers
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet_without_bn_has_conv_biases_and_no_batchnorm():
    model = build_model("resnet20")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.conv1.bias is not None and model.layer1[0].conv1.bias is not None


def test_vgg_default_init_follows_the_protocol():
    torch.manual_seed(0)
    model = build_model("vgg19")
    std = model.classifier.weight.std().item()
    assert 0.009 < std < 0.011  # N(0, 0.01) classifier
    conv = model.features[0]  # Kaiming fan_out: std = sqrt(2 / (64 * 9))
    assert abs(conv.weight.std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.1


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="vgg19_bn"):
        build_model("vgg16")
