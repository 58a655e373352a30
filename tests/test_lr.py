"""layerwise_lr_groups: lr_l ∝ 1/‖∇_{x_l} L‖, geometric mean = base_lr, every parameter once."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import emergeinit as ei


class Net(nn.Module):
    """conv → BN → ReLU → linear → ReLU → linear, with a parameter outside every layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 5 * 5, 8)
        self.fc2 = nn.Linear(8, 3)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(F.relu(self.fc1(h))) * self.temperature


def batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def reference_norms(model, x, y):
    """‖∂L/∂(input of each layer)‖, computed by hand."""
    x = x.clone().requires_grad_(True)
    h0 = model.conv(x)
    h1 = F.relu(model.bn(h0)).flatten(1)
    h2 = F.relu(model.fc1(h1))
    loss = F.cross_entropy(model.fc2(h2) * model.temperature, y)
    grads = torch.autograd.grad(loss, [x, h1, h2])
    return [g.double().norm().item() for g in grads]


def test_every_parameter_in_exactly_one_group_and_rates_follow_the_gradients():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.fc2.weight.mul_(30.0)  # large gradient into fc2's input → small lr for fc1... and fc2
    x, y = batch()
    groups = ei.layerwise_lr_groups(model, F.cross_entropy, (x, y), base_lr=0.1, weight_decay=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["name"] for g in groups] == ["conv.weight", "fc1.weight", "fc2.weight", "other"]
    assert [len(g["params"]) for g in groups] == [2, 2, 2, 3]  # weight + bias; bn γ, β, temperature
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ref = reference_norms(model, x, y)
    layer_groups = groups[:3]
    for g, r in zip(layer_groups, ref):
        assert g["grad_norm"] == pytest.approx(r, rel=1e-6)
    geo = math.exp(sum(math.log(r) for r in ref) / 3)
    for g, r in zip(layer_groups, ref):
        assert g["lr"] == pytest.approx(0.1 * geo / r, rel=1e-6)
    assert math.exp(sum(math.log(g["lr"]) for g in layer_groups) / 3) == pytest.approx(0.1, rel=1e-12)
    order_by_grad = sorted(range(3), key=lambda i: ref[i])
    order_by_lr = sorted(range(3), key=lambda i: -layer_groups[i]["lr"])
    assert order_by_grad == order_by_lr
    assert groups[-1]["lr"] == 0.1
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)  # any optimizer takes them
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_model_and_random_state_left_as_they_were():
    torch.manual_seed(0)
    model = Net().eval()
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ei.layerwise_lr_groups(model, F.cross_entropy, batch(), base_lr=1e-3)
    assert not model.training and not model.bn.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert torch.equal(model.fc1.weight.grad, torch.full_like(model.fc1.weight, 7.0))
    assert model.fc2.weight.grad is None
    assert torch.equal(rng, torch.get_rng_state())


def test_attention_out_proj_takes_the_rate_of_its_input_projection():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                  enable_nested_tensor=False)
    x = torch.randn(3, 4, 8)
    groups = ei.layerwise_lr_groups(model, lambda out, t: (out - t).pow(2).mean(), (x, torch.zeros(3, 4, 8)), 1e-3)
    by = {g["name"]: g for g in groups}
    assert by["layers.0.self_attn.out_proj.weight"]["lr"] == by["layers.0.self_attn.in_proj_weight"]["lr"]
    assert by["layers.0.self_attn.out_proj.weight"]["grad_norm"] is None
    assert by["layers.0.linear1.weight"]["grad_norm"] > 0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


@pytest.mark.parametrize("base_lr", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_base_lr(base_lr):
    with pytest.raises(ValueError, match="base_lr"):
        ei.layerwise_lr_groups(Net(), F.cross_entropy, batch(), base_lr=base_lr)


def test_non_finite_batch_or_gradient_is_an_error():
    from emergeinit.trace import NonFiniteError

    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"the loss is nan \(the input batch is not finite\)"):
        ei.layerwise_lr_groups(Net(), F.cross_entropy, (x, y), base_lr=1e-3)
    x, y = batch()
    model = Net()
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="first non-finite output: layer 'fc1'"):
        ei.layerwise_lr_groups(model, F.cross_entropy, (x, y), base_lr=1e-3)
    # a finite loss (0) whose gradient is not: sqrt has an infinite slope at 0
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_(), model[0].bias.zero_(), model[2].bias.zero_()
    with pytest.raises(NonFiniteError, match=r"input gradient of .*2\.weight .*\(the loss is finite\)"):
        ei.layerwise_lr_groups(model, lambda out, t: out.sum().sqrt(), (torch.zeros(2, 3), torch.zeros(2)), 1e-3)


def test_batch_without_targets_is_refused():
    x, _ = batch()
    with pytest.raises(ValueError, match="needs targets"):
        ei.layerwise_lr_groups(Net(), F.cross_entropy, x, base_lr=1e-3)
