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
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from emergeinit.emergence import (
    LayerGraph, Number, exact_pivot, layered_emergence, lemma_pivot,
)
from emergeinit.layers import find_weight_layers, layer_by_module, left_out_parameters
from emergeinit.trace import (
    Batch, FxLayers, TapeLayers, iter_batches, layers_traced_or_recorded, nonfinite_error, preserve_state,
    refuse_meta, run_model,
)

__all__ = [
    "measure_emergence", "layer_graph", "EmergenceReport", "LayerActivity", "Pivot",
    "DEFAULT_THRESHOLD", "MODES",
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

def _node_sums(x: Any, kind: str, width: int, name: str) -> Tuple[torch.Tensor, int]:
    """A (rows, width) tensor of a layer's node values and the count each one sums: conv
    channels summed over space per sample (divided later, so one op per layer during the
    forward); Linear units copied with every leading dim (batch, tokens) as a row."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"layer {name!r}: expected a tensor, got {type(x).__name__}")
    x = x.detach()
    if kind == "conv":
        if x.dim() < 2 or x.shape[1] != width:
            raise ValueError(f"layer {name!r}: expected {width} channels on dim 1, got shape {tuple(x.shape)}")
        if x.dim() == 2:
            return x.float() if x.dtype != torch.float32 else x.clone(), 1
        dtype = torch.float32 if x.dtype != torch.float64 else torch.float64
        return x.sum(dim=tuple(range(2, x.dim())), dtype=dtype), int(x[0, 0].numel())
    if x.dim() < 1 or x.shape[-1] != width:
        raise ValueError(f"layer {name!r}: expected {width} units on the last dim, got shape {tuple(x.shape)}")
    v = x.reshape(-1, width)
    return (v.float() if v.dtype != torch.float32 else v.clone()), 1


@dataclass
class _Tally:
    """One layer node's running totals: rows above the threshold and value sums, per node."""

    name: str
    kind: str
    width: int
    above: Optional[torch.Tensor] = None
    total: Optional[torch.Tensor] = None  # sum over rows of the node values (float64)
    rows: int = 0


class _Counts:
    """Tallies for all layers. Values taken during a forward wait in ``pending``; ``flush`` then
    thresholds and sums them for all layers at once (few large ops rather than many small
    ones: on a busy CPU each op pays a thread-pool round trip)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.tallies: List[_Tally] = []
        self.pending: Dict[int, Tuple[torch.Tensor, int]] = {}

    def add_layer(self, name: str, kind: str, width: int) -> int:
        self.tallies.append(_Tally(name, kind, width))
        return len(self.tallies) - 1

    def record(self, index: int, x: Any) -> None:
        t = self.tallies[index]
        self.pending[index] = _node_sums(x, t.kind, t.width, t.name)

    def flush(self) -> Optional[str]:
        """Tally the pending values; returns the name of the first layer holding NaN/inf, or None."""
        bad: List[int] = []
        groups: Dict[Tuple[int, torch.dtype, torch.device], List[int]] = {}
        for i, (v, _) in self.pending.items():
            groups.setdefault((v.shape[0], v.dtype, v.device), []).append(i)
        for (rows, dtype, device), idx in groups.items():
            values = torch.cat([self.pending[i][0] for i in idx], dim=1)
            sizes = [self.pending[i][1] for i in idx]
            widths = [self.tallies[i].width for i in idx]
            cut = torch.tensor([self.threshold * s for s, w in zip(sizes, widths) for _ in range(w)],
                               dtype=dtype, device=device)
            above = (values > cut).sum(0).cpu()
            total = values.sum(0, dtype=torch.float64).cpu()
            if not bool(torch.isfinite(total).all()):  # a NaN/inf value makes its node's sum one
                bad.extend(i for i, t in zip(idx, total.split(widths)) if not bool(torch.isfinite(t).all()))
            for i, size, a, t in zip(idx, sizes, above.split(widths), total.split(widths)):
                tally = self.tallies[i]
                t = t / size
                if tally.above is None:
                    tally.above, tally.total = a, t
                else:
                    tally.above = tally.above + a
                    tally.total = tally.total + t  # type: ignore[operator]
                tally.rows += rows
        self.pending.clear()
        return self.tallies[min(bad)].name if bad else None


def _on_device(inputs: Any, device: Optional[torch.device]) -> Any:
    """A batch's inputs (a tensor or a dict of keywords) moved to the model's device."""
    move = (lambda t: t.to(device, non_blocking=True)) if device is not None else (lambda t: t)
    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _run(runner: Any, model: nn.Module, batches: Iterable[Batch], counts: _Counts) -> None:
    """Run ``runner`` (the model's traced copy, or its recorded forward) on every batch and tally the
    values it reports; non-finite values are a :class:`NonFiniteError` naming where they began."""
    device = _device(model)
    seen = 0
    for batch, _ in batches:
        x = _on_device(batch, device)
        run_model(runner, x)
        bad = counts.flush()
        if bad is not None:
            raise nonfinite_error(f"measure_emergence: the values of layer {bad!r} are not finite", model, x)
        seen += 1
    if seen == 0:
        raise ValueError("inputs yielded no batches")


# ------------------------------------------------------------------------- two ways to read nodes

def _count_traced(model: nn.Module, traced: Union[FxLayers, TapeLayers], counts: _Counts,
                  batches: Iterable[Batch]) -> Tuple[LayerGraph, FrozenSet[str]]:
    """Run the fx-traced module (or replay the recorded forward) with a tap on each layer node's value."""
    for node, read in zip(traced.graph.nodes, traced.reads):
        counts.add_layer(node.name, read.kind, node.width)
    _run(traced.tapped(counts.record), model, batches, counts)
    return traced.graph, traced.probed


def _device(model: nn.Module) -> Optional[torch.device]:
    return next((p.device for p in model.parameters()), None)


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
    counts = _Counts(threshold)
    batches = iter_batches(inputs)
    first = next(batches, None)
    if first is None:
        raise ValueError("inputs yielded no batches")
    with preserve_state(model), torch.no_grad():
        model.train(training)  # before tracing: a forward may branch on self.training
        all_layers = find_weight_layers(model, order="registration")
        layers = layer_by_module(model, all_layers)
        traced = layers_traced_or_recorded(model, layers, _on_device(first[0], _device(model)),
                                           include_input=include_input, include_output=include_output)
        graph, probed = _count_traced(model, traced, counts, itertools.chain([first], batches))
    skipped = tuple(l.key for l in all_layers if l.key not in probed) + left_out_parameters(model).keys
    return _report(counts.tallies, graph, skipped, threshold, mode, on_graph)


def _report(tallies: List[_Tally], graph: LayerGraph, skipped: Tuple[str, ...], threshold: float,
            mode: str, on_graph: Optional[bool]) -> EmergenceReport:
    if not tallies:
        raise ValueError("no layer to measure: the model has no Linear or Conv layer its forward uses")
    layers: List[LayerActivity] = []
    weights: List[List[Any]] = []
    for t in tallies:
        if t.rows == 0 or t.above is None or t.total is None:
            raise ValueError(f"layer {t.name!r} never ran on the inputs")
        if mode == "count":
            above = t.above.tolist()
            weights.append([Fraction(k, t.rows) for k in above])
            layers.append(LayerActivity(t.name, t.width, sum(above) / t.rows))
        else:
            mask = (t.total / t.rows > threshold).tolist()
            weights.append(mask)
            layers.append(LayerActivity(t.name, t.width, int(sum(mask))))
    widths = [l.nodes for l in layers]
    actives = [l.active for l in layers]
    use_graph = (not graph.is_chain()) if on_graph is None else on_graph
    if use_graph:
        value, log_e = graph.emergence_with_log(weights)
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
        samples=tallies[0].rows,
        graph=graph,
        on_graph=use_graph,
        skipped=skipped,
    )
