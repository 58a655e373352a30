import math

import pytest
import torch
from torch import nn

from emergeinit.bench.data import ImageData
from emergeinit.bench.image import make_optimizer, train_epoch
from emergeinit.bench.protocols import lr_lambda, resolve_config
from emergeinit.bench.records import init_label


def test_table1_resolves_every_hyperparameter():
    c = resolve_config({"model": "vgg19"})
    assert (c["batch_size"], c["optimizer"], c["lr"], c["momentum"]) == (128, "sgd", 0.1, 0.9)
    assert (c["lr_schedule"], c["schedule_epochs"], c["weight_decay"], c["decay_norm"]) == ("cosine", 200, 1e-4, False)
    assert (c["crop_padding"], c["flip"], c["cutout"]) == (4, True, 16)
    assert c["clip_grad_norm"] == 1.0  # no BN: clip 1
    assert resolve_config({"model": "vgg19_bn"})["clip_grad_norm"] is None
    assert resolve_config(c) == c  # resolving a resolved config changes nothing


def test_seed_protocol_and_overrides():
    c = resolve_config({"protocol": "seed", "model": "mlp", "init_options.alpha": 2, "epochs": 3})
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
