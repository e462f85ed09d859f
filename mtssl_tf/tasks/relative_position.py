"""Relative position (Doersch et al. 2015, as in the paper, section 2): given two patches of
one image, predict where the second lay relative to the first, an 8-way classification.

Sampling. Patches sit on a 3x3 grid of cells, `patch_size` pixels wide with `gap` pixels
between cells; each patch is moved by up to `jitter` pixels in each axis on its own (so that
lines and textures cannot be continued across the gap). For each pair a 3x3 window of cells is
placed uniformly in the image, the first patch is the window's centre cell and the second one
of its 8 neighbours, chosen uniformly. Because every neighbour fits whatever the label, where a
pair lies in the image says nothing about its label. Both orders of every pair occur: any
patch can be the centre. Defaults after the original code: 96 px patches, 48 px gap, 7 px
jitter. The window needs `3 * patch_size + 2 * gap + 2 * jitter` pixels (398 by default) on
each side: images whose shorter side is smaller are resized up to it (aspect kept), never
skipped.

Labels: `OFFSETS[label]` is (row step, column step) from the first patch to the second, in
reading order of the 3x3 neighbourhood without its centre:

    0 1 2        0 up-left    1 up      2 up-right
    3 . 4        3 left                 4 right
    5 6 7        5 down-left  6 down    7 down-right

Color handling (`color_mode`), per patch, against chromatic aberration (a low-level cue that
solves the task without semantics):
  "drop": color dropping, the default: keep one channel chosen at random, replace the other two
    with noise around the mean (Gaussian with `noise_fraction` of the kept channel's standard
    deviation, the 2015 paper's choice; "uniform" noise of the same deviation, as in the
    original code, with `noise="uniform"`).
  "harmonized": the paper's section 3.3: the patch is converted to Lab and only L is kept,
    replicated to 3 channels, exactly colorization's input (`colorization.lightness_as_rgb`).
  "none": the patch as it is (tests use it to read pixel coordinates back).
Optionally (`downsample_probability`), a patch is shrunk to a random area of at least
`min_downsample_area` pixels and blown back up, as the original code did for some patches, so
that fine-grained low-level texture cannot be matched.

Model: both patches of every pair go through the trunk as one batch (output stride 32: a 96 px
patch gives 3x3 cells of block 3). The head, after the original: a per-patch fully connected
layer (on batch norm and ReLU of block 3, which is pre-activation in ResNet v2), the pair's two
vectors concatenated, one more fully connected layer and the 8-way classifier.
"""

import gin
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.tasks import base
from mtssl_tf.tasks import colorization

NUM_CLASSES = 8
# (row step, column step) from the first patch's cell to the second's, indexed by label.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
LABEL_NAMES = ("up-left", "up", "up-right", "left", "right", "down-left", "down", "down-right")
COLOR_MODES = ("drop", "harmonized", "none")
NOISE_KINDS = ("gaussian", "uniform")


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


def drop_color(patch, noise="gaussian", noise_fraction=0.01, seed=None):
  """Color dropping on one patch in trunk-input convention (mean subtracted).

  Keeps one channel chosen at random; the other two become zero-mean noise whose standard
  deviation is `noise_fraction` times the kept channel's.

  Args:
    patch: float [S, S, 3], mean-subtracted (`input_convention.to_trunk_input`).
    noise: "gaussian" or "uniform".
    noise_fraction: noise deviation relative to the kept channel's.
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
  kept = tf.gather(patch, keep, axis=-1)
  std = tf.math.reduce_std(kept) * noise_fraction
  if noise == "gaussian":
    fill = tf.random.normal(tf.shape(patch), stddev=1.0, seed=fill_seed)
  else:
    # Uniform on [-sqrt(3), sqrt(3)] has unit deviation.
    fill = tf.random.uniform(tf.shape(patch), -3.0**0.5, 3.0**0.5, seed=fill_seed)
  fill = fill * std
  is_kept = tf.equal(tf.range(3), keep)
  return tf.where(is_kept, patch, fill)


def downsample(patch, min_area=100, seed=None):
  """Shrinks a square patch to a random area in [min_area, S*S] and resizes it back (bilinear)."""
  side = patch.shape[0]
  area = tf.random.uniform([], float(min_area), float(side * side), seed=seed)
  small = tf.cast(tf.round(tf.sqrt(area)), tf.int32)
  shrunk = tf.image.resize(patch, [small, small], method="area")
  return tf.image.resize(shrunk, [side, side], method="bilinear")


@gin.configurable("preprocess", module="relative_position", denylist=["example", "training"])
def preprocess(example,
               training=True,
               patch_size=96,
               gap=48,
               jitter=7,
               color_mode="drop",
               noise="gaussian",
               noise_fraction=0.01,
               downsample_probability=0.0,
               min_downsample_area=100,
               seed=None):
  """{'image': uint8 [H, W, 3]} -> one pair of patches and its label (no batch axis).

  Args:
    example: dict with 'image', uint8 [H, W, 3].
    training: random window and jitter when True; centred, unjittered otherwise.
    patch_size, gap, jitter: the grid (see the module docstring).
    color_mode: one of `COLOR_MODES`.
    noise, noise_fraction: color dropping's noise (see `drop_color`).
    downsample_probability: chance that a patch is downsampled and upsampled again.
    min_downsample_area: smallest area, in pixels, a downsampled patch is reduced to.
    seed: optional op seed.

  Returns:
    dict with 'relative_position/patches' (float32 [2, S, S, 3], trunk input),
    'relative_position/label' (int32 []) and 'relative_position/corners' (int32 [2, 2], each
    patch's (top, left) in the image after any resize).

  Raises:
    ValueError: for an unknown color mode or a negative jitter or gap.
  """
  if color_mode not in COLOR_MODES:
    raise ValueError(f"relative_position color_mode must be one of {COLOR_MODES}, got "
                     f"{color_mode!r} (gin: relative_position.preprocess.color_mode).")
  if jitter < 0 or gap < 0 or 2 * jitter > gap:
    raise ValueError(f"relative_position needs 0 <= 2 * jitter <= gap (got jitter {jitter}, "
                     f"gap {gap}): otherwise patches of neighbouring cells could overlap.")
  image = sources.ensure_min_size(example["image"], window_size(patch_size, gap, jitter))
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
      patch = colorization.lightness_as_rgb(color.rgb_to_lab(patch / 255.0))
    patch = input_convention.to_trunk_input(patch[None])[0]
    if color_mode == "drop":
      patch = drop_color(patch, noise, noise_fraction,
                         None if patch_seed is None else patch_seed + 2)
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
    training = mode == base.Mode.TRAIN
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
    if mode == base.Mode.PREDICT:
      return base.Spec(predictions=predictions)
    labels = features["relative_position/label"]
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32)))
    accuracy = tf.reduce_mean(
        tf.cast(tf.equal(predictions["relative_position/label"], labels), tf.float32))
    return base.Spec(loss=loss, predictions=predictions, metrics={"accuracy": accuracy})
