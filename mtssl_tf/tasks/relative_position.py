"""Relative position (Doersch et al. 2015, as in the paper, section 2): given two patches of
one image, predict where the second lay relative to the first, an 8-way classification.

Image scale. As in the original code (deepcontext train.py), each image is first resized,
aspect kept, to a random total of `image_area` pixels (150K-450K by default). The 3x3 window
below needs `3 * patch_size + 2 * gap + 2 * jitter` pixels (398 by default) on each side: when
the drawn area leaves the shorter side below that, the image is scaled up further until it fits
(never skipped). `image_area=None` keeps each image's own size (only images too small for the
window are scaled up).

Sampling. Patches sit on a 3x3 grid of cells, `patch_size` pixels wide with `gap` pixels
between cells; each patch is moved by up to `jitter` pixels in each axis on its own (so that
lines and textures cannot be continued across the gap). For each pair a 3x3 window of cells is
placed uniformly in the image, the first patch is the window's centre cell and the second one
of its 8 neighbours, chosen uniformly. Because every neighbour fits whatever the label, where a
pair lies in the image says nothing about its label. Both orders of every pair occur: any
patch can be the centre. Defaults after the original code: 96 px patches, 48 px gap, 7 px
jitter.

Labels: `OFFSETS[label]` is (row step, column step) from the first patch to the second, in
reading order of the 3x3 neighbourhood without its centre:

    0 1 2        0 up-left    1 up      2 up-right
    3 . 4        3 left                 4 right
    5 6 7        5 down-left  6 down    7 down-right

Per patch, against low-level shortcuts, in the original code's order:
  1. Downsampling (`downsample_probability`, 0.33 in the original code): the patch is shrunk
     to a random side of sqrt(`min_downsample_area`) to `patch_size - 1` pixels (10-95 for
     96 px patches, the area drawn uniformly) and blown back up, so that fine-grained texture
     cannot be matched across the gap.
  2. Color handling (`color_mode`), against chromatic aberration:
     "drop": color dropping, the default: keep one channel chosen at random, replace the other
       two with noise. `noise="uniform"`, the original code: uniform in [-0.5, 0.5] on the
       0-255 scale; `noise="gaussian"`, the 2015 paper's description: Gaussian with
       `noise_fraction` (1/100) of the kept channel's standard deviation.
     "harmonized": the paper's section 3.3: the patch is converted to Lab and only L is kept,
       replicated to 3 channels, exactly colorization's input (`color.lightness_as_rgb`).
     "none": the patch as it is (tests use it to read pixel coordinates back).
  3. Normalization (`normalize`, the original code's "so that gradients are a less useful
     cue"): each channel loses the patch's own mean of that channel (in "drop" mode the kept
     channel; the noise stays as drawn), then the whole patch is scaled to a root mean square of
     `patch_rms` (50, "roughly the same as the usual AlexNet inputs").

Trunk input. With `normalize` on, what the trunk sees is the normalized patch itself: mean
(about) 0 and RMS 50 per patch, on roughly the scale of `input_convention.to_trunk_input`; the
ImageNet mean is NOT subtracted as well (the patch's own mean already is). With `normalize`
off, patches are `input_convention.to_trunk_input` of the pixels (ImageNet mean subtracted),
and color dropping's noise sits around zero in that space.

Model: both patches of every pair go through the trunk as one batch (output stride 32: a 96 px
patch gives 3x3 cells of block 3). The head, after the original: a per-patch fully connected
layer (on batch norm and ReLU of block 3, which is pre-activation in ResNet v2), the pair's two
vectors concatenated, one more fully connected layer and the 8-way classifier.
"""

import gin
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.tasks import base

NUM_CLASSES = 8
# (row step, column step) from the first patch's cell to the second's, indexed by label.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
LABEL_NAMES = ("up-left", "up", "up-right", "left", "right", "down-left", "down", "down-right")
COLOR_MODES = ("drop", "harmonized", "none")
NOISE_KINDS = ("uniform", "gaussian")
# RMS (0-255 scale) below which a centred patch counts as flat (see normalize_patch).
FLAT_RMS = 1e-2


def window_size(patch_size, gap, jitter):
  """Side in pixels of the 3x3 window of cells that one pair is drawn from."""
  return 3 * patch_size + 2 * gap + 2 * jitter


def sample_pair(image, patch_size=96, gap=48, jitter=7, training=True, seed=None):
  """Draws one pair of patches from adjacent grid cells and its label.

  Args:
    image: float or uint8 [H, W, 3], both sides at least `window_size(patch_size, gap, jitter)`.
    patch_size: side of each patch.
    gap: pixels between neighbouring cells.
    jitter: each patch moves by up to this many pixels in each axis (when training).
    training: when False the window is centred in the image and patches are not jittered;
      the label is still drawn at random.
    seed: optional op seed.

  Returns:
    (patches [2, patch_size, patch_size, 3] of image's dtype, label int32 [],
     corners int32 [2, 2]: each patch's (top, left) in `image`).
  """
  size = window_size(patch_size, gap, jitter)
  shape = tf.shape(image)
  tf.debugging.assert_greater_equal(
      tf.reduce_min(shape[:2]), size,
      message=f"relative_position: image smaller than the {size}px window; resize it first "
      "(preprocess does)")
  # Distinct op seeds per draw: one seed shared by several ops in a graph gives them equal
  # draws (the same row and column offset, say).
  seeds = [None] * 4 if seed is None else [seed + i for i in range(4)]
  label = tf.random.uniform([], 0, NUM_CLASSES, dtype=tf.int32, seed=seeds[0])
  step = tf.gather(tf.constant(OFFSETS, tf.int32), label)
  if training:
    origin = tf.stack([
        tf.random.uniform([], 0, shape[0] - size + 1, dtype=tf.int32, seed=seeds[1]),
        tf.random.uniform([], 0, shape[1] - size + 1, dtype=tf.int32, seed=seeds[2]),
    ])
    shifts = tf.random.uniform([2, 2], -jitter, jitter + 1, dtype=tf.int32, seed=seeds[3])
  else:
    origin = (shape[:2] - size) // 2
    shifts = tf.zeros([2, 2], tf.int32)
  pitch = patch_size + gap
  centre = origin + jitter + pitch
  corners = tf.stack([centre, centre + step * pitch]) + shifts
  patches = tf.stack([
      tf.slice(image, [corners[i, 0], corners[i, 1], 0], [patch_size, patch_size, 3])
      for i in range(2)
  ])
  return patches, label, corners


def scale_image(image, image_area, min_side, training=True, seed=None):
  """Resizes an image to a random total pixel count, aspect kept, as the original code did.

  deepcontext train.py resizes every image (up or down, bilinear) to a total of
  `randint(150000, 450000)` pixels before sampling patches. The window of cells must still fit:
  when the drawn area leaves the shorter side below `min_side`, the image is scaled to exactly
  that shorter side instead.

  Args:
    image: uint8 or float [H, W, 3].
    image_area: (smallest, largest) total pixel count, or None to keep the image's own size
      (only images whose shorter side is below `min_side` are scaled up, see
      `sources.ensure_min_size`).
    min_side: the shorter side the result must at least have.
    training: the area is drawn uniformly when True; the middle of the range otherwise.
    seed: optional op seed.

  Returns:
    [H', W', 3]: float32 when resized to an area; `image`'s dtype when `image_area` is None. The
    area H' * W' lies in `image_area` up to the rounding of each side to whole pixels, unless
    `min_side` forces it larger.

  Raises:
    ValueError: for an `image_area` that is not 0 < smallest <= largest.
  """
  if image_area is None:
    return sources.ensure_min_size(image, min_side)
  if len(image_area) != 2 or not 0 < image_area[0] <= image_area[1]:
    raise ValueError(f"relative_position image_area must be (smallest, largest) pixel counts "
                     f"with 0 < smallest <= largest, or None, got {image_area!r} (gin: "
                     "relative_position.preprocess.image_area).")
  low, high = float(image_area[0]), float(image_area[1])
  if training:
    area = tf.random.uniform([], low, high, seed=seed)
  else:
    area = tf.constant((low + high) / 2)
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.maximum(tf.sqrt(area / (size[0] * size[1])), min_side / tf.reduce_min(size))
  new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), min_side)
  # Bilinear without antialiasing, as caffe.io.resize_image in the original code.
  return tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear")


def drop_color(patch, noise="uniform", noise_fraction=0.01, seed=None):
  """Color dropping on one zero-centred patch.

  Keeps one channel chosen at random; the other two become zero-mean noise: uniform in
  [-0.5, 0.5] (the original code, on the 0-255 pixel scale) or Gaussian with `noise_fraction`
  times the kept channel's standard deviation (the 2015 paper).

  Args:
    patch: float [S, S, 3], each channel centred (its own mean or the ImageNet mean subtracted).
    noise: "uniform" or "gaussian".
    noise_fraction: the Gaussian noise's deviation relative to the kept channel's (unused for
      uniform noise).
    seed: optional op seed.

  Returns:
    float [S, S, 3].

  Raises:
    ValueError: for an unknown noise kind.
  """
  if noise not in NOISE_KINDS:
    raise ValueError(f"relative_position noise must be one of {NOISE_KINDS}, got {noise!r} "
                     "(gin: relative_position.preprocess.noise).")
  fill_seed = None if seed is None else seed + 1
  keep = tf.random.uniform([], 0, 3, dtype=tf.int32, seed=seed)
  if noise == "gaussian":
    std = tf.math.reduce_std(tf.gather(patch, keep, axis=-1)) * noise_fraction
    fill = tf.random.normal(tf.shape(patch), stddev=1.0, seed=fill_seed) * std
  else:
    fill = tf.random.uniform(tf.shape(patch), -0.5, 0.5, seed=fill_seed)
  is_kept = tf.equal(tf.range(3), keep)
  return tf.where(is_kept, patch, fill)


def normalize_patch(patch, rms=50.0):
  """Scales a patch to root mean square `rms` over all its pixels and channels.

  The original code's last step per patch ("so that gradients are a less useful cue"); the
  patch is expected to be centred already. A flat patch (RMS below `FLAT_RMS`, far below one
  grey level: only rounding left after centring) becomes all zeros rather than amplified
  rounding error.
  """
  current = tf.sqrt(tf.reduce_mean(tf.square(patch)))
  return tf.where(current > FLAT_RMS, patch * (rms / tf.maximum(current, FLAT_RMS)), 0.0)


def downsample(patch, min_area=100, seed=None):
  """Shrinks a square patch (area averaging) and resizes it back up (bilinear).

  The smaller side is floor(sqrt(area)) with the area uniform in [min_area, (S - 1)^2], as in
  deepcontext train.py (10 to 95 px for 96 px patches; it shrinks bilinearly).
  """
  side = patch.shape[0]
  area = tf.random.uniform([], float(min_area), float((side - 1)**2), seed=seed)
  small = tf.cast(tf.floor(tf.sqrt(area)), tf.int32)
  shrunk = tf.image.resize(patch, [small, small], method="area")
  return tf.image.resize(shrunk, [side, side], method="bilinear")


@gin.configurable("preprocess", module="relative_position", denylist=["example", "training"])
def preprocess(example,
               training=True,
               patch_size=96,
               gap=48,
               jitter=7,
               image_area=(150000, 450000),
               color_mode="drop",
               noise="uniform",
               noise_fraction=0.01,
               downsample_probability=0.33,
               min_downsample_area=100,
               normalize=True,
               patch_rms=50.0,
               seed=None):
  """{'image': uint8 [H, W, 3]} -> one pair of patches and its label (no batch axis).

  Args:
    example: dict with 'image', uint8 [H, W, 3].
    training: random image scale, window and jitter when True; the middle of `image_area`, a
      centred window and no jitter otherwise.
    patch_size, gap, jitter: the grid (see the module docstring).
    image_area: (smallest, largest) pixel count each image is resized to, or None (see
      `scale_image`).
    color_mode: one of `COLOR_MODES`.
    noise, noise_fraction: color dropping's noise (see `drop_color`).
    downsample_probability: chance that a patch is downsampled and upsampled again.
    min_downsample_area: smallest area, in pixels, a downsampled patch is reduced to.
    normalize: centre each patch on its own mean and scale it to RMS `patch_rms` (the trunk
      then sees that, not `input_convention.to_trunk_input`); see the module docstring.
    patch_rms: root mean square of a normalized patch.
    seed: optional op seed.

  Returns:
    dict with 'relative_position/patches' (float32 [2, S, S, 3], trunk input),
    'relative_position/label' (int32 []) and 'relative_position/corners' (int32 [2, 2], each
    patch's (top, left) in the image after scaling).

  Raises:
    ValueError: for an unknown color mode, a negative jitter or gap, a bad `image_area`, or a
      `min_downsample_area` that does not fit in the patch.
  """
  if color_mode not in COLOR_MODES:
    raise ValueError(f"relative_position color_mode must be one of {COLOR_MODES}, got "
                     f"{color_mode!r} (gin: relative_position.preprocess.color_mode).")
  if jitter < 0 or gap < 0 or 2 * jitter > gap:
    raise ValueError(f"relative_position needs 0 <= 2 * jitter <= gap (got jitter {jitter}, "
                     f"gap {gap}): otherwise patches of neighbouring cells could overlap.")
  if downsample_probability > 0 and not 1 <= min_downsample_area <= (patch_size - 1)**2:
    raise ValueError(f"relative_position min_downsample_area must lie in [1, (patch_size - 1)"
                     f"^2 = {(patch_size - 1)**2}], got {min_downsample_area} (gin: "
                     "relative_position.preprocess.min_downsample_area).")
  image = scale_image(example["image"], image_area, window_size(patch_size, gap, jitter),
                      training, None if seed is None else seed + 5)
  patches, label, corners = sample_pair(
      tf.cast(image, tf.float32), patch_size, gap, jitter, training=training, seed=seed)
  out = []
  for i in range(2):
    patch = patches[i]
    # Each patch's draws get op seeds of their own (see sample_pair).
    patch_seed = None if seed is None else seed + 10 * (i + 1)
    if downsample_probability > 0:
      patch = tf.cond(
          tf.random.uniform([], seed=patch_seed) < downsample_probability,
          lambda p=patch, s=patch_seed: downsample(p, min_downsample_area,
                                                   None if s is None else s + 1),
          lambda p=patch: p)
    if color_mode == "harmonized":
      patch = color.lightness_as_rgb(color.rgb_to_lab(patch / 255.0))
    if normalize:
      patch = patch - tf.reduce_mean(patch, axis=[0, 1], keepdims=True)
    else:
      patch = input_convention.to_trunk_input(patch[None])[0]
    if color_mode == "drop":
      patch = drop_color(patch, noise, noise_fraction,
                         None if patch_seed is None else patch_seed + 2)
    if normalize:
      patch = normalize_patch(patch, patch_rms)
    out.append(patch)
  return {
      "relative_position/patches": tf.stack(out),
      "relative_position/label": label,
      "relative_position/corners": corners,
  }


@base.register("relative_position")
@gin.configurable("relative_position")
class RelativePosition(base.Task):
  """The relative position task: a pair head and an 8-way classifier on the shared trunk."""

  output_stride = 32

  def __init__(self, trunk, fc_width=1024, batch_size=32, pairs_per_image=1, patch_size=96,
               source_fn=None):
    """Creates the head.

    Args:
      trunk: the shared `Trunk`, called at output stride 32.
      fc_width: width of the per-patch and the pair fully connected layers.
      batch_size: global number of pairs per step (each pair is two trunk inputs).
      pairs_per_image: pairs drawn from each decoded image; 1 as in the original (more pairs
        per image save decoding when input is the bottleneck, at some loss of diversity).
      patch_size: side of each patch; passed to `preprocess` (it overrides
        `relative_position.preprocess.patch_size`), and the per-patch layer's input size.
      source_fn: see `base.Task`.
    """
    super().__init__(trunk, source_fn=source_fn)
    self.batch_size = batch_size
    self.pairs_per_image = pairs_per_image
    self.patch_size = patch_size
    self.patch_head = tf.keras.Sequential([
        tf.keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.997),
        tf.keras.layers.ReLU(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(fc_width, activation="relu"),
    ], name="relative_position_patch_head")
    self.pair_head = tf.keras.Sequential([
        tf.keras.layers.Dense(fc_width, activation="relu"),
        tf.keras.layers.Dense(NUM_CLASSES),
    ], name="relative_position_pair_head")

  def input_fn(self, input_context=None):
    """Batched (per replica) dataset of pairs and labels."""
    pairs = self.pairs_per_image

    def make_pairs(example):
      drawn = [preprocess(example, training=True, patch_size=self.patch_size)
               for _ in range(pairs)]
      return {k: tf.stack([d[k] for d in drawn]) for k in drawn[0]}

    if pairs == 1:
      return self.pipeline(
          input_context, lambda ex: preprocess(ex, training=True, patch_size=self.patch_size))
    # Several pairs per image: the pipeline's batch axis gathers an image's pairs, which are
    # then split into examples and spread over batches by a second shuffle.
    dataset = self.images(input_context).repeat()
    dataset = dataset.map(make_pairs, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    dataset = dataset.shuffle(base.SHUFFLE_BUFFER)
    dataset = dataset.batch(self.per_replica_batch(input_context), drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)

  def model_fn(self, features, mode):
    training = mode == heads.Mode.TRAIN
    patches = features["relative_position/patches"]
    size = patches.shape[2]
    if size != self.patch_size:
      raise ValueError(f"relative_position patches are {size}px but the head was built for "
                       f"{self.patch_size}px (gin: relative_position.patch_size); make the "
                       "features with this task's input_fn or preprocess(patch_size=...).")
    # Both patches of every pair in one trunk batch: [B, 2, S, S, 3] -> [2B, S, S, 3].
    flat = tf.reshape(patches, [-1, size, size, 3])
    block3 = self.representation(flat, training)
    per_patch = self.patch_head(block3, training=training)
    pair = tf.reshape(per_patch, [-1, 2 * per_patch.shape[-1]])
    logits = tf.cast(self.pair_head(pair, training=training), tf.float32)  # mixed precision
    predictions = {
        "relative_position/logits": logits,
        "relative_position/probabilities": tf.nn.softmax(logits),
        "relative_position/label": tf.argmax(logits, -1, output_type=tf.int32),
    }
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    labels = features["relative_position/label"]
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32)))
    accuracy = tf.reduce_mean(
        tf.cast(tf.equal(predictions["relative_position/label"], labels), tf.float32))
    return heads.Spec(loss=loss, predictions=predictions, metrics={"accuracy": accuracy})
