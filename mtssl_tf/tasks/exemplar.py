"""Exemplar (Dosovitskiy et al. 2014, as in the paper, section 2): every image is its own
pseudo-class, learnt with a triplet loss instead of one softmax class per image.

Sampling. From each image a square seed region is cropped at a random place; two patches x1 and
x2 are drawn from it, each with its own random augmentation (`augment`): translation, scaling
and rotation in one projective warp, then contrast and HSV color changes, after the original's
list (Dosovitskiy et al. 2014):

  translation    up to `max_translation` x the patch size, each axis (0.2)
  scale          the patch covers `scale` x its size in pixels, log-uniform in `scale_range`
                 (0.7-1.4, i.e. about 1/sqrt(2) to sqrt(2))
  rotation       uniform within +-`max_rotation_degrees` (20)
  contrast       `tf.image.adjust_contrast`, factor log-uniform in `contrast_range` (0.5-2):
                 one factor for all channels, a simpler stand-in for the original's "contrast 1"
                 (a factor per principal component of the patch's colors, in the same range)
  S and V        in HSV, each raised to a power log-uniform in `power_range` (0.25-4, i.e.
                 2**U(-2, 2)), multiplied by a factor log-uniform in `multiply_range` (0.7-1.4)
                 and shifted by a value uniform in `add_range` (-0.1-0.1), drawn for S and V
                 separately (the original's "contrast 2")
  hue            shifted by a value uniform within +-`max_hue_shift` (0.1, of the hue circle)

Both patches share the seed region, so a pseudo-class is "one place in one image under every
augmentation", as in the original. The seed region is big enough for every patch the
augmentation can make (`seed_region_size`, 213 px for 96 px patches by default); images whose
shorter side is smaller are resized up to it (aspect kept), never skipped.

Loss: max(D(f(x1), f(x2)) - D(f(x1), f(x3)) + M, 0), averaged over the batch, with D the cosine
distance and M = 0.5. Each embedding is l2-normalized on its own (along its feature axis); a known
TF implementation normalized over the batch axis instead, which is not a cosine distance.

Model: x1 and x2 go through the trunk as one batch at output stride 32 (a 96 px patch gives 3x3
cells of block 3). The head: batch norm and ReLU on block 3 (pre-activation in ResNet v2),
global average pooling, a fully connected layer with ReLU and a linear embedding layer.
Negatives cost no extra trunk pass: x3 of example i is x2 of example (i + 1) mod B of the same
replica's batch, i.e. the positive embeddings rolled by one along the batch axis. Each example
is a different image, so neighbours are different pseudo-classes (unless a source shard holds
fewer images than a batch and `repeat` wraps around); the shuffle changes who meets whom every
epoch. Each replica needs at least 2 examples.
"""

import inspect
import math

import gin
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.tasks import base

# Images the input pipeline shuffles among before batching (per input pipeline): the sources
# read records in file order, and each epoch an image should meet other negatives.
SHUFFLE_BUFFER = 1024
# The uniform draws behind one augmentation, in order: translation (dy, dx), scale, angle,
# contrast, power (S, V), multiply (S, V), add (S, V), hue.
_NUM_DRAWS = 12
_GEOMETRY_ARGS = ("max_translation", "scale_range", "max_rotation_degrees")


def patch_transform(center, patch_size, translation=(0.0, 0.0), scale=1.0, angle=0.0):
  """The projective transform (8 numbers) that cuts one warped patch out of an image.

  Output pixel p (column x, row y) reads the input at `center + translation + scale * R(angle)
  (p - c)`, where c is the patch's own centre ((patch_size - 1) / 2 in both axes) and R rotates
  by `angle` radians; with rows pointing down, a positive angle turns the patch's content
  counterclockwise on screen (90 degrees gives `np.rot90` of the unwarped patch).

  Args:
    center: float [2], (row, column) of the patch centre in the input, pixel-index coordinates.
    patch_size: side of the output patch.
    translation: float [2], (down, right) shift in input pixels.
    scale: float [], input pixels per output pixel.
    angle: float [], radians.

  Returns:
    float32 [8], the `transforms` row of `tf.raw_ops.ImageProjectiveTransformV3`, which maps
    output (x, y) to input ((a0 x + a1 y + a2) / k, (a3 x + a4 y + a5) / k) with k = 1 here.
  """
  center = tf.cast(center, tf.float32) + tf.cast(translation, tf.float32)
  scale = tf.cast(scale, tf.float32)
  angle = tf.cast(angle, tf.float32)
  cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
  mid = (patch_size - 1) / 2.0
  offset_x = center[1] - cos * mid + sin * mid
  offset_y = center[0] - sin * mid - cos * mid
  zero = tf.zeros([], tf.float32)
  return tf.stack([cos, -sin, offset_x, sin, cos, offset_y, zero, zero])


def warp_patch(image, patch_size, translation=(0.0, 0.0), scale=1.0, angle=0.0):
  """Cuts one patch out of the centre of `image`, translated, scaled and rotated, in one warp.

  The unwarped patch is the central crop (top = (H - patch_size) // 2, likewise left, as in the
  other tasks' evaluation crops), so zero translation, scale 1 and angle 0 give exactly that
  crop. Bilinear interpolation; points outside the image are filled by reflection, so no black
  corners appear even if the image is smaller than `seed_region_size`.

  Args:
    image: float32 [H, W, 3].
    patch_size: side of the output patch.
    translation, scale, angle: see `patch_transform`.

  Returns:
    float32 [patch_size, patch_size, 3].
  """
  image = tf.convert_to_tensor(image, tf.float32)
  size = tf.shape(image)[:2]
  # The centre of the integer-aligned central crop, so that no warp means no interpolation.
  center = tf.cast((size - patch_size) // 2, tf.float32) + (patch_size - 1) / 2.0
  transform = patch_transform(center, patch_size, translation, scale, angle)
  patch = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=transform[None],
      output_shape=tf.constant([patch_size, patch_size], tf.int32),
      fill_value=tf.zeros([], tf.float32),
      interpolation="BILINEAR",
      fill_mode="REFLECT")
  return tf.reshape(patch, [patch_size, patch_size, 3])


def _check_range(name, value_range, positive):
  low, high = value_range
  if low > high or (positive and low <= 0):
    kind = "0 < low <= high" if positive else "low <= high"
    raise ValueError(f"exemplar augment {name} must be (low, high) with {kind}, got "
                     f"{value_range!r} (gin: exemplar.augment.{name}).")


def _uniform(u, value_range):
  low, high = value_range
  return low + (high - low) * u


def _log_uniform(u, value_range):
  # Log-uniform: a factor and its inverse are equally likely, as for ranges like 0.7-1.4.
  low, high = value_range
  return tf.exp(math.log(low) + (math.log(high) - math.log(low)) * u)


def _stateless_seed(seed):
  """A stateless seed (int [2]) from None, a Python int op seed, or a seed tensor."""
  if seed is None or isinstance(seed, int):
    return tf.random.uniform([2], 0, tf.int64.max, dtype=tf.int64, seed=seed)
  return tf.convert_to_tensor(seed)


@gin.configurable("augment", module="exemplar", denylist=["image", "patch_size", "seed"])
def augment(image,
            patch_size=96,
            max_translation=0.2,
            scale_range=(0.7, 1.4),
            max_rotation_degrees=20.0,
            contrast_range=(0.5, 2.0),
            power_range=(0.25, 4.0),
            multiply_range=(0.7, 1.4),
            add_range=(-0.1, 0.1),
            max_hue_shift=0.1,
            seed=None):
  """One randomly augmented patch from the centre of a seed region (see the module docstring).

  Geometry first (one warp of the seed region), then color on the patch: contrast, then S and V
  (power, multiply, add), then hue. Zero ranges (translation 0, scale (1, 1), rotation 0,
  contrast, power and multiply (1, 1), add (0, 0), hue 0) give the central crop unchanged.

  Args:
    image: float32 (or uint8) [H, W, 3], RGB on the 0-255 scale: the seed region, ideally at
      least `seed_region_size(patch_size)` on each side (smaller is filled by reflection).
    patch_size: side of the output patch.
    max_translation: largest shift, in each axis, as a fraction of `patch_size`.
    scale_range: (low, high) input pixels per output pixel, drawn log-uniformly.
    max_rotation_degrees: largest rotation either way.
    contrast_range: (low, high) factor of `tf.image.adjust_contrast`, drawn log-uniformly.
    power_range: (low, high) exponent of HSV saturation and value, drawn log-uniformly.
    multiply_range: (low, high) factor of saturation and value, drawn log-uniformly.
    add_range: (low, high) shift of saturation and value (0-1 scale), drawn uniformly.
    max_hue_shift: largest hue shift either way, as a fraction of the hue circle.
    seed: None, a Python int op seed, or an int32/int64 [2] tensor: a stateless seed that fixes
      every draw (the same seed gives the same patch).

  Returns:
    float32 [patch_size, patch_size, 3], RGB within [0, 255].

  Raises:
    ValueError: for an empty or reversed range, or a non-positive multiplicative one.
  """
  for name, value_range, positive in (("scale_range", scale_range, True),
                                      ("contrast_range", contrast_range, True),
                                      ("power_range", power_range, True),
                                      ("multiply_range", multiply_range, True),
                                      ("add_range", add_range, False)):
    _check_range(name, value_range, positive)
  for name, value in (("max_translation", max_translation),
                      ("max_rotation_degrees", max_rotation_degrees),
                      ("max_hue_shift", max_hue_shift)):
    if value < 0:
      raise ValueError(f"exemplar augment {name} must be >= 0, got {value!r} "
                       f"(gin: exemplar.augment.{name}).")
  u = tf.random.stateless_uniform([_NUM_DRAWS], _stateless_seed(seed))
  shift = max_translation * patch_size
  translation = _uniform(u[0:2], (-shift, shift))
  scale = _log_uniform(u[2], scale_range)
  max_angle = math.radians(max_rotation_degrees)
  angle = _uniform(u[3], (-max_angle, max_angle))
  patch = warp_patch(tf.cast(image, tf.float32), patch_size, translation, scale, angle)

  rgb = tf.image.adjust_contrast(patch / 255.0, _log_uniform(u[4], contrast_range))
  hsv = tf.image.rgb_to_hsv(tf.clip_by_value(rgb, 0.0, 1.0))
  power = _log_uniform(u[5:7], power_range)
  multiply = _log_uniform(u[7:9], multiply_range)
  add = _uniform(u[9:11], add_range)
  saturation_value = tf.clip_by_value(hsv[..., 1:] ** power * multiply + add, 0.0, 1.0)
  hue = tf.math.floormod(hsv[..., :1] + _uniform(u[11], (-max_hue_shift, max_hue_shift)), 1.0)
  rgb = tf.image.hsv_to_rgb(tf.concat([hue, saturation_value], axis=-1))
  return tf.clip_by_value(rgb * 255.0, 0.0, 255.0)


def seed_region_size(patch_size, max_translation=None, scale_range=None,
                     max_rotation_degrees=None):
  """Side of the seed region that holds every patch `augment` can cut from its centre.

  The warped patch reaches `max scale * (cos a + sin a) * (patch_size - 1) / 2` from its centre
  (a: the largest rotation, at most 45 degrees), plus the translation, and the centre sits up to
  half a pixel off the region's; so the side is
  `ceil(patch_size * (max scale * (cos a + sin a) + 2 * max_translation)) + 2`
  (213 for 96 px patches with the default ranges).

  Args:
    patch_size: side of the patch.
    max_translation, scale_range, max_rotation_degrees: `augment`'s geometry; those left None
      take the values gin binds to `exemplar.augment` now, else `augment`'s defaults.

  Returns:
    int.
  """
  given = {"max_translation": max_translation, "scale_range": scale_range,
           "max_rotation_degrees": max_rotation_degrees}
  if any(v is None for v in given.values()):
    bound = gin.get_bindings(augment)
    defaults = inspect.signature(augment).parameters
    for name in _GEOMETRY_ARGS:
      if given[name] is None:
        given[name] = bound.get(name, defaults[name].default)
  angle = math.radians(min(abs(given["max_rotation_degrees"]), 45.0))
  reach = (max(given["scale_range"]) * (math.cos(angle) + math.sin(angle)) +
           2.0 * given["max_translation"])
  return int(math.ceil(patch_size * reach - 1e-9)) + 2


@gin.configurable("preprocess", module="exemplar", denylist=["example", "training"])
def preprocess(example, training=True, patch_size=96, seed=None):
  """{'image': uint8 [H, W, 3]} -> the task's two patches (no batch axis).

  Images whose shorter side is below `seed_region_size(patch_size)` are first resized up to it
  (bilinear, aspect kept, `sources.ensure_min_size`). Training: a seed region of that size is
  cropped at a random place and `augment` (gin-configured) draws x1 and x2 from it
  independently. Otherwise: x1 = x2 = the central `patch_size` crop of the (resized) image, no
  augmentation, so evaluation is reproducible.

  Args:
    example: dict with 'image', uint8 [H, W, 3].
    training: random seed region and augmentation when True.
    patch_size: side of the patches (the task passes its own).
    seed: None, or a Python int op seed for the draw of the stateless seeds.

  Returns:
    dict with 'exemplar/x1' and 'exemplar/x2', each float32 [S, S, 3] in trunk input
    convention (RGB 0-255 minus the ImageNet mean).
  """
  region = seed_region_size(patch_size)
  image = tf.cast(sources.ensure_min_size(example["image"], region), tf.float32)
  if training:
    crop_seed, seed1, seed2 = tf.unstack(
        tf.random.experimental.stateless_split(_stateless_seed(seed), 3))
    image = tf.image.stateless_random_crop(image, [region, region, 3], seed=crop_seed)
    x1 = augment(image, patch_size=patch_size, seed=seed1)
    x2 = augment(image, patch_size=patch_size, seed=seed2)
  else:
    size = tf.shape(image)[:2]
    top, left = (size[0] - patch_size) // 2, (size[1] - patch_size) // 2
    x1 = x2 = image[top:top + patch_size, left:left + patch_size]
  return {
      "exemplar/x1": input_convention.to_trunk_input(x1[None])[0],
      "exemplar/x2": input_convention.to_trunk_input(x2[None])[0],
  }


def cosine_distance(a, b):
  """1 - cos(a, b) per example: each row is l2-normalized on its own, never across the batch.

  Args:
    a, b: float [B, D].

  Returns:
    float32 [B], in [0, 2]; a zero vector is at distance 1 from everything.
  """
  a = tf.math.l2_normalize(tf.cast(a, tf.float32), axis=-1)
  b = tf.math.l2_normalize(tf.cast(b, tf.float32), axis=-1)
  return 1.0 - tf.reduce_sum(a * b, axis=-1)


@gin.configurable("loss", module="exemplar")
def triplet_loss(anchor, positive, negative, margin=0.5):
  """The paper's triplet loss: mean of max(D(a, p) - D(a, n) + margin, 0), D cosine distance.

  Args:
    anchor, positive, negative: float [B, D] embeddings (any norm).
    margin: M.

  Returns:
    (loss: float32 scalar, metrics: dict of float32 scalars: 'triplet_accuracy' (fraction with
    D(a, p) < D(a, n)), 'positive_distance' and 'negative_distance' (mean D), 'active_fraction'
    (fraction with a positive hinge, i.e. that contribute a gradient)).
  """
  positive_distance = cosine_distance(anchor, positive)
  negative_distance = cosine_distance(anchor, negative)
  hinge = tf.nn.relu(positive_distance - negative_distance + margin)
  metrics = {
      "triplet_accuracy": tf.reduce_mean(
          tf.cast(positive_distance < negative_distance, tf.float32)),
      "positive_distance": tf.reduce_mean(positive_distance),
      "negative_distance": tf.reduce_mean(negative_distance),
      "active_fraction": tf.reduce_mean(tf.cast(hinge > 0, tf.float32)),
  }
  return tf.reduce_mean(hinge), metrics


@base.register("exemplar")
@gin.configurable("exemplar")
class Exemplar(base.Task):
  """The exemplar task: an embedding head and the triplet loss on the shared trunk."""

  output_stride = 32

  def __init__(self, trunk, embedding_size=128, head_width=1024, batch_size=32, patch_size=96,
               source_fn=None):
    """Creates the head.

    Args:
      trunk: the shared `Trunk`, called at output stride 32.
      embedding_size: dimension of the embedding f(x).
      head_width: width of the head's hidden fully connected layer.
      batch_size: global number of images (triplets) per step; each is two trunk inputs.
      patch_size: side of the patches; passed to `preprocess` (it overrides
        `exemplar.preprocess.patch_size`).
      source_fn: see `base.Task`.
    """
    super().__init__(trunk, source_fn=source_fn)
    self.batch_size = batch_size
    self.patch_size = patch_size
    self.head = tf.keras.Sequential([
        tf.keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.997),
        tf.keras.layers.ReLU(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(head_width, activation="relu"),
        tf.keras.layers.Dense(embedding_size),
    ], name="exemplar_head")

  def input_fn(self, input_context=None):
    """Batched (per replica) dataset of patch pairs from shuffled images."""
    # A larger shuffle buffer than the other tasks': each example's negative is its neighbour.
    return self.pipeline(
        input_context, lambda ex: preprocess(ex, training=True, patch_size=self.patch_size),
        shuffle_buffer=SHUFFLE_BUFFER)

  def embed(self, images, training):
    """Trunk and head: float [N, S, S, 3] trunk input -> float32 [N, embedding_size]."""
    block3 = self.representation(images, training)
    return tf.cast(self.head(block3, training=training), tf.float32)

  def model_fn(self, features, mode):
    """Embeds x1 and x2 in one trunk pass; negatives are the positives rolled by one.

    Args:
      features: dict with 'exemplar/x1' and (except in PREDICT) 'exemplar/x2', float
        [B, S, S, 3].
      mode: a `heads.Mode`.

    Returns:
      `heads.Spec` with predictions {'exemplar/embedding': float32 [B, embedding_size], unit
      norm, of x1} and, except in PREDICT, the triplet loss and its metrics.

    Raises:
      ValueError: in TRAIN or EVAL, if the batch is known to hold fewer than 2 examples (the
        negative of each example is its neighbour's positive).
    """
    training = mode == heads.Mode.TRAIN
    x1 = features["exemplar/x1"]
    if mode == heads.Mode.PREDICT:
      embedding = self.embed(x1, training)
      return heads.Spec(predictions={"exemplar/embedding": tf.math.l2_normalize(
          tf.cast(embedding, tf.float32), -1)})
    x2 = features["exemplar/x2"]
    batch = x1.shape[0]
    if batch is not None and batch < 2:
      raise ValueError(
          f"exemplar needs at least 2 examples per replica (got {batch}): the negative of each "
          "example is the next example's x2. Raise exemplar.batch_size to at least 2 per "
          "replica.")
    checks = [] if batch is not None else [tf.debugging.assert_greater_equal(
        tf.shape(x1)[0], 2, message="exemplar needs at least 2 examples per replica")]
    with tf.control_dependencies(checks):
      embeddings = self.embed(tf.concat([x1, x2], axis=0), training)
    anchor, positive = tf.split(embeddings, 2, axis=0)
    # x3 of example i is x2 of example (i + 1) mod B: a different image, no extra trunk pass.
    negative = tf.roll(positive, shift=-1, axis=0)
    loss, metrics = triplet_loss(anchor, positive, negative)
    predictions = {"exemplar/embedding": tf.math.l2_normalize(tf.cast(anchor, tf.float32), -1)}
    return heads.Spec(loss=loss, predictions=predictions, metrics=metrics)
