import json

import pytest

from _bench_helpers import write_fashion_mnist
from emergeinit.bench import runner
from emergeinit.bench.config import resolve_config, run_id
from emergeinit.bench.grid import apply_sets, expand_grid, filter_configs, load_grid, shard_configs
from emergeinit.bench.records import append_record, finished_ids, latest_records, read_records
from emergeinit.bench.runner import run_grid
from emergeinit.cli import main as cli_main


def fake_task(config, *, progress=True):
    if config.get("lr") == "boom":
        raise RuntimeError("boom")
    return {"epochs": [{"epoch": 1, "train_loss": 1.0, "test_acc": float(config["seed"])}],
            "emergence_at_init": None, "init_record": None, "diverged": config["seed"] == 99,
            "device": "cpu", "extra": {}}


SPEC = {"task": "image", "protocol": "seed", "defaults": {"model": "mlp"},
        "grid": {"model": ["mlp", "vgg19"], "seed": [0, 1]},
        "cells": [{"init": "kaiming"},
                  {"init": "emergence", "model": "vgg19", "init_options.alpha": 2,
                   "init_options.schedule": ["literal", "normalized"]}]}


def test_grid_expansion_cells_tie_values_and_seed_major_order():
    configs = expand_grid(SPEC)
    assert len(configs) == 2 * 2 + 1 * 2 * 2
    assert [c["seed"] for c in configs] == [0, 0, 0, 0, 1, 1, 1, 1]
    emergence = [c for c in configs if c["init"] == "emergence"]
    assert {c["model"] for c in emergence} == {"vgg19"}
    assert sorted(c["init_options"]["schedule"] for c in emergence) == ["literal", "literal", "normalized", "normalized"]
    assert all(c["init_options"]["alpha"] == 2 for c in emergence)
    assert len({run_id(c) for c in configs}) == 8
    sets = apply_sets(configs, ["lr=0.05", "init_options.base=xavier"])
    assert all(c["lr"] == 0.05 and c["init_options"]["base"] == "xavier" for c in sets)
    assert len(filter_configs(configs, ["model=vgg*", "init=emergence"])) == 4


def test_shards_split_a_grid_into_disjoint_parts_that_cover_it():
    configs = expand_grid(SPEC)
    parts = [shard_configs(configs, f"{i}/3") for i in (1, 2, 3)]
    ids = [[run_id(c) for c in p] for p in parts]
    assert sorted(sum(ids, [])) == sorted(run_id(c) for c in configs)
    assert [len(p) for p in parts] == [3, 3, 2] and parts[0][0] == configs[0] and parts[1][0] == configs[1]
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            shard_configs(configs, bad)


@pytest.mark.parametrize("name, plain, residual, per_seed, residual_scopes", [
    ("sensitivity", "vgg13", "resnet20_bn", 148, {"global", "blockwise", "graph"}),
    ("sensitivity_gpu", "vgg19", "resnet110_bn", 128, {"global", "blockwise"})])
def test_sensitivity_map_config(name, plain, residual, per_seed, residual_scopes):
    """The map (CPU and GPU sizes): 128 runs a seed (the CPU map: 20 more with scope graph); every
    emergence cell has its Kaiming row (same model, options, classifier base, seed) in the grid."""
    configs = [resolve_config(c) for c in load_grid(f"configs/{name}.yaml")]
    seeds = sorted({c["seed"] for c in configs})
    assert len(configs) == per_seed * len(seeds)
    def key(c):
        return c["model"], json.dumps(c["model_options"], sort_keys=True), c["classifier_init"], c["seed"]

    kaiming = {key(c) for c in configs if c["init"] == "kaiming"}
    assert all(key(c) in kaiming for c in configs)
    scopes = {}
    for c in configs:
        if c["init"] == "emergence":
            scopes.setdefault(c["model"], set()).add(c["init_options"].get("scope", "global"))
    assert scopes[plain] == {"global"} and scopes[residual] == residual_scopes
    assert {c["base_init"] for c in configs} == {"model"}


def test_table1_config_file():
    configs = load_grid("configs/table1.yaml")
    # 4 models × 5 seeds × (5 baselines) + emergence: VGG 2 schedules each, ResNet 2 × 2 scopes each
    assert len(configs) == 4 * 5 * 5 + 5 * (2 + 2 + 4 + 4)
    alphas = {(c["model"], c["init_options"]["alpha"]) for c in configs if c["init"] == "emergence"}
    assert alphas == {("vgg19", 2.0), ("resnet110", 2.0), ("vgg19_bn", 5.0), ("resnet110_bn", 5.0)}


def test_run_id_ignores_data_location_only():
    a = {"task": "image", "seed": 0, "data_dir": "/a", "cpu_threads": 1}
    assert run_id(a) == run_id({**a, "data_dir": "/b", "cpu_threads": None})
    assert run_id(a) != run_id({**a, "seed": 1})


def test_resume_after_kill_runs_each_config_once(tmp_path, monkeypatch):
    configs = expand_grid(SPEC)
    results = tmp_path / "r.jsonl"
    calls = []

    def dies_on_third(config, *, progress=True):
        calls.append(config["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is killed mid-grid
        return fake_task(config)

    monkeypatch.setattr(runner, "run_task", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_grid(configs, results, progress=False)
    assert len(read_records(results)) == 2
    with open(results, "ab") as f:  # and the kill tore a write
        f.write(b'{"id": "half a rec')
    monkeypatch.setattr(runner, "run_task", fake_task)
    counts = run_grid(configs, results, progress=False)
    assert counts == {"total": 8, "skipped": 2, "run": 6, "ok": 6, "diverged": 0, "refused": 0, "error": 0}
    records = read_records(results)
    assert len(records) == 8 and len({r["id"] for r in records}) == 8
    assert results.read_bytes().endswith(b"\n") and b"half a rec" not in results.read_bytes()
    again = run_grid(configs, results, progress=False)
    assert again["run"] == 0 and again["skipped"] == 8


def test_error_run_is_recorded_grid_goes_on_and_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_task", fake_task)
    configs = [{"task": "image", "seed": 0, "lr": "boom"}, {"task": "image", "seed": 1},
               {"task": "image", "seed": 99}]
    results2 = tmp_path / "r2.jsonl"
    counts = run_grid(configs, results2, progress=False)
    assert (counts["ok"], counts["diverged"], counts["error"]) == (1, 1, 1)
    rec = {r["config"]["seed"]: r for r in read_records(results2)}
    assert rec[0]["status"] == "error" and rec[0]["error"] == "RuntimeError: boom"
    assert rec[99]["status"] == "diverged" and rec[1]["status"] == "ok"
    assert [rec[k]["outcome"] for k in (0, 1, 99)] == ["error", "ok", "diverged"]
    assert rec[99]["outcome_reason"] == "non-finite training loss"
    for key in ("id", "config", "git_commit", "versions", "device", "started", "wall_s", "epochs"):
        assert key in rec[1]
    again = run_grid(configs, results2, progress=False)  # only the error is retried
    assert (again["run"], again["skipped"]) == (1, 2)
    assert len(latest_records(read_records(results2))) == 3


def test_real_nan_run_is_diverged_and_grid_continues(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=32, n_test=8)
    base = {"task": "image", "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist",
            "data_dir": str(folder), "batch_size": 4, "max_epoch_steps": 4, "train_limit": 16,
            "emergence_batch_size": 4, "device": "cpu", "nan_check_every": 1, "cpu_threads": 1}
    configs = [{**base, "optimizer": "sgd", "lr": 1e30}, {**base, "seed": 1}]
    results = tmp_path / "r.jsonl"
    counts = run_grid(configs, results, progress=False)
    assert (counts["diverged"], counts["ok"]) == (1, 1)
    statuses = [r["status"] for r in read_records(results)]
    assert statuses == ["diverged", "ok"]
    json.loads(results.read_text().splitlines()[0])  # strict JSON lines


def test_append_record_cuts_only_a_torn_tail(tmp_path):
    p = tmp_path / "r.jsonl"
    append_record(p, {"id": "a"})
    p.write_bytes(p.read_bytes() + b'{"id": "b", "tor')
    assert [r["id"] for r in read_records(p)] == ["a"]
    append_record(p, {"id": "c"})
    assert [r["id"] for r in read_records(p)] == ["a", "c"]


def test_append_keeps_a_whole_last_record_that_lost_its_newline(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id":"a","status":"ok"}\n{"id":"b","status":"ok"}')  # an editor stripped the newline
    append_record(p, {"id": "c", "status": "ok"})
    assert [r["id"] for r in read_records(p)] == ["a", "b", "c"]
    assert p.read_text().endswith("\n")


def test_append_cuts_only_the_torn_last_line_however_long_the_file(tmp_path):
    p = tmp_path / "r.jsonl"
    big = {"id": "big", "status": "ok", "blob": "x" * (3 << 20)}  # a line longer than any read window
    p.write_text(json.dumps(big) + "\n" + '{"id": "torn", "sta')
    append_record(p, {"id": "c", "status": "ok"})
    assert [r["id"] for r in read_records(p)] == ["big", "c"]
    p.write_text('{"id": "only one torn line')  # no newline anywhere: the one line is torn
    append_record(p, {"id": "d", "status": "ok"})
    assert [r["id"] for r in read_records(p)] == ["d"]
    p.write_text(json.dumps(big))  # one whole record, no newline, longer than 1 MiB
    append_record(p, {"id": "e", "status": "ok"})
    assert [r["id"] for r in read_records(p)] == ["big", "e"]


def test_records_written_under_old_key_names_still_count_as_done(tmp_path, monkeypatch):
    old = {"task": "translation", "protocol": "cpu_small", "data": "trans-de-en", "threads": 2,
           "max_epochs": 5, "clip_norm": 0.0, "warmup_updates": 300, "seed": 0}
    results = tmp_path / "r.jsonl"
    append_record(results, {"id": "an-old-id", "status": "ok", "config": old, "epochs": []})
    monkeypatch.setattr(runner, "run_task", fake_task)
    counts = run_grid([{"task": "translation", "dataset": "trans-de-en", "seed": 0}], results, progress=False)
    assert (counts["skipped"], counts["run"]) == (1, 0)


def test_the_committed_results_match_their_configs_under_the_new_key_names():
    for name in ("table2_cpu", "table1_cpu_slice"):
        configs = load_grid(f"configs/{name}.yaml")
        if name == "table1_cpu_slice":  # made before base_init: each method drew its own base
            configs = apply_sets(configs, ["base_init=null"])
        ids = {run_id(resolve_config(c)) for c in configs}
        assert ids <= finished_ids(f"results/{name}.jsonl"), name


def test_records_made_before_base_init_do_not_count_for_the_protocol_base():
    """table1_cpu_slice ran with a fan_in Kaiming redraw; under the table1 base (GradInit's code's
    init) those runs are not done: they must run again, not be passed off as the new ones. The file
    now also holds the Kaiming and normalized rows rerun from the new base; the literal rows are not."""
    path = "results/table1_cpu_slice.jsonl"
    ids = {run_id(resolve_config(c)) for c in load_grid("configs/table1_cpu_slice.yaml")}
    old = [r for r in read_records(path) if "base_init" not in r["config"]]
    assert len(old) == 18 and not {r["id"] for r in old} & ids
    done = ids & finished_ids(path)
    rerun = [r for r in read_records(path) if r["id"] in done]
    assert len(done) == 12 and {r["config"]["base_init"] for r in rerun} == {"model"}
    assert all(r["config"]["init"] == "kaiming" or r["config"]["init_options"]["schedule"] == "normalized"
               for r in rerun)


# --------------------------------------------------------------- configs checked before any run

def test_a_typo_in_init_options_stops_the_grid_before_its_first_run(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "run_task", lambda config, progress=True: calls.append(config) or fake_task(config))
    results = tmp_path / "r.jsonl"
    configs = apply_sets(expand_grid(SPEC), ["init_options.alpah=3"])
    # the seed protocol's Kaiming row is its base: options there are base options, not the method's
    with pytest.raises(ValueError, match=r"(?s)8 of 8 configs are invalid, nothing was run.*the kaiming row is "
                                         r"the base itself.*'alpah'.*unknown option 'alpah'") as err:
        run_grid(configs, results, progress=False)
    assert "4 config(s)" in str(err.value)  # one line per distinct problem, not per run
    assert calls == [] and not results.exists()
    bad = [{"task": "image", "init": "lsuv", "init_options": {"target_var": 0}},
           {"task": "image", "init": "emergence", "init_options": {"schedule": "normalized"}}]
    with pytest.raises(ValueError, match=r"(?s)2 of 2 .*target_var must be a positive.*missing a required argument"):
        run_grid(bad, results, progress=False)
    grid = tmp_path / "g.yaml"
    # base_init null: kaiming's own options (a Kaiming row on a base takes none, test_bench_base)
    grid.write_text("task: image\nprotocol: seed\ndefaults: {base_init: null}\ngrid: {init: [kaiming], seed: [0]}\n")
    assert cli_main(["compare", "--config", str(grid), "--results", str(results), "--set",
                     "init_options.mode=fan_avg", "--dry-run"]) == 2
    assert "mode must be one of 'fan_in', 'fan_out', got 'fan_avg'" in capsys.readouterr().err
    assert calls == [] and not results.exists()


def test_translation_init_options_are_checked_as_apply_init_uses_them():
    from emergeinit.bench.runner import check_configs

    def config(init, **options):
        return resolve_config({"task": "translation", "init": init, "init_options": options})

    check_configs([config("default"), config("xavier"), config("tfixup"), config("emergence", alpha=5.0),
                   config("emergence_encdec", beta_dec=2.0)])
    for bad, match in [(config("emergence_encdec", beta_dec=0.0), "beta_dec must be a positive"),
                       (config("emergence_encdec", alpha=2.0), "unexpected keyword argument 'alpha'"),
                       (config("default", alpha=2.0), "'default' takes no options"),
                       (config("emergence", scope="local"), "unknown scope")]:
        with pytest.raises(ValueError, match=match):
            check_configs([bad])


def test_yaml_exponent_floats_are_floats_in_grid_files_and_sets(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("task: image\ndefaults: {lr: 1.0e-3, weight_decay: 5e-4}\n"
                    "grid: {init_options.alpha: [1.0e6, 2e0], seed: [0]}\n")
    configs = load_grid(grid)
    assert [c["init_options"]["alpha"] for c in configs] == [1e6, 2.0]
    assert all(c["lr"] == 1e-3 and c["weight_decay"] == 5e-4 for c in configs)
    assert apply_sets(configs, ["lr=1.0e6"])[0]["lr"] == 1e6
    assert apply_sets(configs, ["lr=2.5E-4", "data_dir=1e6x"])[0] == {**configs[0], "lr": 2.5e-4,
                                                                      "data_dir": "1e6x"}


def test_train_with_a_bad_init_option_appends_nothing(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert cli_main(["train", "--model", "mlp", "--init", "lsuv", "--set", "init_options.target_var=0",
                     "--results", str(results)]) == 2
    assert "target_var must be a positive" in capsys.readouterr().err and not results.exists()


def test_train_flag_base_none_means_no_base():
    import argparse

    from emergeinit.bench.commands.train import add_arguments, config_from_args
    from emergeinit.bench.runner import check_configs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--init", "emergence", "--alpha", "2", "--base", "none"]))
    assert config["init_options"] == {"alpha": 2.0, "base": None}
    check_configs([config])  # once "none", a string every run refused


def test_an_init_the_dtype_cannot_hold_is_refused_once_not_retried(tmp_path, monkeypatch):
    import emergeinit as ei

    configs = expand_grid(SPEC)[:2]
    results = tmp_path / "r.jsonl"
    calls = []

    def refuses(config, *, progress=True):
        calls.append(config["seed"])
        if len(calls) == 1:
            raise ei.UnrepresentableError("factor 5**-54.5 of conv1.weight underflows to zero in torch.float32")
        return fake_task(config)

    monkeypatch.setattr(runner, "run_task", refuses)
    counts = run_grid(configs, results, progress=False)
    assert (counts["refused"], counts["ok"], counts["error"]) == (1, 1, 0)
    (refused,) = [r for r in read_records(results) if r["status"] == "refused"]
    assert refused["outcome"] == "refused" and "underflows" in refused["error"]
    again = run_grid(configs, results, progress=False)  # finished: the same config refuses every time
    assert again["run"] == 0 and again["skipped"] == 2 and len(calls) == 2


def test_the_core_raises_unrepresentable_for_factors_past_the_dtype():
    import torch
    import emergeinit as ei

    net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(40)])
    with pytest.raises(ei.UnrepresentableError, match="underflows|subnormal"):
        ei.emergence_init_(net, alpha=100.0, schedule="literal")
    with pytest.raises(ValueError):  # still a ValueError for callers that catch those
        ei.emergence_init_(net, alpha=100.0, schedule="literal")
