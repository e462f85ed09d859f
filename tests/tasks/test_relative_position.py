"""Tests of the relative position task: pair sampling, labels, color modes, head."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import color
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import sources
from mtssl_tf.tasks import base
from mtssl_tf.tasks import relative_position as rp

# A small grid keeps tests fast: window = 3 * 16 + 2 * 8 + 2 * 3 = 70 px.
SMALL = dict(patch_size=16, gap=8, jitter=3)


def _coordinate_image(height=100, width=120):
  """uint8 image whose red channel is the row and green channel the column of each pixel."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def _pixels(patches):
  return np.round(input_convention.from_trunk_input(patches).numpy()).astype(int)


def _check_label_from_content(features, patch_size=16):
  """The label agrees with where the two patches' pixels say they came from."""
  pixels = _pixels(features["relative_position/patches"])
  assert pixels.shape == (2, patch_size, patch_size, 3)
  # Each patch's top-left pixel encodes its position in the image.
  (top0, left0), (top1, left1) = pixels[0, 0, 0, :2], pixels[1, 0, 0, :2]
  np.testing.assert_array_equal(features["relative_position/corners"].numpy(),
                                [[top0, left0], [top1, left1]])
  # A patch is a contiguous crop: coordinates grow by one per pixel.
  np.testing.assert_array_equal(pixels[0, :, 0, 0], top0 + np.arange(patch_size))
  np.testing.assert_array_equal(pixels[0, 0, :, 1], left0 + np.arange(patch_size))
  # Jitter (<= 3) is far below the cell pitch (24): the sign of the offset is the direction.
  step = (int(np.sign(round((top1 - top0) / 24))), int(np.sign(round((left1 - left0) / 24))))
  label = int(features["relative_position/label"])
  assert rp.OFFSETS[label] == step, (label, step)
  assert abs(abs(top1 - top0) - 24 * abs(step[0])) <= 6
  assert abs(abs(left1 - left0) - 24 * abs(step[1])) <= 6
  return label


def test_label_is_recoverable_from_pixel_coordinates_eagerly():
  tf.random.set_seed(1)
  example = {"image": _coordinate_image()}
  labels = [_check_label_from_content(rp.preprocess(example, color_mode="none", **SMALL))
            for _ in range(80)]
  # Every one of the 8 relative positions is drawn.
  assert set(labels) == set(range(8))


def test_label_is_recoverable_inside_tf_data():
  tf.random.set_seed(2)
  ds = tf.data.Dataset.from_tensors({"image": _coordinate_image()}).repeat(40).map(
      lambda ex: rp.preprocess(ex, color_mode="none", **SMALL), num_parallel_calls=2)
  labels = [_check_label_from_content(features) for features in ds]
  assert len(set(labels)) >= 6


def test_label_ordering_is_reading_order():
  assert rp.OFFSETS[0] == (-1, -1) and rp.OFFSETS[4] == (0, 1) and rp.OFFSETS[6] == (1, 0)
  assert len(set(rp.OFFSETS)) == 8 and (0, 0) not in rp.OFFSETS
  assert rp.LABEL_NAMES[1] == "up" and rp.LABEL_NAMES[3] == "left"


def test_window_placement_is_independent_of_the_label():
  # The centre patch's position range is the same for every label: it never reveals it.
  tf.random.set_seed(3)
  image = tf.constant(_coordinate_image(80, 80))
  firsts = {}
  for _ in range(200):
    _, label, corners = rp.sample_pair(image, **SMALL)
    firsts.setdefault(int(label), []).append(corners.numpy()[0])
  for label, corners in firsts.items():
    corners = np.array(corners)
    # window 70 in an 80 px image: centre top-left in [24 + 3 - 3, 24 + 3 + 10 + 3].
    assert corners.min() >= 24 and corners.max() <= 40, (label, corners.min(), corners.max())


def test_evaluation_mode_is_centred_without_jitter():
  features = rp.preprocess({"image": _coordinate_image(100, 120)}, training=False,
                           color_mode="none", **SMALL)
  corners = features["relative_position/corners"].numpy()
  # Window of 70 centred: origin (15, 25); centre cell at origin + jitter + pitch.
  np.testing.assert_array_equal(corners[0], [15 + 3 + 24, 25 + 3 + 24])
  step = np.array(rp.OFFSETS[int(features["relative_position/label"])])
  np.testing.assert_array_equal(corners[1], corners[0] + 24 * step)


def test_small_images_are_resized_up_to_the_window():
  features = rp.preprocess({"image": np.zeros([20, 30, 3], np.uint8)}, **SMALL)
  assert features["relative_position/patches"].shape == (2, 16, 16, 3)
  assert features["relative_position/corners"].numpy().max() <= 70 - 16


def test_color_dropping_keeps_one_channel_and_fills_two_with_small_noise():
  tf.random.set_seed(4)
  image = np.random.RandomState(0).randint(0, 256, [100, 100, 3]).astype(np.uint8)
  kept_channels = set()
  for _ in range(30):
    features = rp.preprocess({"image": image}, color_mode="drop", **SMALL)
    patches = features["relative_position/patches"].numpy()
    corners = features["relative_position/corners"].numpy()
    for patch, (top, left) in zip(patches, corners):
      original = input_convention.to_trunk_input(
          image[None, top:top + 16, left:left + 16].astype(np.float32)).numpy()[0]
      kept = [c for c in range(3) if np.allclose(patch[..., c], original[..., c], atol=1e-4)]
      assert len(kept) == 1
      kept_channels.add(kept[0])
      noise = np.delete(patch, kept[0], axis=-1)
      expected_std = 0.01 * original[..., kept[0]].std()
      assert abs(noise.std() - expected_std) < 0.25 * expected_std
      assert abs(noise.mean()) < 0.2 * expected_std
  assert kept_channels == {0, 1, 2}


def test_uniform_noise_and_bad_settings():
  patch = tf.random.normal([16, 16, 3], stddev=50.0, seed=0)
  dropped = rp.drop_color(patch, noise="uniform", noise_fraction=0.1, seed=1).numpy()
  keep = [c for c in range(3) if np.allclose(dropped[..., c], patch.numpy()[..., c])][0]
  noise = np.delete(dropped, keep, axis=-1)
  bound = 0.1 * patch.numpy()[..., keep].std() * 3**0.5
  assert np.abs(noise).max() <= bound + 1e-4
  with pytest.raises(ValueError, match="noise must be one of"):
    rp.drop_color(patch, noise="pink")
  with pytest.raises(ValueError, match="color_mode must be one of"):
    rp.preprocess({"image": _coordinate_image()}, color_mode="gray", **SMALL)
  with pytest.raises(ValueError, match="jitter"):
    rp.preprocess({"image": _coordinate_image()}, patch_size=16, gap=4, jitter=3)


def test_harmonized_mode_is_colorizations_input():
  image = np.random.RandomState(1).randint(0, 256, [100, 100, 3]).astype(np.uint8)
  ds = tf.data.Dataset.from_tensors({"image": image}).map(
      lambda ex: rp.preprocess(ex, color_mode="harmonized", **SMALL))
  features = next(iter(ds))
  rgb = input_convention.from_trunk_input(features["relative_position/patches"]).numpy()
  top, left = features["relative_position/corners"].numpy()[1]
  lab = color.rgb_to_lab(image[top:top + 16, left:left + 16].astype(np.float32) / 255).numpy()
  for c in range(3):
    np.testing.assert_allclose(rgb[1, ..., c], lab[..., 0] * 2.55, atol=1e-2)


def test_downsampling_blurs_but_keeps_shape():
  patch = tf.constant(np.random.RandomState(2).uniform(0, 255, [32, 32, 3]), tf.float32)
  blurred = rp.downsample(patch, min_area=16, seed=0)
  assert blurred.shape == (32, 32, 3)
  # High frequencies are lost: neighbouring pixels differ less than in white noise.
  roughness = lambda x: np.abs(np.diff(np.asarray(x), axis=0)).mean()
  assert roughness(blurred) < 0.8 * roughness(patch)
  features = rp.preprocess({"image": _coordinate_image()}, downsample_probability=1.0,
                           color_mode="none", **SMALL)
  assert features["relative_position/patches"].shape == (2, 16, 16, 3)


def _batch(num, patch_size=32, seed=0):
  rng = np.random.RandomState(seed)
  drawn = [rp.preprocess({"image": rng.randint(0, 256, [120, 120, 3]).astype(np.uint8)},
                         patch_size=patch_size, gap=8, jitter=2) for _ in range(num)]
  return {k: tf.stack([d[k] for d in drawn]) for k in drawn[0]}


def test_model_fn_shapes_loss_and_gradients():
  trunk = trunk_lib.Trunk(depth=26, output_stride=8)  # the task calls it at 32 anyway
  task = base.get("relative_position")(trunk, fc_width=16, batch_size=3, patch_size=32)
  features = _batch(3)
  with tf.GradientTape() as tape:
    spec = task.model_fn(features, base.Mode.TRAIN)
  assert spec.predictions["relative_position/probabilities"].shape == (3, 8)
  assert np.isfinite(spec.loss.numpy()) and spec.loss.numpy() > 0
  variables = trunk.trainable_variables + task.head_variables
  # BN gamma, beta; fc6 kernel, bias; fc7 kernel, bias; fc8 kernel, bias.
  assert len(task.head_variables) == 8
  grads = tape.gradient(spec.loss, variables)
  assert all(g is not None for g in grads)
  assert 0.0 <= spec.metrics["accuracy"].numpy() <= 1.0
  # Per-patch head sees block 3 of a 32px patch at stride 32: 1x1x1024 -> fc_width.
  assert task.patch_head.layers[-1].kernel.shape == (1024, 16)
  assert task.pair_head.layers[0].kernel.shape == (32, 16)
  assert task.model_fn(features, base.Mode.PREDICT).loss is None
  with pytest.raises(ValueError, match="head was built for 32px"):
    task.model_fn(_batch(2, patch_size=64), base.Mode.EVAL)


def test_pair_order_matters_to_the_head():
  # Swapping the two patches of a pair changes the prediction: the head is not symmetric.
  task = rp.RelativePosition(trunk_lib.Trunk(depth=26), fc_width=16, patch_size=32)
  features = _batch(2, seed=1)
  swapped = dict(features)
  swapped["relative_position/patches"] = features["relative_position/patches"][:, ::-1]
  p1 = task.model_fn(features, base.Mode.PREDICT).predictions
  p2 = task.model_fn(swapped, base.Mode.PREDICT).predictions
  l1, l2 = p1["relative_position/logits"].numpy(), p2["relative_position/logits"].numpy()
  assert np.abs(l1 - l2).max() > 1e-3 * np.abs(l1).max()


def test_input_fn_per_replica_batches_and_pairs_per_image():
  task = rp.RelativePosition(
      trunk_lib.Trunk(depth=26), fc_width=8, batch_size=6, pairs_per_image=3, patch_size=16,
      source_fn=lambda ctx: sources.image_dataset(
          source="toy", num_toy_images=4, toy_size=(40, 48), input_context=ctx))
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  features = next(iter(task.input_fn(context)))
  assert features["relative_position/patches"].shape == (3, 2, 16, 16, 3)
  assert features["relative_position/label"].shape == (3,)
  assert features["relative_position/label"].dtype == tf.int32


def test_input_fn_on_mock_imagenet():
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    task = rp.RelativePosition(
        trunk_lib.Trunk(depth=26), fc_width=8, batch_size=4, patch_size=16,
        source_fn=lambda ctx: sources.image_dataset(
            source="tfds", name="imagenet2012", split="train", input_context=ctx))
    features = next(iter(task.input_fn()))
  assert features["relative_position/patches"].shape == (4, 2, 16, 16, 3)
  assert np.all(np.isfinite(features["relative_position/patches"].numpy()))
