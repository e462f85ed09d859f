"""Tests of the exemplar task: augmentation, preprocessing, triplet loss, head, input."""

import inspect
import math
import pathlib

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import sources
from mtssl_tf.tasks import base
from mtssl_tf.tasks import exemplar

GIN_FILE = pathlib.Path(__file__).resolve().parents[2] / "gin" / "tasks" / "exemplar.gin"
# augment's ranges set so that it changes nothing.
NO_GEOMETRY = dict(max_translation=0.0, scale_range=(1.0, 1.0), max_rotation_degrees=0.0)
NO_COLOR = dict(contrast_range=(1.0, 1.0), power_range=(1.0, 1.0), multiply_range=(1.0, 1.0),
                add_range=(0.0, 0.0), max_hue_shift=0.0)


@pytest.fixture
def gin_config():
  """Yields gin; clears every binding afterwards."""
  gin.clear_config()
  yield gin
  gin.clear_config()


def _image(height=50, width=70, seed=0):
  rng = np.random.RandomState(seed)
  return {"image": rng.randint(0, 256, [height, width, 3]).astype(np.uint8)}


def _np_cosine_distance(a, b):
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return 1.0 - np.sum(a * b, axis=-1)


# --- loss ------------------------------------------------------------------------------------


def test_triplet_loss_matches_numpy_with_per_example_normalization():
  # Norms from 0.2 to 20: only per-example normalization makes these cosine distances.
  anchor = np.array([[3, 0, 4], [0.1, 0.2, 0], [0, -20, 5], [1, 1, 0]], np.float32)
  positive = np.array([[6, 0.5, 8], [0, 3, 0.5], [2, -1, 0], [-1, 0.2, 0]], np.float32)
  negative = np.array([[-1, 0.5, 2], [10, 0, 0], [0, -1, 0.1], [0.5, 0.6, 0]], np.float32)
  loss, metrics = exemplar.triplet_loss(anchor, positive, negative, margin=0.5)
  d_ap = _np_cosine_distance(anchor, positive)
  d_an = _np_cosine_distance(anchor, negative)
  hinge = np.maximum(d_ap - d_an + 0.5, 0.0)
  np.testing.assert_allclose(loss.numpy(), hinge.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["positive_distance"].numpy(), d_ap.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["negative_distance"].numpy(), d_an.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["triplet_accuracy"].numpy(), np.mean(d_ap < d_an))
  np.testing.assert_allclose(metrics["active_fraction"].numpy(), np.mean(hinge > 0))
  assert 0 < np.mean(hinge > 0) < 1 and 0 < np.mean(d_ap < d_an) < 1
  # Normalizing over the batch axis (the known bug) gives another loss on these embeddings.
  def batch_norm_distance(a, b):
    return 1.0 - np.sum(a / np.linalg.norm(a, axis=0) * b / np.linalg.norm(b, axis=0), -1)
  wrong = np.maximum(batch_norm_distance(anchor, positive) -
                     batch_norm_distance(anchor, negative) + 0.5, 0).mean()
  assert abs(wrong - hinge.mean()) > 0.05
  np.testing.assert_allclose(exemplar.cosine_distance(anchor, positive).numpy(), d_ap,
                             rtol=1e-5, atol=1e-6)


def test_triplet_loss_at_its_extremes():
  a = np.array([[1.0, 2.0, -1.0], [0.0, 5.0, 0.0]], np.float32)
  # Positive the same direction (another norm), negative opposite: D = 0 and 2, no loss.
  loss, metrics = exemplar.triplet_loss(a, 3.0 * a, -a)
  np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-6)
  assert metrics["triplet_accuracy"].numpy() == 1.0
  assert metrics["active_fraction"].numpy() == 0.0
  # Positive opposite, negative the same: 2 - 0 + 0.5.
  loss, metrics = exemplar.triplet_loss(a, -a, 0.5 * a)
  np.testing.assert_allclose(loss.numpy(), 2.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["positive_distance"].numpy(), 2.0, rtol=1e-6)
  assert metrics["triplet_accuracy"].numpy() == 0.0
  assert metrics["active_fraction"].numpy() == 1.0
  # A tie is not a correct triplet, and costs the margin.
  loss, metrics = exemplar.triplet_loss(a, a, 2.0 * a)
  np.testing.assert_allclose(loss.numpy(), 0.5, rtol=1e-6)
  assert metrics["triplet_accuracy"].numpy() == 0.0


# --- augmentation ----------------------------------------------------------------------------


def test_augment_keeps_shape_and_range_eagerly_and_in_tf_data():
  image = np.zeros([80, 90, 3], np.float32)
  image[:, 45:] = 255.0  # extreme values: color changes must be clipped back into range
  image[::2, :, 1] = 128.0
  for seed in range(4):
    patch = exemplar.augment(image, patch_size=32, seed=seed).numpy()
    assert patch.shape == (32, 32, 3) and patch.dtype == np.float32
    assert patch.min() >= 0.0 and patch.max() <= 255.0
  ds = tf.data.Dataset.from_tensors(image).repeat(3).map(
      lambda im: exemplar.augment(im, patch_size=32))
  patches = [p.numpy() for p in ds]
  assert all(p.shape == (32, 32, 3) and p.min() >= 0 and p.max() <= 255 for p in patches)
  # Independent draws per element.
  assert not np.allclose(patches[0], patches[1])


def test_augment_is_reproducible_from_a_stateless_seed():
  image = _image(80, 80)["image"].astype(np.float32)
  first = exemplar.augment(image, patch_size=32, seed=tf.constant([1, 2])).numpy()
  again = exemplar.augment(image, patch_size=32, seed=tf.constant([1, 2])).numpy()
  other = exemplar.augment(image, patch_size=32, seed=tf.constant([1, 3])).numpy()
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).mean() > 1.0


@pytest.mark.parametrize("shape", [(45, 52), (32, 32), (61, 40)])
def test_augment_without_ranges_is_the_central_crop(shape):
  image = _image(*shape)["image"].astype(np.float32)
  patch = exemplar.augment(image, patch_size=32, **NO_GEOMETRY, **NO_COLOR).numpy()
  top, left = (shape[0] - 32) // 2, (shape[1] - 32) // 2
  np.testing.assert_allclose(patch, image[top:top + 32, left:left + 32], atol=2e-3)


def test_warp_patch_rotation_scale_and_translation_against_numpy():
  image = _image(99, 99)["image"].astype(np.float32)
  # Central crop of 33 px: rows and columns 33..65; its centre is pixel (49, 49).
  crop = image[33:66, 33:66]
  rotated = exemplar.warp_patch(image, 33, angle=math.pi / 2).numpy()
  np.testing.assert_allclose(rotated, np.rot90(crop), atol=1e-3)
  # Scale 2 about the centre: every other pixel of rows and columns 17..81.
  zoomed_out = exemplar.warp_patch(image, 33, scale=2.0).numpy()
  np.testing.assert_allclose(zoomed_out, image[17:82:2, 17:82:2], atol=1e-3)
  # (down, right) translation.
  shifted = exemplar.warp_patch(image, 33, translation=(-5.0, 7.0)).numpy()
  np.testing.assert_allclose(shifted, image[28:61, 40:73], atol=1e-3)
  # Half-pixel shift: bilinear interpolation.
  half = exemplar.warp_patch(image, 33, translation=(0.0, 0.5)).numpy()
  np.testing.assert_allclose(half, (image[33:66, 33:66] + image[33:66, 34:67]) / 2, atol=1e-3)


@pytest.mark.parametrize("patch_size,translation,scale_range,degrees", [
    (96, 0.2, (0.7, 1.4), 20.0),
    (32, 0.2, (0.7, 1.4), 20.0),
    (33, 0.1, (0.5, 2.0), 60.0),
    (32, 0.0, (1.0, 1.0), 0.0),
])
def test_seed_region_holds_every_patch_augment_can_draw(patch_size, translation, scale_range,
                                                         degrees):
  size = exemplar.seed_region_size(patch_size, translation, scale_range, degrees)
  center = (size - patch_size) // 2 + (patch_size - 1) / 2
  shift = translation * patch_size
  angles = {-degrees, degrees} | ({45.0} if degrees >= 45 else set())
  reach = []
  for dy in (-shift, shift):
    for dx in (-shift, shift):
      for angle in angles:
        t = exemplar.patch_transform([center, center], patch_size, (dy, dx), max(scale_range),
                                     math.radians(angle)).numpy()
        for x in (0, patch_size - 1):
          for y in (0, patch_size - 1):
            reach += [t[0] * x + t[1] * y + t[2], t[3] * x + t[4] * y + t[5]]
  assert min(reach) >= 0 and max(reach) <= size - 1
  # And not much more than needed: within 3 px of the farthest point on each side.
  assert min(reach) < 3 and max(reach) > size - 4
  if (patch_size, translation, scale_range, degrees) == (96, 0.2, (0.7, 1.4), 20.0):
    assert size == 213


def test_seed_region_follows_gin_bound_geometry(gin_config):
  assert exemplar.seed_region_size(32) == 73
  gin_config.bind_parameter("exemplar.augment.max_translation", 0.5)
  assert exemplar.seed_region_size(32) == exemplar.seed_region_size(32, 0.5, (0.7, 1.4), 20.0)
  assert exemplar.seed_region_size(32) > 73


def test_saturation_and_value_power_multiply_add_on_gray():
  image = np.full([40, 40, 3], 100.0, np.float32)
  ranges = dict(NO_COLOR, power_range=(2.0, 2.0), multiply_range=(1.2, 1.2),
                add_range=(0.05, 0.05))
  patch = exemplar.augment(image, patch_size=32, **NO_GEOMETRY, **ranges).numpy()
  # Gray: hue 0, saturation 0 -> 0 ** 2 * 1.2 + 0.05; value (100/255) ** 2 * 1.2 + 0.05.
  value = (100.0 / 255.0)**2 * 1.2 + 0.05
  expected = 255.0 * value * np.array([1.0, 0.95, 0.95])
  np.testing.assert_allclose(patch, np.broadcast_to(expected, patch.shape), atol=1e-2)


def test_contrast_comes_before_hsv_and_scales_around_the_mean():
  image = np.full([40, 40, 3], 50.0, np.float32)
  image[:, 20:] = 150.0
  ranges = dict(NO_COLOR, contrast_range=(2.0, 2.0))
  patch = exemplar.augment(image, patch_size=32, **NO_GEOMETRY, **ranges).numpy()
  # Central 32 columns: 16 at 50, 16 at 150; mean 100; factor 2 -> 0 and 200.
  np.testing.assert_allclose(patch[:, :16], 0.0, atol=1e-2)
  np.testing.assert_allclose(patch[:, 16:], 200.0, atol=1e-2)


def test_hue_shift_turns_red_towards_yellow_or_magenta_within_its_range():
  image = np.zeros([40, 40, 3], np.float32)
  image[..., 0] = 255.0
  signs = set()
  for i in range(8):
    patch = exemplar.augment(image, patch_size=32, seed=tf.constant([7, i]), **NO_GEOMETRY,
                             **dict(NO_COLOR, max_hue_shift=0.1)).numpy()
    np.testing.assert_allclose(patch, np.broadcast_to(patch[0, 0], patch.shape), atol=1e-3)
    red, green, blue = patch[0, 0]
    np.testing.assert_allclose(red, 255.0, atol=1e-2)
    assert min(green, blue) < 1e-2
    assert max(green, blue) <= 255.0 * 6 * 0.1 + 1e-2  # hue shift of at most 0.1
    signs.add(green > blue)
  assert signs == {True, False}


def test_augment_rejects_bad_ranges():
  with pytest.raises(ValueError, match="scale_range"):
    exemplar.augment(np.zeros([80, 80, 3], np.float32), patch_size=32, scale_range=(1.4, 0.7))
  with pytest.raises(ValueError, match="power_range"):
    exemplar.augment(np.zeros([80, 80, 3], np.float32), patch_size=32, power_range=(0.0, 2.0))


# --- preprocessing ---------------------------------------------------------------------------


def _check_features(features, size):
  assert set(features) == {"exemplar/x1", "exemplar/x2"}
  for key in features:
    assert features[key].shape == (size, size, 3)
    assert features[key].dtype == tf.float32
    rgb = input_convention.from_trunk_input(features[key]).numpy()
    assert rgb.min() >= -1e-3 and rgb.max() <= 255.0 + 1e-3


def test_preprocess_eagerly_and_in_tf_data():
  features = exemplar.preprocess(_image(90, 100), training=True, patch_size=32)
  _check_features(features, 32)
  assert not np.allclose(features["exemplar/x1"], features["exemplar/x2"])
  ds = tf.data.Dataset.from_tensors(_image(90, 100)).repeat(2).map(
      lambda ex: exemplar.preprocess(ex, training=True, patch_size=32))
  batches = list(ds)
  for features in batches:
    _check_features(features, 32)
  assert not np.allclose(batches[0]["exemplar/x1"], batches[1]["exemplar/x1"])


def test_preprocess_eval_is_the_central_crop_of_the_resized_up_image():
  small = _image(20, 30)
  features = exemplar.preprocess(small, training=False, patch_size=32)
  _check_features(features, 32)
  np.testing.assert_array_equal(features["exemplar/x1"], features["exemplar/x2"])
  # Shorter side 20 < seed_region_size(32) = 73: resized up to 73 x 110 first.
  resized = sources.ensure_min_size(small["image"], 73).numpy()
  assert resized.shape == (73, 110, 3)
  crop = resized[20:52, 39:71].astype(np.float32)
  rgb = input_convention.from_trunk_input(features["exemplar/x1"]).numpy()
  np.testing.assert_allclose(rgb, crop, atol=1e-3)
  # Large images are not resized.
  large = _image(100, 120)
  rgb = input_convention.from_trunk_input(
      exemplar.preprocess(large, training=False, patch_size=32)["exemplar/x1"]).numpy()
  np.testing.assert_allclose(rgb, large["image"][34:66, 44:76], atol=1e-3)
  # Training on a small image works too (the seed region needs the resize).
  _check_features(exemplar.preprocess(small, training=True, patch_size=32), 32)


def test_both_patches_come_from_one_seed_region_that_moves(gin_config):
  for name, value in dict(NO_COLOR, scale_range=(1.0, 1.0), max_rotation_degrees=0.0).items():
    gin_config.bind_parameter(f"exemplar.augment.{name}", value)
  # A ramp: red is the column, green the row, so a patch's centre pixel says where it lies.
  rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  image = np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.uint8)
  centres = []
  for seed in range(12):
    features = exemplar.preprocess({"image": image}, training=True, patch_size=32, seed=seed)
    pair = [input_convention.from_trunk_input(features[k]).numpy()[15:17, 15:17].mean((0, 1))
            for k in ("exemplar/x1", "exemplar/x2")]
    # Translations of up to 0.2 x 32 px each, in each axis.
    assert np.all(np.abs(pair[0][:2] - pair[1][:2]) <= 2 * 0.2 * 32 + 1e-3)
    centres.append(pair[0][:2])
  assert np.ptp(np.array(centres), axis=0).min() > 60


# --- model -----------------------------------------------------------------------------------


def _task(batch_size=4, **kwargs):
  return exemplar.Exemplar(trunk_lib.Trunk(depth=26), embedding_size=8, head_width=16,
                           batch_size=batch_size, patch_size=32, **kwargs)


def _features(batch, training=True):
  examples = [exemplar.preprocess(_image(seed=s), training=training, patch_size=32)
              for s in range(batch)]
  return {k: tf.stack([e[k] for e in examples]) for k in examples[0]}


def test_model_fn_loss_gradients_prediction_and_batch_of_one():
  tf.keras.utils.set_random_seed(0)
  task = base.get("exemplar")(trunk_lib.Trunk(depth=26), embedding_size=8, head_width=16,
                              batch_size=4, patch_size=32)
  assert isinstance(task, exemplar.Exemplar) and task.output_stride == 32
  features = _features(4)
  with tf.GradientTape() as tape:
    spec = task.model_fn(features, heads.Mode.TRAIN)
  assert np.isfinite(spec.loss.numpy()) and spec.loss.numpy() > 0
  assert set(spec.metrics) == {"triplet_accuracy", "positive_distance", "negative_distance",
                               "active_fraction"}
  head_variables = task.head.trainable_variables
  trunk_variables = task.trunk.trainable_variables
  assert len(head_variables) == 6 and len(trunk_variables) > 50
  grads = tape.gradient(spec.loss, head_variables + trunk_variables)
  assert all(g is not None for g in grads)
  assert all(np.abs(g.numpy()).sum() > 0 for g in grads[:len(head_variables)])
  predict = task.model_fn({"exemplar/x1": features["exemplar/x1"]}, heads.Mode.PREDICT)
  assert predict.loss is None
  embedding = predict.predictions["exemplar/embedding"].numpy()
  assert embedding.shape == (4, 8)
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)
  one = {k: v[:1] for k, v in features.items()}
  with pytest.raises(ValueError, match="at least 2 examples"):
    task.model_fn(one, heads.Mode.TRAIN)


def test_model_fn_negatives_are_the_next_examples_positives():
  tf.keras.utils.set_random_seed(1)
  task = _task(batch_size=3)
  rng = np.random.RandomState(0)
  features = {k: tf.constant(rng.normal(0, 60, [3, 32, 32, 3]).astype(np.float32))
              for k in ("exemplar/x1", "exemplar/x2")}
  spec = task.model_fn(features, heads.Mode.EVAL)
  # In EVAL batch norm uses its moving statistics, so embedding each input alone is the same.
  e1 = task.embed(features["exemplar/x1"], training=False)
  e2 = task.embed(features["exemplar/x2"], training=False)
  np.testing.assert_allclose(spec.predictions["exemplar/embedding"],
                             tf.math.l2_normalize(e1, -1), atol=1e-5)
  expected, metrics = exemplar.triplet_loss(e1, e2, tf.gather(e2, [1, 2, 0]))
  np.testing.assert_allclose(spec.loss, expected, rtol=1e-4, atol=1e-6)
  for name in metrics:
    np.testing.assert_allclose(spec.metrics[name], metrics[name], rtol=1e-4, atol=1e-6)
  # The other neighbour (or the example's own x2) would give other distances.
  previous = exemplar.cosine_distance(e1, tf.gather(e2, [2, 0, 1])).numpy().mean()
  assert abs(previous - spec.metrics["negative_distance"].numpy()) > 1e-4


def _toy_source(ctx):
  return sources.image_dataset(source="toy", num_toy_images=8, toy_size=(40, 48),
                               input_context=ctx)


def test_input_fn_on_the_toy_source_per_replica_batches():
  task = _task(batch_size=4, source_fn=_toy_source)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  features = next(iter(task.input_fn(context)))
  for key in ("exemplar/x1", "exemplar/x2"):
    assert features[key].shape == (2, 32, 32, 3) and features[key].dtype == tf.float32
  assert not np.allclose(features["exemplar/x1"], features["exemplar/x2"])
  spec = task.model_fn(features, heads.Mode.EVAL)
  assert np.isfinite(spec.loss.numpy())


def test_input_fn_on_mock_imagenet_resizes_its_small_odd_images():
  task = _task(
      batch_size=2,
      source_fn=lambda ctx: sources.image_dataset(
          source="tfds", name="imagenet2012", split="train", input_context=ctx))
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    features = next(iter(task.input_fn()))
  for key in ("exemplar/x1", "exemplar/x2"):
    assert features[key].shape == (2, 32, 32, 3)
    assert np.isfinite(features[key].numpy()).all()


# --- config ----------------------------------------------------------------------------------


def _defaults(fn, skip):
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if name not in skip}


def test_gin_file_binds_the_code_defaults(gin_config):
  gin_config.parse_config_file(str(GIN_FILE))
  assert gin_config.get_bindings(exemplar.augment) == _defaults(
      exemplar.augment, {"image", "patch_size", "seed"})
  assert gin_config.get_bindings(exemplar.Exemplar) == _defaults(
      exemplar.Exemplar.__init__, {"self", "trunk", "source_fn"})
  assert gin_config.get_bindings(exemplar.triplet_loss) == {"margin": 0.5}
  task = exemplar.Exemplar(trunk_lib.Trunk(depth=26))
  assert (task.batch_size, task.patch_size) == (32, 96)
