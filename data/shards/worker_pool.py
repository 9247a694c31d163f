"""Runs independent tasks (the writer's shards) in worker processes, with a progress bar and a watchdog.

- Workers come from a forkserver that imported the task function's module once: forking a process in
  which TensorFlow has started its thread pools is unsafe, and plain spawn would import TensorFlow again
  in every worker.
- A worker that dies (OOM killer, a segfault in a decoder) raises `BrokenProcessPool` in the main process
  instead of hanging the run (concurrent.futures rather than multiprocessing.Pool).
- A failing task stops the others: they see a shared event at their next progress report and raise
  `Stopped`, so no worker goes on writing after the run has failed.
- Workers exit as soon as the main process is gone (``kill -9``, the OOM killer), so that an orphan never
  writes files that a re-run is writing too.
- A stop reaches a worker at once, also in the middle of a slow step (a download waiting on the network):
  a thread of the worker waits for the stop event and signals the worker's main thread, which abandons its
  task there (`Stopped`; the task's temporary files are removed on the way out). SIGTERM sent to a worker
  (``kill`` of the whole process group, a scheduler's preemption) stops the run in the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, TypeVar

from tqdm import tqdm

Task = TypeVar("Task")
# fn(task, report) -> result; `report(n)` says that n more units of work are done and raises `Stopped` when
# another task failed. Must be a module-level function (it is pickled by reference).
TaskFn = Callable[[Task, Callable[[int], None]], Any]
_END = object()  # the end of `run_tasks`' tasks


class Stopped(RuntimeError):
    """Another task failed: abandon this one instead of finishing it."""


# Per-worker-process state, set by `_init_worker` in each pool worker (never in the main process): the shared
# progress counter and the event that tells workers to stop. A pool's synchronised objects can only reach
# its workers through the initializer, hence module attributes.
_worker_progress = None
_worker_stop = None
_worker_in_task = False  # the worker's main thread runs a task (a stop raises `Stopped` there)


def _exit_when_orphaned(main_pid: int) -> None:
    """Ends this worker as soon as the run's main process is gone (kill -9, OOM killer).

    The main process is watched directly: the workers' parent is the forkserver, which does NOT exit with
    the main process, because every worker holds the forkserver's "alive" pipe open, so waiting to be
    re-parented would wait forever.
    """
    try:
        # A pidfd turns readable when the process exits (also while it is an unreaped zombie), and cannot
        # be fooled by pid reuse. It is opened while the main process is surely alive (it is starting us).
        pidfd = os.pidfd_open(main_pid)
    except (AttributeError, OSError):  # Not Linux >= 5.3: poll the pid.
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
        os._exit(1)
    while True:
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # The pid was reused by another user's process.
            os._exit(1)
        time.sleep(1.0)


def _stop_in_worker(signum, frame) -> None:
    """SIGTERM in a worker: the run stops (every worker), and a task running here is abandoned at once."""
    del signum, frame
    _worker_stop.set()
    if _worker_in_task:
        raise Stopped("stopping: the run was stopped or terminated")


def _signal_when_stopped(stop) -> None:
    """Wakes the worker's main thread with SIGTERM when the run stops, wherever that thread waits."""
    stop.wait()
    os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(progress, stop, main_pid: int) -> None:
    global _worker_progress, _worker_stop
    _worker_progress, _worker_stop = progress, stop
    signal.signal(signal.SIGTERM, _stop_in_worker)
    threading.Thread(target=_exit_when_orphaned, args=(main_pid,), daemon=True).start()
    threading.Thread(target=_signal_when_stopped, args=(stop,), daemon=True).start()


def _report_in_worker(count: int) -> None:
    with _worker_progress.get_lock():
        _worker_progress.value += count
    if _worker_stop.is_set():
        raise Stopped("stopping: another task failed")


def _call_in_worker(fn: TaskFn, task: Any) -> Any:
    global _worker_in_task
    _worker_in_task = True
    try:
        if _worker_stop.is_set():
            raise Stopped("stopping: another task failed")
        return fn(task, _report_in_worker)
    finally:
        _worker_in_task = False


def _pool_context(module: str) -> multiprocessing.context.BaseContext:
    """A forkserver context that preloads `module` (spawn where there is no forkserver)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([module])
    return context


def start_workers_early(module: str) -> None:
    """Starts the forkserver that preloads `module` now, so that its imports overlap the caller's own.

    A command line calls this before its own slow imports: the forkserver's import of `module` then runs
    beside the caller's instead of after it, when `run_tasks` first needs a worker. `run_tasks(fn)` with ``fn.__module__ == module`` reuses the running forkserver.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    _pool_context(module)
    forkserver.ensure_running()


def run_tasks(
    fn: TaskFn,
    tasks: Iterable[Any],
    *,
    workers: int,
    total: int,
    on_result: Callable[[Any], None],
    progress: bool = True,
    desc: str = "writing",
    unit: str = "img",
) -> None:
    """Runs ``fn(task, report)`` for every task, in this process (``workers=1``) or in a pool.

    Args:
      fn: A module-level function; its module is what the forkserver preloads.
      tasks: Picklable tasks. A sequence is handed to the pool at once; any other iterable is drawn from
        as the workers need tasks (at most ``workers + 1`` given out and not finished), so that a producer
        that reads its tasks' data as it goes (`data.shards.archive_feed`) overlaps with the workers and
        never runs ahead of them. When drawing a task raises, the tasks given out still finish (their results
        are kept), then the error is raised.
      workers: Processes at once; 1 runs the tasks here, in order.
      total: Units of work of all tasks together (the progress bar's 100 %).
      on_result: Called in this process with each task's result, in completion order.
      progress: Show a tqdm progress bar with rate and ETA.
      desc: The bar's label.
      unit: The bar's unit.

    Raises:
      Whatever a task raised (the other tasks are stopped first), or `BrokenProcessPool` if a worker died.
    """
    if isinstance(tasks, Sequence) and not tasks:
        return
    bar = tqdm(total=total, unit=unit, desc=desc, disable=not progress, smoothing=0.05)
    try:
        if workers == 1:
            for task in tasks:
                on_result(fn(task, bar.update))
            return
        module = fn.__module__
        context = _pool_context(module)
        counter, stop = context.Value("q", 0), context.Event()
        given = iter(tasks)
        in_flight = len(tasks) if isinstance(tasks, Sequence) else workers + 1
        with futures.ProcessPoolExecutor(
            min(workers, len(tasks)) if isinstance(tasks, Sequence) else workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(counter, stop, os.getpid()),
        ) as executor:
            running: set[futures.Future] = set()
            producer_error: Exception | None = None
            try:
                while True:
                    try:
                        while len(running) < in_flight and (task := next(given, _END)) is not _END:
                            running.add(executor.submit(_call_in_worker, fn, task))
                    except Exception as e:  # noqa: BLE001 (raised below, once the tasks given out are done)
                        producer_error, given = e, iter(())
                    if not running:
                        break
                    done, running = futures.wait(running, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        on_result(future.result())
                    bar.update(counter.value - bar.n)
                if producer_error is not None:
                    raise producer_error
            except BaseException:
                stop.set()
                for future in running:
                    future.cancel()
                raise
    finally:
        bar.close()
