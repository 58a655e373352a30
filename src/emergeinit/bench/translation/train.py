"""Train one translation run (the paper's Table 2): corpus → sentencepiece → post-LN transformer →
init by name → AdamW + inverse-sqrt schedule, label smoothing 0.1; each epoch the validation loss
and BLEU (sacrebleu, detokenized). ``run(config)`` returns the task part of a harness record.
The config's keys and protocols are :mod:`emergeinit.bench.config`'s; the optimizer steps,
device, threads and divergence checks are :mod:`emergeinit.bench.loop`'s."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import emergeinit as ei
from emergeinit.bench.config import resolve_config
from emergeinit.bench.env import device_name
from emergeinit.bench.loop import optimizer_options, pick_device, run_settings, step_budget, train_steps
from emergeinit.models.transformer import Seq2SeqTransformer

from .data import load_corpus
from .decode import corpus_bleu, translate
from .spm import PAD, Batch, collate, encode_pairs, token_batches, train_sentencepiece

__all__ = ["inverse_sqrt_lr", "build_model", "apply_init", "evaluate_nll", "run"]

Examples = Sequence[Tuple[Sequence[int], Sequence[int]]]


def inverse_sqrt_lr(step: int, lr: float, warmup: int) -> float:
    """Learning rate of update number ``step`` (1-based): linear warm-up from 0 to ``lr`` over
    ``warmup`` updates, then ``lr * sqrt(warmup / step)`` (fairseq's inverse_sqrt)."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1")
    if step <= warmup:
        return lr * step / warmup
    return lr * math.sqrt(warmup / step)


def build_model(config: Mapping[str, Any], vocab_size: int) -> Seq2SeqTransformer:
    """The configured transformer over a vocabulary of ``vocab_size`` pieces (pad id PAD)."""
    c = config
    return Seq2SeqTransformer(
        vocab_size, dim=c["dim"], ffn_dim=c["ffn_dim"], heads=c["heads"],
        encoder_layers=c["encoder_layers"], decoder_layers=c["decoder_layers"], dropout=c["dropout"],
        attention_dropout=c["attention_dropout"], activation_dropout=c["activation_dropout"],
        share_embeddings=c["share_embeddings"], tie_output=c["tie_output"], layer_norm=c["layer_norm"],
        max_positions=max(1024, c["max_len"] * 2 + 16), pad_id=PAD,
    )


def apply_init(model: torch.nn.Module, init: str, options: Mapping[str, Any],
               example_input: Tuple[torch.Tensor, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """Initialize ``model`` in place by name; returns the init record as a dict (None: 'default').

    ``emergence`` defaults to the paper's blockwise scheme on each FFN pair (base Xavier, α = 10);
    ``emergence_encdec`` is the global scheme: T-Fixup, then decoder weights × beta_dec (2).
    """
    if init == "default":
        return None
    if init == "emergence_encdec":
        return ei.encoder_decoder_init_(model, **options).to_dict()
    if init == "emergence":  # layers are traced in execution order on a real batch
        options = {"scope": "blockwise", "base": "xavier", "alpha": 10.0, "example_input": example_input, **options}
    return ei.initialize(model, init, **options).to_dict()


def check_init(config: Mapping[str, Any]) -> None:
    """The config's init and its options, checked as :func:`apply_init` would use them, without a
    model (a grid runs this for every config before its first run)."""
    init, options = config["init"], dict(config.get("init_options") or {})
    if init == "default" and options:
        raise ValueError(f"init 'default' takes no options, got {sorted(options)}")
    if init == "emergence_encdec":
        ei.check_options(ei.encoder_decoder_init_, options)
    elif init == "emergence":
        ei.check_options(init, {"scope": "blockwise", "base": "xavier", "alpha": 10.0, **options})
    elif init != "default":
        ei.check_options(init, options)


def _loss(model, batch: Batch, label_smoothing: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed loss, NLL), both summed over the batch's target tokens."""
    logits = model(batch.src, batch.tgt_in).float().flatten(0, 1)
    target = batch.tgt_out.flatten()
    smoothed = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=label_smoothing, reduction="sum")
    nll = F.cross_entropy(logits, target, ignore_index=PAD, reduction="sum")
    return smoothed, nll


@torch.no_grad()
def evaluate_nll(model, examples, max_tokens: int, device) -> float:
    """Mean NLL per target token (nats, eos included) of ``examples`` in eval mode."""
    was = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for idx in token_batches(examples, max_tokens):
            batch = collate(examples, idx).to(device)
            total += float(_loss(model, batch, 0.0)[1])
            tokens += batch.ntokens
    finally:
        model.train(was)
    return total / max(tokens, 1)


def _bleu(model, sp, pairs, config, device) -> Tuple[float, List[str]]:
    pairs = pairs[: config["bleu_max_sentences"]] if config["bleu_max_sentences"] else pairs
    hyps = translate(
        model, sp, [p[0] for p in pairs], beam=config["bleu_beam"], len_penalty=config["len_penalty"],
        max_tokens=config["decode_max_tokens"] or config["max_tokens"], max_len=config["max_len"], device=device,
        amp=config["amp"],
    )
    return corpus_bleu(hyps, [p[1] for p in pairs]), hyps


def _measure(model, example, config) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    if not config["measure_emergence"]:
        return None, None
    try:  # an auxiliary number: a probe that cannot handle this model must not lose the run
        src, tgt_in = example
        return ei.measure_emergence(model, {"src": src, "tgt_in": tgt_in}).to_dict(), None
    except Exception as err:  # noqa: BLE001
        return None, f"{type(err).__name__}: {err}"


def _train_epoch(model: Seq2SeqTransformer, optimizer: torch.optim.Optimizer, examples: Examples, config: Mapping[str, Any], epoch: int, *,
                 step0: int, device: torch.device, progress: bool) -> Dict[str, Any]:
    """One epoch of length-bucketed batches (shuffled by seed and epoch), cut to the step caps."""
    model.train()
    order = token_batches(examples, config["max_tokens"], shuffle=True, seed=config["seed"] * 1000 + epoch)
    steps = step_budget(len(order), max_epoch_steps=config["max_epoch_steps"], max_steps=config["max_steps"],
                        done=step0)
    tokens = [sum(len(examples[i][1]) + 1 for i in idx) for idx in order[:steps]]  # targets + eos

    def batches() -> Iterator[Tuple[Batch, int]]:
        for idx, n in zip(order, tokens):
            yield collate(examples, idx).to(device), n

    def loss_fn(item: Tuple[Batch, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        smoothed, nll = _loss(model, item[0], config["label_smoothing"])
        return smoothed / item[1], torch.stack([smoothed.detach(), nll.detach()])

    out = train_steps(
        optimizer, batches(), loss_fn, total=steps, step0=step0,
        lr_at=lambda s: inverse_sqrt_lr(s + 1, config["lr"], config["warmup_steps"]),
        clip_grad_norm=config["clip_grad_norm"], amp=config["amp"], device=device,
        check_every=config["nan_check_every"], progress=f"{config['init']} epoch {epoch}" if progress else None,
    )
    loss_sum = nll_sum = 0.0
    for smoothed, nll in out.values.tolist():  # summed in order, in float64
        loss_sum += smoothed
        nll_sum += nll
    n = max(sum(tokens[:out.steps]), 1)
    return {"steps": out.steps, "diverged": out.diverged_at is not None, "lr": out.lr,
            "train_loss": loss_sum / n, "train_nll": nll_sum / n}


def run(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Train and evaluate one translation configuration; returns the task part of a record.

    Each epoch entry: epoch, train_loss (label-smoothed, per token), train_nll, valid_loss (NLL per
    token, nats), bleu (sacrebleu on ``bleu_split``), lr, updates (steps so far), train_s
    (cumulative), and this epoch's seconds of training, validation and BLEU (epoch_train_s,
    valid_s, bleu_s). A non-finite training loss stops the run with ``diverged=True``; the epochs so
    far are kept.
    """
    cfg = resolve_config(config, task="translation")
    with run_settings(cfg):
        return _run(cfg, progress)


def _run(cfg: Dict[str, Any], progress: bool) -> Dict[str, Any]:
    device = pick_device(cfg["device"])
    corpus = load_corpus(cfg["dataset"], path=cfg["data_dir"], valid_size=cfg["valid_size"],
                         test_size=cfg["test_size"], max_pairs=cfg["train_limit"])
    sp = train_sentencepiece(corpus.train, vocab_size=cfg["vocab_size"], cache_dir=cfg["cache_dir"])
    train_ex = encode_pairs(sp, corpus.train, cfg["max_len"])
    valid_ex = encode_pairs(sp, corpus.valid, cfg["max_len"])

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, sp.get_piece_size()).to(device)
    example = collate(train_ex, list(range(min(8, len(train_ex))))).to(device)
    init_record = apply_init(model, cfg["init"], cfg["init_options"], (example.src, example.tgt_in))
    emergence, emergence_error = _measure(model, (example.src, example.tgt_in), cfg)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                  eps=cfg["eps"], weight_decay=cfg["weight_decay"],
                                  **optimizer_options(cfg["optimizer_impl"]))
    epochs: List[Dict[str, Any]] = []
    diverged, step, train_s, eval_s = False, 0, 0.0, 0.0
    samples: List[Tuple[str, str, str]] = []
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        stats = _train_epoch(model, optimizer, train_ex, cfg, epoch, step0=step, device=device, progress=progress)
        step += stats["steps"]
        t1 = time.perf_counter()
        train_s += t1 - t0
        if stats["diverged"]:
            diverged = True
            break
        valid_loss = evaluate_nll(model, valid_ex, cfg["max_tokens"], device)
        bleu_pairs = corpus.split(cfg["bleu_split"])
        t2 = time.perf_counter()
        bleu, hyps = _bleu(model, sp, bleu_pairs, cfg, device)
        samples = [(p[0], p[1], h) for p, h in zip(bleu_pairs[:3], hyps[:3])]
        t3 = time.perf_counter()
        eval_s += t3 - t1
        epochs.append({
            "epoch": epoch, "train_loss": stats["train_loss"], "train_nll": stats["train_nll"],
            "valid_loss": valid_loss, "bleu": bleu, "lr": stats["lr"], "updates": step, "train_s": train_s,
            "epoch_train_s": t1 - t0, "valid_s": t2 - t1, "bleu_s": t3 - t2,
        })
        if progress:
            print(f"[{cfg['init']}] epoch {epoch}: train {stats['train_loss']:.3f} "
                  f"valid nll {valid_loss:.3f} BLEU {bleu:.2f} ({train_s:.0f}s train)", flush=True)
        if not math.isfinite(valid_loss):
            diverged = True
            break
        if cfg["max_steps"] and step >= cfg["max_steps"]:
            break

    bleus = [e["bleu"] for e in epochs]
    return {
        "epochs": epochs,
        "emergence_at_init": emergence,
        "init_record": init_record,
        "diverged": diverged,
        "device": device_name(device),
        "extra": {
            "bleu_1": bleus[0] if bleus else None,
            "bleu_best": max(bleus) if bleus else None,
            "best_epoch": epochs[bleus.index(max(bleus))]["epoch"] if bleus else None,
            "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": sp.get_piece_size(),
            "corpus": {"name": corpus.name, "train": len(corpus.train), "valid": len(corpus.valid),
                       "test": len(corpus.test)},
            "train_s": train_s,
            "eval_s": eval_s,
            "updates": step,
            "samples": samples,
            "emergence_error": emergence_error,
            "resolved_config": cfg,
        },
    }
