"""Decoding: greedy search and beam search with a length penalty (fairseq's rule: a finished
hypothesis scores sum(log p) / length ** len_penalty), and BLEU with sacrebleu on detokenized text.

Both decode incrementally: the encoder runs once per batch, each decoder layer's cross-attention
keys and values are computed once per sentence, and every step runs the decoder on the newest
token only, attending the keys and values the earlier steps cached
(:meth:`~emergeinit.models.transformer.Seq2SeqTransformer.decode_step`). Beam search picks
beams for the whole batch with tensor operations (no Python loop over sentences). They give the
hypotheses of :mod:`.decode_reference`, the full-prefix decoders they replace (tested token for
token); ``translate(..., reference=True)`` still runs those.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from emergeinit.bench.loop import autocast

from . import decode_reference
from .decode_reference import step_limit, strip_hypothesis, token_log_probs
from .spm import BOS, EOS, PAD, collate

__all__ = ["greedy_decode", "beam_search", "translate", "corpus_bleu"]


@torch.no_grad()
def greedy_decode(model, src: torch.Tensor, *, max_len_a: float = 1.2, max_len_b: int = 10) -> List[List[int]]:
    """Arg-max decoding of a padded source batch; token ids without bos/eos per sentence."""
    memory, mask = model.encode(src)
    state = model.start_decoding(memory, mask)
    last = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    out = []
    for _ in range(step_limit(src, max_len_a, max_len_b)):
        nxt = token_log_probs(model.decode_step(last, state)).argmax(-1)
        last = torch.where(done, torch.full_like(nxt, PAD), nxt)
        out.append(last)
        done |= last == EOS
        if bool(done.all()):
            break
    if not out:
        return [[] for _ in range(src.shape[0])]
    return [strip_hypothesis(row) for row in torch.stack(out, 1).tolist()]


@torch.no_grad()
def beam_search(
    model,
    src: torch.Tensor,
    *,
    beam: int = 5,
    len_penalty: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> List[List[int]]:
    """The best finished hypothesis per sentence (ids, no bos/eos) by the rule of
    :func:`.decode_reference.beam_search` (top 2·beam continuations; eos among the top beam
    finishes, while the sentence has room; the best ``beam`` others live on; ties go to the
    hypothesis finished first), incrementally and for the whole batch at once."""
    if beam < 1:
        raise ValueError("beam must be >= 1")
    bsz, device = src.shape[0], src.device
    memory, mask = model.encode(src)
    state = model.start_decoding(memory.repeat_interleave(beam, dim=0), mask.repeat_interleave(beam, dim=0))
    steps = step_limit(src, max_len_a, max_len_b)
    neg_inf = float("-inf")
    scores = torch.full((bsz, beam), neg_inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    prefixes = torch.full((bsz * beam, steps + 1), PAD, dtype=torch.long, device=device)  # tokens after bos
    last = torch.full((bsz * beam,), BOS, dtype=torch.long, device=device)
    fin_scores = torch.full((bsz, beam), neg_inf, dtype=torch.float64, device=device)
    fin_tokens = torch.full((bsz, beam, steps + 1), PAD, dtype=torch.long, device=device)
    n_fin = torch.zeros(bsz, dtype=torch.long, device=device)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    first_row = torch.arange(bsz, device=device)[:, None] * beam  # row of each sentence's beam 0
    for step in range(steps + 1):
        logp = token_log_probs(model.decode_step(last, state))
        vocab = logp.shape[-1]
        if step == steps:  # length limit: only eos may follow
            forced = torch.full_like(logp, neg_inf)
            forced[:, EOS] = logp[:, EOS]
            logp = forced
        cand = (scores[:, :, None] + logp.view(bsz, beam, vocab)).view(bsz, -1)
        k = min(2 * beam, cand.shape[1])
        top_scores, top_idx = cand.topk(k, dim=1)
        top_rows, top_tok = first_row + top_idx // vocab, top_idx % vocab
        rank = torch.arange(k, device=device)
        usable = (top_scores != neg_inf) & ~done[:, None]
        is_eos = top_tok == EOS
        # finished: eos among the top `beam`, in rank order, while the sentence has room
        ending = usable & is_eos & (rank < beam)
        slot = n_fin[:, None] + ending.cumsum(1) - 1
        ending &= slot < beam
        b, r = ending.nonzero(as_tuple=True)
        if b.numel():
            fin_scores[b, slot[b, r]] = top_scores[b, r].double() / float((step + 1) ** len_penalty)
            fin_tokens[b, slot[b, r]] = prefixes[top_rows[b, r]]
            n_fin += ending.sum(1)
        # alive: the best `beam` continuations that do not end, in rank order
        going = usable & ~is_eos
        place = going.cumsum(1) - 1
        going &= place < beam
        kept = going.sum(1)
        done |= (n_fin >= beam) | (kept == 0)
        if bool(done.all()):
            break
        new_scores = torch.full((bsz, beam), neg_inf, device=device)
        new_rows = first_row.expand(bsz, beam).clone()  # dead beams: any row of their sentence
        new_tok = torch.full((bsz, beam), EOS, dtype=torch.long, device=device)
        b, r = going.nonzero(as_tuple=True)
        new_scores[b, place[b, r]] = top_scores[b, r]
        new_rows[b, place[b, r]] = top_rows[b, r]
        new_tok[b, place[b, r]] = top_tok[b, r]
        scores, rows, last = new_scores, new_rows.view(-1), new_tok.view(-1)
        prefixes = prefixes.index_select(0, rows)
        prefixes[:, step] = last
        state.reorder(rows)
    best = fin_scores.argmax(1).tolist()  # the first of equal scores: the one finished first
    found = n_fin.tolist()
    return [strip_hypothesis(row[j]) if n else [] for row, j, n in zip(fin_tokens.tolist(), best, found)]


@torch.no_grad()
def translate(
    model,
    sp,
    sources: Sequence[str],
    *,
    beam: int = 5,
    len_penalty: float = 1.0,
    max_tokens: int = 4096,
    max_len: Optional[int] = None,
    device: str = "cpu",
    amp: bool = False,
    reference: bool = False,
) -> List[str]:
    """Detokenized translations of ``sources`` (batched by length, about ``max_tokens`` source
    tokens × beam per batch; returned in input order). ``amp``: bf16 autocast on CUDA.
    ``reference``: decode with :mod:`.decode_reference` (comparisons, benchmarks)."""
    from .spm import token_batches

    greedy, search = (decode_reference.greedy_decode, decode_reference.beam_search) if reference else \
        (greedy_decode, beam_search)
    was_training = model.training
    model.eval()
    ids = sp.encode(list(sources))
    if max_len is not None:
        ids = [s[:max_len] for s in ids]
    examples = [(s, s) for s in ids]  # target side unused: batch by source length
    out: List[Optional[str]] = [None] * len(ids)
    try:
        for idx in token_batches(examples, max_tokens=max(1, max_tokens // max(beam, 1))):
            src = collate(examples, idx).src.to(device)
            with autocast(amp, device):
                if beam == 1:
                    hyps = greedy(model, src)
                else:
                    hyps = search(model, src, beam=beam, len_penalty=len_penalty)
            for i, h in zip(idx, hyps):
                out[i] = sp.decode(h)
    finally:
        model.train(was_training)
    return [o or "" for o in out]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU (13a tokenization, mixed case) of detokenized hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
