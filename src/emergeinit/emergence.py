"""Pure counting of emergence: eq 2 (eq 12 with channel counts as widths), the pivot layers of the
lemma (eq 4-5), eq 1 on any DAG, and the layer-level graph that defines E for networks with skip
connections (the paper leaves ResNets to future work). No model is run here: see
:mod:`emergeinit.trace` for reading a model into a :class:`LayerGraph`.

E counts the directed paths that start at an inactive node and end at an active node. On a fully
connected layered network with widths n_i and active counts a_i (eq 2):
``E = sum_{i<j} (n_i - a_i) * a_j * prod_{i<k<j} n_k``.
Layers are indexed from 0 everywhere in this package (the paper counts from 1).

A :class:`LayerGraph` groups nodes by layer: each graph node is a set of ``width`` network nodes
(units of a Linear output, channels of a Conv output, read after the nonlinearity that follows).
A ``"full"`` edge connects every node of the source to every node of the target (data flowing
through a weight layer); an ``"identity"`` edge connects node k of the source to node k of the
target, for k below both widths (a parameter-free skip connection: identity, pooling,
normalization, zero-padded channels). See docs/emergence.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "layered_emergence", "lemma_pivot", "exact_pivot", "graph_emergence",
    "LayerGraph", "LayerNode", "LayerEdge", "Number",
]

Number = Union[int, float]


# ------------------------------------------------------------------------------------ validation

def _as_list(values: Any, what: str) -> List[Any]:
    """A plain list from a sequence, a numpy array or a torch tensor."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    return list(values)


def _number(value: Any, what: str) -> Number:
    """An int or a float; NaN, infinities, negatives and non-numbers are errors."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{what} is NaN")
        if math.isinf(value):
            raise ValueError(f"{what} is infinite")
    if value < 0:
        raise ValueError(f"{what} is negative ({value})")
    return value


def _validate(widths: Any, active: Any) -> Tuple[List[int], List[Number]]:
    """Checked copies of ``widths`` (whole numbers) and ``active`` (ints or floats, 0 <= a <= n)."""
    n = _as_list(widths, "widths")
    a = _as_list(active, "active")
    if not n and not a:
        raise ValueError("widths and active are empty: emergence needs at least one layer")
    if len(n) != len(a):
        raise ValueError(f"length mismatch: widths has {len(n)} layers, active has {len(a)}")
    ns: List[int] = []
    for i, w in enumerate(n):
        w = _number(w, f"widths[{i}]")
        if isinstance(w, float):
            if not w.is_integer():
                raise ValueError(f"widths[{i}] = {w} is not a whole number of nodes")
            w = int(w)
        ns.append(w)
    As: List[Number] = []
    for i, v in enumerate(a):
        v = _number(v, f"active[{i}]")
        if v > ns[i]:
            raise ValueError(f"active[{i}] = {v} exceeds widths[{i}] = {ns[i]}")
        As.append(v)
    return ns, As


def _scaled(values: Sequence[Number]) -> Tuple[List[int], int]:
    """(ints, D): every value times one power of two D, exactly (a float is n / 2**k, so the
    largest 2**k among them makes them all whole; ints alone give D = 1). Linear comparisons and
    sums keep their meaning in these units, and run on ints rather than Fractions."""
    ratios = [v.as_integer_ratio() if isinstance(v, float) else (v, 1) for v in values]
    denom = max((d for _, d in ratios), default=1)
    return [n * (denom // d) for n, d in ratios], denom


def _to_number(value: Union[int, Fraction], as_float: bool = False) -> Number:
    """An exact result as an int (when whole and ``as_float`` is false), else the nearest float
    (inf past the float range)."""
    if not as_float and (isinstance(value, int) or value.denominator == 1):
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------------------------- log space

def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _logaddexp(x: float, y: float) -> float:
    """log(exp(x) + exp(y)) without overflow; -inf stands for log 0."""
    if x == -math.inf:
        return y
    if y == -math.inf:
        return x
    hi, lo = (x, y) if x >= y else (y, x)
    return hi + math.log1p(math.exp(lo - hi))


# ---------------------------------------------------------------------------------- public API

def layered_emergence(widths: Sequence[Number], active: Sequence[Number], *, log: bool = False) -> Number:
    """Eq 2 (eq 12 when ``widths`` are channel counts): paths from inactive to active nodes.

    ``widths[i]`` is n_i, ``active[i]`` is a_i (an int, or a float such as a batch-averaged
    count). All-int input gives the exact Python int; float input gives the float nearest to the
    exact value (``inf`` past the float range). ``log=True`` gives the natural log of E by a
    log-space recursion that neither overflows nor underflows at any depth (E = 0 gives ``-inf``).
    O(N) in the number of layers, via S_{j+1} = n_j S_j + (n_j - a_j) and E = sum_j a_j S_j,
    where S_j counts the paths from inactive nodes into one node of layer j.
    """
    n, a = _validate(widths, active)
    if log:
        log_s, log_e = -math.inf, -math.inf
        for nj, aj in zip(n, a):
            log_e = _logaddexp(log_e, _log(aj) + log_s)
            log_s = _logaddexp(log_s + _log(nj), _log(nj - aj))
        return log_e
    scaled, denom = _scaled(a)  # S and a in units of 1/D: E in units of 1/D**2
    s = e = 0
    for nj, aj in zip(n, scaled):
        e += aj * s
        s = nj * s + (nj * denom - aj)
    return _to_number(Fraction(e, denom * denom), as_float=not all(isinstance(v, int) for v in a))


def lemma_pivot(widths: Sequence[Number], active: Sequence[Number]) -> int:
    """The pivot layer of the paper's lemma (eq 4), 0-based.

    The largest i with ``Delta_i = sum_k a_k - a_i - sum_{k<i} n_k > 0`` (eq 5: the paper's net
    change of E when layer i loses one active node, path products ignored). Layers 0..i favour
    fewer active nodes, layers after i favour more. Returns -1 when no layer satisfies it.
    Delta_i never increases with i, so the layers that satisfy it are a prefix.
    """
    n, a = _validate(widths, active)
    ex, denom = _scaled(a)  # Delta_i in units of 1/D: same sign
    total = sum(ex)
    before = 0
    pivot = -1
    for i, (ni, ai) in enumerate(zip(n, ex)):
        if total - ai - before > 0:
            pivot = i
        before += ni * denom
    return pivot


def exact_pivot(widths: Sequence[Number], active: Sequence[Number]) -> int:
    """The pivot that the exact eq 2 gives, 0-based: the largest i where turning one active node
    of layer i inactive raises E, i.e. ``E(a_i - 1) > E(a_i)``; -1 when no layer qualifies.

    E is linear in each a_i, and ``E(a_i - 1) - E(a_i) = A_i - B_i``, where A_i counts paths from
    one node of layer i to later active nodes and B_i paths from earlier inactive nodes into one
    node of layer i. With all widths >= 1 this difference never increases with i, so the layers
    that gain from losing activity are a prefix, as the lemma says. Computed exactly (ints; floats
    in units of a common power of two, :func:`_scaled`), O(N).
    """
    n, a = _validate(widths, active)
    ex, denom = _scaled(a)  # A_i and B_i in units of 1/D: same comparison
    count = len(n)
    into: List[int] = [0] * count  # B_i
    for i in range(1, count):
        into[i] = n[i - 1] * into[i - 1] + (n[i - 1] * denom - ex[i - 1])
    out: List[int] = [0] * count  # A_i
    for i in range(count - 2, -1, -1):
        out[i] = ex[i + 1] + n[i + 1] * out[i + 1]
    pivot = -1
    for i in range(count):
        if out[i] > into[i]:
            pivot = i
    return pivot


# ---------------------------------------------------------------------------------- eq 1 on a DAG

def _edges(adjacency: Any) -> Tuple[int, List[Tuple[int, int]]]:
    """Node count and edge list of a 0/1 matrix: numpy, torch (dense or sparse), scipy.sparse."""
    if hasattr(adjacency, "tocoo") and not isinstance(adjacency, torch.Tensor):  # scipy.sparse
        coo = adjacency.tocoo()
        shape = tuple(coo.shape)
        entries: Dict[Tuple[int, int], float] = {}
        for r, c, v in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()):
            entries[(r, c)] = entries.get((r, c), 0) + v  # unsummed duplicates add up
        values = [(r, c, v) for (r, c), v in entries.items()]
    else:
        t = adjacency if isinstance(adjacency, torch.Tensor) else torch.as_tensor(adjacency)
        if t.layout != torch.strided:
            t = t.to_dense()
        shape = tuple(t.shape)
        values = []
        if len(shape) == 2:
            if t.is_floating_point() and bool(torch.isnan(t).any()):
                raise ValueError(f"adjacency has NaN at {torch.isnan(t).nonzero()[0].tolist()}")
            nz = t.nonzero()
            values = list(zip(nz[:, 0].tolist(), nz[:, 1].tolist(), t[nz[:, 0], nz[:, 1]].tolist()))
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"adjacency must be a square N x N matrix, got shape {shape}")
    edges = []
    for r, c, v in values:
        if v != v:
            raise ValueError(f"adjacency has NaN at [{r}, {c}]")
        if v == 0:
            continue
        if v != 1:
            raise ValueError(f"adjacency must be a 0/1 matrix, found {v} at [{r}, {c}]")
        edges.append((int(r), int(c)))
    return int(shape[0]), edges


def _active_mask(active: Any, count: int) -> List[bool]:
    values = active.tolist() if hasattr(active, "tolist") else list(active)
    if len(values) != count:
        raise ValueError(f"active has {len(values)} entries, the graph has {count} nodes")
    mask = []
    for i, v in enumerate(values):
        if v != v:
            raise ValueError(f"active[{i}] is NaN")
        if v not in (0, 1):
            raise ValueError(f"active must be a bool (0/1) vector, found {v!r} at {i}")
        mask.append(bool(v))
    return mask


def _topological_order(count: int, edges: Sequence[Tuple[int, int]]) -> List[int]:
    """Kahn's algorithm; a cycle (self-loops included) is a ValueError naming a node on it."""
    indegree = [0] * count
    out: List[List[int]] = [[] for _ in range(count)]
    for u, v in edges:
        out[u].append(v)
        indegree[v] += 1
    ready = [u for u in range(count) if indegree[u] == 0]
    order: List[int] = []
    while ready:
        u = ready.pop()
        order.append(u)
        for v in out[u]:
            indegree[v] -= 1
            if indegree[v] == 0:
                ready.append(v)
    if len(order) != count:
        stuck = next(u for u in range(count) if indegree[u] > 0)
        raise ValueError(f"adjacency has a cycle (through node {stuck}): emergence is defined on DAGs only")
    return order


def graph_emergence(adjacency: Any, active: Any, *, log: bool = False) -> Number:
    """Eq 1 on an explicit DAG: the number of directed paths from inactive to active nodes.

    ``adjacency`` is an N x N 0/1 matrix (numpy, torch dense or sparse, scipy.sparse) with the
    edge i -> j at ``[i, j]``; ``active`` a length-N bool vector. Returns the exact Python int, or
    with ``log=True`` its natural log computed in log space (0 paths gives ``-inf``). A cycle is a
    ValueError. One pass in topological order: S[v] = sum over edges u -> v of (S[u] + [u inactive])
    counts the paths from inactive nodes into v, and E = sum of S over active nodes.
    """
    count, edges = _edges(adjacency)
    mask = _active_mask(active, count)
    order = _topological_order(count, edges)
    out: List[List[int]] = [[] for _ in range(count)]
    for u, v in edges:
        out[u].append(v)
    if log:
        ls = [-math.inf] * count
        for u in order:
            carry = _logaddexp(ls[u], -math.inf if mask[u] else 0.0)
            for v in out[u]:
                ls[v] = _logaddexp(ls[v], carry)
        total = -math.inf
        for v in range(count):
            if mask[v]:
                total = _logaddexp(total, ls[v])
        return total
    s = [0] * count
    for u in order:
        carry = s[u] + (0 if mask[u] else 1)
        if carry:
            for v in out[u]:
                s[v] += carry
    return sum(s[v] for v in range(count) if mask[v])


# -------------------------------------------------------------------------------- the layer graph

@dataclass(frozen=True)
class LayerNode:
    """A set of ``width`` network nodes: the output of one or more weight layers (or the input)."""

    name: str
    width: int
    layers: Tuple[str, ...] = ()  # keys of the weight layers whose outputs these nodes are
    kind: str = "linear"  # "linear" (units on the last dim) | "conv" (channels, dim 1) | "input"


@dataclass(frozen=True)
class LayerEdge:
    """``full``: every source node feeds every target node; ``identity``: node k feeds node k."""

    src: int
    dst: int
    kind: str = "full"


def _lcm(a: int, b: int) -> int:
    return a // math.gcd(a, b) * b


@dataclass(frozen=True)
class LayerGraph:
    """Layer-level DAG: ``nodes`` in a topological order (execution order), ``edges`` between them."""

    nodes: Tuple[LayerNode, ...]
    edges: Tuple[LayerEdge, ...] = field(default=())

    def __post_init__(self) -> None:
        seen = set()
        for e in self.edges:
            if e.kind not in ("full", "identity"):
                raise ValueError(f"edge kind must be 'full' or 'identity', got {e.kind!r}")
            if not (0 <= e.src < e.dst < len(self.nodes)):
                raise ValueError(f"edge {e.src} -> {e.dst} does not go forward between nodes 0..{len(self.nodes) - 1}")
            if (e.src, e.dst) in seen:
                raise ValueError(f"edge {e.src} -> {e.dst} appears twice")
            seen.add((e.src, e.dst))

    @classmethod
    def chain(cls, widths: Sequence[int], names: Optional[Sequence[str]] = None) -> "LayerGraph":
        """A plain feed-forward chain: node i fully connected to node i + 1."""
        names = list(names) if names is not None else [str(i) for i in range(len(widths))]
        nodes = tuple(LayerNode(n, int(w)) for n, w in zip(names, widths))
        return cls(nodes, tuple(LayerEdge(i, i + 1) for i in range(len(nodes) - 1)))

    @property
    def widths(self) -> List[int]:
        return [n.width for n in self.nodes]

    @property
    def names(self) -> List[str]:
        return [n.name for n in self.nodes]

    def is_chain(self) -> bool:
        """True when the edges are exactly the full edges i -> i + 1 (eq 2 applies as is)."""
        want = {(i, i + 1) for i in range(len(self.nodes) - 1)}
        return all(e.kind == "full" for e in self.edges) and {(e.src, e.dst) for e in self.edges} == want

    def node_adjacency(self) -> torch.Tensor:
        """The network-node DAG these layers stand for, as a dense N x N uint8 matrix (small nets)."""
        starts = [0]
        for n in self.nodes:
            starts.append(starts[-1] + n.width)
        adj = torch.zeros(starts[-1], starts[-1], dtype=torch.uint8)
        for e in self.edges:
            s, d = starts[e.src], starts[e.dst]
            if e.kind == "full":
                adj[s:s + self.nodes[e.src].width, d:d + self.nodes[e.dst].width] = 1
            else:
                k = torch.arange(min(self.nodes[e.src].width, self.nodes[e.dst].width))
                adj[s + k, d + k] = 1
        return adj

    def layer_depths(self, layer_inputs: Mapping[str, Sequence[int]], *, how: str = "shortest") -> Dict[str, int]:
        """Depth of each weight layer: the number of weight layers on a path from the model input
        through it, the shortest such path (``how="shortest"``) or the longest (``"longest"``).

        ``layer_inputs`` maps a layer key to the nodes its calls read (-1: the model input, depth 0).
        A layer is one deeper than the nodes it reads; a node is as deep as the layers that write
        it and the nodes that reach it through identity edges, or through full edges that no layer
        of the node accounts for (a parameter-free mixing op: attention's softmax·V). On a plain
        chain both give 1..L in order; on a residual net "shortest" counts the skips (every block's
        first layer sits one below the stem), "longest" goes through every branch (execution order).
        """
        if how not in ("shortest", "longest"):
            raise ValueError(f"unknown depth {how!r}: use 'shortest' or 'longest'")
        pick = min if how == "shortest" else max
        node_depth: List[int] = []
        layer_depth: Dict[str, int] = {}
        incoming: List[List[LayerEdge]] = [[] for _ in self.nodes]
        for e in self.edges:
            incoming[e.dst].append(e)
        for v, node in enumerate(self.nodes):
            reached: List[int] = []
            covered = set()
            for key in node.layers:
                sources = [s for s in layer_inputs.get(key, ()) if s < v]
                covered.update(sources)
                depth = 1 + (pick(node_depth[s] if s >= 0 else 0 for s in sources) if sources else 0)
                layer_depth[key] = depth
                reached.append(depth)
            for e in incoming[v]:
                if e.kind == "identity" or e.src not in covered:
                    reached.append(node_depth[e.src])
            node_depth.append(pick(reached) if reached else 0)
        return layer_depth

    def emergence(self, active: Sequence[Any], *, log: bool = False) -> Number:
        """E of the network-node DAG (eq 1), one entry of ``active`` per layer node.

        An entry is a count a_i (int or float, 0 <= a_i <= width), or a per-node sequence of
        activity weights in [0, 1] (bools, or the fraction of samples in which each node was
        active). A count on a node that an identity edge touches is spread evenly over its nodes.
        Exact: the int when the weights are ints (or the graph's edges are all full and the
        counts ints), else the float nearest the exact rational value (inf past float range);
        ``log=True`` gives the natural log of that exact value, finite at any depth.
        """
        value, log_e = self.emergence_with_log(active)
        return log_e if log else value

    def emergence_with_log(self, active: Sequence[Any]) -> Tuple[Number, float]:
        """(:meth:`emergence`, its natural log) from one pass: E and ln E together."""
        total, denom, whole = self._scaled_emergence(active)
        return _value_and_log(total, denom, whole)

    def emergence_of_counts(self, counts: Sequence[torch.Tensor], rows: Sequence[int], *,
                            whole: bool = False) -> Tuple[Number, float]:
        """E and ln E when node k of graph node i was active in ``counts[i][k]`` of ``rows[i]``
        samples (``count`` mode: each node weighted by that fraction), exact as :meth:`emergence`
        on those fractions, without a Fraction per node. ``whole``: give E as an int (every
        ``rows[i]`` is 1: the counts are 0/1 masks)."""
        if len(counts) != len(self.nodes) or len(rows) != len(self.nodes):
            raise ValueError(f"counts and rows need one entry per graph node ({len(self.nodes)}), "
                             f"got {len(counts)} and {len(rows)}")
        denom = 1
        for i, (node, c, r) in enumerate(zip(self.nodes, counts, rows)):
            if not isinstance(r, numbers.Integral) or isinstance(r, bool) or r < 1:
                raise ValueError(f"rows[{i}] must be a positive int, got {r!r}")
            if tuple(c.shape) != (node.width,) or c.is_floating_point() or c.is_complex():
                raise ValueError(f"counts[{i}] must be {node.width} integer counts, got {c.dtype} {tuple(c.shape)}")
            denom = _lcm(denom, int(r))
        if whole and denom != 1:
            raise ValueError("whole=True needs 0/1 counts (every rows[i] = 1)")
        widths = torch.tensor(self.widths, dtype=torch.int64)
        flat = torch.cat([c.to(device="cpu", dtype=torch.int64) for c in counts]) if counts else torch.zeros(0, dtype=torch.int64)
        out_of_range = (flat < 0) | (flat > torch.tensor([int(r) for r in rows]).repeat_interleave(widths))
        if bool(out_of_range.any()):
            i = int(torch.searchsorted(torch.cumsum(widths, 0), int(out_of_range.nonzero()[0, 0]), right=True))
            raise ValueError(f"counts[{i}] must lie in [0, rows[{i}] = {rows[i]}]")
        if denom * max(len(flat), 1) < 2 ** 62:  # scaled counts and their sums fit int64
            scaled = flat * torch.tensor([denom // int(r) for r in rows]).repeat_interleave(widths)
            prefix = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(scaled, 0)])
            ends = prefix[torch.cumsum(widths, 0)].tolist()
            act = [e - b for e, b in zip(ends, [0] + ends[:-1])]
            pieces: List[Any] = list(scaled.split(self.widths))
        else:  # a common denominator past int64: Python ints
            pieces = [[v * (denom // int(r)) for v in c.tolist()] for c, r in zip(counts, rows)]
            act = [sum(p) for p in pieces]
        touched = self._identity_touched()
        per_node = [p if i in touched else None for i, p in enumerate(pieces)]
        return _value_and_log(self._paths_times_denominator(act, per_node, denom), denom, whole)

    def _identity_touched(self) -> set:
        """Graph nodes an identity edge starts or ends at: only these need a weight per node."""
        return {e.src for e in self.edges if e.kind == "identity"} | {e.dst for e in self.edges if e.kind == "identity"}

    def _scaled_emergence(self, active: Sequence[Any]) -> Tuple[int, int, bool]:
        """(E * D**2, D, all inputs ints): E in integer arithmetic after scaling every activity
        weight by D."""
        if len(active) != len(self.nodes):
            raise ValueError(f"active has {len(active)} entries, the graph has {len(self.nodes)} nodes")
        touched = self._identity_touched()
        whole = True
        counts: List[Fraction] = []
        per_node: List[Optional[List[Fraction]]] = []
        for i, (node, value) in enumerate(zip(self.nodes, active)):
            if hasattr(value, "tolist"):
                value = value.tolist()
            if isinstance(value, (list, tuple)):
                if len(value) != node.width:
                    raise ValueError(f"active[{i}] has {len(value)} weights, node {node.name!r} has width {node.width}")
                whole = whole and all(isinstance(v, numbers.Integral) for v in value)
                if i in touched:
                    weights = [_activity(v, f"active[{i}][{k}]") for k, v in enumerate(value)]
                    counts.append(sum(weights, Fraction(0)))
                    per_node.append(weights)
                else:  # only the count matters: summed without a Fraction per node (wide logits)
                    counts.append(_activity_sum(value, f"active[{i}]"))
                    per_node.append(None)
            else:
                a = _activity(value, f"active[{i}]", upper=node.width)
                whole = whole and isinstance(value, numbers.Integral)
                counts.append(a)
                per_node.append([a / node.width] * node.width if i in touched and node.width else None)
        denom = 1
        for c, p in zip(counts, per_node):
            denom = _lcm(denom, c.denominator)
            for w in p or ():
                denom = _lcm(denom, w.denominator)
        act = [int(c * denom) for c in counts]
        p_act = [[int(w * denom) for w in p] if p is not None else None for p in per_node]
        return self._paths_times_denominator(act, p_act, denom), denom, whole

    def _paths_times_denominator(self, act: List[int], per_node: Sequence[Optional[Any]], denom: int) -> int:
        """E * D**2 from activities scaled by D (``act[i]``: node i's scaled count; ``per_node[i]``:
        its scaled weight per network node, given where an identity edge touches it). The grouped
        int64 pass when its bounds hold (:meth:`_paths_grouped`), else the per-node big-int pass;
        both exact, and equal. Narrow identity edges (mean width under 128, a CIFAR ResNet) go
        per node at once: there a Python loop costs less than the int64 ops' dispatch."""
        spans = [min(self.nodes[e.src].width, self.nodes[e.dst].width) for e in self.edges if e.kind == "identity"]
        if sum(spans) >= 128 * len(spans):
            grouped = self._paths_grouped(act, per_node, denom)
            if grouped is not None:
                return grouped
        return self._paths_per_node(act, per_node, denom)

    def _paths_grouped(self, act: List[int], per_node: Sequence[Optional[Any]], denom: int) -> Optional[int]:
        """E * D**2 with big ints only per graph node; None when an int64 bound could be exceeded.

        Paths from inactive nodes into network node k of graph node g (times D) are
        ``uniform[g] + B_g(k) + r_g[k]``: ``uniform`` the part shared by all of g's nodes (full
        edges), ``B_g(k)`` the big shared parts that came along identity edges (constant on
        ``k < m`` for the few widths m on the way: a dict m -> int), and ``r_g`` the per-node rest,
        small enough for an int64 vector (bounded by ``rmax``). Sums over k then need prefix sums
        and one dot product per node, not a big-int operation per network node."""
        limit = 2 ** 62
        if denom >= limit:
            return None
        incoming: List[List[LayerEdge]] = [[] for _ in self.nodes]
        for e in self.edges:
            incoming[e.dst].append(e)
        vectors = [None if p is None else (p if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=torch.int64))
                   for p in per_node]
        uniform: List[int] = []
        extra_sum: List[int] = []  # sum over k of B_g(k) + r_g[k]
        carry: List[Optional[Tuple[Dict[int, int], torch.Tensor, int]]] = []  # what an identity edge passes on
        total = 0
        for g, node in enumerate(self.nodes):
            c = 0
            shared: Dict[int, int] = {}
            rest: Optional[torch.Tensor] = None
            rmax = 0
            for e in incoming[g]:
                u = e.src
                if e.kind == "full":
                    c += self.nodes[u].width * uniform[u] + extra_sum[u] + (self.nodes[u].width * denom - act[u])
                    continue
                m = min(node.width, self.nodes[u].width)
                if rest is None:
                    rest = torch.zeros(node.width, dtype=torch.int64)
                segments, vector, bound = carry[u]  # type: ignore[misc]
                for width, value in segments.items():
                    key = min(width, m)
                    shared[key] = shared.get(key, 0) + value
                rest[:m] += vector[:m]
                rmax += bound
                if rmax >= limit:
                    return None
            uniform.append(c)
            total += c * act[g]
            if rest is None:
                extra_sum.append(0)
                p = vectors[g]
                carry.append(({node.width: c}, denom - p, denom) if p is not None else None)
                continue
            p = vectors[g]
            if p is None or node.width * rmax >= limit // max(denom, 1):
                return None
            prefix = torch.cumsum(p, 0)
            total += sum(v * int(prefix[m - 1]) for m, v in shared.items() if m > 0) + int((p * rest).sum())
            extra_sum.append(sum(v * m for m, v in shared.items()) + int(rest.sum()))
            segments = dict(shared)
            segments[node.width] = segments.get(node.width, 0) + c
            carry.append((segments, rest + (denom - p), rmax + denom))
        return total

    def _paths_per_node(self, act: List[int], per_node: Sequence[Optional[Any]], denom: int) -> int:
        """E * D**2 by big-int arithmetic per network node where identity edges need it: the
        reference the grouped pass is tested against, and its fallback."""
        p_act = [None if p is None else (p.tolist() if isinstance(p, torch.Tensor) else list(p)) for p in per_node]
        inact = [n.width * denom - a for n, a in zip(self.nodes, act)]
        incoming: List[List[LayerEdge]] = [[] for _ in self.nodes]
        for e in self.edges:
            incoming[e.dst].append(e)
        uniform: List[int] = []  # paths (times D) from inactive nodes into each node, shared part
        extra: List[Optional[List[int]]] = []  # plus a per-node part from identity edges
        total = 0
        for g, node in enumerate(self.nodes):
            c = 0
            d: Optional[List[int]] = None
            for e in incoming[g]:
                u = e.src
                if e.kind == "full":
                    c += self.nodes[u].width * uniform[u] + sum(extra[u] or ()) + inact[u]
                else:
                    if d is None:
                        d = [0] * node.width
                    pu = p_act[u]
                    du = extra[u]
                    for k in range(min(node.width, self.nodes[u].width)):
                        q = denom - pu[k]  # type: ignore[index]
                        d[k] += uniform[u] + (du[k] if du else 0) + q
            uniform.append(c)
            extra.append(d)
            total += c * act[g]
            if d is not None:
                pg = p_act[g]
                total += sum(w * x for w, x in zip(pg, d))  # type: ignore[arg-type]
        return total


def _value_and_log(total: int, denom: int, whole: bool) -> Tuple[Number, float]:
    """E = total / D**2 (an int when ``whole``, else the nearest float) and its natural log."""
    value = Fraction(total, denom * denom)  # reduced: ln E does not depend on the D chosen
    log_e = math.log(value.numerator) - math.log(value.denominator) if total > 0 else -math.inf
    return _to_number(value, as_float=not whole), log_e


def _activity_sum(values: Sequence[Any], what: str) -> Fraction:
    """The exact sum of activities in [0, 1], each checked as :func:`_activity` checks it."""
    by_denominator: Dict[int, int] = {}
    for k, v in enumerate(values):
        if not (isinstance(v, numbers.Rational) and 0 <= v.numerator <= v.denominator):
            v = _activity(v, f"{what}[{k}]")
        by_denominator[v.denominator] = by_denominator.get(v.denominator, 0) + v.numerator
    return sum((Fraction(n, d) for d, n in by_denominator.items()), Fraction(0))


def _activity(value: Any, what: str, upper: int = 1) -> Fraction:
    """An activity in [0, upper] as the exact Fraction it stands for."""
    if isinstance(value, bool):
        return Fraction(int(value))
    if isinstance(value, numbers.Rational):  # ints and Fractions: exact, without a float
        if not 0 <= value <= upper:
            raise ValueError(f"{what} = {value} is outside [0, {upper}]")
        return Fraction(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(f):
        raise ValueError(f"{what} is NaN")
    if not 0 <= f <= upper:
        raise ValueError(f"{what} = {value} is outside [0, {upper}]")
    return Fraction(int(value)) if isinstance(value, numbers.Integral) else Fraction(f)
