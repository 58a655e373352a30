"""T-Fixup and the encoder/decoder scheme on nn.Transformer and on a harness-style transformer."""

import math

import pytest
import torch
from torch import nn

import emergeinit as ei
from emergeinit.plan import find_transformer_layers, tfixup_factors

D, FF = 16, 32


def torch_transformer(n_enc=3, n_dec=2):
    return nn.Transformer(d_model=D, nhead=2, num_encoder_layers=n_enc, num_decoder_layers=n_dec,
                          dim_feedforward=FF, dropout=0.0, batch_first=True)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x, mem):
        a = torch.softmax(self.q_proj(x) @ self.k_proj(mem).transpose(-1, -2) / D ** 0.5, -1)
        return self.out_proj(a @ self.v_proj(mem))


class FFN(nn.Module):
    emergeinit_block = True

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, FF), nn.Linear(FF, D)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class EncLayer(nn.Module):
    emergeinit_encoder_layer = True

    def __init__(self):
        super().__init__()
        self.self_attn, self.ffn, self.norm = Attention(), FFN(), nn.LayerNorm(D)

    def forward(self, x):
        x = self.norm(x + self.self_attn(x, x))
        return self.norm(x + self.ffn(x))


class DecLayer(EncLayer):
    emergeinit_encoder_layer = False
    emergeinit_decoder_layer = True

    def __init__(self):
        super().__init__()
        self.cross_attn = Attention()

    def forward(self, x, mem):
        x = self.norm(x + self.self_attn(x, x))
        x = self.norm(x + self.cross_attn(x, mem))
        return self.norm(x + self.ffn(x))


class Seq2Seq(nn.Module):
    """Shaped like the harness's translation model: shared-vocabulary embeddings, tied output."""

    def __init__(self, vocab=20, n_enc=2, n_dec=3):
        super().__init__()
        self.src_embed = nn.Embedding(vocab, D, padding_idx=0)
        self.tgt_embed = nn.Embedding(vocab, D, padding_idx=0)
        self.encoder = nn.ModuleList(EncLayer() for _ in range(n_enc))
        self.decoder = nn.ModuleList(DecLayer() for _ in range(n_dec))
        self.out = nn.Linear(D, vocab, bias=False)
        self.out.weight = self.tgt_embed.weight

    def forward(self, src, tgt):
        m = self.src_embed(src)
        for layer in self.encoder:
            m = layer(m)
        y = self.tgt_embed(tgt)
        for layer in self.decoder:
            y = layer(y, m)
        return self.out(y)


def test_published_factors():
    f = tfixup_factors(6, 6)
    assert f["encoder"] == pytest.approx(0.67 * 6 ** -0.25)
    assert f["decoder"] == pytest.approx(54 ** -0.25)
    assert f["embedding"] == pytest.approx(54 ** -0.25)
    assert tfixup_factors(4, 0)["embedding"] == pytest.approx(36 ** -0.25)


def _pair(builder, **kwargs):
    """The same random stream drawn as plain Xavier and as the scheme: ratios are the factors."""
    torch.manual_seed(0)
    xav = builder()
    torch.manual_seed(1)
    ei.encoder_decoder_init_(xav, base="xavier", beta_enc=1.0, beta_dec=1.0)
    torch.manual_seed(0)
    model = builder()
    torch.manual_seed(1)
    plan = kwargs.pop("fn", ei.tfixup_init_)(model, **kwargs)
    return xav, model, plan


def ratio(a, b):
    return (a / b).flatten()


def test_tfixup_on_nn_transformer():
    xav, model, plan = _pair(torch_transformer)
    enc, dec = 0.67 * 3 ** -0.25, 18 ** -0.25
    e0, d1 = model.encoder.layers[0], model.decoder.layers[1]
    x0, xd1 = xav.encoder.layers[0], xav.decoder.layers[1]
    w, xw = e0.self_attn.in_proj_weight, x0.self_attn.in_proj_weight
    torch.testing.assert_close(w[:2 * D], xw[:2 * D], rtol=0, atol=0)  # q, k untouched
    torch.testing.assert_close(w[2 * D:], xw[2 * D:] * enc, rtol=1e-6, atol=0)  # v
    torch.testing.assert_close(e0.linear1.weight, x0.linear1.weight * enc, rtol=1e-6, atol=0)
    torch.testing.assert_close(e0.self_attn.out_proj.weight, x0.self_attn.out_proj.weight * enc, rtol=1e-6, atol=0)
    for attn in ("self_attn", "multihead_attn"):
        w, xw = getattr(d1, attn).in_proj_weight, getattr(xd1, attn).in_proj_weight
        torch.testing.assert_close(w[:2 * D], xw[:2 * D], rtol=0, atol=0)
        torch.testing.assert_close(w[2 * D:], xw[2 * D:] * dec, rtol=1e-6, atol=0)
    torch.testing.assert_close(d1.linear2.weight, xd1.linear2.weight * dec, rtol=1e-6, atol=0)
    # Xavier per q/k/v slice: each slice is E×E
    bound = math.sqrt(6 / (2 * D))
    assert xw[:D].abs().max() <= bound and xw[:D].abs().max() > 0.9 * bound
    assert all(b.abs().sum() == 0 for n, b in model.named_parameters() if n.endswith("bias"))
    assert sum(l.factor == pytest.approx(enc) for l in plan) == 3 * 4
    assert sum(l.factor == pytest.approx(dec) for l in plan) == 2 * 6


def test_tfixup_on_harness_style_transformer_with_embeddings():
    xav, model, plan = _pair(Seq2Seq)
    enc, dec, emb = 0.67 * 2 ** -0.25, 27 ** -0.25, 27 ** -0.25
    e, x = model.encoder[1], xav.encoder[1]
    torch.testing.assert_close(e.self_attn.v_proj.weight, x.self_attn.v_proj.weight * enc, rtol=1e-6, atol=0)
    torch.testing.assert_close(e.self_attn.q_proj.weight, x.self_attn.q_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(e.ffn.fc2.weight, x.ffn.fc2.weight * enc, rtol=1e-6, atol=0)
    d, xd = model.decoder[0], xav.decoder[0]
    torch.testing.assert_close(d.cross_attn.out_proj.weight, xd.cross_attn.out_proj.weight * dec, rtol=1e-6, atol=0)
    torch.testing.assert_close(d.cross_attn.k_proj.weight, xd.cross_attn.k_proj.weight, rtol=0, atol=0)
    # embeddings: N(0, d^-1/2) × (9M)^-1/4, padding row 0; the tied output projection is the same tensor
    keys = [l.key for l in plan]
    assert keys.count("tgt_embed.weight") == 1 and "out.weight" not in keys
    assert plan["tgt_embed.weight"].factor == pytest.approx(emb)
    for table in (model.src_embed.weight, model.tgt_embed.weight):
        assert torch.count_nonzero(table[0]) == 0
    torch.manual_seed(0)
    big = nn.Embedding(4000, D)
    torch.manual_seed(0)
    wrapped = nn.ModuleDict({"emb": big, "enc": EncLayer()})
    ei.tfixup_init_(wrapped)
    assert big.weight.std().item() == pytest.approx(D ** -0.5 * 9 ** -0.25, rel=0.03)


def test_scale_embeddings_off_and_explicit_layer_lists():
    torch.manual_seed(0)
    model = Seq2Seq()
    plan = ei.tfixup_init_(model, scale_embeddings=False, encoder_layers=["encoder.*"],
                           decoder_layers=list(model.decoder))
    assert plan["src_embed.weight"].factor == 1.0
    assert plan.meta["encoder_layers"] == ["encoder.0", "encoder.1"]
    assert plan.meta["decoder_layers"] == ["decoder.0", "decoder.1", "decoder.2"]
    enc, dec = find_transformer_layers(torch_transformer())
    assert len(enc) == 3 and len(dec) == 2


def test_layer_patterns_match_as_blocks_do():
    """One matcher for encoder_layers= and blocks=: ``*`` is one name segment, ``**`` any number."""
    model = torch_transformer(2, 2)
    enc, dec = find_transformer_layers(model, ["encoder.layers.*"], ["**.decoder.layers.*", "decoder.layers.*"])
    assert enc == ["encoder.layers.0", "encoder.layers.1"] and dec == ["decoder.layers.0", "decoder.layers.1"]
    enc, _ = find_transformer_layers(model, ["**.layers.0"], [])  # outermost of the matches
    assert enc == ["encoder.layers.0", "decoder.layers.0"]
    with pytest.raises(ValueError, match="matches no module"):
        find_transformer_layers(model, ["*.0"], None)  # fnmatch's "*" crossed dots; ours does not
    x = torch.randn(2, 3, D)
    plan = ei.plan_emergence(model, alpha=2.0, scope="blockwise", blocks=["encoder.layers.*"], example_input=(x, x))
    assert sorted({l.block for l in plan if l.block}) == ["encoder.layers.0", "encoder.layers.1"]


def test_encoder_decoder_scheme_on_top_of_tfixup():
    _, tfix, _ = _pair(Seq2Seq)
    _, ours, plan = _pair(Seq2Seq, fn=ei.encoder_decoder_init_, beta_enc=1.5, beta_dec=2.0)
    for (n, a), b in zip(ours.named_parameters(), tfix.parameters()):
        if n.startswith("encoder.") and n.endswith("weight") and "norm" not in n:
            torch.testing.assert_close(a, b / 1.5, rtol=1e-6, atol=0)
        elif n.startswith("decoder.") and n.endswith("weight") and "norm" not in n:
            torch.testing.assert_close(a, b * 2.0, rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # embeddings, norms, biases
    assert plan["decoder.0.ffn.fc1.weight"].factor == pytest.approx(2.0 * 27 ** -0.25)


def test_encoder_decoder_scheme_without_base_scales_current_weights():
    torch.manual_seed(0)
    model = torch_transformer()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    ei.encoder_decoder_init_(model, base=None, beta_enc=4.0, beta_dec=2.0)
    for k, v in model.state_dict().items():
        is_weight = k.endswith("weight") and "norm" not in k
        if k.startswith("encoder.layers") and is_weight:
            assert torch.equal(v, old[k] / 4.0), k
        elif k.startswith("decoder.layers") and is_weight:
            assert torch.equal(v, old[k] * 2.0), k
        else:
            assert torch.equal(v, old[k]), k


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta_dec=0.0), "beta_dec"),
    (dict(beta_enc=float("nan")), "beta_enc"),
    (dict(base="kaiming"), "unknown base"),
    (dict(encoder_layers=["enc.*"]), "matches no module"),
    (dict(gain=0.0), "gain must be a positive"),
    (dict(gain=-1.0), "gain must be a positive"),
    (dict(scale_embeddings="no"), "scale_embeddings must be True or False"),
])
def test_bad_input_leaves_the_model_untouched(kwargs, match):
    torch.manual_seed(0)
    model = Seq2Seq()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        ei.encoder_decoder_init_(model, **kwargs)
    assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items())


def test_fp16_overflow_is_caught_first():
    torch.manual_seed(0)
    model = Seq2Seq().half()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="overflows torch.float16"):
        ei.encoder_decoder_init_(model, beta_dec=1e6)
    assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items())


def test_model_without_transformer_layers():
    with pytest.raises(ValueError, match="no encoder or decoder layers"):
        ei.tfixup_init_(nn.Sequential(nn.Linear(3, 3)))


def test_frozen_embeddings_and_encoder_are_left_as_they_are():
    torch.manual_seed(0)
    model = Seq2Seq()
    model.src_embed.requires_grad_(False)
    model.encoder.requires_grad_(False)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="frozen tensors .* src_embed.weight"):
        plan = ei.tfixup_init_(model)
    frozen = [k for k in old if k.startswith(("src_embed.", "encoder."))]
    assert all(torch.equal(model.state_dict()[k], old[k]) for k in frozen)
    assert set(plan.meta["frozen"]) == {k for k in frozen if k.endswith("weight") and "norm" not in k}
    assert not torch.equal(model.decoder[0].ffn.fc1.weight, old["decoder.0.ffn.fc1.weight"])
    whole = ei.tfixup_init_(model, include_frozen=True)
    assert whole.meta["frozen"] == [] and not torch.equal(model.src_embed.weight, old["src_embed.weight"])
