"""Tests of the ImageNet linear probe and of the evaluation loop that runs it."""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import evaluation
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.evals import base
from mtssl_tf.evals import imagenet_linear

SMALL = ["Trunk.depth = 26", "imagenet_linear.batch_size = 8", "imagenet_linear.crop_size = 96",
         "imagenet_linear.preprocess.resize = 100", "imagenet_linear/EvalSettings.train_steps = 6",
         "imagenet_linear.shuffle_buffer = 8"]


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


def test_topk_accumulator_on_hand_made_logits():
  acc = imagenet_linear.TopKAccumulator()
  logits = np.array([[9, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], np.float32)
  acc.update({"imagenet_linear/label": np.array([0, 0, 5])},
             {"imagenet_linear/logits": logits})
  result = acc.result()
  # Example 1: top-1. Example 2: label 0 ranks last (6th): miss. Example 3: label 5 ranks 6th.
  assert result == {"top1": 1 / 3, "top5": 1 / 3, "examples": 3}


def test_toy_classification_labels_follow_hue():
  data = imagenet_linear.toy_classification(num_images=32, num_classes=4)
  assert data["image"].shape[1:] == (96, 112, 3)
  assert set(np.unique(data["label"])) <= {0, 1, 2, 3} and len(np.unique(data["label"])) >= 2
  assert len(data["image"]) == 28  # the 4 grayscale toy images have no hue: left out


def test_probe_leaves_the_trunk_untouched_and_writes_results(tmp_path):
  _bind("imagenet_linear.dataset = 'toy'")
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  before = [v.numpy().copy() for v in trunk.variables]
  results = evaluation.evaluate("imagenet_linear", str(tmp_path), init="random", trunk=trunk)
  for a, b in zip(before, trunk.variables):
    np.testing.assert_array_equal(a, b.numpy())
  assert results["trunk"]["fine_tuned"] is False
  assert 0 <= results["metrics"]["top1"] <= results["metrics"]["top5"] <= 1
  with open(evaluation.results_path(str(tmp_path), "imagenet_linear")) as f:
    assert json.load(f)["metrics"] == results["metrics"]


def test_end_to_end_on_mock_imagenet_from_a_checkpoint(tmp_path):
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  prefix = tf.train.Checkpoint(trunk=trunk).write(str(tmp_path / "pre" / "ckpt-5"))
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    results = evaluation.evaluate("imagenet_linear", str(tmp_path / "out"), checkpoint=prefix)
  assert results["checkpoint"] == prefix
  assert "loaded 104 trunk variables" in results["checkpoint_report"]
  assert results["metrics"]["examples"] == 8
  assert os.path.exists(tmp_path / "out" / "imagenet_linear-ckpt-5.json")
  assert os.listdir(tmp_path / "out" / "tensorboard" / "imagenet_linear-ckpt-5")


def test_eval_lasso_row_goes_into_the_results(tmp_path):
  _bind("imagenet_linear.dataset = 'toy'", "imagenet_linear/EvalSettings.train_steps = 3")
  results = evaluation.evaluate("imagenet_linear", str(tmp_path), init="random",
                                use_lasso=True)
  row = results["lasso_alpha"]["imagenet_linear"]
  assert len(row) == 2 and abs(sum(row) - 1) < 1e-5


def test_checkpoint_directory_evaluates_each_checkpoint_once(tmp_path):
  _bind("imagenet_linear.dataset = 'toy'", "imagenet_linear/EvalSettings.train_steps = 2")
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  checkpoint = tf.train.Checkpoint(trunk=trunk)
  for step in (10, 20):
    checkpoint.write(str(tmp_path / "run" / f"ckpt-{step}"))
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
  with pytest.raises(ValueError, match="--init must be one of"):
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
