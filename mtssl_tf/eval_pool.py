"""Evaluation runs side by side, each in its own single-threaded TensorFlow process.

A toy-scale evaluation is thousands of small ops: one TensorFlow process spreads each op thinly
over its threads and keeps a few CPU cores only partly busy, while N single-threaded processes,
each running its own evaluation, keep N cores busy. `run_jobs` runs a list of `Job`s (what
`evaluation.evaluate` takes) in `processes` such processes (spawned: a fresh interpreter each,
never a fork of a process that has started TensorFlow's threads), each parsing the caller's gin
files and bindings once; with `processes` 1 it runs them in this process, one after another.
Measured on a 2-core machine: the demo's 12 toy evaluation runs took 677 s wall and 1177 CPU-s
in 2 workers, 822 s and 1869 CPU-s one after another in one process.

A seeded run repeats exactly with the same number of threads (TensorFlow's op determinism is
on), but a single-threaded worker sums in another order than a multi-threaded process: on the
demo's checkpoint the linear probe gave identical numbers either way, depth's delta1 moved by
0.2-5 points and the 50-step toy detector's mAP by up to 0.09, which is the run-to-run noise of
those toy fine-tunes. A job that fails stops the others and raises its error here.
"""

import builtins
import collections
import concurrent.futures
import multiprocessing
import os
import pickle
import time

from absl import logging

# One evaluation run: `evaluation.evaluate(eval_name, output_dir, seed=seed, **kwargs)`, where
# kwargs picks the trunk (checkpoint=..., or init="random").
Job = collections.namedtuple("Job", ["eval_name", "output_dir", "seed", "kwargs"])

# Relative cost of one toy run of each evaluation (CPU seconds with the demo's settings,
# experiments/demo.gin): starting the longest first keeps every process busy to the end.
EXPECTED_COST = {"voc_detection": 240, "nyu_depth": 116, "imagenet_linear": 60}


def longest_first(jobs):
  """`jobs` sorted by `EXPECTED_COST`, longest first (a stable sort: ties keep their order)."""
  return sorted(jobs, key=lambda job: -EXPECTED_COST.get(job.eval_name, 0))


def default_processes(jobs):
  """One process per CPU core this process may use, at most one per job (at least 1)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, len(jobs)))


def _start_worker(gin_files, gin_params, verbosity):
  """A worker's start: quiet TensorFlow, one thread, the caller's gin configuration."""
  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # first: it quiets TensorFlow's start-up
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  logging.set_verbosity(verbosity)
  common.parse_gin(gin_files, gin_params)


def _picklable(error):
  """`error`, or (when it cannot travel back to the caller) the nearest built-in exception
  class it derives from, with its message: Keras re-raises errors as dynamically made
  subclasses that pickle refuses."""
  try:
    pickle.dumps(error)
    return error
  except Exception:  # pylint: disable=broad-except
    pass
  for cls in type(error).__mro__:
    if getattr(builtins, cls.__name__, None) is cls:
      try:
        return cls(str(error))
      except Exception:  # pylint: disable=broad-except
        continue
  return RuntimeError(str(error))


def _run(job):
  """Runs one job: (results dict, seconds)."""
  from mtssl_tf import evaluation  # pylint: disable=g-import-not-at-top
  start = time.time()
  try:
    results = evaluation.evaluate(job.eval_name, job.output_dir, seed=job.seed, **job.kwargs)
  except Exception as e:  # pylint: disable=broad-except
    error = _picklable(e)
    if error is e:
      raise
    raise error from None
  return results, time.time() - start


def run_jobs(jobs, processes, gin_files=(), gin_params=(), on_done=None,
             worker_verbosity=logging.WARNING):
  """Runs evaluation jobs, `processes` at a time; returns [(results, seconds)] in job order.

  Args:
    jobs: list of `Job`.
    processes: how many run at once, each in its own single-threaded process; 1 runs them in
      this process (with its gin configuration and threads), one after another.
    gin_files, gin_params: the gin configuration each worker parses (what this process parsed,
      plus bindings made since, e.g. a prior's path); unused with 1 process.
    on_done: None, or called as on_done(index, results, seconds) as each job finishes.
    worker_verbosity: absl logging level in the workers (their progress lines would interleave).

  Raises:
    Whatever a job raised (the other workers are stopped first), or
    concurrent.futures.process.BrokenProcessPool when a worker died (e.g. out of memory).
  """
  out = [None] * len(jobs)
  if processes <= 1:
    for i, job in enumerate(jobs):
      out[i] = _run(job)
      if on_done:
        on_done(i, *out[i])
    return out
  others = set(multiprocessing.active_children())  # not the pool's: left alone on failure
  pool = concurrent.futures.ProcessPoolExecutor(
      processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
      initargs=(list(gin_files), list(gin_params), worker_verbosity))
  try:
    futures = {pool.submit(_run, job): i for i, job in enumerate(jobs)}
    for future in concurrent.futures.as_completed(futures):
      i = futures[future]
      out[i] = future.result()
      if on_done:
        on_done(i, *out[i])
  except BaseException:
    # Stop at once: waiting for the running jobs to end could take minutes.
    pool.shutdown(wait=False, cancel_futures=True)
    _stop_children(others)
    # The pool's manager thread may have started a worker while the others were stopped (CI
    # once found one left); once shutdown has joined that thread no more can start.
    pool.shutdown(wait=True)
    _stop_children(others)
    raise
  pool.shutdown(wait=True)
  return out


def _stop_children(others):
  """Terminates (after 10 s kills) this process's child processes that are not in `others`,
  until none is left (a few rounds at most: one can be starting while the others stop)."""
  for _ in range(20):
    children = [c for c in multiprocessing.active_children() if c not in others]
    if not children:
      return
    for child in children:
      child.terminate()
    for child in children:
      child.join(10)
      if child.is_alive():
        child.kill()
        child.join()
    time.sleep(0.05)
