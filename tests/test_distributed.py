"""Distributed training against one device: two MultiWorkerMirroredStrategy workers (two
processes on 127.0.0.1) and MirroredStrategy over two devices end where one device on the whole
batch ends; a SIGKILL or SIGTERM mid-run leaves a checkpoint to resume from.

The split runs and the one-device run start from one checkpoint and see the same global
batches, cut into one contiguous part per replica. Relative position trains, updating every 2
of its steps, for 3 steps: accumulate, apply (accumulated and new gradients, all-reduced),
accumulate again (into emptied accumulators, at the new weights).

Batch norm runs in training mode, on each replica's own batch. For the replicas' gradients to
average to the whole batch's, each replica's batch norms must see the whole batch's statistics:
each global batch's second half holds the first half's pairs with their two patches swapped
(and the opposite direction's label, 7 - label). The halves' trunk batches are permutations of
each other and the whole batch holds each patch twice, so every batch norm statistic (the
trunk's and the per-patch head's; the pair head has none) is, as a function of the weights, the
same on each replica as on the whole batch, while the halves' losses differ (the pair head sees
each pair in the other order). The one-device loss is then the mean of the replicas' losses,
and a correct split run matches the one-device run up to float32 rounding. Batch norm moving
variances are not compared: their n / (n - 1) correction depends on the batch size.

Batch norm over small batches amplifies rounding: a channel of near-zero batch variance turns
a one-ulp difference in the weights into a gradient that differs by percents within a few
steps. Hence 4 pairs (8 trunk inputs) per replica, batch norm epsilon 1 instead of slim's 1e-5,
3 steps and a fixed initialization.

None of this depends on the trunk's depth: every process here builds a trunk of one unit per
block (`SMALL_DEPTH`), which builds and traces in about half the time of the depth-26 one.

RMSProp's epsilon is 1e4 here (inside the square root; gradients are below ~5), so an update is
momentum SGD at rate lr / 100, linear in the gradient to 2e-4. Summing the replicas' gradients
where they should be averaged (a loss not divided by the number of replicas) then doubles the
update and the accumulators and quadruples the velocity's squared-gradient part. With a tiny epsilon RMSProp would
divide a gradient's scale away, and only the velocity slot would show it.
"""

import json
import os
import shutil
import subprocess
import sys
import types

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from tests import multi_worker_run
from tests import test_training
from tests.conftest import assert_close_at_scale
from tests.conftest import free_ports
from tests.conftest import step_rounding
from tests.conftest import untraced_steps

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ResNet-v2 of one bottleneck unit per block (20 layers in slim's counting, block 4's 3 units
# included), registered by these tests alone, in this process (`_small_trunk`) and in the ones
# they start (`_python`): slim's blocks and variables, as at depth 26 (two units per block).
SMALL_DEPTH, SMALL_UNITS = 20, (1, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def _small_trunk():
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(trunk_lib.BLOCK_UNITS, SMALL_DEPTH, SMALL_UNITS)
    yield


def _python(*statements):
  """A command running `statements` (Python) where the trunk has the small depth."""
  register = f"trunk.BLOCK_UNITS[{SMALL_DEPTH}] = {SMALL_UNITS}"
  # The binaries' module first: it quiets TensorFlow's import.
  return [sys.executable, "-c", "; ".join(
      ("import sys", "from mtssl_tf.bin import common", "from mtssl_tf import trunk", register) +
      statements)]


# Relative position, updating every 2 of its steps (see the module docstring).
SPLIT_BINDINGS = test_training.TINY + [
    f"Trunk.depth = {SMALL_DEPTH}",
    "MultiTaskTrainer.tasks = ['relative_position']",
    "relative_position/TaskSettings.accumulation_steps = 2",
    "TaskSettings.learning_rate = 0.1",
    "TaskSettings.epsilon = 1e4",
    "Trunk.batch_norm_epsilon = 1.0",
]
SPLIT_STEPS = 3
SPLIT_PAIRS = 4  # per replica
# Of the largest value of each kind (steps, slots, accumulators). Measured, split runs against
# one device: 2e-6 (2e-4 at worst over five initializations) with the depth-26 trunk, 1.5e-6 with
# the small one; with the loss not divided by the number of replicas: 1 (steps) to 3 (velocity),
# and 1 (steps) with the small trunk.
SPLIT_RTOL = 1e-2


@pytest.fixture
def _split_gin():
  gin.clear_config()
  common.parse_gin([], SPLIT_BINDINGS)
  tf.random.set_seed(0)
  yield
  gin.clear_config()


def swapped_pair_batches(steps, pairs, patch_size=32, seed=0):
  """Relative-position global batches whose halves hold the same pairs, swapped in the second.

  Returns:
    {"relative_position/patches": float32 [steps, 2 * pairs, 2, S, S, 3],
     "relative_position/label": int32 [steps, 2 * pairs]}: the second half of each step's
    batch holds the first half's pairs with patches swapped and labels 7 - label (the opposite
    direction, `relative_position.OFFSETS`).
  """
  rng = np.random.RandomState(seed)
  patches = rng.uniform(-100, 100, [steps, pairs, 2, patch_size, patch_size, 3])
  labels = rng.randint(0, 8, [steps, pairs])
  return {
      "relative_position/patches": np.concatenate([patches, patches[:, :, ::-1]],
                                                  1).astype(np.float32),
      "relative_position/label": np.concatenate([labels, 7 - labels], 1).astype(np.int32),
  }


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  """The one-device run that the split runs must match, trained once for the module.

  Returns a namespace: start (a model directory holding only its initial checkpoint, ckpt-0,
  for the split runs to copy), initial and final (its state before and after SPLIT_STEPS
  steps, `multi_worker_run.trainer_state`).
  """
  gin.clear_config()
  common.parse_gin([], SPLIT_BINDINGS)
  # The same initialization in every process, whatever ran in it before (tf.random.set_seed
  # alone leaves Keras's initializers to Python's random state).
  tf.keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp("one_device")
  batches = swapped_pair_batches(SPLIT_STEPS, SPLIT_PAIRS)
  trainer = training.MultiTaskTrainer(str(root / "run"),
                                      input_fns=multi_worker_run.fixed_input_fns(batches))
  trainer.save()
  shutil.copytree(root / "run", root / "start")
  initial = multi_worker_run.trainer_state(trainer)
  # The reference runs its steps untraced (the split runs trace theirs).
  with untraced_steps():
    trainer.train(num_steps=SPLIT_STEPS)
  final = multi_worker_run.trainer_state(trainer)
  gin.clear_config()
  return types.SimpleNamespace(start=root / "start", initial=initial, final=final)


def _assert_matches_one_device(split, one_device, initial):
  """The split run's state is the one-device run's, to float32 rounding.

  Weights are compared by their steps (weights minus initial weights), each kind of slot,
  the accumulators and the moving means as they are, each kind at its own scale.
  """
  kinds = {"step": "variable/", "velocity": "/velocity", "momentum": "/momentum",
           "accumulator": "accumulator/", "moving mean": "/moving_mean"}
  for kind, part in kinds.items():
    keys = sorted(k for k in one_device if part in k)
    assert keys and all(k in split for k in keys), kind
    if kind == "step":
      assert_close_at_scale(
          [split[k] - initial[k] for k in keys], [one_device[k] - initial[k] for k in keys],
          keys, SPLIT_RTOL, [step_rounding(initial[k], one_device[k]) for k in keys])
    else:
      assert_close_at_scale([split[k] for k in keys], [one_device[k] for k in keys], keys,
                            SPLIT_RTOL)
  for key in one_device:
    if key.endswith("/iteration"):
      assert int(split[key]) == int(one_device[key]) == SPLIT_STEPS // 2, key


@pytest.mark.xdist_group("test_distributed_split")
def test_two_workers_on_half_batches_match_one_worker_on_the_whole_batch(tmp_path, _split_gin,
                                                                          one_device):
  batches = swapped_pair_batches(SPLIT_STEPS, SPLIT_PAIRS)
  np.savez(tmp_path / "batches.npz", **batches)
  (tmp_path / "bindings.json").write_text(json.dumps(SPLIT_BINDINGS))
  # The workers start from the one-device run's initial checkpoint.
  shutil.copytree(one_device.start, tmp_path / "run")
  ports = free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  processes = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    processes.append(subprocess.Popen(
        _python("from tests import multi_worker_run", "multi_worker_run.main(*sys.argv[1:])") +
        [str(tmp_path / "run"), str(tmp_path / f"worker{index}.npz"), str(SPLIT_STEPS),
         str(tmp_path / "bindings.json"), str(tmp_path / "batches.npz")],
        env=env, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  a = dict(np.load(tmp_path / "worker0.npz"))
  b = dict(np.load(tmp_path / "worker1.npz"))
  # Both workers hold the same state, bit for bit.
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  np.testing.assert_array_equal(a["task_steps"], [SPLIT_STEPS])
  _assert_matches_one_device(a, one_device.final, one_device.initial)
  # The chief wrote the checkpoints; the other worker's temporary directory is gone.
  names = os.listdir(tmp_path / "run")
  assert f"ckpt-{SPLIT_STEPS}.index" in names
  assert not [n for n in names if n.startswith(".worker_tmp")]


@pytest.mark.xdist_group("test_distributed_split")
def test_mirrored_over_two_devices_matches_one_device_on_the_whole_batch(tmp_path, _split_gin,
                                                                         one_device):
  batches = swapped_pair_batches(SPLIT_STEPS, SPLIT_PAIRS)
  shutil.copytree(one_device.start, tmp_path / "mirrored")
  mirrored = training.MultiTaskTrainer(
      str(tmp_path / "mirrored"), input_fns=multi_worker_run.fixed_input_fns(batches),
      # Reduction through one device, not CPU collectives: two MirroredStrategy objects with
      # collectives in one process (test_trunk.py makes another) clash on instance keys.
      strategy=tf.distribute.MirroredStrategy(
          ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()))
  assert mirrored.strategy.num_replicas_in_sync == 2 and mirrored.restored_from
  mirrored.train(num_steps=SPLIT_STEPS)
  _assert_matches_one_device(multi_worker_run.trainer_state(mirrored), one_device.final,
                             one_device.initial)


# Relative position (1 unit of compute a step) checkpoints every this many steps.
CHECKPOINT_EVERY = 2


def _train_command(tmp_path, num_steps):
  """mtssl-train's command, its steps untraced: what the loop does around them is under test."""
  gin_file = tmp_path / "tiny.gin"
  gin_file.write_text("\n".join(test_training.TINY + [
      f"Trunk.depth = {SMALL_DEPTH}",
      "MultiTaskTrainer.tasks = ['relative_position']",
      f"MultiTaskTrainer.checkpoint_every_compute = {CHECKPOINT_EVERY}",
      "MultiTaskTrainer.max_checkpoints_to_keep = 100",
  ]) + "\n")
  return _python("import tensorflow as tf", "tf.config.run_functions_eagerly(True)",
                 "from mtssl_tf.bin import train", "train.run()") + [
                     f"--gin_file={gin_file}", f"--model_dir={tmp_path / 'run'}",
                     f"--num_steps={num_steps}"]


def _wait_for(path, process, seconds=480):
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


def test_sigkill_resumes_from_the_last_complete_checkpoint_and_sigterm_saves_the_step(
    tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  every = CHECKPOINT_EVERY
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(_train_command(tmp_path, 100000), cwd=_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(tmp_path / "run" / f"ckpt-{2 * every}.index", process), (
      process.communicate()[1][-3000:])
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
  saved_step = int(latest.split("-")[-1])
  # The second checkpoint's files may exist while the `checkpoint` index still names the first
  # (killed between the two writes): then the first is the last complete checkpoint, as it
  # should be.
  assert saved_step >= every and saved_step % every == 0
  assert _checkpoint_step(latest) == saved_step
  # The rerun resumes there; a SIGTERM once it has saved a checkpoint of its own (at a compute
  # threshold past every file the killed run left) makes it save the step it is at and exit
  # cleanly.
  left = max(int(p.name.split("-")[1].split(".")[0])
             for p in (tmp_path / "run").glob("ckpt-*.index"))
  rerun = subprocess.Popen(_train_command(tmp_path, 100000), cwd=_ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(tmp_path / "run" / f"ckpt-{left // every * every + every}.index", rerun), (
      rerun.communicate()[1][-3000:])
  rerun.send_signal(signal.SIGTERM)
  _, stderr = rerun.communicate(timeout=120)
  assert rerun.returncode == 0, stderr[-3000:]
  assert f"Resumed from {latest} at step {saved_step}" in stderr
  assert "stopped by a signal" in stderr
  final = tf.train.latest_checkpoint(str(tmp_path / "run"))
  step = int(final.split("-")[-1])
  assert step >= saved_step + every and _checkpoint_step(final) == step
  # The checkpoint is at the step where it stopped, not at a compute threshold.
  assert f"Finished at step {step} " in stderr
