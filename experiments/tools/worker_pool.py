r"""Runs of a sweep on several workers at once, each held to its share of the CPU cores.

A worker is a slot that runs one job (a training subprocess) at a time. With one worker the job
keeps XLA's default threads and every core; with several, the usable cores are split evenly between
them and each job runs single-threaded XLA (:data:`SINGLE_THREAD_XLA_FLAGS`) pinned to its cores, so
the workers do not fight over the same cores. On 2 cores two single-threaded workers made 1.32× the
steps/s of one default-threaded run (two default-threaded processes: 1.18×); see BENCHMARKS.md.

>>> slots = worker_slots(2, cpus=[0, 1])
>>> [(s.index, s.cpus) for s in slots], slots[0].environment["XLA_FLAGS"]
([(0, (0,)), (1, (1,))], '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1')
>>> worker_slots(1, cpus=[0, 1])[0]
WorkerSlot(index=0, cpus=(), environment={})

:func:`run_in_parallel` hands jobs to the workers in order and prints one line per finished job
(``[done/total] label: done in 12 s (worker 1); ETA 3 min 10 s for 14 more``); failures are
collected and returned, the other jobs go on.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

# XLA's CPU backend on one thread: Eigen's thread pool off, one intra-op thread.
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

Job = TypeVar("Job")


@dataclasses.dataclass(frozen=True)
class WorkerSlot:
  """One worker: its index, the cores its jobs are pinned to (empty: not pinned) and the
  environment variables its jobs get on top of this process's."""
  index: int
  cpus: tuple[int, ...] = ()
  environment: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def job_environment(self, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with this worker's variables; XLA_FLAGS are appended to ``base``'s, not replaced.

    >>> worker_slots(2, cpus=[0, 1])[1].job_environment({"XLA_FLAGS": "--a=1"})["XLA_FLAGS"]
    '--a=1 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
    """
    environment = dict(base)
    for key, value in self.environment.items():
      previous = environment.get(key, "") if key == "XLA_FLAGS" else ""
      environment[key] = f"{previous} {value}".strip()
    return environment


def usable_cpus() -> list[int]:
  """The cores this process may run on."""
  try:
    return sorted(os.sched_getaffinity(0))
  except AttributeError:   # not Linux
    return list(range(os.cpu_count() or 1))


def default_workers() -> int:
  """One single-threaded worker per usable core (the best measured on a 2-core machine)."""
  return max(1, len(usable_cpus()))


def worker_slots(workers: int, cpus: Sequence[int] | None = None) -> list[WorkerSlot]:
  """``workers`` slots over ``cpus`` (default: the usable ones); see the module docstring."""
  if workers < 1:
    raise ValueError(f"workers must be at least 1, got {workers}.")
  if workers == 1:
    return [WorkerSlot(0)]
  cpus = list(usable_cpus() if cpus is None else cpus)
  shares = [tuple(cpus[i::workers]) for i in range(workers)]   # round-robin: all cores used
  # More workers than cores: the surplus share cores with the first ones.
  shares = [share or (cpus[i % len(cpus)],) for i, share in enumerate(shares)]
  return [WorkerSlot(i, share, {"XLA_FLAGS": SINGLE_THREAD_XLA_FLAGS})
          for i, share in enumerate(shares)]


def pin(pid: int, slot: WorkerSlot) -> None:
  """Pins process ``pid`` to ``slot``'s cores (nothing where the slot or the OS has none).

  Called right after the job's process starts: Python and JAX take seconds to start, and the
  threads XLA makes later inherit the pinning.
  """
  if slot.cpus and hasattr(os, "sched_setaffinity"):
    try:
      os.sched_setaffinity(pid, slot.cpus)
    except OSError:   # the process already ended
      pass


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[Job]):
  """How a job ended: ``ok``, its wall seconds and, when it failed, a message."""
  job: Job
  ok: bool
  seconds: float
  message: str = ""


def run_in_parallel(jobs: Sequence[Job], runner: Callable[[Job, WorkerSlot], Outcome[Job]], *,
                    slots: Sequence[WorkerSlot], label: Callable[[Job], str] = str,
                    print_fn=print) -> list[Outcome[Job]]:
  """Runs every job, at most ``len(slots)`` at once, each on a free slot; returns the failures.

  Jobs start in order. A runner that raises counts as a failed job (its message is the error).
  One progress line is printed per finished job, with an ETA: the mean time of a finished job
  times the jobs left (running ones included), shared by the workers.
  """
  pending: queue.SimpleQueue = queue.SimpleQueue()
  for job in jobs:
    pending.put(job)
  lock = threading.Lock()
  failures: list[Outcome[Job]] = []
  finished, busy_seconds = [0], [0.0]
  workers = min(len(slots), max(1, len(jobs)))

  def work(slot: WorkerSlot) -> None:
    while True:
      try:
        job = pending.get_nowait()
      except queue.Empty:
        return
      job_started = time.time()
      try:
        outcome = runner(job, slot)
      except Exception as e:  # noqa: BLE001 - one job's error must not stop the others
        outcome = Outcome(job, False, time.time() - job_started, f"{type(e).__name__}: {e}")
      with lock:
        finished[0] += 1
        busy_seconds[0] += outcome.seconds
        done, remaining = finished[0], len(jobs) - finished[0]
        eta = busy_seconds[0] / done * remaining / workers
        status = (f"done in {duration(outcome.seconds)}" if outcome.ok
                  else f"FAILED ({outcome.message}) after {duration(outcome.seconds)}")
        print_fn(f"[{done}/{len(jobs)}] {label(job)}: {status} (worker {slot.index}); "
                 f"ETA {duration(eta)} for {remaining} more.", flush=True)
        if not outcome.ok:
          failures.append(outcome)

  threads = [threading.Thread(target=work, args=(slot,), daemon=True)
             for slot in slots[:workers]]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return failures


def duration(seconds: float) -> str:
  """``3 min 05 s`` or ``42 s``.

  >>> duration(185), duration(42.4)
  ('3 min 05 s', '42 s')
  """
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
