"""The models people use: Linear-like layer types, what the library leaves out (RNNs, Bilinear),
default blocks found from a recorded forward, the recorded forward itself, and second-order
baselines, on stand-ins of the torchvision and timm models (tests/_vision_standins.py)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import emergeinit as ei
from emergeinit.layers import (
    LEFT_OUT_WARNING_SHARE, find_blocks, find_weight_layers, layer_by_module, left_out_parameters,
    register_weight_layer, unregister_weight_layer,
)
from emergeinit.trace import TapeLayers, record_tape, trace_fx

from _steps import train_steps
from _vision_standins import STANDINS, TimmViT, TVMobileNetV3

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))


def build(name):
    torch.manual_seed(0)
    return STANDINS[name]()


# ------------------------------------------------------------------------------ default blocks

_SE = ["block.2.fc1", "block.2.fc2"]
#: stand-in -> {block: (members relative to the block, depth of each, why it is a block)}
BLOCKS = {
    "tv_resnet_basic": {f"layer{i}.{j}": (["conv1", "conv2"], (0, 1), "residual") for i in (1, 2) for j in (0, 1)},
    "tv_resnet_bottleneck": {f"layer{i}.{j}": (["conv1", "conv2", "conv3"], (0, 1, 2), "residual")
                             for i in (1, 2) for j in (0, 1)},
    "tv_convnext": {b: (["block.0", "block.3", "block.5"], (0, 1, 2), "residual")
                    for b in ("features.1.0", "features.1.1", "features.3.0")},
    "tv_mobilenet_v3": {
        "features.1": (["block.0.0", "block.1.0"], (0, 1), "residual"),
        "features.2": (["block.0.0", "block.1.0"] + _SE + ["block.3.0"], (0, 1, 2, 3, 4), "sibling"),
        "features.3": (["block.0.0", "block.1.0"] + _SE + ["block.3.0"], (0, 1, 2, 3, 4), "residual"),
    },
    "tv_efficientnet": {
        "features.1.0": (["block.0.0", "block.1.fc1", "block.1.fc2", "block.2.0"], (0, 1, 2, 3), "residual"),
        "features.2.0": (["block.0.0", "block.1.0"] + _SE + ["block.3.0"], (0, 1, 2, 3, 4), "sibling"),
        "features.2.1": (["block.0.0", "block.1.0"] + _SE + ["block.3.0"], (0, 1, 2, 3, 4), "residual"),
    },
    "tv_vit": {f"encoder.layers.{i}": (["mlp.0", "mlp.3"], (0, 1), "residual") for i in (0, 1)},
    "timm_vit": {f"blocks.{i}": (["mlp.fc1", "mlp.fc2"], (0, 1), "residual") for i in (0, 1)},
    "timm_convnext": {b: (["conv_dw", "mlp.fc1", "mlp.fc2"], (0, 1, 2), "residual")
                      for b in ("stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0")},
    "timm_efficientnet": {
        b: (["conv_pw", "conv_dw", "se.conv_reduce", "se.conv_expand", "conv_pwl"], (0, 1, 2, 3, 4), how)
        for b, how in (("blocks.0.0", "sibling"), ("blocks.1.0", "residual"), ("blocks.1.1", "residual"))
    },
    "timm_resnet": {b: (["conv1", "conv2", "conv3"], (0, 1, 2), "residual")
                    for b in ("layer1.0", "layer1.1", "layer2.0")},
}


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_default_blocks_of_the_vision_models(name):
    model = build(name)
    blocks = find_blocks(model, find_weight_layers(model, X), example_input=X)
    got = {b: ([l.name[len(b) + 1:] for l in block], block.depths, block.found) for b, block in blocks.items()}
    assert got == {b: (m, d, f) for b, (m, d, f) in BLOCKS[name].items()}


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_recorded_forward_reads_the_graph_fx_reads(name):
    model = build(name).eval()
    layers = layer_by_module(model, find_weight_layers(model, order="registration"))
    for include_input in (False, True):
        traced = trace_fx(model, layers, include_input=include_input).graph
        recorded = TapeLayers.of(model, layers, record_tape(model, X, layers), include_input=include_input).graph
        assert recorded == traced


class Gated(nn.Module):
    """x + down(silu(gate(x)) * up(x)): the gated FFN of Llama-type models."""

    def __init__(self, d=6, h=10):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.down(F.silu(self.gate(x)) * self.up(x))


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.layers, self.out = nn.Linear(4, 6), nn.ModuleList([Gated(), Gated()]), nn.Linear(6, 3)

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def test_a_gated_pair_shares_its_schedule_index():
    model = GatedNet()
    plan = ei.plan_emergence(model, alpha=4.0, schedule="normalized", scope="blockwise")
    assert {l.key: (l.block, l.index, l.factor) for l in plan if l.block} == {
        f"layers.{i}.{n}.weight": (f"layers.{i}", k, f) for i in (0, 1)
        for n, k, f in (("gate", 0, 0.25), ("up", 0, 0.25), ("down", 1, 4.0))
    }
    assert plan["inp.weight"].factor == plan["out.weight"].factor == 1.0


def test_a_frozen_layer_on_a_branch_keeps_its_block():
    model = build("tv_resnet_basic")
    model.layer1[0].conv1.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="frozen"):
        plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized", scope="blockwise", example_input=X)
    assert "layer1.0.conv1.weight" not in plan.factors
    assert (plan["layer1.0.conv2.weight"].block, plan["layer1.0.conv2.weight"].factor) == ("layer1.0", 1.0)
    assert [plan[f"layer1.1.conv{i}.weight"].factor for i in (1, 2)] == [0.5, 2.0]


def test_no_default_blocks_says_what_was_looked_for():
    with pytest.raises(ValueError, match=r"no default blocks\. Looked for: modules whose forward adds a branch "
                                         r"of two or more weight layers.*no residual add seen"):
        ei.plan_emergence(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), alpha=2.0, scope="blockwise")

    class OnlyAttentionResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.q, self.k, self.v, self.out = (nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                          nn.Linear(8, 8), nn.Linear(8, 2))

        def forward(self, x):
            h = self.inp(x)
            return self.out(h + F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h)))

    with pytest.raises(ValueError, match=r"1 residual add\(s\) seen, 1 around attention"):
        ei.plan_emergence(OnlyAttentionResidual(), alpha=2.0, scope="blockwise", example_input=torch.randn(2, 3, 4))


# ------------------------------------------------------------------------ every model, every step

def _train_steps(model, x, y, steps=3):
    return train_steps(model, lambda m: F.cross_entropy(m(x), y), steps)


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_every_vision_model_measures_plans_initializes_and_trains(name):
    model = build(name)
    layers = find_weight_layers(model, X)
    report = ei.measure_emergence(model, X)
    assert report.on_graph and math.isfinite(report.log10) and len(report.layers) >= len(layers) - 4
    plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized")
    assert [l.key for l in plan] == [l.key for l in layers]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ei.emergence_init_(model, alpha=2.0, schedule="normalized", scope="blockwise", base=None)
    blocks = BLOCKS[name]
    for l in find_weight_layers(model, X):
        block = next((b for b in blocks if l.name.startswith(b + ".")), None)
        members, depths, _ = blocks[block] if block is not None else ([], (), "")
        expected = 1.0
        if block is not None and l.name[len(block) + 1:] in members:
            k, L = depths[members.index(l.name[len(block) + 1:])], len(set(depths))
            expected = 2.0 ** ((k - (L - 1) / 2) / ((L - 1) / 2))
        torch.testing.assert_close(model.get_parameter(l.key), before[l.key] * expected, rtol=1e-6, atol=0)
    losses = _train_steps(model, X, Y)
    assert all(math.isfinite(v) for v in losses)


METHODS = {  # every method that applies to an image classifier; few iterations, two samples
    "kaiming": {}, "xavier": {}, "emergence": dict(alpha=2.0, schedule="normalized"),
    "lsuv": dict(data=X[:2], max_iters=1),
    "metainit": dict(data=(X[:2], Y[:2]), steps=1),
    "gradinit": dict(data=(X[:2], Y[:2]), iters=1, gamma=1e-6),  # a constraint step: one HVP
}


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_every_method_initializes_every_vision_model(name):
    for method, options in METHODS.items():
        model = build(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if name == "tv_mobilenet_v3" and method in ("metainit", "gradinit"):  # hardsigmoid: no 2nd derivative
            with pytest.raises(ValueError, match=r"torch has none for aten::hardsigmoid_backward .*"
                                                 r"'features\.2\.block\.2\.scale_activation' \(Hardsigmoid\)"):
                ei.initialize(model, method, **options)
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            continue
        record = ei.initialize(model, method, **options)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
        assert changed, f"{method} changed nothing on {name}"
        assert all(torch.isfinite(p).all() for p in model.parameters())
        if method in ("metainit", "gradinit"):
            assert record.hvp_passes >= 1
        assert all(math.isfinite(v) for v in _train_steps(model, X, Y, steps=2))


def test_second_order_methods_run_through_fused_attention():
    # F.scaled_dot_product_attention picks a fused kernel without a second derivative on CPU too;
    # the search runs on the math backend
    model = TimmViT()
    record = ei.initialize(model, "metainit", data=(X, Y), steps=1)
    assert record.hvp_passes == 2 and math.isfinite(record.details["gq_first"])


def test_a_missing_second_derivative_changes_no_weight_and_names_the_module():
    model = TVMobileNetV3().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"gradient_quotient needs second derivatives.*Hardsigmoid"):
        ei.baselines.gradient_quotient(model, (X, Y))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training


# ------------------------------------------------------------------- activation modules of others

class WithActivation(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(1, 3, bias=False), act, nn.Linear(3, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[0.06], [0.5], [-1.0]]))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class OtherGELU(nn.Module):
    """An activation module of another library (timm's GELU, HF's GELUActivation)."""

    def forward(self, x):
        return F.gelu(x)


class Softmaxed(nn.Module):
    def forward(self, x):
        return torch.softmax(x, -1)


def test_activation_modules_of_other_libraries_are_read_through():
    x = torch.ones(1, 1)  # fc1 gives (0.06, 0.5, -1): above 0.05 twice; after GELU (0.03, 0.35, -0.16) once
    assert ei.measure_emergence(WithActivation(OtherGELU()), x, mode="mean").layers[0].active == 1
    assert ei.measure_emergence(WithActivation(nn.GELU()), x, mode="mean").layers[0].active == 1
    # not elementwise: read before it
    assert ei.measure_emergence(WithActivation(Softmaxed()), x, mode="mean").layers[0].active == 2


# ------------------------------------------------------------------------ Linear-like layer types

class TransposedLinear(nn.Module):
    """A Linear-like layer whose weight is stored (in, out)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = TransposedLinear(400, 30)
        self.head = nn.Linear(30, 2)

    def forward(self, x):
        return self.head(torch.relu(self.first(x)))


@pytest.fixture
def registered():
    register_weight_layer(TransposedLinear, transposed=True)
    yield
    unregister_weight_layer(TransposedLinear)


def test_an_unknown_linear_like_layer_is_left_out_with_a_warning():
    model = TwoLayers()
    share = 400 * 30 + 30
    share /= share + 30 * 2 + 2
    with pytest.warns(UserWarning, match=rf"{share:.0%} of the parameters of TwoLayers .* first \(TransposedLinear\)"):
        layers = find_weight_layers(model, torch.randn(2, 400))
    assert [l.key for l in layers] == ["head.weight"]
    assert left_out_parameters(model).keys == ("first.weight", "first.bias")


def test_a_registered_linear_like_layer_is_a_weight_layer(registered):
    torch.manual_seed(0)
    model = TwoLayers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out now
        layers = find_weight_layers(model, torch.randn(2, 400))
    assert [(l.key, l.in_nodes, l.out_nodes, l.transposed) for l in layers] == [
        ("first.weight", 400, 30, True), ("head.weight", 30, 2, False)]
    assert tuple(layers[0].init_view.shape) == (30, 400)
    report = ei.measure_emergence(model, torch.randn(8, 400))
    assert [(l.name, l.nodes) for l in report.layers] == [("first", 30), ("head", 2)]
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", base="kaiming",
                              example_input=torch.randn(2, 400))
    assert plan["first.weight"].transposed and plan["first.weight"].factor == 0.5
    # Kaiming fans from the right axis: fan_in 400 (not 30), times the factor 1/2
    assert model.first.weight.std().item() == pytest.approx(0.5 * math.sqrt(2 / 400), rel=0.05)
    assert torch.all(model.first.bias == 0)
    ei.initialize(model, "xavier")
    assert model.first.weight.std().item() == pytest.approx(math.sqrt(2 / 430), rel=0.05)


def test_registering_by_name_subclasses_and_errors(registered):
    assert ei.register_weight_layer is register_weight_layer
    class Wider(TransposedLinear):
        pass

    assert [l.name for l in find_weight_layers(nn.Sequential(Wider(3, 4)), order="registration")] == ["0"]
    name = f"{TwoLayers.__module__}.{TwoLayers.__qualname__}"
    with pytest.raises(ValueError, match="is a weight layer already"):
        register_weight_layer(nn.Linear)
    with pytest.raises(ValueError, match="nn.Module subclass"):
        register_weight_layer(int)
    with pytest.raises(KeyError):
        unregister_weight_layer(name)


# ---------------------------------------------------------------- recurrent and bilinear layers

class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = kind(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out = self.rnn(x)[0]
        return self.head(out[:, -1])


class Pairwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.mix = nn.Bilinear(6, 6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(torch.relu(self.mix(h, h)))


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_are_named_as_left_out_and_skipped(kind):
    model = Recurrent(kind)
    rnn_params = [f"rnn.{n}" for n, _ in model.rnn.named_parameters()]
    left = sum(p.numel() for p in model.rnn.parameters())
    share = left / sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 5, 8)
    with pytest.warns(UserWarning, match=rf"{share:.0%} of the parameters of Recurrent .*: rnn \({kind.__name__}\)"):
        report = ei.measure_emergence(model, x)
    assert [l.name for l in report.layers] == ["head"]
    assert set(report.skipped) == set(rnn_params) and len(report.skipped) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ei.plan_emergence(model, alpha=2.0, example_input=x)
    assert [l.key for l in plan] == ["head.weight"]
    out = left_out_parameters(model)
    assert out.modules == (("rnn", kind.__name__),) and out.numel == left and out.share == pytest.approx(share)


def test_bilinear_is_left_out_and_skipped():
    model = Pairwise()
    with pytest.warns(UserWarning, match=r"mix \(Bilinear\)"):
        report = ei.measure_emergence(model, torch.randn(3, 4))
    assert [l.name for l in report.layers] == ["inp", "head"]
    assert set(report.skipped) == {"mix.weight", "mix.bias"}


def test_scales_and_position_embeddings_are_not_left_out():
    model = TimmViT()
    assert left_out_parameters(model).keys == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        find_weight_layers(model, X)
    assert LEFT_OUT_WARNING_SHARE == 0.01


# --------------------------------------------------------------------------- the recorded forward

class PathSwitch(nn.Module):
    """Runs ``extra`` only on batches whose first value is negative: untraceable by fx."""

    def __init__(self):
        super().__init__()
        self.fc1, self.extra, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if bool(x[0, 0] < 0):
            h = self.extra(h)
        return self.fc2(h)


def test_batches_that_run_other_layers_are_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"runs other weight layers on different batches.*fc1, extra, fc2"):
            ei.measure_emergence(PathSwitch(), iter([torch.ones(2, 3), -torch.ones(2, 3)]))


def test_recording_leaves_the_model_as_found():
    model = build("tv_resnet_basic").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = layer_by_module(model, find_weight_layers(model, order="registration"))
    for meta in (True, False):
        tape = record_tape(model, X, layers, meta=meta)
        assert len(tape.signature) == len([n for n in tape.graph.nodes if n.op in ("call_module", "call_function")
                                           and n.meta.get("item") is None])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and model.training
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
