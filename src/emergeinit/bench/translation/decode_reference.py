"""The reference decoders: greedy and beam search that re-run the decoder on the whole prefix at
every step and pick beams sentence by sentence in Python. They are the first decoders of this
harness, kept as the definition the fast ones in :mod:`.decode` must reproduce (tests compare
hypotheses token for token) and as the baseline of ``benchmarks/bench_decode.py``."""

from __future__ import annotations

from typing import List

import torch

from .spm import BOS, EOS, PAD

__all__ = ["greedy_decode", "beam_search", "step_limit", "strip_hypothesis", "token_log_probs"]


def step_limit(src: torch.Tensor, max_len_a: float, max_len_b: int) -> int:
    """Decoding steps allowed for a padded source batch: ``a · longest source + b``."""
    src_len = int((src != PAD).sum(1).max())
    return int(max_len_a * src_len + max_len_b)


def strip_hypothesis(row: List[int]) -> List[int]:
    """Decoded token ids up to the first eos, padding dropped."""
    if EOS in row:
        row = row[: row.index(EOS)]
    return [t for t in row if t != PAD]


def token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [B, V] of the next token from its logits, in float32; padding and bos are
    never emitted (-inf)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, PAD] = float("-inf")  # never emit padding or a second bos
    logp[:, BOS] = float("-inf")
    return logp


def _next_log_probs(model, tokens: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return token_log_probs(model.decode(tokens, memory, mask)[:, -1])


@torch.no_grad()
def greedy_decode(model, src: torch.Tensor, *, max_len_a: float = 1.2, max_len_b: int = 10) -> List[List[int]]:
    """Arg-max decoding of a padded source batch; token ids without bos/eos per sentence."""
    memory, mask = model.encode(src)
    tokens = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(step_limit(src, max_len_a, max_len_b)):
        nxt = _next_log_probs(model, tokens, memory, mask).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [strip_hypothesis(row) for row in tokens[:, 1:].tolist()]


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
    """Batched beam search; returns the best finished hypothesis per sentence (ids, no bos/eos).

    Each step expands every live beam, takes the 2·beam best continuations, finishes those that
    end in eos *among the top beam* and keeps the best ``beam`` others alive; a sentence is done
    when it has ``beam`` finished hypotheses (beam 1 is then exactly greedy). At the length limit
    live beams are finished with an eos.
    """
    if beam < 1:
        raise ValueError("beam must be >= 1")
    bsz, device = src.shape[0], src.device
    memory, mask = model.encode(src)
    memory = memory.repeat_interleave(beam, dim=0)
    mask = mask.repeat_interleave(beam, dim=0)
    tokens = torch.full((bsz * beam, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((bsz, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: List[List[tuple]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    steps = step_limit(src, max_len_a, max_len_b)
    for step in range(steps + 1):
        logp = _next_log_probs(model, tokens, memory, mask)
        vocab = logp.shape[-1]
        if step == steps:  # length limit: only eos may follow
            forced = torch.full_like(logp, float("-inf"))
            forced[:, EOS] = logp[:, EOS]
            logp = forced
        cand = (scores[:, :, None] + logp.view(bsz, beam, vocab)).view(bsz, -1)
        top_scores, top_idx = cand.topk(min(2 * beam, cand.shape[1]), dim=1)
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        new_scores = torch.full((bsz, beam), float("-inf"), device=device)
        new_rows = torch.zeros(bsz, beam, dtype=torch.long, device=device)
        new_tok = torch.full((bsz, beam), EOS, dtype=torch.long, device=device)
        ts, tb, tt = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
        prefixes = tokens[:, 1:]
        for b in range(bsz):
            if done[b]:
                continue
            kept = 0
            for rank, (s, k, t) in enumerate(zip(ts[b], tb[b], tt[b])):
                if s == float("-inf"):
                    break
                if t == EOS:
                    if rank < beam and len(finished[b]) < beam:
                        hyp = prefixes[b * beam + k].tolist()
                        finished[b].append((s / (len(hyp) + 1) ** len_penalty, hyp))
                    continue
                if kept < beam:
                    new_scores[b, kept], new_rows[b, kept], new_tok[b, kept] = s, b * beam + k, t
                    kept += 1
            if len(finished[b]) >= beam or kept == 0:
                done[b] = True
        if all(done):
            break
        scores = new_scores
        tokens = torch.cat([tokens[new_rows.view(-1)], new_tok.view(-1, 1)], dim=1)
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
