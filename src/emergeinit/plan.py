"""What an initialization will do, decided before any weight changes: per-tensor factors in an
:class:`InitPlan`. Apply a plan with :func:`emergeinit.init.apply_plan_`.

- :func:`plan_emergence`: eq 8. The L weight layers in execution order (traced on meta stand-ins,
  so planning does no arithmetic), their exponents e_k from a schedule, and factors α**e_k, over
  the whole net or inside each block.
- :func:`plan_transformer`: T-Fixup's factors (Huang, Perez, Ba, Volkovs 2020, Algorithm 1) and the
  paper's encoder-quieted / decoder-excited scheme, per tensor (a packed q/k/v third counts as one).

T-Fixup, for N encoder and M decoder layers, relative to a Xavier draw (embeddings: N(0, d^-1/2)):
the value and output projections of every attention block and both FFN weights × 0.67·N^(-1/4)
in the encoder and × (9·M)^(-1/4) in the decoder; input embeddings × (9·M)^(-1/4) (encoder-only:
(9·N)^(-1/4)); query and key projections unscaled. The public code (layer6ai-labs/T-Fixup) scales
the encoder embedding by (9·N)^(-1/4): the same number when N = M, as in the paper's 6+6 model.
The encoder/decoder scheme then divides every weight matrix inside the encoder layers by β_enc and
multiplies those inside the decoder layers by β_dec (paper: β_dec = 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from emergeinit.layers import (
    ModuleSpec, WeightLayer, check_writable, draw_target, find_blocks, find_weight_layers, is_frozen,
    layer_by_module,
    match_modules, packed_qkv_rows, qualified_name, storage_of, warn_frozen, weight_storage,
)
from emergeinit.options import FLAG, Rule, check_values
from emergeinit.schedules import Schedule, exponents, positive_number, resolve_schedule
from emergeinit.sharding import is_sharded
from emergeinit.trace import (
    call_order, fork_rng, layers_traced_or_recorded, meta_stand_ins, preserve_state, to_meta,
)

__all__ = [
    "UnrepresentableError",
    "PlannedLayer",
    "InitPlan",
    "plan_emergence",
    "check_plan_options",
    "SCOPES",
    "GRAPH_DEPTHS",
    "graph_depths",
    "tfixup_factors",
    "find_transformer_layers",
    "plan_transformer",
]

SCOPES = ("global", "blockwise", "graph")
GRAPH_DEPTHS = ("shortest", "longest")
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


class UnrepresentableError(ValueError):
    """An init whose factor or scaled weights do not fit a tensor's dtype (overflow, or underflow
    to subnormal or zero): refused before any weight changes. The same config always refuses."""


@dataclass(frozen=True)
class PlannedLayer:
    """One scaled (or re-initialized) tensor: which one, its place in the schedule, its factor."""

    name: str  # owning module ("features.0")
    key: str  # parameter name, for model.get_parameter ("features.0.weight")
    kind: str  # "linear" | "conv" | "attention" | "embedding" | "norm"
    index: Optional[int]  # k in its schedule (None: not scheduled, factor 1)
    exponent: Optional[float]  # e_k (None where the factor does not come from a schedule)
    factor: float  # multiplier, computed in float64
    block: Optional[str] = None  # block the schedule ran in (scope="blockwise")
    bias_key: Optional[str] = None  # the layer's bias, if any
    shape: Tuple[int, ...] = ()
    rows: Optional[Tuple[int, int]] = None  # only rows [start, stop) (a slice of a packed tensor)
    transposed: bool = False  # weight stored (in, out), as HF Conv1D: fans come from the other axes


@dataclass
class InitPlan:
    """Per-tensor factors of an initialization, in execution order; apply with :func:`apply_plan_`."""

    layers: List[PlannedLayer]
    alpha: Optional[float] = None
    schedule: Optional[str] = None
    scope: Optional[str] = None
    scale_bias: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[PlannedLayer]:
        return iter(self.layers)

    def __getitem__(self, key: Union[int, str]) -> PlannedLayer:
        """A layer by position, or by parameter key / module name."""
        if isinstance(key, int):
            return self.layers[key]
        for layer in self.layers:
            if key in (layer.key, layer.name):
                return layer
        raise KeyError(key)

    @property
    def factors(self) -> Dict[str, float]:
        """Parameter key -> factor (rows-restricted entries appear as ``key[start:stop]``)."""
        return {_label(l): l.factor for l in self.layers}

    def with_alpha(self, alpha: float) -> "InitPlan":
        """The same plan at another α: every scheduled factor becomes α**e_k (the layers, their
        order and exponents do not depend on α, so no new trace is needed). Entries without an
        exponent keep factor 1."""
        alpha = positive_number(alpha, "alpha")
        layers = [replace(l, factor=_factor(alpha, l.exponent, l.key)) if l.exponent is not None else l
                  for l in self.layers]
        return InitPlan(layers, alpha=alpha, schedule=self.schedule, scope=self.scope, scale_bias=self.scale_bias,
                        meta=dict(self.meta))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (``json.dumps(plan.to_dict())``)."""
        return {
            "alpha": self.alpha,
            "schedule": self.schedule,
            "scope": self.scope,
            "scale_bias": self.scale_bias,
            "meta": _jsonable(self.meta),
            "layers": [
                {**asdict(l), "shape": list(l.shape), "rows": list(l.rows) if l.rows else None}
                for l in self.layers
            ],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        head = ["#", "layer", "kind", "block", "k", "e_k", "factor"]
        rows = []
        for i, l in enumerate(self.layers):
            rows.append([
                str(i), _label(l), l.kind, l.block or "-",
                "-" if l.index is None else str(l.index),
                "-" if l.exponent is None else f"{l.exponent:+.4g}",
                f"{l.factor:.6g}",
            ])
        widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        title = ", ".join(
            f"{k}={v}" for k, v in (("alpha", self.alpha), ("schedule", self.schedule), ("scope", self.scope))
            if v is not None
        )
        lines = [f"InitPlan({title}): {len(self.layers)} tensors", fmt(head), fmt(["-" * w for w in widths])]
        frozen = self.meta.get("frozen") or []
        left = [f"left out, frozen (requires_grad=False): {', '.join(frozen)}"] if frozen else []
        return "\n".join(lines + [fmt(r) for r in rows] + left)


def _factor(alpha: float, exponent: float, key: str) -> float:
    """α**e in float64, or a ValueError when it is not representable there."""
    factor = alpha ** exponent
    if not math.isfinite(factor) or factor == 0.0:
        raise UnrepresentableError(f"factor alpha**e = {alpha}**{exponent} of {key} is not representable in float64")
    return factor


def _label(l: PlannedLayer) -> str:
    return f"{l.key}[{l.rows[0]}:{l.rows[1]}]" if l.rows else l.key


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return repr(x)


# ------------------------------------------------------------------------------------- eq 8

@dataclass(frozen=True)
class Scheduled:
    """A tensor the schedule of eq 8 runs over (or, for a norm, one that follows such a tensor)."""

    name: str  # owning module
    key: str  # parameter key
    kind: str  # "linear" | "conv" | "attention" | "embedding" | "norm"
    shape: Tuple[int, ...]
    bias_key: Optional[str] = None
    transposed: bool = False


def _scheduled(model: nn.Module, layers: List[WeightLayer], example_input: Any, *, embeddings: bool,
               norms: bool) -> Tuple[List[Scheduled], List[Tuple[int, Scheduled]]]:
    """The scheduled tensors in execution order, and each norm weight with the position of the
    scheduled tensor executed just before it (a norm before every weight layer is left out)."""
    scheduled = [Scheduled(l.name, l.key, l.kind, tuple(l.weight.shape), l.bias_key, l.transposed) for l in layers]
    if not (embeddings or norms):
        return scheduled, []
    types = (_EMBEDDING_TYPES if embeddings else ()) + (_NORM_TYPES if norms else ())
    wanted = {id(l.module) for l in layers}
    hooked = [m for m in model.modules() if isinstance(m, types) or id(m) in wanted]
    order = call_order(model, hooked, example_input)
    pos = {id(m): i for i, m in enumerate(order)}
    names = {id(m): n for n, m in model.named_modules()}
    keyed: List[Tuple[float, Scheduled]] = []
    last = -1.0
    for entry, l in zip(scheduled, layers):
        # a layer no hook saw (MultiheadAttention applies out_proj functionally) follows the one before
        last = float(pos.get(id(l.module), last + 1e-3))
        keyed.append((last, entry))
    tensors = {id(l.weight) for l in layers}
    norm_at: List[Tuple[float, Scheduled]] = []
    for m in order:
        name, key = names[id(m)], qualified_name(names[id(m)], "weight")
        if embeddings and isinstance(m, _EMBEDDING_TYPES) and id(m.weight) not in tensors:
            tensors.add(id(m.weight))
            keyed.append((pos[id(m)], Scheduled(name, key, "embedding", tuple(m.weight.shape))))
        if norms and isinstance(m, _NORM_TYPES) and getattr(m, "weight", None) is not None:
            bias_key = qualified_name(name, "bias") if m._parameters.get("bias") is not None else None
            norm_at.append((pos[id(m)], Scheduled(name, key, "norm", tuple(m.weight.shape), bias_key)))
    keyed.sort(key=lambda t: t[0])
    follows = []
    for p, norm in norm_at:
        before = [i for i, (q, _) in enumerate(keyed) if q < p]
        if before:
            follows.append((before[-1], norm))
    return [e for _, e in keyed], follows


def _trace(model: nn.Module, example_input: Any, order: str, trace: str, embeddings: bool, norms: bool):
    """Weight layers and scheduled tensors, traced on meta stand-ins when ``trace="meta"`` (on the
    real weights when the forward cannot run on meta tensors)."""
    def find(x: Any) -> Tuple[List[WeightLayer], List[Scheduled], List[Tuple[int, Scheduled]]]:
        layers = find_weight_layers(model, x, order=order)
        return (layers, *_scheduled(model, layers, x, embeddings=embeddings, norms=norms))

    if trace == "meta" and order == "execution":
        try:
            with meta_stand_ins(model):
                return find(to_meta(example_input))
        except Exception:  # noqa: BLE001 - data-dependent forward, tensors outside parameters/buffers
            pass
    return find(example_input)


def graph_depths(model: nn.Module, layers: List[WeightLayer], scheduled: List[Scheduled],
                 how: str = "shortest", example_input: Any = None) -> List[int]:
    """Depth of each scheduled tensor in the model's layer graph
    (:meth:`~emergeinit.emergence.LayerGraph.layer_depths`): the weight layers on the shortest (or
    longest) path from the input through it. The graph is traced by torch.fx, or read from a
    recorded forward on ``example_input`` when fx cannot trace the model
    (:func:`emergeinit.trace.layers_traced_or_recorded`). A tensor the graph does not hold
    (attention projections inside ``nn.MultiheadAttention``, embeddings) takes the depth of the
    tensor executed before it (the first: the smallest depth).
    """
    with preserve_state(model), torch.no_grad():
        model.eval()
        traced = layers_traced_or_recorded(model, layer_by_module(model, layers), example_input,
                                           include_input=False, include_output=True)
    by_key = traced.graph.layer_depths(traced.inputs, how=how)
    known = [by_key.get(t.key) for t in scheduled]
    first = min((d for d in known if d is not None), default=1)
    depths: List[int] = []
    for d in known:
        depths.append(d if d is not None else (depths[-1] if depths else first))
    return depths


def _schedule_groups(model: nn.Module, layers: List[WeightLayer], scheduled: List[Scheduled], scope: str,
                     blocks: Optional[ModuleSpec], example_input: Any) -> List[Tuple[Optional[str], List[int], List[int]]]:
    """(block, positions in ``scheduled``, index k of each) for each run of the schedule."""
    if scope == "global":
        return [(None, list(range(len(scheduled))), list(range(len(scheduled))))]
    index_of = {t.key: i for i, t in enumerate(scheduled)}
    found = find_blocks(model, layers, blocks, example_input=example_input)
    return [(name, [index_of[l.key] for l in b], list(b.depths)) for name, b in found.items()]


PLAN_FLAGS: Dict[str, Rule] = {"scale_bias": FLAG, "embeddings": FLAG, "norms": FLAG, "include_frozen": FLAG}


def check_plan_options(options: Mapping[str, Any]) -> None:
    """Check the options of :func:`plan_emergence` present in ``options``, without a model (a grid
    checks its configs so before the first run; ``plan_emergence`` itself first of all)."""
    if "alpha" in options:
        positive_number(options["alpha"], "alpha")
    if "schedule" in options:
        resolve_schedule(options["schedule"])
    scope = options.get("scope", "global")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: use 'global', 'blockwise' or 'graph'")
    if scope != "blockwise" and options.get("blocks") is not None:
        raise ValueError("blocks= is only used with scope='blockwise'")
    if options.get("graph_depth", "shortest") not in GRAPH_DEPTHS:
        raise ValueError(f"unknown graph_depth {options['graph_depth']!r}: use 'shortest' or 'longest'")
    if options.get("order", "execution") not in ("execution", "registration"):
        raise ValueError(f"unknown order {options['order']!r}: use 'execution' or 'registration'")
    if options.get("trace", "meta") not in ("meta", "real"):
        raise ValueError(f"unknown trace {options['trace']!r}: use 'meta' or 'real'")
    check_values("plan_emergence", options, PLAN_FLAGS)


def plan_emergence(
    model: nn.Module,
    *,
    alpha: float,
    schedule: Schedule = "literal",
    scope: str = "global",
    blocks: Optional[ModuleSpec] = None,
    example_input: Any = None,
    order: str = "execution",
    scale_bias: bool = False,
    embeddings: bool = False,
    norms: bool = False,
    trace: str = "meta",
    include_frozen: bool = False,
    graph_depth: str = "shortest",
) -> InitPlan:
    """The plan of eq 8 for ``model``: per weight layer its index k, exponent e_k and α**e_k.

    Touches no weight and no global random state, and works on a meta-device model (the trace runs
    on meta tensors). The L weight layers are every Linear/ConvNd/MultiheadAttention/Linear-like
    weight the forward pass uses, in execution order on ``example_input`` (inferred from the first
    layer when None), a tied weight counted once. ``embeddings=True`` schedules embedding tables
    too; ``norms=True`` scales each norm layer's weight (γ) by the factor of the weight layer
    executed just before it. ``scope="blockwise"`` runs the schedule inside each block, with L the
    block's number of indices (a gated pair shares one; see :func:`emergeinit.layers.find_blocks`
    for the default blocks: residual units and transformer FFN sublayers, found from a recorded
    forward; ``blocks``: modules, names or patterns, see :func:`emergeinit.layers.match_modules`);
    layers outside every block keep factor 1. ``scope="graph"`` indexes the schedule by each
    layer's depth in the traced layer graph instead of its execution position (:func:`graph_depths`;
    ``graph_depth="shortest"`` counts the weight layers on the shortest path from the input, so
    skip connections make a layer shallow, ``"longest"`` on the longest): on a plain chain it equals
    the global schedule, and layers at one depth share one factor. ``trace="meta"`` runs the tracing forward on meta stand-ins of the weights (no
    arithmetic; the real weights are used when the forward cannot run on meta tensors), ``"real"``
    on the weights themselves. Frozen tensors (``requires_grad=False``: a pretrained backbone) are
    left out of the schedule, with a warning, and listed in ``plan.meta["frozen"]``;
    ``include_frozen=True`` plans them too. A weight parametrized other than by weight_norm is a
    ValueError (see :func:`emergeinit.layers.weight_storage`).
    """
    check_plan_options(dict(alpha=alpha, schedule=schedule, scope=scope, blocks=blocks, order=order,
                            scale_bias=scale_bias, embeddings=embeddings, norms=norms, trace=trace,
                            include_frozen=include_frozen, graph_depth=graph_depth))
    alpha = positive_number(alpha, "alpha")
    if any(is_sharded(p) for p in model.parameters()):
        raise ValueError("plan_emergence traces the model: plan it before sharding it (on the meta "
                         "device, or unsharded), then apply_plan_ the plan to the sharded model")
    schedule_name, schedule_fn = resolve_schedule(schedule)
    check_writable(find_weight_layers(model, order="registration"))  # before the trace reads a weight
    with fork_rng(model):  # planning never moves the user's random state
        layers, scheduled, follows = _trace(model, example_input, order, trace, embeddings, norms)
    tensors = [t.key for t in scheduled] + [norm.key for _, norm in follows]
    frozen = [] if include_frozen else [key for key in tensors if is_frozen(storage_of(model, key))]
    if frozen:
        layers, scheduled, follows = _without(frozen, layers, scheduled, follows)
        warn_frozen("plan_emergence", frozen)
    place: Dict[int, Tuple[int, float, Optional[str]]] = {}  # position -> (k, e_k, block)
    if scope == "graph":  # k is the depth level: depths d_min..d_max are the schedule's 0..L-1
        with fork_rng(model):
            depths = graph_depths(model, layers, scheduled, graph_depth, example_input)
        low = min(depths)
        levels = exponents(max(depths) - low + 1, schedule_fn)
        place = {i: (d - low, levels[d - low], None) for i, d in enumerate(depths)}
    for block, positions, ks in (_schedule_groups(model, layers, scheduled, scope, blocks, example_input)
                                 if scope != "graph" else ()):
        es = exponents(len(set(ks)), schedule_fn)
        for i, k in zip(positions, ks):
            place[i] = (k, es[k], block)
    planned: List[List[PlannedLayer]] = []
    for i, t in enumerate(scheduled):
        k, e, block = place.get(i, (None, None, None))
        factor = _factor(alpha, e, t.key) if e is not None else 1.0
        planned.append([PlannedLayer(t.name, t.key, t.kind, k, e, factor, block, t.bias_key, t.shape,
                                     transposed=t.transposed)])
    for i, norm in follows:  # a norm's γ takes the factor of the layer it follows
        src = planned[i][0]
        planned[i].append(PlannedLayer(norm.name, norm.key, "norm", src.index, src.exponent, src.factor,
                                       src.block, norm.bias_key, norm.shape))
    return InitPlan([p for ps in planned for p in ps], alpha=alpha, schedule=schedule_name, scope=scope,
                    scale_bias=scale_bias, meta={"order": order, "embeddings": embeddings, "norms": norms,
                                                 "frozen": frozen,
                                                 **({"graph_depth": graph_depth} if scope == "graph" else {})})


def _without(frozen: Sequence[str], layers: List[WeightLayer], scheduled: List[Scheduled],
             follows: List[Tuple[int, Scheduled]]):
    """The traced tensors less the ``frozen`` keys; a norm that follows a frozen layer goes too."""
    if all(t.key in frozen for t in scheduled):
        raise ValueError("every tensor the schedule would run over is frozen (requires_grad=False): "
                         "nothing to initialize; pass include_frozen=True to include them")
    kept = [i for i, t in enumerate(scheduled) if t.key not in frozen]
    position = {old: new for new, old in enumerate(kept)}
    return ([l for l in layers if l.key not in frozen], [scheduled[i] for i in kept],
            [(position[i], norm) for i, norm in follows if i in position and norm.key not in frozen])


# --------------------------------------------------------------------------- T-Fixup, encoder/decoder

def tfixup_factors(n_encoder: int, n_decoder: int) -> Dict[str, float]:
    """The published T-Fixup scales: encoder 0.67·N^(-1/4), decoder and embeddings (9·M)^(-1/4)."""
    enc = 0.67 * n_encoder ** -0.25 if n_encoder else 1.0
    dec = (9 * n_decoder) ** -0.25 if n_decoder else 1.0
    emb = (9 * (n_decoder or n_encoder)) ** -0.25
    return {"encoder": enc, "decoder": dec, "embedding": emb}


def _is_encoder_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.TransformerEncoderLayer) or getattr(m, "emergeinit_encoder_layer", False) is True


def _is_decoder_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.TransformerDecoderLayer) or getattr(m, "emergeinit_decoder_layer", False) is True


def _stack(model: nn.Module, spec: Optional[ModuleSpec], is_layer: Callable[[nn.Module], bool],
           what: str) -> List[str]:
    """The named layers (the outermost of the modules ``spec`` matches), or the ones ``is_layer`` finds."""
    if spec is None:
        return [n for n, m in model.named_modules() if n and is_layer(m)]
    names = match_modules(model, spec, what)
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o)]


def find_transformer_layers(model: nn.Module, encoder_layers: Optional[ModuleSpec] = None,
                            decoder_layers: Optional[ModuleSpec] = None) -> Tuple[List[str], List[str]]:
    """Names of the encoder and decoder layers: given (modules, names or patterns, see
    :func:`emergeinit.layers.match_modules`; the outermost matching modules count), or found
    (``nn.TransformerEncoderLayer``/``DecoderLayer``, classes setting ``emergeinit_encoder_layer`` /
    ``emergeinit_decoder_layer = True``)."""
    enc = _stack(model, encoder_layers, _is_encoder_layer, "encoder layer")
    dec = _stack(model, decoder_layers, _is_decoder_layer, "decoder layer")
    if not enc and not dec:
        raise ValueError(
            f"{type(model).__name__} has no encoder or decoder layers: pass encoder_layers= / "
            "decoder_layers=, or set emergeinit_encoder_layer / emergeinit_decoder_layer = True"
        )
    both = set(enc) & set(dec)
    if both:
        raise ValueError(f"layers {sorted(both)} are both encoder and decoder layers")
    return enc, dec


_Piece = Tuple[str, Optional[Tuple[int, int]]]  # parameter key, rows (a packed q/k/v third) or None


def _attention_parts(layer: nn.Module, prefix: str) -> Tuple[Dict[_Piece, str], Set[int]]:
    """For one transformer layer: {piece: "q" | "k" | "v" | "out"} of its attention blocks, and the
    ids of every module inside an attention block."""
    parts: Dict[_Piece, str] = {}
    inside: Set[int] = set()
    for name, m in layer.named_modules():
        full = qualified_name(prefix, name)
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            key = qualified_name(full, "in_proj_weight")
            for part, rows in zip("qkv", packed_qkv_rows(key, m.in_proj_weight.shape[0]) or ()):
                parts[(key, rows)] = part
        elif isinstance(m, nn.MultiheadAttention):
            parts.update({(qualified_name(full, f"{p}_proj_weight"), None): p for p in "qkv"})
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "out_proj")):
            parts.update({(qualified_name(full, f"{p}_proj.weight"), None): p for p in "qkv"})
        else:
            continue
        parts[(qualified_name(full, "out_proj.weight"), None)] = "out"
        inside.update(id(s) for s in m.modules())
    return parts, inside


def _roles(model: nn.Module, enc: List[str], dec: List[str]) -> Dict[_Piece, Tuple[str, str, str]]:
    """piece -> (side, layer name, part): part is q/k/v/out in attention blocks, "ffn" for every
    other Linear of a layer."""
    modules = dict(model.named_modules())
    roles: Dict[_Piece, Tuple[str, str, str]] = {}
    for side, names in (("encoder", enc), ("decoder", dec)):
        for lname in names:
            parts, inside = _attention_parts(modules[lname], lname)
            roles.update({piece: (side, lname, part) for piece, part in parts.items()})
            for sub, m in modules[lname].named_modules():
                if isinstance(m, nn.Linear) and id(m) not in inside:
                    roles[(qualified_name(qualified_name(lname, sub), "weight"), None)] = (side, lname, "ffn")
    return roles


def plan_transformer(
    model: nn.Module,
    *,
    encoder_layers: Optional[ModuleSpec] = None,
    decoder_layers: Optional[ModuleSpec] = None,
    tfixup: bool = True,
    scale_embeddings: bool = True,
    beta_enc: float = 1.0,
    beta_dec: float = 1.0,
    include_frozen: bool = False,
) -> InitPlan:
    """Per-tensor factors of T-Fixup (``tfixup``; module docstring) times the encoder ÷``beta_enc``
    / decoder ×``beta_dec`` scheme. Embedding tables come first (each tensor once; factor 1 unless
    T-Fixup scales them), then every weight layer in registration order, a packed q/k/v tensor as
    three row ranges. Layers outside both stacks get factor 1. Frozen tensors are left out (with a
    warning; ``meta["frozen"]``) unless ``include_frozen``."""
    beta_enc = positive_number(beta_enc, "beta_enc")
    beta_dec = positive_number(beta_dec, "beta_dec")
    enc, dec = find_transformer_layers(model, encoder_layers, decoder_layers)
    f = tfixup_factors(len(enc), len(dec))
    roles = _roles(model, enc, dec)
    entries: List[PlannedLayer] = []
    seen: Set[int] = set()
    for n, m in model.named_modules():
        if isinstance(m, _EMBEDDING_TYPES) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            factor = f["embedding"] if (tfixup and scale_embeddings) else 1.0
            entries.append(PlannedLayer(n, qualified_name(n, "weight"), "embedding", None, None, factor,
                                        shape=tuple(m.weight.shape)))
    for layer in find_weight_layers(model, order="registration"):
        stored = draw_target(weight_storage(layer.module, layer.param_name, layer.key))
        if id(stored) in seen:  # an output projection tied to an embedding table
            continue
        seen.add(id(stored))
        shape = tuple(stored.shape)
        for rows in packed_qkv_rows(layer.key, shape[0]) or [None]:
            side, lname, part = roles.get((layer.key, rows), (None, None, None))
            factor = f[side] if tfixup and part in ("v", "out", "ffn") else 1.0
            if side == "encoder":
                factor /= beta_enc
            elif side == "decoder":
                factor *= beta_dec
            entries.append(PlannedLayer(layer.name, layer.key, layer.kind, None, None, factor, lname,
                                        layer.bias_key, shape, rows, layer.transposed))
    keys = list(dict.fromkeys(e.key for e in entries))  # a packed q/k/v tensor is three entries
    frozen = [] if include_frozen else [key for key in keys if is_frozen(storage_of(model, key))]
    warn_frozen("plan_transformer", frozen)
    return InitPlan([e for e in entries if e.key not in frozen], scope="encoder-decoder", meta={
        "n_encoder": len(enc), "n_decoder": len(dec), "tfixup_factors": f if tfixup else None,
        "beta_enc": beta_enc, "beta_dec": beta_dec, "encoder_layers": enc, "decoder_layers": dec,
        "frozen": frozen,
    })
