"""What emergeinit makes of the models people use, and what it costs (a script, not a test).

For every model that can be built here — Hugging Face BERT-base (masked LM), GPT-2 small, a small
Llama and T5-small from their configs (no download), the torchvision and timm models of issue 13
where those packages import, and the paper's own VGG-19 and ResNet-110 — it prints:

- weight modules present (modules holding a weight matrix other than an embedding table) against
  the layers the plan schedules, and the share of parameters left out;
- how the layer graph was read (torch.fx, or a recorded forward) and its skip connections;
- the default blocks found (count and class), or why none;
- seconds for plan_emergence, apply_plan_ (Kaiming base, folded scaling) and measure_emergence,
  each against one forward of the same batch, timed alternately in one run (ratios).

    .venv/bin/python benchmarks/bench_ecosystem.py [--repeats 3] [--batch 2] [--only gpt2 bert] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import emergeinit as ei
from emergeinit.layers import find_blocks, find_weight_layers, left_out_parameters
from emergeinit.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_measure import _side_by_side  # noqa: E402 - the one alternating timer of benchmarks/

Builder = Callable[[], Tuple[nn.Module, Any]]


def _hf(kind: str, batch: int) -> Builder:
    def make() -> Tuple[nn.Module, Any]:
        import transformers as tf

        ids = torch.randint(0, 1000, (batch, 128))
        if kind == "bert":
            return tf.BertForMaskedLM(tf.BertConfig()), {"input_ids": ids}
        if kind == "gpt2":
            return tf.GPT2LMHeadModel(tf.GPT2Config()), {"input_ids": ids}
        if kind == "llama":
            cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                                 num_attention_heads=8, num_key_value_heads=4)
            return tf.LlamaForCausalLM(cfg), {"input_ids": ids}
        return tf.T5ForConditionalGeneration(tf.T5Config()), {"input_ids": ids, "decoder_input_ids": ids}

    return make


def _vision(package: str, name: str, batch: int) -> Builder:
    def make() -> Tuple[nn.Module, Any]:
        module = importlib.import_module(package)
        model = module.create_model(name) if package == "timm" else getattr(module, name)()
        return model, torch.randn(batch, 3, 224, 224)

    return make


def _paper(name: str, batch: int) -> Builder:
    return lambda: (build_model(name), torch.randn(batch, 3, 32, 32))


def builders(batch: int) -> Dict[str, Builder]:
    found: Dict[str, Builder] = {f"hf/{k}": _hf(k, batch) for k in ("bert", "gpt2", "llama", "t5")}
    for package, names in (("torchvision.models", ("resnet50", "vgg19_bn", "mobilenet_v3_large", "convnext_tiny",
                                                   "vit_b_16", "efficientnet_b0")),
                           ("timm", ("vit_small_patch16_224", "resnet50", "convnext_tiny", "deit_tiny_patch16_224",
                                     "efficientnet_b0"))):
        for name in names:
            found[f"{package.split('.')[0]}/{name}"] = _vision(package, name, batch)
    found.update({f"paper/{n}": _paper(n, batch) for n in ("vgg19", "resnet110")})
    return found


def weight_modules(model: nn.Module) -> int:
    """Modules holding a weight matrix of their own that is not an embedding table."""
    return sum(
        1 for m in model.modules()
        if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        and any(p.dim() >= 2 and p.shape[0] > 1 for p in m.parameters(recurse=False))
    )


def inspect_model(name: str, make: Builder, repeats: int) -> Optional[Dict[str, Any]]:
    try:
        torch.manual_seed(0)
        model, x = make()
    except Exception as err:  # noqa: BLE001 - a package that does not import is reported, not fatal
        print(f"{name}: not available here ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
        return None
    model.eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        layers = find_weight_layers(model, x)
        plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=x)
        report = ei.measure_emergence(model, x)
        try:
            blocks = find_blocks(model, layers, example_input=x)
            kinds = sorted({type(model.get_submodule(b.split("#")[0])).__name__ for b in blocks})
            block_text = f"{len(blocks)} ({', '.join(kinds)})"
        except ValueError:
            block_text = "none"
    recorded = any("could not trace" in str(w.message) for w in seen)

    def forward() -> None:
        with torch.no_grad():
            model(**x) if isinstance(x, dict) else model(x)

    timings = {}
    for what, fn in (
        ("plan", lambda: ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=x)),
        ("apply", lambda: ei.apply_plan_(model, plan, base="kaiming")),
        ("measure", lambda: ei.measure_emergence(model, x)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_forward, t_fn, ratio, _ = _side_by_side(forward, fn, repeats)
        timings[what] = (t_fn, ratio)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name, "params": params, "present": weight_modules(model), "planned": len(plan),
        "left_out": left_out_parameters(model).share, "graph": "recorded" if recorded else "fx",
        "skips": sum(e.kind == "identity" for e in report.graph.edges), "blocks": block_text,
        "forward": t_forward, **{k: v for k, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="model names or substrings (hf/gpt2, timm, ...)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; batch {args.batch} (224x224 images, 128 tokens, 32x32 for the paper's nets)")
    rows: List[Dict[str, Any]] = []
    for name, make in builders(args.batch).items():
        if args.only and not any(o in name for o in args.only):
            continue
        row = inspect_model(name, make, args.repeats)
        if row is not None:
            rows.append(row)
            print(f"{name}: done", flush=True)
    head = ("| model | params | weight modules / planned | left out | graph (skip edges) | default blocks "
            "| forward s | plan s (× fwd) | apply s (× fwd) | measure s (× fwd) |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = [r["model"], f"{r['params'] / 1e6:.1f}M", f"{r['present']} / {r['planned']}", f"{r['left_out']:.1%}",
                 f"{r['graph']} ({r['skips']})", r["blocks"], f"{r['forward']:.3f}"]
        cells += [f"{r[k][0]:.3f} ({r[k][1]:.2f})" for k in ("plan", "apply", "measure")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
