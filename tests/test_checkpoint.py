"""Checkpoint compatibility: slim's full resnet_v2_101 loads into the trunk, and so do ours."""

import logging
import os
import types

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import distribute
from mtssl_tf import input_convention
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.slim_compat import resnet_v2
from mtssl_tf.slim_compat import slim
from mtssl_tf.bin import common
from tests import test_training
from tests.conftest import randomize_batch_norm
from tests.conftest import save_tf1_checkpoint

_IMAGES = np.random.RandomState(0).uniform(0, 255, [2, 64, 80, 3]).astype(np.float32)


@pytest.fixture(scope="module")
def slim_checkpoint(tmp_path_factory):
  """slim's *full* resnet_v2_101 (block 4, postnorm, logits) saved by a TF1 Saver.

  Returns the checkpoint prefix and slim's own block-3 outputs for `_IMAGES` at output strides
  32 (slim's default, None) and 16, computed in the same TF1 graph.
  """
  prefix = str(tmp_path_factory.mktemp("slim") / "resnet_v2_101.ckpt")
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
    inputs = images - tf.constant(input_convention.MEAN_RGB)
    # BN inference does not depend on updates_collections; trunk_arg_scope avoids the TF1 keras
    # layer path that the pinned stack cannot import.
    with slim.arg_scope(trunk_lib.trunk_arg_scope()):
      _, ends32 = resnet_v2.resnet_v2_101(inputs, num_classes=1001, is_training=False)
      _, ends16 = resnet_v2.resnet_v2_101(
          inputs, num_classes=1001, is_training=False, output_stride=16, reuse=True)
    variables = tf.compat.v1.global_variables()
    rng = np.random.RandomState(1)
    assigns = []
    for v in variables:
      shape = v.shape.as_list()
      if "moving_variance" in v.name or "gamma" in v.name:
        assigns.append(v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32)))
      elif "moving_mean" in v.name or "beta" in v.name or "biases" in v.name:
        assigns.append(v.assign(rng.uniform(-0.2, 0.2, shape).astype(np.float32)))
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(assigns)
      ref32, ref16 = sess.run(
          [ends32["resnet_v2_101/block3"], ends16["resnet_v2_101/block3"]], {images: _IMAGES})
      saver.save(sess, prefix, write_meta_graph=False)
  return prefix, {32: ref32, 16: ref16}


@pytest.mark.parametrize("output_stride", [32, 16])
def test_slim_checkpoint_gives_slims_block3(slim_checkpoint, output_stride):
  prefix, refs = slim_checkpoint
  trunk = trunk_lib.Trunk(depth=101, output_stride=output_stride)
  report = trunk_lib.init_from_checkpoint(trunk, prefix)
  assert len(report.loaded) == 488
  assert not report.ignored
  # Block 4: 3 units (18 + 16 + 16 variables), postnorm (4), logits (2).
  assert len(report.skipped) == 56
  assert {name.split("/")[1] for name in report.skipped} == {"block4", "postnorm", "logits"}
  ours = trunk(input_convention.to_trunk_input(_IMAGES), training=False)["block3"].numpy()
  ref = refs[output_stride]
  # SAME padding: ceil(64 / stride) x ceil(80 / stride).
  assert ours.shape == ref.shape == (2, -(-64 // output_stride), -(-80 // output_stride), 1024)
  scale = np.abs(ref).max()
  assert np.abs(ours - ref).max() <= 1e-4 * scale
  assert "skipped 56" in report.summary()


def test_checkpoint_depth_is_read_from_names(slim_checkpoint):
  assert trunk_lib.checkpoint_depth(slim_checkpoint[0]) == 101


class _Model(tf.Module):
  """A trunk with a head, as training checkpoints will hold them."""

  def __init__(self):
    super().__init__()
    self.trunk = trunk_lib.Trunk(depth=26)
    self.trunk.ensure_built()
    self.head = tf.Variable(tf.ones([1024, 8]), name="head")


def test_object_based_checkpoint_round_trip(tmp_path):
  model = _Model()
  randomize_batch_norm(model.trunk.variables, seed=3)
  optimizer = tf.keras.optimizers.RMSprop(1e-3)
  with tf.GradientTape() as tape:
    out = model.trunk(input_convention.to_trunk_input(_IMAGES), training=True)["block3"]
    loss = tf.reduce_mean(tf.square(out @ model.head))
  variables = model.trunk.trainable_variables + [model.head]
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, optimizer=optimizer), str(tmp_path), max_to_keep=1)
  manager.save()

  fresh = trunk_lib.Trunk(depth=26)
  report = trunk_lib.init_from_checkpoint(fresh, str(tmp_path))  # a directory: latest checkpoint
  assert len(report.loaded) == 104 and not report.skipped
  # The head, the optimizer's slots and iteration count, save_counter: ignored, not loaded.
  assert any("head" in key for key in report.ignored)
  assert any(key.startswith("optimizer/") for key in report.ignored)
  for a, b in zip(model.trunk.variables, fresh.variables):
    assert a.name == b.name
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_trunk_variables_are_listed(tmp_path):
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  values = {v.name.split(":")[0]: v.numpy() for v in trunk.variables}
  del values["resnet_v2_26/block2/unit_1/bottleneck_v2/conv2/weights"]
  del values["resnet_v2_26/conv1/biases"]
  prefix = save_tf1_checkpoint(values, str(tmp_path / "partial.ckpt"))
  with pytest.raises(ValueError) as info:
    trunk_lib.init_from_checkpoint(trunk_lib.Trunk(depth=26), prefix)
  message = str(info.value)
  assert "Missing 2 trunk variables" in message
  assert "resnet_v2_26/block2/unit_1/bottleneck_v2/conv2/weights" in message
  assert "resnet_v2_26/conv1/biases" in message
  assert "partial.ckpt" in message


def test_misshaped_trunk_variables_are_listed(tmp_path):
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  values = {v.name.split(":")[0]: v.numpy() for v in trunk.variables}
  values["resnet_v2_26/conv1/weights"] = np.zeros([3, 3, 3, 64], np.float32)
  prefix = save_tf1_checkpoint(values, str(tmp_path / "bad.ckpt"))
  with pytest.raises(ValueError, match=r"Mis-shaped 1 .*conv1/weights: checkpoint \[3, 3, 3, 64\]"):
    trunk_lib.init_from_checkpoint(trunk_lib.Trunk(depth=26), prefix)


def test_checkpoint_of_another_depth_names_the_depth(tmp_path):
  small = trunk_lib.Trunk(depth=26)
  small.ensure_built()
  prefix = tf.train.Checkpoint(trunk=small).write(str(tmp_path / "rn26"))
  with pytest.raises(ValueError, match=r"(?s)holds scopes \['resnet_v2_26'\].*Missing 216 trunk variables: resnet_v2_50/block1"):
    trunk_lib.init_from_checkpoint(trunk_lib.Trunk(depth=50), prefix)


def test_nonexistent_paths_are_named(tmp_path):
  missing = str(tmp_path / "nope.ckpt")
  with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
    trunk_lib.init_from_checkpoint(trunk_lib.Trunk(depth=26), missing)
  empty_dir = tmp_path / "empty"
  os.makedirs(empty_dir)
  with pytest.raises(FileNotFoundError, match="No checkpoint in directory"):
    trunk_lib.init_from_checkpoint(trunk_lib.Trunk(depth=26), str(empty_dir))


# What interrupted saves leave in a model directory, and look-alikes that are not theirs.
_LEFTOVERS = {  # name: a file in it, for directories
    "ckpt-240_temp": "part-00000-of-00001.data-00000-of-00001",  # TensorFlow's temporary dir
    "ckpt-7_temp_0123456789abcdef0123456789abcdef": "part-00000-of-00001.index",  # older TFs'
    "ckpt-240.index.tempstate8837461279": None,  # the tensor bundle writer's unrenamed files
    "ckpt-240.data-00000-of-00001.tempstate12": None,
    "checkpoint.tmp0123456789abcdef0123456789abcdef": None,  # the index file's atomic write
    "operative_config.gin.tmp-4242": None,
    ".worker_tmp_1": "ckpt-3.index",  # a two-worker run's; this run has one worker
}
_LOOK_ALIKES = {
    "ckpt-2.index": None, "ckpt-2.data-00000-of-00001": None,  # a complete checkpoint's files
    "ckpt-240_temp": None,  # a file, not TensorFlow's directory
    "ckpt-240_temporary": "notes.txt", "my-ckpt-240_temp": "notes.txt", "ckpt-best_temp": "x",
    "ckpt-240.index.tempstate": None, "notes.tmp0123": None, "checkpoint.tmp": None,
    ".worker_tmp_x": "x", ".worker_tmp_01": "x",
    "train": "ckpt-5_temp",  # below the model directory
}


def _make(root, entries):
  for name, inner in entries.items():
    if inner is None:
      (root / name).write_text("x")
    else:
      (root / name).mkdir()
      (root / name / inner).write_text("x")


def test_a_trainer_removes_what_interrupted_saves_left_and_nothing_else(tmp_path, caplog):
  run, kept = tmp_path / "run", tmp_path / "kept"
  run.mkdir()
  kept.mkdir()
  _make(run, _LEFTOVERS)
  _make(kept, {k: v for k, v in _LOOK_ALIKES.items() if k != "ckpt-240_temp"})
  (kept / "ckpt-240_temp").write_text("x")
  gin.clear_config()
  common.parse_gin([], test_training.TINY)
  rng = np.random.RandomState(0)
  batch = {"relative_position/patches": rng.uniform(-100, 100, [2, 2, 32, 32, 3]).astype(
      np.float32), "relative_position/label": np.zeros([2], np.int32)}
  caplog.set_level(logging.INFO, logger="absl")
  try:
    for model_dir in (run, kept):
      training.MultiTaskTrainer(str(model_dir), tasks=["relative_position"], input_fns={
          "relative_position": lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()})
  finally:
    gin.clear_config()
  assert sorted(os.listdir(run)) == ["train"]  # the summaries' directory, made by the trainer
  logged = caplog.text
  assert f"left in {run}: " in logged and all(name in logged for name in _LEFTOVERS)
  assert sorted(os.listdir(kept)) == sorted(_LOOK_ALIKES)
  assert (kept / "train" / "ckpt-5_temp").exists()
  assert str(kept) not in logged


def _worker(cluster, task_type, task_id):
  """A stand-in for a MultiWorkerMirroredStrategy: what `distribute.worker_info` reads."""
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
  return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("cluster, task, removed", [
    # Worker 0 is the chief: it deletes the directories no worker of its cluster writes (its
    # own index 0, and 3 in a cluster of three); workers 1 and 2 each delete their own.
    ({"worker": ["a:1", "b:1", "c:1"]}, ("worker", 0), [0, 3]),
    ({"worker": ["a:1", "b:1", "c:1"]}, ("worker", 2), [2]),
    # With a chief task, workers 0 and 1 write elsewhere: the chief deletes 2 and 3.
    ({"chief": ["x:1"], "worker": ["a:1", "b:1"]}, ("chief", 0), [2, 3]),
    ({"chief": ["x:1"], "worker": ["a:1", "b:1"]}, ("worker", 0), [0]),
])
def test_workers_remove_only_the_temporary_directories_no_live_worker_writes(
    tmp_path, cluster, task, removed):
  for index in range(4):
    (tmp_path / f".worker_tmp_{index}").mkdir()
    (tmp_path / f".worker_tmp_{index}" / "ckpt-3.index").write_text("x")
  strategy = _worker(cluster, *task)
  paths = distribute.remove_stale_worker_dirs(str(tmp_path), strategy)
  assert paths == [str(tmp_path / f".worker_tmp_{i}") for i in removed]
  assert sorted(os.listdir(tmp_path)) == [f".worker_tmp_{i}" for i in range(4) if i not in removed]
