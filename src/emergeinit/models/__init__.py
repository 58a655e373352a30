"""The paper's models, written here and importable with torch alone (no harness extras).

``build_model("vgg19")`` builds one by name: ``mlp``, ``vgg19``, ``vgg19_bn``, ``resnet20[_bn]``,
``resnet110[_bn]`` (see :mod:`emergeinit.models.image`).
"""

from emergeinit.models.image import (
    MLP, MODELS, VGG, BasicBlock, CifarResNet, build_model, model_input_shape,
)

__all__ = ["MLP", "VGG", "CifarResNet", "BasicBlock", "build_model", "MODELS", "model_input_shape"]
