"""Hugging Face transformers models, built from tiny configs: BERT (masked LM), GPT-2 (its Conv1D
layers), Llama (a gated FFN) and T5 (encoder-decoder, plain and gated FFN). ``transformers`` is in
the ``test`` extra: these tests run everywhere the suite runs."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import emergeinit as ei
from _steps import train_steps
from emergeinit.layers import find_blocks, find_weight_layers

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:torch.fx could not trace")]

VOCAB, D, FF = 99, 32, 37


def _bert():
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=FF, max_position_embeddings=32)
    return transformers.BertForMaskedLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _t5(gated=False):
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=D, d_kv=8, d_ff=FF, num_layers=2, num_heads=4,
                                feed_forward_proj="gated-gelu" if gated else "relu")
    return transformers.T5ForConditionalGeneration(cfg)


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama, "t5": _t5, "t5_gated": lambda: _t5(gated=True)}
IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


def build(name):
    torch.manual_seed(0)
    return MODELS[name]().float()


def inputs(name, ids=IDS):
    return {"input_ids": ids, "decoder_input_ids": ids} if name.startswith("t5") else {"input_ids": ids}


def loss_fn(out, labels):
    return F.cross_entropy(out.logits.flatten(0, 1), labels.flatten())


#: model -> {block: (members relative to the block, depth of each)}, all found as residual units
_T5 = {f"{side}.block.{i}.layer.{j}": (["DenseReluDense.wi", "DenseReluDense.wo"], (0, 1))
       for side, j in (("encoder", 1), ("decoder", 2)) for i in (0, 1)}
BLOCKS = {
    "bert": {f"bert.encoder.layer.{i}": (["intermediate.dense", "output.dense"], (0, 1)) for i in (0, 1)},
    "gpt2": {f"transformer.h.{i}": (["mlp.c_fc", "mlp.c_proj"], (0, 1)) for i in (0, 1)},
    "llama": {f"model.layers.{i}": (["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], (0, 0, 1)) for i in (0, 1)},
    "t5": _T5,
    "t5_gated": {b: (["DenseReluDense.wi_0", "DenseReluDense.wi_1", "DenseReluDense.wo"], (0, 0, 1)) for b in _T5},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_blocks_are_the_ffn_sublayers(name):
    model = build(name)
    blocks = find_blocks(model, find_weight_layers(model, inputs(name)), example_input=inputs(name))
    got = {b: ([l.name[len(b) + 1:] for l in block], block.depths) for b, block in blocks.items()}
    assert got == BLOCKS[name] and {b.found for b in blocks.values()} == {"residual"}


def test_gpt2_conv1d_layers_are_weight_layers_with_their_axes():
    model = build("gpt2")
    layers = find_weight_layers(model, inputs("gpt2"))
    assert [l.name for l in layers] == [f"transformer.h.{i}.{n}" for i in (0, 1)
                                        for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + ["lm_head"]
    by_name = {l.name: l for l in layers}
    assert (by_name["transformer.h.0.attn.c_attn"].in_nodes, by_name["transformer.h.0.attn.c_attn"].out_nodes) == (D, 3 * D)
    assert (by_name["transformer.h.0.mlp.c_proj"].in_nodes, by_name["transformer.h.0.mlp.c_proj"].out_nodes) == (4 * D, D)
    assert all(l.transposed for l in layers[:-1]) and not layers[-1].transposed


def test_gpt2_kaiming_draws_use_the_conv1d_fans():
    model = build("gpt2")
    ei.emergence_init_(model, alpha=1.0, base="kaiming", example_input=inputs("gpt2"))
    for i in (0, 1):
        c_fc, c_proj = model.transformer.h[i].mlp.c_fc.weight, model.transformer.h[i].mlp.c_proj.weight
        assert tuple(c_fc.shape) == (D, 4 * D) and tuple(c_proj.shape) == (4 * D, D)
        assert c_fc.std().item() == pytest.approx(math.sqrt(2 / D), rel=0.06)  # fan_in = nx = 32
        assert c_proj.std().item() == pytest.approx(math.sqrt(2 / (4 * D)), rel=0.06)  # fan_in = 128
    ei.initialize(model, "kaiming")
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(math.sqrt(2 / (4 * D)), rel=0.06)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_measure_sees_skip_connections_and_warns_once(name):
    model = build(name)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        report = ei.measure_emergence(model, inputs(name))
        again = ei.measure_emergence(model, [inputs(name), inputs(name, IDS.flip(0))])
    assert report.on_graph and math.isfinite(report.log10)
    assert sum(e.kind == "identity" for e in report.graph.edges) >= 3
    assert [l.nodes for l in report.layers] == [l.nodes for l in again.layers] and again.samples == 2 * report.samples
    assert sum("could not trace" in str(w.message) for w in seen) <= 1
    probed = {k for n in report.graph.nodes for k in n.layers}
    assert probed == {l.key for l in find_weight_layers(model, inputs(name))} and report.skipped == ()


def test_llama_reads_the_gated_pair_as_one_node_after_its_activation():
    model = build("llama")
    report = ei.measure_emergence(model, inputs("llama"), mode="mean")
    names = [l.name for l in report.layers]
    assert "model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj" in names
    gated = report.layers[names.index("model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj")]
    mlp = model.model.layers[0].mlp
    seen = {}
    hook = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(**inputs("llama"))
    hook.remove()
    expected = int((seen["x"].reshape(-1, FF).mean(0) > 0.05).sum())  # silu(gate) * up, what down_proj reads
    assert gated.nodes == FF and gated.active == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_blockwise_init_scales_each_ffn_sublayer(name):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = ei.emergence_init_(model, alpha=4.0, schedule="normalized", scope="blockwise", base=None,
                              example_input=inputs(name))
    expected = {}
    for block, (members, depths) in BLOCKS[name].items():
        for member, k in zip(members, depths):
            expected[f"{block}.{member}.weight"] = 0.25 if k == 0 else 4.0
    assert {l.key: l.factor for l in plan if l.block} == expected
    for key, v in model.state_dict().items():
        factor = expected.get(key, 1.0)
        torch.testing.assert_close(v, before[key] * factor, rtol=1e-6, atol=0)


def _train_steps(model, name, steps=3):
    return train_steps(model, lambda m: loss_fn(m(**inputs(name)), IDS), steps, lr=1e-3,
                       optimizer=torch.optim.AdamW)


@pytest.mark.parametrize("scope", ["global", "blockwise"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_then_training_steps_stay_finite(name, scope):
    model = build(name)
    plan = ei.emergence_init_(model, alpha=2.0, schedule="normalized", scope=scope, base="xavier",
                              example_input=inputs(name))
    assert len(plan) == len(find_weight_layers(model, inputs(name)))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return loss_fn(model(**inputs(name)), IDS).item()

    start = eval_loss()
    assert all(math.isfinite(v) for v in _train_steps(model, name))
    assert eval_loss() < start  # the steps learn (dropout aside)


METHODS = {
    "kaiming": {}, "xavier": {}, "emergence": dict(alpha=2.0, schedule="normalized"),
    "lsuv": dict(max_iters=1),
    "metainit": dict(steps=1, loss_fn=loss_fn),
    "gradinit": dict(iters=1, gamma=1e-6, loss_fn=loss_fn),  # a constraint step: differentiates ‖g‖
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_method_initializes_every_hf_model(name):
    for method, options in METHODS.items():
        model = build(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if method in ("lsuv", "metainit", "gradinit"):
            options = {**options, "data": (inputs(name), IDS) if method != "lsuv" else inputs(name)}
        if method == "emergence":
            options = {**options, "example_input": inputs(name)}
        record = ei.initialize(model, method, **options)
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), method
        assert all(torch.isfinite(p).all() for p in model.parameters()), method
        if method in ("metainit", "gradinit"):
            assert record.hvp_passes >= 1
        assert all(math.isfinite(v) for v in _train_steps(model, name, steps=2)), method
