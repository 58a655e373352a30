"""``emergeinit report results.jsonl``: markdown tables and plots, one section per task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "write_report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results files (.jsonl)")
    parser.add_argument("--out", help="output folder (default: <first results file>_report/)")


def write_report(paths, out_dir) -> str:
    """Read the results files, write report.md (and each task's plots) into ``out_dir``."""
    from emergeinit.bench.records import group_records, latest_records, read_records

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = latest_records(r for p in paths for r in read_records(p))
    parts = []
    for (task,), recs in group_records(records, [lambda r: r.get("task", "image")]).items():
        if task == "image":
            from emergeinit.bench.report import image_report

            parts.append(image_report(recs, out))
        elif task == "translation":
            try:
                from emergeinit.bench.translation.report import translation_report
            except ImportError as err:
                parts.append(f"# Translation\n\n{len(recs)} records; no report available ({err}).\n")
            else:
                parts.append(translation_report(recs, out))
        else:
            parts.append(f"# {task}\n\n{len(recs)} records of an unknown task.\n")
    text = "\n".join(parts) if parts else "No records.\n"
    (out / "report.md").write_text(text)
    return text


def main(args: argparse.Namespace) -> int:
    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:  # a mistyped path must not look like a results file without records
        print(f"emergeinit report: no such results file: {', '.join(missing)}", file=sys.stderr)
        return 2
    first = Path(args.results[0])
    out = Path(args.out) if args.out else first.with_name(first.stem + "_report")
    print(write_report(args.results, out))
    print(f"written to {out}/report.md")
    return 0
