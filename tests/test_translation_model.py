"""Translation model, decoding, schedule and inits: a tiny transformer memorizes a handful of pairs
(BLEU ~100), beam 1 equals greedy, the inverse-sqrt schedule's values, post-LN structure and
masking invariances, and which tensors each init by name touches, by how much."""

import math

import pytest
import torch

from _translation_helpers import PAIRS

from emergeinit.bench.config import resolve_config
from emergeinit.bench.translation.decode import beam_search, corpus_bleu, greedy_decode, translate
from emergeinit.bench.translation.spm import EOS, PAD, collate, encode_pairs, train_sentencepiece
from emergeinit.bench.translation.train import apply_init, inverse_sqrt_lr
from emergeinit.models.transformer import DecoderLayer, EncoderLayer, FeedForward, Seq2SeqTransformer



def tiny(vocab=60, **kw):
    opts = dict(dim=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)
    opts.update(kw)
    return Seq2SeqTransformer(vocab, **opts)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """A 1+1-layer model trained to memorize PAIRS (full batch, Adam), and its tokenizer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    try:
        yield _memorize(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _memorize(tmp_path_factory):
    sp = train_sentencepiece(PAIRS * 4, vocab_size=100, cache_dir=tmp_path_factory.mktemp("spm"))
    examples = encode_pairs(sp, PAIRS)
    batch = collate(examples, range(len(examples)))
    torch.manual_seed(0)
    model = tiny(sp.get_piece_size(), dim=32, ffn_dim=64, encoder_layers=1, decoder_layers=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    for _ in range(120):
        logits = model(batch.src, batch.tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(),
                                                 ignore_index=PAD, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), sp


def test_tiny_model_memorizes_pairs_bleu_near_100(memorized):
    model, sp = memorized
    refs = [en for _, en in PAIRS]
    for beam in (1, 5):
        hyps = translate(model, sp, [de for de, _ in PAIRS], beam=beam)
        assert corpus_bleu(hyps, refs) > 95.0, hyps
    assert corpus_bleu(["completely unrelated words here"] * 6, refs) < 5.0


def test_beam_one_equals_greedy(memorized):
    model, sp = memorized
    batch = collate(encode_pairs(sp, PAIRS), range(len(PAIRS)))
    assert beam_search(model, batch.src, beam=1) == greedy_decode(model, batch.src)
    torch.manual_seed(1)  # an untrained model too: no eos, both run to the length limit
    fresh = tiny().eval()
    src = torch.randint(4, 60, (5, 7))
    src[1, 4:] = PAD
    greedy = greedy_decode(fresh, src, max_len_b=6)
    assert beam_search(fresh, src, beam=1, max_len_b=6) == greedy
    assert all(EOS not in h for h in greedy)


def test_beam_search_is_batch_independent(memorized):
    model, sp = memorized
    batch = collate(encode_pairs(sp, PAIRS), range(len(PAIRS)))
    together = beam_search(model, batch.src, beam=3)
    alone = [beam_search(model, batch.src[i:i + 1, : int((batch.src[i] != PAD).sum())], beam=3)[0]
             for i in range(len(PAIRS))]
    assert together == alone


@pytest.mark.parametrize("step, expected", [
    (1, 5e-4 / 4000), (2000, 2.5e-4), (4000, 5e-4), (16000, 2.5e-4), (64000, 1.25e-4), (4001, 5e-4 * math.sqrt(4000 / 4001)),
])
def test_inverse_sqrt_schedule_values(step, expected):
    assert inverse_sqrt_lr(step, 5e-4, 4000) == pytest.approx(expected, rel=1e-12)


def test_inverse_sqrt_rejects_no_warmup():
    with pytest.raises(ValueError):
        inverse_sqrt_lr(1, 5e-4, 0)


def test_post_ln_structure_and_conventions():
    model = tiny()
    assert sum(isinstance(m, EncoderLayer) and m.emergeinit_encoder_layer for m in model.modules()) == 2
    assert sum(isinstance(m, DecoderLayer) and m.emergeinit_decoder_layer for m in model.modules()) == 2
    assert sum(isinstance(m, FeedForward) and m.emergeinit_block for m in model.modules()) == 4
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 2 * 2 + 2 * 3
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in tiny(layer_norm=False).modules())
    # shared + tied: one V x d table; separate + untied: three
    d, v = 32, 60
    n_shared = sum(p.numel() for p in model.parameters())
    n_separate = sum(p.numel() for p in tiny(share_embeddings=False, tie_output=False).parameters())
    assert n_separate - n_shared == 2 * v * d
    src = torch.randint(4, v, (2, 5))
    tgt = torch.randint(4, v, (2, 4))
    model.eval()
    logits = model(src, tgt)
    assert logits.shape == (2, 4, v)
    # tied output: logits are the decoder state times the target embedding table
    with torch.no_grad():
        model.tgt_embed.weight[3] += torch.randn(d)  # eos: never among these inputs
    moved = model(src, tgt)
    assert not torch.allclose(moved[..., 3], logits[..., 3])
    assert torch.allclose(moved[..., 4:], logits[..., 4:])


def test_causal_and_padding_invariance():
    torch.manual_seed(0)
    model = tiny().eval()
    src = torch.randint(4, 60, (1, 6))
    tgt = torch.randint(4, 60, (1, 5))
    out = model(src, tgt)
    changed = tgt.clone()
    changed[0, 3] = 5
    assert torch.allclose(model(src, changed)[:, :3], out[:, :3], atol=1e-6)  # no peeking ahead
    assert not torch.allclose(model(src, changed)[:, 3], out[:, 3])
    padded = torch.cat([src, torch.full((1, 3), PAD)], dim=1)
    assert torch.allclose(model(padded, tgt), out, atol=1e-5)  # padding is invisible


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_blockwise_emergence_touches_only_ffn_linears_with_the_right_factors():
    torch.manual_seed(0)
    model = tiny()
    before = _weights(model)
    src, tgt = torch.randint(4, 60, (2, 5)), torch.randint(4, 60, (2, 4))
    record = apply_init(model, "emergence", {"alpha": 10.0, "schedule": "literal", "base": None}, (src, tgt))
    after = _weights(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    ffn = {f"{side}_layers.{i}.ffn.{fc}.weight" for side in ("encoder", "decoder") for i in (0, 1)
           for fc in ("fc1", "fc2")}
    assert changed == ffn
    for key in ffn:  # literal eq 8 on a 2-layer block: e = -1/2, +1/2
        factor = 10 ** -0.5 if ".fc1." in key else 10 ** 0.5
        assert torch.allclose(after[key], before[key] * factor, rtol=1e-6)
    assert record["method"] == "emergence"


def test_blockwise_emergence_default_plan_on_xavier_base():
    torch.manual_seed(0)
    model = tiny()
    before = _weights(model)
    src, tgt = torch.randint(4, 60, (2, 5)), torch.randint(4, 60, (2, 4))
    record = apply_init(model, "emergence", {"schedule": "normalized"}, (src, tgt))  # α = 10 by default
    plan = record["details"]["plan"]
    scaled = {l["key"]: l["factor"] for l in plan["layers"] if l["factor"] != 1.0}
    assert scaled == {f"{side}_layers.{i}.ffn.{fc}.weight": (0.1 if fc == "fc1" else 10.0)
                      for side in ("encoder", "decoder") for i in (0, 1) for fc in ("fc1", "fc2")}
    after = _weights(model)
    assert torch.equal(after["src_embed.weight"], before["src_embed.weight"])  # embeddings kept
    bound = math.sqrt(6 / (32 + 64))  # Xavier-uniform bound of fc2 (64 -> 32), times α
    assert after["encoder_layers.0.ffn.fc2.weight"].abs().max() <= 10 * bound
    assert after["encoder_layers.0.ffn.fc2.weight"].abs().max() > 5 * bound


def test_encoder_decoder_scheme_and_tfixup_find_the_layers():
    torch.manual_seed(0)
    model = tiny(layer_norm=False)
    src, tgt = torch.randint(4, 60, (2, 5)), torch.randint(4, 60, (2, 4))
    plan = apply_init(model, "emergence_encdec", {"beta_dec": 2.0}, (src, tgt))
    assert plan["meta"]["n_encoder"] == 2 and plan["meta"]["n_decoder"] == 2
    factors = {l["key"]: l["factor"] for l in plan["layers"]}
    t_dec = (9 * 2) ** -0.25
    assert factors["decoder_layers.1.ffn.fc2.weight"] == pytest.approx(2.0 * t_dec)
    assert factors["decoder_layers.0.self_attn.q_proj.weight"] == pytest.approx(2.0)
    assert factors["encoder_layers.0.self_attn.v_proj.weight"] == pytest.approx(0.67 * 2 ** -0.25)
    record = apply_init(tiny(), "xavier", {}, (src, tgt))
    assert record["method"] == "xavier"


def test_config_resolution_rejects_typos_and_unknown_inits():
    cfg = resolve_config({"task": "translation", "protocol": "iwslt14"})
    assert (cfg["dim"], cfg["ffn_dim"], cfg["encoder_layers"], cfg["decoder_layers"]) == (512, 1024, 6, 6)
    assert (cfg["lr"], cfg["betas"], cfg["warmup_steps"], cfg["weight_decay"]) == (5e-4, [0.9, 0.98], 4000, 1e-4)
    assert (cfg["label_smoothing"], cfg["clip_grad_norm"], cfg["bleu_beam"]) == (0.1, None, 5)
    with pytest.raises(ValueError, match="unknown config keys .* for task translation"):
        resolve_config({"task": "translation", "protocol": "cpu_small", "learning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown init"):
        resolve_config({"task": "translation", "init": "kaiming_magic"})
