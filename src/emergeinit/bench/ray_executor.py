"""A grid's runs as Ray tasks: on this machine's cores and GPUs, or on a Ray cluster.

``emergeinit compare --executor ray [--address ADDR] [--gpus-per-run F]`` hands
:class:`RayExecutor` to :func:`~emergeinit.bench.runner.run_grid`. Each pending run becomes one
Ray task asking for ``cpus_per_run`` cores and ``gpus_per_run`` GPUs (a fraction lets several runs
share a GPU: 0.25 packs four). Ray schedules them; the executor yields each record as its task
finishes, and the driver (``run_grid``) alone appends it: one whole line, so a killed grid resumes
exactly as in one process. A task whose worker crashes, is killed or runs out of memory becomes
an ``error`` record (:func:`~emergeinit.bench.runner.failed_record`) and the grid goes on; a
resumed grid runs it again. Tasks are not retried by Ray (``max_retries=0``): a retry would run
a config twice behind the results file's back.

Workers import emergeinit and read the data themselves, so on a cluster every node needs the
package and the dataset at the path the config names (or ship code with ``runtime_env``, e.g.
``{"py_modules": [...]}`` or ``{"working_dir": "."}``). Ray is an optional dependency:
``pip install 'emergeinit[ray]'``.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

from emergeinit.bench.runner import failed_record

__all__ = ["RayExecutor", "import_ray"]

INSTALL_HINT = "the ray executor needs Ray: pip install 'emergeinit[ray]' (or pip install 'ray>=2.9')"


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return ray


def _run_on_worker(fn: Callable[[Dict[str, Any]], Dict[str, Any]], config: Dict[str, Any]) -> Dict[str, Any]:
    """The body of one Ray task: one run, its record returned to the driver."""
    return fn(config)


class RayExecutor:
    """Runs a grid's configs as Ray tasks and yields their records as they finish (any order).

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None
    connects to a cluster started on this machine or else starts a local one, shut down when the
    grid ends. An already initialized Ray (``ray.init`` in this process) is used as it is.
    ``runtime_env`` is Ray's (env vars, ``py_modules``, ``working_dir``...); workers also get
    ``TQDM_DISABLE=1``, since the driver shows the one progress bar. ``init_options`` go to
    ``ray.init`` (e.g. ``num_cpus`` for a local cluster).
    """

    def __init__(self, address: Optional[str] = None, *, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 runtime_env: Optional[Mapping[str, Any]] = None,
                 init_options: Optional[Mapping[str, Any]] = None) -> None:
        if cpus_per_run < 0 or gpus_per_run < 0:
            raise ValueError("cpus_per_run and gpus_per_run must be >= 0")
        self.address = address
        self.cpus_per_run = float(cpus_per_run)
        self.gpus_per_run = float(gpus_per_run)
        env = dict(runtime_env or {})
        env["env_vars"] = {"TQDM_DISABLE": "1", **dict(env.get("env_vars") or {})}
        self.runtime_env = env
        self.init_options = dict(init_options or {})
        import_ray()  # fail now, with the install hint, not when the grid starts

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        options = {"include_dashboard": False, "logging_level": "WARNING", **self.init_options}
        ray.init(address=self.address, **options)
        return True

    def map(self, fn: Callable[[Dict[str, Any]], Dict[str, Any]],
            configs: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """Submit every config at once, then yield records as tasks finish. Closing the iterator
        early (a time-boxed grid, Ctrl-C) cancels the tasks still queued or running: they have no
        record and run again on resume."""
        ray = import_ray()
        started_here = self._connect(ray)
        remote = ray.remote(_run_on_worker).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0,
            runtime_env=self.runtime_env, name="emergeinit-run",
        )
        submitted: Dict[Any, Any] = {}
        try:
            for config in configs:
                submitted[remote.remote(fn, config)] = (config, time.time())
            pending = list(submitted)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    config, t0 = submitted.pop(ref)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the worker died or the task failed outside the run
                        began = _dt.datetime.fromtimestamp(t0, _dt.timezone.utc).isoformat(timespec="seconds")
                        record = failed_record(config, err, started=began, wall_s=time.time() - t0,
                                               device="ray worker")
                    yield record
        finally:
            for ref in submitted:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()
