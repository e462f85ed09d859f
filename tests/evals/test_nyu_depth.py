"""Tests of the NYU depth evaluation: unpooling, decoder, berHu, metrics and input."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import nyu_depth
from tests.conftest import untraced_steps


def test_unpooling_puts_each_value_top_left_of_its_block():
  inputs = tf.constant([[1.0, 2.0], [3.0, 4.0]])[None, ..., None]
  np.testing.assert_array_equal(
      nyu_depth.unpool(inputs)[0, ..., 0].numpy(),
      [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
  values = np.random.RandomState(0).randn(2, 3, 5, 4).astype(np.float32)
  expected = np.zeros([2, 6, 10, 4], np.float32)
  expected[:, ::2, ::2] = values
  out = tf.function(nyu_depth.unpool)(tf.constant(values))
  np.testing.assert_array_equal(out.numpy(), expected)


def test_up_projection_shape_and_parameter_count():
  block = nyu_depth.UpProjection(8)
  out = block(tf.random.normal([2, 3, 5, 16]), training=True)
  assert out.shape == (2, 6, 10, 8)
  assert np.all(out.numpy() >= 0)  # ReLU after the sum.
  # conv1 5x5 16->8, conv2 3x3 8->8, projection 5x5 16->8, no biases; 3 BNs of 4 x 8.
  assert trunk_lib.count_parameters(block.variables) == 25 * 16 * 8 * 2 + 9 * 8 * 8 + 3 * 4 * 8


def test_up_projection_matches_its_definition():
  block = nyu_depth.UpProjection(3)
  inputs = tf.random.normal([1, 2, 2, 2], seed=1)
  out = block(inputs, training=False)
  net = nyu_depth.unpool(inputs)
  bn = lambda layer, x: (x - layer.moving_mean) / tf.sqrt(layer.moving_variance + 1e-5) * (
      layer.gamma) + layer.beta
  main = bn(block.bn2, block.conv2(tf.nn.relu(bn(block.bn1, block.conv1(net)))))
  expected = tf.nn.relu(main + bn(block.projection_bn, block.projection(net)))
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)


def _relative_error(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  return np.abs(actual - expected).max() / np.abs(expected).max()


def test_unpool_conv5x5_is_the_5x5_convolution_of_the_unpooled_map():
  rng = np.random.RandomState(0)
  for shape in ([2, 5, 7, 8], [1, 4, 6, 3], [1, 1, 1, 2]):
    inputs = tf.constant(rng.randn(*shape).astype(np.float32))
    kernel = tf.constant(rng.randn(5, 5, shape[3], 6).astype(np.float32))
    expected = tf.nn.conv2d(nyu_depth.unpool(inputs), kernel, 1, "SAME")
    assert _relative_error(nyu_depth.unpool_conv5x5(inputs, kernel), expected) < 1e-5, shape
  with pytest.raises(ValueError, match="5x5"):
    nyu_depth.unpool_conv5x5(inputs, tf.zeros([3, 3, 2, 6]))


def _fast_and_plain_blocks(shape, filters=6, seed=0):
  """UpProjection(fast=True) and (fast=False), built on `shape`, sharing random weights."""
  fast = nyu_depth.UpProjection(filters, fast=True)
  plain = nyu_depth.UpProjection(filters, fast=False)
  inputs = tf.zeros(shape)
  fast(inputs)
  plain(inputs)
  rng = np.random.RandomState(seed)
  # Random batch norm statistics too (variances positive), so inference mode is not trivial.
  weights = [rng.uniform(0.5, 1.5, w.shape) if "variance" in v.name else rng.randn(*w.shape)
             for v, w in zip(fast.weights, fast.get_weights())]
  fast.set_weights(weights)
  plain.set_weights(weights)
  return fast, plain


@pytest.mark.parametrize("shape", [[2, 5, 7, 8], [1, 4, 6, 3]])
def test_fast_up_projection_equals_the_plain_one(shape):
  fast, plain = _fast_and_plain_blocks(shape)
  assert fast.get_config()["fast"] and not plain.get_config()["fast"]
  inputs = tf.constant(np.random.RandomState(1).randn(*shape).astype(np.float32))
  for training in (False, True):
    expected = plain(inputs, training=training)
    assert expected.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    assert np.mean(expected.numpy() > 0) > 0.2  # not all clipped by the ReLU
    assert _relative_error(fast(inputs, training=training), expected) < 1e-4, training
  # Training updated both blocks' batch norm statistics alike.
  for a, b in zip(fast.get_weights(), plain.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for training in (False, True):
    expected = plain(inputs, training=training)
    assert _relative_error(tf.function(fast)(inputs, training=training), expected) < 1e-4
  # Unknown spatial sizes in a graph.
  dynamic = tf.function(fast, input_signature=[tf.TensorSpec([None, None, None, shape[3]])])
  assert _relative_error(dynamic(inputs), plain(inputs)) < 1e-4


def test_fast_up_projection_has_the_plain_gradients():
  shape = [2, 5, 7, 8]
  fast, plain = _fast_and_plain_blocks(shape, seed=2)
  rng = np.random.RandomState(3)
  inputs = tf.constant(rng.randn(*shape).astype(np.float32))
  upstream = tf.constant(rng.randn(shape[0], 2 * shape[1], 2 * shape[2], 6).astype(np.float32))
  gradients = []
  for block in (fast, plain):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf.reduce_sum(block(inputs, training=True) * upstream)
    gradients.append(tape.gradient(
        loss, [inputs, block.conv1.kernel, block.projection.kernel, block.conv2.kernel]))
  for name, fast_grad, plain_grad in zip(["inputs", "conv1", "projection", "conv2"],
                                         *gradients):
    assert _relative_error(fast_grad, plain_grad) < 1e-4, name


def test_fast_and_plain_decoders_have_the_same_variables_and_checkpoints(tmp_path):
  inputs = tf.constant(np.random.RandomState(4).randn(1, 2, 3, 16).astype(np.float32))
  fast = nyu_depth.DepthDecoder(filters=(8, 6, 4), fast=True)
  plain = nyu_depth.DepthDecoder(filters=(8, 6, 4), fast=False)
  tf.function(fast)(inputs)  # built inside a graph, the other eagerly
  plain(inputs)
  names_and_shapes = lambda layer: [(v.name, tuple(v.shape)) for v in layer.variables]
  assert names_and_shapes(fast) == names_and_shapes(plain)
  assert ("nyu_depth_decoder/up_projection_1/conv1/kernel:0", (5, 5, 16, 8)) in (
      names_and_shapes(fast))
  assert ("nyu_depth_decoder/up_projection_3/projection/kernel:0", (5, 5, 6, 4)) in (
      names_and_shapes(fast))
  assert fast.get_config()["fast"] and not plain.get_config()["fast"]
  # A checkpoint of the fast decoder restores into the plain one and gives the same output.
  for variable in fast.variables:
    variable.assign(tf.random.normal(variable.shape, seed=5) * 0.1 + (
        1.0 if "variance" in variable.name or "gamma" in variable.name else 0.0))
  path = tf.train.Checkpoint(decoder=fast).write(str(tmp_path / "fast"))
  tf.train.Checkpoint(decoder=plain).read(path).assert_consumed()
  assert _relative_error(plain(inputs), fast(inputs)) < 1e-4


@pytest.fixture(scope="module")
def trunk_and_decoder():
  return trunk_lib.Trunk(depth=26), nyu_depth.DepthDecoder()


def test_decoder_gives_half_resolution_depth(trunk_and_decoder):
  trunk, decoder = trunk_and_decoder
  images = input_convention.to_trunk_input(tf.zeros([2, 64, 96, 3], tf.uint8))
  block3 = trunk(images, training=False, output_stride=16)["block3"]
  assert block3.shape == (2, 4, 6, 1024)
  assert decoder(block3, training=False).shape == (2, 32, 48, 1)
  assert [b.filters for b in decoder.up_projections] == [512, 256, 128]


def test_gradients_flow_from_berhu_through_decoder_and_trunk(trunk_and_decoder):
  trunk, decoder = trunk_and_decoder
  rng = np.random.RandomState(0)
  images = input_convention.to_trunk_input(rng.randint(0, 256, [2, 64, 96, 3]).astype(np.uint8))
  target = rng.uniform(1, 5, [2, 64, 96]).astype(np.float32)
  valid = rng.rand(2, 64, 96) > 0.2
  with tf.GradientTape() as tape:
    block3 = trunk(images, training=True, output_stride=16)["block3"]
    prediction = decoder(block3, training=True)
    loss = nyu_depth.berhu_loss(*nyu_depth.match_resolution(prediction, target, valid))
  variables = decoder.trainable_variables + trunk.trainable_variables
  grads = tape.gradient(loss, variables)
  assert np.isfinite(loss.numpy()) and loss.numpy() > 0
  for var, grad in zip(variables, grads):
    assert grad is not None, var.name
    assert np.all(np.isfinite(grad.numpy())), var.name
  assert all(np.any(g.numpy() != 0) for g in grads[:len(decoder.trainable_variables)])


def test_berhu_on_hand_computed_residuals():
  # Valid residuals 0.1, -0.5, 1.0 -> c = 0.2; the invalid 10.0 (and the NaN) must not count.
  prediction = tf.Variable([[[1.1, 1.5, 4.0, 12.0, 3.0]]])
  target = tf.constant([[[1.0, 2.0, 3.0, 2.0, np.nan]]])
  valid = tf.constant([[[True, True, True, False, False]]])
  with tf.GradientTape() as tape:
    loss = nyu_depth.berhu_loss(prediction, target, valid)
  # 0.1 <= c: |x|; 0.5: (0.25 + 0.04) / 0.4 = 0.725; 1.0: (1 + 0.04) / 0.4 = 2.6.
  np.testing.assert_allclose(loss.numpy(), (0.1 + 0.725 + 2.6) / 3, rtol=1e-6)
  # d/dx: sign(x) below c, x / c above (c held constant), each over the 3 valid pixels.
  np.testing.assert_allclose(tape.gradient(loss, prediction).numpy(),
                             [[[1 / 3, -0.5 / 0.2 / 3, 1.0 / 0.2 / 3, 0, 0]]], rtol=1e-5)
  # At |x| = c both branches agree; the channel axis is optional.
  np.testing.assert_allclose(
      nyu_depth.berhu_loss(tf.constant([[[[0.2], [1.0]]]]), [[[0.0, 0.0]]],
                           [[[True, True]]]).numpy(), (0.2 + 2.6) / 2, rtol=1e-6)


def test_berhu_of_a_perfect_or_empty_prediction_is_zero():
  prediction = tf.Variable(tf.ones([1, 2, 2]))
  with tf.GradientTape() as tape:
    loss = nyu_depth.berhu_loss(prediction, tf.ones([1, 2, 2]), tf.ones([1, 2, 2], tf.bool))
  assert loss.numpy() == 0.0
  np.testing.assert_array_equal(tape.gradient(loss, prediction).numpy(), np.zeros([1, 2, 2]))
  assert nyu_depth.berhu_loss(tf.ones([1, 2, 2]), tf.zeros([1, 2, 2]),
                              tf.zeros([1, 2, 2], tf.bool)).numpy() == 0.0
  with pytest.raises(ValueError, match="match_resolution"):
    nyu_depth.berhu_loss(tf.ones([1, 2, 2, 1]), tf.ones([1, 4, 4]), tf.ones([1, 4, 4], tf.bool))


def test_match_resolution_both_ways():
  target = np.arange(32, dtype=np.float32).reshape([1, 4, 8])
  valid = target % 3 != 0
  prediction = tf.ones([1, 2, 4, 1])
  pred, small_target, small_valid = nyu_depth.match_resolution(prediction, target, valid)
  assert pred.shape == (1, 2, 4)
  # A 2x reduction by nearest neighbour keeps pixel (2i+1, 2j+1) (half-pixel centres).
  np.testing.assert_array_equal(small_target.numpy(), target[:, 1::2, 1::2])
  np.testing.assert_array_equal(small_valid.numpy(), valid[:, 1::2, 1::2])
  pred, same_target, same_valid = nyu_depth.match_resolution(
      tf.fill([1, 2, 4, 1], 3.0), target, valid, resize="prediction")
  np.testing.assert_allclose(pred.numpy(), np.full([1, 4, 8], 3.0))
  np.testing.assert_array_equal(same_target.numpy(), target)
  np.testing.assert_array_equal(same_valid.numpy(), valid)
  with pytest.raises(ValueError, match="resize"):
    nyu_depth.match_resolution(prediction, target, valid, resize="both")


def _two_images():
  # Image A: ratios 1, 2 (the last two pixels invalid: target 0 and NaN).
  # Image B: ratios 1.2, 1.5, 2, 1.
  target = np.array([[[2.0, 1.0, 0.0, np.nan]], [[1.0, 1.0, 1.0, 10.0]]])
  prediction = np.array([[[2.0, 2.0, 7.0, 7.0]], [[1.2, 1.5, 0.5, 10.0]]])
  return prediction, target, np.ones([2, 1, 4], bool)


def test_metrics_pooled_and_per_image_on_hand_computed_values():
  results = nyu_depth.depth_metrics(*_two_images())
  log2, log12, log15 = math.log10(2), math.log10(1.2), math.log10(1.5)
  expected = {
      "delta1_pct": 100 * 3 / 6, "delta1_pct_per_image": (50 + 50) / 2,
      "delta2_pct": 100 * 4 / 6, "delta2_pct_per_image": (50 + 75) / 2,
      "delta3_pct": 100 * 4 / 6, "delta3_pct_per_image": (50 + 75) / 2,
      "abs_rel": (0 + 1 + 0.2 + 0.5 + 0.5 + 0) / 6, "abs_rel_per_image": (0.5 + 0.3) / 2,
      "rmse": math.sqrt((0 + 1 + 0.04 + 0.25 + 0.25 + 0) / 6),
      "rmse_per_image": (math.sqrt(0.5) + math.sqrt(0.135)) / 2,
      "log10": (log2 + log12 + log15 + log2) / 6,
      "log10_per_image": (log2 / 2 + (log12 + log15 + log2) / 4) / 2,
  }
  for name, value in expected.items():
    assert results[name] == pytest.approx(value, rel=1e-12), name
  assert results["num_pixels"] == 6 and results["num_images"] == 2


def test_accumulator_pools_over_batches_and_skips_empty_images():
  prediction, target, valid = _two_images()
  accumulator = nyu_depth.DepthMetricsAccumulator()
  accumulator.update(prediction[:1, ..., None], target[:1], valid[:1])
  accumulator.update(prediction[1:], target[1:], valid[1:])
  accumulator.update(prediction[1:], target[1:], np.zeros_like(valid[1:]))  # no valid pixel
  assert accumulator.result() == pytest.approx(nyu_depth.depth_metrics(prediction, target, valid))
  assert np.isnan(nyu_depth.DepthMetricsAccumulator().result()["rmse"])


def test_metrics_clip_predictions_and_upsample_them():
  results = nyu_depth.depth_metrics(np.array([[[-1.0, 0.0]]]), np.array([[[1.0, 1.0]]]),
                                    np.ones([1, 1, 2], bool))
  # Both predictions become MIN_DEPTH = 1e-3: ratio 1000, log10 error 3.
  assert results["delta3_pct"] == 0.0
  assert results["abs_rel"] == pytest.approx(0.999)
  assert results["log10"] == pytest.approx(3.0)
  # A half-resolution constant prediction is upsampled to the target's 4x4.
  results = nyu_depth.depth_metrics(np.full([1, 2, 2, 1], 2.0), np.full([1, 4, 4], 2.5),
                                    np.ones([1, 4, 4], bool))
  assert results["num_pixels"] == 16 and results["abs_rel"] == pytest.approx(0.2)


def _coded_example(height=480, width=640):
  """A frame whose red channel codes the column and whose depth is 1 + 4 x that code."""
  code = np.tile(np.linspace(0.0, 1.0, width)[None], [height, 1])
  image = np.stack([code * 255, np.full_like(code, 128), np.full_like(code, 64)], -1)
  depth = (1 + 4 * code).astype(np.float16)
  depth[:10] = 0  # an invalid band at the top
  depth[-1, -1] = np.nan
  return {"image": np.round(image).astype(np.uint8), "depth": depth}


def _decode(features):
  image = input_convention.from_trunk_input(features["nyu_depth/image"]).numpy()
  return image, features["nyu_depth/depth"].numpy(), features["nyu_depth/valid"].numpy()


def test_test_input_is_the_half_resolution_frame_and_the_target_the_original_depth():
  example = _coded_example()
  image, depth, valid = _decode(nyu_depth.preprocess(example, training=False))
  assert image.shape == (240, 320, 3) and valid.dtype == bool
  # The depth is the frame's own, 480x640, untouched (NaN -> 0, invalid).
  expected = np.nan_to_num(example["depth"].astype(np.float32))
  assert depth.shape == (480, 640)
  np.testing.assert_array_equal(depth, expected)
  np.testing.assert_array_equal(valid, expected > 0)
  np.testing.assert_allclose(image[..., 1:], np.broadcast_to([128, 64], [240, 320, 2]), atol=0.5)
  # A 2x smaller ramp: column j averages full-resolution columns symmetric about 2j + 0.5
  # (away from the borders), where the red code is 255 (2j + 0.5) / 639, rounded to uint8.
  columns = np.arange(1, 319)
  np.testing.assert_allclose(image[:, 1:-1, 0], np.broadcast_to(
      255 * (2 * columns + 0.5) / 639, [240, 318]), atol=0.51)


def _indexed_example(height=480, width=640):
  """A frame whose depth names its pixel: 1 + 1000 row + column (exact in float32)."""
  rows, cols = np.mgrid[0:height, 0:width]
  return {"image": np.full([height, width, 3], 100, np.uint8),
          "depth": (1 + 1000 * rows + cols).astype(np.float32)}


def _nearest(size, new_size):
  """TF's nearest-neighbour source indices with half-pixel centres: floor((i + 0.5) in/out)."""
  return np.floor((np.arange(new_size) + 0.5) * size / new_size).astype(int)


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_training_crop_is_a_224x304_window_of_the_scaled_half_resolution_frame(scale):
  tf.random.set_seed(2)
  example = _indexed_example()
  # Scaled: (240, 320) x 1.5 = (360, 480); depth divided by the scale.
  height, width = int(240 * scale), int(320 * scale)
  rows, cols = _nearest(480, height), _nearest(640, width)
  ds = tf.data.Dataset.from_tensors(example).repeat(8).map(
      lambda ex: nyu_depth.preprocess(ex, scale_range=(scale, scale), color_gain=0))
  windows, flips = set(), set()
  for features in ds:
    image, depth, valid = _decode(features)
    assert image.shape == (224, 304, 3) and depth.shape == (224, 304) and valid.all()
    flipped = depth[0, 0] > depth[0, 1]
    code = int(round(depth[0, -1 if flipped else 0] * scale)) - 1
    top, left = np.searchsorted(rows, code // 1000), np.searchsorted(cols, code % 1000)
    assert 0 <= top <= height - 224 and 0 <= left <= width - 304
    expected = example["depth"][rows[top:top + 224]][:, cols[left:left + 304]] / np.float32(scale)
    np.testing.assert_allclose(depth[:, ::-1] if flipped else depth, expected, rtol=1e-7)
    windows.add((top, left))
    flips.add(flipped)
  assert len(windows) > 1 and flips == {True, False}


def _check_aligned(features, scale):
  image, depth, valid = _decode(features)
  assert image.shape == (224, 304, 3) and depth.shape == (224, 304)
  np.testing.assert_array_equal(valid, depth > 0)
  # Depth divided by the scale, and still where the image says (flipped together or not).
  np.testing.assert_allclose(depth[valid] * scale, 1 + 4 * image[..., 0][valid] / 255, atol=0.03)
  return image[0, -1, 0] > image[0, 0, 0]  # not flipped


def test_training_augmentation_keeps_depth_aligned_eagerly_and_in_tf_data():
  tf.random.set_seed(0)
  example = _coded_example()
  orientations = {
      _check_aligned(nyu_depth.preprocess(example, scale_range=(1.5, 1.5), color_gain=0), 1.5)
      for _ in range(6)
  }
  ds = tf.data.Dataset.from_tensors(example).repeat(6).map(
      lambda ex: nyu_depth.preprocess(ex, scale_range=(1.25, 1.25), color_gain=0))
  orientations |= {_check_aligned(features, 1.25) for features in ds}
  assert orientations == {True, False}


def test_default_training_input_scales_depth_and_jitters_color_only():
  tf.random.set_seed(1)
  example = {"image": np.full([101, 157, 3], 100, np.uint8),
             "depth": np.full([101, 157], 3.0, np.float16)}  # odd-sized
  ds = tf.data.Dataset.from_tensors(example).repeat(8).map(nyu_depth.preprocess)
  scales = []
  for features in ds:
    image, depth, valid = _decode(features)
    assert image.shape == (224, 304, 3) and valid.all()
    assert np.ptp(depth) == 0 and 2.0 - 1e-6 <= depth[0, 0] <= 3.0 + 1e-6
    scales.append(3.0 / depth[0, 0])
    gains = image[0, 0] / 100
    assert np.all((gains > 0.8 - 1e-4) & (gains < 1.2 + 1e-4))
    np.testing.assert_allclose(image, np.broadcast_to(image[0, 0], image.shape), atol=1e-3)
  assert np.ptp(scales) > 0.05
  image, depth, _ = _decode(nyu_depth.preprocess(example, training=False))
  assert image.shape == (240, 320, 3) and depth.shape == (101, 157)


def test_sizes_must_be_multiples_of_16_and_the_crop_must_fit(trunk_and_decoder):
  example = _coded_example(64, 64)
  with pytest.raises(ValueError, match="nyu_depth.crop_size .* multiples of 16"):
    nyu_depth.preprocess(example, input_size=(48, 48), crop_size=(40, 48))
  with pytest.raises(ValueError, match="nyu_depth.input_size .* multiples of 16"):
    nyu_depth.preprocess(example, input_size=(50, 48), crop_size=(32, 48))
  with pytest.raises(ValueError, match="must fit in nyu_depth.input_size"):
    nyu_depth.NyuDepth(trunk_and_decoder[0], input_size=(32, 48), crop_size=(48, 48))
  with pytest.raises(ValueError, match="scale_range"):
    nyu_depth.preprocess(example, input_size=(32, 48), crop_size=(32, 48),
                         scale_range=(0.5, 1.0))


def test_protocol_defaults(trunk_and_decoder):
  evaluation = nyu_depth.NyuDepth(trunk_and_decoder[0])
  assert (evaluation.dataset, evaluation.train_split, evaluation.eval_split) == (
      "nyu_depth_v2", "train", "validation")
  assert evaluation.batch_size == 16
  assert evaluation.input_size == (240, 320) and evaluation.crop_size == (224, 304)
  assert nyu_depth.NyuDepth.protocol == dict(
      train_epochs=40, learning_rate=0.01, momentum=0.9, decay_rate=0.1, decay_at=(0.35, 0.7),
      clip_gradient_norm=0.0, batch_norm_statistics="estimate")


def test_input_fn_on_mock_tfds_nyu_depth_v2(trunk_and_decoder):
  # The protocol's sizes and batch; a small shuffle buffer (the default's would preprocess 256
  # frames first).
  evaluation = nyu_depth.NyuDepth(trunk_and_decoder[0], shuffle_buffer=16)
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    train = next(iter(evaluation.input_fn(None, "train")))
    test = next(iter(evaluation.input_fn(None, "test")))
  assert train["nyu_depth/image"].shape == (16, 224, 304, 3)
  assert train["nyu_depth/depth"].shape == (16, 224, 304)
  assert test["nyu_depth/image"].shape == (2, 240, 320, 3)
  assert test["nyu_depth/depth"].shape == (2, 480, 640)
  assert test["nyu_depth/valid"].shape == (2, 480, 640)
  for features in (train, test):
    assert features["nyu_depth/image"].dtype == tf.float32
    assert features["nyu_depth/depth"].dtype == tf.float32
    assert features["nyu_depth/valid"].dtype == tf.bool


def _score(evaluation, depth, prediction):
  """Scores a half-resolution prediction of a 480x640 test frame with `depth`."""
  example = {"image": np.zeros([480, 640, 3], np.uint8), "depth": depth.astype(np.float32)}
  features = tf.nest.map_structure(lambda x: x.numpy()[None],
                                   evaluation.preprocess_example(example, training=False))
  assert features["nyu_depth/image"].shape == (1, 240, 320, 3)
  assert prediction.shape == (120, 160)
  accumulator = evaluation.metrics_accumulator()
  accumulator.update(features, {"nyu_depth/depth": prediction[None, ..., None]})
  return accumulator.result()


def test_test_scoring_upsamples_the_prediction_to_the_original_frame(trunk_and_decoder):
  evaluation = nyu_depth.NyuDepth(trunk_and_decoder[0])
  # A constant 2 m prediction; the frame's left half at 2.25 m (ratio 1.125), its right half at
  # 1 m (ratio 2), its top 10 rows invalid.
  depth = np.where(np.arange(640) < 320, 2.25, 1.0) * np.ones([480, 1])
  depth[:10] = 0
  results = _score(evaluation, depth, np.full([120, 160], 2.0))
  assert results["num_pixels"] == 470 * 640 and results["num_images"] == 1
  assert results["delta1_pct"] == 50.0 and results["delta3_pct"] == 50.0
  assert results["abs_rel"] == pytest.approx((0.25 / 2.25 + 1.0) / 2, rel=1e-12)
  assert results["rmse"] == pytest.approx(math.sqrt((0.25**2 + 1.0) / 2), rel=1e-12)
  assert results["log10"] == pytest.approx((math.log10(1.125) + math.log10(2)) / 2, rel=1e-12)
  assert results["abs_rel_per_image"] == pytest.approx(results["abs_rel"], rel=1e-12)
  assert "original resolution" in results["pooling"] and "pool every valid pixel" in (
      results["pooling"])
  # A prediction linear in the column, 1 + c for c = 0..159, upsampled bilinearly 4x with
  # half-pixel centres: column j reads low-resolution column u = (j + 0.5) / 4 - 0.5, clamped
  # to [0, 159]. Against a target 1 + u unclamped, only the two border columns on each side
  # err: targets 0.625, 0.875 (predicted 1) and 160.125, 160.375 (predicted 160).
  target = (np.arange(640) + 0.5) / 4 + 0.5
  results = _score(evaluation, target * np.ones([480, 1]),
                   1.0 + np.arange(160, dtype=np.float64) * np.ones([120, 1]))
  errors = np.array([0.375, 0.125, 0.125, 0.375])
  targets = np.array([0.625, 0.875, 160.125, 160.375])
  assert results["num_pixels"] == 480 * 640
  # Only column 0 fails delta1: 1 / 0.625 = 1.6 >= 1.25 (1 / 0.875 = 1.14 passes).
  assert results["delta1_pct"] == pytest.approx(100 * 639 / 640, rel=1e-12)
  assert results["abs_rel"] == pytest.approx(np.sum(errors / targets) / 640, rel=1e-6)
  assert results["rmse"] == pytest.approx(math.sqrt(np.sum(errors**2) / 640), rel=1e-6)


def test_evaluation_end_to_end_on_mock_nyu(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from mtssl_tf import evaluation  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  common.parse_gin([], ["Trunk.depth = 26", "nyu_depth.batch_size = 2",
                        "nyu_depth.input_size = (64, 96)", "nyu_depth.crop_size = (48, 80)",
                        "nyu_depth.shuffle_buffer = 4",
                        "nyu_depth/EvalSettings.train_steps = 1",
                        "nyu_depth/EvalSettings.batch_norm_batches = 1",
                        "DepthDecoder.filters = (32, 16, 8)"])
  try:
    # What the run writes is under test here, not how its steps compile.
    with untraced_steps(), tfds.testing.mock_data(num_examples=3,
                                                  policy=tfds.testing.MockPolicy.USE_CODE):
      results = evaluation.evaluate("nyu_depth", str(tmp_path), init="random")
  finally:
    gin.clear_config()
  metrics = results["metrics"]
  assert results["trunk"] == {"depth": 26, "output_stride": 16, "fine_tuned": True}
  # Scored at the mock frames' 480x640 (every mock depth is valid), not at the 64x96 input.
  assert metrics["num_images"] == 3 and metrics["num_pixels"] == 3 * 480 * 640
  assert 0.0 <= metrics["delta1_pct"] <= 100.0 and metrics["rmse"] > 0
  assert "pool every valid pixel" in metrics["pooling"]


def test_demo_trains_toy_depth_on_the_scenes_own_depths():
  # A toy scene's depths follow from a fixed camera (its far wall always at toy_depth.FAR_WALL):
  # the demo's training input may crop, flip and recolor a scene but must not rescale its depths
  # (NYU's zoom augmentation divides depth by the zoom, which the toy images cannot show).
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  from mtssl_tf.data import toy_depth  # pylint: disable=g-import-not-at-top
  scenes = toy_depth.make_scenes(num_scenes=4, seed=3)
  tf.random.set_seed(0)
  common.parse_gin(["experiments/demo.gin"], [])
  try:
    for i in range(4):
      example = {"image": scenes["image"][i], "depth": scenes["depth"][i]}
      for _ in range(3):
        features = nyu_depth.preprocess(example, input_size=(96, 128), crop_size=(96, 128))
        depth = features["nyu_depth/depth"].numpy()
        assert depth.max() == toy_depth.FAR_WALL  # the wall is in every frame
        assert np.isin(depth, scenes["depth"][i]).all()
  finally:
    gin.clear_config()
