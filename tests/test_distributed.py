"""Two MultiWorkerMirroredStrategy workers (two processes on 127.0.0.1) end identical."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests import test_training

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_end_with_identical_weights_slots_and_accumulators(tmp_path):
  bindings = test_training.TINY + [
      "MultiTaskTrainer.tasks = ['relative_position', 'exemplar']",
      "exemplar/TaskSettings.accumulation_steps = 2",
      # Global batches: 2 replicas (one per worker).
      "relative_position.batch_size = 4",
      "exemplar.batch_size = 4",
  ]
  bindings_path = tmp_path / "bindings.json"
  bindings_path.write_text(json.dumps(bindings))
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  processes = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    processes.append(subprocess.Popen(
        [sys.executable, os.path.join(_ROOT, "tests", "multi_worker_run.py"),
         str(tmp_path / "run"), str(tmp_path / f"worker{index}.npz"), "6", str(bindings_path)],
        env=env, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  a = np.load(tmp_path / "worker0.npz")
  b = np.load(tmp_path / "worker1.npz")
  assert sorted(a.files) == sorted(b.files)
  # 6 steps: rp, ex, rp, ex, rp, ex; exemplar updates every 2 of its steps: it applied at its
  # second step and has accumulated its third (each worker's share, summed when read).
  np.testing.assert_array_equal(a["task_steps"], [3, 3])
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  accumulators = [k for k in a.files if k.startswith("accumulator/exemplar")]
  assert accumulators and any(a[k].any() for k in accumulators)
  iterations = [k for k in a.files if k.startswith("optimizer/exemplar") and "iteration" in k]
  assert iterations and int(a[iterations[0]]) == 1
  # The chief wrote the checkpoints; the other worker's temporary directory is gone.
  names = os.listdir(tmp_path / "run")
  assert "checkpoint" in names and not [n for n in names if n.startswith(".worker_tmp")]


def _train_command(tmp_path, num_steps):
  gin_file = tmp_path / "tiny.gin"
  gin_file.write_text("\n".join(test_training.TINY + [
      "MultiTaskTrainer.tasks = ['relative_position', 'exemplar']",
      "MultiTaskTrainer.checkpoint_every_compute = 4",
      "MultiTaskTrainer.max_checkpoints_to_keep = 100",
  ]) + "\n")
  return [sys.executable, "-m", "mtssl_tf.bin.train", f"--gin_file={gin_file}",
          f"--model_dir={tmp_path / 'run'}", f"--num_steps={num_steps}"]


def _wait_for(path, process, seconds=240):
  import time  # pylint: disable=g-import-not-at-top
  deadline = time.time() + seconds
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(path):
      return True
    time.sleep(0.05)
  return False


def _checkpoint_step(prefix):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return int(tf.train.load_variable(prefix, "global_step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_sigkill_resumes_from_the_last_complete_checkpoint(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(_train_command(tmp_path, 100000), cwd=_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(tmp_path / "run" / "ckpt-8.index", process), process.communicate()[1][-3000:]
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
  saved_step = int(latest.split("-")[-1])
  # ckpt-8's files may exist while the `checkpoint` index still names ckpt-4 (killed between
  # the two writes): then ckpt-4 is the last complete checkpoint, as it should be.
  assert saved_step >= 4 and saved_step % 4 == 0
  assert _checkpoint_step(latest) == saved_step
  rerun = subprocess.run(_train_command(tmp_path, saved_step + 4), cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resumed from {latest} at step {saved_step}" in rerun.stderr
  final = tf.train.latest_checkpoint(str(tmp_path / "run"))
  assert _checkpoint_step(final) == saved_step + 4


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(_train_command(tmp_path, 100000), cwd=_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(tmp_path / "run" / "ckpt-4.index", process), process.communicate()[1][-3000:]
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert "stopped by a signal" in stderr
  latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
  step = int(latest.split("-")[-1])
  assert step >= 4 and _checkpoint_step(latest) == step
  # The checkpoint is at the step where it stopped, not at a compute threshold.
  assert f"Finished at step {step} " in stderr
