"""Tests of the relative position task: image scale, pair sampling, labels, per-patch
preprocessing (downsampling, color dropping, normalization), head."""

import inspect
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import color
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.data import sources
from mtssl_tf.tasks import base
from mtssl_tf.tasks import relative_position as rp

# A small grid keeps tests fast: window = 3 * 16 + 2 * 8 + 2 * 3 = 70 px.
SMALL = dict(patch_size=16, gap=8, jitter=3)
# The image at its own size and patches as they were cut, to read pixel coordinates back.
RAW = dict(SMALL, image_area=None, downsample_probability=0.0, color_mode="none",
           normalize=False)


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
  labels = [_check_label_from_content(rp.preprocess(example, **RAW)) for _ in range(80)]
  # Every one of the 8 relative positions is drawn.
  assert set(labels) == set(range(8))


def test_label_is_recoverable_inside_tf_data():
  tf.random.set_seed(2)
  ds = tf.data.Dataset.from_tensors({"image": _coordinate_image()}).repeat(40).map(
      lambda ex: rp.preprocess(ex, **RAW), num_parallel_calls=2)
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
  features = rp.preprocess({"image": _coordinate_image(100, 120)}, training=False, **RAW)
  corners = features["relative_position/corners"].numpy()
  # Window of 70 centred: origin (15, 25); centre cell at origin + jitter + pitch.
  np.testing.assert_array_equal(corners[0], [15 + 3 + 24, 25 + 3 + 24])
  step = np.array(rp.OFFSETS[int(features["relative_position/label"])])
  np.testing.assert_array_equal(corners[1], corners[0] + 24 * step)


def test_small_images_are_resized_up_to_the_window():
  features = rp.preprocess({"image": np.zeros([20, 30, 3], np.uint8)}, **RAW)
  assert features["relative_position/patches"].shape == (2, 16, 16, 3)
  # Scaled, aspect kept, until the short side fills the 70-pixel window: 70 x 105. Corners are
  # (row, column) of 16-pixel patches inside it.
  corners = features["relative_position/corners"].numpy()
  assert corners[:, 0].max() <= 70 - 16 and corners[:, 1].max() <= 105 - 16


def test_images_are_scaled_to_a_random_area_eagerly():
  tf.random.set_seed(5)
  for height, width in ((300, 400), (1000, 800), (50, 60)):
    image = tf.zeros([height, width, 3], tf.uint8)
    for _ in range(5):
      scaled = rp.scale_image(image, (150000, 450000), 398)
      new_height, new_width = scaled.shape[:2]
      # In range up to the rounding of each side; aspect kept.
      assert 150000 - (new_height + new_width) <= new_height * new_width
      assert new_height * new_width <= 450000 + new_height + new_width
      assert abs(new_height / new_width - height / width) < 0.01
      assert min(new_height, new_width) >= 398
  # Evaluation: the middle of the range, 300K pixels: 300 x 400 scaled by sqrt(2.5).
  image = tf.zeros([300, 400, 3], tf.uint8)
  assert rp.scale_image(image, (150000, 450000), 398, training=False).shape == (474, 632, 3)


def test_image_area_is_uniform_inside_tf_data():
  tf.random.set_seed(6)
  ds = tf.data.Dataset.from_tensors(tf.zeros([30, 40, 3], tf.uint8)).repeat(200).map(
      lambda image: tf.shape(rp.scale_image(image, (150000, 450000), 70)))
  areas = np.array([shape[0] * shape[1] for shape in ds.as_numpy_iterator()])
  assert areas.min() >= 150000 - 1200 and areas.max() <= 450000 + 1200
  # Uniform on [150K, 450K]: mean 300K, deviation 86.6K (mean of 200 draws: +- 6.1K).
  assert abs(areas.mean() - 300000) < 25000
  assert areas.min() < 170000 and areas.max() > 430000


def test_the_window_forces_a_larger_area_where_it_needs_one():
  # 10 x 100 at 1K-3K pixels would leave the shorter side at 10-17 px; the 70 px window needs
  # 70 x 700.
  scaled = rp.scale_image(tf.zeros([10, 100, 3], tf.uint8), (1000, 3000), 70)
  assert scaled.shape == (70, 700, 3)
  with pytest.raises(ValueError, match="image_area must be"):
    rp.scale_image(tf.zeros([10, 10, 3]), (500, 100), 70)


def test_preprocess_samples_from_the_scaled_image():
  # 80 x 80 scaled to 20,000 pixels is 141 x 141 (80 * sqrt(20000 / 6400) = 141.4); the 70 px
  # window centred in it: origin 35, centre cell at 35 + jitter 3 + pitch 24 = 62.
  image = {"image": _coordinate_image(80, 80)}
  features = rp.preprocess(image, training=False, **dict(RAW, image_area=(20000, 20000)))
  np.testing.assert_array_equal(features["relative_position/corners"].numpy()[0], [62, 62])
  tf.random.set_seed(7)
  corners = [rp.preprocess(image, **dict(RAW, image_area=(20000, 20000)))[
      "relative_position/corners"].numpy() for _ in range(30)]
  assert np.max(corners) > 80 - 16 and np.max(corners) <= 141 - 16


def _random_image(seed, size=100):
  return np.random.RandomState(seed).randint(0, 256, [size, size, 3]).astype(np.uint8)


def _crop(image, corner, size=16):
  top, left = corner
  return image[top:top + size, left:left + size].astype(np.float64)


def test_color_dropping_as_the_original_keeps_one_centred_channel_and_uniform_noise():
  tf.random.set_seed(4)
  image = _random_image(0)
  kept_channels = set()
  for _ in range(30):
    features = rp.preprocess({"image": image}, **dict(SMALL, image_area=None,
                                                      downsample_probability=0.0))
    patches = features["relative_position/patches"].numpy()
    for patch, corner in zip(patches, features["relative_position/corners"].numpy()):
      crop = _crop(image, corner)
      centred = crop - crop.mean(axis=(0, 1))
      # The kept channel is the crop's channel minus its own mean, times one common scale.
      scales = [np.sum(patch[..., c] * centred[..., c]) / np.sum(centred[..., c]**2)
                for c in range(3)]
      kept = [c for c in range(3)
              if np.allclose(patch[..., c], scales[c] * centred[..., c], atol=1e-3)]
      assert len(kept) == 1
      kept_channels.add(kept[0])
      scale = scales[kept[0]]
      # The other two: uniform in [-0.5, 0.5] before scaling (deviation 1 / sqrt(12)).
      noise = np.delete(patch, kept[0], axis=-1) / scale
      assert np.abs(noise).max() <= 0.5 + 1e-4
      assert abs(noise.std() - 12**-0.5) < 0.05 and abs(noise.mean()) < 0.05
      # Then the whole patch to RMS 50.
      assert abs(np.sqrt(np.mean(patch.astype(np.float64)**2)) - 50) < 1e-3
  assert kept_channels == {0, 1, 2}


def test_gaussian_noise_of_the_2015_paper():
  tf.random.set_seed(8)
  image = _random_image(3)
  for _ in range(10):
    features = rp.preprocess({"image": image}, **dict(
        SMALL, image_area=None, downsample_probability=0.0, noise="gaussian", normalize=False))
    for patch, corner in zip(features["relative_position/patches"].numpy(),
                             features["relative_position/corners"].numpy()):
      original = _crop(image, corner) - np.array(input_convention.MEAN_RGB)
      kept = [c for c in range(3) if np.allclose(patch[..., c], original[..., c], atol=1e-3)]
      assert len(kept) == 1
      noise = np.delete(patch, kept[0], axis=-1)
      expected_std = 0.01 * original[..., kept[0]].std()
      assert abs(noise.std() - expected_std) < 0.25 * expected_std
      assert abs(noise.mean()) < 0.2 * expected_std


def _check_normalized(patches, color_mode):
  patches = np.asarray(patches, np.float64)
  for patch in patches.reshape([-1] + list(patches.shape[-3:])):
    means, stds = patch.mean(axis=(0, 1)), patch.std(axis=(0, 1))
    if color_mode == "drop":
      # The kept channel (the one with contrast) is centred; the noise channels keep the mean
      # they were drawn with, that of 256 zero-mean draws (within 4 standard errors).
      kept = np.argmax(stds)
      assert abs(means[kept]) < 1e-3
      assert np.all(np.abs(np.delete(means, kept)) <= 4 * np.delete(stds, kept) / 16)
    else:
      np.testing.assert_allclose(means, 0, atol=1e-3)
    assert abs(np.sqrt(np.mean(patch**2)) - 50) < 1e-3


@pytest.mark.parametrize("color_mode", rp.COLOR_MODES)
def test_patches_are_normalized_to_mean_0_and_rms_50_eagerly_and_in_tf_data(color_mode):
  tf.random.set_seed(9)
  settings = dict(SMALL, image_area=(6000, 12000), color_mode=color_mode)
  image = _random_image(4, 90)
  for _ in range(10):
    patches = rp.preprocess({"image": image}, **settings)["relative_position/patches"]
    _check_normalized(patches, color_mode)
  ds = tf.data.Dataset.from_tensors({"image": image}).repeat(20).map(
      lambda ex: rp.preprocess(ex, **settings), num_parallel_calls=2).batch(20)
  _check_normalized(next(iter(ds))["relative_position/patches"], color_mode)


def test_a_flat_patch_stays_finite():
  patches = rp.preprocess({"image": np.full([80, 80, 3], 7, np.uint8)},
                          **dict(SMALL, color_mode="harmonized"))["relative_position/patches"]
  np.testing.assert_array_equal(patches.numpy(), 0.0)


def test_uniform_noise_and_bad_settings():
  patch = tf.random.normal([16, 16, 3], stddev=50.0, seed=0)
  dropped = rp.drop_color(patch, noise="uniform", seed=1).numpy()
  keep = [c for c in range(3) if np.allclose(dropped[..., c], patch.numpy()[..., c])][0]
  noise = np.delete(dropped, keep, axis=-1)
  assert np.abs(noise).max() <= 0.5 and noise.std() > 0.25
  with pytest.raises(ValueError, match="noise must be one of"):
    rp.drop_color(patch, noise="pink")
  with pytest.raises(ValueError, match="color_mode must be one of"):
    rp.preprocess({"image": _coordinate_image()}, color_mode="gray", **SMALL)
  with pytest.raises(ValueError, match="jitter"):
    rp.preprocess({"image": _coordinate_image()}, patch_size=16, gap=4, jitter=3)
  with pytest.raises(ValueError, match="min_downsample_area"):
    rp.preprocess({"image": _coordinate_image()}, min_downsample_area=300, **SMALL)
  with pytest.raises(ValueError, match="image_area"):
    rp.preprocess({"image": _coordinate_image()}, image_area=(0, 10), **SMALL)


def _lightness(image, corner):
  crop = _crop(image, corner).astype(np.float32)
  return color.rgb_to_lab(crop / 255).numpy()[..., 0] * 2.55


def test_harmonized_mode_without_normalization_is_colorizations_input():
  image = _random_image(1)
  ds = tf.data.Dataset.from_tensors({"image": image}).map(
      lambda ex: rp.preprocess(ex, **dict(RAW, color_mode="harmonized")))
  features = next(iter(ds))
  rgb = input_convention.from_trunk_input(features["relative_position/patches"]).numpy()
  lightness = _lightness(image, features["relative_position/corners"].numpy()[1])
  for c in range(3):
    np.testing.assert_allclose(rgb[1, ..., c], lightness, atol=1e-2)


def test_harmonized_mode_normalizes_the_lightness():
  image = _random_image(2)
  features = rp.preprocess({"image": image}, **dict(
      SMALL, image_area=None, downsample_probability=0.0, color_mode="harmonized"))
  for patch, corner in zip(features["relative_position/patches"].numpy(),
                           features["relative_position/corners"].numpy()):
    centred = _lightness(image, corner) - _lightness(image, corner).mean()
    expected = centred * 50 / np.sqrt(np.mean(centred**2))
    for c in range(3):
      np.testing.assert_allclose(patch[..., c], expected, atol=1e-2)


def test_downsampling_fraction_is_a_third_inside_tf_data():
  # On a 0/255 checkerboard a patch cut as it is keeps only 0 and 255; a downsampled one (to
  # 10-15 px for 16 px patches) mixes them. 1,000 pairs: 2,000 patches, deviation of the
  # fraction 0.011 around the original code's 0.33.
  rows, cols = np.meshgrid(np.arange(80), np.arange(80), indexing="ij")
  board = np.repeat(((rows + cols) % 2 * 255).astype(np.uint8)[..., None], 3, axis=-1)
  settings = dict(SMALL, image_area=None, color_mode="none", normalize=False, seed=11)
  ds = tf.data.Dataset.from_tensors({"image": board}).repeat(1000).map(
      lambda ex: rp.preprocess(ex, **settings), num_parallel_calls=2).batch(1000)
  pixels = input_convention.from_trunk_input(
      next(iter(ds))["relative_position/patches"]).numpy().reshape([2000, -1])
  exact = np.all((np.abs(pixels) < 1e-3) | (np.abs(pixels - 255) < 1e-3), axis=1)
  assert abs((1 - exact.mean()) - 0.33) <= 0.03, 1 - exact.mean()


def test_gin_file_binds_the_original_codes_defaults():
  gin.clear_config()
  try:
    gin.parse_config_file(os.path.join(common.GIN_ROOT, "tasks", "relative_position.gin"))
    defaults = inspect.signature(rp.preprocess).parameters
    for name, value in (("image_area", (150000, 450000)), ("downsample_probability", 0.33),
                        ("min_downsample_area", 100), ("noise", "uniform"),
                        ("normalize", True), ("patch_rms", 50.0)):
      assert gin.query_parameter(f"relative_position.preprocess.{name}") == value
      assert defaults[name].default == value
  finally:
    gin.clear_config()


def test_downsampling_blurs_but_keeps_shape():
  patch = tf.constant(np.random.RandomState(2).uniform(0, 255, [32, 32, 3]), tf.float32)
  blurred = rp.downsample(patch, min_area=16, seed=0)
  assert blurred.shape == (32, 32, 3)
  # High frequencies are lost: neighbouring pixels differ less than in white noise.
  roughness = lambda x: np.abs(np.diff(np.asarray(x), axis=0)).mean()
  assert roughness(blurred) < 0.8 * roughness(patch)
  features = rp.preprocess({"image": _coordinate_image()},
                           **dict(RAW, downsample_probability=1.0))
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
    spec = task.model_fn(features, heads.Mode.TRAIN)
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
  assert task.model_fn(features, heads.Mode.PREDICT).loss is None
  with pytest.raises(ValueError, match="head was built for 32px"):
    task.model_fn(_batch(2, patch_size=64), heads.Mode.EVAL)


def test_pair_order_matters_to_the_head():
  # Swapping the two patches of a pair changes the prediction: the head is not symmetric.
  task = rp.RelativePosition(trunk_lib.Trunk(depth=26), fc_width=16, patch_size=32)
  features = _batch(2, seed=1)
  swapped = dict(features)
  swapped["relative_position/patches"] = features["relative_position/patches"][:, ::-1]
  p1 = task.model_fn(features, heads.Mode.PREDICT).predictions
  p2 = task.model_fn(swapped, heads.Mode.PREDICT).predictions
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
