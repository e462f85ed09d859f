"""Tests of the colorization task: preprocessing, loss, head."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import sources
from mtssl_tf.tasks import base
from mtssl_tf.tasks import colorization


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _image(height=50, width=70, gray=False, seed=0):
  rng = np.random.RandomState(seed)
  image = rng.randint(0, 256, [height, width, 3]).astype(np.uint8)
  if gray:
    image[...] = image[..., :1]
  return {"image": image}


def _uniform_prior(tmp_path):
  path = str(tmp_path / "prior.npy")
  np.save(path, np.full([color.NUM_BINS], 1.0 / color.NUM_BINS))
  return path


def _bind(*bindings):
  with gin.unlock_config():
    gin.parse_config(list(bindings))


def _check_features(features, size):
  image = features["colorization/image"].numpy()
  assert image.shape == (size, size, 3)
  # L replicated: the three channels differ only by the mean subtracted from each.
  rgb = input_convention.from_trunk_input(image).numpy()
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-3)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 2], atol=1e-3)
  assert 0 <= rgb.min() and rgb.max() <= 255.01
  assert features["colorization/ab_target"].shape == (size // 8, size // 8, 2)


def test_preprocess_eager_and_in_tf_data():
  features = colorization.preprocess(_image(), training=True, crop_size=64)
  _check_features(features, 64)
  assert bool(features["colorization/has_color"])
  ds = tf.data.Dataset.from_tensors(_image()).map(
      lambda ex: colorization.preprocess(ex, training=False, crop_size=64))
  _check_features(next(iter(ds)), 64)


def test_target_is_the_ab_of_each_cells_centre_pixel():
  image = _image(64, 64)["image"]
  features = colorization.preprocess({"image": image}, training=False, crop_size=64)
  lab = color.rgb_to_lab(image.astype(np.float32) / 255.0).numpy()
  np.testing.assert_allclose(features["colorization/ab_target"].numpy(), lab[4::8, 4::8, 1:],
                             atol=1e-3)
  # And the input's lightness is that L on the 0-255 scale.
  rgb = input_convention.from_trunk_input(features["colorization/image"]).numpy()
  np.testing.assert_allclose(rgb[..., 0], lab[..., 0] * 2.55, atol=1e-2)


def test_small_images_are_resized_up_and_gray_ones_flagged():
  features = colorization.preprocess(_image(20, 30, gray=True), training=True, crop_size=32)
  _check_features(features, 32)
  assert not bool(features["colorization/has_color"])
  with pytest.raises(ValueError, match="multiple of 8"):
    colorization.preprocess(_image(), crop_size=30)


def test_loss_on_hand_made_logits():
  weights = color.rebalancing_weights(None)
  ab = np.tile(color.ab_bins()[[7]], [2, 2, 2, 1]).reshape(2, 2, 2, 2)  # every cell: bin 7
  has_color = tf.constant([True, True])
  uniform = tf.zeros([2, 2, 2, 313])
  loss, metrics = colorization.colorization_loss(uniform, ab, has_color, weights)
  np.testing.assert_allclose(loss.numpy(), np.log(313), rtol=1e-5)
  target = color.soft_encode(ab)
  perfect = tf.math.log(target + 1e-9) * 1.0
  loss_p, metrics_p = colorization.colorization_loss(perfect, ab, has_color, weights)
  entropy = -np.sum(target.numpy() * np.log(target.numpy() + 1e-9), -1).mean()
  np.testing.assert_allclose(loss_p.numpy(), entropy, rtol=1e-3)
  assert metrics_p["accuracy"].numpy() == 1.0


def test_grayscale_images_are_masked_out_of_the_loss():
  weights = color.rebalancing_weights(np.random.RandomState(0).uniform(size=313))
  rng = np.random.RandomState(1)
  logits = rng.normal(size=[2, 3, 3, 313]).astype(np.float32)
  ab = rng.uniform(-60, 60, [2, 3, 3, 2]).astype(np.float32)
  both, _ = colorization.colorization_loss(logits, ab, tf.constant([True, False]), weights)
  first, _ = colorization.colorization_loss(logits[:1], ab[:1], tf.constant([True]), weights)
  np.testing.assert_allclose(both.numpy(), first.numpy(), rtol=1e-5)
  none, _ = colorization.colorization_loss(logits, ab, tf.constant([False, False]), weights)
  assert none.numpy() == 0.0


def test_model_fn_shapes_and_gradients():
  trunk = trunk_lib.Trunk(depth=26)
  task = base.get("colorization")(trunk, head_width=32, batch_size=2, crop_size=32)
  batch = [colorization.preprocess(_image(seed=s), crop_size=32) for s in range(2)]
  features = {k: tf.stack([b[k] for b in batch]) for k in batch[0]}
  with tf.GradientTape() as tape:
    spec = task.model_fn(features, heads.Mode.TRAIN)
  assert spec.predictions["colorization/ab"].shape == (2, 4, 4, 2)
  assert np.isfinite(spec.loss.numpy()) and spec.loss.numpy() > 0
  variables = task.head.trainable_variables + trunk.trainable_variables
  grads = tape.gradient(spec.loss, variables)
  assert all(g is not None for g in grads)
  assert set(spec.metrics) == {"accuracy", "color_fraction"}
  predict = task.model_fn(features, heads.Mode.PREDICT)
  assert predict.loss is None


def test_task_runs_the_shared_trunk_at_stride_8_whatever_its_default():
  trunk = trunk_lib.Trunk(depth=26, output_stride=32)
  task = colorization.Colorization(trunk, head_width=8, crop_size=32)
  features = colorization.preprocess(_image(), crop_size=32)
  features = {k: v[None] for k, v in features.items()}
  spec = task.model_fn(features, heads.Mode.PREDICT)
  assert spec.predictions["colorization/ab"].shape == (1, 4, 4, 2)
  # The same variables at stride 32: no new ones were made.
  num_variables = len(trunk.variables)
  assert trunk(features["colorization/image"])["block3"].shape == (1, 1, 1, 1024)
  assert len(trunk.variables) == num_variables


def test_input_fn_on_the_toy_source_per_replica_batches():
  trunk = trunk_lib.Trunk(depth=26, output_stride=8)
  task = colorization.Colorization(
      trunk, batch_size=4, crop_size=32,
      source_fn=lambda ctx: sources.image_dataset(
          source="toy", num_toy_images=8, toy_size=(40, 48), input_context=ctx))
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  features = next(iter(task.input_fn(context)))
  assert features["colorization/image"].shape == (2, 32, 32, 3)
  assert features["colorization/ab_target"].shape == (2, 4, 4, 2)
  assert features["colorization/has_color"].dtype == tf.bool
  spec = task.model_fn(features, heads.Mode.EVAL)
  assert np.isfinite(spec.loss.numpy())


def test_input_fn_on_mock_imagenet(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    task = colorization.Colorization(
        trunk_lib.Trunk(depth=26), batch_size=4, crop_size=32,
        prior_path=_uniform_prior(tmp_path),
        source_fn=lambda ctx: sources.image_dataset(
            source="tfds", name="imagenet2012", split="train", input_context=ctx))
    features = next(iter(task.input_fn()))
  assert features["colorization/image"].shape == (4, 32, 32, 3)
  assert features["colorization/ab_target"].shape == (4, 4, 4, 2)


@pytest.mark.parametrize("bindings", [
    ["image_dataset.source = 'tfds'"],
    ["image_dataset.source = 'folder'", "image_dataset.pattern = '/data/images'"],
])
def test_a_real_image_source_without_a_prior_refuses_to_start(bindings):
  _bind(*bindings)
  source = gin.query_parameter("image_dataset.source")
  with pytest.raises(ValueError, match=(
      rf"image source '{source}' needs the class-rebalancing prior.*"
      r"python tools/compute_color_prior\.py.*colorization\.prior_path")):
    colorization.Colorization(trunk_lib.Trunk(depth=26))


def test_a_custom_source_fn_without_a_prior_warns(caplog):
  _bind("image_dataset.source = 'tfds'")  # Not what a custom source function reads.
  task = colorization.Colorization(trunk_lib.Trunk(depth=26),
                                   source_fn=lambda ctx: sources.image_dataset(source="toy"))
  np.testing.assert_array_equal(task.class_weights, np.ones(color.NUM_BINS))
  assert "not rebalanced" in caplog.text


def test_the_toy_source_trains_without_a_prior_with_uniform_weights():
  for bindings in ([], ["image_dataset.source = 'toy'"]):  # The default source, then bound.
    _bind(*bindings)
    task = colorization.Colorization(trunk_lib.Trunk(depth=26))
    np.testing.assert_array_equal(task.class_weights, np.ones(color.NUM_BINS))


def test_a_prior_file_rebalances_and_a_missing_one_is_named(tmp_path):
  _bind("image_dataset.source = 'tfds'")
  # All the mass on bin 0: w ~ 1 / (0.5 p + 0.5 / 313), scaled so that sum(p w) = 1, is 1 on
  # bin 0 and (0.5 + 0.5 / 313) * 626 = 314 elsewhere.
  prior = np.zeros([color.NUM_BINS])
  prior[0] = 1.0
  path = str(tmp_path / "peaked.npy")
  np.save(path, prior)
  task = colorization.Colorization(trunk_lib.Trunk(depth=26), prior_path=path)
  np.testing.assert_allclose(task.class_weights, [1.0] + [314.0] * (color.NUM_BINS - 1),
                             rtol=1e-5)
  missing = str(tmp_path / "missing.npy")
  with pytest.raises(ValueError, match=(rf"colorization.prior_path '{missing}' does not exist"
                                        r".*compute_color_prior\.py")):
    colorization.Colorization(trunk_lib.Trunk(depth=26), prior_path=missing)
