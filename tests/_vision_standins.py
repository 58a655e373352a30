"""Small stand-ins for the torchvision and timm models people use, with the same module structure
and the same forward code shape (what the library sees), written here because neither package
imports beside this machine's CPU torch. Widths and depths are tiny; the layer types, the names,
the residual adds, the activation modules and the attention calls are the real ones'.

torchvision: ResNet (BasicBlock, Bottleneck), ConvNeXt (CNBlock), MobileNetV3 (InvertedResidual
with a Hardsigmoid-gated SqueezeExcitation), EfficientNet (MBConv), ViT (EncoderBlock with
nn.MultiheadAttention and an MLPBlock Sequential). timm: VisionTransformer (Block, Attention with
a fused qkv and F.scaled_dot_product_attention, Mlp, LayerScale, DropPath), ConvNeXt
(ConvNeXtBlock with gamma and a shortcut module), EfficientNet (InvertedResidual with
BatchNormAct2d and SqueezeExcite), ResNet (Bottleneck with act modules).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------ shared pieces


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: drops whole rows in training, identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(keep).div_(keep)
        return x * noise


class DropPath(StochasticDepth):
    """timm.layers.DropPath: the same idea, another class."""


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: List[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class TimmGELU(nn.Module):
    """timm.layers.activations.GELU: an activation module that is not nn.GELU."""

    def forward(self, x):
        return F.gelu(x)


def conv_norm_act(cin, cout, k=3, stride=1, groups=1, act: Optional[Callable[[], nn.Module]] = nn.ReLU):
    """torchvision.ops.Conv2dNormActivation: a Sequential of conv, BN and an activation module."""
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool, fc1, activation, fc2, scale_activation, × input."""

    def __init__(self, channels, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


# ------------------------------------------------------------------------------ torchvision


def projection(cin, cout, stride):
    """A ResNet's projection shortcut (conv 1x1 + BN), or None when the shapes already match."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = projection(cin, cout, stride)

    def branch(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        identity = x
        out = self.branch(x)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(BasicBlock):
    """torchvision's Bottleneck (its own class there; a subclass here only to share forward)."""

    def __init__(self, cin, mid, stride=1):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, mid * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(cin, mid * 4, stride)

    def branch(self, x):
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return self.bn3(self.conv3(out))


class TVResNet(nn.Module):
    """torchvision.models.ResNet: conv1/bn1/relu/maxpool, layer1..layer2, avgpool, fc."""

    def __init__(self, bottleneck: bool = False, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        if bottleneck:
            self.layer1 = nn.Sequential(Bottleneck(8, 4), Bottleneck(16, 4))
            self.layer2 = nn.Sequential(Bottleneck(16, 8, 2), Bottleneck(32, 8))
            width = 32
        else:
            self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
            self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
            width = 16
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: a LayerNorm over channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=1e-6, p=0.1):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(p)

    def forward(self, input):
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class TVConvNeXt(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6)),
            nn.Sequential(CNBlock(8), CNBlock(8)),
            nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2)),
            nn.Sequential(CNBlock(16)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Flatten(1), nn.Linear(16, classes))
        # layer_scale 1e-6 makes every block an identity at init: use 1 so activity reaches the head
        for m in self.modules():
            if isinstance(m, CNBlock):
                m.layer_scale.data.fill_(1.0)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class InvertedResidual(nn.Module):
    """torchvision MobileNetV3's block: expand, depthwise, optional SE (Hardsigmoid gate), project."""

    def __init__(self, cin, expanded, cout, stride, use_se, hs):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if hs else nn.ReLU
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=act))
        layers.append(conv_norm_act(expanded, expanded, 3, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4), scale_activation=nn.Hardsigmoid))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class TVMobileNetV3(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_norm_act(3, 8, 3, 2, act=nn.Hardswish),
            InvertedResidual(8, 8, 8, 1, False, False),  # residual, no expansion
            InvertedResidual(8, 24, 16, 2, True, False),  # strided: no residual
            InvertedResidual(16, 48, 16, 1, True, True),  # residual with SE
            conv_norm_act(16, 48, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True),
                                        nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MBConv(nn.Module):
    """torchvision EfficientNet's block: SiLU, sigmoid-gated SE, stochastic depth on the residual."""

    def __init__(self, cin, expand, cout, stride, p=0.1):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = cin * expand
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=nn.SiLU))
        layers.append(conv_norm_act(expanded, expanded, 3, stride, groups=expanded, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=nn.SiLU))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(p)

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class TVEfficientNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_norm_act(3, 8, 3, 2, act=nn.SiLU),
            nn.Sequential(MBConv(8, 1, 8, 1)),
            nn.Sequential(MBConv(8, 4, 16, 2), MBConv(16, 4, 16, 1)),
            conv_norm_act(16, 32, 1, act=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MLPBlock(nn.Sequential):
    """torchvision's ViT MLP: Linear, GELU, Dropout, Linear, Dropout (indices 0 and 3)."""

    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    def __init__(self, heads, dim, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, hidden)

    def forward(self, input):
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.mlp(self.ln_2(x))
        return x + y


class TVEncoder(nn.Module):
    def __init__(self, seq, layers, heads, dim, hidden):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(*[EncoderBlock(heads, dim, hidden) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, input):
        return self.ln(self.layers(self.dropout(input + self.pos_embedding)))


class TVViT(nn.Module):
    """torchvision.models.VisionTransformer: conv_proj patches, class token, encoder, heads.head."""

    def __init__(self, image=32, patch=8, dim=16, layers=2, heads=2, hidden=32, classes=10):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = TVEncoder((image // patch) ** 2 + 1, layers, heads, dim, hidden)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, classes))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


# ------------------------------------------------------------------------------------- timm


class Mlp(nn.Module):
    """timm.layers.Mlp: fc1, act, drop1, norm, fc2, drop2."""

    def __init__(self, dim, hidden, act=TimmGELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Attention(nn.Module):
    """timm's ViT attention: one fused qkv Linear, F.scaled_dot_product_attention, proj."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """timm.models.vision_transformer.Block."""

    def __init__(self, dim, heads, hidden, init_values=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(0.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(0.0)

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class TimmViT(nn.Module):
    """timm's VisionTransformer (ViT-S, DeiT-T shapes shrunk): cls token, pos_embed, blocks, head."""

    def __init__(self, image=32, patch=8, dim=16, depth=2, heads=2, hidden=32, classes=10, init_values=0.5):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.head(self.norm(self.blocks(x))[:, 0])


class ConvNeXtBlock(nn.Module):
    """timm.models.convnext.ConvNeXtBlock (channels-last MLP): gamma multiply, shortcut module."""

    def __init__(self, dim, ls_init_value=1.0):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
        self.shortcut = nn.Identity()
        self.drop_path = DropPath(0.0)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x))
        x = x.permute(0, 3, 1, 2)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + self.shortcut(shortcut)


class ConvNeXtStage(nn.Module):
    def __init__(self, cin, cout, depth):
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, 2))
                           if cin != cout else nn.Identity())
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class TimmConvNeXt(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6))
        self.stages = nn.Sequential(ConvNeXtStage(8, 8, 2), ConvNeXtStage(8, 16, 1))
        self.head = nn.Sequential()
        self.head.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        self.head.add_module("norm", LayerNorm2d(16, eps=1e-6))
        self.head.add_module("flatten", nn.Flatten(1))
        self.head.add_module("fc", nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d: batch norm, then its own activation module."""

    def __init__(self, channels, act=nn.SiLU):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class SqueezeExcite(nn.Module):
    """timm efficientnet_blocks.SqueezeExcite: a spatial mean, conv_reduce, act1, conv_expand, gate."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class TimmInvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct2d(cout, act=None)
        self.drop_path = DropPath(0.0)

    def forward(self, x):
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.bn2(self.conv_dw(x))
        x = self.conv_pwl(self.se(x))
        x = self.bn3(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class TimmEfficientNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(8)
        self.blocks = nn.Sequential(
            nn.Sequential(TimmInvertedResidual(8, 16, 2)),
            nn.Sequential(TimmInvertedResidual(16, 16, 1), TimmInvertedResidual(16, 16, 1)),
        )
        self.conv_head = nn.Conv2d(16, 32, 1, bias=False)
        self.bn2 = BatchNormAct2d(32)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(self.global_pool(x).flatten(1))


class TimmBottleneck(nn.Module):
    """timm.models.resnet.Bottleneck: act modules per conv, shortcut named downsample."""

    def __init__(self, cin, mid, stride=1):
        super().__init__()
        cout = mid * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.se = None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = projection(cin, cout, stride)
        self.drop_path = None

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


class TimmResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(TimmBottleneck(8, 4), TimmBottleneck(16, 4))
        self.layer2 = nn.Sequential(TimmBottleneck(16, 8, 2))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(self.global_pool(x).flatten(1))


#: stand-in name -> constructor (tests/test_ecosystem.py holds what each one should give)
STANDINS: Dict[str, Callable[[], nn.Module]] = {
    "tv_resnet_basic": lambda: TVResNet(bottleneck=False),
    "tv_resnet_bottleneck": lambda: TVResNet(bottleneck=True),
    "tv_convnext": TVConvNeXt,
    "tv_mobilenet_v3": TVMobileNetV3,
    "tv_efficientnet": TVEfficientNet,
    "tv_vit": TVViT,
    "timm_vit": TimmViT,
    "timm_convnext": TimmConvNeXt,
    "timm_efficientnet": TimmEfficientNet,
    "timm_resnet": TimmResNet,
}
