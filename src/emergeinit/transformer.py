"""Transformer schemes: T-Fixup, and the paper's encoder-quieted / decoder-excited variant.

T-Fixup (Huang, Perez, Ba, Volkovs 2020, "Improving Transformer Optimization Through Better
Initialization", Algorithm 1), for N encoder layers and M decoder layers:

1. Xavier (uniform) for every weight matrix except the input embeddings, biases 0; embeddings
   drawn from N(0, d^(-1/2)) with d the embedding width (padding row 0).
2. Decoder: the value projection v and the output projection w of every attention block (self and
   cross) and both FFN weights of every decoder layer × (9·M)^(-1/4); the input embeddings × (9·M)^(-1/4).
3. Encoder: v, w and both FFN weights of every encoder layer × 0.67·N^(-1/4).

Query and key projections keep their Xavier values. The paper writes one N for both stacks; its
public code (layer6ai-labs/T-Fixup) scales the encoder embedding by (9·N)^(-1/4) and the decoder
embedding by (9·M)^(-1/4) — the same numbers when N = M, as in the paper's 6+6 model. Here every
embedding table takes (9·M)^(-1/4) (or (9·N)^(-1/4) for an encoder-only model), a shared table once.
A packed ``nn.MultiheadAttention.in_proj_weight`` is Xavier-initialized per q/k/v slice (each
E×E, as separate projections would be), and only its value slice is scaled.

Encoder/decoder scheme (the paper's "global" transformer variant): T-Fixup, then every weight
matrix inside the encoder layers ÷ β_enc and inside the decoder layers × β_dec (paper: β_dec = 2).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from emergeinit.init import InitPlan, PlannedLayer, _check_range, apply_plan_
from emergeinit.layers import find_weight_layers
from emergeinit.schedules import positive_number

__all__ = ["tfixup_init_", "encoder_decoder_init_", "tfixup_factors", "find_transformer_layers"]

LayerSpec = Optional[Sequence[Union[str, nn.Module]]]


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


def _resolve(model: nn.Module, spec: LayerSpec, default, what: str) -> List[str]:
    modules = dict(model.named_modules())
    if spec is None:
        return [n for n, m in modules.items() if n and default(m)]
    names = {id(m): n for n, m in modules.items()}
    out: List[str] = []
    for item in spec:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"{what} layer {type(item).__name__} is not a submodule of the model")
            hits = [names[id(item)]]
        else:
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise ValueError(f"{what} layer {item!r} matches no module of {type(model).__name__}")
        out.extend(h for h in hits if h not in out)
    # a pattern like "encoder.*" also matches the layers' children: keep the outermost modules
    return [n for n in out if not any(n.startswith(o + ".") for o in out)]


def find_transformer_layers(model: nn.Module, encoder_layers: LayerSpec = None,
                            decoder_layers: LayerSpec = None) -> Tuple[List[str], List[str]]:
    """Names of the encoder and decoder layers: given (modules, names or fnmatch patterns; the
    outermost matching modules count), or found
    (``nn.TransformerEncoderLayer``/``DecoderLayer``, classes setting ``emergeinit_encoder_layer`` /
    ``emergeinit_decoder_layer = True``)."""
    enc = _resolve(model, encoder_layers, _is_encoder_layer, "encoder")
    dec = _resolve(model, decoder_layers, _is_decoder_layer, "decoder")
    if not enc and not dec:
        raise ValueError(
            f"{type(model).__name__} has no encoder or decoder layers: pass encoder_layers= / "
            "decoder_layers=, or set emergeinit_encoder_layer / emergeinit_decoder_layer = True"
        )
    both = set(enc) & set(dec)
    if both:
        raise ValueError(f"layers {sorted(both)} are both encoder and decoder layers")
    return enc, dec


def _attention_parts(layer: nn.Module, prefix: str) -> Tuple[Dict[Tuple[str, Optional[Tuple[int, int]]], str], set]:
    """For one transformer layer: {(param key, rows): "q"|"k"|"v"|"out"} of its attention blocks,
    and the ids of every module inside an attention block."""
    parts: Dict[Tuple[str, Optional[Tuple[int, int]]], str] = {}
    inside: set = set()
    for name, m in layer.named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if isinstance(m, nn.MultiheadAttention):
            if m._qkv_same_embed_dim:
                e = m.in_proj_weight.shape[0] // 3
                for i, part in enumerate("qkv"):
                    parts[(f"{full}.in_proj_weight", (i * e, (i + 1) * e))] = part
            else:
                for part in "qkv":
                    parts[(f"{full}.{part}_proj_weight", None)] = part
            parts[(f"{full}.out_proj.weight", None)] = "out"
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "out_proj")):
            for part in ("q", "k", "v"):
                parts[(f"{full}.{part}_proj.weight", None)] = part
            parts[(f"{full}.out_proj.weight", None)] = "out"
        else:
            continue
        inside.update(id(s) for s in m.modules())
    return parts, inside


def _transformer_plan(model: nn.Module, enc: List[str], dec: List[str], *, tfixup: bool,
                      scale_embeddings: bool, beta_enc: float, beta_dec: float) -> InitPlan:
    """Per tensor (a packed q/k/v slice counts as one): T-Fixup factor × β factor."""
    f = tfixup_factors(len(enc), len(dec))
    modules = dict(model.named_modules())
    roles: Dict[Tuple[str, Optional[Tuple[int, int]]], Tuple[str, str, str]] = {}  # -> (side, layer, part)
    for side, names in (("encoder", enc), ("decoder", dec)):
        for lname in names:
            parts, inside = _attention_parts(modules[lname], lname)
            for k, part in parts.items():
                roles[k] = (side, lname, part)
            for sub, m in modules[lname].named_modules():
                if isinstance(m, nn.Linear) and id(m) not in inside:
                    roles[(f"{lname}.{sub}.weight", None)] = (side, lname, "ffn")
    embeddings = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    entries: List[PlannedLayer] = []
    seen: set = set()
    for n, m in model.named_modules():  # embedding tables, each tensor once
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            factor = f["embedding"] if (tfixup and scale_embeddings) else 1.0
            entries.append(PlannedLayer(n, f"{n}.weight" if n else "weight", "embedding", None, None,
                                        factor, None, None, tuple(m.weight.shape)))
    for layer in find_weight_layers(model, order="registration"):
        if id(layer.weight) in seen:  # an output projection tied to an embedding table
            continue
        seen.add(id(layer.weight))
        w = layer.weight
        bias_key = None
        for bn, b in layer.module.named_parameters(recurse=False):
            if b is layer.bias and b is not None:
                bias_key = f"{layer.name}.{bn}" if layer.name else bn
        pieces: List[Optional[Tuple[int, int]]] = [None]
        if layer.param_name == "in_proj_weight":
            e = w.shape[0] // 3
            pieces = [(0, e), (e, 2 * e), (2 * e, 3 * e)]
        for rows in pieces:
            side, lname, part = roles.get((layer.key, rows), (None, None, None))
            factor = 1.0
            if tfixup and part in ("v", "out", "ffn"):
                factor *= f[side]
            if side == "encoder":
                factor /= beta_enc
            elif side == "decoder":
                factor *= beta_dec
            entries.append(PlannedLayer(layer.name, layer.key, layer.kind, None, None, factor, lname,
                                        bias_key, tuple(w.shape), rows))
    return InitPlan(entries, meta={
        "n_encoder": len(enc), "n_decoder": len(dec), "tfixup_factors": f if tfixup else None,
        "beta_enc": beta_enc, "beta_dec": beta_dec, "encoder_layers": enc, "decoder_layers": dec,
    })


def _draw_(model: nn.Module, plan: InitPlan, gain: float) -> None:
    """Xavier-uniform weights (per slice) and N(0, d^-1/2) embeddings, each × its factor; biases 0.
    Checks every tensor first, so a failure changes nothing."""
    specs = []
    # weight matrices first, embedding tables last: the weights draw the same random numbers with
    # or without the embeddings (base "xavier" keeps them)
    ordered = [l for l in plan.layers if l.kind != "embedding"] + [l for l in plan.layers if l.kind == "embedding"]
    for l in ordered:
        w = model.get_parameter(l.key)
        shape = (l.rows[1] - l.rows[0],) + tuple(w.shape[1:]) if l.rows else tuple(w.shape)
        if l.kind == "embedding":
            dist, s = "normal", shape[-1] ** -0.5
            peak = 8.0 * s
        else:
            fan_in = shape[1] * (math.prod(shape[2:]) if len(shape) > 2 else 1)
            fan_out = shape[0] * (math.prod(shape[2:]) if len(shape) > 2 else 1)
            dist, s = "uniform", gain * math.sqrt(6.0 / (fan_in + fan_out))
            peak = s
        _check_range(l.key, w, l.factor, peak)
        specs.append((l, w, dist, s))
    with torch.no_grad():
        for l, w, dist, s in specs:
            view = w if l.rows is None else w[l.rows[0]:l.rows[1]]
            if dist == "normal":
                view.normal_(0.0, s * l.factor)
                pad = getattr(model.get_submodule(l.name), "padding_idx", None)
                if pad is not None:
                    w[pad].zero_()
            else:
                view.uniform_(-s * l.factor, s * l.factor)
            if l.bias_key:
                b = model.get_parameter(l.bias_key)
                (b if l.rows is None or b.shape[0] != w.shape[0] else b[l.rows[0]:l.rows[1]]).zero_()


def tfixup_init_(
    model: nn.Module,
    *,
    encoder_layers: LayerSpec = None,
    decoder_layers: LayerSpec = None,
    scale_embeddings: bool = True,
    gain: float = 1.0,
) -> InitPlan:
    """T-Fixup (module docstring): re-draw every weight, in place; return the per-tensor factors.

    Works on ``nn.Transformer`` and on any model whose encoder/decoder layers are given (modules,
    names or fnmatch patterns) or found (see :func:`find_transformer_layers`). Attention blocks are
    ``nn.MultiheadAttention`` or modules with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears;
    every other Linear of a layer counts as its FFN. ``scale_embeddings=False`` keeps the embeddings
    at N(0, d^-1/2). The factors are relative to Xavier / N(0, d^-1/2).
    """
    return encoder_decoder_init_(model, beta_enc=1.0, beta_dec=1.0, base="tfixup",
                                 encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                                 scale_embeddings=scale_embeddings, gain=gain)


def encoder_decoder_init_(
    model: nn.Module,
    *,
    beta_enc: float = 1.0,
    beta_dec: float = 2.0,
    base: Optional[str] = "tfixup",
    encoder_layers: LayerSpec = None,
    decoder_layers: LayerSpec = None,
    scale_embeddings: bool = True,
    gain: float = 1.0,
) -> InitPlan:
    """The paper's global transformer scheme: ``base``, then encoder-layer weights ÷ ``beta_enc`` and
    decoder-layer weights × ``beta_dec`` (every weight matrix inside those layers, q and k included;
    embeddings and layers outside both stacks keep their base values).

    ``base``: ``"tfixup"`` (T-Fixup, the paper's choice), ``"xavier"`` (Xavier weights, biases 0,
    embeddings kept), or None (scale the current weights). Returns the per-tensor factors relative
    to the base's draw. Everything is checked before the first weight changes.
    """
    if base not in ("tfixup", "xavier", None):
        raise ValueError(f"unknown base {base!r}: use 'tfixup', 'xavier' or None")
    beta_enc = positive_number(beta_enc, "beta_enc")
    beta_dec = positive_number(beta_dec, "beta_dec")
    enc, dec = find_transformer_layers(model, encoder_layers, decoder_layers)
    plan = _transformer_plan(model, enc, dec, tfixup=base == "tfixup", scale_embeddings=scale_embeddings,
                             beta_enc=beta_enc, beta_dec=beta_dec)
    plan.scope = "encoder-decoder"
    plan.meta["base"] = base
    if base is None:
        return apply_plan_(model, plan)
    if base == "xavier":
        kept = [l for l in plan.layers if l.kind == "embedding"]
        plan.layers = [l for l in plan.layers if l.kind != "embedding"]
        _draw_(model, plan, gain)
        plan.layers = kept + plan.layers
        return plan
    _draw_(model, plan, gain)
    return plan
