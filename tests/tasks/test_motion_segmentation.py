"""Tests of the motion segmentation task: aligned crops, loss and metrics, head, input."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import motion_records
from mtssl_tf.tasks import base
from mtssl_tf.tasks import motion_segmentation as ms


def _example(cells=(30, 40), seed=0):
  """A frame whose every 8x8 block is bright exactly where its mask cell moves."""
  mask = np.random.RandomState(seed).randint(0, 2, cells).astype(np.uint8)
  image = np.kron(mask, np.ones([8, 8], np.uint8)) * 200 + 20
  return {"image": np.repeat(image[..., None], 3, -1).astype(np.uint8), "mask": mask}


def _check_aligned(features, crop_size):
  image = input_convention.from_trunk_input(features["motion_segmentation/image"]).numpy()
  mask = features["motion_segmentation/mask"].numpy()
  assert image.shape == (crop_size, crop_size, 3)
  assert mask.shape == (crop_size // 8, crop_size // 8) and mask.dtype == np.int32
  blocks = image[..., 0].reshape(crop_size // 8, 8, crop_size // 8, 8).mean(axis=(1, 3))
  np.testing.assert_array_equal(blocks > 120, mask > 0)


def test_crops_keep_the_mask_aligned_eagerly_and_in_tf_data():
  tf.random.set_seed(0)
  for _ in range(5):
    _check_aligned(ms.preprocess(_example(), training=True, crop_size=64), 64)
  ds = tf.data.Dataset.from_tensors(_example(seed=1)).repeat(5).map(
      lambda ex: ms.preprocess(ex, training=True, crop_size=96))
  for features in ds:
    _check_aligned(features, 96)


def test_evaluation_is_the_centre_crop():
  example = _example()
  features = ms.preprocess(example, training=False, crop_size=64)
  np.testing.assert_array_equal(features["motion_segmentation/mask"].numpy(),
                                example["mask"][11:19, 16:24])


def test_small_frames_are_resized_up_on_the_grid():
  example = _example(cells=(6, 10))  # a 48x80 frame
  image, mask = ms.resize_to_cover(example["image"], example["mask"], 64)
  assert image.shape == (64, 112, 3) and mask.shape == (8, 14)
  features = ms.preprocess(example, training=True, crop_size=64)
  assert features["motion_segmentation/image"].shape == (64, 64, 3)
  with pytest.raises(ValueError, match="multiple of 8"):
    ms.preprocess(example, crop_size=60)


def test_loss_and_metrics_on_hand_made_logits():
  mask = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.int32)
  uniform = tf.zeros([2, 2, 2, 2])
  loss, _ = ms.motion_loss(uniform, mask)
  np.testing.assert_allclose(loss.numpy(), np.log(2), rtol=1e-6)
  perfect = tf.one_hot(mask, 2) * 20.0
  loss, metrics = ms.motion_loss(perfect, mask)
  assert loss.numpy() < 1e-6
  assert metrics["accuracy"].numpy() == 1.0 and metrics["moving_iou"].numpy() == 1.0
  np.testing.assert_allclose(metrics["moving_fraction"].numpy(), 1 / 8)
  # Predict moving in 3 cells, one of them right: IoU 1/3, accuracy 6/8.
  predicted = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], np.int32)
  _, metrics = ms.motion_loss(tf.one_hot(predicted, 2), mask)
  np.testing.assert_allclose(metrics["moving_iou"].numpy(), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"].numpy(), 6 / 8)
  np.testing.assert_allclose(metrics["predicted_moving_fraction"].numpy(), 3 / 8)
  # Nothing moves and nothing is predicted to: IoU is 1, not 0.
  _, metrics = ms.motion_loss(tf.one_hot(np.zeros_like(mask), 2), np.zeros_like(mask))
  assert metrics["moving_iou"].numpy() == 1.0
  # The moving class weight: weighted mean of the per-cell cross-entropies.
  logits = tf.constant(np.random.RandomState(0).normal(size=[2, 2, 2, 2]), tf.float32)
  per_cell = tf.nn.sparse_softmax_cross_entropy_with_logits(mask, logits).numpy()
  weights = np.where(mask > 0, 3.0, 1.0)
  loss, _ = ms.motion_loss(logits, mask, moving_weight=3.0)
  np.testing.assert_allclose(loss.numpy(), (per_cell * weights).sum() / weights.sum(),
                             rtol=1e-6)


def test_model_fn_shapes_and_gradients():
  trunk = trunk_lib.Trunk(depth=26)
  task = base.get("motion_segmentation")(trunk, head_width=16, batch_size=2, crop_size=32)
  batch = [ms.preprocess(_example(seed=s), crop_size=32) for s in range(2)]
  features = {k: tf.stack([b[k] for b in batch]) for k in batch[0]}
  with tf.GradientTape() as tape:
    spec = task.model_fn(features, heads.Mode.TRAIN)
  assert spec.predictions["motion_segmentation/logits"].shape == (2, 4, 4, 2)
  assert np.isfinite(spec.loss.numpy())
  grads = tape.gradient(spec.loss, trunk.trainable_variables + task.head_variables)
  assert all(g is not None for g in grads)
  assert len(task.head_variables) == 7  # BN (2), conv, BN (2), conv kernel and bias
  assert task.model_fn(features, heads.Mode.PREDICT).loss is None


def test_input_fn_on_the_toy_clips_per_replica():
  task = ms.MotionSegmentation(
      trunk_lib.Trunk(depth=26), batch_size=4, crop_size=64,
      source_fn=lambda ctx: motion_records.motion_dataset(
          source="toy", num_toy_clips=2, toy_frames_per_clip=2, toy_size=(80, 96),
          input_context=ctx))
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  features = next(iter(task.input_fn(context)))
  assert features["motion_segmentation/image"].shape == (2, 64, 64, 3)
  assert features["motion_segmentation/mask"].shape == (2, 8, 8)
  spec = task.model_fn(features, heads.Mode.EVAL)
  assert 0.0 <= spec.metrics["moving_iou"].numpy() <= 1.0
