"""``emergeinit compare --config F``: run a grid of configurations, resumably."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="grid file (YAML), e.g. configs/table1.yaml")
    parser.add_argument("--results", help="results file (default results/<config name>.jsonl)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every run (dotted for nested), e.g. dataset=fashion-mnist-32")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=PATTERN",
                        help="only runs whose key matches the pattern, e.g. model='vgg19*'")
    parser.add_argument("--shard", metavar="I/K",
                        help="run only part I of K of the grid (every K-th run): K processes side by side")
    parser.add_argument("--limit", type=int, help="start at most this many pending runs")
    parser.add_argument("--max-minutes", type=float,
                        help="start no new run after this many minutes (time-boxed parts; rerun resumes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and whether each is done, failed (error: retried) or still to do")
    parser.add_argument("--no-progress", action="store_true")
    ray = parser.add_argument_group("where runs happen")
    ray.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: in this process, or in --jobs worker processes; ray: each run a Ray task "
                          "(this machine, or a cluster with --address); pip install 'emergeinit[ray]'")
    ray.add_argument("--jobs", type=int, default=1, metavar="K",
                     help="local: run K configs at once, each in a worker process (several runs share one "
                          "GPU); this process alone writes the records")
    ray.add_argument("--address", help="ray: the cluster to join (auto, host:6379, ray://host:10001); "
                                       "default: a cluster started on this machine, else a new local one")
    ray.add_argument("--gpus-per-run", type=float, default=0.0,
                     help="ray: GPUs each run asks for; a fraction shares a GPU (0.25: four runs per GPU)")
    ray.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPU cores each run asks for")
    ray.add_argument("--runtime-env", metavar="JSON",
                     help='ray: runtime_env for the workers, e.g. \'{"working_dir": "."}\' to ship this folder')


def _executor(args: argparse.Namespace) -> Any:
    """The executor the flags ask for (None: run_grid's in-process default)."""
    if args.executor == "local":
        if args.jobs <= 1:
            return None
        from emergeinit.bench.pool import ProcessExecutor

        return ProcessExecutor(args.jobs)
    from emergeinit.bench.ray_executor import RayExecutor

    return RayExecutor(args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                       runtime_env=json.loads(args.runtime_env) if args.runtime_env else None)


def main(args: argparse.Namespace) -> int:
    from emergeinit.bench.config import resolve_config, run_id
    from emergeinit.bench.grid import apply_sets, filter_configs, load_grid, shard_configs
    from emergeinit.bench.records import finished_ids, read_records, record_id
    from emergeinit.bench.runner import check_configs, run_grid

    results = Path(args.results or Path("results") / (Path(args.config).stem + ".jsonl"))
    try:  # every config resolves and its init options check out, or nothing runs
        configs = filter_configs(apply_sets(load_grid(args.config), args.set), args.where)
        if args.shard:
            configs = shard_configs(configs, args.shard)
        resolved = [resolve_config(c) for c in configs]
        check_configs(resolved)
    except (OSError, ValueError, TypeError) as err:
        print(f"emergeinit compare: {err}", file=sys.stderr)
        return 2
    if args.dry_run:  # done; error: tried, failed, run again next time; todo: never tried
        done = finished_ids(results)
        failed = {record_id(r) for r in read_records(results)} - done
        for rc in resolved:
            i = run_id(rc)
            shown = {k: rc[k] for k in ("model", "init", "init_options", "extra_epoch", "seed") if k in rc}
            state = "done" if i in done else "error" if i in failed else "todo"
            print(f"{i} {state} {json.dumps(shown, sort_keys=True)}")
        return 0
    counts = run_grid(configs, results, executor=_executor(args), progress=not args.no_progress,
                      limit=args.limit, stop_after_s=None if args.max_minutes is None else 60 * args.max_minutes)
    print(f"{counts['total']} runs in the grid: {counts['skipped']} already done, {counts['run']} run now "
          f"({counts['ok']} ok, {counts['diverged']} diverged, {counts['refused']} refused, {counts['error']} error) "
          f"-> {results}")
    print(f"tables and plots: emergeinit report {results}")
    return 0 if counts["error"] == 0 else 1
