"""The real torchvision and timm models, wherever those packages import (on a GPU machine with
torchvision and timm installed they run there; on this project's CPU machines neither imports beside
the local torch, and pytest reports each case as skipped with the reason). The same checks as the
stand-ins of tests/_vision_standins.py: measure, plan, global and blockwise init, training steps,
every method of ``initialize`` that applies."""

import importlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import emergeinit as ei
from _steps import train_steps
from emergeinit.layers import find_blocks, find_weight_layers

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: (package, constructor name, default blocks expected: count and the class they are)
MODELS = {
    "torchvision/resnet50": ("torchvision.models", "resnet50", 16, "Bottleneck"),
    "torchvision/vgg19_bn": ("torchvision.models", "vgg19_bn", 0, None),
    "torchvision/mobilenet_v3_large": ("torchvision.models", "mobilenet_v3_large", 15, "InvertedResidual"),
    "torchvision/convnext_tiny": ("torchvision.models", "convnext_tiny", 18, "CNBlock"),
    "torchvision/vit_b_16": ("torchvision.models", "vit_b_16", 12, "EncoderBlock"),
    "torchvision/efficientnet_b0": ("torchvision.models", "efficientnet_b0", 16, "MBConv"),
    "timm/vit_small_patch16_224": ("timm", "vit_small_patch16_224", 12, "Block"),
    "timm/resnet50": ("timm", "resnet50", 16, "Bottleneck"),
    "timm/convnext_tiny": ("timm", "convnext_tiny", 18, "ConvNeXtBlock"),
    "timm/deit_tiny_patch16_224": ("timm", "deit_tiny_patch16_224", 12, "Block"),
    "timm/efficientnet_b0": ("timm", "efficientnet_b0", 15, "InvertedResidual"),  # its first block has no skip
}


def build(key):
    package, name, _, _ = MODELS[key]
    try:
        module = importlib.import_module(package)
    except Exception as err:  # noqa: BLE001 - e.g. torchvision's C extension against another torch
        pytest.skip(f"{package} does not import here ({type(err).__name__}: {err})")
    torch.manual_seed(0)
    model = module.create_model(name, num_classes=10) if package == "timm" else getattr(module, name)(num_classes=10)
    return model.to(DEVICE)


X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEVICE)
Y = torch.tensor([1, 7], device=DEVICE)


def _train_steps(model, steps=2):
    return train_steps(model, lambda m: F.cross_entropy(m(X), Y), steps, lr=1e-3)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_real_model_measures_plans_initializes_and_trains(key):
    model = build(key)
    _, _, n_blocks, kind = MODELS[key]
    layers = find_weight_layers(model, X)
    report = ei.measure_emergence(model, X)
    assert math.isfinite(report.log10) and len(report.layers) >= 1
    assert ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=X).factors.keys() >= \
        {l.key for l in layers if l.kind != "attention"}
    if n_blocks == 0:
        with pytest.raises(ValueError, match="no default blocks"):
            find_blocks(model, layers, example_input=X)
    else:
        blocks = find_blocks(model, layers, example_input=X)
        assert len(blocks) == n_blocks
        assert {type(model.get_submodule(b.split("#")[0])).__name__ for b in blocks} == {kind}
        assert all(b.depth >= 2 for b in blocks.values())
        ei.emergence_init_(model, alpha=2.0, schedule="normalized", scope="blockwise", example_input=X)
    ei.emergence_init_(model, alpha=2.0, schedule="normalized", example_input=X)
    assert all(math.isfinite(v) for v in _train_steps(model))


@pytest.mark.parametrize("key", sorted(MODELS))
def test_every_method_on_real_model(key):
    methods = {"kaiming": {}, "xavier": {}, "emergence": dict(alpha=2.0, example_input=X),
               "lsuv": dict(data=X, max_iters=1), "metainit": dict(data=(X, Y), steps=1),
               "gradinit": dict(data=(X, Y), iters=1, gamma=1e-6)}
    for method, options in methods.items():
        model = build(key)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if "mobilenet_v3" in key and method in ("metainit", "gradinit"):
            with pytest.raises(ValueError, match=r"aten::hardsigmoid.*scale_activation"):
                ei.initialize(model, method, **options)
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ei.initialize(model, method, **options)
        assert all(torch.isfinite(p).all() for p in model.parameters()), method
        assert all(math.isfinite(v) for v in _train_steps(model, steps=1)), method
