"""NYU depth v2 (paper section 5): per-pixel depth regression from the fine-tuned trunk.

The model is Laina et al. 2016's ("Deeper Depth Prediction with Fully Convolutional Residual
Networks") as the paper modifies it: block 3 of the trunk at output stride 16 feeds three
up-projection blocks (512, 256 and 128 filters; Laina's ResNet-50 model has four after block 4)
and a 3x3 convolution to one depth channel, so the prediction is at half the input's
resolution (16 / 2^3 = 2). Since ResNet-v2 block outputs are pre-activation, the decoder first
applies batch norm and ReLU to block 3 (in place of Laina's 1x1 convolution and batch norm after
ResNet-50's last, already activated, block). The loss is Laina's reverse Huber (berHu).

Protocol (Laina et al. 2016, which the paper follows; the `NyuDepth` defaults and
gin/evals/nyu_depth.gin):
  * Data: TFDS `nyu_depth_v2`, "train" (47,584 frames of 480x640 from the raw videos) and
    "validation" (the 654 test images of the standard split).
  * Training input (`preprocess`): the frame at half resolution (`input_size` 240x320) and
    Eigen et al. 2014's augmentation, which Laina used: a random scale s in [1, 1.5] (the frame
    is resized to s x 240x320 and depths are divided by s, as a zoom by s looks like a camera s
    times closer), a random crop, a horizontal flip of image and depth together and a
    per-channel color gain in [0.8, 1.2]; Laina's rotation is left out. Laina's crops are
    304x228 (width x height); the trunk needs multiples of 16, so ours are 224x304 (height x
    width; 224 the multiple of 16 nearest to 228). The prediction is at half the input's
    resolution, 112x152 for a crop.
  * Optimization (`NyuDepth.protocol`): batch 16, SGD with momentum 0.9, learning rate 0.01
    times 0.1 at 35% and 70% of training. Laina trained about 20 epochs over ~95K augmented
    pairs (from ~12K unique frames), about 1.9M images, reducing the rate every 6-8 epochs;
    with online augmentation over TFDS's 47,584 frames, 40 epochs (1,903,360 images, 118,960
    steps of 16) see as many.
  * Test: each 480x640 test frame is resized as a whole to the network's test input
    (`input_size`, 240x320: half resolution, both sides multiples of 16); the 120x160
    prediction is upsampled bilinearly to the frame's original size and scored against the
    original, full-resolution depth of the frame, as Laina scored theirs at 640x480. Toy
    scenes (`mtssl_tf.data.toy_depth`) are scored at their own size likewise.
  * Pooling: the headline metrics (the paper's "percent of pixels" below 1.25 among them) pool
    all valid pixels of the test set; the mean over images of each per-image metric is reported
    beside them, keys suffixed "_per_image".

Conventions recorded here:
  * Loss resolution (`match_resolution`): the loss is computed at the prediction's resolution,
    with the target and its validity mask resized down by nearest neighbour, as Laina did.
    Metrics are computed at the target's resolution (the original frame's, at test), with the
    prediction upsampled bilinearly; this is what `DepthMetricsAccumulator` does.
  * Depth is resized by nearest neighbour, never interpolated, so invalid (zero) pixels do not
    blend into valid ones.
  * Valid pixels: target depth finite and > 0; all losses and metrics use valid pixels only.
  * Predictions are clipped below at `MIN_DEPTH` (1 mm) before any metric, so ratios and
    logarithms are defined for a network that predicts zero or negative depth.
"""

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import toy_depth
from mtssl_tf.evals import base

# The trunk's output stride for this evaluation, and the decoder's total upsampling.
OUTPUT_STRIDE = 16
PREDICTION_STRIDE = 2
# Laina's berHu threshold: c = BERHU_FRACTION x the largest absolute residual in the batch.
BERHU_FRACTION = 0.2
# Predictions are clipped below at this depth (metres) before metrics: ratios and log10 need d>0.
MIN_DEPTH = 1e-3
# The delta thresholds: a pixel is right at level k when max(d/d*, d*/d) < 1.25^k.
DELTA_BASE = 1.25
METRIC_NAMES = ("delta1_pct", "delta2_pct", "delta3_pct", "abs_rel", "rmse", "log10")
_BN = dict(epsilon=1e-5, momentum=0.997)
# The network's input: NYU's 480x640 frames at half resolution (Laina et al. 2016), and the
# training crop: Laina's 228x304 (height x width) with the height at the nearest multiple of 16.
INPUT_SIZE = (240, 320)
CROP_SIZE = (224, 304)


def unpool(inputs):
  """Laina's 2x unpooling: each value to the top-left of a 2x2 block, zeros elsewhere.

  Args:
    inputs: float [B, h, w, C].

  Returns:
    [B, 2h, 2w, C] with out[:, 2i, 2j] = inputs[:, i, j] and zeros at every other position.
  """
  shape = tf.shape(inputs)
  batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  zeros = tf.zeros_like(inputs)
  # Interleave along width (value, 0, value, 0, ...), then along height (row, zero row, ...).
  rows = tf.reshape(tf.stack([inputs, zeros], axis=3), [batch, height, 2 * width, channels])
  out = tf.reshape(tf.stack([rows, tf.zeros_like(rows)], axis=2),
                   [batch, 2 * height, 2 * width, channels])
  static = inputs.shape
  return tf.ensure_shape(out, [
      static[0], None if static[1] is None else 2 * static[1],
      None if static[2] is None else 2 * static[2], static[3]
  ])


def unpool_conv5x5(inputs, kernel):
  """`tf.nn.conv2d(unpool(inputs), kernel, 1, "SAME")` without the zeros (Laina's "fast" form).

  Of the 5x5 'same' convolution over the unpooled map, output row 2m + r only meets nonzero
  rows through kernel rows r, r + 2, ...: for r = 0 kernel rows 0, 2, 4 on input rows m - 1, m,
  m + 1; for r = 1 kernel rows 1, 3 on input rows m, m + 1. Likewise for columns. So each of
  the four output phases (r, s) is a 'valid' convolution of the input, padded by one pixel on
  each side, from offset (r, s) with kernel[r::2, s::2] (3x3, 3x2, 2x3 or 2x2), and
  `tf.nn.depth_to_space` interleaves the phases (channel block 2r + s to pixel (2m+r, 2n+s)).
  The four output pixels of a 2x2 block then take 9 + 6 + 6 + 4 = 25 multiply-adds per input
  and output channel, against 4 x 25 = 100 for the plain form.

  Args:
    inputs: float [B, h, w, C].
    kernel: [5, 5, C, C_out].

  Returns:
    [B, 2h, 2w, C_out], equal to the plain form up to float rounding.

  Raises:
    ValueError: if the kernel is statically not 5x5.
  """
  if tuple(kernel.shape[:2]) != (5, 5):
    raise ValueError(f"unpool_conv5x5 needs a 5x5 kernel, got shape {kernel.shape}.")
  padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
  phases = [
      tf.nn.conv2d(padded[:, r:, s:], kernel[r::2, s::2], strides=1, padding="VALID")
      for r in (0, 1) for s in (0, 1)
  ]
  return tf.nn.depth_to_space(tf.concat(phases, axis=-1), 2)


class UpProjection(tf.keras.layers.Layer):
  """Laina et al.'s up-projection block (their Fig. 2c), in the plain or the "fast" form.

  2x unpooling (`unpool`), then two branches summed: a main branch of 5x5 convolution, batch
  norm, ReLU, 3x3 convolution, batch norm, and a projection branch of 5x5 convolution and batch
  norm; a ReLU after the sum. Convolutions have no bias (batch norm follows each).

  The plain form (`fast=False`) computes this literally and reads like the paper. The fast form
  (`fast=True`, the default; Laina's Fig. 2d) computes the same function with the unpooling and
  the two 5x5 convolutions fused (`unpool_conv5x5` on their kernels concatenated), about 4x
  fewer multiply-adds in those two convolutions. Both forms read the same variables of the same
  layers (`conv1.kernel`, `projection.kernel`, ...): their checkpoints are interchangeable.

  Input [B, h, w, C_in] -> output [B, 2h, 2w, filters].
  """

  def __init__(self, filters, fast=True, name=None, **kwargs):
    """Creates the block.

    Args:
      filters: output channels of every convolution of the block.
      fast: the fast form (True) or the plain one (False); same function, same variables.
      name: Keras layer name.
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    super().__init__(name=name, **kwargs)
    self.filters = filters
    self.fast = fast
    conv = lambda size, name: tf.keras.layers.Conv2D(
        filters, size, padding="same", use_bias=False, name=name)
    self.conv1 = conv(5, "conv1")
    self.bn1 = tf.keras.layers.BatchNormalization(name="bn1", **_BN)
    self.conv2 = conv(3, "conv2")
    self.bn2 = tf.keras.layers.BatchNormalization(name="bn2", **_BN)
    self.projection = conv(5, "projection")
    self.projection_bn = tf.keras.layers.BatchNormalization(name="projection_bn", **_BN)

  def build(self, input_shape):
    # The 5x5 convolutions are built on the unpooled shape, in their own name scopes, as
    # calling them would (the fast form reads their kernels without calling them).
    shape = tf.TensorShape(input_shape).as_list()
    unpooled = [shape[0]] + [None if d is None else 2 * d for d in shape[1:3]] + [shape[3]]
    for layer in (self.conv1, self.projection):
      if not layer.built:
        with tf.name_scope(layer.name):
          layer.build(unpooled)
    super().build(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, fast=self.fast)
    return config

  def call(self, inputs, training=False):
    if self.fast:
      kernel = tf.concat([self.conv1.kernel, self.projection.kernel], axis=-1)
      main, shortcut = tf.split(unpool_conv5x5(inputs, kernel), 2, axis=-1)
    else:
      net = unpool(inputs)
      main, shortcut = self.conv1(net), self.projection(net)
    main = tf.nn.relu(self.bn1(main, training=training))
    main = self.bn2(self.conv2(main), training=training)
    shortcut = self.projection_bn(shortcut, training=training)
    return tf.nn.relu(main + shortcut)


@gin.configurable(module="nyu_depth")
class DepthDecoder(tf.keras.layers.Layer):
  """Block 3 (output stride 16) -> depth at half the input's resolution.

  Batch norm and ReLU on block 3 (`preactivate`; ResNet-v2 block outputs are pre-activation),
  up-projections with `filters` (the paper's 512, 256, 128; `UpProjection`, by default in its
  fast form) and a 3x3 convolution to one channel with a bias. Input [B, h, w, 1024] -> output
  [B, 8h, 8w, 1] (three blocks), which is [B, H/2, W/2, 1] for images [B, H, W, 3] with H, W
  multiples of 16.
  """

  def __init__(self, filters=(512, 256, 128), preactivate=True, fast=True,
               name="nyu_depth_decoder", **kwargs):
    """Creates the decoder.

    Args:
      filters: filters of each up-projection block, in order.
      preactivate: apply batch norm and ReLU to the input first.
      fast: up-projections in the fast form (True: the same function with ~4x fewer
        multiply-adds in their 5x5 convolutions) or the plain one; the variables are the same,
        so checkpoints of either load into the other.
      name: Keras layer name.
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    super().__init__(name=name, **kwargs)
    self.filters = tuple(filters)
    self.preactivate = preactivate
    self.fast = fast
    self.input_bn = (
        tf.keras.layers.BatchNormalization(name="input_bn", **_BN) if preactivate else None)
    self.up_projections = [
        UpProjection(f, fast=fast, name=f"up_projection_{i + 1}")
        for i, f in enumerate(self.filters)
    ]
    self.prediction = tf.keras.layers.Conv2D(1, 3, padding="same", name="prediction")

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, preactivate=self.preactivate, fast=self.fast)
    return config

  def call(self, block3, training=False):
    net = block3
    if self.input_bn is not None:
      net = tf.nn.relu(self.input_bn(net, training=training))
    for block in self.up_projections:
      net = block(net, training=training)
    return self.prediction(net)


def _squeeze_channel(prediction):
  """[B, h, w, 1] or [B, h, w] -> [B, h, w]."""
  prediction = tf.convert_to_tensor(prediction)
  if prediction.shape.rank == 4:
    return prediction[..., 0]
  return prediction


def match_resolution(prediction, target, valid_mask, resize="target"):
  """Brings prediction and target to one resolution.

  Args:
    prediction: float [B, h, w, 1] or [B, h, w].
    target: float [B, H, W] depth.
    valid_mask: bool [B, H, W].
    resize: "target": the target and mask are resized to the prediction's size by nearest
      neighbour (for the loss: Laina's choice; for a 2x reduction TF's half-pixel rule keeps
      pixel (2i+1, 2j+1)); "prediction": the prediction is upsampled bilinearly to the
      target's size (for metrics).

  Returns:
    (prediction [B, s, s', ...], target, valid_mask) at one size, prediction without channel.

  Raises:
    ValueError: for an unknown `resize`.
  """
  prediction = _squeeze_channel(prediction)
  target = tf.convert_to_tensor(target)
  valid_mask = tf.convert_to_tensor(valid_mask)
  if resize == "target":
    size = tf.shape(prediction)[1:3]
    target = tf.image.resize(target[..., None], size, method="nearest")[..., 0]
    valid_mask = tf.image.resize(
        tf.cast(valid_mask, tf.uint8)[..., None], size, method="nearest")[..., 0] > 0
  elif resize == "prediction":
    size = tf.shape(target)[1:3]
    prediction = tf.image.resize(prediction[..., None], size, method="bilinear")[..., 0]
  else:
    raise ValueError(f"resize must be 'target' or 'prediction', got {resize!r}.")
  return prediction, target, valid_mask


def berhu_loss(prediction, target, valid_mask):
  """Laina's reverse Huber loss, the mean over valid pixels.

  With x = prediction - target: |x| where |x| <= c, (x^2 + c^2) / (2c) elsewhere, where
  c = 0.2 x max |x| over the valid pixels of the batch (the per-replica batch under a
  distribution strategy). c is a constant for the gradient (stop_gradient) and at least 1e-6,
  so a perfect prediction gives loss 0 and finite gradients.

  Args:
    prediction: float [B, h, w, 1] or [B, h, w].
    target: float [B, h, w], the same size (see `match_resolution`); invalid pixels may hold
      any value, NaN included.
    valid_mask: bool [B, h, w].

  Returns:
    Scalar float32 loss (0 when no pixel is valid).

  Raises:
    ValueError: if prediction and target sizes are statically known to differ.
  """
  prediction = tf.cast(_squeeze_channel(prediction), tf.float32)
  target = tf.cast(target, tf.float32)
  if (prediction.shape.is_fully_defined() and target.shape.is_fully_defined() and
      prediction.shape != target.shape):
    raise ValueError(f"berhu_loss: prediction {prediction.shape} and target {target.shape} "
                     "differ in size; bring them together with match_resolution first.")
  valid = tf.cast(valid_mask, tf.bool)
  # Residuals of invalid pixels are zeroed (not just masked out) so NaN targets cannot leak.
  residual = tf.where(valid, prediction - target, 0.0)
  absolute = tf.abs(residual)
  c = tf.stop_gradient(tf.maximum(BERHU_FRACTION * tf.reduce_max(absolute), 1e-6))
  per_pixel = tf.where(absolute <= c, absolute, (tf.square(residual) + tf.square(c)) / (2 * c))
  weights = tf.cast(valid, tf.float32)
  return tf.reduce_sum(per_pixel * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def _random_offset(limit, seed):
  return tf.random.uniform([], 0, limit + 1, dtype=tf.int32, seed=seed)


def _op_seed(seed, offset):
  # Distinct op seeds: in a graph, ops sharing one seed draw the same numbers.
  return None if seed is None else seed + offset


def check_sizes(input_size, crop_size):
  """Raises ValueError unless both sizes are multiples of 16 and the crop fits the input."""
  for name, size in (("input_size", input_size), ("crop_size", crop_size)):
    if len(size) != 2 or size[0] % OUTPUT_STRIDE or size[1] % OUTPUT_STRIDE:
      raise ValueError(f"nyu_depth.{name} must be (height, width), both multiples of "
                       f"{OUTPUT_STRIDE}, got {tuple(size)}; bind another (gin).")
  if crop_size[0] > input_size[0] or crop_size[1] > input_size[1]:
    raise ValueError(f"nyu_depth.crop_size {tuple(crop_size)} must fit in nyu_depth.input_size "
                     f"{tuple(input_size)}; bind a smaller crop or a larger input (gin).")


@gin.configurable("preprocess", module="nyu_depth",
                  denylist=["example", "training", "input_size", "crop_size"])
def preprocess(example, training=True, input_size=INPUT_SIZE, crop_size=CROP_SIZE,
               scale_range=(1.0, 1.5), color_gain=0.2, seed=None):
  """{'image': uint8 [H, W, 3], 'depth': float [H, W]} -> the evaluation's features.

  Training: the frame is resized to s x `input_size` for a random scale s, depths are divided
  by s, and a random `crop_size` window is taken, flipped horizontally half the time and
  color-jittered. Test: the frame is resized to `input_size` (the network's input) and the
  depth is kept at the frame's own resolution, at which it is scored.

  Args:
    example: a TFDS `nyu_depth_v2` example (depth in metres, float16 there) or a toy scene;
      any H, W.
    training: augment and crop when True; only resize the image otherwise.
    input_size: (height, width) the frame is resized to (before scaling, for training), both
      multiples of 16; `NyuDepth.input_size` (gin `nyu_depth.input_size`).
    crop_size: (height, width) of the training crops, multiples of 16, at most `input_size`;
      `NyuDepth.crop_size` (gin `nyu_depth.crop_size`).
    scale_range: (low, high) of the uniform random scale when training, 1 <= low <= high.
    color_gain: each RGB channel is multiplied by a uniform gain in [1 - g, 1 + g] when
      training (0: no color change).
    seed: optional op seed.

  Returns:
    dict with 'nyu_depth/image' (float32 trunk input, [*crop_size, 3] for training,
    [*input_size, 3] for test), 'nyu_depth/depth' (float32, metres, 0 where invalid; [*crop_size]
    for training, [H, W] for test) and 'nyu_depth/valid' (bool, the depth's shape).

  Raises:
    ValueError: for sizes `check_sizes` rejects, or scale_range[0] < 1.
  """
  check_sizes(input_size, crop_size)
  if scale_range[0] < 1.0 or scale_range[1] < scale_range[0]:
    raise ValueError(f"nyu_depth.preprocess.scale_range must satisfy 1 <= low <= high, got "
                     f"{scale_range} (a scale below 1 leaves nothing to crop).")
  image = tf.cast(example["image"], tf.float32)
  depth = tf.cast(example["depth"], tf.float32)
  depth = tf.where(tf.math.is_finite(depth) & (depth > 0), depth, 0.0)
  if not training:
    image = tf.image.resize(image, input_size, method="bilinear", antialias=True)
    image = tf.ensure_shape(tf.clip_by_value(image, 0.0, input_convention.PIXEL_MAX),
                            [*input_size, 3])
    return _features(image, depth)
  height, width = crop_size
  scale = tf.random.uniform([], scale_range[0], scale_range[1], seed=_op_seed(seed, 0))
  size = tf.cast(tf.math.ceil(tf.constant(input_size, tf.float32) * scale), tf.int32)
  size = tf.maximum(size, input_size)
  image = tf.image.resize(image, size, method="bilinear", antialias=True)
  depth = tf.image.resize(depth[..., None], size, method="nearest")[..., 0] / scale
  top = _random_offset(size[0] - height, _op_seed(seed, 1))
  left = _random_offset(size[1] - width, _op_seed(seed, 2))
  image = image[top:top + height, left:left + width]
  depth = depth[top:top + height, left:left + width]
  flip = tf.random.uniform([], seed=_op_seed(seed, 3)) < 0.5
  image = tf.where(flip, image[:, ::-1], image)
  depth = tf.where(flip, depth[:, ::-1], depth)
  if color_gain:
    gain = tf.random.uniform([3], 1.0 - color_gain, 1.0 + color_gain, seed=_op_seed(seed, 4))
    image = image * gain
  image = tf.ensure_shape(tf.clip_by_value(image, 0.0, input_convention.PIXEL_MAX),
                          [height, width, 3])
  return _features(image, tf.ensure_shape(depth, [height, width]))


def _features(image, depth):
  """Image [h, w, 3] in [0, 255] and depth (0 where invalid) -> the evaluation's features."""
  return {
      "nyu_depth/image": input_convention.to_trunk_input(image[None])[0],
      "nyu_depth/depth": depth,
      "nyu_depth/valid": depth > 0,
  }


class DepthMetricsAccumulator:
  """Depth metrics over a whole split (numpy): `update` per batch, `result` at the end.

  Pooled metrics count every valid pixel of the split once; the "_per_image" ones are the
  mean over images (with at least one valid pixel) of each image's own metric. Per image:
    delta{k}_pct  percent of valid pixels with max(d/d*, d*/d) < 1.25^k (k = 1 is the paper's);
    abs_rel       mean |d - d*| / d*;
    rmse          sqrt(mean (d - d*)^2)  (per image: the mean of the per-image RMSEs);
    log10         mean |log10 d - log10 d*|;
  with d the prediction clipped below at `MIN_DEPTH` and d* the target.
  """

  def __init__(self):
    self._pixels = 0
    self._images = 0
    self._pixel_sums = dict.fromkeys(METRIC_NAMES, 0.0)  # rmse: the sum of squared errors.
    self._image_sums = dict.fromkeys(METRIC_NAMES, 0.0)

  def update(self, prediction, target, valid_mask):
    """Adds a batch.

    Args:
      prediction: [B, h, w, 1] or [B, h, w]; upsampled bilinearly to the target's size if it
        differs (`match_resolution(..., resize="prediction")`).
      target: [B, H, W] depth; pixels count only where finite, > 0 and in valid_mask.
      valid_mask: bool [B, H, W].
    """
    prediction = np.asarray(prediction, np.float64)
    if prediction.ndim == 4:
      prediction = prediction[..., 0]
    target = np.asarray(target, np.float64)
    if prediction.shape[1:3] != target.shape[1:3]:
      prediction = match_resolution(
          tf.constant(prediction, tf.float32), tf.constant(target, tf.float32),
          tf.constant(np.asarray(valid_mask, bool)), resize="prediction")[0].numpy()
      prediction = prediction.astype(np.float64)
    with np.errstate(invalid="ignore"):
      valid = np.asarray(valid_mask, bool) & np.isfinite(target) & (target > 0)
    safe_target = np.where(valid, target, 1.0)
    predicted = np.maximum(np.where(valid, prediction, 1.0), MIN_DEPTH)
    ratio = np.maximum(predicted / safe_target, safe_target / predicted)
    error = predicted - safe_target
    per_pixel = {
        "abs_rel": np.abs(error) / safe_target,
        "rmse": np.square(error),
        "log10": np.abs(np.log10(predicted) - np.log10(safe_target)),
    }
    for k in (1, 2, 3):
      per_pixel[f"delta{k}_pct"] = 100.0 * (ratio < DELTA_BASE**k)
    weights = valid.reshape(valid.shape[0], -1).astype(np.float64)
    counts = weights.sum(axis=1)
    has_pixels = counts > 0
    self._pixels += int(counts.sum())
    self._images += int(has_pixels.sum())
    for name in METRIC_NAMES:
      sums = (per_pixel[name].reshape(weights.shape) * weights).sum(axis=1)
      self._pixel_sums[name] += float(sums.sum())
      means = sums[has_pixels] / counts[has_pixels]
      if name == "rmse":
        means = np.sqrt(means)
      self._image_sums[name] += float(means.sum())

  def result(self):
    """Dict of the pooled metrics, their "_per_image" means, 'num_pixels' and 'num_images'.

    Metrics are NaN before any valid pixel has been seen.
    """
    results = {"num_pixels": self._pixels, "num_images": self._images}
    for name in METRIC_NAMES:
      pooled = self._pixel_sums[name] / self._pixels if self._pixels else float("nan")
      results[name] = float(np.sqrt(pooled)) if name == "rmse" else pooled
      results[f"{name}_per_image"] = (
          self._image_sums[name] / self._images if self._images else float("nan"))
    return results


def depth_metrics(prediction, target, valid_mask):
  """The `DepthMetricsAccumulator` metrics of one batch (see there for shapes and keys)."""
  accumulator = DepthMetricsAccumulator()
  accumulator.update(prediction, target, valid_mask)
  return accumulator.result()


class _Metrics(base.MetricsAccumulator):
  """`DepthMetricsAccumulator` over the evaluation's feature and prediction dicts."""

  def __init__(self):
    self.accumulator = DepthMetricsAccumulator()

  def update(self, features, predictions):
    self.accumulator.update(predictions["nyu_depth/depth"], features["nyu_depth/depth"],
                            features["nyu_depth/valid"])

  def result(self):
    result = dict(self.accumulator.result())
    result["pooling"] = (
        "scored at each test image's original resolution (NYU: 480x640), the prediction "
        "upsampled bilinearly; the main figures pool every valid pixel of the test set; "
        "*_per_image are means over images of per-image values")
    return result


@base.register("nyu_depth")
@gin.configurable("nyu_depth")
class NyuDepth(base.Evaluation):
  """Laina's up-projection decoder on block 3 (stride 16), berHu loss; trunk fine-tuned.

  The constructor's defaults and `protocol` are Laina et al. 2016's protocol as the paper used
  it (see the module docstring).
  """

  output_stride = OUTPUT_STRIDE
  fine_tunes_trunk = True
  # 40 epochs over 47,584 frames at batch 16: 118,960 steps, ~1.9M images as Laina's ~20
  # epochs over ~95K augmented pairs; Laina lowered the rate every 6-8 of those epochs. Batch
  # norm statistics are re-estimated on NYU's training images before fine-tuning and the test.
  protocol = dict(train_epochs=40, learning_rate=0.01, momentum=0.9, decay_rate=0.1,
                  decay_at=(0.35, 0.7), clip_gradient_norm=0.0, batch_norm_statistics="estimate")

  def __init__(self, trunk, dataset="nyu_depth_v2", train_split="train",
               eval_split="validation", batch_size=16, input_size=INPUT_SIZE,
               crop_size=CROP_SIZE, shuffle_buffer=256):
    """Creates the decoder.

    Args:
      trunk: the trunk (fine-tuned with the decoder).
      dataset: "nyu_depth_v2" (TFDS) or "toy" (`mtssl_tf.data.toy_depth` scenes).
      train_split, eval_split: TFDS splits (TFDS's NYU has "train" and "validation", the
        latter the 654 test images of the standard split).
      batch_size: global batch size.
      input_size: (height, width) the frames are resized to, the test input: half of NYU's
        480x640; multiples of 16.
      crop_size: (height, width) of the training crops, multiples of 16, at most input_size.
      shuffle_buffer: training examples in the shuffle buffer.

    Raises:
      ValueError: for sizes that are not multiples of 16 or a crop larger than the input.
    """
    super().__init__(trunk)
    check_sizes(input_size, crop_size)
    self.dataset = dataset
    self.train_split = train_split
    self.eval_split = eval_split
    self.batch_size = batch_size
    self.input_size = tuple(input_size)
    self.crop_size = tuple(crop_size)
    self.shuffle_buffer = shuffle_buffer
    self.decoder = DepthDecoder()

  def toy_data(self, training):
    return toy_depth.make_scenes(seed=0 if training else 1)

  def preprocess_example(self, example, training):
    return preprocess(example, training, input_size=self.input_size, crop_size=self.crop_size)

  def model_fn(self, features, mode):
    training = mode == heads.Mode.TRAIN
    block3 = self.representation(features["nyu_depth/image"], training)
    prediction = tf.cast(self.decoder(block3, training=training), tf.float32)  # berHu in fp32
    predictions = {"nyu_depth/depth": prediction}
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    small, target, valid = match_resolution(prediction, features["nyu_depth/depth"],
                                            features["nyu_depth/valid"], resize="target")
    loss = berhu_loss(small, target, valid)
    ratio = tf.maximum(tf.maximum(small, MIN_DEPTH) / tf.maximum(target, MIN_DEPTH),
                       tf.maximum(target, MIN_DEPTH) / tf.maximum(small, MIN_DEPTH))
    within = tf.cast(valid, tf.float32) * tf.cast(ratio < DELTA_BASE, tf.float32)
    delta1 = 100.0 * tf.reduce_sum(within) / tf.maximum(
        tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
    return heads.Spec(loss=loss, predictions=predictions, metrics={"delta1_pct": delta1})

  def metrics_accumulator(self):
    return _Metrics()
