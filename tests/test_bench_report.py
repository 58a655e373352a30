import json

import pytest

from emergeinit.bench.commands.demo import DEMO_SPEC
from emergeinit.bench.grid import expand_grid, load_grid
from emergeinit.bench.records import group_records
from emergeinit.bench.report import bold_best, markdown_table, mean_std
from emergeinit.cli import main as cli_main


def record(model, init, seed, accs, status="ok", options=None, extra_epoch=None, log10=8.0):
    config = {"task": "image", "protocol": "table1", "dataset": "fashion-mnist-32", "model": model,
              "init": init, "init_options": options or {}, "extra_epoch": extra_epoch, "seed": seed,
              "epochs": len(accs)}
    epochs = [{"epoch": i + 1, "phase": "main", "train_loss": 2.0 - 0.1 * i, "test_acc": a,
               "loss_curve": [2.3, 2.0 - 0.1 * i]} for i, a in enumerate(accs)]
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
    assert rows["kaiming"] == "| kaiming | 41.0 ± 1.4 (n=2) | **80.5 ± 0.7 (n=2)** |"
    assert "**46.0 ± 1.4 (n=2, 1 diverged)**" in rows["emergence (normalized, α=2)"]
    assert "30.0 (n=1)" in rows["kaiming +1 epoch (warmup)"]
    best = text.split("### Acc_best")[1].split("###")[0]
    assert "**56.0 ± 1.4 (n=2, 1 diverged)**" in best and "51.0 ± 1.4 (n=2)" in best
    assert "9.00 ± 0.00 (n=3, 1 diverged)" in text.split("### log10 E")[1]
    for name in ("fig2_loss_emergence.png", "fig3_mlp.png", "active_fraction.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text


def test_demo_grid_equals_its_config_file():
    assert expand_grid(DEMO_SPEC) == load_grid("configs/demo.yaml")
    assert len(expand_grid(DEMO_SPEC)) == 4 * 3


def test_report_on_a_missing_path_fails_and_writes_nothing(tmp_path, results_file, capsys):
    missing = tmp_path / "typo.jsonl"
    assert cli_main(["report", str(results_file), str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such results file" in err and str(missing) in err
    assert not (tmp_path / "out").exists()
