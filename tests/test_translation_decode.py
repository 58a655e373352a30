"""The incremental decoders (cached keys/values, beams picked with tensor operations) give the
reference decoders' hypotheses token for token: on half-trained models whose beams disagree with
greedy and whose hypotheses end at many lengths, at the length limit, with length penalties."""

import pytest
import torch

from _translation_helpers import PAIRS
from emergeinit.bench.translation import decode, decode_reference
from emergeinit.bench.translation.spm import PAD, collate, encode_pairs, train_sentencepiece
from emergeinit.models.transformer import Seq2SeqTransformer


def _model(vocab, seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(dim=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)
    return Seq2SeqTransformer(vocab, **{**opts, **kw})


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory):
    """Models trained 10 and 20 full-batch steps on PAIRS: unsure enough that beam search and
    greedy differ and hypotheses end anywhere from a few tokens to the length limit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sp = train_sentencepiece(PAIRS * 4, vocab_size=100, cache_dir=tmp_path_factory.mktemp("spm"))
        examples = encode_pairs(sp, PAIRS)
        batch = collate(examples, range(len(examples)))
        model = _model(sp.get_piece_size())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
        models = []
        for step in range(1, 21):
            logits = model(batch.src, batch.tgt_in)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in (10, 20):
                models.append(_model(sp.get_piece_size()).eval())
                models[-1].load_state_dict(model.state_dict())
        yield models, sp, batch.src
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("beam,len_penalty", [(1, 1.0), (2, 1.0), (5, 1.0), (5, 0.6), (3, 2.0)])
def test_beam_search_gives_the_reference_hypotheses(half_trained, beam, len_penalty):
    models, _, src = half_trained
    for model in models:
        new = decode.beam_search(model, src, beam=beam, len_penalty=len_penalty)
        assert new == decode_reference.beam_search(model, src, beam=beam, len_penalty=len_penalty)
        assert all(len(h) > 0 for h in new)
    lengths = {len(h) for model in models for h in decode.beam_search(model, src, beam=beam)}
    assert len(lengths) >= 4  # hypotheses that end at many places, the length limit among them


def test_greedy_gives_the_reference_hypotheses_and_beams_differ_from_it(half_trained):
    models, _, src = half_trained
    for model in models:
        greedy = decode.greedy_decode(model, src)
        assert greedy == decode_reference.greedy_decode(model, src)
        assert decode.beam_search(model, src, beam=1) == greedy
    assert decode.beam_search(models[0], src, beam=5) != decode.greedy_decode(models[0], src)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_models_at_the_length_limit(seed):
    model = _model(60, seed=seed).eval()
    src = torch.randint(4, 60, (7, 9), generator=torch.Generator().manual_seed(seed))
    src[3:, 6:] = PAD
    for kw in ({}, {"max_len_b": 3}, {"max_len_a": 0.0, "max_len_b": 0}):
        assert decode.greedy_decode(model, src, **kw) == decode_reference.greedy_decode(model, src, **kw)
        for beam in (2, 4):
            assert decode.beam_search(model, src, beam=beam, **kw) == \
                decode_reference.beam_search(model, src, beam=beam, **kw)


def test_translate_matches_the_reference_path(half_trained):
    models, sp, _ = half_trained
    sources = [de for de, _ in PAIRS]
    for beam in (1, 4):
        assert decode.translate(models[0], sp, sources, beam=beam, max_tokens=40) == \
            decode.translate(models[0], sp, sources, beam=beam, max_tokens=40, reference=True)


@pytest.mark.parametrize("tie_output", [True, False])
def test_decode_step_equals_the_last_position_of_decode(tie_output):
    model = _model(50, tie_output=tie_output, share_embeddings=tie_output).eval()
    src = torch.randint(4, 50, (4, 7), generator=torch.Generator().manual_seed(0))
    src[2:, 5:] = PAD
    tgt = torch.randint(4, 50, (4, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        state = model.start_decoding(memory, mask)
        steps = torch.stack([model.decode_step(tgt[:, t], state) for t in range(tgt.shape[1])], 1)
        torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
        # reordering rows keeps each row's own prefix: a swapped batch decodes as swapped
        state = model.start_decoding(memory, mask)
        for t in range(3):
            model.decode_step(tgt[:, t], state)
        rows = torch.tensor([1, 0, 3, 2])
        swapped = model.start_decoding(memory[rows], mask[rows])
        state.cross_kv, state.memory_mask = swapped.cross_kv, swapped.memory_mask
        state.reorder(rows)
        torch.testing.assert_close(model.decode_step(tgt[rows, 3], state), full[rows, 3], rtol=1e-5, atol=1e-5)
