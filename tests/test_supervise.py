"""Tests of supervised training (mtssl_tf/supervise.py): the bounded wait for a cluster, signals
while waiting, and restarts of two loopback workers after one is killed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mtssl_tf import supervise
from tests import test_training
from tests.conftest import free_ports
from tests.conftest import untraced_steps

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tf_config(ports, index):
  return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}})


def _gin_file(tmp_path):
  # One task (each task's step is traced once per process, four processes per test).
  path = tmp_path / "tiny.gin"
  path.write_text("\n".join(test_training.TINY + [
      "MultiTaskTrainer.tasks = ['relative_position']",
      "MultiTaskTrainer.checkpoint_every_compute = 2",
      "MultiTaskTrainer.max_checkpoints_to_keep = 100",
  ]) + "\n")
  return path


def _worker(tmp_path, ports, index, *flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=_tf_config(ports, index),
             PYTHONPATH=_ROOT)
  return subprocess.Popen(
      [sys.executable, "-m", "mtssl_tf.bin.train", f"--gin_file={_gin_file(tmp_path)}",
       f"--model_dir={tmp_path / 'run'}", "--strategy=multi_worker"] + list(flags),
      cwd=_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _children(pid):
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(p) for p in f.read().split()]


def _wait(condition, seconds, what):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if condition():
      return
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


def test_should_restart():
  assert not supervise.should_restart(0, stopping=False)
  assert not supervise.should_restart(1, stopping=False)  # a configuration or data error
  assert supervise.should_restart(supervise.RESTART_EXIT, stopping=False)
  assert supervise.should_restart(-signal.SIGKILL, stopping=False)
  assert supervise.should_restart(-signal.SIGABRT, stopping=False)
  assert not supervise.should_restart(-signal.SIGKILL, stopping=True)


def test_who_is_supervised():
  two = {"TF_CONFIG": _tf_config([1, 2], 0)}
  one = {"TF_CONFIG": _tf_config([1], 0)}
  assert supervise.wants_supervision(0, two)
  assert not supervise.wants_supervision(0, one) and not supervise.wants_supervision(0, {})
  assert supervise.wants_supervision(1, {})
  # The supervised worker itself never supervises.
  assert not supervise.wants_supervision(3, dict(two, **{supervise.FD_VARIABLE: "5"}))
  assert supervise.cluster_addresses(two) == [("worker 0", "127.0.0.1:1"),
                                              ("worker 1", "127.0.0.1:2")]
  assert supervise.own_address(dict(two, TF_CONFIG=_tf_config([1, 2], 1))) == "127.0.0.1:2"
  with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
    supervise.cluster_addresses({"TF_CONFIG": "{cluster"})


def test_unreachable_names_only_the_addresses_nothing_listens_on():
  listening = socket.socket()
  listening.bind(("127.0.0.1", 0))
  listening.listen()
  closed, = free_ports(1)
  try:
    up = ("worker 0", f"127.0.0.1:{listening.getsockname()[1]}")
    down = ("worker 1", f"127.0.0.1:{closed}")
    assert supervise.unreachable([up, down]) == [down]
  finally:
    listening.close()


def test_a_worker_that_never_comes_is_named_after_the_bounded_wait(tmp_path):
  ports = free_ports(2)
  start = time.time()
  worker = _worker(tmp_path, ports, 0, "--join_timeout=3")
  # The supervisor starts its worker (which parses every flag again) without TensorFlow.
  _wait(lambda: _children(worker.pid), 60, "the supervisor to start its worker")
  with open(f"/proc/{worker.pid}/maps") as f:
    assert "libtensorflow" not in f.read()
  _, stderr = worker.communicate(timeout=120)
  assert worker.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last == (f"mtssl-train: the cluster did not form within 3 s: nothing answers at worker 1 "
                  f"(127.0.0.1:{ports[1]}). Start that worker, or fix its address in TF_CONFIG "
                  "(wait bound: --join_timeout).")
  assert "Traceback" not in stderr
  assert time.time() - start < 60
  assert not os.path.exists(tmp_path / "run" / "checkpoint")


def test_sigterm_while_waiting_for_the_cluster_ends_the_worker_at_once(tmp_path):
  ports = free_ports(2)
  worker = _worker(tmp_path, ports, 0, "--join_timeout=300")
  # Worker 0's server listens once it waits for worker 1 (inside TensorFlow's C++ code).
  _wait(lambda: not supervise.unreachable([("worker 0", f"127.0.0.1:{ports[0]}")]), 90,
        "worker 0 to wait for its cluster")
  time.sleep(1.0)
  sent = time.time()
  worker.send_signal(signal.SIGTERM)
  _, stderr = worker.communicate(timeout=60)
  assert worker.returncode == 0, stderr[-3000:]
  assert time.time() - sent < 10
  assert "Stopped by SIGTERM while waiting for the cluster; nothing was trained." in stderr


def test_two_workers_finish_after_one_is_killed_mid_run(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ports = free_ports(2)
  # Untraced steps: what is under test is the restart, not what a step computes.
  workers = [_worker(tmp_path, ports, i, "--num_steps=8", "--max_restarts=2",
                     "--join_timeout=120", "--run_eagerly") for i in range(2)]
  run = tmp_path / "run"
  try:
    _wait(lambda: (run / "ckpt-2.index").exists(), 240, "the first checkpoint")
    victim, = _children(workers[1].pid)
    os.kill(victim, signal.SIGKILL)
    outputs = [w.communicate(timeout=400)[1] for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
  for w, stderr in zip(workers, outputs):
    assert w.returncode == 0, stderr[-4000:]
  assert "The worker failed (killed by SIGKILL); restart 1 of 2" in outputs[1]
  # The survivor failed too (it lost its peer), and was restarted by its own supervisor.
  assert "restart 1 of 2" in outputs[0]
  # Both restarted workers resumed from a checkpoint of the first run, and the chief's latest
  # checkpoint is at the last step.
  assert all("Resumed from" in out for out in outputs)
  latest = tf.train.latest_checkpoint(str(run))
  assert latest.endswith("ckpt-8")
  assert int(tf.train.load_variable(latest, "global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 8
  assert int(tf.train.load_variable(
      latest, "task_steps/relative_position/.ATTRIBUTES/VARIABLE_VALUE")) == 8


def test_a_signal_before_training_began_stops_at_the_first_step_with_a_checkpoint(tmp_path):
  # pylint: disable=protected-access
  import gin  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  gin.clear_config()
  common.parse_gin([], test_training.TINY + ["MultiTaskTrainer.tasks = ['relative_position']"])
  batch = {"relative_position/patches": np.zeros([4, 2, 32, 32, 3], np.float32),
           "relative_position/label": np.zeros([4], np.int32)}
  try:
    training.honour_stop_signals()
    # As if it came while the process waited for its cluster or restored its checkpoint.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    trainer = training.MultiTaskTrainer(str(tmp_path), input_fns={
        "relative_position": lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()})
    with untraced_steps():  # when the loop stops is under test, not the step
      summary = trainer.train(num_steps=100)
  finally:
    training._EARLY_STOP["signal"] = None
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    gin.clear_config()
  assert summary["stopped_by_signal"] and summary["step"] == 1
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
