"""emergence_init_, plan_emergence, apply_plan_ and InitPlan (eq 8)."""

import json
import math
import warnings

import pytest
import torch
from torch import nn

import emergeinit as ei
from emergeinit import init
from emergeinit.cli import main as cli_main

EXPONENTS = {
    ("literal", 4): [-1.5, -0.5, 0.5, 1.5],
    ("literal", 5): [-2.0, -1.0, 0.0, 1.0, 2.0],
    ("normalized", 4): [-1.0, -1 / 3, 1 / 3, 1.0],
    ("normalized", 5): [-1.0, -0.5, 0.0, 0.5, 1.0],
}


def mlp(L, bias=False, width=12, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    mods = []
    d = 5
    for i in range(L):
        out = 3 if i == L - 1 else width
        mods.append(nn.Linear(d, out, bias=bias, dtype=dtype))
        if i < L - 1:
            mods.append(nn.ReLU())
        d = out
    return nn.Sequential(*mods)


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, snap):
    return all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("schedule, L", sorted(EXPONENTS))
def test_ratio_is_alpha_to_the_exponent(schedule, L):
    model = mlp(L, bias=True)
    old = snapshot(model)
    plan = ei.emergence_init_(model, alpha=3.0, schedule=schedule, base=None)
    assert [l.exponent for l in plan] == pytest.approx(EXPONENTS[schedule, L], abs=1e-15)
    assert [l.index for l in plan] == list(range(L))
    for i, (lin, e) in enumerate(zip(linears(model), EXPONENTS[schedule, L])):
        assert plan[i].factor == pytest.approx(3.0 ** e, rel=1e-15)
        assert torch.equal(lin.weight, old[f"{2 * i}.weight"] * plan[i].factor)
        assert torch.equal(lin.bias, old[f"{2 * i}.bias"])  # biases are not scaled by default


def test_base_keep_scales_the_model_own_init_and_names_it():
    torch.manual_seed(0)
    model = mlp(4, bias=True)
    with torch.no_grad():
        for lin in linears(model):
            lin.weight.mul_(0.3)  # an init of the model's own, unlike any base draw
    old = snapshot(model)
    state = torch.random.get_rng_state()
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", base="keep")
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn
    assert plan.meta["base"] == "keep"
    for i, lin in enumerate(linears(model)):
        assert torch.equal(lin.weight, old[f"{2 * i}.weight"] * plan[i].factor)
    same = mlp(4, bias=True)
    same.load_state_dict(old)
    assert ei.emergence_init_(same, alpha=2.0, schedule="normalized", base=None).meta["base"] == "keep"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


def test_scale_bias_option_scales_biases_with_their_layer():
    model = mlp(3, bias=True)
    old = snapshot(model)
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", base=None, scale_bias=True)
    for i, lin in enumerate(linears(model)):
        assert torch.equal(lin.bias, old[f"{2 * i}.bias"] * plan[i].factor)
    assert [l.factor for l in plan] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("schedule", ["literal", "normalized"])
@pytest.mark.parametrize("L", [4, 5])
def test_bias_free_relu_mlp_computes_the_same_function(schedule, L):
    model = mlp(L)
    x = torch.randn(64, 5)
    before = model(x)
    ei.emergence_init_(model, alpha=2.5, schedule=schedule, base=None)
    assert not torch.equal(linears(model)[0].weight, mlp(L)[0].weight)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


class Reversed(nn.Module):
    """Registers its layers last-to-first; runs them first-to-last."""

    def __init__(self):
        super().__init__()
        self.c = nn.Linear(8, 2)
        self.b = nn.Linear(8, 8)
        self.a = nn.Linear(4, 8)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_execution_order_not_registration_order():
    model = Reversed()
    old = snapshot(model)
    plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=torch.randn(2, 4))
    assert [l.key for l in plan] == ["a.weight", "b.weight", "c.weight"]
    assert [l.factor for l in plan] == [0.5, 1.0, 2.0]
    assert unchanged(model, old)  # planning touches nothing
    ei.apply_plan_(model, plan)
    assert torch.equal(model.a.weight, old["a.weight"] * 0.5)
    assert torch.equal(model.c.weight, old["c.weight"] * 2.0)
    reg = ei.plan_emergence(model, alpha=2.0, schedule="normalized", order="registration")
    assert [l.key for l in reg] == ["c.weight", "b.weight", "a.weight"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6, bias=False)
        self.again = nn.Linear(6, 6, bias=False)
        self.again.weight = self.first.weight  # one tensor, two modules
        self.head = nn.Linear(6, 2, bias=False)

    def forward(self, x):
        return self.head(torch.relu(self.again(torch.relu(self.first(x)))))


def test_tied_weight_is_one_layer_scaled_once():
    model = Tied()
    old = snapshot(model)
    plan = ei.emergence_init_(model, alpha=4.0, schedule="literal", base=None)
    assert len(plan) == 2
    assert [l.factor for l in plan] == [0.5, 2.0]
    assert torch.equal(model.first.weight, old["first.weight"] * 0.5)  # not 0.25
    assert model.again.weight is model.first.weight
    # a plan naming the same tensor twice is refused
    dup = ei.InitPlan(plan.layers + [ei.PlannedLayer("again", "again.weight", "linear", 0, -1.0, 0.5, shape=(6, 6))])
    with pytest.raises(ValueError, match="same tensor"):
        ei.apply_plan_(model, dup)


def test_blockwise_on_transformer_encoder_touches_only_the_ffn():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    old = snapshot(model)
    plan = ei.emergence_init_(model, alpha=10.0, scope="blockwise", base=None,
                              example_input=torch.randn(2, 5, 16))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(old[k], v)}
    assert changed == {f"layers.{i}.linear{j}.weight" for i in range(3) for j in (1, 2)}
    for i in range(3):
        w1, w2 = model.layers[i].linear1.weight, model.layers[i].linear2.weight
        torch.testing.assert_close(w1, old[f"layers.{i}.linear1.weight"] * 10 ** -0.5, rtol=0, atol=0)
        torch.testing.assert_close(w2, old[f"layers.{i}.linear2.weight"] * 10 ** 0.5, rtol=0, atol=0)
        assert plan[f"layers.{i}.linear1.weight"].block == f"layers.{i}"
    assert sum(l.factor != 1.0 for l in plan) == 6


def test_blockwise_named_blocks_and_errors():
    model = mlp(5)
    plan = ei.plan_emergence(model, alpha=2.0, scope="blockwise", blocks=["0", "2"])
    assert [l.block for l in plan] == ["0", "2", None, None, None]
    assert [l.factor for l in plan] == [1.0, 1.0, 1.0, 1.0, 1.0]  # one layer per block: e = 0
    with pytest.raises(ValueError, match="matches no module"):
        ei.emergence_init_(model, alpha=2.0, scope="blockwise", blocks=["nope.*"])
    with pytest.raises(ValueError, match="no default blocks"):
        ei.emergence_init_(model, alpha=2.0, scope="blockwise")
    with pytest.raises(ValueError, match="only used with scope='blockwise'"):
        ei.emergence_init_(model, alpha=2.0, blocks=["0"])


def test_blockwise_residual_blocks_skip_the_stem_and_head():
    from emergeinit.models import build_model

    model = build_model("resnet20")
    plan = ei.plan_emergence(model, alpha=2.0, scope="blockwise")
    scaled = [l for l in plan if l.block is not None]
    assert len(plan) == 20 and len(scaled) == 18
    assert {l.exponent for l in scaled} == {-0.5, 0.5}
    assert plan["conv1.weight"].factor == 1.0 and plan["fc.weight"].factor == 1.0


def test_meta_plan_then_apply_equals_direct_call():
    with torch.device("meta"):
        meta = Reversed()
    plan = ei.plan_emergence(meta, alpha=2.0, schedule="normalized")
    meta.to_empty(device="cpu")
    torch.manual_seed(7)
    ei.apply_plan_(meta, plan, base="kaiming")
    direct = Reversed()
    torch.manual_seed(7)
    ei.emergence_init_(direct, alpha=2.0, schedule="normalized", base="kaiming")
    for k, v in direct.state_dict().items():
        assert torch.equal(meta.state_dict()[k], v), k


def test_same_seed_bit_identical_and_folding_is_exact_scaling():
    def run(alpha, seed=3):
        model = mlp(5, bias=True, width=64)
        torch.manual_seed(seed)
        ei.emergence_init_(model, alpha=alpha, schedule="literal", base="kaiming")
        return model

    a, b = run(2.0), run(2.0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    ref = run(1.0)  # plain Kaiming from the same random stream
    for k, (la, lr) in enumerate(zip(linears(a), linears(ref))):
        torch.testing.assert_close(la.weight, lr.weight * 2.0 ** (k - 2), rtol=1e-6, atol=0)
        assert torch.count_nonzero(la.bias) == 0


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (init.kaiming_normal_, nn.init.kaiming_normal_, {}),
    (init.kaiming_normal_, nn.init.kaiming_normal_, dict(mode="fan_out", nonlinearity="relu")),
    (init.kaiming_uniform_, nn.init.kaiming_uniform_, dict(a=math.sqrt(5))),  # nn.Linear's own init
    (init.xavier_uniform_, nn.init.xavier_uniform_, dict(gain=2.0)),
    (init.xavier_normal_, nn.init.xavier_normal_, {}),
])
@pytest.mark.parametrize("shape", [(12, 7), (6, 3, 3, 3)])
def test_draws_are_torch_nn_init_times_the_factor(ours, theirs, kwargs, shape):
    def pair(factor, dtype):
        torch.manual_seed(0)
        ref = theirs(torch.empty(shape, dtype=dtype), **kwargs) * factor
        torch.manual_seed(0)
        return ours(torch.empty(shape, dtype=dtype), **kwargs, factor=factor), ref

    # the same random numbers: exact at factor 1, and for powers of two (exact scalings)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for factor in (1.0, 0.25, 8.0):
            got, ref = pair(factor, dtype)
            assert torch.equal(got, ref), (dtype, factor)
    got, ref = pair(1.0, torch.float16)
    assert torch.equal(got, ref)
    got, ref = pair(3.0, torch.float32)  # folded into the draw: one rounding instead of two
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)


def test_base_options_grouped_or_flat_give_the_same_weights():
    def run(**kwargs):
        model = mlp(4, bias=True)
        torch.manual_seed(5)
        ei.emergence_init_(model, alpha=2.0, schedule="normalized", **kwargs)
        return [p.detach().clone() for p in model.parameters()]

    flat = run(base="kaiming", mode="fan_out", distribution="uniform")
    grouped = run(base=init.BaseInit("kaiming", mode="fan_out", distribution="uniform"))
    both = run(base=init.BaseInit("kaiming", distribution="uniform"), mode="fan_out")
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(flat, grouped, both))
    assert not all(torch.equal(a, b) for a, b in zip(flat, run(base="kaiming")))
    with pytest.raises(TypeError, match="fan"):
        ei.emergence_init_(mlp(3), alpha=2.0, fan="in")
    with pytest.raises(ValueError, match="unknown mode"):
        ei.emergence_init_(mlp(3), alpha=2.0, base=None, mode="fan_avg")  # checked even when unused


def test_base_kaiming_and_xavier_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(800, 400), nn.ReLU(), nn.Linear(400, 400))
    ei.emergence_init_(model, alpha=1.0, base="kaiming")
    assert model[0].weight.std().item() == pytest.approx((2 / 800) ** 0.5, rel=0.02)
    ei.emergence_init_(model, alpha=1.0, base="kaiming", mode="fan_out", nonlinearity="linear")
    assert model[0].weight.std().item() == pytest.approx((1 / 400) ** 0.5, rel=0.02)
    ei.emergence_init_(model, alpha=1.0, base="xavier", gain=2.0)
    bound = 2.0 * (6 / 1200) ** 0.5
    assert model[0].weight.abs().max().item() <= bound
    assert model[0].weight.abs().max().item() > 0.99 * bound


def test_norms_and_embeddings_only_when_asked():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.fc1 = nn.Linear(6, 6)
            self.norm = nn.LayerNorm(6)
            self.fc2 = nn.Linear(6, 2)

        def forward(self, t):
            return self.fc2(self.norm(self.fc1(self.emb(t))))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    old = snapshot(model)
    tokens = torch.randint(0, 10, (2, 3))
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", base=None, example_input=tokens)
    assert [l.key for l in plan] == ["fc1.weight", "fc2.weight"]
    assert torch.equal(model.emb.weight, old["emb.weight"]) and torch.equal(model.norm.weight, old["norm.weight"])
    model.load_state_dict(old)
    plan = ei.emergence_init_(model, alpha=2.0, schedule=lambda k, L: k - 0.5, base=None,
                              example_input=tokens, embeddings=True, norms=True)
    assert [(l.key, l.kind) for l in plan] == [
        ("emb.weight", "embedding"), ("fc1.weight", "linear"), ("norm.weight", "norm"), ("fc2.weight", "linear")]
    assert [l.factor for l in plan] == pytest.approx([2 ** -0.5, 2 ** 0.5, 2 ** 0.5, 2 ** 1.5])
    assert torch.equal(model.emb.weight, old["emb.weight"] * plan[0].factor)
    assert torch.equal(model.norm.weight, old["norm.weight"] * plan[2].factor)
    assert torch.equal(model.norm.bias, old["norm.bias"])


def test_plan_str_and_json():
    plan = ei.plan_emergence(mlp(3), alpha=2.0, schedule="normalized")
    text = str(plan)
    assert "InitPlan(alpha=2.0, schedule=normalized, scope=global): 3 tensors" in text
    assert "0.weight" in text and "4.weight" in text and "+1" in text
    d = json.loads(json.dumps(plan.to_dict()))
    assert [l["factor"] for l in d["layers"]] == [0.5, 1.0, 2.0]
    assert d["layers"][0]["shape"] == [12, 5]
    assert plan.factors == {"0.weight": 0.5, "2.weight": 1.0, "4.weight": 2.0}


def test_cli_prints_the_plan(capsys):
    assert cli_main(["init", "--model", "mlp", "--alpha", "2", "--schedule", "normalized", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [l["factor"] for l in d["layers"]] == pytest.approx([0.5, 2 ** (-1 / 3), 2 ** (1 / 3), 2.0])
    assert cli_main(["init", "--model", "resnet20", "--alpha", "2", "--scope", "blockwise"]) == 0
    out = capsys.readouterr().out
    assert "20 tensors" in out and "layer3.2.conv2.weight" in out and "1.41421" in out
    assert cli_main(["init", "--model", "mlp", "--alpha", "0"]) == 2
    assert "alpha must be a positive" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=-2.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(alpha=float("inf")), "alpha"),
    (dict(alpha=True), "alpha"),
    (dict(alpha=2.0, schedule="cosine"), "unknown schedule"),
    (dict(alpha=2.0, schedule=lambda k, L: float("inf")), "not finite"),
    (dict(alpha=2.0, base="orthogonal"), "unknown base"),
    (dict(alpha=2.0, scope="local"), "unknown scope"),
    (dict(alpha=2.0, mode="fan_avg"), "unknown mode"),
    (dict(alpha=2.0, nonlinearity="swish"), "nonlinearity"),
    (dict(alpha=2.0, scope="blockwise", blocks="layer9"), "matches no module"),
    (dict(alpha=1e30, schedule=lambda k, L: float(k)), "overflows torch.float32"),
    (dict(alpha=1e30, schedule=lambda k, L: -float(k)), "underflows"),
])
def test_bad_input_raises_and_leaves_the_model_untouched(kwargs, match):
    model = mlp(5, bias=True)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        ei.emergence_init_(model, **kwargs)
    assert unchanged(model, snap)


def test_no_weight_layers():
    with pytest.raises(ValueError, match="no weight layers"):
        ei.emergence_init_(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), alpha=2.0, example_input=torch.randn(2, 3))


@pytest.mark.parametrize("dtype, alpha, schedule, match", [
    (torch.float16, 1e3, "literal", "underflows torch.float16"),  # 1e-6 · max|w| < 6.1e-5
    (torch.float16, 1e3, lambda k, L: k / 2, "overflows torch.float16"),  # 1e6 > 65504
    (torch.bfloat16, 1e20, lambda k, L: k / 2, "overflows torch.bfloat16"),  # 1e40
    (torch.bfloat16, 1e20, "literal", "underflows"),  # 1e-40
    (torch.float32, 1e20, "literal", "underflows"),
])
def test_dtype_range_is_checked_before_any_weight_changes(dtype, alpha, schedule, match):
    model = mlp(5, bias=True, dtype=dtype)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        ei.emergence_init_(model, alpha=alpha, schedule=schedule, base="kaiming",
                           example_input=torch.randn(2, 5, dtype=dtype))
    assert unchanged(model, snap)


def test_failure_on_the_last_layer_leaves_the_first_untouched():
    model = mlp(3, bias=True)
    model[4].half()  # only the last layer is fp16: its factor 1e5 overflows, the others fit
    snap = snapshot(model)

    def forward(x):
        return model[4](model[3](model[2](model[1](model[0](x)))).half())

    model.forward = forward
    with pytest.raises(ValueError, match=r"4\.weight.*overflows torch.float16"):
        ei.emergence_init_(model, alpha=1e5, schedule="normalized", base=None, example_input=torch.randn(2, 5))
    assert unchanged(model, snap)


def test_current_weights_checked_without_base():
    model = mlp(3, dtype=torch.float16)
    with torch.no_grad():
        model[4].weight.fill_(1000.0)  # 1000 × 100 > 65504, though the factor 100 itself fits
    snap = snapshot(model)
    with pytest.raises(ValueError, match="largest weight would be 100000"):
        ei.emergence_init_(model, alpha=100.0, schedule="normalized", base=None,
                           example_input=torch.randn(2, 5, dtype=torch.float16))
    assert unchanged(model, snap)


def test_apply_plan_rejects_a_plan_for_another_model():
    plan = ei.plan_emergence(mlp(3), alpha=2.0)
    other = mlp(3, width=7)
    snap = snapshot(other)
    with pytest.raises(ValueError, match="shape"):
        ei.apply_plan_(other, plan)
    with pytest.raises(ValueError, match="not a parameter"):
        ei.apply_plan_(nn.Sequential(nn.Linear(5, 12, bias=False)), plan)
    assert unchanged(other, snap)


class DataDependent(nn.Module):
    """A forward that reads values (cannot run on meta tensors): tracing falls back to real weights."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if float(h.sum()) > -1e9:
            h = torch.relu(h)
        return self.b(h)


@pytest.mark.parametrize("builder", [Reversed, Tied, DataDependent])
def test_meta_and_real_traces_agree_and_restore_the_parameters(builder):
    torch.manual_seed(0)
    model = builder()
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(2, 4 if builder is not Tied else 6)
    meta = ei.plan_emergence(model, alpha=2.0, example_input=x)
    real = ei.plan_emergence(model, alpha=2.0, example_input=x, trace="real")
    assert meta.layers == real.layers
    assert all(p is params[n] and p.device.type == "cpu" for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="unknown trace"):
        ei.plan_emergence(model, alpha=2.0, trace="fx")


# ------------------------------------------------------------------------- low-precision underflow

def _tiny_share(w):
    return float((w.float().abs() < torch.finfo(w.dtype).tiny).float().mean())


def test_fp16_init_that_leaves_most_weights_subnormal_is_refused():
    """Layer 0 ÷1e4: its largest weight fits fp16, but 66% of its weights would not."""
    model = mlp(3, bias=True, dtype=torch.float16)
    snap = snapshot(model)
    expected = math.erf(torch.finfo(torch.float16).tiny / (math.sqrt(2 / 5) * 1e-4 * math.sqrt(2)))
    with pytest.raises(ValueError, match=rf"0\.weight by 0\.0001 leaves {expected:.1%} of its values "
                                         r"subnormal or zero in torch.float16 .*refused above 50%"):
        ei.emergence_init_(model, alpha=1e4, schedule="normalized", example_input=torch.randn(2, 5, dtype=torch.float16))
    assert unchanged(model, snap)


def test_fp16_init_that_leaves_some_weights_subnormal_warns_with_the_share():
    from emergeinit.init import UnderflowWarning

    model = mlp(3, dtype=torch.float16, width=200)
    x = torch.randn(2, 5, dtype=torch.float16)
    expected = math.erf(torch.finfo(torch.float16).tiny / (math.sqrt(2 / 5) / 1300 * math.sqrt(2)))
    assert 0.05 < expected < 0.2
    torch.manual_seed(0)
    with pytest.warns(UnderflowWarning, match=rf"0\.weight .* leaves {expected:.1%} of its values subnormal") as seen:
        ei.emergence_init_(model, alpha=1300.0, schedule="normalized", example_input=x)
    assert len(seen) == 1  # the other layers are scaled up
    assert _tiny_share(model[0].weight) == pytest.approx(expected, abs=0.05)  # 1000 draws
    for dtype in (torch.bfloat16, torch.float32):  # same init, wide exponent range: silent
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ei.emergence_init_(mlp(3, dtype=dtype, width=200), alpha=1300.0, schedule="normalized",
                               example_input=x.to(dtype))


def test_measured_underflow_share_without_base():
    from emergeinit.init import UnderflowWarning

    model = mlp(2, dtype=torch.float16)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[:3].fill_(1e-3)  # 15 of 60 weights; × 1/100 = 1e-5 < 6.1e-5
        model[0].weight[3, 0] = 0.0  # a zero stays zero: not counted
    with pytest.warns(UnderflowWarning, match=r"0\.weight by 0\.01 leaves 25\.0% of its values"):
        ei.emergence_init_(model, alpha=100.0, schedule="normalized", base=None, example_input=torch.randn(2, 5).half())
    assert _tiny_share(model[0].weight) == pytest.approx(16 / 60)  # the 15, and the zero


# ------------------------------------------------------------------- parametrized and frozen layers

from torch.nn.utils.parametrizations import spectral_norm, weight_norm  # noqa: E402


def test_weight_norm_is_scaled_and_drawn_exactly():
    torch.manual_seed(0)
    normed = nn.Sequential(weight_norm(nn.Linear(5, 12)), nn.ReLU(), weight_norm(nn.Linear(12, 12)), nn.ReLU(),
                           weight_norm(nn.Linear(12, 3)))
    before = [normed[i].weight.detach().clone() for i in (0, 2, 4)]
    plan = ei.emergence_init_(normed, alpha=3.0, schedule="normalized", base=None)
    assert [l.key for l in plan] == ["0.weight", "2.weight", "4.weight"]  # three layers, not two
    for w0, i, f in zip(before, (0, 2, 4), (1 / 3, 1.0, 3.0)):
        torch.testing.assert_close(normed[i].weight, w0 * f)
    plain = mlp(3)
    torch.manual_seed(1)
    ei.emergence_init_(plain, alpha=3.0, schedule="normalized")
    torch.manual_seed(1)
    ei.emergence_init_(normed, alpha=3.0, schedule="normalized")  # the same draws, through g and v
    for i in (0, 2, 4):
        torch.testing.assert_close(normed[i].weight, plain[i].weight)


@pytest.mark.parametrize("how", ["spectral_norm", "hooked weight_norm"])
def test_other_parametrizations_are_refused_before_any_change(how):
    torch.manual_seed(0)
    model = mlp(3, bias=True)
    if how == "spectral_norm":
        spectral_norm(model[2])  # its power iteration runs whenever the weight is read in train mode
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation of the hook-based weight_norm
            torch.nn.utils.weight_norm(model[2])
    snap = snapshot(model)  # spectral_norm's _u and _v buffers included
    match = "_SpectralNorm" if how == "spectral_norm" else "recomputed by the module"
    with pytest.raises(ValueError, match=rf"2\.weight .*{match}"):
        ei.emergence_init_(model, alpha=2.0)
    with pytest.raises(ValueError, match=match):
        ei.plan_emergence(model, alpha=2.0)
    for method in ("kaiming", "lsuv"):
        with pytest.raises(ValueError, match=match):
            ei.initialize(model, method, **({"data": torch.randn(4, 5)} if method == "lsuv" else {}))
    assert unchanged(model, snap)


def frozen_mlp():
    model = mlp(4, bias=True)
    for p in model[0].parameters():
        p.requires_grad_(False)
    model[2].weight.requires_grad_(False)  # frozen weight, trainable bias: the layer is frozen
    return model


def test_frozen_layers_are_left_out_of_the_schedule_with_a_warning():
    model = frozen_mlp()
    snap = snapshot(model)
    with pytest.warns(UserWarning, match=r"2 frozen tensors \(requires_grad=False\) are left as they are: "
                                         r"0\.weight, 2\.weight; pass include_frozen=True"):
        plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized")
    assert [l.key for l in plan] == ["4.weight", "6.weight"] and plan.meta["frozen"] == ["0.weight", "2.weight"]
    assert [l.exponent for l in plan] == [-1.0, 1.0]  # L = 2: the schedule runs over what it writes
    for k in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(model.state_dict()[k], snap[k])
    assert not torch.equal(model[4].weight, snap["4.weight"])
    assert "left out, frozen" in str(plan)
    whole = ei.emergence_init_(frozen_mlp(), alpha=2.0, include_frozen=True)
    assert len(whole) == 4 and whole.meta["frozen"] == []


def test_every_layer_frozen_is_an_error():
    model = mlp(2)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="every tensor the schedule would run over is frozen"):
        ei.emergence_init_(model, alpha=2.0)
    with pytest.raises(ValueError, match="include_frozen must be True or False"):
        ei.emergence_init_(model, alpha=2.0, include_frozen="yes")
