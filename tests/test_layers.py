"""Weight layers in execution order, tied weights, attention projections, blocks."""

import pytest
import torch
from torch import nn

from emergeinit.layers import find_blocks, find_weight_layers
from emergeinit.trace import infer_example_input


class Reversed(nn.Module):
    """Registers its layers last-first; forward runs them first-last."""

    def __init__(self):
        super().__init__()
        self.c = nn.Linear(8, 3)
        self.b = nn.Linear(16, 8)
        self.a = nn.Linear(4, 16)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.hidden = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.relu(self.hidden(self.emb(tokens))))


class SharedTwice(nn.Module):
    """The same Linear applied twice: one layer."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.shared = nn.Linear(7, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        h = self.inp(x)
        h = self.shared(torch.relu(h))
        h = self.shared(torch.relu(h))
        return self.head(h)


def test_execution_order_is_not_registration_order():
    model = Reversed()
    layers = find_weight_layers(model)
    assert [l.name for l in layers] == ["a", "b", "c"]
    assert [l.name for l in find_weight_layers(model, order="registration")] == ["c", "b", "a"]
    assert [l.out_nodes for l in layers] == [16, 8, 3]


def test_tied_weight_is_one_layer_with_an_alias():
    model = Tied()
    layers = find_weight_layers(model, torch.tensor([[1, 2, 3]]))
    assert [l.key for l in layers] == ["hidden.weight", "out.weight"]
    assert layers[1].weight is model.emb.weight


def test_module_called_twice_is_one_layer():
    layers = find_weight_layers(SharedTwice())
    assert [l.name for l in layers] == ["inp", "shared", "head"]


def test_unused_layer_is_not_a_layer():
    model = Reversed()
    model.unused = nn.Linear(3, 3)
    assert [l.name for l in find_weight_layers(model)] == ["a", "b", "c"]


def test_attention_projections_follow_execution():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    layers = find_weight_layers(layer, torch.randn(2, 5, 16))
    assert [l.key for l in layers] == [
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight",
    ]
    assert layers[0].kind == "attention" and layers[0].bias is layer.self_attn.in_proj_bias


def test_conv_out_nodes_are_channels():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.ConvTranspose2d(5, 4, 3, groups=1))
    layers = find_weight_layers(model)
    assert [(l.kind, l.out_nodes) for l in layers] == [("conv", 5), ("conv", 4)]


def test_trace_restores_modes_and_batchnorm_statistics():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_weight_layers(model, torch.randn(8, 4) * 10 + 3)
    assert model.training and model[1].training and not model[3].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_no_weight_layers_is_an_error():
    with pytest.raises(ValueError, match="no weight layers"):
        find_weight_layers(nn.Sequential(nn.ReLU(), nn.Flatten()))


def test_embedding_first_needs_an_example_input():
    with pytest.raises(ValueError, match="example_input"):
        infer_example_input(Tied())
    with pytest.raises(ValueError, match="example_input"):
        find_weight_layers(Tied())


def test_forward_failure_names_the_model():
    with pytest.raises(ValueError, match="Reversed.*example_input"):
        find_weight_layers(Reversed(), torch.randn(2, 99))


def test_default_blocks_of_a_transformer_are_ffn_pairs():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    layers = find_weight_layers(enc, torch.randn(2, 5, 16))
    blocks = find_blocks(enc, layers)
    assert list(blocks) == [f"layers.{i}" for i in range(3)]
    assert [[l.name for l in b] for b in blocks.values()] == [
        [f"layers.{i}.linear1", f"layers.{i}.linear2"] for i in range(3)
    ]


def test_named_blocks_patterns_innermost_and_no_match():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    layers = find_weight_layers(enc, torch.randn(2, 5, 16))
    blocks = find_blocks(enc, layers, ["layers.*.self_attn", "layers.*"])
    assert [l.key for l in blocks["layers.0.self_attn"]] == [
        "layers.0.self_attn.in_proj_weight", "layers.0.self_attn.out_proj.weight",
    ]
    assert [l.name for l in blocks["layers.1"]] == ["layers.1.linear1", "layers.1.linear2"]
    with pytest.raises(ValueError, match="matches no module"):
        find_blocks(enc, layers, ["decoder.*"])


def test_residual_blocks_leave_the_shortcut_out():
    from emergeinit.models import build_model

    model = build_model("resnet20_bn")
    layers = find_weight_layers(model, torch.randn(2, 3, 32, 32))
    assert len(layers) == 20  # 19 convs (parameter-free shortcuts) + fc
    blocks = find_blocks(model, layers)
    assert len(blocks) == 9
    assert all([l.name.split(".")[-1] for l in b] == ["conv1", "conv2"] for b in blocks.values())


class Nested(nn.Module):
    """enc.layers.{0,1}.ffn.{fc1,fc2} and a top-level ffn: patterns at several depths."""

    def __init__(self):
        super().__init__()
        block = lambda: nn.ModuleDict({"ffn": nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))})
        self.enc = nn.Module()
        self.enc.layers = nn.ModuleList([block(), block()])
        self.ffn = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        for layer in self.enc.layers:
            x = layer["ffn"](x)
        return self.ffn(x)


@pytest.mark.parametrize("spec, expected", [
    ("enc.layers.*", ["enc.layers.0", "enc.layers.1"]),  # * is exactly one segment
    ("enc.*", ["enc.layers"]),
    ("*.ffn", []),  # nothing: ffn sits two segments below enc
    ("**.ffn", ["enc.layers.0.ffn", "enc.layers.1.ffn", "ffn"]),  # ** is any number, none included
    ("enc.**.ffn", ["enc.layers.0.ffn", "enc.layers.1.ffn"]),
    ("enc.layers.[1]", ["enc.layers.1"]),  # fnmatch inside one segment
    ("ff*", ["ffn"]),
    (["ffn", "enc.layers.1", "ffn"], ["ffn", "enc.layers.1"]),  # given order, each once
])
def test_module_patterns(spec, expected):
    from emergeinit.layers import match_modules

    model = Nested()
    if not expected:
        with pytest.raises(ValueError, match="matches no module"):
            match_modules(model, spec)
        return
    assert match_modules(model, spec) == expected
    assert match_modules(model, [model.enc.layers[0], "ffn"]) == ["enc.layers.0", "ffn"]
    with pytest.raises(ValueError, match="not a submodule"):
        match_modules(model, nn.Linear(2, 2))


def test_blocks_use_the_module_patterns():
    model = Nested()
    layers = find_weight_layers(model)
    one = find_blocks(model, layers, "enc.layers.*")  # one segment: the two layers, not their ffn
    assert list(one) == ["enc.layers.0", "enc.layers.1"]
    deep = find_blocks(model, layers, ["**.ffn"])
    assert list(deep) == ["enc.layers.0.ffn", "enc.layers.1.ffn", "ffn"]
    assert [l.name for l in deep["ffn"]] == ["ffn.0", "ffn.2"]
    assert list(find_blocks(model, layers, [model.ffn])) == ["ffn"]
