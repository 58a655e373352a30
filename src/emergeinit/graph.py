"""Emergence on a directed acyclic graph (eq 1), and the layer-level graph of a traced model that
defines it for networks with skip connections (the paper leaves ResNets to future work).

Eq 1 with H = the active nodes: E = sum over inactive x and active y of the number of directed
paths x -> y. On a fully connected layered chain this is eq 2 (:func:`layered_emergence`).

A :class:`LayerGraph` groups nodes by layer: each graph node is a set of ``width`` network nodes
(units of a Linear output, channels of a Conv output, read after the nonlinearity that follows).
A ``"full"`` edge connects every node of the source to every node of the target (data flowing
through a weight layer); an ``"identity"`` edge connects node k of the source to node k of the
target, for k below both widths (a parameter-free skip connection: identity, pooling,
normalization, zero-padded channels). See docs/emergence.md.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import fx, nn

from emergeinit.emergence import LayerEdge, LayerGraph, LayerNode
from emergeinit.layers import layer_by_module, WeightLayer, find_weight_layers

__all__ = ["layer_graph"]


# ----------------------------------------------------------------- tracing a model into the graph

_WEIGHT_MODULES = (nn.Linear, nn.modules.conv._ConvNd)
_PASS_MODULES: Tuple[type, ...] = tuple(
    t for t in (
        getattr(nn, name, None) for name in (
            "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
            "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
            "Softsign", "Tanhshrink", "Threshold", "LogSigmoid", "Hardshrink", "Softshrink",
            "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
            "FeatureAlphaDropout", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm",
        )
    ) if t is not None
) + (nn.modules.batchnorm._NormBase,)  # BatchNorm*, InstanceNorm*
_PASS_NAMES = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign",
    "tanhshrink", "threshold", "logsigmoid", "hardshrink", "softshrink", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "batch_norm",
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "clamp", "clip", "clamp_min",
    "clamp_max", "add", "sub", "mul", "div", "true_divide", "truediv", "neg", "contiguous",
}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_MIXING_NAMES = {
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum",
    "scaled_dot_product_attention", "multi_head_attention_forward", "embedding",
}
_METADATA_METHODS = {"size", "dim", "numel", "type", "get_device", "element_size", "nelement"}


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", "")


def _base_name(node: fx.Node) -> str:
    """``relu_`` -> ``relu``, ``__add__`` -> ``add``, ``iadd`` -> ``add``."""
    name = _target_name(node).strip("_")
    if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
        name = name[1:]
    return name


def _is_metadata(node: fx.Node) -> bool:
    """Users that read a shape or a dtype, not the values."""
    if node.op == "call_method" and node.target in _METADATA_METHODS:
        return True
    return node.op == "call_function" and node.target in (getattr, len)


def _is_pass(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Elementwise or normalization ops: a layer's nodes are read after a run of them."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _PASS_MODULES)
    if node.op in ("call_function", "call_method"):
        return _base_name(node) in _PASS_NAMES
    return False


def _is_inplace(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
        return True
    name = _target_name(node)
    if node.op in ("call_function", "call_method") and name.endswith("_") and not name.endswith("__"):
        return True
    if node.op == "call_function" and callable(node.target):
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return node.kwargs.get("inplace") is True
        return bound.arguments.get("inplace") is True
    return False


def _is_mixing(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Ops that connect every input node to every output node (weights, attention)."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return m is not None and any(  # parameters outside normalization layers: weights
            True for sub in m.modules() if not isinstance(sub, _PASS_MODULES)
            for _ in sub.parameters(recurse=False)
        )
    if node.op in ("call_function", "call_method"):
        return _base_name(node) in _MIXING_NAMES
    return False


class _Tracer(fx.Tracer):
    """Traces into every module that holds a weight layer; everything else is one opaque call
    (parameter-free helpers such as padded shortcuts need not be traceable)."""

    def __init__(self) -> None:
        super().__init__()
        self._holds: Dict[int, bool] = {}

    def _holds_weights(self, m: nn.Module) -> bool:
        key = id(m)
        if key not in self._holds:
            self._holds[key] = any(
                isinstance(x, _WEIGHT_MODULES + (nn.MultiheadAttention,)) for x in m.modules()
            )
        return self._holds[key]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _WEIGHT_MODULES + (nn.MultiheadAttention,)):
            return True
        return not self._holds_weights(m)


@dataclass
class _Group:
    """One layer node of the traced graph: the fx value its network nodes are read from."""

    read: fx.Node  # the value holding the nodes (after the elementwise run)
    members: List[fx.Node]  # weight-layer calls whose output these nodes are
    layers: List[WeightLayer]
    kind: str  # "linear" | "conv"
    width: int
    names: List[str] = field(default_factory=list)
    before: Optional[fx.Node] = None  # input group: read the value as this call receives it


@dataclass
class _Traced:
    module: fx.GraphModule
    groups: List[_Group]
    graph: LayerGraph
    skipped: List[str]


def _in_nodes(layer: WeightLayer) -> int:
    """Nodes a weight layer reads: in_features of a Linear, input channels of a Conv."""
    w = layer.weight
    if isinstance(layer.module, nn.modules.conv._ConvTransposeNd):
        return int(w.shape[0])
    if layer.kind == "conv":
        return int(w.shape[1]) * int(getattr(layer.module, "groups", 1))
    return int(w.shape[1])


def _follow(start: fx.Node, pos: Dict[fx.Node, int], modules: Dict[str, nn.Module]) -> Tuple[fx.Node, List[fx.Node]]:
    """From a weight-layer call, walk the run of elementwise ops that only it feeds; returns the
    node to read after, and every node on the run (in-place ops on the value included)."""
    chain = [start]
    node = start
    while True:
        aliases = [node]
        grew = True
        while grew:  # in-place elementwise ops on the value, when nothing else read it before them
            grew = False
            users = [u for a in aliases for u in a.users if u not in aliases and not _is_metadata(u)]
            for u in sorted(set(users), key=pos.__getitem__):
                if _is_inplace(u, modules) and _is_pass(u, modules) and u.args and u.args[0] in aliases:
                    if all(pos[o] > pos[u] for o in users if o is not u):
                        aliases.append(u)
                        grew = True
                break  # only the earliest user may extend the alias set
        chain.extend(aliases[1:])
        read = max(aliases, key=pos.__getitem__)
        others = {u for a in aliases for u in a.users if u not in aliases and not _is_metadata(u)}
        if len(others) == 1:
            (nxt,) = others
            if _is_pass(nxt, modules):
                node = nxt
                chain.append(nxt)
                continue
        return read, chain


def _trace_groups(model: nn.Module, *, include_input: bool = False, include_output: bool = True) -> _Traced:
    """Trace ``model`` with torch.fx and find its layer nodes and the edges between them."""
    tracer = _Tracer()
    fx_graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, fx_graph, type(model).__name__)
    modules = dict(gm.named_modules())
    layers = find_weight_layers(model, order="registration")
    by_module = layer_by_module(model, layers)
    nodes = list(fx_graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    calls = [
        n for n in nodes
        if n.op == "call_module" and id(modules.get(str(n.target))) in by_module
        and not isinstance(modules.get(str(n.target)), nn.MultiheadAttention)
    ]
    # group the calls by the value their run of elementwise ops ends at
    groups_by_read: Dict[fx.Node, _Group] = {}
    owner: Dict[fx.Node, fx.Node] = {}  # every node on a run -> its read node
    uses: Dict[str, int] = {}
    for call in calls:
        layer = by_module[id(modules[str(call.target)])]
        read, chain = _follow(call, pos, modules)
        for c in chain:
            owner.setdefault(c, read)
        uses[layer.key] = uses.get(layer.key, 0) + 1
        name = str(call.target) if uses[layer.key] == 1 else f"{call.target}#{uses[layer.key]}"
        g = groups_by_read.get(read)
        if g is None:
            g = groups_by_read[read] = _Group(read, [], [], layer.kind, layer.out_nodes)
        g.members.append(call)
        g.layers.append(layer)
        g.names.append(name)
    groups = sorted(groups_by_read.values(), key=lambda g: pos[g.read])
    index = {g.read: i for i, g in enumerate(groups)}
    INPUT = -1

    def sources(start: fx.Node) -> Dict[int, bool]:
        """Layer nodes (or INPUT) that feed ``start`` without crossing another weight layer;
        value True when the way crosses a mixing op (attention, functional linear)."""
        found: Dict[int, bool] = {}
        stack = [(start, False)]
        visited: Set[Tuple[fx.Node, bool]] = set()
        while stack:
            node, mixed = stack.pop()
            if (node, mixed) in visited:
                continue
            visited.add((node, mixed))
            if node in owner:
                g = index[owner[node]]
                found[g] = found.get(g, False) or mixed
                continue
            if node.op == "placeholder":
                found[INPUT] = found.get(INPUT, False) or mixed
                continue
            if node.op in ("get_attr", "output"):
                continue
            m = mixed or _is_mixing(node, modules)
            stack.extend((a, m) for a in node.all_input_nodes)
        return found

    edges: Dict[Tuple[int, int], str] = {}
    input_call: Optional[fx.Node] = None

    def add_edge(src: int, dst: int, kind: str) -> None:
        if src == dst:
            return
        if edges.get((src, dst)) != "full":
            edges[(src, dst)] = kind

    for gi, g in enumerate(groups):
        chain_nodes = [n for n, r in owner.items() if r is g.read]
        for call in g.members:
            arg = call.args[0] if call.args else None
            if isinstance(arg, fx.Node):
                for src in sources(arg):
                    if src == INPUT and (input_call is None or pos[call] < pos[input_call]):
                        input_call = call
                    add_edge(src, gi, "full")
        for n in chain_nodes:  # skip connections merging into the run (residual adds)
            if n in g.members:
                continue
            for arg in n.all_input_nodes:
                if owner.get(arg) is g.read or arg.op == "get_attr":
                    continue
                for src, mixed in sources(arg).items():
                    add_edge(src, gi, "full" if mixed else "identity")
    # which layer nodes the graph keeps
    has_out = {s for (s, d) in edges if s != INPUT}
    keep = [gi for gi in range(len(groups)) if include_output or gi in has_out]
    final: List[_Group] = []
    lnodes: List[LayerNode] = []
    remap: Dict[int, int] = {}
    if include_input and input_call is not None:
        layer = by_module[id(modules[str(input_call.target)])]
        arg = input_call.args[0]
        assert isinstance(arg, fx.Node)
        final.append(_Group(arg, [], [], layer.kind, _in_nodes(layer), ["input"], before=input_call))
        lnodes.append(LayerNode("input", _in_nodes(layer), (), "input"))
        remap[INPUT] = 0
    for gi in keep:
        g = groups[gi]
        remap[gi] = len(lnodes)
        final.append(g)
        lnodes.append(LayerNode("+".join(g.names), g.width, tuple(l.key for l in g.layers), g.kind))
    ledges = sorted(
        (LayerEdge(remap[s], remap[d], k) for (s, d), k in edges.items() if s in remap and d in remap),
        key=lambda e: (e.dst, e.src),
    )
    probed = {l.key for g in groups for l in g.layers}
    skipped = [l.key for l in layers if l.key not in probed]
    return _Traced(gm, final, LayerGraph(tuple(lnodes), tuple(ledges)), skipped)


def _chain_from_layers(layers: Sequence[WeightLayer], *, include_input: bool, include_output: bool) -> LayerGraph:
    """The fallback graph: the probed layers as a plain chain, in execution order."""
    nodes = [LayerNode(l.name, l.out_nodes, (l.key,), l.kind) for l in layers if l.kind in ("linear", "conv")]
    if not include_output and nodes:
        nodes = nodes[:-1]
    if include_input and layers:
        nodes.insert(0, LayerNode("input", _in_nodes(layers[0]), (), "input"))
    return LayerGraph(tuple(nodes), tuple(LayerEdge(i, i + 1) for i in range(len(nodes) - 1)))


def layer_graph(
    model: nn.Module,
    example_input: Any = None,
    *,
    include_input: bool = False,
    include_output: bool = True,
) -> LayerGraph:
    """The layer-level DAG of ``model``, traced with torch.fx (no forward pass is run).

    One graph node per set of network nodes a weight layer (Linear, ConvNd) writes, read after the
    elementwise/normalization ops that follow it; layers whose outputs are summed before that
    point (a conv shortcut and the residual branch) share one node. Edges through a weight layer
    are ``full``; parameter-free skip connections are ``identity``. ``include_input`` adds the
    input of the first layer as node 0; ``include_output=False`` drops the layer nodes nothing
    reads from (the logits). When fx cannot trace the model, the layers found by running
    ``example_input`` form a plain chain, with a warning.
    """
    try:
        return _trace_groups(model, include_input=include_input, include_output=include_output).graph
    except Exception as err:  # noqa: BLE001 - any fx failure falls back
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}); "
            "using its layers as a plain chain (skip connections not seen)",
            stacklevel=2,
        )
        layers = find_weight_layers(model, example_input)
        return _chain_from_layers(layers, include_input=include_input, include_output=include_output)

