"""measure_emergence on models whose activity is known, its invariances, and the CLI."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emergeinit import graph_emergence, layer_graph, layered_emergence, measure_emergence
from emergeinit.models import build_model
from emergeinit.probe import DEFAULT_THRESHOLD


def hand_mlp(relu: str = "module") -> nn.Module:
    """2 -> 4 -> 3 -> 2, bias-free, with weights that make activity easy to read off."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(2, 4, bias=False)
            self.fc2 = nn.Linear(4, 3, bias=False)
            self.fc3 = nn.Linear(3, 2, bias=False)
            self.act = nn.ReLU(inplace=(relu == "inplace"))
            with torch.no_grad():
                self.fc1.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
                self.fc2.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [-1, -1, -1, -1]]))
                self.fc3.weight.copy_(torch.tensor([[1.0, 1, 1], [-1, 0, 0]]))

        def forward(self, x):
            if relu == "functional":
                return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
            if relu == "functional_inplace":
                h = self.fc1(x)
                F.relu(h, inplace=True)  # result discarded: the tensor itself changed
                h = self.fc2(h)
                torch.relu_(h)
                return self.fc3(h)
            return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    return Net()


X = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
# sample 0: fc1 -> [1, 0, 2, 0] (2 active), fc2 -> [1, 2, 0] (2), logits [3, -1] (1)
# sample 1: fc1 -> [0, 1, 0, 2] (2 active), fc2 -> [0, 0, 0] (0), logits [0, 0]  (0)


def test_hand_set_weights_one_sample():
    r = measure_emergence(hand_mlp(), X[:1], mode="mean")
    assert [(l.name, l.nodes, l.active) for l in r.layers] == [("fc1", 4, 2), ("fc2", 3, 2), ("fc3", 2, 1)]
    # E: layer 0 has 2 inactive: 2*2 + 2*3*1 = 10; layer 1 has 1 inactive: 1*1 = 1
    assert r.value == 11 and type(r.value) is int
    assert math.isclose(r.log10, math.log10(11))
    assert r.samples == 1 and not r.residual and r.graph.is_chain()
    count = measure_emergence(hand_mlp(), X[:1], mode="count")
    assert [l.active for l in count.layers] == [2.0, 2.0, 1.0] and count.value == 11.0


def test_count_and_mean_modes_on_two_samples():
    count = measure_emergence(hand_mlp(), X)  # default mode: average active count per sample
    assert count.mode == "count" and count.threshold == DEFAULT_THRESHOLD
    assert [l.active for l in count.layers] == [2.0, 1.0, 0.5]
    assert count.value == layered_emergence([4, 3, 2], [2.0, 1.0, 0.5]) == 2 * 1 + 2 * 3 * 0.5 + 2 * 0.5
    mean = measure_emergence(hand_mlp(), X, mode="mean")
    # batch means: fc1 [.5, .5, 1, 1] -> 4, fc2 [.5, 1, 0] -> 2, logits [1.5, -.5] -> 1
    assert [l.active for l in mean.layers] == [4, 2, 1]
    assert mean.value == 1  # only layer 1 has an inactive node: 1 * a_2
    # eq 4: Delta = 7-4-0, 7-2-4, 7-1-7 = 3, 1, -1; exact: A = 5, 1, 0 vs B = 0, 0, 1
    assert mean.pivot.lemma == 1 and mean.pivot.exact == 1


@pytest.mark.parametrize("mode", ["count", "mean"])
def test_batches_accumulate(mode):
    whole = measure_emergence(hand_mlp(), X, mode=mode)
    assert measure_emergence(hand_mlp(), iter([X[:1], X[1:]]), mode=mode).to_dict() == whole.to_dict()
    pairs = [(X[:1], torch.tensor([0])), (X[1:], torch.tensor([1]))]  # (inputs, targets) like a DataLoader
    assert measure_emergence(hand_mlp(), iter(pairs), mode=mode).to_dict() == whole.to_dict()


def test_relu_variants_give_identical_reports():
    x = torch.randn(16, 2)
    reports = [measure_emergence(hand_mlp(v), x).to_dict() for v in
               ("module", "inplace", "functional", "functional_inplace")]
    assert all(r == reports[0] for r in reports[1:])
    assert [l["active"] for l in reports[0]["layers"]] != [4, 3, 2]  # the ReLUs matter


class ConvNet(nn.Module):
    def __init__(self, relu: str = "module", bias: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=bias)
        self.fc = nn.Linear(5, 4, bias=bias)
        self.relu = nn.ReLU(inplace=(relu == "inplace"))
        self.kind = relu

    def forward(self, x):
        act = (lambda t: F.relu(t)) if self.kind == "functional" else self.relu
        x = act(self.bn1(self.conv1(x)))
        x = F.max_pool2d(act(self.conv2(x)), 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_conv_relu_variants_and_bn_before_relu():
    x = torch.randn(4, 3, 8, 8)
    reports = [measure_emergence(ConvNet(v), x).to_dict() for v in ("module", "inplace", "functional")]
    assert reports[0] == reports[1] == reports[2]
    assert [l["nodes"] for l in reports[0]["layers"]] == [6, 5, 4]
    net = ConvNet()
    with torch.no_grad():
        net.bn1.bias.fill_(-10.0)  # BN pushes every channel below zero: the ReLU silences them
    assert measure_emergence(net, x).layers[0].active == 0
    with torch.no_grad():
        net.bn1.bias.fill_(10.0)
    assert measure_emergence(net, x).layers[0].active == 6


@pytest.mark.parametrize("make, shape", [(hand_mlp, (32, 2)), (lambda: ConvNet(bias=False), (8, 3, 8, 8))])
def test_positive_rescaling_is_invisible_at_threshold_zero_only(make, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    plain, scaled = make(), make()
    with torch.no_grad():
        layers = [m for m in scaled.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        for m, c in zip(layers, (0.002, 7.0, 0.3)):
            m.weight.mul_(c)
    for mode in ("count", "mean"):
        assert measure_emergence(plain, x, threshold=0.0, mode=mode).to_dict() == \
            measure_emergence(scaled, x, threshold=0.0, mode=mode).to_dict()
        a = measure_emergence(plain, x, threshold=0.05, mode=mode)
        b = measure_emergence(scaled, x, threshold=0.05, mode=mode)
        assert [l.active for l in a.layers] != [l.active for l in b.layers]
        assert a.value != b.value


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Linear(3, 4)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        out = F.relu(self.fc2(F.relu(self.fc1(h))) + h)
        return self.fc3(out)


def test_residual_model_uses_the_layer_graph():
    net, x = Residual(), torch.randn(64, 3)
    r = measure_emergence(net, x, mode="mean")
    assert r.residual and not r.graph.is_chain()
    with torch.no_grad():  # the activity, computed by hand
        h = F.relu(net.stem(x))
        h1 = F.relu(net.fc1(h))
        out = F.relu(net.fc2(h1) + h)
        values = [h, h1, out, net.fc3(out)]
    masks = [(v.mean(0) > DEFAULT_THRESHOLD).tolist() for v in values]
    assert [l.active for l in r.layers] == [sum(m) for m in masks]
    flat = [b for m in masks for b in m]
    assert r.value == graph_emergence(r.graph.node_adjacency(), flat)
    chain = measure_emergence(net, x, mode="mean", residual=False)
    assert not chain.residual and chain.value == layered_emergence([4, 4, 4, 2], [sum(m) for m in masks])
    assert r.value > chain.value  # the skip adds paths
    count = measure_emergence(net, x)
    assert count.residual and isinstance(count.value, float) and math.isfinite(count.log10)


class Probe(nn.Module):
    """Records whether autograd was on when the forward ran."""

    def __init__(self):
        super().__init__()
        self.grad_seen = []

    def forward(self, x):
        self.grad_seen.append(torch.is_grad_enabled())
        return x


class Stateful(nn.Module):
    def __init__(self, fail: bool = False, untraceable: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.probe = Probe()
        self.fail, self.untraceable = fail, untraceable
        self.conv.bias.requires_grad_(False)

    def forward(self, x):
        if self.untraceable and x.sum() > 1e9:
            x = x * 0
        x = torch.relu(self.bn(self.conv(self.probe(x))))
        if self.fail and x.shape[0] == 3:
            raise RuntimeError("boom")
        return self.fc(x.mean((2, 3)))


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("untraceable", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_model_is_left_as_found(untraceable, training):
    net = Stateful(untraceable=untraceable).train()
    net.fc.eval()  # a mixed state must survive too
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [(m, m.training) for m in net.modules()]
    grads = [(p, p.requires_grad) for p in net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measure_emergence(net, torch.randn(4, 3, 6, 6) + 1, training=training)
    assert all(m.training == t for m, t in flags)
    assert all(p.requires_grad == g for p, g in grads)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in net.parameters())
    assert net.probe.grad_seen and not any(net.probe.grad_seen)
    assert hooks_left(net) == 0


@pytest.mark.parametrize("untraceable", [False, True])
def test_forward_error_leaves_no_hooks_and_restores_state(untraceable):
    net = Stateful(fail=True, untraceable=untraceable).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="boom"):
            measure_emergence(net, iter([torch.randn(2, 3, 6, 6), torch.randn(3, 3, 6, 6)]), training=True)
    assert hooks_left(net) == 0 and net.training and net.bn.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class Branchy(nn.Module):
    """A residual net with functional activations; ``branch=True`` adds data-dependent control
    flow, which torch.fx cannot trace."""

    def __init__(self, branch):
        super().__init__()
        torch.manual_seed(2)
        self.branch = branch
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.branch and x.sum() > 1e9:
            x = x * 0
        h = self.relu(self.bn(self.fc1(x)))
        h = F.gelu(self.fc3(torch.tanh(self.fc2(h)))) + h  # functional activations, a skip
        return self.fc4(h)


def test_recorded_fallback_matches_the_traced_measurement():
    x = torch.randn(16, 5)
    traced = measure_emergence(Branchy(False), x, include_input=True)
    with pytest.warns(UserWarning, match="recorded forward"):
        recorded = measure_emergence(Branchy(True), x, include_input=True)
    assert recorded.graph == traced.graph and recorded.on_graph and traced.on_graph
    assert [(l.name, l.nodes, l.active) for l in recorded.layers] == [(l.name, l.nodes, l.active) for l in traced.layers]
    assert [l.name for l in recorded.layers] == ["input", "fc1", "fc2", "fc3", "fc4"]
    assert [e.kind for e in recorded.graph.edges].count("identity") == 1  # fc1's output skips to fc3's add
    assert recorded.value == traced.value


def test_recorded_fallback_warns_once_per_model_type():
    net, x = Branchy(True), torch.randn(4, 5)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's default: once per message and place
        for _ in range(3):
            measure_emergence(net, x)
        measure_emergence(Branchy(True), x)
    assert sum("recorded forward" in str(w.message) for w in seen) == 1


class PathByBatch(nn.Module):
    """Runs one more (parameter-free) op when the batch holds a negative first value."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        if bool(x[0, 0] < 0):
            x = x.clone()
        return self.fc2(torch.relu(self.fc1(x)))


def test_recorded_forward_follows_each_batch_path():
    torch.manual_seed(0)
    net, a, b = PathByBatch(), torch.rand(8, 3), -torch.rand(8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = measure_emergence(net, iter([a, b]), mode="mean")  # the second batch runs another path
    seq = measure_emergence(nn.Sequential(net.fc1, nn.ReLU(), net.fc2), torch.cat([a, b]), mode="mean")
    assert [(l.nodes, l.active) for l in both.layers] == [(l.nodes, l.active) for l in seq.layers]
    assert both.samples == 16 and both.value == seq.value


def test_layer_options():
    r = measure_emergence(hand_mlp(), X, include_input=True, include_output=False, mode="mean")
    # input nodes: batch means [0, 0] -> none active; then fc1 (4) and fc2 (2)
    assert [(l.name, l.nodes, l.active) for l in r.layers] == [("input", 2, 0), ("fc1", 4, 4), ("fc2", 3, 2)]
    assert r.value == layered_emergence([2, 4, 3], [0, 4, 2])


def test_report_str_and_dict():
    r = measure_emergence(build_model("vgg19"), torch.randn(2, 3, 32, 32))
    assert len(r.layers) == 17 and r.layers[0].name == "features.0" and r.layers[-1].name == "classifier"
    assert [l.nodes for l in r.layers][:3] == [64, 64, 128]
    text = str(r)
    assert "features.34" in text and "E = " in text and "eq 2 (chain)" in text
    d = json.loads(json.dumps(r.to_dict()))
    assert d["layers"][0] == {"name": "features.0", "nodes": 64, "active": r.layers[0].active}
    assert d["pivot"]["lemma"] == r.pivot.lemma and d["mode"] == "count"


def test_attention_projections_are_reported_as_skipped():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = F.relu(self.inp(x))
            a, _ = self.attn(h, h, h)
            return self.out(a + h)

    r = measure_emergence(Attn(), torch.randn(2, 5, 4))
    assert [l.name for l in r.layers] == ["inp", "out"]
    assert set(r.skipped) == {"attn.in_proj_weight", "attn.out_proj.weight"}
    assert r.samples == 10  # every token is a row of a Linear's nodes
    assert r.graph.is_chain()  # attention mixes everything: the skip around it is a full edge


@pytest.mark.parametrize(
    "kwargs, inputs, message",
    [
        ({"mode": "median"}, X, "unknown mode"),
        ({"threshold": float("nan")}, X, "threshold is NaN"),
        ({}, [], "no batches"),
        ({}, ["text"], "a batch must be"),
        ({}, 3, "iterable"),
    ],
)
def test_errors(kwargs, inputs, message):
    with pytest.raises(ValueError, match=message):
        measure_emergence(hand_mlp(), inputs, **kwargs)


def test_on_graph_keyword_and_property_with_the_old_residual_names():
    net, x = Residual(), torch.randn(64, 3)
    forced = measure_emergence(net, x, mode="mean", on_graph=False)
    old = measure_emergence(net, x, mode="mean", residual=False)
    assert not forced.on_graph and forced.residual is forced.on_graph
    assert old.value == forced.value and not old.on_graph
    default = measure_emergence(net, x, mode="mean")
    assert default.on_graph and default.residual
    d = json.loads(json.dumps(default.to_dict()))
    assert d["on_graph"] is True and d["residual"] is True  # old records keep their key
    assert measure_emergence(net, x, on_graph=True, residual=True).on_graph
    with pytest.raises(ValueError, match="old name"):
        measure_emergence(net, x, on_graph=True, residual=False)


# ------------------------------------------------------------ inputs the library must not misread

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("untraceable", [False, True])
def test_non_finite_inputs_are_an_error_naming_where_they_began(bad, untraceable):
    from emergeinit.trace import NonFiniteError

    net = Branchy(True) if untraceable else hand_mlp()
    x = torch.randn(4, 5 if untraceable else 2)
    x[1, 0] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fx fallback warning
        with pytest.raises(NonFiniteError, match="input batch is not finite"):
            measure_emergence(net, x)
        with pytest.raises(NonFiniteError, match="input batch is not finite"):
            measure_emergence(net, torch.full_like(x, float("nan")))  # all NaN once gave E = 0.0


def test_a_weight_that_makes_nan_is_named():
    from emergeinit.trace import NonFiniteError

    net = hand_mlp()
    with torch.no_grad():
        net.fc2.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer 'fc2' are not finite \(first non-finite output: layer 'fc2'\)"):
        measure_emergence(net, X)


def test_a_pair_of_tensors_is_one_batch_never_two():
    """(inputs, targets), as initialize reads it: the targets are ignored, whatever their shape."""
    y = torch.tensor([0, 1])
    for pair in [(X, y), [X, y], (X, None), (X, torch.randn(2, 7)), (X, X)]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = measure_emergence(hand_mlp(), pair, mode="mean")
        assert len(seen) == (pair[1] is X)  # targets shaped like the inputs: said, not silent
        assert r.samples == 2 and r.to_dict() == measure_emergence(hand_mlp(), X, mode="mean").to_dict()
    three = measure_emergence(hand_mlp(), [X, X, X], mode="mean")  # not a pair: three batches
    assert three.samples == 6
    with pytest.raises(ValueError, match=r"a batch must be .* got tuple of length 3"):
        measure_emergence(hand_mlp(), [(X, y, y)])


def test_a_meta_model_is_refused_plainly():
    net = hand_mlp().to("meta")
    with pytest.raises(ValueError, match="meta device .*fc1.weight.*materialize"):
        measure_emergence(net, X.to("meta"))


def test_reading_a_spectral_normed_model_leaves_its_buffers():
    from torch.nn.utils.parametrizations import spectral_norm

    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), spectral_norm(nn.Linear(4, 3))).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}  # _u, _v: its power iteration
    layer_graph(net)
    measure_emergence(net, X)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
