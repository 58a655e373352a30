"""The paper's image models, written here (no torchvision): MLP, VGG-19 (±BN), ResNet-110 (±BN),
and their smaller siblings (VGG-11/13/16, ResNet-20/32/44/56, any width) for CPU-sized studies.

Shapes and conventions follow the Table-1 protocol of DESIGN.md (the one behind GradInit's
CIFAR-10 numbers): VGG-19 with biased 3×3 convs and one Linear(512, 10); the CIFAR ResNet with
BasicBlocks 18/18/18 of widths 16/32/64 and a parameter-free shortcut (stride-2 average pooling,
BN when the net has BN, zero channels appended). Each builder applies the init of GradInit's code
for that model (convs Kaiming normal fan_out with zero biases, BN (1, 0); the VGG classifier
N(0, 0.01); the ResNet classifier keeps ``nn.Linear``'s default weight, U(±1/√fan_in), with a zero
bias): the base of the Table-1 protocol (docs/harness.md), drawn in the same order as that code,
so one seed gives the same tensors.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["MLP", "VGG", "CifarResNet", "BasicBlock", "build_model", "MODELS", "model_input_shape", "VGG_CFGS"]

Cfg = Sequence[Union[int, str]]

#: The VGG configurations of GradInit's code: channel counts, "M" a 2×2 max-pool.
VGG_CFGS: Dict[str, List[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
VGG19_CFG = VGG_CFGS["vgg19"]


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` ReLU layers and a linear classifier (paper: 3 hidden layers)."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (512, 256, 128),
                 num_classes: int = 10, bias: bool = True):
        super().__init__()
        dims = [in_features, *hidden]
        layers: List[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out, bias=bias), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], num_classes, bias=bias))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _vgg_cfg(cfg: Union[str, Cfg], width: float) -> List[Union[int, str]]:
    """``cfg`` (a name of :data:`VGG_CFGS` or a list) with every channel count × ``width``."""
    if isinstance(cfg, str):
        if cfg not in VGG_CFGS:
            raise ValueError(f"unknown VGG cfg {cfg!r}; known: {', '.join(VGG_CFGS)}")
        cfg = VGG_CFGS[cfg]
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    out: List[Union[int, str]] = []
    for v in cfg:
        if v != "M" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"a VGG cfg holds channel counts (ints >= 1) and 'M', got {v!r}")
        out.append(v if v == "M" else max(1, round(v * width)))
    if not any(v != "M" for v in out):
        raise ValueError("a VGG cfg needs at least one conv")
    return out


class VGG(nn.Module):
    """VGG for 32×32 inputs: conv stack from ``cfg`` (× ``width`` channels), then one Linear.

    The last max-pool of ``cfg`` is adaptive (to 1×1): on 32×32 inputs it is the same 2×2 pool,
    and the same net also runs on smaller images (16×16), its classifier always seeing one pixel.
    """

    def __init__(self, cfg: Union[str, Cfg] = "vgg19", batch_norm: bool = False,
                 num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        cfg = _vgg_cfg(cfg, width)
        last_pool = max((i for i, v in enumerate(cfg) if v == "M"), default=None)
        layers: List[nn.Module] = []
        c = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.AdaptiveMaxPool2d(1) if i == last_pool else nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(c, int(v), 3, padding=1, bias=True))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class _Shortcut(nn.Module):
    """Parameter-free downsampling shortcut: stride-s average pool (+BN), zero channels appended."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, batch_norm: bool):
        super().__init__()
        self.pool = nn.AvgPool2d(1, stride=stride)
        self.bn = nn.BatchNorm2d(in_planes) if batch_norm else nn.Identity()
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.pool(x))
        if self.extra > 0:
            pad = x.new_zeros(x.shape[0], self.extra, *x.shape[2:])
            x = torch.cat([x, pad], dim=1)
        return x


class BasicBlock(nn.Module):
    """conv-(BN)-ReLU-conv-(BN), plus the shortcut, then ReLU. Convs carry a bias without BN."""

    emergeinit_block = True  # blockwise emergence init runs inside each residual block

    def __init__(self, in_planes: int, planes: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(planes) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(planes) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            _Shortcut(in_planes, planes, stride, batch_norm)
            if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al.: 3 stages of BasicBlocks, widths 16/32/64 (110 = 6·18 + 2)."""

    def __init__(self, blocks: Sequence[int] = (18, 18, 18), batch_norm: bool = True,
                 num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(widths[0]) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        stages = []
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(c, w, stride, batch_norm))
                c = w
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _vgg(cfg: str, batch_norm: bool) -> Callable[..., nn.Module]:
    return lambda **kw: VGG(**{"cfg": cfg, **kw}, batch_norm=batch_norm)


def _resnet(depth: int, batch_norm: bool) -> Callable[..., nn.Module]:
    n = (depth - 2) // 6
    return lambda **kw: CifarResNet((n, n, n), batch_norm=batch_norm, **kw)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda **kw: MLP(**kw),
    **{f"{name}{suffix}": _vgg(name, suffix == "_bn") for name in VGG_CFGS for suffix in ("", "_bn")},
    **{f"resnet{d}{suffix}": _resnet(d, suffix == "_bn")
       for d in (20, 32, 44, 56, 110) for suffix in ("", "_bn")},
}


def model_input_shape(name: str) -> Tuple[int, ...]:
    """Shape of one input sample: 1×28×28 for the MLP (Fashion-MNIST), 3×32×32 otherwise."""
    return (1, 28, 28) if name == "mlp" else (3, 32, 32)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name (``MODELS``); keyword arguments go to its constructor."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return builder(**kwargs)
