"""The GPU scripts' smoke mode: every part of scripts/gpu_table1.sh and scripts/gpu_table2.sh runs
its real code path (compare --jobs 2, time-boxed parts, the part's status, the report) on the CPU
at tiny sizes, on data written here in the real formats."""

import os
import subprocess
import sys
from pathlib import Path

from _bench_helpers import write_fashion_mnist
from emergeinit.bench.grid import load_grid
from emergeinit.bench.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def _smoke(script, tmp_path, data_dir):
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE_DIR": str(tmp_path / "out"), "DATA_DIR": str(data_dir)}
    for key in ("SEEDS", "JOBS", "RESULTS", "COMPILE", "EPOCHS", "DATASET"):
        env.pop(key, None)
    return subprocess.run(["bash", str(ROOT / "scripts" / script), "smoke"], env=env, capture_output=True,
                          text=True, timeout=600)


def _refused(record):
    """A run the core refuses before any weight changes: eq 8's literal schedule over ResNet-110's
    110 layers scales the first conv by 5^-54.5, below float32's normal range."""
    c, error = record["config"], record.get("error") or ""
    refused = "underflows torch.float32" in error or "subnormal or zero" in error
    return (record["status"] == "refused" and refused and c["model"] == "resnet110_bn"
            and c["init_options"]["schedule"] == "literal" and c["init_options"]["scope"] == "global")


def test_gpu_table1_smoke_runs_every_part_and_reports(tmp_path):
    data = write_fashion_mnist(tmp_path / "fm", n_train=32, n_test=16)
    done = _smoke("gpu_table1.sh", tmp_path, data)
    out = done.stdout
    records = read_records(tmp_path / "out" / "table1_smoke.jsonl")
    expected = [c for c in load_grid(ROOT / "configs" / "table1.yaml") if c["seed"] == 0]
    assert len(records) == len(expected) == 32, out + done.stderr[-3000:]
    failed = [r for r in records if r["status"] == "error"]
    assert all(r["status"] in ("ok", "diverged") or _refused(r) for r in records), [r["error"] for r in failed]
    # the parts' status lines: every run tried and finished, the refused one too (it is not retried)
    assert not failed and out.count("todo 0") == 3 and "error 0 " in out
    assert sum(map(_refused, records)) == 1
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert {r["config"]["model"] for r in records} == {"vgg19", "vgg19_bn", "resnet110", "resnet110_bn"}
    for r in records:  # the GPU settings, on the CPU (bf16 autocast is CUDA's only; compile is slow there)
        c = r["config"]
        assert (c["device"], c["amp"], c["optimizer_impl"], c["channels_last"], c["compile"]) == \
            ("cpu", True, "fused", True, False)
    assert "Acc_1" in (tmp_path / "out" / "table1_smoke_report" / "report.md").read_text()


def _corpus(path):
    subjects = ["Der Mann", "Die Frau", "Das Kind", "Der Lehrer", "Die Ärztin", "Mein Bruder"]
    subjects_en = ["The man", "The woman", "The child", "The teacher", "The doctor", "My brother"]
    verbs = [("liest ein Buch.", "reads a book."), ("trinkt heute Tee.", "drinks tea today."),
             ("schläft im Garten.", "sleeps in the garden."), ("kauft frisches Brot.", "buys fresh bread.")]
    lines = [f"Satz {{m}} | {s} {v} :: sentence | {se} {ve}" for s, se in zip(subjects, subjects_en)
             for v, ve in verbs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gpu_table2_smoke_runs_a_seed_and_reports(tmp_path):
    done = _smoke("gpu_table2.sh", tmp_path, _corpus(tmp_path / "de-en"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done 5, error 0 (run again by the next call), todo 0" in done.stdout
    records = read_records(tmp_path / "out" / "table2_smoke.jsonl")
    assert len(records) == 5 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    assert {r["config"]["init"] for r in records} == {"xavier", "tfixup", "emergence_encdec", "emergence"}
    for r in records:
        assert [e["epoch"] for e in r["epochs"]] == [1, 2] and r["config"]["bleu_beam"] == 5
        assert (r["config"]["device"], r["config"]["amp"], r["config"]["optimizer_impl"]) == ("cpu", True, "fused")
    assert "BLEU" in (tmp_path / "out" / "table2_smoke_report" / "report.md").read_text()
