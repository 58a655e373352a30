"""Inits on several processes (gloo, 2 CPU processes): identical on every rank (DDP), and on
FSDP2-sharded parameters equal to the unsharded init for the same seed."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import emergeinit as ei
from _dist_helpers import run_ranks
from emergeinit import distributed as edist
from emergeinit.baselines import initialize
from emergeinit.models import Seq2SeqTransformer
from emergeinit.models.transformer import sinusoidal_positions
from emergeinit.plan import InitPlan, PlannedLayer

# ------------------------------------------------------------------------------ DDP: same on every rank

METHODS = {
    "kaiming": {},
    "xavier": {},
    "emergence": {"alpha": 2.0, "schedule": "normalized"},
    "lsuv": {},
    "metainit": {"steps": 2},
    "gradinit": {"iters": 2},
}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _rank_batches(rank: int):
    """Endless batches that differ between ranks (each rank reads its own shard of the data)."""
    g = torch.Generator().manual_seed(100 + rank)
    while True:
        yield torch.randn(32, 12, generator=g) * (1 + 3 * rank), torch.randint(0, 4, (32,), generator=g)


def _inits_on_ranks(rank: int, world: int) -> dict:
    out = {}
    for method, options in METHODS.items():
        torch.manual_seed(0)  # every rank seeded alike, as the harness does
        model = _mlp()
        data = {"data": _rank_batches(rank)} if method in ("lsuv", "metainit", "gradinit") else {}
        loss = {"loss_fn": nn.CrossEntropyLoss()} if method in ("metainit", "gradinit") else {}
        generator = torch.Generator().manual_seed(7)
        record = edist.initialize_(model, method, generators=(generator,), **options, **data, **loss)
        out[method] = {"sum": edist.checksum(model), "record": record.to_dict()["scales"],
                       "after": (torch.rand(3).tolist(), torch.rand(3, generator=generator).tolist())}
        if data:  # the same method computed on each rank's own data, without the broadcast
            torch.manual_seed(0)
            local = _mlp()
            initialize(local, method, **options, data=_rank_batches(rank), **loss)
            out[method]["local_sum"] = edist.checksum(local)

    # init_once_: any function, run on rank 0 only; its weights and return value reach every rank
    model = _mlp()
    value = edist.init_once_(model, lambda m: (nn.init.constant_(m[1].weight, 10.0 + rank), rank)[1])
    out["once"] = {"value": value, "w": float(model[1].weight[0, 0].detach())}
    torch.manual_seed(0)
    model = _mlp()
    batch = next(_rank_batches(rank))
    alpha = edist.init_once_(model, lambda m: ei.emergence_init_(
        m, alpha=ei.auto_alpha(m, batch, loss_fn=nn.functional.cross_entropy), schedule="normalized").alpha)
    out["auto_alpha"] = {"alpha": alpha, "sum": edist.checksum(model)}

    # an exception on rank 0 is raised on every rank, not a hang
    try:
        edist.init_once_(_mlp(), lambda m: 1 / 0)
        out["raised"] = None
    except ZeroDivisionError as err:
        out["raised"] = type(err).__name__

    # ranks seeded differently: a deterministic init is caught disagreeing
    torch.manual_seed(rank)
    try:
        edist.initialize_(_mlp(), "kaiming")
        out["unseeded"] = None
    except RuntimeError as err:
        out["unseeded"] = str(err)
    return out


def test_every_init_is_identical_on_every_rank(tmp_path):
    r0, r1 = run_ranks(_inits_on_ranks, 2, tmp_path)
    for method in METHODS:
        a, b = r0[method], r1[method]
        assert a["sum"] == b["sum"], method
        assert a["record"] == b["record"], method
        assert a["after"] == b["after"], method  # random state (torch's and the run's generator) in step
        if "local_sum" in a:  # computed on each rank's own data the weights would differ
            assert a["local_sum"] != b["local_sum"], method
            assert a["sum"] == a["local_sum"], method  # rank 0's result is what everyone got
    assert r0["once"] == r1["once"] == {"value": 0, "w": 10.0}
    assert r0["auto_alpha"] == r1["auto_alpha"]
    assert r0["raised"] == r1["raised"] == "ZeroDivisionError"
    assert "different" in r0["unseeded"] and "different" in r1["unseeded"]


def test_one_process_is_the_plain_call():
    torch.manual_seed(0)
    a = _mlp()
    rec = edist.initialize_(a, "emergence", alpha=2.0)
    torch.manual_seed(0)
    b = _mlp()
    initialize(b, "emergence", alpha=2.0)
    assert edist.checksum(a) == edist.checksum(b)
    assert rec.method == "emergence"
    assert edist.rank_and_world() == (0, 1)


# ------------------------------------------------------------------------- FSDP2: sharded == unsharded

KW = dict(dim=16, ffn_dim=40, heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0, max_positions=32)
VOCAB = 41  # rows not divisible by 2: uneven shards


def _example():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (2, 5), generator=g), torch.randint(1, VOCAB, (2, 6), generator=g)


def _shard(model: nn.Module, layers) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def _materialized(shard: bool) -> nn.Module:
    """The recipe for a model too big for one device: plan on meta, shard on meta, allocate the
    shards, then every tensor gets its init (drawn whole per parameter, each rank keeps its part)."""
    with torch.device("meta"):
        model = Seq2SeqTransformer(VOCAB, **KW)
    plan = ei.plan_emergence(model, alpha=10.0, scope="blockwise", example_input=_example())
    if shard:
        _shard(model, list(model.encoder_layers) + list(model.decoder_layers))
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.positions.copy_(sinusoidal_positions(*model.positions.shape))
    torch.manual_seed(123)
    edist.reset_unplanned_(model, plan)
    ei.apply_plan_(model, plan, base="kaiming")
    return model


def _unit(plan: InitPlan) -> InitPlan:
    return InitPlan([replace(l, factor=1.0) for l in plan.layers])


def _scaled_after_sharding(shard: bool) -> nn.Module:
    """The issue's order for a model that fits: plan on meta, materialize and base-init, shard,
    then scale the shards by the plan (base=None)."""
    with torch.device("meta"):
        model = Seq2SeqTransformer(VOCAB, **KW)
    plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=_example())
    model.to_empty(device="cpu")
    torch.manual_seed(5)
    edist.reset_unplanned_(model, plan)
    ei.apply_plan_(model, _unit(plan), base="kaiming")
    if shard:
        _shard(model, list(model.encoder_layers) + list(model.decoder_layers))
    ei.apply_plan_(model, plan)
    return model


class _Encoder(nn.Module):
    """nn.TransformerEncoderLayer stack: packed q/k/v weights, so T-Fixup writes row ranges."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True)
                                    for _ in range(2))

    def forward(self, x):
        h = self.emb(x)
        for layer in self.layers:
            h = layer(h)
        return h


def _tfixup(shard: bool) -> nn.Module:
    torch.manual_seed(3)
    model = _Encoder()
    if shard:
        _shard(model, model.layers)
    torch.manual_seed(4)
    ei.tfixup_init_(model)
    return model


def _gathered(model: nn.Module) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def _fsdp_on_ranks(rank: int, world: int) -> dict:
    out = {}
    model = _materialized(True)
    out["materialized"] = _gathered(model)
    w = model.encoder_layers[0].ffn.fc1.weight
    out["local_rows"] = w.to_local().shape[0]
    src, tgt = _example()  # the sharded model trains: a forward/backward through FSDP
    model(src, tgt).float().pow(2).mean().backward()
    out["grad_finite"] = bool(torch.isfinite(w.grad.to_local()).all())

    out["scaled"] = _gathered(_scaled_after_sharding(True))
    out["tfixup"] = _gathered(_tfixup(True))

    # the naive way, torch.nn.init on a sharded tensor, draws each shard from the rank's own
    # generator: not the unsharded init (what the checks above would catch)
    torch.manual_seed(123)
    with torch.no_grad():
        nn.init.normal_(w)
    out["naive"] = w.full_tensor().detach().clone()

    # the range check reads the largest weight over every rank: a huge weight in the last rank's
    # shard stops a scaling that would overflow float32 on every rank, before any weight changes
    model = _materialized(True)
    key = "decoder_layers.1.ffn.fc2.weight"
    with torch.no_grad():
        if rank == world - 1:
            model.get_parameter(key).to_local()[-1, 0] = 1e38
    before = _gathered(model)
    huge = InitPlan([PlannedLayer("decoder_layers.1.ffn.fc2", key, "linear", 0, 1.0, 10.0, shape=(16, 40))])
    try:
        ei.apply_plan_(model, huge)
        out["overflow"] = None
    except ValueError as err:
        out["overflow"] = str(err)
    out["unchanged"] = all(torch.equal(before[k], v) for k, v in _gathered(model).items())
    out["embedding_rows"] = model.src_embed.weight.to_local().shape[0]

    # the runnable example's recipe (examples/fsdp_emergence_init.py), on a Llama-style decoder
    example = _example_module()
    args = argparse.Namespace(vocab=67, dim=32, layers=2, heads=4, alpha=2.0, schedule="normalized", seed=1)
    out["example"] = _gathered(example.build_initialized(args, torch.device("cpu"), shard=True))

    try:
        ei.plan_emergence(model, alpha=2.0, example_input=_example())
        out["plan_sharded"] = None
    except ValueError as err:
        out["plan_sharded"] = str(err)
    return out


def _example_module():
    path = Path(__file__).resolve().parents[1] / "examples" / "fsdp_emergence_init.py"
    spec = importlib.util.spec_from_file_location("fsdp_emergence_init", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _equal(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_fsdp_sharded_init_equals_the_unsharded_init(tmp_path):
    r0, r1 = run_ranks(_fsdp_on_ranks, 2, tmp_path)
    # ranks hold different halves: 40 FFN rows, and 41 vocabulary rows split unevenly
    assert r0["local_rows"] == 20 and r1["local_rows"] == 20
    assert r0["embedding_rows"] == 21 and r1["embedding_rows"] == 20
    assert r0["grad_finite"] and r1["grad_finite"]
    for name, reference in (("materialized", _materialized(False)),
                            ("scaled", _scaled_after_sharding(False)),
                            ("tfixup", _tfixup(False))):
        want = _gathered(reference)
        assert _equal(r0[name], want) == [], name
        assert _equal(r1[name], want) == [], name
    args = argparse.Namespace(vocab=67, dim=32, layers=2, heads=4, alpha=2.0, schedule="normalized", seed=1)
    want = _gathered(_example_module().build_initialized(args, torch.device("cpu"), shard=False))
    assert _equal(r0["example"], want) == [] and _equal(r1["example"], want) == []
    # the plan layers of the materialized model are the base draw times α^e_k: fc2 (e = +1/2)
    # has 10× the spread of fc1 (e = -1/2) up to the draw's noise
    ref = r0["materialized"]
    ratio = ref["encoder_layers.0.ffn.fc2.weight"].std() / ref["encoder_layers.0.ffn.fc1.weight"].std()
    kaiming_ratio = (2 / 40) ** 0.5 / (2 / 16) ** 0.5  # fan_in 40 vs 16
    assert ratio / kaiming_ratio == pytest.approx(10.0, rel=0.15)
    # the naive per-shard draw differs from the unsharded one
    torch.manual_seed(123)
    unsharded = torch.empty(40, 16).normal_()
    assert not torch.equal(r0["naive"], unsharded)
    assert "overflows torch.float32" in r0["overflow"] and r1["overflow"] == r0["overflow"]
    assert r0["unchanged"] and r1["unchanged"]
    assert "before sharding" in r0["plan_sharded"]
