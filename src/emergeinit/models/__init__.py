"""The paper's models, written here and importable with torch alone (no harness extras).

``build_model("vgg19")`` builds an image model by name: ``mlp``, ``vgg19``, ``vgg19_bn``,
``resnet20[_bn]``, ``resnet110[_bn]`` (see :mod:`emergeinit.models.image`). The translation
model is :class:`Seq2SeqTransformer` (see :mod:`emergeinit.models.transformer`).
"""

from emergeinit.models.image import (
    MLP, MODELS, VGG, BasicBlock, CifarResNet, build_model, model_input_shape,
)
from emergeinit.models.transformer import Seq2SeqTransformer

__all__ = ["MLP", "VGG", "CifarResNet", "BasicBlock", "build_model", "MODELS", "model_input_shape",
           "Seq2SeqTransformer"]
