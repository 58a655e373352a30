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
        build_model("vgg17")


def test_vgg_last_pool_is_adaptive_same_output_at_32_and_runs_at_16():
    torch.manual_seed(0)
    model = build_model("vgg19_bn").eval()
    x = torch.randn(2, 3, 32, 32)
    pools = [m for m in model.features if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AdaptiveMaxPool2d))]
    assert len(pools) == 5 and isinstance(pools[-1], torch.nn.AdaptiveMaxPool2d)
    reference = torch.nn.Sequential(*[torch.nn.MaxPool2d(2, 2) if m is pools[-1] else m for m in model.features])
    expected = model.classifier(torch.flatten(reference(x), 1))
    assert torch.equal(model(x), expected)
    assert build_model("vgg13", in_channels=1)(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("name, convs", [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_family_and_width(name, convs):
    model = build_model(name, width=0.25)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(layers) == convs and layers[0].out_channels == 16 and model.classifier.in_features == 128
    with pytest.raises(ValueError, match="width"):
        build_model(name, width=0)
    custom = build_model(name, cfg=[8, "M", 4], in_channels=1)
    assert [m.out_channels for m in custom.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 4]
    with pytest.raises(ValueError, match="channel counts"):
        build_model(name, cfg=[8, "X"])


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_resnet_depths_and_widths(depth):
    model = build_model(f"resnet{depth}_bn", widths=(8, 16, 32), in_channels=1)
    assert len(ei.find_weight_layers(model, torch.randn(2, 1, 16, 16))) == depth
    assert model.fc.in_features == 32
