"""measure_emergence's fixed costs: a trace kept per model structure (never a stale one), counts
kept on the device and read back once per call, the two ways of tallying a layer giving the same
numbers, and the warning for a pair that looks like two batches."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import emergeinit.probe as probe
from emergeinit import measure_emergence, register_weight_layer
from emergeinit.layers import unregister_weight_layer
from emergeinit.models import build_model
from emergeinit.probe import MEASURE_CACHE_SIZE, clear_measure_cache
from emergeinit.trace import NonFiniteError, structure_key


@pytest.fixture(autouse=True)
def empty_cache():
    clear_measure_cache()
    yield
    clear_measure_cache()


@pytest.fixture
def traces(monkeypatch):
    """How many times measure_emergence traced (or recorded) a model."""
    calls = []
    original = probe.layers_traced_or_recorded

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(probe, "layers_traced_or_recorded", counting)
    return calls


class Skippy(nn.Module):
    """A residual MLP whose skip connection a plain attribute turns off."""

    def __init__(self, skip: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.skip = skip

    def forward(self, x):
        h = F.relu(self.fc1(x))
        y = self.fc3(F.relu(self.fc2(h)))
        return self.out(F.relu(y + h if self.skip else y))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so its forward is recorded."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        h = F.relu(self.fc1(x))
        return self.fc3(F.relu(self.fc2(h)) + h)


def fresh(model, x, **kwargs):
    """The report of a call that cannot use a kept trace."""
    clear_measure_cache()
    return measure_emergence(model, x, **kwargs).to_dict()


X = torch.randn(32, 3)


def test_a_second_call_reuses_the_trace_and_gives_the_same_report(traces):
    net = Skippy()
    first = measure_emergence(net, X).to_dict()
    assert measure_emergence(net, X).to_dict() == first and len(traces) == 1
    assert measure_emergence(net, X, mode="mean").to_dict() == fresh(net, X, mode="mean")
    assert len(traces) == 2  # the mode is not part of the trace; clearing is
    other = Skippy()
    measure_emergence(other, X)
    assert len(traces) == 3  # another model of the same class is traced for itself


def replace_a_layer(net):
    net.fc2 = nn.Linear(5, 5)
    with torch.no_grad():
        net.fc2.weight.fill_(-1.0)  # fc2 silent from now on


def replace_a_parameter(net):
    net.fc2.weight = nn.Parameter(-net.fc2.weight.detach().abs())


def register_a_type(net):
    register_weight_layer(Scale)  # the model's Scale module becomes a weight layer


class Scale(nn.Module):
    """Not a weight layer until registered: a Linear-like module the library does not know."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class WithScale(Skippy):
    def __init__(self):
        super().__init__()
        self.scale = Scale(2)

    def forward(self, x):
        return self.scale(super().forward(x))


@pytest.mark.parametrize("change, make", [
    (replace_a_layer, Skippy),
    (replace_a_parameter, Skippy),
    (lambda net: setattr(net, "skip", False), Skippy),  # a flag the forward branches on
    (register_a_type, WithScale),
])
def test_a_changed_structure_is_traced_anew(change, make, traces):
    net = make()
    before = measure_emergence(net, X).to_dict()
    try:
        change(net)
        after = measure_emergence(net, X).to_dict()
        assert len(traces) == 2
        assert after == fresh(net, X)
        assert after != before
    finally:
        if change is register_a_type:
            unregister_weight_layer(Scale)


class DropsInTraining(Skippy):
    def forward(self, x):
        return super().forward(x * 2 if self.training else x)  # what train mode changes is traced


def test_train_and_eval_mode_are_traced_apart(traces):
    net = DropsInTraining()
    evaluated = measure_emergence(net, X).to_dict()
    trained = measure_emergence(net, X, training=True).to_dict()
    assert len(traces) == 2 and trained != evaluated
    assert measure_emergence(net, X).to_dict() == evaluated
    assert measure_emergence(net, X, training=True).to_dict() == trained == fresh(net, X, training=True)
    assert len(traces) == 3  # fresh() cleared the cache


def test_the_key_sees_structure_not_weight_values():
    net = Skippy()
    key, pins = structure_key(net)
    with torch.no_grad():
        net.fc1.weight.mul_(3)  # training or an init changes values, not the trace
    assert structure_key(net)[0] == key
    assert net.fc1 in pins and net not in pins  # the root is never held by a cache entry
    net.fc1.weight.data = torch.randn(5, 3)  # same parameter object, same shape
    assert structure_key(net)[0] == key
    net.fc1.weight.data = torch.randn(6, 3)  # a new shape
    assert structure_key(net)[0] != key


def test_a_recorded_forward_is_kept_per_input_signature(traces):
    net = Branchy()
    a, b = torch.randn(4, 4), torch.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fx fallback warning
        ra = measure_emergence(net, a).to_dict()
        assert measure_emergence(net, a).to_dict() == ra and len(traces) == 1
        rb = measure_emergence(net, b).to_dict()
        assert len(traces) == 2  # another shape: recorded for it
        assert measure_emergence(net, a).to_dict() == ra and measure_emergence(net, b).to_dict() == rb
        assert len(traces) == 2
        assert rb == fresh(net, b)


@pytest.mark.parametrize("make", [Skippy, Branchy])
def test_the_cache_keeps_no_model_alive(make):
    net = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measure_emergence(net, torch.randn(4, 3 if make is Skippy else 4))
    assert probe._PLANS.entries
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None
    assert not probe._PLANS.entries and not probe._PLANS.refs


def test_the_cache_is_bounded():
    nets = [Skippy() for _ in range(MEASURE_CACHE_SIZE + 3)]
    for net in nets:
        measure_emergence(net, X)
    assert len(probe._PLANS.entries) == MEASURE_CACHE_SIZE
    assert len(probe._PLANS.refs) == MEASURE_CACHE_SIZE


class HostReads(TorchFunctionMode):
    """Every read of a tensor's values into Python (what synchronizes with an accelerator)."""

    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model, x", [
    (Skippy(), torch.randn(16, 3)),
    (build_model("resnet20"), torch.randn(2, 3, 32, 32)),
])
def test_counting_reads_values_back_once_per_call(model, x, monkeypatch):
    """Three batches, a trace kept or not: nothing is read back while the batches run, and the
    tallies come back in one transfer."""
    reads = HostReads()
    phases = []
    original = probe._Counts.read

    def read(self):
        phases.append(list(reads.seen))
        reads.seen.clear()
        out = original(self)
        phases.append(list(reads.seen))
        return out

    monkeypatch.setattr(probe._Counts, "read", read)
    for _ in range(2):  # traced, then from the cache
        phases.clear()
        reads.seen.clear()
        with reads:
            measure_emergence(model, iter([x, x + 1, x - 1]))
        before, during = phases
        assert before == [] and during.count("cpu") == 1  # later reads in read() are of host tensors


@pytest.mark.parametrize("mode", ["count", "mean"])
def test_large_layers_tallied_where_read_give_the_batched_numbers(mode, monkeypatch):
    """A layer's values are tallied at once when large, with the batch's others when small: the
    same counts and sums either way (only the grouping of the reductions differs)."""
    torch.manual_seed(3)
    model = build_model("vgg19").eval()
    batches = [(torch.randn(3, 3, 32, 32), None) for _ in range(2)]
    monkeypatch.setattr(probe, "BATCHED_ELEMENTS", 10 ** 12)
    batched = measure_emergence(model, batches, mode=mode).to_dict()
    assert batched["samples"] == 6
    clear_measure_cache()
    monkeypatch.setattr(probe, "BATCHED_ELEMENTS", 0)
    assert measure_emergence(model, batches, mode=mode).to_dict() == batched


def test_non_finite_values_in_a_later_batch_name_the_batch():
    net = Skippy()
    good, bad = torch.randn(4, 3), torch.randn(4, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer 'fc1' are not finite in batch 1 \(the input batch is not finite\)"):
        measure_emergence(net, [good, bad, good])
    with pytest.raises(NonFiniteError, match=r"in batch 1 \(that batch is gone: pass the batches as a list"):
        measure_emergence(net, iter([good, bad, good]))
    with torch.no_grad():
        net.fc3.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"layer 'fc3' are not finite \(first non-finite output: layer 'fc3'\)"):
        measure_emergence(net, good)


# ------------------------------------------------------------- a pair that looks like two batches

@pytest.mark.parametrize("pair", [
    lambda x: (x, torch.randn_like(x)),
    lambda x: [x, x + 1],
])
def test_a_pair_of_two_input_batches_warns(pair):
    x = torch.randn(8, 3)
    with pytest.warns(UserWarning, match=r"only the first tensor is read.*iter\(\[x1, x2\]\)"):
        r = measure_emergence(Skippy(), pair(x))
    assert r.samples == 8  # still one batch, as the convention says


@pytest.mark.parametrize("pair", [
    lambda x: (x, torch.randint(0, 2, (8,))),  # class labels
    lambda x: (x, torch.randn(8, 2)),  # regression targets: another shape
    lambda x: (x, torch.randn(8, 3, dtype=torch.float64)),  # another dtype
    lambda x: (x, None),
    lambda x: x,
    lambda x: [(x, None), (x, None)],
])
def test_real_batches_stay_silent(pair):
    x = torch.randn(8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure_emergence(Skippy(), pair(x))


def test_lsuv_which_ignores_targets_says_so_too_and_the_losses_do_not():
    """LSUV reads inputs only, so it warns like measure_emergence; MetaInit and GradInit feed the
    targets to a loss (an autoencoder's (x, x) is a real batch there): silent."""
    from emergeinit import initialize

    x = torch.randn(8, 3)
    with pytest.warns(UserWarning, match="lsuv: a pair of tensors is one batch"):
        initialize(Skippy(), "lsuv", data=[x, x + 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        initialize(Skippy(), "lsuv", data=(x, torch.randint(0, 2, (8,))))
        autoencoder = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
        initialize(autoencoder, "gradinit", data=(x, x.clone()), iters=1, loss_fn=F.mse_loss)


def test_concurrent_calls_on_one_model_do_not_mix_their_counts():
    """A kept plan serves one call at a time; a call that finds it busy makes its own."""
    import threading

    net, batches = Skippy(), [torch.randn(64, 3) * s for s in (0.5, 1.0, 2.0)]
    want = [measure_emergence(net, x).to_dict() for x in batches]
    got = {}

    def work(i):
        got[i] = [measure_emergence(net, batches[(i + k) % 3]).to_dict() for k in range(6)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, reports in got.items():
        assert reports == [want[(i + k) % 3] for k in range(6)]
