"""The translation task end to end on a written Debian-format corpus (record structure, schedule,
divergence), and the Table-2-style report."""

import json
import math

import pytest
import torch

from emergeinit.bench.config import resolve_config
from emergeinit.bench.translation import train as train_mod
from emergeinit.bench.translation.data import CorpusMissing
from emergeinit.bench.translation.report import method_label, translation_report
from emergeinit.bench.translation.train import inverse_sqrt_lr, run

SUBJECTS = ["Der Mann", "Die Frau", "Das Kind", "Der Lehrer", "Die Ärztin", "Mein Bruder"]
SUBJECTS_EN = ["The man", "The woman", "The child", "The teacher", "The doctor", "My brother"]
VERBS = [("liest ein Buch.", "reads a book."), ("trinkt heute Tee.", "drinks tea today."),
         ("schläft im Garten.", "sleeps in the garden."), ("kauft frisches Brot.", "buys fresh bread."),
         ("spielt gern Fußball.", "likes to play football."), ("wartet am Bahnhof.", "waits at the station.")]


def _debian_sample(path):
    lines = ["# Version :: devel test", "Haus {n} | Häuser {pl} :: house | houses"]
    for s, s_en in zip(SUBJECTS, SUBJECTS_EN):
        for (v, v_en) in VERBS:
            lines.append(f"Satz {{m}} [ling.] | {s} {v} :: sentence | {s_en} {v_en}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(tmp_path, **kw):
    cfg = dict(protocol="cpu_small", dataset="trans-de-en", data_dir=str(_debian_sample(tmp_path / "de-en")),
               valid_size=4, test_size=4, vocab_size=120, dim=16, ffn_dim=32, heads=2, encoder_layers=1,
               decoder_layers=1, max_tokens=200, epochs=2, warmup_steps=3, lr=5e-3, bleu_beam=2,
               cpu_threads=1, cache_dir=str(tmp_path / "cache"), init="default")
    cfg.update(kw)
    return cfg


def test_run_returns_a_record_task_part(tmp_path):
    out = run(_config(tmp_path), progress=False)
    assert [e["epoch"] for e in out["epochs"]] == [1, 2]
    assert out["diverged"] is False and out["device"].startswith("cpu")
    for e in out["epochs"]:
        assert set(e) >= {"epoch", "train_loss", "valid_loss", "bleu", "lr", "updates"}
        assert min(e["epoch_train_s"], e["valid_s"], e["bleu_s"]) > 0
        assert e["lr"] == pytest.approx(inverse_sqrt_lr(e["updates"], 5e-3, 3))
        assert math.isfinite(e["valid_loss"]) and 0.0 <= e["bleu"] <= 100.0
    assert out["epochs"][1]["train_loss"] < out["epochs"][0]["train_loss"]
    extra = out["extra"]
    assert extra["corpus"] == {"name": "trans-de-en", "train": 28, "valid": 4, "test": 4}
    assert extra["bleu_1"] == out["epochs"][0]["bleu"]
    assert extra["bleu_best"] == max(e["bleu"] for e in out["epochs"])
    assert extra["resolved_config"]["dim"] == 16
    assert out["emergence_at_init"]["log10"] > 0 and extra["emergence_error"] is None
    json.dumps(out)  # the record is JSON as it is


def test_run_stops_on_a_non_finite_loss_and_keeps_earlier_epochs(tmp_path, monkeypatch):
    real = train_mod._loss
    calls = {"n": 0}

    def flaky(model, batch, smoothing):
        calls["n"] += 1
        smoothed, nll = real(model, batch, smoothing)
        if calls["n"] > 3 and model.training:  # epoch 1 has 2 updates; fail in epoch 2
            return smoothed * float("nan"), nll
        return smoothed, nll

    monkeypatch.setattr(train_mod, "_loss", flaky)
    out = run(_config(tmp_path, max_tokens=400, epochs=3), progress=False)
    assert out["diverged"] is True
    assert [e["epoch"] for e in out["epochs"]] == [1]


def test_resolve_config_through_the_package():
    cfg = resolve_config({"task": "translation", "protocol": "iwslt14", "init": "tfixup", "layer_norm": False})
    assert cfg["task"] == "translation" and cfg["layer_norm"] is False and cfg["dim"] == 512


def _record(init, seed, bleus, losses, *, diverged=False, options=None, layer_norm=True, train_s=100.0):
    epochs = [{"epoch": i + 1, "train_loss": l + 0.5, "valid_loss": l, "bleu": b}
              for i, (b, l) in enumerate(zip(bleus, losses))]
    return {"task": "translation", "status": "diverged" if diverged else "ok", "diverged": diverged,
            "device": "cpu (2 threads)", "epochs": epochs, "extra": {"train_s": train_s},
            "config": {"protocol": "cpu_small", "data": "trans-de-en", "init": init, "seed": seed,
                       "init_options": options or {}, "layer_norm": layer_norm}}


def test_translation_report_table_ratios_and_plots(tmp_path):
    records = [
        _record("xavier", 0, [1.0, 3.0], [5.0, 4.0]),
        _record("xavier", 1, [2.0, 5.0], [5.2, 4.2]),
        _record("emergence", 0, [4.0, 6.0], [4.5, 3.3], options={"scope": "blockwise", "alpha": 10.0},
                train_s=110.0),
        _record("emergence", 1, [0.5], [9.0], options={"scope": "blockwise", "alpha": 10.0}, diverged=True),
        _record("tfixup", 0, [3.0, 4.0], [4.8, 3.9], layer_norm=False),
    ]
    md = translation_report(records, tmp_path)
    assert "## cpu_small on trans-de-en" in md
    assert "| xavier | 1.50 ± 0.71 | 4.00 ± 1.41 | 4.100 ± 0.141 | 2 ± 0 | 100 ± 0 | 2 |" in md
    # the diverged seed is counted, not averaged; best BLEU and lowest loss in bold
    assert "| emergence (blockwise, α=10) | **4.00** | **6.00** | **3.300** | 2 | 110 | 2 (1 diverged) |" in md
    assert "| tfixup (no LN) | 3.00 | 4.00 | 3.900 | 2 | 100 | 1 |" in md
    assert "| emergence (blockwise, α=10) | 0.805 | 1.500 | 1.100 |" in md  # 3.3/4.1, 6/4, 110/100
    assert (tmp_path / "translation_cpu_small_trans-de-en_bleu.png").stat().st_size > 1000
    assert (tmp_path / "translation_cpu_small_trans-de-en_loss.png").stat().st_size > 1000
    assert method_label({"init": "emergence_encdec", "init_options": {"beta_enc": 1.0, "beta_dec": 2.0}}) == \
        "emergence_encdec (β_dec=2)"


def test_run_restores_the_thread_count_even_when_it_fails(tmp_path):
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = run(_config(tmp_path, cpu_threads=1, epochs=1), progress=False)
        assert out["device"].endswith("(1 threads)")  # the run itself had one thread
        assert torch.get_num_threads() == 3
        with pytest.raises(CorpusMissing):
            run(_config(tmp_path, cpu_threads=1, data_dir=str(tmp_path / "missing")), progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)


def test_max_steps_caps_the_run_and_max_epoch_steps_each_epoch(tmp_path):
    out = run(_config(tmp_path, epochs=3, max_epoch_steps=2, max_steps=3), progress=False)
    assert [e["updates"] for e in out["epochs"]] == [2, 3]
    assert out["extra"]["updates"] == 3


def test_old_key_config_runs_like_the_new_one(tmp_path):
    new = _config(tmp_path, epochs=1)
    old = {("data_path" if k == "data_dir" else "max_epochs" if k == "epochs" else k): v for k, v in new.items()}
    a, b = run(new, progress=False), run(old, progress=False)
    assert a["epochs"][0]["train_loss"] == b["epochs"][0]["train_loss"]
    assert a["extra"]["resolved_config"] == b["extra"]["resolved_config"]
