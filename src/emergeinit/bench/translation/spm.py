"""Subword units and batches: a joint sentencepiece BPE model trained on the training split only
(cached by the hash of its text and options), and batches by token count of similar lengths."""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .data import Pair, pairs_text

__all__ = [
    "PAD", "UNK", "BOS", "EOS",
    "train_sentencepiece",
    "load_sentencepiece",
    "encode_pairs",
    "token_batches",
    "collate",
    "Batch",
]

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def _spm_key(sentences: Sequence[str], vocab_size: int, model_type: str) -> str:
    h = hashlib.sha1(f"{vocab_size}|{model_type}|".encode())
    for s in sentences:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def train_sentencepiece(
    train_pairs: Sequence[Pair],
    *,
    vocab_size: int = 8000,
    model_type: str = "bpe",
    cache_dir: Optional[Union[str, Path]] = None,
):
    """A joint source+target sentencepiece model trained on ``train_pairs`` only.

    With ``cache_dir`` the model is saved as ``spm-<hash>.model`` (hash of the training text,
    vocabulary size and type) and loaded from there next time. Ids: pad 0, unk 1, bos 2, eos 3.
    The vocabulary size is a soft limit, so tiny corpora get what they can hold.
    """
    import sentencepiece as spm

    sentences = pairs_text(train_pairs)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"spm-{_spm_key(sentences, vocab_size, model_type)}.model"
        if path.is_file():
            return load_sentencepiece(path)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=1,
        minloglevel=2,
    )
    model_bytes = buffer.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(model_bytes)
        tmp.replace(path)  # atomic: a concurrent run never reads half a model
    return spm.SentencePieceProcessor(model_proto=model_bytes)


def load_sentencepiece(path: Union[str, Path]):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def encode_pairs(sp, pairs: Sequence[Pair], max_len: Optional[int] = None) -> List[Tuple[List[int], List[int]]]:
    """Token ids of each pair (no bos/eos); pieces beyond ``max_len`` are cut off."""
    src = sp.encode([p[0] for p in pairs])
    tgt = sp.encode([p[1] for p in pairs])
    if max_len is not None:
        src = [s[:max_len] for s in src]
        tgt = [t[:max_len] for t in tgt]
    return list(zip(src, tgt))


def token_batches(
    examples: Sequence[Tuple[Sequence[int], Sequence[int]]],
    max_tokens: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> List[List[int]]:
    """Indices of ``examples`` grouped into batches of similar length, fairseq style.

    Examples are sorted by (target, source) length (+1 for eos) and cut greedily so that a batch's
    padded size, ``len(batch) * longest``, stays within ``max_tokens`` (a longer single example
    is a batch of its own). ``shuffle`` breaks length ties at random and shuffles the batch order.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    if shuffle:
        rng.shuffle(idx)  # random tie-break, then a stable sort by length
    idx.sort(key=lambda i: (len(examples[i][1]), len(examples[i][0])))
    batches: List[List[int]] = []
    current: List[int] = []
    longest = 0
    for i in idx:
        n = max(len(examples[i][0]), len(examples[i][1])) + 1
        if current and (len(current) + 1) * max(longest, n) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Padded tensors of one batch: ``src`` [B, S] (+eos), ``tgt_in`` [B, T] (bos+y), ``tgt_out`` (y+eos)."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor

    @property
    def ntokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def to(self, device: Union[str, torch.device]) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device))


def _pad(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[Tuple[Sequence[int], Sequence[int]]], indices: Sequence[int]) -> Batch:
    """One padded :class:`Batch` from ``examples[indices]``."""
    chosen = [examples[i] for i in indices]
    src = _pad([list(s) + [EOS] for s, _ in chosen])
    tgt_in = _pad([[BOS] + list(t) for _, t in chosen])
    tgt_out = _pad([list(t) + [EOS] for _, t in chosen])
    return Batch(src, tgt_in, tgt_out)
