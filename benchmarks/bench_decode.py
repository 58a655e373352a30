"""Decoding speed: the incremental decoders (cached keys/values, tensor beam search) against the
reference ones (whole prefix re-run every step, beams picked per sentence in Python), side by
side in one process on the same model, sentences and batches; tokens per second and whether the
hypotheses agree are printed.

The model is the translation harness's transformer at a protocol's size with a fresh init (its
hypotheses run to the length limit: the most steps a batch can take), the sentences the first
``--sentences`` of the corpus's test split, batched as the harness's BLEU step batches them.

    python benchmarks/bench_decode.py                          # cpu_small size, beam 5, 100 sentences
    python benchmarks/bench_decode.py --protocol iwslt14 --device cuda --amp --sentences 500
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emergeinit.bench.config import resolve_config
from emergeinit.bench.loop import pick_device
from emergeinit.bench.translation.data import load_corpus
from emergeinit.bench.translation.decode import translate
from emergeinit.bench.translation.spm import train_sentencepiece
from emergeinit.bench.translation.train import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="cpu_small", help="model size: cpu_small (3+3, d 256) or iwslt14 (6+6, d 512)")
    ap.add_argument("--data-dir", default=None, help="the trans-de-en file (default: the Debian one)")
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=None, help="decoding batch size (default: the protocol's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cfg = resolve_config({"task": "translation", "protocol": args.protocol, "dataset": "trans-de-en",
                          "data_dir": args.data_dir})
    corpus = load_corpus("trans-de-en", path=cfg["data_dir"], valid_size=cfg["valid_size"], test_size=cfg["test_size"])
    sp = train_sentencepiece(corpus.train, vocab_size=cfg["vocab_size"], cache_dir=cfg["cache_dir"])
    torch.manual_seed(0)
    model = build_model(cfg, sp.get_piece_size()).to(device).eval()
    sources = [de for de, _ in corpus.test[: args.sentences]]
    max_tokens = args.max_tokens or cfg["max_tokens"]

    def timed(reference: bool):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hyps = translate(model, sp, sources, beam=args.beam, max_tokens=max_tokens, max_len=cfg["max_len"],
                         device=str(device), amp=args.amp, reference=reference)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, hyps

    times = {"reference": [], "incremental": []}
    outputs = {}
    for _ in range(args.repeats):
        for name in ("reference", "incremental"):
            seconds, outputs[name] = timed(name == "reference")
            times[name].append(seconds)
    tokens = sum(len(sp.encode(h)) + 1 for h in outputs["incremental"])  # + eos
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"{args.protocol} model ({params / 1e6:.1f}M parameters, fresh init), {len(sources)} test sentences, "
          f"beam {args.beam}, max_tokens {max_tokens}, {where}{', bf16' if args.amp else ''}")
    for name in ("reference", "incremental"):
        t = statistics.median(times[name])
        print(f"{name:11s}: {t:7.2f} s  {tokens / t:9.1f} tokens/s  (all: {', '.join(f'{x:.2f}' for x in times[name])})")
    speedup = statistics.median(times["reference"]) / statistics.median(times["incremental"])
    same = outputs["reference"] == outputs["incremental"]
    print(f"speed-up incremental / reference = {speedup:.2f}x; identical hypotheses: {same}")


if __name__ == "__main__":
    main()
