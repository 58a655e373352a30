"""The translation harness (the paper's Table 2): German→English with a post-LN transformer,
Xavier vs T-Fixup vs the emergence schemes, BLEU with sacrebleu. ``run(config)`` is the task
function of the shared runner (``task: translation``)."""

from __future__ import annotations

from typing import Any, Dict


def run(config: Dict[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Train one translation configuration; see :func:`emergeinit.bench.translation.train.run`."""
    from .train import run as _run

    return _run(config, progress=progress)


def resolve_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config with its translation protocol's defaults filled in (stored in the record)."""
    from .train import resolve_config as _resolve

    return _resolve(config)


__all__ = ["run", "resolve_config"]
