"""Tests of the evaluation loop (`Evaluator`): settings, schedule, batch norm statistics,
seeds, the evaluation lasso, progress and summaries."""

import glob
import logging
import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import evaluation
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.evals import base
from tests.conftest import untraced_steps

# A tiny linear probe on the toy classification set.
LINEAR = ["Trunk.depth = 26", "imagenet_linear.dataset = 'toy'", "imagenet_linear.batch_size = 8",
          "imagenet_linear.crop_size = 96", "imagenet_linear.preprocess.resize = 100",
          "imagenet_linear.shuffle_buffer = 8", "imagenet_linear/EvalSettings.train_steps = 3",
          "EvalSettings.batch_norm_batches = 2"]


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(*bindings):
  common.parse_gin([], list(bindings))


@pytest.mark.parametrize("name", ["imagenet_linear", "nyu_depth", "voc_detection"])
def test_settings_take_the_protocol_then_gin(name):
  protocol = base.get(name).protocol
  assert protocol, f"{name} states no protocol"
  settings = evaluation.settings_for(name)
  for field, value in protocol.items():
    assert getattr(settings, field) == (tuple(value) if field == "decay_at" else value)
  _parse(f"{name}/EvalSettings.learning_rate = 0.123")
  assert evaluation.settings_for(name).learning_rate == 0.123
  assert evaluation.settings_for(name).momentum == protocol.get("momentum", 0.9)


@pytest.mark.parametrize("binding, message", [
    ("learning_rate = 'fast'", r"imagenet_linear/EvalSettings.learning_rate = 'fast': must be a"),
    ("decay_at = (0.8, 0.5)", r"EvalSettings.decay_at = \(0.8, 0.5\): must be increasing"),
    ("decay_at = (0.5, 1.5)", r"EvalSettings.decay_at"),
    ("batch_norm_statistics = 'fresh'", r"batch_norm_statistics = 'fresh': must be one of"),
    ("train_steps = 2.5", r"train_steps = 2.5: must be a whole number"),
    ("momentum = -1", r"momentum = -1: must be >= 0"),
])
def test_bad_settings_name_their_binding(binding, message):
  _parse(f"imagenet_linear/EvalSettings.{binding}")
  with pytest.raises(ValueError, match=message):
    evaluation.settings_for("imagenet_linear")


def test_schedule_multiplies_at_each_fraction():
  settings = evaluation.EvalSettings(train_steps=1000, learning_rate=0.5, decay_rate=0.1,
                                     decay_at=(0.625, 0.875)).resolve("x", {})
  schedule = evaluation.learning_rate_schedule(settings, 800)
  # Boundaries at 500 and 700 of 800 steps (the detection API's 500K and 700K of 800K).
  expected = {0: 0.5, 499: 0.5, 500: 0.5, 501: 0.05, 700: 0.05, 701: 0.005, 799: 0.005}
  for step, rate in expected.items():
    assert float(schedule(step)) == pytest.approx(rate), step
  flat = evaluation.learning_rate_schedule(
      evaluation.EvalSettings(train_steps=5, learning_rate=0.2).resolve("x", {}), 5)
  assert flat == pytest.approx(0.2)
  for schedule in (schedule, flat):  # both are what Keras optimizers take
    optimizer = tf.keras.optimizers.SGD(learning_rate=schedule)
    optimizer.build([tf.Variable(1.0)])


def test_epochs_become_steps_over_the_training_split():
  _parse(*LINEAR, "imagenet_linear/EvalSettings.train_steps = 0",
         "imagenet_linear/EvalSettings.train_epochs = 2.5", "imagenet_linear.num_classes = 8")
  evaluator = evaluation.Evaluator("imagenet_linear", init="random")
  examples = len(evaluator.evaluation.toy_data(True)["label"])
  assert evaluator.train_examples == examples
  assert evaluator.train_steps == math.ceil(2.5 * examples / 8)
  plan = evaluator.plan()
  assert plan["train_steps"] == evaluator.train_steps
  assert plan["epochs"] == pytest.approx(evaluator.train_steps * 8 / examples)


def _fixed_batches(evaluator, batches):
  """Makes the evaluator's training input exactly `batches` (repeated)."""
  data = tf.data.Dataset.from_tensor_slices(batches).repeat()
  evaluator.evaluation.input_fn = lambda ctx, split: data


def test_estimated_statistics_are_the_mean_of_batch_statistics():
  _parse(*LINEAR, "imagenet_linear.num_classes = 8")
  evaluator = evaluation.Evaluator("imagenet_linear", init="random")
  rng = np.random.RandomState(0)
  images = tf.stack([input_convention.to_trunk_input(
      tf.constant(rng.uniform(0, 255, [4, 96, 96, 3]), tf.float32)) for _ in range(2)])
  _fixed_batches(evaluator, {"imagenet_linear/image": images,
                             "imagenet_linear/label": tf.zeros([2, 4], tf.int32)})
  assert evaluator.estimate_batch_norm_statistics(include_trunk=True, batches=2) > 0
  # The first batch norm (block 1's first pre-activation) normalizes pool1, which no batch
  # norm precedes: its moving mean must be the mean over the two batches of pool1's means.
  trunk = evaluator.trunk
  pool1 = [trunk(images[i], training=False)["pool1"].numpy() for i in range(2)]
  expected_mean = np.mean([p.mean(axis=(0, 1, 2)) for p in pool1], axis=0)
  expected_var = np.mean([p.reshape(-1, p.shape[-1]).var(axis=0, ddof=1) for p in pool1],
                         axis=0)
  prefix = f"{trunk.scope}/block1/unit_1/bottleneck_v2/preact/"
  moving = {v.name.split(":")[0][len(prefix):]: v.numpy() for v in trunk.variables
            if v.name.startswith(prefix + "moving")}
  np.testing.assert_allclose(moving["moving_mean"], expected_mean, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(moving["moving_variance"], expected_var, rtol=1e-3)


def test_a_random_trunk_explodes_in_inference_mode_until_estimated():
  _parse(*LINEAR, "imagenet_linear.num_classes = 8")
  evaluator = evaluation.Evaluator("imagenet_linear", init="random")
  toy = evaluator.evaluation.toy_data(True)
  images = input_convention.to_trunk_input(tf.constant(toy["image"][:8, :96, :96], tf.float32))
  trunk = evaluator.trunk
  train_std = float(tf.math.reduce_std(trunk(images, training=False)["block3"]))
  batch_std = float(tf.math.reduce_std(
      tf.stop_gradient(_training_forward(trunk, images))))
  assert train_std > 20 * batch_std  # statistics at their initial 0 and 1, on 0-255 inputs
  _fixed_batches(evaluator, {"imagenet_linear/image": images[None],
                             "imagenet_linear/label": tf.zeros([1, 8], tf.int32)})
  evaluator.estimate_batch_norm_statistics(include_trunk=True, batches=1)
  estimated_std = float(tf.math.reduce_std(trunk(images, training=False)["block3"]))
  assert 0.5 * batch_std < estimated_std < 2 * batch_std


def _training_forward(trunk, images):
  # Batch statistics without touching the moving averages: a copy of the variables' values
  # is restored afterwards.
  saved = [v.numpy() for v in trunk.variables]
  out = trunk(images, training=True)["block3"]
  for variable, value in zip(trunk.variables, saved):
    variable.assign(value)
  return out


def test_seeded_runs_repeat_and_report_at_the_pretraining_step(tmp_path, caplog):
  # 16 toy images in each split: two test batches.
  _parse(*LINEAR, "imagenet_linear.num_classes = 8", "EvalSettings.log_every_secs = 0",
         "imagenet_linear.num_toy_images = 16")
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  prefix = tf.train.Checkpoint(trunk=trunk, global_step=tf.Variable(1234, dtype=tf.int64)).write(
      str(tmp_path / "run" / "ckpt-7"))
  # On absl's logger itself: other tests in the process may have set its own level.
  # What the runs compute and report is under test here, not how their steps compile.
  with caplog.at_level(logging.INFO, logger="absl"), untraced_steps():
    runs = [evaluation.evaluate("imagenet_linear", str(tmp_path / f"out{i}"), checkpoint=prefix,
                                seed=7) for i in range(2)]
  assert runs[0]["metrics"] == runs[1]["metrics"]
  assert runs[0]["final_train_loss"] == runs[1]["final_train_loss"]
  assert runs[0]["seed"] == 7
  assert runs[0]["pretraining"]["global_step"] == 1234
  # The test phase reports progress (images done, rate, ETA).
  assert any("test 8/" in r.getMessage() and "images/s" in r.getMessage()
             for r in caplog.records)
  steps = {}
  for path in glob.glob(str(tmp_path / "out0" / "tensorboard" / "*" / "events*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        steps.setdefault(value.tag, set()).add(event.step)
  assert steps["test/top1"] == {1234}
  assert steps["train/loss"] == {1234 + 3}


def test_the_seed_fixes_data_order_and_augmentation():
  _parse(*LINEAR, "imagenet_linear.num_classes = 8")
  evaluation_cls = base.get("imagenet_linear")

  def first_batch(seed):
    with evaluation._seeded(seed):  # pylint: disable=protected-access
      with gin.config_scope("imagenet_linear"):
        head = evaluation_cls(trunk_lib.Trunk(depth=26))
      return next(iter(head.input_fn(None, "train")))["imagenet_linear/image"].numpy()

  first = first_batch(7)
  np.testing.assert_array_equal(first, first_batch(7))
  assert np.abs(first - first_batch(8)).max() > 1


@pytest.mark.parametrize("name, bindings", [
    # imagenet_linear: tests/evals/test_imagenet_linear.py (20 steps, no trunk gradient).
    ("nyu_depth", ["Trunk.depth = 26", "nyu_depth.dataset = 'toy'", "nyu_depth.batch_size = 2",
                   "nyu_depth.input_size = (64, 96)", "nyu_depth.crop_size = (64, 96)",
                   "nyu_depth/DepthDecoder.filters = (8, 8, 8)"]),
    ("voc_detection", ["Trunk.depth = 26", "voc_detection.dataset = 'toy'",
                       "voc_detection.batch_size = 2", "voc_detection.rpn_num_filters = 16",
                       "voc_detection.num_sampled_rois = 8", "voc_detection.min_size = 64",
                       "voc_detection.max_size = 64", "voc_detection.padded_size = (64, 64)",
                       "voc_detection.crop_size = 8", "voc_detection.train_num_proposals = 32",
                       "voc_detection.test_num_proposals = 16"]),
])
def test_eval_lasso_learns(name, bindings):
  _parse(*bindings, "Lasso.init = 'uniform'", "Lasso.l1_weight = 0.0",
         f"{name}/EvalSettings.learning_rate = 0.01",
         f"{name}/EvalSettings.batch_norm_statistics = 'checkpoint'")
  # Seeded: unseeded, alpha's gradient on a random trunk ranged over 1.7e-4 to 2.7e-2 across
  # initializations, so a fixed threshold on how far it moves was a coin toss.
  with evaluation._seeded(0):  # pylint: disable=protected-access
    evaluator = evaluation.Evaluator(name, init="random", use_lasso=True)
    alpha = evaluator.evaluation.lasso.row(name)
    start = alpha.numpy().copy()
    features = next(evaluator.iterator)
    with tf.GradientTape() as tape:
      loss = evaluator.evaluation.model_fn(features, heads.Mode.TRAIN).loss
    gradient = tape.gradient(loss, alpha)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0
    with untraced_steps():  # what the steps do to alpha is under test, not how they compile
      evaluator.train_step(features)
      if name == "nyu_depth":
        # Depth's step is deterministic on a batch: its first update is SGD's -lr * gradient
        # moved back onto sum 1 (the gradient minus its mean), no clipping in its protocol.
        g = gradient.numpy()
        np.testing.assert_allclose(alpha.numpy() - start, -0.01 * (g - g.mean()), rtol=0.02,
                                   atol=1e-8)
      for _ in range(2):
        evaluator.train_step()
  moved = alpha.numpy()
  assert np.abs(moved - start).max() > 1e-5
  assert moved.sum() == pytest.approx(1.0, abs=1e-5)
