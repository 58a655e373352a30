"""Grid files: YAML with ``task``, ``protocol``, ``defaults``, ``grid`` and optional ``cells``.

``grid: {key: [values]}`` is a cartesian product. Each entry of ``cells`` is one more product laid
over the grid: its scalar values are fixed, its list values are options, and its keys replace the
grid's (so a cell can tie α to the models with batch norm). Keys may be dotted
(``init_options.alpha``) to set one field of a nested dict. Without ``cells`` the grid alone runs.
Runs come out seed-major (every cell's seed 0 first), so a grid stopped early has whole seeds.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

from emergeinit.bench.config import set_dotted as _set_dotted

__all__ = ["expand_grid", "read_yaml", "load_grid", "parse_assignment", "apply_sets", "filter_configs",
           "shard_configs"]

_TOP_KEYS = {"task", "protocol", "defaults", "grid", "cells", "name", "description"}


def _get_dotted(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def expand_grid(spec: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The run configs a grid spec describes (see the module doc)."""
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown grid-file keys {sorted(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    base: Dict[str, Any] = {}
    for key in ("task", "protocol"):
        if key in spec:
            base[key] = spec[key]
    for key, value in (spec.get("defaults") or {}).items():
        _set_dotted(base, key, value)
    grid = dict(spec.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ValueError(f"grid[{key!r}] must be a list of values, got {values!r}")
    configs: List[Dict[str, Any]] = []
    for cell in spec.get("cells") or [{}]:
        axes = {**grid, **{k: (v if isinstance(v, list) else [v]) for k, v in cell.items()}}
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            config = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
            for key, value in zip(keys, combo):
                _set_dotted(config, key, value)
            configs.append(config)
    return sorted(configs, key=lambda c: (c.get("seed", 0) if isinstance(c.get("seed", 0), int) else 0))


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


def read_yaml(text: Any) -> Any:
    """YAML (a string or a stream) as ``yaml.safe_load`` reads it, except that ``1e6``, ``1.0e6`` and
    ``2.5E-4`` are floats, as in YAML 1.2 (PyYAML's YAML 1.1 wants ``1.0e+6`` and reads the others
    as strings, which reached a run as ``lr: "1.0e6"``)."""
    import yaml

    return yaml.load(text, Loader=_loader())


@functools.lru_cache(maxsize=None)
def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader plus exponent floats without a dot or a sign."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def load_grid(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Read a YAML grid file (:func:`read_yaml`) and expand it."""
    with open(path) as f:
        spec = read_yaml(f) or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: a grid file is a mapping (task, protocol, defaults, grid, cells)")
    return expand_grid(spec)


def parse_assignment(text: str) -> Tuple[str, Any]:
    """``key=value`` with the value read as YAML (:func:`read_yaml`: ``lr=0.05``, ``lr=1e-3``,
    ``amp=true``, ``data_dir=/x``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), read_yaml(raw) if raw.strip() else None


def apply_sets(configs: Iterable[Dict[str, Any]], sets: Sequence[str]) -> List[Dict[str, Any]]:
    """Override keys (dotted allowed) in every config from ``key=value`` strings."""
    pairs = [parse_assignment(s) for s in sets]
    out = []
    for c in configs:
        c = dict(c)
        for key, value in pairs:
            _set_dotted(c, key, value)
        out.append(c)
    return out


def filter_configs(configs: Iterable[Dict[str, Any]], wheres: Sequence[str]) -> List[Dict[str, Any]]:
    """Keep configs whose every ``key=pattern`` matches (fnmatch on the value's text)."""
    pairs = []
    for w in wheres:
        key, sep, pattern = w.partition("=")
        if not sep:
            raise ValueError(f"expected key=pattern, got {w!r}")
        pairs.append((key.strip(), pattern))
    return [c for c in configs
            if all(fnmatch.fnmatchcase(str(_get_dotted(c, k)), p) for k, p in pairs)]


def shard_configs(configs: Sequence[Dict[str, Any]], shard: str) -> List[Dict[str, Any]]:
    """Part ``i`` of ``k`` (``shard="i/k"``, 1-based): every k-th config from the i-th, so k
    processes started with 1/k .. k/k run disjoint parts of one grid side by side (the same results
    file is safe: each record is one append). Seed-major order keeps every part's seeds whole-ish."""
    index, sep, count = str(shard).partition("/")
    try:
        i, k = int(index), int(count)
    except ValueError:
        i = k = 0
    if not sep or not (1 <= i <= k):
        raise ValueError(f"shard must be i/k with 1 <= i <= k, got {shard!r}")
    return [c for n, c in enumerate(configs) if n % k == i - 1]
