"""Run many independent jobs through a ``concurrent.futures.Executor`` and lose none.

The same loop drives a local process pool, a Dask distributed cluster and Ray; only the
backend that makes the executor differs, never the code of a job. Every job ends in
exactly one ``Outcome``: its value, or the reason it could not be run.

Lost workers: a local pool whose process dies is broken as a whole (every unfinished
future fails with ``BrokenExecutor``). The loop then opens a fresh pool and runs each job
that was unfinished *alone*, so that the job that takes a worker down is told apart from
the jobs that were merely beside it; only a job that breaks the pool while alone is
charged an attempt. Dask reschedules the tasks of a lost worker itself and reports
``KilledWorker`` when it gives up; Ray retries tasks of a dead worker itself. Any error a
future reports is charged to its job, which is resubmitted until it has had
``max_attempts``; then its outcome says why it was not run.

Only as many jobs as the backend has slots are in flight at once, so that a lost worker
affects few jobs and results stream back as they are done.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

J = TypeVar("J")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Outcome(Generic[J, R]):
    """What became of one job: ``value`` when it ran (``error`` empty), else why not;
    ``attempts``: how many times it was started."""

    job: J
    value: R | None
    error: str
    attempts: int

    @property
    def ok(self) -> bool:
        return not self.error


class Backend(Protocol):
    """Where jobs run: makes executors and says how many jobs it runs at once."""

    description: str

    def executor(self) -> Executor:
        """An executor; called again after the previous one broke."""
        ...

    def slots(self) -> int:
        """How many jobs run at once (jobs in flight are kept to this many)."""
        ...

    def terminate(self) -> None:
        """End the jobs still running (after an interruption)."""
        ...

    def close(self) -> None: ...


class Inline:
    """Runs each job in this process, at once (for trusted work on one core)."""

    description = "in this process"

    def executor(self) -> Executor:
        return InlineExecutor()

    def slots(self) -> int:
        return 1

    def terminate(self) -> None:
        pass

    def close(self) -> None:
        pass


class InlineExecutor(Executor):
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


PR_SET_PDEATHSIG = 1


def end_with_parent(parent: int) -> None:
    """In a pool worker: SIGTERM when the process that made the pool dies, however it
    dies (Linux), so that no worker outlives it; a job ends its target's processes on
    SIGTERM (``signals_end_the_run``)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


class LocalPool:
    """A pool of ``workers`` fresh interpreters on this machine (``spawn``: nothing of
    this process, threads or imported state, is inherited)."""

    def __init__(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers
        self.description = f"local process pool of {workers} worker(s)"
        self.current: ProcessPoolExecutor | None = None

    def executor(self) -> Executor:
        self.terminate()
        self.current = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=end_with_parent,
            initargs=(os.getpid(),),
        )
        return self.current

    def slots(self) -> int:
        return self.workers

    def worker_pids(self) -> list[int]:
        """The pool's worker processes (for tests that take one down)."""
        processes = getattr(self.current, "_processes", None) or {}
        return [int(pid) for pid in processes]

    def terminate(self) -> None:
        """Shut the pool down now: its workers get SIGTERM, on which a job ends the
        processes it started and its worker exits; then they are waited for."""
        if self.current is None:
            return
        pids = self.worker_pids()
        self.current.shutdown(wait=False, cancel_futures=True)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        self.current.shutdown(wait=True)
        self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.shutdown(wait=True)
            self.current = None


def optional_module(name: str, needed_for: str, extra: str) -> Any:
    """An optional dependency, typed loosely (it may be absent where mypy runs)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"{needed_for}: pip install 'eplb-spec[{extra}]'") from None


class DaskCluster:
    """A Dask distributed cluster: ``address`` of its scheduler, or ``local:N`` for a
    ``LocalCluster`` of N worker processes with one thread each, started here."""

    def __init__(self, address: str) -> None:
        distributed = optional_module("distributed", "--scheduler needs Dask", "dask")
        Client, LocalCluster = distributed.Client, distributed.LocalCluster  # noqa: N806
        self.cluster: Any = None
        self.client: Any
        if address.startswith("local:"):
            count = address.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"scheduler: 'local:N' needs a positive N, got {address!r}")
            self.cluster = LocalCluster(
                n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(address, timeout="10s")
            except (OSError, TimeoutError) as error:
                raise ValueError(
                    f"--scheduler {address}: no Dask scheduler answers there "
                    f"({type(error).__name__}: {str(error)[:200]})"
                ) from None
        self.description = f"Dask cluster at {self.client.scheduler_info()['address']}"

    def executor(self) -> Executor:
        # pure=False: a resubmitted job is a new task, never the erred one again.
        executor: Executor = self.client.get_executor(pure=False)
        return executor

    def slots(self) -> int:
        threads = self.client.nthreads()
        return max(1, sum(int(n) for n in threads.values()))

    def terminate(self) -> None:
        pass  # the executor's shutdown cancels the tasks

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class RayExecutor(Executor):
    """``concurrent.futures.Executor`` over Ray tasks (Ray has no executor of its own):
    each call is a Ray task, retried by Ray on another worker when its worker dies."""

    def __init__(self, max_retries: int = DEFAULT_MAX_ATTEMPTS - 1) -> None:
        self.ray = optional_module("ray", "RayExecutor needs Ray", "ray")
        self.max_retries = max_retries
        self.remotes: dict[Callable[..., Any], Any] = {}
        self.pending: list[tuple[Any, Future[Any]]] = []

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(fn).options(max_retries=self.max_retries)
        reference = self.remotes[fn].remote(*args, **kwargs)
        future: Future[R] = reference.future()
        self.pending = [(r, f) for r, f in self.pending if not f.done()] + [(reference, future)]
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for reference, future in self.pending:
                if not future.done():
                    with contextlib.suppress(Exception):
                        self.ray.cancel(reference, force=True)
        self.pending = []


class RayCluster:
    """A Ray cluster at ``address`` (``auto``: the one this machine belongs to;
    ``local``: start one here)."""

    def __init__(self, address: str) -> None:
        ray = optional_module("ray", "--ray needs Ray", "ray")
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started and address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        elif self.started:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, OSError) as error:
                raise ValueError(
                    f"--ray {address}: no Ray cluster to join ({str(error)[:200]}); "
                    "start one (ray start --head) or pass --ray local"
                ) from None
        self.description = f"Ray cluster ({address})"

    def executor(self) -> Executor:
        return RayExecutor()

    def slots(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def terminate(self) -> None:
        pass  # the executor's shutdown cancels the tasks

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def choose_backend(
    workers: int | None = None, scheduler: str | None = None, ray: str | None = None
) -> Backend:
    """``--workers N`` (a local pool), ``--scheduler ADDRESS`` (Dask) or ``--ray ADDRESS``."""
    if scheduler is not None and ray is not None:
        raise ValueError("--scheduler and --ray cannot be used together")
    if scheduler is not None:
        return DaskCluster(scheduler)
    if ray is not None:
        return RayCluster(ray)
    return LocalPool(workers if workers is not None else max(1, os.cpu_count() or 1))


@dataclass
class Task(Generic[J]):
    job: J
    runs: int = 0  # times submitted
    charged: int = 0  # failures counted against max_attempts
    alone: bool = False
    last_error: str = ""


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


def run_jobs(
    function: Callable[[J], R],
    jobs: Iterable[J],
    backend: Backend,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Iterator[Outcome[J, R]]:
    """``function(job)`` for every job on ``backend``, yielded as each one is done
    (not in order). ``function`` must be importable by name on the workers.

    Each job yields exactly one ``Outcome``; a job that failed or lost its worker
    ``max_attempts`` times yields one with ``error`` set.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
    queue: deque[Task[J]] = deque(Task(job) for job in jobs)
    suspects: deque[Task[J]] = deque()  # unfinished when a pool broke: rerun alone
    in_flight: dict[Future[R], Task[J]] = {}
    executor = backend.executor()
    finished = False

    def submit(task: Task[J], alone: bool) -> None:
        task.alone = alone
        task.runs += 1
        in_flight[executor.submit(function, task.job)] = task

    try:
        while queue or suspects or in_flight:
            if suspects:
                if not in_flight:
                    submit(suspects.popleft(), alone=True)
            else:
                room = backend.slots() - len(in_flight)
                while queue and room > 0:
                    submit(queue.popleft(), alone=False)
                    room -= 1
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                task = in_flight.pop(future)
                try:
                    value = future.result()
                except BrokenExecutor as error:
                    broken = True
                    task.last_error = f"its worker was lost ({describe_error(error)})"
                    task.charged += task.alone
                    if task.charged >= max_attempts:
                        yield Outcome(task.job, None, task.last_error, task.runs)
                    else:
                        suspects.append(task)
                except (Exception, CancelledError) as error:
                    task.charged += 1
                    task.last_error = describe_error(error)
                    if task.charged >= max_attempts:
                        yield Outcome(task.job, None, task.last_error, task.runs)
                    else:
                        queue.appendleft(task)
                else:
                    yield Outcome(task.job, value, "", task.runs)
            if broken:
                # The other unfinished futures of a broken pool fail too: rerun them alone.
                for future, task in list(in_flight.items()):
                    if future.done() and not future.cancelled() and future.exception() is None:
                        yield Outcome(task.job, future.result(), "", task.runs)
                    else:
                        suspects.append(task)
                in_flight.clear()
                executor = backend.executor()
        finished = True
    finally:
        if not finished:  # interrupted, or the caller stopped early: end the workers
            backend.terminate()  # first, while the executor still knows its processes
        for future in in_flight:
            future.cancel()
        try:
            executor.shutdown(wait=False, cancel_futures=True)
        except TypeError:  # an executor without cancel_futures (Dask's)
            executor.shutdown(wait=False)


__all__ = [
    "Backend",
    "DaskCluster",
    "Inline",
    "LocalPool",
    "Outcome",
    "RayCluster",
    "RayExecutor",
    "choose_backend",
    "run_jobs",
]
