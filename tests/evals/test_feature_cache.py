"""Tests of training a frozen evaluation's head on cached features
(`EvalSettings.feature_cache_passes`)."""

import math

import gin
import numpy as np
import pytest

from mtssl_tf import evaluation
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.evals import imagenet_linear

SMALL = ["Trunk.depth = 26", "imagenet_linear.dataset = 'toy'", "imagenet_linear.batch_size = 8",
         "imagenet_linear.num_toy_images = 20", "imagenet_linear.crop_size = 96",
         "imagenet_linear.preprocess.resize = 100", "imagenet_linear.shuffle_buffer = 8",
         "imagenet_linear/EvalSettings.train_steps = 12",
         "imagenet_linear/EvalSettings.batch_norm_batches = 2",
         "EvalSettings.feature_cache_passes = 2"]


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  common.parse_gin([], SMALL)
  yield
  gin.clear_config()


def _trunk():
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  return trunk


def test_a_step_on_cached_features_is_the_step_on_their_images():
  evaluator = evaluation.Evaluator("imagenet_linear", init="random", trunk=_trunk())
  batch = next(iter(evaluator.evaluation.input_fn(None, "train")))
  cached = evaluator.evaluation.frozen_features(batch)
  assert set(cached) == {imagenet_linear.FEATURES, "imagenet_linear/label"}
  # 96 px crops: block 3 at stride 32 is 3 x 3, max-pooled to 1 x 1 x 1024.
  assert cached[imagenet_linear.FEATURES].shape == (8, 1024)
  head = list(evaluator.variables) + list(evaluator.optimizer.variables)
  start = [v.numpy().copy() for v in head]
  loss_images, _ = evaluator.train_step(batch)
  after_images = [v.numpy().copy() for v in evaluator.variables]
  for v, value in zip(head, start):
    v.assign(value)
  loss_cached, _ = evaluator.train_step(cached)
  assert float(loss_cached) == pytest.approx(float(loss_images), rel=1e-5)
  moved = 0
  for a, v, s in zip(after_images, evaluator.variables, start):
    np.testing.assert_allclose(v.numpy(), a, rtol=1e-4, atol=1e-6)
    moved += int(not np.array_equal(a, s))
  assert moved >= 1, "the step changed no head variable"


def test_the_cache_holds_every_augmented_pass_once():
  evaluator = evaluation.Evaluator("imagenet_linear", init="random", trunk=_trunk())
  iterator = evaluator.cache_features()
  examples = 2 * math.ceil(20 / 8) * 8  # 2 passes of 3 batches of 8
  assert evaluator.feature_cache["examples"] == examples
  # One shuffled epoch of the cache: every cached row once. Random crops and color distortions
  # make each drawn example's features distinct (a cache of one batch drawn over and over
  # would hold 8 distinct rows).
  rows = np.concatenate([next(iterator)[imagenet_linear.FEATURES].numpy()
                         for _ in range(examples // 8)])
  assert len(np.unique(rows.round(4), axis=0)) == examples


def test_a_run_trains_on_the_cache_leaves_the_trunk_and_records_it(tmp_path):
  trunk = _trunk()
  before = [v.numpy().copy() for v in trunk.trainable_variables]
  results = evaluation.evaluate("imagenet_linear", str(tmp_path), init="random", trunk=trunk)
  assert results["feature_cache"]["passes"] == 2
  assert results["feature_cache"]["examples"] == 48
  assert results["settings"]["feature_cache_passes"] == 2
  assert results["plan"]["feature_cache_passes"] == 2
  assert results["train_steps"] == 12 and np.isfinite(results["final_train_loss"])
  for a, v in zip(before, trunk.trainable_variables):
    np.testing.assert_array_equal(a, v.numpy())
  assert results["metrics"]["examples"] == 20


def test_what_cannot_be_cached_is_refused_naming_the_binding(monkeypatch):
  with pytest.raises(ValueError, match=r"imagenet_linear/EvalSettings.feature_cache_passes = 2:"
                     r".*lasso.*bind it to 0"):
    evaluation.Evaluator("imagenet_linear", init="random", trunk=_trunk(), use_lasso=True)
  with gin.unlock_config():
    gin.parse_config(["nyu_depth.dataset = 'toy'", "nyu_depth.input_size = (32, 32)",
                      "nyu_depth.crop_size = (32, 32)"])
  with pytest.raises(ValueError, match=r"nyu_depth/EvalSettings.feature_cache_passes = 2:"
                     r".*fine-tunes the trunk"):
    evaluation.Evaluator("nyu_depth", init="random", trunk=_trunk())
  # 2 passes of 3 batches of 8 examples of 1024 floats: about 200 KB, over a 1000-byte limit.
  monkeypatch.setattr(evaluation, "MAX_FEATURE_CACHE_BYTES", 1000)
  evaluator = evaluation.Evaluator("imagenet_linear", init="random", trunk=_trunk())
  with pytest.raises(ValueError, match=r"feature_cache_passes = 2: the cached features would "
                     r"take .* GiB"):
    evaluator.cache_features()
