"""Where a run ran: device name, package versions, git commit (stored with every record)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Union

import torch

__all__ = ["device_name", "versions", "git_commit"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Union[str, torch.device]) -> str:
    """A human name for the device, its type first: ``cuda: <GPU name>``, or ``cpu: <CPU model>
    (<torch's thread count> threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpu_model()} ({torch.get_num_threads()} threads)"


def versions() -> Dict[str, Optional[str]]:
    """Versions of python and of the packages a result depends on (None: not installed)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "torch": torch.__version__,
                                     "cuda": torch.version.cuda}
    for pkg in ("emergeinit", "numpy", "sentencepiece", "sacrebleu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit(path: Union[str, os.PathLike, None] = None) -> Optional[str]:
    """HEAD of the git checkout holding this package (``+dirty`` when it has changes), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":  # pragma: no cover
    print(device_name("cuda" if torch.cuda.is_available() else "cpu"), versions(), git_commit(), file=sys.stdout)
