"""The Table-1 protocol's base: GradInit's code's init, every row starting from it, seed pairing."""

import math

import pytest
import torch
from torch import nn

from _bench_helpers import write_fashion_mnist
from emergeinit.bench import image
from emergeinit.bench.config import resolve_config
from emergeinit.bench.data import load_dataset
from emergeinit.bench.image import init_model
from emergeinit.bench.runner import check_configs

SMALL = {"width": 1 / 16}  # VGG-11 with 4..32 channels: the same code paths, quickly
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def gradinit_vgg(bn):
    """GradInit's models/gradinit_vgg.py, rewritten from its description: modules built in the same
    order (each draws torch's default init), then conv kaiming_normal fan_out, biases 0, BN (1, 0),
    classifier N(0, 0.01)."""
    layers, c = [], 3
    for v in VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(c, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if bn else []) + [nn.ReLU()]
        c = v
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return net


def gradinit_resnet(n, bn):
    """GradInit's models/gradinit_resnet_cifar.py, rewritten: stem, 3 stages of n BasicBlocks
    (16/32/64), fc; convs kaiming_normal fan_out (biases 0 without BN), BN (1, 0), the fc keeps
    nn.Linear's default weight and gets a zero bias. Returns the parameters in registration order."""
    mods = [nn.Conv2d(3, 16, 3, 1, 1, bias=not bn)] + ([nn.BatchNorm2d(16)] if bn else [])
    inplanes = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for j in range(n):
            s = stride if j == 0 else 1
            mods.append(nn.Conv2d(inplanes, planes, 3, s, 1, bias=not bn))
            mods += [nn.BatchNorm2d(planes)] if bn else []
            mods.append(nn.Conv2d(planes, planes, 3, 1, 1, bias=not bn))
            mods += [nn.BatchNorm2d(planes)] if bn else []
            if s != 1 and bn:
                mods.append(nn.BatchNorm2d(inplanes))  # the downsample's BN, after the block's layers
            inplanes = planes
    fc = nn.Linear(64, 10)
    for m in mods:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                m.bias.data.zero_()
        else:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    fc.bias.data.zero_()
    return [p for m in mods + [fc] for p in m.parameters()]


@pytest.fixture(scope="module")
def fm32(tmp_path_factory):
    folder = write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=16, n_test=8)
    return load_dataset("fashion-mnist-32", folder), str(folder)


def table1(model, init="kaiming", seed=3, **keys):
    return resolve_config({"protocol": "table1", "dataset": "fashion-mnist-32", "model": model, "init": init,
                           "seed": seed, "init_batch_size": 4, **keys})


@pytest.mark.parametrize("model, recipe", [
    ("vgg19", lambda: list(gradinit_vgg(False).parameters())),
    ("vgg19_bn", lambda: list(gradinit_vgg(True).parameters())),
    ("resnet110", lambda: gradinit_resnet(18, False)),
    ("resnet110_bn", lambda: gradinit_resnet(18, True)),
])
def test_table1_kaiming_row_is_gradinit_code_init_tensor_by_tensor(fm32, model, recipe):
    data, _ = fm32
    net, record = init_model(table1(model), data)
    torch.manual_seed(3)
    expected = recipe()
    ours = list(net.parameters())
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in expected]
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
    assert record["method"] == "kaiming" and record["base"] == {"base_init": "model"}


def test_the_old_fan_in_redraw_is_not_that_init(fm32):
    """Before base_init, the table1 Kaiming row redrew every layer fan_in: the classifier at
    sqrt(2/512) = 0.0625 instead of 0.01. base_init=null still means that (older records)."""
    data, _ = fm32
    net, _ = init_model(table1("vgg19", base_init=None), data)
    assert net.classifier.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    net, _ = init_model(table1("vgg19"), data)
    assert net.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("model, init, options", [
    ("vgg11_bn", "emergence", {"alpha": 2.0, "schedule": "normalized"}),
    ("mlp", "gradinit", {"iters": 1}),
    ("mlp", "metainit", {"steps": 1}),
])
def test_every_method_starts_from_the_kaiming_row(fm32, monkeypatch, model, init, options):
    data, _ = fm32
    shape = {"model_options": SMALL if model != "mlp" else {"hidden": [16]}}
    base, _ = init_model(table1(model, **shape), data)
    seen = {}
    real = image.initialize_

    def spy(model, method, **kw):
        seen["weights"] = [p.detach().clone() for p in model.parameters()]
        seen["options"] = kw
        return real(model, method, **kw)

    monkeypatch.setattr(image, "initialize_", spy)
    net, record = init_model(table1(model, init, init_options=options, **shape), data)
    assert all(torch.equal(a, b) for a, b in zip(seen["weights"], base.parameters()))
    assert record["base"]["base_init"] == "model"
    if init == "emergence":  # the base is scaled, not redrawn: w = w_base × α^e_k, layer by layer
        assert seen["options"]["base"] == "keep"
        factors = [l["factor"] for l in record["details"]["plan"]["layers"]]
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        base_convs = [m for m in base.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for f, a, b in zip(factors, convs, base_convs):
            torch.testing.assert_close(a.weight, b.weight * f, rtol=1e-6, atol=0)


def test_classifier_init_redraws_only_the_classifier(fm32):
    data, _ = fm32
    base, _ = init_model(table1("vgg19"), data)
    for how, std in (("kaiming", math.sqrt(2 / 512)), ("torch", 1 / math.sqrt(3 * 512)), (0.05, 0.05)):
        net, record = init_model(table1("vgg19", classifier_init=how), data)
        assert net.classifier.weight.std().item() == pytest.approx(std, rel=0.08)
        assert float(net.classifier.bias.abs().max()) == 0.0
        assert all(torch.equal(a, b) for a, b in zip(net.features.parameters(), base.features.parameters()))
        assert record["base"]["classifier"]["classifier_init"] == how


def test_base_kaiming_is_the_fan_in_redraw_and_the_kaiming_row(fm32):
    data, _ = fm32
    net, record = init_model(table1("vgg19", base_init="kaiming"), data)
    assert net.classifier.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert record["base"]["record"]["method"] == "kaiming"
    em, _ = init_model(table1("vgg19", "emergence", base_init="kaiming", init_options={"alpha": 1.0}), data)
    assert all(torch.equal(a, b) for a, b in zip(em.parameters(), net.parameters()))


@pytest.mark.parametrize("keys, match", [
    ({"init_options": {"mode": "fan_out"}}, "row is the base itself"),
    ({"init": "emergence", "init_options": {"alpha": 2.0, "base": "kaiming"}}, "drop init_options.base"),
    ({"init": "lsuv", "classifier_init": "kaiming"}, "would be lost"),
    ({"base_init": None, "classifier_init": 0.01}, "set base_init too"),
    ({"base_init": "orthogonal"}, "base_init"),
    ({"classifier_init": -1.0}, "std > 0"),
    ({"classifier_init": "xavier"}, "classifier_init"),
])
def test_base_conflicts_are_errors_before_any_run(fm32, keys, match):
    with pytest.raises(ValueError, match=match):
        check_configs([table1("vgg19", **keys)])  # what a grid and `emergeinit train` run first
    if keys.get("base_init", "model") == "model" and "classifier_init" not in keys or "init" in keys:
        with pytest.raises(ValueError, match=match):  # and a run called directly, before any init
            init_model(table1("vgg19", **keys), fm32[0])


def test_data_dependent_inits_leave_the_training_order_alone(fm32, monkeypatch):
    """Seed pairing: GradInit's batches come from a stream of their own, so the GradInit run of a
    seed trains on the Kaiming run's batches."""
    data, folder = fm32
    states = []
    real = image.train_epoch

    def spy(model, data, optimizer, config, *, generator, **kw):
        states.append(generator.get_state().clone())
        return real(model, data, optimizer, config, generator=generator, **kw)

    monkeypatch.setattr(image, "train_epoch", spy)
    tiny = {"batch_size": 4, "eval_batch_size": 8, "max_epoch_steps": 1, "test_limit": 8, "device": "cpu",
            "emergence_batch_size": 4, "data_dir": folder, "dataset": "fashion-mnist",
            "model_options": {"hidden": [16]}}
    for init, options in (("kaiming", {}), ("gradinit", {"iters": 2})):
        image.run({**table1("mlp", init, init_options=options), **tiny}, progress=False)
    assert torch.equal(states[0], states[1])
    legacy = {**table1("mlp", "gradinit", init_options={"iters": 2}, base_init=None), **tiny}
    image.run(legacy, progress=False)  # before base_init the init consumed the training stream
    assert not torch.equal(states[0], states[2])
