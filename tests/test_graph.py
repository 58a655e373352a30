"""Eq 1 on DAGs, the layer graph, and tracing models (residual ones included) into it."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from emergeinit import LayerGraph, graph_emergence, layer_graph, layered_emergence
from emergeinit.models import build_model
from emergeinit.emergence import LayerEdge, LayerNode


def brute_force(adj, active):
    """Enumerate every directed path from an inactive node, one by one (no DP)."""
    n = len(active)
    count = 0

    def walk(u):
        nonlocal count
        for v in range(n):
            if adj[u][v]:
                count += bool(active[v])
                walk(v)

    for x in range(n):
        if not active[x]:
            walk(x)
    return count


@st.composite
def dags(draw, max_nodes=7):
    n = draw(st.integers(1, max_nodes))
    perm = draw(st.permutations(range(n)))
    adj = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if draw(st.booleans()):
                adj[perm[i]][perm[j]] = 1  # forward in a hidden order: always acyclic
    active = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return adj, active


def layered_adjacency(widths):
    starts = np.cumsum([0] + list(widths))
    adj = np.zeros((starts[-1], starts[-1]), dtype=np.int64)
    for i in range(len(widths) - 1):
        adj[starts[i]:starts[i + 1], starts[i + 1]:starts[i + 2]] = 1
    return adj


@settings(max_examples=200, deadline=None)
@given(dags())
def test_matches_brute_force_on_random_dags(case):
    adj, active = case
    want = brute_force(adj, active)
    got = graph_emergence(np.array(adj), active)
    assert got == want and type(got) is int
    log = graph_emergence(np.array(adj), active, log=True)
    assert log == -math.inf if want == 0 else math.isclose(log, math.log(want), rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=5), st.data())
def test_fully_connected_chain_equals_eq2(widths, data):
    masks = [data.draw(st.lists(st.booleans(), min_size=w, max_size=w)) for w in widths]
    flat = [b for m in masks for b in m]
    adj = layered_adjacency(widths)
    assert graph_emergence(adj, flat) == layered_emergence(widths, [sum(m) for m in masks])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_hand_example_and_input_types():
    # 0 -> 1 -> 2 and 0 -> 2; node 0 inactive, 1 and 2 active: paths 0-1, 0-1-2, 0-2
    dense = [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    active = [False, True, True]
    assert graph_emergence(dense, active) == 3
    for adj in (
        np.array(dense), np.array(dense, dtype=bool), torch.tensor(dense), torch.tensor(dense).to_sparse(),
        torch.tensor(dense, dtype=torch.float32).to_sparse_csr(), scipy.sparse.csr_matrix(np.array(dense)),
        scipy.sparse.coo_matrix(np.array(dense)),
    ):
        assert graph_emergence(adj, active) == 3
        assert math.isclose(graph_emergence(adj, active, log=True), math.log(3))
    assert graph_emergence(dense, torch.tensor(active)) == 3
    assert graph_emergence(dense, np.array([0, 1, 1])) == 3
    assert graph_emergence(dense, [True, True, True], log=True) == -math.inf


@pytest.mark.parametrize(
    "adj, active, message",
    [
        ([[0, 1], [1, 0]], [0, 1], "cycle"),
        ([[1, 0], [0, 0]], [0, 1], "cycle"),
        ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], [0, 1, 1], "cycle"),
        ([[0, 1, 0], [0, 0, 1]], [0, 1], "square"),
        (np.zeros((2, 2, 2)), [0, 1], "square"),
        ([[0, 1], [0, 0]], [0, 1, 1], "active has 3 entries, the graph has 2"),
        ([[0, 2], [0, 0]], [0, 1], "0/1 matrix"),
        ([[0, -1], [0, 0]], [0, 1], "0/1 matrix"),
        ([[0.0, float("nan")], [0.0, 0.0]], [0, 1], "NaN"),
        ([[0, 1], [0, 0]], [0, float("nan")], "NaN"),
        ([[0, 1], [0, 0]], [0, 2], "bool"),
    ],
)
def test_graph_errors(adj, active, message):
    with pytest.raises(ValueError, match=message):
        graph_emergence(adj, active)


# ------------------------------------------------------------------------------- LayerGraph

@st.composite
def layer_graphs(draw):
    widths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=5))
    edges = []
    for d in range(1, len(widths)):
        for s in range(d):
            kind = draw(st.sampled_from([None, None, "full", "identity"]))
            if kind:
                edges.append(LayerEdge(s, d, kind))
    graph = LayerGraph(tuple(LayerNode(str(i), w) for i, w in enumerate(widths)), tuple(edges))
    masks = [draw(st.lists(st.booleans(), min_size=w, max_size=w)) for w in widths]
    return graph, masks


@settings(max_examples=200, deadline=None)
@given(layer_graphs())
def test_layer_graph_equals_eq1_on_its_node_dag(case):
    graph, masks = case
    flat = [b for m in masks for b in m]
    adj = graph.node_adjacency()
    want = brute_force(adj.tolist(), flat)
    assert graph.emergence(masks) == want == graph_emergence(adj, flat)
    log = graph.emergence(masks, log=True)
    assert log == -math.inf if want == 0 else math.isclose(log, math.log(want), rel_tol=1e-12)
    assert graph.emergence_with_log(masks) == (want, log)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=6), st.data())
def test_chain_reduces_to_eq2_exactly(widths, data):
    active = [data.draw(st.integers(0, w)) for w in widths]
    graph = LayerGraph.chain(widths)
    assert graph.is_chain()
    got = graph.emergence(active)
    assert got == layered_emergence(widths, active) and type(got) is int
    fractional = [a / 2 for a in active]
    assert graph.emergence(fractional) == layered_emergence(widths, fractional)


@st.composite
def counted_graphs(draw):
    """Layer graphs of mixed widths (identity edges between unequal widths included) with per-node
    counts out of a number of samples per graph node, as measure_emergence tallies them."""
    widths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=7))
    edges = []
    for d in range(1, len(widths)):
        for s in range(d):
            kind = draw(st.sampled_from([None, None, "full", "identity", "identity"]))
            if kind:
                edges.append(LayerEdge(s, d, kind))
    graph = LayerGraph(tuple(LayerNode(str(i), w) for i, w in enumerate(widths)), tuple(edges))
    rows = [draw(st.sampled_from([1, 2, 3, 4, 6, 8, 128])) for _ in widths]
    counts = [draw(st.lists(st.integers(0, r), min_size=w, max_size=w)) for w, r in zip(widths, rows)]
    return graph, counts, rows


@settings(max_examples=300, deadline=None)
@given(counted_graphs())
def test_grouped_counting_equals_the_per_node_reference_and_the_fractions(case):
    """The int64 pass (big ints per graph node only) gives the very integer of the big-int pass per
    network node, and emergence_of_counts the very E of emergence() on the Fractions count/rows."""
    graph, counts, rows = case
    fractions = [[Fraction(c, r) for c in cs] for cs, r in zip(counts, rows)]
    total, denom, whole = graph._scaled_emergence(fractions)
    touched = graph._identity_touched()
    act = [int(sum(ws) * denom) for ws in fractions]
    per_node = [[int(w * denom) for w in ws] if i in touched else None for i, ws in enumerate(fractions)]
    assert graph._paths_grouped(act, per_node, denom) == graph._paths_per_node(act, per_node, denom) == total
    tensors = [torch.tensor(cs, dtype=torch.int64) for cs in counts]
    assert graph.emergence_of_counts(tensors, rows) == graph.emergence_with_log(fractions)
    if all(r == 1 for r in rows):  # 0/1 masks: the exact int, as emergence() gives it for bools
        masks = [[bool(c) for c in cs] for cs in counts]
        assert graph.emergence_of_counts(tensors, rows, whole=True) == graph.emergence_with_log(masks)


def test_grouped_counting_hands_over_to_big_ints_past_int64():
    """Weights whose common denominator or per-node path counts leave int64 take the big-int pass,
    with the same result."""
    nodes = tuple(LayerNode(str(i), 3) for i in range(4))
    edges = tuple(LayerEdge(s, d, "identity") for d in range(4) for s in range(d))  # paths double per node
    graph = LayerGraph(nodes, edges)
    act, per_node = [3, 2, 1, 2], [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]]
    assert graph._paths_grouped(act, per_node, 1) == graph._paths_per_node(act, per_node, 1)
    big = 2 ** 70  # a denominator past int64
    scaled = [[w * big for w in p] for p in per_node]
    assert graph._paths_grouped([a * big for a in act], scaled, big) is None
    odd = [[Fraction(1, 3 ** 40), Fraction(1, 2), 1] for _ in nodes]  # lcm of the denominators > 2**62
    value, log = graph.emergence_with_log(odd)
    want = graph_emergence_of_fractions(graph, odd)
    assert value == float(want) and math.isclose(log, math.log(want), rel_tol=1e-12)
    rows = [2 ** 61 - 1, 3 ** 39, 2, 5]  # sample counts whose common multiple is past int64
    counts = [torch.tensor([r, r // 2, 0]) for r in rows]
    fractions = [[Fraction(int(c), r) for c in cs] for cs, r in zip(counts, rows)]
    assert graph.emergence_of_counts(counts, rows) == graph.emergence_with_log(fractions)


def graph_emergence_of_fractions(graph, weights):
    """Eq 1 by hand on the network-node DAG with fractional activities: paths weighted by
    (1 - w_start) * w_end, summed over all paths (the definition emergence() computes)."""
    adj = graph.node_adjacency().tolist()
    flat = [w for ws in weights for w in ws]
    n = len(flat)
    into = [Fraction(0)] * n  # weighted paths from inactive starts into each node
    for v in range(n):  # node order is topological (layer order, forward edges only)
        for u in range(v):
            if adj[u][v]:
                into[v] += into[u] + (1 - flat[u])
    return sum(into[v] * flat[v] for v in range(n))


def test_emergence_of_counts_checks_its_input():
    g = LayerGraph.chain([2, 3])
    with pytest.raises(ValueError, match="one entry per graph node"):
        g.emergence_of_counts([torch.tensor([1, 1])], [2])
    with pytest.raises(ValueError, match="3 integer counts"):
        g.emergence_of_counts([torch.tensor([1, 1]), torch.tensor([1.0, 0.0, 1.0])], [2, 2])
    with pytest.raises(ValueError, match=r"\[0, rows\[1\] = 2\]"):
        g.emergence_of_counts([torch.tensor([1, 1]), torch.tensor([3, 0, 1])], [2, 2])
    with pytest.raises(ValueError, match="positive int"):
        g.emergence_of_counts([torch.tensor([1, 1]), torch.tensor([1, 0, 1])], [2, 0])
    with pytest.raises(ValueError, match="whole=True"):
        g.emergence_of_counts([torch.tensor([1, 1]), torch.tensor([1, 0, 1])], [2, 2], whole=True)


def test_identity_edge_hand_example():
    # two nodes of width 2: node 0 = [inactive, active], node 1 = [active, inactive]
    full = LayerGraph((LayerNode("a", 2), LayerNode("b", 2)), (LayerEdge(0, 1, "full"),))
    ident = LayerGraph((LayerNode("a", 2), LayerNode("b", 2)), (LayerEdge(0, 1, "identity"),))
    masks = [[False, True], [True, False]]
    assert full.emergence(masks) == 1  # a0 -> b0 (a0 -> b1 ends inactive)
    assert ident.emergence(masks) == 1  # a0 -> b0 one-to-one
    assert ident.emergence([[True, False], [True, False]]) == 0  # a1 -> b1 ends inactive
    # counts only: spread evenly, so an identity edge gives the expected overlap (1/2 * 1/2 * 2)
    assert ident.emergence([1, 1]) == 0.5
    assert not ident.is_chain() and full.is_chain()


def test_layer_graph_validation():
    nodes = (LayerNode("a", 2), LayerNode("b", 2))
    with pytest.raises(ValueError, match="forward"):
        LayerGraph(nodes, (LayerEdge(1, 0),))
    with pytest.raises(ValueError, match="twice"):
        LayerGraph(nodes, (LayerEdge(0, 1), LayerEdge(0, 1, "identity")))
    with pytest.raises(ValueError, match="kind"):
        LayerGraph(nodes, (LayerEdge(0, 1, "sparse"),))
    g = LayerGraph(nodes, (LayerEdge(0, 1),))
    with pytest.raises(ValueError, match="1 entries"):
        g.emergence([1])
    with pytest.raises(ValueError, match="has 3 weights"):
        g.emergence([[1, 0, 1], 1])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        g.emergence([[1, 2], 1])
    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):
        g.emergence([3, 1])
    with pytest.raises(ValueError, match="NaN"):
        g.emergence([float("nan"), 1])


# ---------------------------------------------------------------------------- traced models

class Residual(nn.Module):
    """fc1 -> relu -> fc2, plus the input of fc1, then relu; then fc3."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 2)
        self.relu = nn.ReLU()
        self.functional = functional

    def forward(self, x):
        act = F.relu if self.functional else self.relu
        h = act(self.stem(x))
        out = act(self.fc2(act(self.fc1(h))) + h)
        return self.fc3(out)


class ConvShortcut(nn.Module):
    """A torchvision-style block whose shortcut is a 1x1 conv + BN (summed before the ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.conv1(x))))
        out = F.relu(out + self.downsample(x), inplace=True)
        return self.fc(out.mean((2, 3)))


def edge_set(graph):
    return {(graph.nodes[e.src].name, graph.nodes[e.dst].name, e.kind) for e in graph.edges}


@pytest.mark.parametrize("functional", [False, True])
def test_residual_mlp_graph(functional):
    g = layer_graph(Residual(functional))
    assert g.names == ["stem", "fc1", "fc2", "fc3"]
    assert g.widths == [4, 4, 4, 2]
    assert edge_set(g) == {
        ("stem", "fc1", "full"), ("fc1", "fc2", "full"), ("stem", "fc2", "identity"), ("fc2", "fc3", "full"),
    }
    assert not g.is_chain()
    # the skip adds paths: more than eq 2 on the same counts
    assert g.emergence([2, 2, 2, 1]) > layered_emergence(g.widths, [2, 2, 2, 1])


def test_conv_shortcut_shares_the_block_output():
    g = layer_graph(ConvShortcut())
    assert g.names == ["conv1", "conv2+downsample.0", "fc"]
    assert g.nodes[1].layers == ("conv2.weight", "downsample.0.weight")
    assert edge_set(g) == {("conv1", "conv2+downsample.0", "full"), ("conv2+downsample.0", "fc", "full")}
    g = layer_graph(ConvShortcut(), include_input=True)
    assert g.names[0] == "input" and g.widths[0] == 3
    assert ("input", "conv1", "full") in edge_set(g) and ("input", "conv2+downsample.0", "full") in edge_set(g)


def test_mlp_and_vgg_are_chains():
    g = layer_graph(build_model("mlp"))
    assert g.is_chain() and g.widths == [512, 256, 128, 10]
    assert layer_graph(build_model("mlp"), include_output=False).widths == [512, 256, 128]
    g = layer_graph(build_model("mlp"), include_input=True)
    assert g.is_chain() and g.widths == [784, 512, 256, 128, 10]
    g = layer_graph(build_model("vgg19_bn"))
    assert g.is_chain() and len(g.nodes) == 17 and g.widths[-2:] == [512, 10]


def test_cifar_resnets():
    g = layer_graph(build_model("resnet20"))
    assert len(g.nodes) == 20  # stem + 9 blocks x 2 convs + fc
    identity = [e for e in g.edges if e.kind == "identity"]
    assert len(identity) == 9 and len(g.edges) == 19 + 9
    # identity edges join block outputs (conv2 of the block) to the previous block output
    assert ("layer1.0.conv2", "layer1.1.conv2", "identity") in edge_set(g)
    assert ("layer1.2.conv2", "layer2.0.conv2", "identity") in edge_set(g)  # 16 -> 32 padded shortcut
    g = layer_graph(build_model("resnet110_bn"))
    assert len(g.nodes) == 110 and sum(e.kind == "identity" for e in g.edges) == 54
    log = g.emergence([n.width // 2 for n in g.nodes], log=True)
    assert math.isfinite(log) and log > layered_emergence(g.widths, [n.width // 2 for n in g.nodes], log=True)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: fx cannot trace this
            x = x * 0
        return self.fc2(torch.relu(self.fc1(x)))


def test_untraceable_model_falls_back_to_a_chain():
    with pytest.warns(UserWarning, match="could not trace"):
        g = layer_graph(Untraceable(), torch.randn(2, 3))
    assert g.is_chain() and g.names == ["fc1", "fc2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer_graph(Residual())  # traceable: no warning
