"""Measure a model's emergence on data: count active nodes per layer, then E (eq 1/2/12).

A node is a unit of a Linear output or a channel of a Conv output, read after the run of
elementwise and normalization ops that follows the layer (BN, ReLU as a module, in place, or
``F.relu`` in ``forward``). The model is traced once with torch.fx (:func:`emergeinit.trace.trace_fx`)
and run with cheap reductions inserted after those values; when fx cannot trace it (Hugging Face
models, data-dependent control flow), a forward recorded on the first batch gives the same graph
(:func:`emergeinit.trace.record_tape`) and each batch is replayed with the same reads. See
docs/emergence.md.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from emergeinit.emergence import LayerGraph, Number, exact_pivot, layered_emergence, lemma_pivot
from emergeinit.layers import find_weight_layers, layer_by_module, left_out_parameters, registered_weight_layers
from emergeinit.trace import (
    NonFiniteError, TapeLayers, input_signature, is_batch, iter_batches, layers_traced_or_recorded, nonfinite_error,
    preserve_state, refuse_meta, run_model, split_batch, structure_key, warn_if_two_inputs,
)

__all__ = [
    "measure_emergence", "layer_graph", "EmergenceReport", "LayerActivity", "Pivot",
    "DEFAULT_THRESHOLD", "MODES", "MEASURE_CACHE_SIZE", "clear_measure_cache",
]


DEFAULT_THRESHOLD = 0.05
"""A node is active when its value exceeds this. Positive on purpose: at 0 with zero biases, a
positive rescaling of the layers (what the emergence init does) cannot change any activity."""

MODES = ("count", "mean")
"""How a batch becomes a_i: ``count`` averages over samples the number of nodes above the
threshold (a float); ``mean`` counts the nodes whose mean over the samples is above it (an int)."""


@dataclass(frozen=True)
class LayerActivity:
    """One layer's nodes: its name, n_i and a_i."""

    name: str
    nodes: int
    active: Number

    @property
    def inactive(self) -> Number:
        return self.nodes - self.active


@dataclass(frozen=True)
class Pivot:
    """0-based indices into ``EmergenceReport.layers`` (-1: no layer qualifies).

    ``lemma``: the largest i of eq 4 (the paper's Delta, path products ignored);
    ``exact``: the largest i where one active node fewer raises the exact eq-2 E.
    """

    lemma: int
    exact: int


@dataclass(frozen=True)
class EmergenceReport:
    """Per-layer activity and the emergence E of a model on some inputs."""

    layers: Tuple[LayerActivity, ...]
    value: Number  # exact int in "mean" mode; float in "count" mode (inf past float range)
    log10: float  # log10 of E, finite at any depth (-inf when E = 0)
    pivot: Pivot
    threshold: float
    mode: str
    samples: int
    graph: LayerGraph = field(repr=False)
    on_graph: bool = False  # E computed on the layer graph (eq 1, skip connections) rather than by eq 2
    skipped: Tuple[str, ...] = ()  # weight layers not probed (attention inside MultiheadAttention)

    @property
    def residual(self) -> bool:
        """The old name of :attr:`on_graph` (E was computed on the layer graph)."""
        return self.on_graph

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (``value`` is None when it exceeds the float range; see ``log10``)."""
        finite = isinstance(self.value, int) or math.isfinite(self.value)
        names = [l.name for l in self.layers]
        return {
            "layers": [{"name": l.name, "nodes": l.nodes, "active": l.active} for l in self.layers],
            "value": self.value if finite else None,
            "log10": self.log10 if math.isfinite(self.log10) else None,
            "pivot": {
                "lemma": self.pivot.lemma,
                "lemma_layer": names[self.pivot.lemma] if self.pivot.lemma >= 0 else None,
                "exact": self.pivot.exact,
                "exact_layer": names[self.pivot.exact] if self.pivot.exact >= 0 else None,
            },
            "threshold": self.threshold,
            "mode": self.mode,
            "samples": self.samples,
            "on_graph": self.on_graph,
            "residual": self.on_graph,  # the old key, kept for readers of earlier records
            "edges": [[e.src, e.dst, e.kind] for e in self.graph.edges],
            "skipped": list(self.skipped),
        }

    def __str__(self) -> str:
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'#':>3}  {'layer':<{width}}  {'nodes':>7}  {'active':>9}  {'inactive':>9}  pivot"]
        for i, l in enumerate(self.layers):
            marks = [m for m, p in (("lemma", self.pivot.lemma), ("exact", self.pivot.exact)) if p == i]
            lines.append(
                f"{i:>3}  {l.name:<{width}}  {l.nodes:>7}  {_fmt(l.active):>9}  "
                f"{_fmt(l.inactive):>9}  {'+'.join(marks)}"
            )
        how = "layer graph (skip connections)" if self.on_graph else "eq 2 (chain)"
        lines.append(
            f"E = {_fmt_big(self.value, self.log10)}  (log10 E = {self.log10:.3f}) via {how}; "
            f"threshold {self.threshold:g}, mode {self.mode}, {self.samples} samples"
        )
        if self.skipped:
            lines.append(f"not probed: {', '.join(self.skipped)}")
        return "\n".join(lines)


def _fmt(x: Number) -> str:
    return str(x) if isinstance(x, int) else f"{x:.2f}"


def _fmt_big(value: Number, log10: float) -> str:
    if log10 == -math.inf:
        return "0"
    if isinstance(value, int) and value < 10**15:
        return str(value)
    exp = math.floor(log10)
    return f"{10 ** (log10 - exp):.4f}e+{exp}"


# ------------------------------------------------------------------------------------- counting

def _node_sums(x: Any, kind: str, width: int, name: str) -> Tuple[torch.Tensor, int, bool]:
    """A (rows, width) tensor of a layer's node values, the count of elements each one sums, and
    whether the tensor is a new one (not the live value, which a later in-place op may change):
    conv channels summed over space per sample (divided later); Linear units with every leading
    dim (batch, tokens) as a row, as float32."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"layer {name!r}: expected a tensor, got {type(x).__name__}")
    x = x.detach()
    if kind == "conv":
        if x.dim() < 2 or x.shape[1] != width:
            raise ValueError(f"layer {name!r}: expected {width} channels on dim 1, got shape {tuple(x.shape)}")
        if x.dim() == 2:
            return (x.float(), 1, True) if x.dtype != torch.float32 else (x, 1, False)
        dtype = torch.float32 if x.dtype != torch.float64 else torch.float64
        return x.sum(dim=tuple(range(2, x.dim())), dtype=dtype), math.prod(x.shape[2:]), True
    if x.dim() < 1 or x.shape[-1] != width:
        raise ValueError(f"layer {name!r}: expected {width} units on the last dim, got shape {tuple(x.shape)}")
    v = x.reshape(-1, width)
    return (v.float(), 1, True) if v.dtype != torch.float32 else (v, 1, False)


BATCHED_ELEMENTS = 1 << 16
"""A layer's node values up to this many elements wait for the batch's flush (copied if live), to be
tallied with the other small ones in a few large ops; larger ones (Linear layers over many tokens)
are tallied at once, where they are read, without a copy."""


@dataclass
class _Accumulator:
    """Running totals, on the model's device, of the layers tallied together (a batch's small
    layers, or one large layer)."""

    layers: Tuple[int, ...]
    widths: List[int]
    above: torch.Tensor  # int64 per node: rows above the threshold
    total: Optional[torch.Tensor]  # float64 per node: sum over rows of the node values ("mean" mode)
    ok: torch.Tensor  # bool per node: every value so far finite
    finite: torch.Tensor  # int64 per node: tallies after which every value so far was finite
    tallies: List[int] = field(default_factory=list)  # the batch of each tally, in order

    @classmethod
    def zeros(cls, layers: Tuple[int, ...], widths: List[int], device: torch.device, sums: bool) -> "_Accumulator":
        n = sum(widths)
        return cls(layers, widths, torch.zeros(n, dtype=torch.int64, device=device),
                   torch.zeros(n, dtype=torch.float64, device=device) if sums else None,
                   torch.ones(n, dtype=torch.bool, device=device), torch.zeros(n, dtype=torch.int64, device=device))

    def tally(self, values: torch.Tensor, cut: torch.Tensor, size: torch.Tensor, batch: int) -> None:
        """Add one batch's (rows, nodes) values: counts above ``cut`` (per node), value sums divided
        by ``size`` ("mean" mode), and whether all were finite (max and min per node: exact, no
        overflow)."""
        self.above += (values > cut).sum(0, dtype=torch.int32)  # int32: exact per batch, and fast on CPUs
        if self.total is not None:
            self.total += values.sum(0, dtype=torch.float64) / size
        if values.shape[0]:
            self.ok &= torch.isfinite(values.amax(0)) & torch.isfinite(values.amin(0))
        self.finite += self.ok
        self.tallies.append(batch)


@dataclass
class _Tallies:
    """What the counts came to, on the host: per layer node, its rows above the threshold, the sum
    of its values over rows and the rows seen; ``bad``: (batch, layer) where values first went
    non-finite, or None."""

    above: List[torch.Tensor]
    total: List[Optional[torch.Tensor]]  # kept in "mean" mode only
    rows: List[int]
    bad: Optional[Tuple[int, int]]


class _Counts:
    """Tallies for all layer nodes, on the model's device. Small values taken during a forward wait
    in ``pending``; ``flush`` then thresholds and sums them for all those layers at once (few large
    ops rather than many small ones: on a busy CPU each op pays a thread-pool round trip). Large
    ones are tallied where they are read. ``read`` brings every total to the host in one transfer:
    one synchronization per call, not one per layer or per batch."""

    def __init__(self, layers: Sequence[Tuple[str, str, int]], threshold: float, sums: bool,
                 cuts: Optional[Dict[Tuple[Any, ...], Tuple[torch.Tensor, torch.Tensor]]] = None):
        self.names = [n for n, _, _ in layers]
        self.kinds = [k for _, k, _ in layers]
        self.widths = [w for _, _, w in layers]
        self.threshold = threshold
        self.sums = sums  # keep value sums per node ("mean" mode)
        self.rows = [0] * len(layers)
        self.pending: Dict[int, Tuple[torch.Tensor, int]] = {}
        self.accumulators: Dict[Tuple[int, ...], _Accumulator] = {}
        self.cuts = {} if cuts is None else cuts  # kept by the plan: made on the device once, not per call
        self.batch = 0

    def record(self, index: int, x: Any) -> None:
        values, size, fresh = _node_sums(x, self.kinds[index], self.widths[index], self.names[index])
        if values.numel() > BATCHED_ELEMENTS:
            self._tally((index,), values, (size,))
        else:
            self.pending[index] = (values if fresh else values.clone(), size)

    def _tally(self, layers: Tuple[int, ...], values: torch.Tensor, sizes: Tuple[int, ...]) -> None:
        acc = self.accumulators.get(layers)
        if acc is None:
            acc = self.accumulators[layers] = _Accumulator.zeros(
                layers, [self.widths[i] for i in layers], values.device, self.sums)
        acc.tally(values, *self._cut(layers, sizes, values.dtype, values.device), self.batch)
        for i in layers:
            self.rows[i] += values.shape[0]

    def _cut(self, layers: Tuple[int, ...], sizes: Tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the threshold per node times the elements each value sums, those element counts)."""
        key = (layers, sizes, dtype, device, self.threshold)
        if key not in self.cuts:
            if len(self.cuts) >= 256:  # a sweep over thresholds or image sizes: keep it bounded
                self.cuts.clear()
            per_node = torch.tensor(sizes, dtype=torch.float64).repeat_interleave(
                torch.tensor([self.widths[i] for i in layers]))
            self.cuts[key] = ((self.threshold * per_node).to(dtype).to(device), per_node.to(device))
        return self.cuts[key]

    def flush(self) -> None:
        """Tally the pending values of one batch (no host synchronization)."""
        groups: Dict[Tuple[int, torch.dtype, torch.device], List[int]] = {}
        for i, (v, _) in self.pending.items():
            groups.setdefault((v.shape[0], v.dtype, v.device), []).append(i)
        for idx in groups.values():
            values = torch.cat([self.pending[i][0] for i in idx], dim=1) if len(idx) > 1 else self.pending[idx[0]][0]
            self._tally(tuple(idx), values, tuple(self.pending[i][1] for i in idx))
        self.pending.clear()
        self.batch += 1

    def read(self) -> _Tallies:
        """Every total on the host, in one transfer per device."""
        above: List[Optional[torch.Tensor]] = [None] * len(self.names)
        total: List[Optional[torch.Tensor]] = [None] * len(self.names)
        bad: Optional[Tuple[int, int]] = None
        by_device: Dict[torch.device, List[_Accumulator]] = {}
        for acc in self.accumulators.values():
            by_device.setdefault(acc.above.device, []).append(acc)
        for accs in by_device.values():
            parts = [(a.above.double(), a.finite.double()) + ((a.total,) if a.total is not None else ()) for a in accs]
            flat = torch.cat([p for ps in parts for p in ps]).cpu()
            start = 0
            for acc, ps in zip(accs, parts):
                n = acc.above.numel()
                pieces = flat[start:start + len(ps) * n].split(n)
                start += len(ps) * n
                offset = 0
                for i, w in zip(acc.layers, acc.widths):
                    a, f = pieces[0][offset:offset + w].long(), pieces[1][offset:offset + w]
                    above[i] = a if above[i] is None else above[i] + a  # type: ignore[operator]
                    if acc.total is not None:
                        t = pieces[2][offset:offset + w]
                        total[i] = t if total[i] is None else total[i] + t  # type: ignore[operator]
                    offset += w
                    went_bad = int(f.min()) if w else len(acc.tallies)
                    if went_bad < len(acc.tallies):
                        bad = min(bad or (math.inf, math.inf), (acc.tallies[went_bad], i))  # type: ignore[assignment]
        for i, name in enumerate(self.names):
            if above[i] is None or self.rows[i] == 0:
                raise ValueError(f"layer {name!r} never ran on the inputs")
        return _Tallies(above, total, self.rows, bad)  # type: ignore[arg-type]


def _on_device(inputs: Any, device: Optional[torch.device]) -> Any:
    """A batch's inputs (a tensor or a dict of keywords) moved to the model's device."""
    move = (lambda t: t.to(device, non_blocking=True)) if device is not None else (lambda t: t)
    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _device(model: nn.Module) -> Optional[torch.device]:
    return next((p.device for p in model.parameters()), None)


# ------------------------------------------------------------------------- the measurement plan

class _Sink:
    """Where the taps of a plan's runner send layer values: the counts of the call in progress."""

    def __init__(self) -> None:
        self.counts: Optional[_Counts] = None

    def record(self, index: int, value: Any) -> None:
        assert self.counts is not None, "a tapped runner ran outside measure_emergence"
        self.counts.record(index, value)


@dataclass
class _Plan:
    """How one model structure is measured: the runner (the fx-traced module with a tap on each
    layer node, or the recorded forward replayed with the same reads), its layer graph, how each
    node is read, and the weight tensors not probed."""

    runner: Callable[..., Any]
    sink: _Sink
    graph: LayerGraph
    kinds: Tuple[str, ...]
    skipped: Tuple[str, ...]
    recorded: bool
    pins: List[Any] = field(default_factory=list, repr=False)  # what the cache key holds by identity
    cuts: Dict[Tuple[Any, ...], Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def layers(self) -> List[Tuple[str, str, int]]:
        return [(n.name, k, n.width) for n, k in zip(self.graph.nodes, self.kinds)]


def _make_plan(model: nn.Module, x: Any, include_input: bool, include_output: bool) -> _Plan:
    """Trace (or record) ``model`` and put the taps in: everything a measurement does once."""
    all_layers = find_weight_layers(model, order="registration")
    layers = layer_by_module(model, all_layers)
    traced = layers_traced_or_recorded(model, layers, x, include_input=include_input, include_output=include_output)
    sink = _Sink()
    skipped = tuple(l.key for l in all_layers if l.key not in traced.probed) + left_out_parameters(model).keys
    return _Plan(traced.tapped(sink.record), sink, traced.graph, tuple(r.kind for r in traced.reads), skipped,
                 isinstance(traced, TapeLayers))


MEASURE_CACHE_SIZE = 16
"""How many measurement plans :func:`measure_emergence` keeps (least recently used dropped first)."""

_RECORDED = "recorded"  # a structure fx cannot trace: its plans are kept per input signature


class _PlanCache:
    """measure_emergence's one piece of state: the plans of the last :data:`MEASURE_CACHE_SIZE`
    (model, structure, options) seen, so a model is traced once, not at every call. A model is
    held by a weak reference (its entries go when it does); a plan holds the model's submodules and
    what the key names by identity (:func:`emergeinit.trace.structure_key`), never the model itself.
    A model whose structure changed (a module replaced, a flag a forward reads, a parameter's shape,
    train/eval, the registered Linear-like types) gets a new key, so a stale trace is never reused.
    No method iterates over the entries, so a model dying (its callback removing its entries) in
    the middle of one is harmless. ``clear()`` empties it (:func:`clear_measure_cache`)."""

    def __init__(self, size: int):
        self.size = size
        self.entries: "OrderedDict[Tuple[int, Any], Any]" = OrderedDict()
        self.refs: Dict[int, "weakref.ReferenceType[nn.Module]"] = {}  # one per model with entries
        self.keys: Dict[int, set] = {}  # each model's keys in ``entries``

    def get(self, model: nn.Module, key: Any) -> Any:
        ref = self.refs.get(id(model))
        if ref is None or ref() is not model:
            return None
        value = self.entries.get((id(model), key))
        if value is not None:
            self.entries.move_to_end((id(model), key))
        return value

    def put(self, model: nn.Module, key: Any, value: Any) -> None:
        ident = id(model)
        ref = self.refs.get(ident)
        if ref is None or ref() is not model:
            self._drop(ident)  # what a dead model with the same id left, if anything
            self.refs[ident] = weakref.ref(model, lambda _, ident=ident: self._drop(ident))
        self.entries[(ident, key)] = value
        self.entries.move_to_end((ident, key))
        self.keys.setdefault(ident, set()).add(key)
        while len(self.entries) > self.size:
            (old, old_key), _ = self.entries.popitem(last=False)
            kept = self.keys.get(old, set())
            kept.discard(old_key)
            if not kept:
                self.keys.pop(old, None)
                self.refs.pop(old, None)

    def _drop(self, ident: int) -> None:
        for key in self.keys.pop(ident, ()):
            self.entries.pop((ident, key), None)
        self.refs.pop(ident, None)

    def clear(self) -> None:
        self.entries.clear()
        self.refs.clear()
        self.keys.clear()


_PLANS = _PlanCache(MEASURE_CACHE_SIZE)


def clear_measure_cache() -> None:
    """Forget every traced model :func:`measure_emergence` keeps (for a forward that branches on
    something its key cannot see: a global variable, a shared config object changed in place)."""
    _PLANS.clear()


def _plan_for(model: nn.Module, x: Any, include_input: bool, include_output: bool) -> _Plan:
    """The cached plan for ``model``'s structure (and, for a recorded forward, ``x``'s signature),
    made on a miss; locked for this call (a plan in use elsewhere: a fresh one, not cached)."""
    structure, pins = structure_key(model)
    key = (structure, registered_weight_layers(), include_input, include_output)
    found = _PLANS.get(model, key)
    if found == _RECORDED:
        found = _PLANS.get(model, key + (input_signature(x),))
    if isinstance(found, _Plan) and found.lock.acquire(blocking=False):
        return found
    plan = _make_plan(model, x, include_input, include_output)
    plan.pins = pins
    plan.lock.acquire()
    if found is None:
        if plan.recorded:
            _PLANS.put(model, key, _RECORDED)
            _PLANS.put(model, key + (input_signature(x),), plan)
        else:
            _PLANS.put(model, key, plan)
    return plan


def _kept_batch(inputs: Any, index: int, first: Any, device: Optional[torch.device]) -> Optional[Any]:
    """The inputs of batch ``index`` when they can be had again (the first, or an item of a list)."""
    if index == 0:
        return first
    if isinstance(inputs, (list, tuple)) and not is_batch(inputs) and index < len(inputs):
        return _on_device(split_batch(inputs[index])[0], device)
    return None


# -------------------------------------------------------------------------------- public API

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
    reads from (the logits). When fx cannot trace the model, the graph is read from a forward on
    ``example_input`` (inferred when None) recorded with :func:`emergeinit.trace.record_tape`,
    with one warning per model type.
    """
    with preserve_state(model), torch.no_grad():  # reading a parametrized weight may move its buffers
        model.eval()
        layers = layer_by_module(model, find_weight_layers(model, order="registration"))
        return layers_traced_or_recorded(model, layers, example_input, include_input=include_input,
                                         include_output=include_output).graph


def measure_emergence(
    model: nn.Module,
    inputs: Union[torch.Tensor, Iterable[Any]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    mode: str = "count",
    include_input: bool = False,
    include_output: bool = True,
    on_graph: Optional[bool] = None,
    training: bool = False,
    residual: Optional[bool] = None,
) -> EmergenceReport:
    """The emergence E of ``model`` on ``inputs``: one batch, or an iterable of batches whose counts
    accumulate. A batch is a tensor, a dict of keywords, or a pair ``(inputs, targets)`` (targets
    ignored): ``(x, y)`` is one batch, never two (:func:`emergeinit.trace.is_batch`, the convention of
    the whole library). NaN/inf in a layer's values is a :class:`~emergeinit.trace.NonFiniteError`
    naming the first module whose output went bad; a model on the meta device is a ValueError.

    Nodes: the units of every Linear output and the channels of every Conv output (a channel's
    value for a sample is its spatial mean), read after the elementwise/normalization ops that
    follow; active when the value exceeds ``threshold``. ``mode="count"``: a_i is the average
    number of active nodes per sample; ``mode="mean"``: the number of nodes whose mean over all
    samples exceeds the threshold. Layers: every probed weight layer, logits included
    (``include_output``); the first layer's input only with ``include_input``. When the model has
    skip connections E is computed on its layer graph (:func:`layer_graph`), else by eq 2;
    ``on_graph=False``/``True`` forces one (``residual=`` is its old name, still accepted). Runs
    under ``torch.no_grad`` in eval mode (``training=True`` for train mode); modes, buffers (BN
    statistics) and requires_grad are left as they were, and no hook stays behind, even when
    ``forward`` raises.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    if residual is not None:
        if on_graph is not None and on_graph != residual:
            raise ValueError("residual= is the old name of on_graph=: pass one of them")
        on_graph = residual
    refuse_meta(model, "measure_emergence")
    warn_if_two_inputs(inputs, "measure_emergence")
    batches = iter_batches(inputs)
    first = next(batches, None)
    if first is None:
        raise ValueError("inputs yielded no batches")
    device = _device(model)
    with preserve_state(model), torch.no_grad():
        model.train(training)  # before tracing: a forward may branch on self.training
        x0 = _on_device(first[0], device)
        plan = _plan_for(model, x0, include_input, include_output)
        counts = _Counts(plan.layers, threshold, sums=mode == "mean", cuts=plan.cuts)
        plan.sink.counts = counts
        try:
            for index, (batch, _) in enumerate(itertools.chain([first], batches)):
                run_model(plan.runner, x0 if index == 0 else _on_device(batch, device))
                counts.flush()
            tallies = counts.read()  # the call's one host synchronization
        finally:
            plan.sink.counts = None
            plan.lock.release()
        if tallies.bad is not None:
            index, layer = tallies.bad
            what = f"measure_emergence: the values of layer {counts.names[layer]!r} are not finite"
            if counts.batch > 1:
                what += f" in batch {index}"
            x = _kept_batch(inputs, index, x0, device)
            if x is None:
                raise NonFiniteError(f"{what} (that batch is gone: pass the batches as a list, or measure it "
                                     "alone, to have the first non-finite module named)")
            raise nonfinite_error(what, model, x)
    return _report(counts.names, tallies, plan.graph, plan.skipped, threshold, mode, on_graph)


def _report(names: List[str], tallies: _Tallies, graph: LayerGraph, skipped: Tuple[str, ...], threshold: float,
            mode: str, on_graph: Optional[bool]) -> EmergenceReport:
    if not names:
        raise ValueError("no layer to measure: the model has no Linear or Conv layer its forward uses")
    layers: List[LayerActivity] = []
    counts: List[torch.Tensor] = []
    for name, node, above, total, rows in zip(names, graph.nodes, tallies.above, tallies.total, tallies.rows):
        if mode == "count":
            counts.append(above)
            layers.append(LayerActivity(name, node.width, int(above.sum()) / rows))
        else:
            mask = (total / rows > threshold).long()
            counts.append(mask)
            layers.append(LayerActivity(name, node.width, int(mask.sum())))
    widths = [l.nodes for l in layers]
    actives = [l.active for l in layers]
    use_graph = (not graph.is_chain()) if on_graph is None else on_graph
    if use_graph:
        value, log_e = graph.emergence_of_counts(counts, tallies.rows if mode == "count" else [1] * len(counts),
                                                 whole=mode == "mean")
    else:
        value = layered_emergence(widths, actives)
        log_e = layered_emergence(widths, actives, log=True)
    return EmergenceReport(
        layers=tuple(layers),
        value=value,
        log10=log_e / math.log(10) if log_e != -math.inf else -math.inf,
        pivot=Pivot(lemma_pivot(widths, actives), exact_pivot(widths, actives)),
        threshold=threshold,
        mode=mode,
        samples=tallies.rows[0],
        graph=graph,
        on_graph=use_graph,
        skipped=skipped,
    )
