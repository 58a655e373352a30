"""The ``emergeinit`` command: one sub-command per module, imported only when it runs.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

# name -> (module, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("emergeinit.bench.commands.demo", "the README's demo: the emergence init where it matters, with Kaiming"),
    "measure": ("emergeinit.bench.commands.measure", "measure the emergence E of a model, per layer"),
    "init": ("emergeinit.commands.init", "print the emergence-init plan of a model"),
    "train": ("emergeinit.bench.commands.train", "train one configuration, append its record"),
    "compare": ("emergeinit.bench.commands.compare", "run a grid from a config file (resumable)"),
    "report": ("emergeinit.bench.commands.report", "tables and plots from a results file"),
}


def build_parser(commands: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emergeinit",
        description="Measure emergence, apply the emergence-promoting init, re-run the paper's experiments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = [a for a in argv[:1] if a in COMMANDS] or None  # import only the command that runs
    if wanted is None and not any(a in ("-h", "--help") for a in argv[:1]) and argv:
        wanted = []
    args = build_parser(wanted).parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
