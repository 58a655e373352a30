"""Baselines in one API: dispatch, pass counts, the methods' effects, state restored, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import emergeinit as ei
from emergeinit.baselines import (
    METHODS, NonFiniteError, check_options, gradient_quotient, gradinit_, gradinit_objective, kaiming_init_,
    lsuv_init_, metainit_, xavier_init_,
)

# ------------------------------------------------------------------------------------ fixtures


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5),
    )


def cnn(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), norm(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def mlp_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 20, generator=g), torch.randint(0, 5, (64,), generator=g)


def cnn_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 5, (32,), generator=g)


def badly_scaled(model: nn.Module, factor: float) -> nn.Module:
    kaiming_init_(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def snapshot(model: nn.Module):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def same_state(model: nn.Module, saved) -> bool:
    now = list(model.parameters()) + list(model.buffers())
    return len(now) == len(saved) and all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() and
                                          torch.equal(a.nan_to_num(), b.nan_to_num())
                                          for a, b in zip(now, saved))


class Log(nn.Module):
    """log of a ReLU output: -inf wherever the unit is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.log()


def first_layer_calls(model: nn.Module):
    """Count calls of the first weight layer independently of the record's own hook."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    calls = [0]
    first.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------ dispatch


def test_initialize_is_exported_and_unknown_names_list_the_known_ones():
    from emergeinit.baselines import initialize

    assert ei.initialize is initialize and ei.InitRecord is type(initialize(mlp(), "kaiming"))
    assert set(METHODS) == {"kaiming", "xavier", "emergence", "tfixup", "metainit", "gradinit", "lsuv"}
    with pytest.raises(ValueError) as err:
        ei.initialize(mlp(), "fixup")
    for name in METHODS:
        assert name in str(err.value)


def test_method_names_ignore_case_dash_and_underscore():
    assert ei.initialize(mlp(), "Kaiming").method == "kaiming"
    assert ei.initialize(mlp(), "meta-init", steps=1, input_shape=(4, 20)).method == "metainit"
    assert ei.initialize(mlp(), "LSUV", data=mlp_batch()[0]).method == "lsuv"


# ---------------------------------------------------------------------------------- pass counts


def test_pass_counts_of_every_method_on_the_same_tiny_model():
    x, y = mlp_batch()
    expected = {
        # method: (options, forward, backward, hvp)
        "kaiming": ({}, 0, 0, 0),
        "xavier": ({}, 0, 0, 0),
        "metainit": (dict(steps=3, input_shape=(16, 20)), 3, 3, 6),
        "gradinit": (dict(data=(x, y), iters=4, gamma=math.inf), 8, 8, 0),  # objective steps only
    }
    for method, (options, fwd, bwd, hvp) in expected.items():
        model = mlp()
        calls = first_layer_calls(model)
        record = ei.initialize(model, method, **options)
        assert (record.forward_passes, record.backward_passes, record.hvp_passes) == (fwd, bwd, hvp), method
        assert calls[0] == fwd, method
        assert record.method == method and record.wall_seconds >= 0
        assert set(record.scales) == {"0.weight", "2.weight", "4.weight", "6.weight"}


def test_gradinit_counts_split_into_constraint_and_objective_steps():
    x, y = mlp_batch()
    record = gradinit_(mlp(), (x, y), iters=3, gamma=0.0)  # every step is a constraint step
    assert record.details["constraint_steps"] == 3 and record.details["objective_steps"] == 0
    assert (record.forward_passes, record.backward_passes, record.hvp_passes) == (3, 3, 3)
    model = badly_scaled(mlp(), 3.0)
    record = gradinit_(model, (x, y), iters=30, lr=0.05)
    cons, obj = record.details["constraint_steps"], record.details["objective_steps"]
    assert cons > 0 and obj > 0 and cons + obj == 30
    assert obj == sum(v is not None for v in record.details["objective"])
    assert record.forward_passes == record.backward_passes == 30 + obj
    assert record.hvp_passes == cons
    record = gradinit_(mlp(), (x, y), iters=3, gamma=math.inf, second_order=True)
    assert (record.forward_passes, record.backward_passes, record.hvp_passes) == (6, 3, 3)


def test_lsuv_counts_one_trace_plus_each_measurement():
    torch.manual_seed(0)
    model = nn.Linear(16, 8, bias=False)  # variance is exactly quadratic in the weight's scale
    x = 3.0 * torch.randn(256, 16)
    calls = first_layer_calls(model)
    record = lsuv_init_(model, x)
    layer = record.details["layers"]["weight"]
    assert layer["measurements"] == 2 and layer["converged"]
    assert layer["variances"][1] == pytest.approx(1.0, abs=1e-4)
    assert (record.forward_passes, record.backward_passes, record.hvp_passes) == (3, 0, 0)
    assert calls[0] == 3

    model = mlp()
    calls = first_layer_calls(model)
    record = lsuv_init_(model, mlp_batch())
    measured = sum(l["measurements"] for l in record.details["layers"].values())
    assert record.forward_passes == 1 + measured == calls[0]


def test_emergence_through_initialize_records_its_plan_and_factors():
    model = mlp()
    calls = first_layer_calls(model)
    record = ei.initialize(model, "emergence", alpha=2.0, base=None)
    assert record.backward_passes == 0 and record.hvp_passes == 0
    assert record.forward_passes == calls[0] >= 1  # its traces through the model
    factors = {l["key"]: l["factor"] for l in record.details["plan"]["layers"]}
    # literal schedule, L = 4: exponents -1.5, -0.5, 0.5, 1.5
    assert factors == pytest.approx({"0.weight": 2 ** -1.5, "2.weight": 2 ** -0.5,
                                     "4.weight": 2 ** 0.5, "6.weight": 2 ** 1.5})
    assert record.scales == pytest.approx(factors, rel=1e-5)


def test_tfixup_through_initialize_uses_the_published_factors():
    torch.manual_seed(0)
    model = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=3, num_decoder_layers=2,
                           dim_feedforward=32, dropout=0.0)
    record = ei.initialize(model, "tfixup")
    assert record.method == "tfixup" and record.backward_passes == 0
    factors = {l["key"]: l["factor"] for l in record.details["plan"]["layers"]}
    assert factors["encoder.layers.0.linear1.weight"] == pytest.approx(0.67 * 3 ** -0.25)
    assert factors["encoder.layers.2.linear2.weight"] == pytest.approx(0.67 * 3 ** -0.25)
    assert factors["decoder.layers.1.linear1.weight"] == pytest.approx((9 * 2) ** -0.25)


# ---------------------------------------------------------------------------- the methods work


@pytest.mark.parametrize("build,batch", [(mlp, mlp_batch), (cnn, cnn_batch)])
def test_metainit_lowers_the_gradient_quotient_from_a_bad_scale(build, batch):
    x, y = batch()
    model = badly_scaled(build(), 3.0)
    before = gradient_quotient(model, (x, y))
    record = metainit_(model, (x, y), steps=30)
    after = gradient_quotient(model, (x, y))
    assert after < 0.85 * before
    assert record.details["gq_first"] == pytest.approx(before, rel=1e-5)
    assert record.details["gq_last"] < record.details["gq_first"]


def test_metainit_default_draws_gaussian_inputs_and_labels_in_range():
    model = mlp()
    inputs, labels = [], []
    model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))

    def loss_fn(out, y):
        labels.append(y)
        return nn.functional.cross_entropy(out, y)

    record = metainit_(model, steps=3, input_shape=(500, 20), loss_fn=loss_fn)
    assert record.options["data"] == "random N(0,1)" and record.forward_passes == 3
    assert [tuple(x.shape) for x in inputs] == [(500, 20)] * 3
    assert not torch.equal(inputs[0], inputs[1])  # a fresh batch every step
    for x in inputs:
        assert abs(x.mean().item()) < 0.03 and x.std().item() == pytest.approx(1.0, abs=0.03)
    y = torch.cat(labels)
    assert y.min().item() == 0 and y.max().item() == 4  # uniform over the 5 outputs


@pytest.mark.parametrize("build,batch", [(mlp, mlp_batch), (cnn, cnn_batch)])
def test_gradinit_lowers_its_objective_from_a_bad_scale(build, batch):
    x, y = batch()
    model = badly_scaled(build(), 3.0)
    loss_before, gnorm_before = gradinit_objective(model, (x, y))
    record = gradinit_(model, (x, y), iters=30, lr=0.05)
    loss_after, gnorm_after = gradinit_objective(model, (x, y))
    assert gnorm_before > 1.0 and gnorm_after < 1.0  # γ = 1
    assert loss_after < 0.2 * loss_before
    weights = {k: v for k, v in record.details["tensor_scales"].items() if k in record.scales}
    assert record.scales == pytest.approx(weights, rel=1e-5)
    assert min(record.details["tensor_scales"].values()) >= 0.0


def test_gradinit_scales_respect_the_minimum_scale():
    x, y = mlp_batch()
    record = gradinit_(badly_scaled(mlp(), 50.0), (x, y), iters=40, lr=0.5, min_scale=0.2)
    weights = [v for k, v in record.details["tensor_scales"].items() if k.endswith("weight")]
    assert min(weights) == pytest.approx(0.2)


@pytest.mark.parametrize("build,batch", [(mlp, mlp_batch), (lambda: cnn(bn=True), cnn_batch)])
def test_lsuv_brings_every_layer_output_variance_to_one(build, batch):
    x, _ = batch()
    model = build()
    record = lsuv_init_(model, x, tol=0.05)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert record.details["converged"] == record.details["measured"] == len(layers)
    variances = {}
    hooks = [m.register_forward_hook(lambda m, a, out, n=n: variances.__setitem__(n, out.var().item()))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    model.train()  # BN normalizes with batch statistics, as during LSUV
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(variances) == len(layers)
    for name, var in variances.items():
        assert abs(var - 1.0) < 0.05, (name, var)


def test_lsuv_starts_orthonormal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False))
    lsuv_init_(model, torch.randn(128, 32), max_iters=0)  # orthonormal start, no rescale
    w = model[0].weight
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)


# ----------------------------------------------------------------------- Kaiming and Xavier


def test_kaiming_fan_modes_gain_and_the_vgg_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 128, 3), nn.Flatten(), nn.Linear(512, 100))
    kaiming_init_(model, mode="fan_out", classifier_std=0.01)
    conv_std = model[0].weight.std().item()
    assert conv_std == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)
    assert model[2].weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert model[0].bias.abs().sum() == 0 and model[2].bias.abs().sum() == 0
    kaiming_init_(model)  # fan_in, ReLU gain, classifier drawn like the rest
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert model[2].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.03)
    kaiming_init_(model, nonlinearity="linear", distribution="uniform")
    bound = math.sqrt(3 / (64 * 9))
    assert model[0].weight.abs().max().item() <= bound
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(1 / (64 * 9)), rel=0.03)


def test_xavier_gain_and_distribution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 100))
    xavier_init_(model)
    bound = math.sqrt(6 / (300 + 200))
    assert model[0].weight.abs().max().item() <= bound
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.03)
    xavier_init_(model, gain="tanh", distribution="normal")
    assert model[2].weight.std().item() == pytest.approx(5 / 3 * math.sqrt(2 / 300), rel=0.03)
    assert model[0].bias.abs().sum() == 0


# -------------------------------------------------------------------------- state restored


@pytest.mark.parametrize("method,options", [
    ("metainit", dict(steps=2, batch_size=8)),
    ("gradinit", dict(iters=2)),
    ("lsuv", {}),
])
@pytest.mark.parametrize("train", [True, False])
def test_modes_and_bn_statistics_are_restored(method, options, train):
    x, y = cnn_batch()
    model = cnn(bn=True)
    model[0].weight.data.mul_(3)  # make every method change something
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.train(train)
    model[1].train(not train)  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    data = (x, y) if method != "metainit" else None
    ei.initialize(model, method, data=data, **options)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", ["gradinit", "lsuv"])
def test_data_methods_without_data_or_with_an_empty_iterable(method):
    model = mlp()
    saved = snapshot(model)
    with pytest.raises(ValueError, match="data"):
        ei.initialize(model, method)
    with pytest.raises(ValueError, match="empty"):
        ei.initialize(model, method, data=[])
    with pytest.raises(ValueError, match="empty"):
        ei.initialize(model, method, data=iter([]))
    assert same_state(model, saved)


def test_gradinit_needs_targets():
    with pytest.raises(ValueError, match="targets"):
        gradinit_(mlp(), mlp_batch()[0], iters=1)


@pytest.mark.parametrize("method", ["metainit", "gradinit", "lsuv"])
def test_non_finite_start_names_the_first_bad_layer_and_changes_nothing(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), Log(), nn.Linear(16, 5))
    x, y = mlp_batch()
    saved = snapshot(model)
    data = None if method == "metainit" else (x, y)
    with pytest.raises(NonFiniteError, match="layer '2'"):
        ei.initialize(model, method, data=data, **({"input_shape": (8, 20)} if data is None else {}))
    assert same_state(model, saved)


@pytest.mark.parametrize("method", ["metainit", "gradinit"])
def test_nan_weight_is_reported_at_its_layer(method):
    model = mlp()
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    saved = snapshot(model)
    x, y = mlp_batch()
    with pytest.raises(NonFiniteError, match="layer '4'"):
        ei.initialize(model, method, data=(x, y))
    assert same_state(model, saved)


def test_non_finite_input_is_named_as_such():
    x, y = mlp_batch()
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="input"):
        gradinit_(mlp(), (x, y), iters=1)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"tfixup"}))
def test_a_model_without_weight_layers_is_a_clear_error(method):
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4))
    saved = snapshot(model)
    x = torch.randn(8, 4)
    options = {"alpha": 2.0} if method == "emergence" else {}
    if method in ("gradinit", "lsuv", "metainit"):
        options["data"] = (x, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="no weight layers"):
        ei.initialize(model, method, **options)
    assert same_state(model, saved)


# ------------------------------------------------------------------------ data and records


def test_iterables_are_cycled_and_one_shot_iterators_replayed():
    batches = [mlp_batch(s) for s in range(3)]
    record = gradinit_(mlp(), batches, iters=5, gamma=math.inf)
    assert record.forward_passes == 10
    record = gradinit_(mlp(), (b for b in batches[:2]), iters=5, gamma=math.inf)
    assert record.forward_passes == 10
    record = metainit_(mlp(), iter(batches), steps=4)
    assert record.forward_passes == 4


def test_record_is_json_and_readable():
    x, y = mlp_batch()
    record = ei.initialize(mlp(), "gradinit", data=(x, y), iters=2)
    d = json.loads(json.dumps(record.to_dict()))
    assert d["method"] == "gradinit" and d["forward_passes"] == record.forward_passes
    assert d["options"]["iters"] == 2 and d["options"]["loss_fn"] == "default_loss"
    text = str(record)
    assert text.startswith("gradinit:") and f"{record.forward_passes} forward" in text


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"tfixup"}))
def test_a_meta_model_is_refused_plainly(method):
    model = mlp().to("meta")
    options = {"emergence": {"alpha": 2.0}, "kaiming": {}, "xavier": {}}.get(method, {"data": mlp_batch()})
    with pytest.raises(ValueError, match=r"initialize\(\.\.\., '\w+'\) needs weights with values.*meta device"):
        ei.initialize(model, method, **options)


# ------------------------------------------------------------------- options checked up front

BAD_OPTIONS = [
    ("lsuv", dict(target_var=0.0), "target_var must be a positive"),  # once zeroed layer 0, "converged"
    ("lsuv", dict(target_var=-1.0), "target_var"),
    ("lsuv", dict(tol=0.0), "tol must be a positive"),
    ("lsuv", dict(max_iters=2.5), "max_iters must be an integer >= 0"),
    ("lsuv", dict(orthonormal="no"), "orthonormal must be True or False"),
    ("kaiming", dict(nonlinearity="swish"), "nonlinearity must be one of"),
    ("kaiming", dict(classifier_std=-0.01), "classifier_std must be None or a finite number >= 0"),
    ("kaiming", dict(zero_bias="false"), "zero_bias must be True or False"),
    ("xavier", dict(gain=0.0), "gain must be a positive finite number or a nonlinearity name"),
    ("xavier", dict(gain=float("nan")), "gain"),
    ("metainit", dict(lr=-0.1), "lr must be a positive"),
    ("metainit", dict(momentum=1.0), r"momentum must be a number in \[0, 1\)"),
    ("metainit", dict(steps=0), "steps must be an integer >= 1"),
    ("metainit", dict(min_scale=2.0), r"min_scale must be a number in \[0, 1\]"),
    ("gradinit", dict(eta=0.0), "eta must be a positive"),
    ("gradinit", dict(gamma=float("nan")), "gamma must be a number >= 0"),
    ("gradinit", dict(betas=(0.9, 1.0)), "betas must be a pair"),
    ("gradinit", dict(arch="vgg11"), "arch must be None or one of 'vgg19'"),
    ("gradinit", dict(iters=True), "iters must be an integer >= 1"),
    ("emergence", dict(alpha=0.0), "alpha must be a positive"),
    ("emergence", dict(alpha=2.0, scale_bias="false"), "scale_bias must be True or False"),
    ("emergence", dict(alpha=2.0, order="random"), "unknown order"),
]


@pytest.mark.parametrize("method, options, match", BAD_OPTIONS)
def test_nonsense_options_are_refused_before_any_change(method, options, match):
    x, y = mlp_batch()
    model = mlp()
    saved = snapshot(model)
    data = {"data": (x, y)} if method in ("metainit", "gradinit", "lsuv") else {}
    with pytest.raises(ValueError, match=match):
        ei.initialize(model, method, **data, **options)
    assert same_state(model, saved)
    with pytest.raises(ValueError, match=match):  # the same check without a model, as a grid runs it
        check_options(method, options)


def test_lsuv_target_var_zero_no_longer_zeroes_the_first_layer():
    model = mlp()
    with pytest.raises(ValueError):
        lsuv_init_(model, mlp_batch(), target_var=0.0)
    assert model[0].weight.abs().max() > 0


@pytest.mark.parametrize("method, options, match", [
    ("emergence", dict(alpah=3.0, alpha=2.0), r"unknown option 'alpah'"),
    ("emergence", dict(schedule="normalized"), "missing a required argument: 'alpha'"),
    ("lsuv", dict(target_variance=1.0), "unexpected keyword argument 'target_variance'"),
    ("tfixup", dict(beta_dec=2.0), "unexpected keyword argument 'beta_dec'"),
])
def test_unknown_option_names_are_type_errors(method, options, match):
    with pytest.raises(TypeError, match=match):
        check_options(method, options)


def test_good_options_pass_the_check_and_defaults_too():
    for method in METHODS:
        check_options(method, {"alpha": 2.0} if method == "emergence" else {})
    check_options("gradinit", dict(gamma=math.inf, lr=1e-2, betas=[0.5, 0.9]))
    check_options("emergence", dict(alpha=5, schedule="normalized", scope="blockwise", base="xavier", gain=2.0))
    check_options("xavier", dict(gain="tanh"))
    with pytest.raises(ValueError, match="unknown init method"):
        check_options("he", {})


# ---------------------------------------------------------------- frozen and parametrized layers

@pytest.mark.parametrize("method, options", [
    ("kaiming", {}), ("xavier", {}), ("lsuv", {}), ("metainit", dict(steps=2)), ("gradinit", dict(iters=2)),
    ("emergence", dict(alpha=2.0)),
])
def test_frozen_layers_are_left_as_they_are_unless_included(method, options):
    x, y = mlp_batch()
    if method in ("lsuv", "metainit", "gradinit"):
        options = {**options, "data": (x, y)}
    model = mlp()
    model[0].requires_grad_(False)  # a frozen "backbone"
    frozen = [t.detach().clone() for t in model[0].parameters()]
    with pytest.warns(UserWarning, match=r"frozen tensors \(requires_grad=False\) are left as they are: 0\.weight"):
        record = ei.initialize(model, method, **options)
    assert all(torch.equal(a, b) for a, b in zip(model[0].parameters(), frozen))
    assert record.scales["0.weight"] == 1.0 and record.scales["6.weight"] != 1.0
    listed = record.details["plan"]["meta"]["frozen"] if method == "emergence" else record.details["frozen"]
    assert "0.weight" in listed
    ei.initialize(model, method, include_frozen=True, **options)
    assert not torch.equal(model[0].weight, frozen[0])


def test_weight_norm_layers_are_initialized_through_g_and_v():
    from torch.nn.utils.parametrizations import weight_norm

    x, y = mlp_batch()
    model = mlp()
    weight_norm(model[2])
    record = kaiming_init_(model)
    assert record.scales["2.weight"] != 1.0
    w = model[2].weight.detach()
    assert w.std().item() == pytest.approx(math.sqrt(2 / 32), rel=0.15)  # Kaiming: σ = sqrt(2 / fan_in)
    lsuv = lsuv_init_(model, x)
    assert lsuv.details["layers"]["2.weight"]["converged"]  # the rescale reached W through g
    metainit_(model, (x, y), steps=2)
    gradinit_(model, (x, y), iters=2)


def test_layerwise_lr_groups_train_the_parametrizations_parameters():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    model = mlp()
    weight_norm(model[2])
    spectral_norm(model[4])
    groups = ei.layerwise_lr_groups(model, nn.functional.cross_entropy, mlp_batch(), base_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter once, all leaves
    torch.optim.SGD(groups)
