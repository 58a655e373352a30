"""Several runs at once: a pool of worker processes behind the runner's executor seam.

``ProcessExecutor(jobs).map(fn, configs)`` starts up to ``jobs`` worker processes (``spawn``, so
each may use CUDA), hands each one config at a time and yields ``fn(config)`` as each run
finishes, in the order they finish. Workers live for the whole grid, so a worker's later runs
reuse what its first ones built (datasets on the device, compiled code, CUDA graphs). Configs are
taken from the iterable only when a worker is free: a caller whose iterable stops yielding (a
deadline) ends the grid with no run cut short. A worker that dies mid-run (killed, out of memory,
a crash in native code) yields an ``error`` record of that run in its place
(:func:`~emergeinit.bench.runner.failed_record`) and is replaced; the other runs go on. Only the
caller writes records.
"""

from __future__ import annotations

import datetime as _dt
import multiprocessing as mp
import multiprocessing.connection as mpc
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from emergeinit.bench.runner import failed_record

__all__ = ["ProcessExecutor", "WorkerError"]

Config = Dict[str, Any]
Record = Dict[str, Any]


def _serve(conn: mpc.Connection, fn: Callable[[Config], Record]) -> None:
    """A worker's loop: receive a config, send back ``(True, fn(config))`` or, when ``fn``
    raises, ``(False, traceback)``; ``None`` ends the loop."""
    while True:
        try:
            config = conn.recv()
        except EOFError:  # the driver is gone
            return
        if config is None:
            return
        try:
            result = fn(config)
            conn.send((True, result))
        except Exception:  # noqa: BLE001 - fn failed or its result cannot be sent: a failure record
            conn.send((False, traceback.format_exc(limit=8)))


class WorkerError(RuntimeError):
    """A run that gave no record: its worker process died, or the function it ran raised."""


@dataclass
class _Worker:
    process: Any
    conn: mpc.Connection
    config: Optional[Config] = None  # the run in progress, None when idle
    started: float = 0.0             # when it began (time.time())


class ProcessExecutor:
    """Run configs in ``jobs`` worker processes (see the module doc). ``on_failure(config, err,
    started=, wall_s=, device=)`` makes the record of a run whose worker died or whose ``fn``
    raised (default :func:`~emergeinit.bench.runner.failed_record`)."""

    shows_run_progress = False  # workers draw no progress bars: the driver's grid bar counts runs
    takes_configs_lazily = True  # a config is taken when a worker is free to start it

    def __init__(self, jobs: int, *, on_failure: Callable[..., Record] = failed_record,
                 start_method: str = "spawn"):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self.on_failure = on_failure
        self.context = mp.get_context(start_method)

    def _failure(self, config: Config, message: str, started: float) -> Record:
        began = _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds")
        return self.on_failure(config, WorkerError(message), started=began, wall_s=time.time() - started,
                               device="worker process")

    def _start(self, fn: Callable[[Config], Record]) -> _Worker:
        driver_end, worker_end = self.context.Pipe(duplex=True)
        # not daemonic: a worker may start processes of its own (torch.compile's compiler pool)
        process = self.context.Process(target=_serve, args=(worker_end, fn))
        process.start()
        worker_end.close()  # the worker holds its own copy; EOF on ours means it is gone
        return _Worker(process, driver_end)

    def map(self, fn: Callable[[Config], Record], configs: Iterable[Config]) -> Iterator[Record]:
        """Yield one record per config, as runs finish (see the class doc)."""
        pending = iter(configs)
        workers: List[_Worker] = []

        def give(worker: Optional[_Worker]) -> Optional[_Worker]:
            """The next config to ``worker`` (a new one when None); None when there is none left."""
            config = next(pending, None)
            if config is None:
                return None
            worker = worker or self._start(fn)
            worker.config, worker.started = config, time.time()
            worker.conn.send(config)
            return worker

        try:
            while len(workers) < self.jobs:
                worker = give(None)
                if worker is None:
                    break
                workers.append(worker)
            while any(w.config is not None for w in workers):
                busy = [w for w in workers if w.config is not None]
                mpc.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for i, worker in enumerate(workers):
                    config, started = worker.config, worker.started
                    if config is None:
                        continue
                    reply = None
                    if worker.conn.poll():
                        try:
                            reply = worker.conn.recv()
                        except (EOFError, OSError):  # it died: its end of the pipe closed
                            pass
                    elif worker.process.is_alive():
                        continue  # still running
                    worker.config = None
                    if reply is not None:
                        give(worker)  # the worker goes on while the caller writes this record
                        ok, value = reply
                        yield value if ok else self._failure(config, f"the run raised: {value}", started)
                        continue
                    worker.process.join(5)
                    worker.conn.close()
                    message = f"the worker process died during the run (exit code {worker.process.exitcode})"
                    workers[i] = give(None) or worker  # a fresh worker takes the next config
                    yield self._failure(config, message, started)
        finally:
            _shutdown(workers)


def _shutdown(workers: List[_Worker]) -> None:
    """Idle workers are told to stop; runs still in progress (the caller stopped early) are
    terminated, since nobody will write their records."""
    for worker in workers:
        try:
            if worker.config is None and worker.process.is_alive():
                worker.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for worker in workers:
        worker.process.join(10 if worker.config is None else 0)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(5)
        worker.conn.close()
