"""choose_init / auto_init_: the probe's decisions, its budget, and that it leaves everything as it was."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import emergeinit as ei
from emergeinit.auto import BASE, Candidate, _plan_probe, choose_init, default_candidates


def batches(n, d_in=8, classes=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, d_in, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def mlp(d_in=8, hidden=16, classes=4, depth=3):
    dims = [d_in] + [hidden] * depth
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], classes))


def sgd(lr):
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr)


class Unbalanced(nn.Module):
    """y = W2 relu(W1 x) with W1 ~ 30× and W2 ~ 1/30× a balanced draw: plain SGD crawls; scaling
    W1 by 1/α and W2 by α (the normalized schedule, L = 2) with α ≈ 30 rebalances it, same function."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32, bias=False), nn.Linear(32, 4, bias=False)
        with torch.no_grad():
            self.fc1.weight.mul_(30.0)
            self.fc2.weight.div_(30.0)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ candidates

def test_candidates_parse_and_bad_ones_fail_early():
    assert Candidate.parse(2) == Candidate(2.0, "normalized", "global")
    assert Candidate.parse({"alpha": 3, "scope": "blockwise"}) == Candidate(3.0, "normalized", "blockwise")
    assert Candidate(1.0, "literal", "graph").is_base and Candidate(1.0).label == "base (α=1)"
    for bad in (0, -1, float("nan"), "2"):
        with pytest.raises(ValueError):
            Candidate.parse(bad)
    with pytest.raises(ValueError, match="schedule"):
        Candidate(2.0, "cubic")
    with pytest.raises(ValueError, match="scope"):
        Candidate(2.0, scope="everywhere")
    with pytest.raises(ValueError, match="unknown candidate keys"):
        Candidate.parse({"alpha": 2, "beta": 1})


def test_default_candidates_follow_the_architecture():
    from emergeinit.models import build_model

    plain = default_candidates(mlp(), torch.randn(2, 8))
    assert plain[0] == BASE and {c.scope for c in plain} == {"global"}
    residual = default_candidates(build_model("resnet20"), torch.randn(2, 3, 32, 32))
    assert {c.scope for c in residual} == {"global", "blockwise", "graph"}
    assert residual[:4] == [BASE, Candidate(2.0), Candidate(2.0, scope="blockwise"), Candidate(2.0, scope="graph")]


@pytest.mark.parametrize("n,budget,want", [(8, 23.45, (8, 5)), (4, 23.45, (4, 9)), (8, 8, (2, 4)),
                                           (8, 7.9, (1, 0)), (3, 100, (3, 49))])
def test_probe_plan_fits_the_budget(n, budget, want):
    fit, final = _plan_probe(n, budget, screen_steps=2, final_min=2)
    assert (fit, final) == want
    if fit >= 2:
        assert fit * 2 + 2 * (final - 2) <= budget


# ------------------------------------------------------------------------------------ decisions

def test_a_clear_win_is_chosen_with_its_evidence():
    torch.manual_seed(0)
    model = Unbalanced()
    choice = choose_init(model, batches(40), candidates=[30.0], base=None, budget_unit="steps", epoch_steps=100, budget=0.2,
                         optimizer=sgd(0.05))
    assert choice.chosen == Candidate(30.0) and (choice.alpha, choice.schedule, choice.scope) == (30.0, "normalized", "global")
    win = choice.results[1]
    assert win.status == "chosen" and win.difference.high < 0 and win.difference.n == 16 * choice.score_steps
    assert win.last_difference.high < 0 and win.last_difference.n == 16
    assert choice.results[0].status == "base" and choice.results[0].steps == choice.final_steps == 10
    assert choice.steps_run == 2 * 10 <= choice.budget_steps and choice.cost_fraction == pytest.approx(0.20)
    d = json.loads(json.dumps(choice.to_dict()))
    assert d["chosen"]["alpha"] == 30.0 and d["cost"]["steps"] == 20 and len(d["candidates"]) == 2
    assert "α=30 normalized global" in str(choice) and "chosen" in str(choice)


def test_no_win_keeps_the_base_and_gives_its_exact_weights():
    """A gain below min_gain is no win: auto_init_ then draws exactly what emergence_init_ at α = 1
    (the base init) draws from the same random state, and the random state moves the same way."""
    model = mlp()
    data = batches(30)
    torch.manual_seed(3)
    choice = ei.auto_init_(model, data, candidates=[2.0, 3.0], budget_unit="steps", epoch_steps=200, min_gain=1e9)
    after_auto = torch.randn(3)
    assert choice.chosen == BASE and choice.results[0].status == "chosen"
    (finalist,) = [r for r in choice.results if r.status == "finalist"]
    assert finalist.note.startswith("no win") and finalist.difference is not None
    twin = mlp()
    torch.manual_seed(3)
    ei.emergence_init_(twin, alpha=1.0, schedule="normalized")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert torch.equal(after_auto, torch.randn(3))
    assert choice.plan is not None and all(l.factor == 1.0 for l in choice.plan)


def test_model_buffers_and_random_state_untouched():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
    model.eval()
    before = state(model)
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    choose_init(model, batches(20), candidates=[2.0], budget_unit="steps", epoch_steps=100, budget=0.2)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not model[1].training


def test_diverging_and_out_of_range_candidates_are_noted_not_raised():
    torch.manual_seed(0)
    model = mlp()
    choice = choose_init(model, batches(30), candidates=[Candidate(1e6, "literal"), 1e200, 2.0],
                         budget_unit="steps", epoch_steps=200, budget=0.2, optimizer=sgd(0.5))
    by = {r.candidate.alpha: r for r in choice.results}
    assert by[1e6].status == "diverged" and "non-finite" in by[1e6].note
    assert by[1e200].status == "skipped" and "underflows" in by[1e200].note and by[1e200].steps == 0
    assert by[2.0].status in ("finalist", "chosen")


def test_budget_too_small_keeps_the_base_without_a_probe():
    model = mlp()
    choice = choose_init(model, batches(4), candidates=[2.0], budget_unit="steps", epoch_steps=100, budget=0.05)
    assert choice.chosen == BASE and choice.steps_run == 0 and choice.final_steps == 0
    assert "cannot screen" in choice.notes[-1]
    assert choice.results[1].status == "not run" and choice.results[1].note == "dropped to fit the budget"


def test_candidates_past_the_budget_are_dropped_from_the_end():
    choice = choose_init(mlp(), batches(30), candidates=[2.0, 3.0, 5.0], budget_unit="steps", epoch_steps=100, budget=0.1)
    assert [r.status for r in choice.results][3] == "not run"
    assert choice.steps_run <= 10


def test_epoch_length_comes_from_the_data_or_is_assumed_and_noted():
    data = batches(60)
    assert choose_init(mlp(), data, candidates=[2.0], budget_unit="steps").epoch_steps == 60
    one = choose_init(mlp(), data[0], candidates=[2.0], budget=0.02, budget_unit="steps")
    assert one.epoch_assumed and one.epoch_steps == 469 and any("assumed 469" in n for n in one.notes)
    assert any("not held out" in n for n in one.notes)


@pytest.mark.parametrize("kwargs,match", [
    ({"data": None}, "needs data"),
    ({"budget": 0}, "budget"),
    ({"screen_steps": 0}, "screen_steps"),
    ({"min_gain": -1}, "min_gain"),
    ({"budget_unit": "hours"}, "budget_unit"),
    ({"budget_unit": "steps", "epoch_steps": 0}, "epoch_steps"),
    ({"data": [(torch.randn(4, 8),)]}, "a batch must be"),
])
def test_bad_arguments_are_errors(kwargs, match):
    model = mlp()
    before = state(model)
    args = {"data": batches(4), **kwargs}
    with pytest.raises(ValueError, match=match):
        choose_init(model, args.pop("data"), **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scalar_loss_fn_pairs_per_step():
    mse = lambda out, y: nn.functional.cross_entropy(out, y)  # noqa: E731 - a scalar loss
    choice = choose_init(mlp(), batches(30), mse, candidates=[2.0], budget_unit="steps", epoch_steps=200, budget=0.1)
    assert choice.results[1].difference.n == choice.score_steps


# ---------------------------------------------------------------------------- any model

class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class MobileBlock(nn.Module):
    emergeinit_block = True

    def __init__(self, c):
        super().__init__()
        self.expand = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.se = SqueezeExcite(2 * c)
        self.project = nn.Conv2d(2 * c, c, 1, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.expand(x))))))
        return x + self.project(self.se(h))


class TinyMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(MobileBlock(8), MobileBlock(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens):
        return self.head(self.layer(self.embed(tokens)).mean(1))


def image_batches(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("make,data", [
    (TinyMobileNet, image_batches(20)),
    (TinyTransformer, [(torch.randint(0, 20, (8, 6)), torch.randint(0, 4, (8,))) for _ in range(20)]),
])
def test_depthwise_se_bn_and_attention_models(make, data):
    torch.manual_seed(0)
    model = make()
    before = state(model)
    choice = choose_init(model, data, budget_unit="steps", epoch_steps=200, budget=0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert choice.results[0].steps == choice.final_steps > 2
    assert all(r.status in ("base", "chosen", "finalist", "screened out", "not run") for r in choice.results)
    assert math.isfinite(choice.results[0].losses[-1])


def test_tiny_hugging_face_models():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=3))
    ids = [({"input_ids": torch.randint(0, 30, (4, 7))}, torch.randint(0, 3, (4,))) for _ in range(12)]
    choice = choose_init(bert, ids, budget_unit="steps", epoch_steps=200, budget=0.1, base=None)
    assert choice.results[0].steps > 2 and math.isfinite(choice.results[0].losses[-1])
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=30, n_embd=16, n_layer=2, n_head=2,
                                                               n_positions=16))
    tokens = [torch.randint(0, 30, (4, 8)) for _ in range(12)]
    lm = [({"input_ids": t}, t) for t in tokens]  # per-token cross-entropy on the logits
    choice = choose_init(gpt, lm, candidates=[2.0], budget_unit="steps", epoch_steps=200, budget=0.1, base=None)
    assert choice.results[0].steps == choice.final_steps and choice.results[1].steps == choice.final_steps


# ------------------------------------------------------------------------------- through initialize

def test_initialize_alpha_auto_records_the_choice():
    model = mlp()
    rec = ei.initialize(model, "emergence", alpha="auto", data=batches(30), candidates=[2.0], budget_unit="steps", epoch_steps=200,
                        budget=0.1)
    auto = rec.details["auto"]
    assert auto["cost"]["steps"] == rec.backward_passes > 0
    assert rec.forward_passes >= auto["cost"]["steps"]
    assert rec.details["plan"]["alpha"] == auto["chosen"]["alpha"]
    json.dumps(rec.to_dict())
    with pytest.raises(ValueError, match="data-dependent"):
        ei.initialize(mlp(), "emergence", alpha="auto")


def test_old_auto_alpha_skips_alphas_out_of_range():
    torch.manual_seed(0)
    model = mlp(depth=6)
    alpha, trials = ei.auto_alpha(model, torch.randn(4, 8), grid=(2.0, 1e30), schedule="literal",
                                  return_trials=True)
    skipped = [t for t in trials if "skipped" in t]
    assert alpha in (1.0, 2.0) and len(skipped) == 1 and skipped[0]["alpha"] == 1e30


def test_time_budget_counts_copies_traces_and_draws(monkeypatch):
    """A slow launch (an optimizer factory that takes 10 s on a fake clock; a step takes 1 ms) is
    probe cost too: with the default budget_unit "time" the candidates it would not pay for are
    dropped; counting steps only, all run."""
    clock = {"now": 0.0}

    def perf_counter():
        clock["now"] += 0.0005
        return clock["now"]

    def slow_sgd(m):
        clock["now"] += 10.0
        return torch.optim.SGD(m.parameters(), lr=0.05)

    monkeypatch.setattr("emergeinit.auto.time.perf_counter", perf_counter)
    data = batches(30)
    by_steps = choose_init(mlp(), data, candidates=[2.0, 3.0], epoch_steps=200, budget=0.2, optimizer=slow_sgd,
                           budget_unit="steps")
    assert all(r.steps >= 2 for r in by_steps.results)
    by_time = choose_init(mlp(), data, candidates=[2.0, 3.0], epoch_steps=200, budget=0.2, optimizer=slow_sgd)
    assert [r.note for r in by_time.results[1:]] == ["dropped to fit the budget (time)"] * 2
    assert by_time.chosen == BASE and by_time.step_seconds == pytest.approx(0.0005)
    assert by_time.time_fraction > 0.2  # the base's own launch already cost more than the budget


def test_plan_with_alpha_equals_a_new_plan():
    from emergeinit.models import build_model

    model = build_model("resnet20")
    for scope in ("global", "blockwise", "graph"):
        two = ei.plan_emergence(model, alpha=2.0, schedule="normalized", scope=scope)
        three = ei.plan_emergence(model, alpha=3.0, schedule="normalized", scope=scope)
        assert two.with_alpha(3.0).factors == three.factors and two.with_alpha(3.0).alpha == 3.0
    literal = ei.plan_emergence(model, alpha=2.0, schedule="literal")  # e up to ±9.5
    with pytest.raises(ValueError, match="not representable"):
        literal.with_alpha(1e300)


def test_auto_options_are_checked_without_a_model():
    ei.check_options("emergence", {"alpha": "auto", "budget": 0.1, "candidates": [2.0, {"alpha": 3, "scope": "graph"}],
                                   "mode": "fan_out"})
    for options, error in [({"alpha": "auto", "budget": 0}, ValueError),
                           ({"alpha": "auto", "budget_unit": "hours"}, ValueError),
                           ({"alpha": "auto", "candidates": [{"alpha": 2, "scope": "nowhere"}]}, ValueError),
                           ({"alpha": "auto", "schedule": "normalized"}, TypeError),
                           ({"alpha": "auto", "bogus": 1}, TypeError),
                           ({"alpha": "two"}, ValueError)]:
        with pytest.raises(error):
            ei.check_options("emergence", options)


def test_a_lead_that_fades_by_the_last_batch_is_no_win():
    from emergeinit.auto import CandidateResult, _decide, _Run

    g = torch.Generator().manual_seed(0)
    base = [2.0 + 0.1 * torch.randn(64, generator=g) for _ in range(2)]
    strong = [base[0] - 0.5, base[1] - 0.5]  # ahead on both scored batches
    fading = [base[0] - 0.5, base[1] - 0.001 * torch.rand(64, generator=g)]  # ahead in all, barely at the end
    for losses, chosen, note in ((strong, True, ""), (fading, False, "no win on the last batch: its gain")):
        finalist = _Run(CandidateResult(Candidate(2.0), status="finalist"), per_sample=losses)
        picked = _decide(_Run(CandidateResult(BASE), per_sample=base), finalist, 2, 0.01, [])
        assert (picked == Candidate(2.0)) is chosen and finalist.result.note.startswith(note)
        assert finalist.result.difference.high < 0 and finalist.result.last_difference is not None


def test_no_win_while_the_base_is_still_recovering_from_a_bad_start():
    """Base first loss far above chance (here 10 > 2 ln 4) and scored losses still above ln 4: a
    candidate's lead there measures how fast a bad start is corrected, which is no win."""
    from emergeinit.auto import CandidateResult, _decide, _Run

    g = torch.Generator().manual_seed(0)
    base = [3.0 + 0.1 * torch.randn(64, generator=g) for _ in range(2)]
    ahead = [b - 1.0 for b in base]
    for first, chosen in ((10.0, False), (1.5, True)):
        base_run = _Run(CandidateResult(BASE, losses=[first, 3.0, 3.0]), per_sample=base, chance=math.log(4))
        finalist = _Run(CandidateResult(Candidate(2.0), status="finalist"), per_sample=ahead)
        assert (_decide(base_run, finalist, 2, 0.01, []) == Candidate(2.0)) is chosen
        assert chosen or "bad start corrected" in finalist.result.note


def test_a_lead_that_shrinks_over_the_final_is_no_win():
    from emergeinit.auto import CandidateResult, _decide, _Run

    g = torch.Generator().manual_seed(0)
    base = [2.0 + 0.1 * torch.randn(64, generator=g) for _ in range(3)]
    growing = [b - d for b, d in zip(base, (0.2, 0.3, 0.4))]
    shrinking = [b - d for b, d in zip(base, (0.4, 0.3, 0.2))]
    for losses, chosen in ((growing, True), (shrinking, False)):
        finalist = _Run(CandidateResult(Candidate(2.0), status="finalist"), per_sample=losses)
        picked = _decide(_Run(CandidateResult(BASE), per_sample=base), finalist, 2, 0.01, [], final_stage=3)
        assert (picked == Candidate(2.0)) is chosen
        assert chosen or finalist.result.note.startswith("no win: its lead shrank over the final")
