import argparse
import math

import pytest
import torch
from torch import nn

from emergeinit.bench.config import ALIASES, TASKS, resolve_config, run_id
from emergeinit.bench.data import ImageData
from emergeinit.bench.image import lr_lambda, make_optimizer, train_epoch
from emergeinit.bench.records import init_label, record_id, resolved_record_config


def test_table1_resolves_every_hyperparameter():
    c = resolve_config({"model": "vgg19"})
    assert (c["batch_size"], c["optimizer"], c["lr"], c["momentum"]) == (128, "sgd", 0.1, 0.9)
    assert (c["lr_schedule"], c["schedule_epochs"], c["weight_decay"], c["decay_norm"]) == ("cosine", 200, 1e-4, False)
    assert (c["crop_padding"], c["flip"], c["cutout"]) == (4, True, 16)
    assert c["clip_grad_norm"] == 1.0  # no BN: clip 1
    assert resolve_config({"model": "vgg19_bn"})["clip_grad_norm"] is None
    assert resolve_config(c) == c  # resolving a resolved config changes nothing


def test_seed_protocol_and_overrides():
    c = resolve_config({"protocol": "seed", "model": "mlp", "init": "emergence", "init_options.alpha": 2,
                        "epochs": 3})
    assert (c["optimizer"], c["lr"], c["lr_schedule"], c["batch_size"]) == ("adam", 1e-3, "constant", 128)
    assert c["schedule_epochs"] == 3 and c["init_options"] == {"alpha": 2}
    assert c["clip_grad_norm"] is None and c["cutout"] == 0


def test_unknown_keys_and_values_are_errors():
    with pytest.raises(ValueError, match="unknown config keys"):
        resolve_config({"lr_sched": "cosine"})
    with pytest.raises(ValueError, match="unknown protocol"):
        resolve_config({"protocol": "nope"})
    with pytest.raises(ValueError, match="extra_epoch"):
        resolve_config({"extra_epoch": "twice"})


def test_cosine_per_iteration_after_a_warmup_epoch():
    c = resolve_config({"model": "vgg19_bn", "extra_epoch": "warmup", "schedule_epochs": 2})
    f = lr_lambda(c, steps_per_epoch=10)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == 1.0  # the cosine starts from the top after the extra epoch
    assert f(10 + 10) == pytest.approx(0.5)  # half of the 2-epoch horizon
    assert f(10 + 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 20)))
    assert f(10 + 20) == pytest.approx(0.0, abs=1e-12) and f(10 + 25) == pytest.approx(0.0, abs=1e-12)


def test_const_extra_epoch_and_constant_schedule():
    c = resolve_config({"protocol": "seed", "extra_epoch": "const"})
    f = lr_lambda(c, steps_per_epoch=4)
    assert [f(s) for s in range(12)] == [1.0] * 12


def tiny_data(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 3
    return ImageData("tiny", x, y, x, y, torch.tensor([0.5]), torch.tensor([0.25]), 3)


def test_gradient_clip_as_configured():
    data = tiny_data()
    for clip in (1e-3, None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
        c = resolve_config({"protocol": "seed", "optimizer": "sgd", "momentum": 0.0, "lr": 1.0,
                            "batch_size": 16, "clip_grad_norm": clip})
        opt = make_optimizer(model, c)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_epoch(model, data, opt, c, lr_factor=lambda s: 1.0, step0=0, generator=None)
        step = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
        if clip:  # lr 1, no momentum: the update is the clipped gradient
            assert float(step.norm()) == pytest.approx(1e-3, rel=1e-4)
        else:
            assert float(step.norm()) > 1e-2


def test_no_weight_decay_on_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(10, 2))
    opt = make_optimizer(model, resolve_config({"model": "vgg19_bn"}))
    decays = [(g["weight_decay"], sum(p.numel() for p in g["params"])) for g in opt.param_groups]
    assert decays[0][0] == 1e-4 and decays[1] == (0.0, 8)  # BN γ and β: 4 + 4
    opt = make_optimizer(model, resolve_config({"model": "vgg19_bn", "decay_norm": True}))
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4]


def test_init_label():
    assert init_label({"init": "kaiming", "extra_epoch": "warmup"}) == "kaiming +1 epoch (warmup)"
    assert init_label({"init": "emergence", "init_options": {"alpha": 2.0, "schedule": "literal",
                                                            "scope": "blockwise"}}) == \
        "emergence (literal, α=2, blockwise)"


# ------------------------------------------------------------------ one resolver, one name per idea

OLD_TRANSLATION_KEYS = {"threads": 2, "clip_norm": 0.5, "max_epochs": 3, "max_updates": 100,
                        "warmup_updates": 10, "data": "iwslt14", "data_path": "/data/de-en",
                        "max_train_pairs": 50}
NEW_TRANSLATION_KEYS = {"cpu_threads": 2, "clip_grad_norm": 0.5, "epochs": 3, "max_steps": 100,
                        "warmup_steps": 10, "dataset": "iwslt14", "data_dir": "/data/de-en",
                        "train_limit": 50}


def test_old_translation_keys_resolve_to_the_new_config_and_run_id():
    old = resolve_config({"task": "translation", "init": "tfixup", **OLD_TRANSLATION_KEYS})
    new = resolve_config({"task": "translation", "init": "tfixup", **NEW_TRANSLATION_KEYS})
    assert old == new and run_id(old) == run_id(new)
    assert {k: new[k] for k in NEW_TRANSLATION_KEYS} == NEW_TRANSLATION_KEYS
    assert not set(ALIASES) & set(new)  # the resolved config stores the new names only
    assert run_id({"task": "translation", **OLD_TRANSLATION_KEYS}) == run_id({"task": "translation", **NEW_TRANSLATION_KEYS})


def test_a_key_and_its_old_name_must_agree():
    assert resolve_config({"threads": 2, "cpu_threads": 2})["cpu_threads"] == 2
    with pytest.raises(ValueError, match="'threads' and its new name 'cpu_threads'"):
        resolve_config({"threads": 2, "cpu_threads": 3})


def test_translation_run_id_ignores_threads_data_location_and_cache():
    base = {"task": "translation", "protocol": "cpu_small"}
    ids = {run_id(resolve_config({**base, **extra})) for extra in (
        {}, {"cpu_threads": 1}, {"cpu_threads": 8}, {"threads": 4}, {"data_dir": "/x"}, {"cache_dir": "/tmp/c"})}
    assert len(ids) == 1
    assert run_id(resolve_config({**base, "seed": 1})) not in ids
    image = resolve_config({"model": "mlp"})
    assert run_id(image) == run_id({**image, "cpu_threads": 4, "data_dir": "/y", "download": True})


def test_one_resolver_for_every_task():
    assert set(TASKS) == {"image", "translation"}
    for name, task in TASKS.items():
        for protocol in task.protocols:
            c = resolve_config({"task": name, "protocol": protocol})
            assert c["task"] == name and c["protocol"] == protocol and resolve_config(c) == c
            assert {"epochs", "max_steps", "max_epoch_steps", "clip_grad_norm", "cpu_threads", "amp",
                    "dataset", "data_dir", "train_limit", "lr", "seed"} <= set(c)
    assert resolve_config({"task": "translation"})["protocol"] == "cpu_small"
    assert resolve_config({"task": "translation", "clip_grad_norm": 0})["clip_grad_norm"] is None  # 0: off
    with pytest.raises(ValueError, match="unknown protocol 'table1' for task translation"):
        resolve_config({"task": "translation", "protocol": "table1"})
    with pytest.raises(ValueError, match="unknown task"):
        resolve_config({"task": "speech"})
    with pytest.raises(ValueError, match="a translation run got a config of task 'image'"):
        resolve_config({"task": "image"}, task="translation")
    assert resolve_config({}, task="translation")["task"] == "translation"


def test_protocol_bases_and_what_older_records_meant():
    assert resolve_config({"protocol": "table1"})["base_init"] == "model"
    assert resolve_config({"protocol": "seed"})["base_init"] == "kaiming"
    # a stored config without base_init was made when each method drew its own base
    old = {k: v for k, v in resolve_config({"protocol": "table1", "model": "vgg19"}).items()
           if k not in ("base_init", "classifier_init")}
    record = {"id": "x", "config": old}
    assert resolved_record_config(record)["base_init"] is None
    assert record_id(record) == run_id(resolve_config({"protocol": "table1", "model": "vgg19", "base_init": None}))
    assert record_id(record) != run_id(resolve_config({"protocol": "table1", "model": "vgg19"}))


def test_train_flags_set_the_base_and_none_means_null():
    from emergeinit.bench.commands.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    c = config_from_args(parser.parse_args(["--model", "vgg19", "--classifier-init", "0.05"]))
    assert (c["base_init"], c["classifier_init"]) == ("model", 0.05)
    c = config_from_args(parser.parse_args(["--base-init", "none", "--init", "emergence", "--alpha", "2",
                                            "--base", "kaiming"]))
    assert c["base_init"] is None and c["init_options"]["base"] == "kaiming"
    c = config_from_args(parser.parse_args(["--protocol", "seed", "--base-init", "model"]))
    assert c["base_init"] == "model"
