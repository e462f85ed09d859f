"""Runs a training process under a supervisor: a bounded wait for the cluster, signals honoured
from the start, restarts after the failures TensorFlow recovers from by restarting.

Why a second process. While MultiWorkerMirroredStrategy waits for the other workers of its
cluster, the process is inside TensorFlow's C++ code holding Python's interpreter lock: no
Python thread runs, no Python signal handler runs, and TensorFlow's preemption notifier takes
SIGTERM; a worker whose peer never comes up waits for an hour, deaf to SIGTERM. And when a peer
dies mid-run, the survivors fail within seconds (the coordination service's heartbeat), and
recovery is a restart of every worker, which then resumes from the chief's last checkpoint. A
small parent process, which never starts TensorFlow's runtime (`mtssl-train` supervises before
it imports TensorFlow), handles both:

- It starts the worker (`python -m mtssl_tf.bin.train ...`, the same flags) with a pipe, on
  which the worker says `joined` once its strategy is built (its cluster is complete).
- No `joined` within `join_timeout` seconds: it ends the worker and fails with one line naming
  the workers of `TF_CONFIG` it cannot reach (start them, or fix TF_CONFIG).
- SIGTERM or SIGINT: before `joined` it ends the worker (nothing was trained) and exits 0;
  after, it passes SIGTERM on, and the worker saves a checkpoint at the next step all workers
  agree on and exits 0 (`training.py`).
- A worker that ends with `RESTART_EXIT` (it caught one of `RESTARTABLE`, TensorFlow's errors for
  a lost peer or a timed-out collective) or is killed by a signal the supervisor did not send
  (kill -9, the out-of-memory killer, an abort) is started again, at most `max_restarts` times,
  after `restart_delay` seconds. Any other failure (a configuration or data error, a divergence:
  a restart would fail the same way) ends the supervisor with the worker's status.

Each machine's supervisor restarts its own worker; a restarted cluster forms again when every
worker has restarted (each worker's survivors fail and restart too) and resumes from the
chief's latest checkpoint.
"""

import json
import logging as std_logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

from absl import logging

# The environment variable that tells a worker it is supervised: the file descriptor of the
# pipe it reports on.
FD_VARIABLE = "MTSSL_SUPERVISOR_FD"
# The worker's exit status for a failure that a restart of the cluster recovers from (BSD's
# EX_TEMPFAIL).
RESTART_EXIT = 75
JOINED = "joined"


def restartable_errors():
  """TensorFlow's errors after which restarting every worker resumes the run.

  A lost peer or coordination service (Unavailable, Aborted, Cancelled), a collective or
  barrier that timed out (DeadlineExceeded), as TensorFlow's own preemption handling treats
  them (`tf.distribute.experimental.PreemptionCheckpointHandler`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
          tf.errors.CancelledError)


class ConsoleFormatter(std_logging.Formatter):
  """The binaries' short log lines: "I1130 09:02:52 message"; warnings and errors keep file:line.

  absl's default prefix (microseconds, thread id, file:line on every line) takes 57 of the
  console's columns; progress lines need them. Here, without TensorFlow, for a supervisor;
  mtssl_tf/bin/common.py uses it for every binary.
  """

  def format(self, record):
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
    prefix = f"{record.levelname[:1]}{stamp}"
    if record.levelno >= std_logging.WARNING:
      prefix += f" {record.filename}:{record.lineno}]"
    return f"{prefix} {super().format(record)}"


def log_to_stderr():
  """Sends absl's log lines to stderr as the binaries write them, for a supervisor that runs
  without absl's `app.run` (and without TensorFlow: mtssl_tf/bin/common.py imports it)."""
  logging.use_absl_handler()
  logging.get_absl_handler().setFormatter(ConsoleFormatter())


def is_supervised():
  """Whether this process is a worker a supervisor started."""
  return FD_VARIABLE in os.environ


def report_joined():
  """Tells the supervisor (if any) that the cluster is complete; called once per process."""
  fd = os.environ.get(FD_VARIABLE)
  if fd is None:
    return
  try:
    os.write(int(fd), (JOINED + "\n").encode())
  except OSError:  # the supervisor is gone; nothing to tell
    pass


def end_worker(status):
  """Ends a supervised worker's process now, with `status`, skipping Python's teardown.

  The teardown of a process that ran MultiWorkerMirroredStrategy costs seconds of CPU, and
  stalled for 10 to 70 s after the last step in loopback runs on a busy machine; the
  supervisor waits for it, and a restarted cluster for its slowest worker. When a worker ends,
  its checkpoints are complete and its summaries flushed (after a lost peer, what it had not
  flushed yet is lost, as it would be had it been killed).
  """
  sys.stdout.flush()
  logging.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def wants_supervision(max_restarts, environ=None):
  """Whether `mtssl-train` runs its work in a supervised child process.

  With restarts asked for, or a TF_CONFIG naming a cluster of more than one task (the wait for
  the cluster is then bounded), unless this process is already the supervised worker.
  """
  environ = os.environ if environ is None else environ
  if FD_VARIABLE in environ:
    return False
  return max_restarts > 0 or len(cluster_addresses(environ)) > 1


def cluster_addresses(environ=None):
  """[(task name, "host:port")] of TF_CONFIG's cluster, e.g. [("worker 1", "10.0.0.2:2222")]."""
  environ = os.environ if environ is None else environ
  try:
    config = json.loads(environ.get("TF_CONFIG") or "{}")
  except ValueError as e:
    raise ValueError(f"TF_CONFIG is not JSON ({e}); see WORKSPACE.md for its form.") from e
  cluster = config.get("cluster") or {}
  return [(f"{job} {i}", address) for job in ("chief", "worker")
          for i, address in enumerate(cluster.get(job) or [])]


def own_address(environ=None):
  """This process's "host:port" in TF_CONFIG's cluster, or None."""
  environ = os.environ if environ is None else environ
  try:
    config = json.loads(environ.get("TF_CONFIG") or "{}")
    task = config["task"]
    return config["cluster"][task["type"]][int(task["index"])]
  except (ValueError, KeyError, IndexError, TypeError):
    return None


def unreachable(addresses, timeout=1.0):
  """The (name, address) pairs nothing accepts a TCP connection at."""
  missing = []
  for name, address in addresses:
    host, _, port = address.rpartition(":")
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass
    except (OSError, ValueError):
      missing.append((name, address))
  return missing


def should_restart(returncode, stopping):
  """Whether a worker that ended with `returncode` (negative: killed by that signal) restarts.

  Args:
    returncode: `subprocess.Popen.returncode`.
    stopping: the supervisor was asked to stop (it sent the signal, if any).
  """
  if stopping or returncode == 0:
    return False
  return returncode == RESTART_EXIT or returncode < 0


class _Signals:
  """Records SIGTERM and SIGINT in the supervisor (the worker decides what they mean)."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _describe(returncode):
  if returncode < 0:
    try:
      return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"killed by signal {-returncode}"
  return f"exit status {returncode}"


def _missing_workers_message(join_timeout, environ):
  everyone = cluster_addresses(environ)
  others = [(n, a) for n, a in everyone if a != own_address(environ)]
  missing = unreachable(others)
  if missing:
    names = ", ".join(f"{n} ({a})" for n, a in missing)
    return (f"the cluster did not form within {join_timeout:g} s: nothing answers at {names}. "
            "Start that worker, or fix its address in TF_CONFIG (wait bound: --join_timeout).")
  return (f"the cluster did not form within {join_timeout:g} s, though every worker in TF_CONFIG "
          f"answers ({', '.join(a for _, a in others)}): do all workers have the same "
          "TF_CONFIG cluster, each its own task index? (wait bound: --join_timeout)")


def _run_once(command, join_timeout, signals, environ):
  """Runs the worker once; returns (returncode, joined, timed_out, stopping)."""
  read_fd, write_fd = os.pipe()
  env = dict(environ, **{FD_VARIABLE: str(write_fd)})
  child = subprocess.Popen(command, env=env, pass_fds=(write_fd,))  # pylint: disable=consider-using-with
  os.close(write_fd)
  start, joined, stopping, timed_out, buffer = time.time(), False, False, False, b""
  try:
    while child.poll() is None:
      ready, _, _ = select.select([read_fd], [], [], 0.2)
      if ready:
        data = os.read(read_fd, 4096)
        buffer += data
        joined = joined or (JOINED + "\n").encode() in buffer
      if signals.received is not None and not stopping:
        stopping = True
        if joined:
          child.send_signal(signal.SIGTERM)  # saves at the next agreed step and exits 0
        else:
          # Waiting for the cluster, in TensorFlow's C++ code: it cannot act on SIGTERM, and
          # it has trained nothing.
          child.kill()
      if not joined and not stopping and time.time() - start > join_timeout:
        timed_out = True
        child.kill()
        break
    child.wait()
  finally:
    os.close(read_fd)
  return child.returncode, joined, timed_out, stopping


def supervise(command, max_restarts=0, join_timeout=600.0, restart_delay=2.0, environ=None,
              program="mtssl-train"):
  """Runs `command` (a worker) until it succeeds, fails for good or is stopped; see above.

  Args:
    command: the worker's argv, e.g. [sys.executable, "-m", "mtssl_tf.bin.train", ...].
    max_restarts: how many times a restartable failure starts the worker again.
    join_timeout: seconds the worker may take to start and join its cluster.
    restart_delay: seconds between a failure and the restart.
    environ: the worker's environment (default: this process's).
    program: the name error lines start with.

  Returns:
    The exit status for the supervisor: 0 when the worker finished or was stopped by a signal,
    the worker's status (128 + signal when killed) otherwise, 1 when the cluster did not form.
  """
  environ = dict(os.environ if environ is None else environ)
  restarts = 0
  with _Signals() as signals:
    while True:
      returncode, joined, timed_out, stopping = _run_once(command, join_timeout, signals,
                                                          environ)
      if timed_out:
        print(f"{program}: {_missing_workers_message(join_timeout, environ)}", file=sys.stderr)
        return 1
      if stopping:
        if not joined:
          logging.info("Stopped by %s while waiting for the cluster; nothing was trained.",
                       signal.Signals(signals.received).name)
          return 0
        return 0 if returncode in (0, -signal.SIGTERM) else _status(returncode)
      if not should_restart(returncode, stopping):
        return _status(returncode)
      if restarts >= max_restarts:
        print(f"{program}: the worker failed ({_describe(returncode)}) after {restarts} "
              f"restart{'s' * (restarts != 1)}; raise --max_restarts to allow more.",
              file=sys.stderr)
        return _status(returncode)
      restarts += 1
      logging.warning("The worker failed (%s); restart %d of %d in %g s: it resumes from the "
                      "latest checkpoint.", _describe(returncode), restarts, max_restarts,
                      restart_delay)
      deadline = time.time() + restart_delay
      while time.time() < deadline and signals.received is None:
        time.sleep(0.1)
      if signals.received is not None:
        return 0


def _status(returncode):
  return 128 - returncode if returncode < 0 else returncode

