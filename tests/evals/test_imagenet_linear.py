"""Tests of the ImageNet linear probe and of the evaluation loop that runs it."""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import evaluation
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.data import sources
from mtssl_tf.data import toy_shapes
from mtssl_tf.evals import base
from mtssl_tf.evals import imagenet_linear
from tests.conftest import untraced_steps

# 16 images in each split of the toy set (2 test batches); one training step and one batch for
# the batch norm statistics, unless a test needs more. 96-pixel crops: block 3 at stride 32 is
# 3 x 3, the probe's max pool window.
SMALL = ["Trunk.depth = 26", "imagenet_linear.batch_size = 8", "imagenet_linear.crop_size = 96",
         "imagenet_linear.preprocess.resize = 100", "imagenet_linear/EvalSettings.train_steps = 1",
         "imagenet_linear/EvalSettings.batch_norm_batches = 1",
         "imagenet_linear.shuffle_buffer = 8", "imagenet_linear.num_toy_images = 16"]


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  common.parse_gin([], SMALL)
  yield
  gin.clear_config()


def _bind(*bindings):
  with gin.unlock_config():
    gin.parse_config(list(bindings))


def test_preprocess_eagerly_and_in_tf_data():
  example = {"image": np.random.RandomState(0).randint(0, 255, [50, 70, 3]).astype(np.uint8),
             "label": 3}
  train = imagenet_linear.preprocess(example, True, crop_size=64, resize=72)
  assert train["imagenet_linear/image"].shape == (64, 64, 3)
  assert int(train["imagenet_linear/label"]) == 3
  ds = tf.data.Dataset.from_tensors(example).map(
      lambda ex: imagenet_linear.preprocess(ex, False, crop_size=64, resize=72))
  test = next(iter(ds))
  # The center crop of the 72 px resize, deterministic.
  again = imagenet_linear.preprocess(example, False, crop_size=64, resize=72)
  np.testing.assert_array_equal(test["imagenet_linear/image"], again["imagenet_linear/image"])


def test_training_crop_is_a_window_of_the_resized_image():
  image = np.random.RandomState(1).randint(0, 255, [50, 70, 3]).astype(np.uint8)
  resized = sources.resize_shorter_side(image, 72).numpy()  # [72, 101, 3]
  corners = set()
  for seed in range(6):
    out = imagenet_linear.preprocess({"image": image, "label": 0}, True, crop_size=64,
                                     resize=72, brightness=0, contrast=0, saturation=0, hue=0,
                                     seed=seed)
    rgb = input_convention.from_trunk_input(out["imagenet_linear/image"][None])[0].numpy()
    # Translation only: the crop is one 64 x 64 window of the 72 px resize, at scale 1.
    found = [(y, x) for y in range(72 - 64 + 1) for x in range(101 - 64 + 1)
             if np.abs(resized[y:y + 64, x:x + 64] - rgb).max() < 1e-3]
    assert len(found) == 1
    corners.add(found[0])
  assert len(corners) > 1


def test_distort_color_ranges_and_off_switches():
  image = tf.fill([4, 5, 3], 0.5)
  np.testing.assert_array_equal(imagenet_linear.distort_color(image, 0, 0, 0, 0), image)
  shifts = set()
  for seed in range(8):
    out = imagenet_linear.distort_color(image, 32 / 255, 0, 0, 0, seed=seed).numpy()
    # Brightness alone: one shift of every value, within +-32/255.
    assert np.ptp(out) < 1e-6 and abs(out[0, 0, 0] - 0.5) <= 32 / 255 + 1e-6
    shifts.add(round(float(out[0, 0, 0]), 5))
  assert len(shifts) > 1
  colors = np.random.RandomState(0).uniform(0, 1, [4, 5, 3]).astype(np.float32)
  out = imagenet_linear.distort_color(colors, 32 / 255, 0.5, 0.5, 0.2, seed=3).numpy()
  assert out.min() >= 0 and out.max() <= 1 and np.abs(out - colors).max() > 1e-3


# Logits for 8 classes whose ranking is class 1, 5, 3, 7, 4, 0, 6, 2 (best first); the labels
# below rank 1st, 2nd, ..., 8th, then 5th and 2nd: 1 of 10 in the top 1, 7 of 10 in the top 5.
RANKED_BIAS = np.array([0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6], np.float32)
RANKED_LABELS = np.array([1, 5, 3, 7, 4, 0, 6, 2, 4, 5], np.int32)


def test_topk_accumulator_counts_ranks_two_to_five():
  acc = imagenet_linear.TopKAccumulator()
  logits = np.array([[9, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], np.float32)
  acc.update({"imagenet_linear/label": np.array([0, 0, 5])},
             {"imagenet_linear/logits": logits})
  # Example 1: top-1. Example 2: label 0 ranks last (6th): miss. Example 3: label 5 ranks 6th.
  assert acc.result() == {"top1": 1 / 3, "top5": 1 / 3, "examples": 3}
  # Each row a different order of the classes; the label's rank is given for each.
  ranks = [1, 2, 3, 4, 5, 6, 7, 8, 3, 6]
  rng = np.random.RandomState(0)
  logits, labels = [], []
  for rank in ranks:
    order = rng.permutation(8)  # order[0] is the best class
    row = np.empty(8, np.float32)
    row[order] = np.arange(8, 0, -1)
    logits.append(row)
    labels.append(order[rank - 1])
  acc = imagenet_linear.TopKAccumulator()
  acc.update({"imagenet_linear/label": np.array(labels[:4])},
             {"imagenet_linear/logits": np.array(logits[:4])})
  acc.update({"imagenet_linear/label": np.array(labels[4:])},
             {"imagenet_linear/logits": np.array(logits[4:])})
  assert acc.result() == {"top1": 1 / 10, "top5": 6 / 10, "examples": 10}


def test_model_fn_top1_and_top5_on_ranked_labels():
  trunk = trunk_lib.Trunk(depth=26)
  probe = imagenet_linear.ImagenetLinear(trunk, dataset="toy")
  images = tf.random.stateless_uniform([10, 96, 96, 3], [0, 1], -100, 100)
  features = {"imagenet_linear/image": images,
              "imagenet_linear/label": tf.constant(RANKED_LABELS)}
  probe.model_fn(features, heads.Mode.PREDICT)
  # Zero weights: every example's logits are the bias, whatever its features.
  probe.classifier.kernel.assign(tf.zeros_like(probe.classifier.kernel))
  probe.classifier.bias.assign(RANKED_BIAS)
  spec = probe.model_fn(features, heads.Mode.EVAL)
  np.testing.assert_allclose(spec.predictions["imagenet_linear/logits"],
                             np.tile(RANKED_BIAS, [10, 1]))
  assert float(spec.metrics["top1"]) == pytest.approx(0.1, abs=1e-7)
  assert float(spec.metrics["top5"]) == pytest.approx(0.7, abs=1e-7)
  acc = probe.metrics_accumulator()
  acc.update(features, spec.predictions)
  assert acc.result() == {"top1": 1 / 10, "top5": 7 / 10, "examples": 10}


def test_eval_lasso_trains_alpha_and_leaves_the_trunk_without_gradient():
  trunk = trunk_lib.Trunk(depth=26)
  probe = imagenet_linear.ImagenetLinear(trunk, dataset="toy")
  num_units = len(trunk_lib.unit_endpoint_names(26))
  probe.lasso = lasso_lib.Lasso(["imagenet_linear"], num_units, init="uniform")
  features = {"imagenet_linear/image": tf.random.stateless_uniform([4, 96, 96, 3], [0, 2],
                                                                   -100, 100),
              "imagenet_linear/label": tf.constant([0, 3, 5, 7])}
  probe.model_fn(features, heads.Mode.PREDICT)
  alpha = probe.lasso.row("imagenet_linear")
  with tf.GradientTape() as tape:
    loss = probe.model_fn(features, heads.Mode.TRAIN).loss
  grads = tape.gradient(loss, [alpha] + list(trunk.trainable_variables))
  assert grads[0] is not None and np.abs(grads[0].numpy()).max() > 0
  assert all(g is None for g in grads[1:])


def test_toy_classification_is_the_shape_set():
  # The evaluation reads the shape-labelled toy set: every image kept, classes balanced.
  data = imagenet_linear.toy_classification(num_images=32, num_classes=4)
  assert data["image"].shape == (32, 96, 112, 3)
  np.testing.assert_array_equal(np.bincount(data["label"], minlength=4), [8, 8, 8, 8])
  expected = toy_shapes.toy_classification(num_images=32, num_classes=4)
  np.testing.assert_array_equal(data["image"], expected["image"])


def test_probe_trains_no_trunk_weight_and_writes_results(tmp_path):
  _bind("imagenet_linear.dataset = 'toy'")
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  before = [v.numpy().copy() for v in trunk.trainable_variables]
  with untraced_steps():  # what the run changes is under test, not how its steps compile
    results = evaluation.evaluate("imagenet_linear", str(tmp_path), init="random", trunk=trunk)
  # Weights frozen; the protocol re-estimates the batch norm statistics (not trained).
  for a, b in zip(before, trunk.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  assert results["trunk"]["fine_tuned"] is False
  assert results["batch_norm_statistics"]["mode"] == "estimate"
  metrics = results["metrics"]
  # The whole toy test split, each accuracy a whole number of its examples.
  count = len(imagenet_linear.toy_classification(num_images=16, num_classes=8, seed=1)["label"])
  assert metrics["examples"] == count
  for key in ("top1", "top5"):
    assert metrics[key] * count == pytest.approx(round(metrics[key] * count), abs=1e-9)
  assert metrics["top1"] <= metrics["top5"]
  with open(evaluation.results_path(str(tmp_path), "imagenet_linear")) as f:
    assert json.load(f)["metrics"] == results["metrics"]


def test_end_to_end_on_mock_imagenet_from_a_checkpoint(tmp_path):
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  prefix = tf.train.Checkpoint(trunk=trunk).write(str(tmp_path / "pre" / "ckpt-5"))
  with untraced_steps(), tfds.testing.mock_data(num_examples=8,
                                                policy=tfds.testing.MockPolicy.USE_CODE):
    results = evaluation.evaluate("imagenet_linear", str(tmp_path / "out"), checkpoint=prefix)
  assert results["checkpoint"] == prefix
  assert "loaded 104 trunk variables" in results["checkpoint_report"]
  assert results["metrics"]["examples"] == 8
  assert os.path.exists(tmp_path / "out" / "imagenet_linear-ckpt-5.json")
  assert os.listdir(tmp_path / "out" / "tensorboard" / "imagenet_linear-ckpt-5")


def test_eval_lasso_row_learns_and_goes_into_the_results(tmp_path):
  # From uniform weights without the L1 penalty, only the classifier's gradient moves alpha.
  _bind("imagenet_linear.dataset = 'toy'", "imagenet_linear/EvalSettings.train_steps = 20",
        "imagenet_linear/EvalSettings.learning_rate = 0.01", "Lasso.init = 'uniform'",
        "Lasso.l1_weight = 0.0")
  # Seeded: how far 20 steps move alpha depends on the random trunk (seeds 0-3: 0.008 to 0.08;
  # unseeded, one CI run moved it by 9e-5).
  results = evaluation.evaluate("imagenet_linear", str(tmp_path), init="random",
                                use_lasso=True, seed=0)
  row = np.array(results["lasso_alpha"]["imagenet_linear"])
  assert len(row) == 2 and abs(row.sum() - 1) < 1e-5
  assert np.abs(row - 0.5).max() > 1e-3


def test_checkpoint_directory_evaluates_each_checkpoint_once(tmp_path):
  _bind("imagenet_linear.dataset = 'toy'")
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  checkpoint = tf.train.Checkpoint(trunk=trunk)
  for step in (10, 20):
    checkpoint.write(str(tmp_path / "run" / f"ckpt-{step}"))
  with untraced_steps():  # which checkpoints are evaluated is under test, not the steps
    done = evaluation.evaluate_directory("imagenet_linear", str(tmp_path / "run"),
                                         str(tmp_path / "out"))
    assert [os.path.basename(r["checkpoint"]) for r in done] == ["ckpt-10", "ckpt-20"]
    again = evaluation.evaluate_directory("imagenet_linear", str(tmp_path / "run"),
                                          str(tmp_path / "out"))
  assert again == []


def test_clear_errors(tmp_path):
  with pytest.raises(KeyError, match="registered evaluations"):
    base.get("cifar_probe")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint in directory"):
    evaluation.evaluate("imagenet_linear", str(tmp_path), checkpoint=str(empty))
  deep = trunk_lib.Trunk(depth=26)
  deep.ensure_built()
  prefix = tf.train.Checkpoint(trunk=deep).write(str(tmp_path / "d26" / "ckpt-1"))
  _bind("Trunk.depth = 50")
  with pytest.raises(ValueError, match="depth-26 trunk but the configured trunk has depth 50"):
    evaluation.evaluate("imagenet_linear", str(tmp_path), checkpoint=prefix)
  _bind("Trunk.depth = 26", "tfds_split.data_dir = %r" % str(tmp_path / "no_tfds"))
  with pytest.raises(ValueError, match="not prepared"):
    evaluation.evaluate("imagenet_linear", str(tmp_path), init="random")
  with pytest.raises(ValueError, match="init must be one of"):
    evaluation.evaluate("imagenet_linear", str(tmp_path), init="imagenet")


def test_the_binary_evaluates_a_random_trunk(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  command = [sys.executable, "-m", "mtssl_tf.bin.evaluate", "--eval=imagenet_linear",
             "--init=random", f"--output_dir={tmp_path}"] + [
                 f"--gin_param={b}" for b in SMALL + ["imagenet_linear.dataset = 'toy'"]]
  result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "imagenet_linear-random.json") as f:
    assert json.load(f)["init"] == "random"
