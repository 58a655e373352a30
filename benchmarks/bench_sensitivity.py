"""How long the sensitivity map (configs/sensitivity.yaml) takes on this machine, from a sample.

Runs one config of each kind the grid holds, per model (Kaiming; emergence normalized α = 2,
global and blockwise; emergence literal α = 5, the kind that fails), through the same code path as
the grid (``runner.execute``), one after another in this process, and reports for each its wall
seconds and this process's CPU seconds (a one-thread run on a quiet core takes about its CPU time;
the wall time also counts whatever else the machine runs). Then it estimates the whole grid: every
config of the grid is charged the CPU seconds of the sample of its model and kind (literal with
α >= 3 as the failing sample, everything else as the model's mean of the others), summed for one
process, and divided by K for K single-thread processes on K free cores (``compare --shard i/K``).

    .venv/bin/python benchmarks/bench_sensitivity.py                    # the sample, ~3 min quiet
    .venv/bin/python benchmarks/bench_sensitivity.py --results /tmp/s.jsonl --seeds 5 --budget 60

The sample's records go to ``--results`` (a separate file: they are a sizing run, not the map).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Tuple

from emergeinit.bench.config import resolve_config
from emergeinit.bench.grid import apply_sets, load_grid
from emergeinit.bench.records import append_record
from emergeinit.bench.runner import execute

SAMPLE = (("kaiming", None, None, None), ("emergence", "normalized", 2.0, "global"),
          ("emergence", "normalized", 2.0, "blockwise"), ("emergence", "literal", 5.0, None))


def kind(config: Mapping[str, Any]) -> str:
    """What a config's cost is estimated from: ``failing`` (literal schedule, α >= 3) or ``training``."""
    o = config.get("init_options") or {}
    return "failing" if o.get("schedule") == "literal" and float(o.get("alpha", 0)) >= 3 else "training"


def pick(configs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One config per model and sample kind, from seed 0 and the model's own classifier."""
    out = []
    for model in dict.fromkeys(c["model"] for c in configs):
        for init, schedule, alpha, scope in SAMPLE:
            for c in configs:
                o = c["init_options"]
                if (c["model"], c["init"], c["seed"], c["classifier_init"]) != (model, init, 0, None):
                    continue
                if init == "emergence" and (o.get("schedule"), o.get("alpha"), o.get("scope") or "global") != (
                        schedule, alpha, scope or "global"):
                    continue
                out.append(c)
                break
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/sensitivity.yaml")
    ap.add_argument("--results", default="results/sensitivity_sizing.jsonl")
    ap.add_argument("--threads", type=int, default=1, help="cpu_threads of each run (the grid's: 1)")
    ap.add_argument("--seeds", type=int, default=None, help="estimate for this many seeds (default: the grid's)")
    ap.add_argument("--budget", type=float, default=60.0, help="minutes the whole map may take")
    args = ap.parse_args()
    configs = [resolve_config(c) for c in apply_sets(load_grid(args.config), [f"cpu_threads={args.threads}"])]
    sample = pick(configs)
    print(f"{len(sample)} sample runs of {len(configs)} in {args.config}; records -> {args.results}")
    cost: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    # the first run of a process also loads the dataset: load it first, uncounted
    from emergeinit.bench.data import load_dataset

    load_dataset(sample[0]["dataset"], sample[0]["data_dir"])
    for c in sample:
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        record = execute(c, progress=False)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - t0
        append_record(args.results, record)
        o = c["init_options"]
        name = c["init"] + (f" {o.get('schedule')} a={o.get('alpha'):g} {o.get('scope') or ''}" if o else "")
        acc = (record.get("extra") or {}).get("acc_1")
        print(f"  {c['model']:12s} {name:34s} cpu {cpu:6.1f} s  wall {wall:6.1f} s  Acc_1 {acc}  {record['outcome']}")
        cost[c["model"], kind(c)].append(cpu)
    seeds = sorted({c["seed"] for c in configs})
    factor = (args.seeds / len(seeds)) if args.seeds else 1.0
    total = 0.0
    for c in configs:
        k = kind(c)
        own = cost.get((c["model"], k)) or cost.get((c["model"], "training"))
        total += statistics.mean(own) * factor
    n_seeds = args.seeds or len(seeds)
    print(f"\nestimate for the grid ({len(configs) // len(seeds)} runs a seed x {n_seeds} seeds), "
          f"from CPU seconds (a quiet machine, one thread per run):")
    for k in (1, 2):
        minutes = total / k / 60
        fits = int(args.budget * 60 * k / (total / n_seeds))
        print(f"  {k} process(es), {k} free core(s): {minutes:6.1f} min; seeds within {args.budget:g} min: {fits}")


if __name__ == "__main__":
    main()
