import json
import math
import statistics

import pytest

from emergeinit.bench.commands.demo import DEMO_SPEC
from emergeinit.bench.grid import expand_grid, load_grid
from emergeinit.bench import plots
from emergeinit.bench.records import classify_run, group_records
from emergeinit.bench.report import (
    bold_best, image_cells, image_report, markdown_table, mean_std, paired_deltas, paired_interval,
)
from emergeinit.cli import main as cli_main


def record(model, init, seed, accs, status="ok", options=None, extra_epoch=None, log10=8.0, curve=None, **keys):
    config = {"task": "image", "protocol": "table1", "dataset": "fashion-mnist-32", "model": model,
              "init": init, "init_options": options or {}, "extra_epoch": extra_epoch, "seed": seed,
              "epochs": 2, **keys}
    epochs = [{"epoch": i + 1, "phase": "main", "train_loss": 2.0 - 0.1 * i, "test_acc": a,
               "loss_curve": curve or [2.3, 2.0 - 0.1 * i]} for i, a in enumerate(accs)]
    layers = [{"name": f"l{i}", "nodes": 10, "active": 2 * i + 2} for i in range(3)]
    return {"id": f"{model}-{init}-{seed}-{extra_epoch}-{json.dumps(options)}", "task": "image",
            "config": config, "status": status, "epochs": epochs, "device": "test-cpu",
            "emergence_at_init": {"value": 10 ** log10, "log10": log10, "layers": layers},
            "error": None}


@pytest.fixture
def results_file(tmp_path):
    em = {"alpha": 2.0, "schedule": "normalized"}
    recs = [
        record("vgg19", "kaiming", 0, [40.0, 50.0]), record("vgg19", "kaiming", 1, [42.0, 52.0]),
        record("vgg19", "emergence", 0, [45.0, 55.0], options=em, log10=9.0),
        record("vgg19", "emergence", 1, [47.0, 57.0], options=em, log10=9.0),
        record("vgg19", "emergence", 2, [], status="diverged", options=em, log10=9.0),
        record("vgg19", "kaiming", 0, [30.0, 31.0], extra_epoch="warmup"),
        record("mlp", "kaiming", 0, [80.0, 82.0]), record("mlp", "kaiming", 1, [81.0, 83.0]),
    ]
    p = tmp_path / "results.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"id": "torn')
    return p


def test_helpers():
    assert mean_std([46.0, 46.4, 46.2]) == "46.2 ± 0.2"
    assert mean_std([46.25]) == "46.2" and mean_std([]) == "—" and mean_std([float("nan")]) == "—"
    assert bold_best(["a", "b", "c"], [1.0, 3.0, None]) == ["a", "**b**", "c"]
    assert markdown_table(["x", "y"], [[1, 2]]) == "| x | y |\n| --- | --- |\n| 1 | 2 |"
    groups = group_records([{"a": {"b": 1}}, {"a": {"b": 2}}, {"a": {"b": 1}}], ["a.b"])
    assert {k: len(v) for k, v in groups.items()} == {(1,): 2, (2,): 1}


def test_report_table_and_plots_from_results_file(results_file, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli_main(["report", str(results_file), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## table1 protocol on fashion-mnist-32" in text
    acc1 = text.split("### Acc_1")[1].split("###")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in acc1.splitlines() if line.startswith("| ")}
    assert rows["kaiming"] == "| kaiming | 41.0 ± 1.4 (n=2), all ok | **80.5 ± 0.7 (n=2), all ok** |"
    assert ("**46.0 ± 1.4 (n=2); ok runs 46.0 ± 1.4 (n=2); 2 ok, 1 diverged**"
            in rows["emergence (normalized, α=2)"])
    assert "30.0 (n=1), all ok" in rows["kaiming +1 epoch (warmup)"]
    best = text.split("### Acc_best")[1].split("###")[0]
    assert "**56.0 ± 1.4 (n=2); ok runs" in best and "51.0 ± 1.4 (n=2), all ok" in best
    assert "| 9.00 ± 0.00 (n=3) |" in text.split("### log10 E")[1]
    delta = text.split("### Acc_1 − Kaiming")[1].split("###")[0]
    # seeds 0 and 1 paired: +5, +5 -> mean 5, a zero-width interval; the warm-up row has seed 0 only
    assert "| emergence (normalized, α=2) | +5.0 [+5.0, +5.0] (pairs=2); 2 ok, 1 diverged |" in delta
    assert "| kaiming +1 epoch (warmup) | -10.0 (pairs=1); 1 ok |" in delta
    for name in ("fig2_loss_emergence.png", "fig3_mlp.png", "active_fraction.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text


def test_demo_grid_equals_its_config_file():
    assert expand_grid(DEMO_SPEC) == load_grid("configs/demo.yaml")
    assert len(expand_grid(DEMO_SPEC)) == 5 * 5


def test_report_on_a_missing_path_fails_and_writes_nothing(tmp_path, results_file, capsys):
    missing = tmp_path / "typo.jsonl"
    assert cli_main(["report", str(results_file), str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such results file" in err and str(missing) in err
    assert not (tmp_path / "out").exists()


def test_runs_are_classified_and_a_huge_finite_loss_is_not_ok():
    ok = record("vgg19", "kaiming", 0, [40.0])
    assert classify_run(ok) == ("ok", "")
    chance = record("vgg19", "kaiming", 0, [11.9])
    assert classify_run(chance)[0] == "failed" and "chance" in classify_run(chance)[1]
    assert classify_run(record("vgg19", "kaiming", 0, [12.1]))[0] == "ok"
    blown = record("vgg19", "kaiming", 0, [35.0], curve=[2.3, 1e31])
    blown["extra"] = {"first_loss": 2.3}
    assert classify_run(blown)[0] == "failed" and "1e+31" in classify_run(blown)[1]
    # records made before first_loss: the first loss-curve point stands in for the first step
    old = record("vgg19", "kaiming", 0, [35.0], curve=[2.0, 25.0])
    assert classify_run(old)[0] == "failed"
    assert classify_run(record("vgg19", "kaiming", 0, [], status="diverged"))[0] == "diverged"
    err = record("vgg19", "kaiming", 0, [], status="error")
    err["error"] = "RuntimeError: boom"
    assert classify_run(err) == ("error", "RuntimeError: boom")
    cifar100ish = record("vgg19", "kaiming", 0, [11.0])
    cifar100ish["extra"] = {"num_classes": 100}  # chance 1%: 11% is a result, not a failure
    assert classify_run(cifar100ish)[0] == "ok"


def test_a_cell_pools_only_runs_that_differ_in_the_seed():
    """Issue 9.2: runs of 20000 images / 1 epoch and of 60000 / 2 epochs were pooled into one
    'kaiming' cell; now they are two rows, each named by the keys that differ."""
    recs = [record("vgg19", "kaiming", s, [80.0 + s], train_limit=20000, epochs=1) for s in range(3)]
    recs += [record("vgg19", "kaiming", s, [90.0 + s, 91.0], train_limit=60000) for s in range(3)]
    recs += [record("vgg19", "emergence", 0, [50.0], options={"alpha": 2.0}, train_limit=20000, epochs=1)]
    cells = image_cells(recs)
    rows = sorted(r for r, _ in cells)
    assert rows == ["emergence (α=2)", "kaiming · epochs=1, train_limit=20000",
                    "kaiming · epochs=2, train_limit=60000"]
    assert cells["kaiming · epochs=1, train_limit=20000", "vgg19"].values("acc_1") == [80.0, 81.0, 82.0]
    # a device or data folder is no reason to split: those keys cannot change a result
    same = [record("vgg19", "kaiming", 0, [1.0], data_dir="/a"), record("vgg19", "kaiming", 1, [2.0], data_dir="/b")]
    assert [len(c.records) for c in image_cells(same).values()] == [2]
    deltas = paired_deltas(cells)
    assert [(d.row, d.diffs) for d in deltas] == [("emergence (α=2)", [50.0 - 80.0])]


def test_paired_interval_is_the_paired_t_interval():
    mean, lo, hi = paired_interval([2.0, 4.0, 9.0])
    sd = statistics.stdev([2.0, 4.0, 9.0])
    assert mean == 5.0 and hi - mean == pytest.approx(4.30265273 * sd / math.sqrt(3), rel=1e-8) and mean - lo == pytest.approx(hi - mean)
    assert paired_interval([3.0]) == (3.0, None, None) and paired_interval([]) == (None, None, None)


def test_alpha_map_heatmap_and_log_loss_axes(tmp_path, monkeypatch):
    recs = []
    for s in range(2):
        recs.append(record("resnet20", "kaiming", s, [50.0 + s]))
        for alpha in (1.5, 2.0, 5.0):
            for schedule in ("normalized", "literal"):
                acc = 10.0 if (alpha == 5.0 and schedule == "literal") else 50.0 + alpha + s
                recs.append(record("resnet20", "emergence", s, [acc], options={"alpha": alpha, "schedule": schedule},
                                   curve=[2.3, 1e9] if acc == 10.0 else None))
    axes = {}
    real_save = plots._save

    def spy(plt, fig, path, **kw):
        axes[path.name] = [ax.get_yscale() for ax in fig.axes if ax.get_visible()]
        return real_save(plt, fig, path, **kw)

    monkeypatch.setattr(plots, "_save", spy)
    text = image_report(recs, tmp_path)
    assert "![Acc_1 − Kaiming by α (table1 on fashion-mnist-32)](alpha_map_0.png)" in text
    assert (tmp_path / "alpha_map_0.png").read_bytes()[:4] == b"\x89PNG"
    assert axes["fig2_loss_emergence.png"] == ["log"]
    delta = text.split("### Acc_1 − Kaiming")[1].split("###")[0]
    assert "| emergence (literal, α=5) | -40.5 [-46.9, -34.1] (pairs=2); 2 failed |" in delta
    assert "| emergence (normalized, α=2) | +2.0 [+2.0, +2.0] (pairs=2); 2 ok |" in delta
    cells = [c for c in (plots_cells(recs)) if c["alpha"] == 5.0 and c["row"] == "emergence (literal)"]
    assert cells and cells[0]["counts"]["failed"] == 2


def plots_cells(recs):
    from emergeinit.bench.report import _heat_cell

    return [_heat_cell(d) for d in paired_deltas(image_cells(recs))]


def test_describe_says_what_the_interval_shows():
    from types import SimpleNamespace

    from emergeinit.bench.commands.demo import describe

    def delta(diffs, counts):
        return SimpleNamespace(row="em", diffs=diffs, counts=counts, interval=paired_interval(diffs))

    ok = {"ok": 3, "failed": 0, "diverged": 0, "error": 0}
    assert describe(delta([4.0, 5.0, 6.0], ok)) == (
        "em: +5.0 points against Kaiming (higher in 3 of 3 seeds; 95% interval [+2.5, +7.5]): "
        "a gain these seeds establish.")
    assert "not settled by these seeds" in describe(delta([9.0, -2.0, 5.0], ok))
    lost = describe(delta([-40.0, -38.0], {"ok": 0, "failed": 2, "diverged": 1, "error": 0}))
    assert lost.endswith("a loss these seeds establish; 3 of its 3 runs failed to train or diverged.")
    assert describe(delta([], {"ok": 0, "failed": 0, "diverged": 2, "error": 0})).startswith("em: no seed")
    assert describe(delta([0.0] * 5, {"ok": 5, "failed": 0, "diverged": 0, "error": 0})) == (
        "em: the same Acc_1 as Kaiming in all 5 seeds.")
    assert "not settled" in describe(delta([0.0, 0.0, 1.0], ok))


def test_demo_command_runs_a_grid_and_prints_the_paired_table(tmp_path, capsys):
    from _bench_helpers import write_fashion_mnist

    folder = write_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(json.dumps({
        "task": "image", "protocol": "table1",
        "defaults": {"dataset": "fashion-mnist-16", "model": "vgg11", "model_options": {"width": 0.0625},
                     "batch_size": 4, "max_epoch_steps": 2, "emergence_batch_size": 4, "eval_batch_size": 8},
        "grid": {"seed": [0, 1]},
        "cells": [{"init": "kaiming"}, {"init": "emergence", "init_options.alpha": 2.0,
                                        "init_options.schedule": "normalized"}]}))
    args = ["demo", "--config", str(grid), "--data-dir", str(folder), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--no-progress"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "Acc_1 − Kaiming, seed-paired [95%]" in text and "(pairs=2)" in text
    sentence = text.split("- emergence (normalized, α=2): ")[1].splitlines()[0]
    assert "points against Kaiming" in sentence or sentence == "the same Acc_1 as Kaiming in all 2 seeds."
    assert (tmp_path / "out" / "image_report.md").exists()
    assert cli_main(args) == 0 and "0 runs now, 4 reused" in capsys.readouterr().out
