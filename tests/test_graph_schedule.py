"""scope="graph": exponents from each layer's depth in the traced layer graph; and the paired interval."""

import pytest
import torch
from torch import nn

import emergeinit as ei
from emergeinit.emergence import LayerEdge, LayerGraph, LayerNode
from emergeinit.stats import paired_interval, t_quantile_975


class Block(nn.Module):
    def __init__(self, c, project=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.sc = nn.Conv2d(c, c, 1) if project else None

    def forward(self, x):
        skip = x if self.sc is None else self.sc(x)
        return torch.relu(skip + self.conv2(torch.relu(self.conv1(x))))


class ResNet(nn.Module):
    def __init__(self, project=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.b1, self.b2 = Block(4), Block(4, project)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.b2(self.b1(torch.relu(self.stem(x)))).mean((2, 3)))


def exps(plan):
    return {l.key.rsplit(".", 1)[0]: l.exponent for l in plan}


def test_graph_depths_on_a_tiny_residual_net_are_exact():
    # shortest: stem 1; every conv1 reads a node the skips keep at depth 1 -> 2; conv2 -> 3; fc -> 2.
    plan = ei.plan_emergence(ResNet(), alpha=2.0, schedule="normalized", scope="graph")
    assert exps(plan) == {"stem": -1.0, "b1.conv1": 0.0, "b1.conv2": 1.0, "b2.conv1": 0.0, "b2.conv2": 1.0, "fc": 0.0}
    assert [l.factor for l in plan] == [0.5, 1.0, 2.0, 1.0, 2.0, 1.0]
    assert [l.index for l in plan] == [0, 1, 2, 1, 2, 1] and plan.meta["graph_depth"] == "shortest"
    # longest: through every branch, depths 1..6 = the execution order
    longest = ei.plan_emergence(ResNet(), alpha=2.0, schedule="normalized", scope="graph", graph_depth="longest")
    glob = ei.plan_emergence(ResNet(), alpha=2.0, schedule="normalized", scope="global")
    assert [l.exponent for l in longest] == pytest.approx([l.exponent for l in glob])
    # literal on depths: e = d - centre of 1..3
    lit = ei.plan_emergence(ResNet(), alpha=3.0, schedule="literal", scope="graph")
    assert [l.exponent for l in lit] == [-1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_a_projection_shortcut_reads_the_block_input():
    plan = ei.plan_emergence(ResNet(project=True), alpha=2.0, schedule="literal", scope="graph")
    # b2.sc reads b1's output (depth 1) -> 2, like b2.conv1; b2.conv2 -> 3
    assert exps(plan)["b2.sc"] == exps(plan)["b2.conv1"] == 0.0 and exps(plan)["b2.conv2"] == 1.0


def test_graph_equals_global_on_a_chain():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    for schedule in ("literal", "normalized"):
        a = ei.plan_emergence(model, alpha=2.0, schedule=schedule, scope="graph")
        b = ei.plan_emergence(model, alpha=2.0, schedule=schedule, scope="global")
        assert [l.factor for l in a] == [l.factor for l in b]


def test_graph_scope_errors_and_applies():
    with pytest.raises(ValueError, match="graph_depth"):
        ei.plan_emergence(ResNet(), alpha=2.0, scope="graph", graph_depth="mean")
    with pytest.raises(ValueError, match="blocks= is only used"):
        ei.plan_emergence(ResNet(), alpha=2.0, scope="graph", blocks=["b1"])
    torch.manual_seed(0)
    model = ResNet()
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", scope="graph", base=None)
    assert plan.scope == "graph" and plan["b1.conv2.weight"].factor == 2.0


def test_layer_depths_of_a_hand_made_graph():
    # input -> a; a -> b (full); a -> c (identity skip) and b -> c (full, layer c1); c -> d
    graph = LayerGraph(
        (LayerNode("a", 2, ("a",)), LayerNode("b", 2, ("b",)), LayerNode("c", 2, ("c1",)), LayerNode("d", 2, ("d",))),
        (LayerEdge(0, 1), LayerEdge(0, 2, "identity"), LayerEdge(1, 2), LayerEdge(2, 3)),
    )
    inputs = {"a": (-1,), "b": (0,), "c1": (1,), "d": (2,)}
    assert graph.layer_depths(inputs) == {"a": 1, "b": 2, "c1": 3, "d": 2}
    assert graph.layer_depths(inputs, how="longest") == {"a": 1, "b": 2, "c1": 3, "d": 4}
    with pytest.raises(ValueError, match="unknown depth"):
        graph.layer_depths(inputs, how="mean")


def test_t_quantiles_and_the_paired_interval_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 11, 15, 30, 60, 200, 5000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-4)
    diffs = [0.3, -0.1, 0.5, 0.2, 0.4]
    iv = paired_interval(diffs)
    lo, hi = stats.t.interval(0.95, 4, loc=stats.tmean(diffs), scale=stats.sem(diffs))
    assert (iv.low, iv.high) == (pytest.approx(lo, rel=1e-4), pytest.approx(hi, rel=1e-4))
    assert paired_interval([1.5]).low is None and not paired_interval([1.5]).excludes_zero
    with pytest.raises(ValueError):
        paired_interval([])
    with pytest.raises(ValueError):
        t_quantile_975(0)
