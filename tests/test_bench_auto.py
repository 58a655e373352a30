"""The harness's emergence options: alpha auto, alpha_from_lr (eq 11), layerwise_lr; and `init --alpha auto`."""

import json
import math

import pytest
import torch

import emergeinit as ei
from _bench_helpers import write_fashion_mnist
from emergeinit.bench.config import resolve_config
from emergeinit.bench.image import run
from emergeinit.bench.loop import train_steps

TINY = {"batch_size": 4, "eval_batch_size": 8, "max_epoch_steps": 2, "train_limit": 16, "test_limit": 8,
        "emergence_batch_size": 4, "init_batch_size": 4, "device": "cpu", "epochs": 1, "cpu_threads": 1,
        "model": "mlp", "dataset": "fashion-mnist", "init": "emergence"}


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=16, n_test=8)


def test_auto_that_keeps_the_base_trains_exactly_like_alpha_1(fm_dir):
    """The probe reads its batches from a generator of its own and runs under fork_rng: when it keeps
    the base, the run is the α = 1 run, step for step."""
    common = {**TINY, "data_dir": str(fm_dir)}
    auto = run({**common, "init_options": {"alpha": "auto", "budget": 10, "min_gain": 1e9,
                                           "candidates": [{"alpha": 2.0}]}}, progress=False)
    plain = run({**common, "init_options": {"alpha": 1.0, "schedule": "normalized"}}, progress=False)
    details = auto["init_record"]["details"]["auto"]
    assert details["chosen"]["alpha"] == 1.0 and details["cost"]["steps"] > 0
    assert details["cost"]["epoch_steps"] == 2 and details["cost"]["budget_steps"] == 20
    assert auto["epochs"][0]["loss_curve"] == plain["epochs"][0]["loss_curve"]
    assert auto["extra"]["acc_1"] == plain["extra"]["acc_1"]
    json.dumps(auto)


def test_auto_probe_uses_the_run_optimizer_and_clip(fm_dir):
    r = run({**TINY, "data_dir": str(fm_dir), "protocol": "seed", "lr": 0.01,
             "init_options": {"alpha": "auto", "budget": 6, "candidates": [2.0, {"alpha": 3, "scope": "global"}]}},
            progress=False)
    auto = r["init_record"]["details"]["auto"]
    assert [c["alpha"] for c in auto["candidates"]] == [1.0, 2.0, 3.0]
    assert auto["cost"]["steps"] <= 12
    assert r["init_record"]["options"]["clip_grad_norm"] is None


def test_alpha_from_lr_is_eq_11_with_depth_the_weight_layers(fm_dir):
    r = run({**TINY, "data_dir": str(fm_dir), "lr": 0.1,
             "init_options": {"alpha_from_lr": {"alpha0": 2.0, "lr0": 1e-3}, "schedule": "normalized"}},
            progress=False)
    rule = r["init_record"]["details"]["alpha_from_lr"]
    assert rule["depth"] == 4 and rule["lr"] == 0.1
    assert rule["alpha"] == pytest.approx(2.0 * (1e-3 / 0.1) ** 0.25)
    assert r["init_record"]["details"]["plan"]["alpha"] == pytest.approx(rule["alpha"])
    with pytest.raises(ValueError, match="alpha0 and lr0"):
        run({**TINY, "data_dir": str(fm_dir), "init_options": {"alpha_from_lr": {"alpha0": 2.0}}}, progress=False)
    with pytest.raises(ValueError, match="both alpha and alpha_from_lr"):
        run({**TINY, "data_dir": str(fm_dir),
             "init_options": {"alpha": 2.0, "alpha_from_lr": {"alpha0": 2.0, "lr0": 1e-3}}}, progress=False)


def test_layerwise_lr_groups_scale_the_scheduled_rate(fm_dir):
    assert resolve_config({})["layerwise_lr"] is False
    r = run({**TINY, "data_dir": str(fm_dir), "init": "kaiming", "layerwise_lr": True}, progress=False)
    scales = r["extra"]["lr_scales"]
    assert list(scales) == ["net.1.weight", "net.3.weight", "net.5.weight", "net.7.weight"]
    assert math.exp(sum(math.log(v) for v in scales.values()) / 4) == pytest.approx(1.0)
    assert len(set(round(v, 9) for v in scales.values())) > 1 and r["extra"]["acc_1"] is not None


def test_train_steps_multiplies_each_group_rate_by_its_lr_scale():
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [w1], "lr_scale": 0.5}, {"params": [w2]}], lr=1.0)
    batches = [None] * 2
    train_steps(opt, batches, lambda b: ((w1.sum() + w2.sum()), torch.zeros(())), total=2, lr_at=lambda s: 0.1 * (s + 1))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert torch.allclose(w1, torch.ones(2) - 0.5 * (0.1 + 0.2)) and torch.allclose(w2, torch.ones(2) - (0.1 + 0.2))


def test_cli_init_alpha_auto_on_random_data(capsys):
    from emergeinit.cli import main

    assert main(["init", "--model", "mlp", "--alpha", "auto", "--batch-size", "8", "--budget", "0.02",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choice"]["cost"]["epoch_steps"] == 469 and out["choice"]["cost"]["steps"] <= 0.02 * 469
    assert out["plan"]["alpha"] == out["choice"]["chosen"]["alpha"]
    with pytest.raises(SystemExit):
        main(["init", "--model", "mlp", "--alpha", "two"])


def test_grid_check_knows_the_harness_emergence_options():
    from emergeinit.bench.image import check_init

    check_init(resolve_config({"init": "emergence", "init_options": {"alpha_from_lr": {"alpha0": 2, "lr0": 1e-3}}}))
    check_init(resolve_config({"init": "emergence", "init_options": {"alpha": "auto", "budget": 0.2}}))
    with pytest.raises(ValueError, match="alpha0 and lr0"):
        check_init(resolve_config({"init": "emergence", "init_options": {"alpha_from_lr": {"alpha0": 2}}}))
    with pytest.raises(ValueError, match="lr0"):
        check_init(resolve_config({"init": "emergence",
                                   "init_options": {"alpha_from_lr": {"alpha0": 2, "lr0": -1}}}))


def _record(seed, acc, alpha, model="vgg19", chosen=None, init="emergence", mode="fan_in"):
    options = {} if init == "kaiming" else {"alpha": alpha, **({"mode": mode} if mode else {})}
    details = {"auto": {"chosen": chosen, "cost": {"fraction_of_epoch": 0.049}}} if alpha == "auto" else {}
    return {"task": "image", "status": "ok", "config": {"model": model, "protocol": "table1", "dataset": "fm",
                                                        "seed": seed, "init": init, "init_options": options},
            "epochs": [{"epoch": 1, "phase": "main", "test_acc": acc}], "init_record": {"details": details}}


def test_auto_report_pairs_seeds_and_judges_each_column():
    from emergeinit.bench.auto_report import auto_rows
    from emergeinit.bench.report import image_report

    two = {"alpha": 2.0, "label": "α=2 normalized global"}
    base = {"alpha": 1.0, "label": "base (α=1)"}
    records = []
    for seed, (b, a, fixed, pick) in enumerate([(40.0, 45.0, 46.0, two), (42.0, 42.0, 47.0, base),
                                                (41.0, 47.0, 48.0, two)]):
        records += [_record(seed, b, 1.0), _record(seed, a, "auto", chosen=pick), _record(seed, fixed, 2.0)]
    # a second column (another model) whose auto loses in every seed, against its kaiming row
    for seed, (b, a) in enumerate([(50.0, 40.0), (51.0, 41.0), (52.0, 40.5)]):
        records += [_record(seed, b, None, "resnet20", init="kaiming"),
                    _record(seed, a, "auto", "resnet20", chosen=two, mode=None)]
    rows = {r["config"]["model"]: r for r in auto_rows(records)}
    vgg, res = rows["vgg19"], rows["resnet20"]
    assert vgg["base_row"] == "α=1" and res["base_row"] == "kaiming"
    assert vgg["difference"].mean == pytest.approx((5 + 0 + 6) / 3) and vgg["difference"].n == 3
    assert vgg["never_worse"] is True and vgg["above_one"] == 2 and vgg["gain_taken"] is True
    assert len(vgg["gains"]) == 1 and vgg["gains"][0][1].low > 0
    assert res["difference"].high < 0 and res["never_worse"] is False and res["gains"] == []
    assert res["gain_taken"] is None and vgg["cost"] == pytest.approx(0.049)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        text = image_report(records, out)
    assert "alpha: auto against its base init" in text and "**no**" in text


def test_demo_names_what_auto_picked_in_each_seed():
    from emergeinit.bench.auto_report import picked_text
    from emergeinit.bench.commands.demo import _auto_picks

    records = [_record(1, 60.0, "auto", chosen={"label": "normalized α=2 blockwise", "alpha": 2.0}),
               _record(0, 55.0, "auto", chosen={"label": "the base (α=1)", "alpha": 1.0}),
               _record(0, 50.0, 2.0), _record(2, 10.0, "auto")]
    assert picked_text(records[0]) == "normalized α=2 blockwise"
    assert picked_text(records[3]) == "no choice recorded"
    assert _auto_picks(records) == ("seed 0: the base (α=1); seed 1: normalized α=2 blockwise; "
                                    "seed 2: no choice recorded")
    assert _auto_picks(records[2:3]) == ""


def test_auto_pairs_with_map_runs_made_before_speed_keys_existed_and_names_what_splits_a_model():
    from emergeinit.bench.auto_report import auto_rows
    from emergeinit.bench.report import auto_section

    def real(seed, acc, init, classifier, **extra):
        options = {"alpha": "auto"} if init == "auto" else {}
        config = {"task": "image", "protocol": "table1", "model": "resnet20", "dataset": "fashion-mnist-16",
                  "seed": seed, "init": "emergence" if init == "auto" else "kaiming", "init_options": options,
                  "base_init": "model", "classifier_init": classifier, **extra}
        details = {"auto": {"chosen": {"alpha": 1.0, "label": "base (α=1)"}}} if init == "auto" else {}
        return {"task": "image", "status": "ok", "config": config, "init_record": {"details": details},
                "epochs": [{"epoch": 1, "phase": "main", "test_acc": acc}]}

    records = []
    for seed in range(3):
        for classifier in (None, "kaiming"):
            # the map's run: an older commit, no speed keys, two threads; auto's: today's keys
            records.append(real(seed, 40.0 + seed, "kaiming", classifier, cpu_threads=2))
            records.append(real(seed, 40.0 + seed, "auto", classifier, cpu_threads=1, compile=False,
                                optimizer_impl=None, eval_batch_size=500))
    rows = auto_rows(records)
    assert len(rows) == 2 and all(r["difference"].n == 3 and r["difference"].mean == 0 for r in rows)
    text = auto_section(records)
    assert "classifier_init=kaiming (kaiming row)" in text and "classifier_init=null (kaiming row)" in text
