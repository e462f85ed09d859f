"""Colorization (Zhang et al. 2016, as in the paper, section 2): predict the ab colors of a
grayscale image as a 313-way classification per 8x8 cell.

Input: the image's Lab L channel, scaled to 0-255 and replicated to three channels (so the
trained trunk still takes color images), through the common input convention. Target: ab
sampled at stride 8 (the centre pixel of each 8x8 cell, not an average, which would desaturate
edges), soft-encoded onto the 313 bins in `model_fn`. Loss: cross-entropy with the soft target,
each cell weighted by the rebalancing weight of its target's most likely bin; images with no
chroma (every |a|, |b| < 5) are left out. The trunk runs at output stride 8.

Rebalancing needs the empirical ab prior of the training images (Zhang et al. section 2.2;
`tools/compute_color_prior.py`, gin `colorization.prior_path`). Without it the loss would be
plain soft cross-entropy, which drifts to desaturated colors, so the task refuses to train
without one on any gin-configured source but the built-in toy images.
"""

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import color_prior
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.tasks import base

TARGET_STRIDE = 8
# The image source that may train without a prior (uniform weights): the built-in toy images.
SOURCE_WITHOUT_PRIOR = "toy"


@gin.configurable("preprocess", module="colorization", denylist=["example", "training"])
def preprocess(example, training=True, crop_size=224, seed=None):
  """{'image': uint8 [H, W, 3]} -> the task's features (no batch axis).

  Images whose shorter side is below `crop_size` are first resized up to it (bilinear, aspect
  kept); then a random crop (center crop when not training) and a random horizontal flip.

  Args:
    example: dict with 'image', uint8 [H, W, 3].
    training: random crop and flip when True.
    crop_size: side of the square crop; a multiple of 8.
    seed: optional op seed for the random crop and flip.

  Returns:
    dict with 'colorization/image' (float32 [S, S, 3], trunk input: L replicated, mean
    subtracted), 'colorization/ab_target' (float32 [S/8, S/8, 2]) and
    'colorization/has_color' (bool []).

  Raises:
    ValueError: if crop_size is not a multiple of 8.
  """
  if crop_size % TARGET_STRIDE:
    raise ValueError(f"colorization crop_size must be a multiple of {TARGET_STRIDE}, got "
                     f"{crop_size} (gin: colorization.preprocess.crop_size).")
  image = tf.cast(sources.ensure_min_size(example["image"], crop_size), tf.float32)
  new_size = tf.shape(image)[:2]
  if training:
    image = tf.image.random_crop(image, [crop_size, crop_size, 3], seed=seed)
    image = tf.image.random_flip_left_right(image, seed=seed)
  else:
    top = (new_size[0] - crop_size) // 2
    left = (new_size[1] - crop_size) // 2
    image = image[top:top + crop_size, left:left + crop_size]
  lab = color.rgb_to_lab(image / 255.0)
  ab = lab[..., 1:]
  half = TARGET_STRIDE // 2
  gray = color.lightness_as_rgb(lab)
  return {
      "colorization/image": input_convention.to_trunk_input(gray[None])[0],
      "colorization/ab_target": ab[half::TARGET_STRIDE, half::TARGET_STRIDE],
      "colorization/has_color": tf.logical_not(color.is_grayscale(ab)),
  }


@gin.configurable("loss", module="colorization")
def colorization_loss(logits, ab_target, has_color, class_weights, sigma=5.0, num_neighbors=5):
  """Rebalanced soft-target cross-entropy, masked to images with color.

  Args:
    logits: float [B, h, w, 313].
    ab_target: float [B, h, w, 2].
    has_color: bool [B].
    class_weights: float [313] rebalancing weights.
    sigma, num_neighbors: soft-encoding settings.

  Returns:
    (loss: scalar, metrics: dict of scalars). The loss is the weighted mean over the cells of
    images with color; 0 when no image in the batch has color.
  """
  target = color.soft_encode(ab_target, sigma=sigma, num_neighbors=num_neighbors)
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
  per_cell = -tf.reduce_sum(target * log_probs, axis=-1)
  target_bin = tf.argmax(target, axis=-1, output_type=tf.int32)
  weights = tf.gather(tf.constant(class_weights, tf.float32), target_bin)
  mask = tf.cast(has_color, tf.float32)[:, None, None] * tf.ones_like(per_cell)
  denom = tf.reduce_sum(mask)
  loss = tf.math.divide_no_nan(tf.reduce_sum(per_cell * weights * mask), denom)
  correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), target_bin),
                    tf.float32)
  metrics = {
      "accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * mask), denom),
      "color_fraction": tf.reduce_mean(tf.cast(has_color, tf.float32)),
  }
  return loss, metrics


def load_prior(prior_path, source):
  """The color prior for the rebalancing weights: the .npy at `prior_path`, or None (uniform).

  Args:
    prior_path: .npy path (`tools/compute_color_prior.py`) or None.
    source: the `sources.image_dataset` source the task reads, or None when it is unknown (a
      source function given by the caller, e.g. a benchmark's).

  Returns:
    numpy array [313], or None when `prior_path` is None and the source is the toy source or
    unknown (then with a warning).

  Raises:
    ValueError: naming the tool and the gin binding, when `prior_path` is None on a known
      source other than the toy images, or names no file.
  """
  tool = "python tools/compute_color_prior.py --num_images=0"
  if prior_path is None:
    if source == SOURCE_WITHOUT_PRIOR:
      return None
    if source is None:
      logging.warning("colorization without colorization.prior_path on a custom source_fn: "
                      "uniform weights, the loss is not rebalanced.")
      return None
    raise ValueError(
        f"colorization on image source {source!r} needs the class-rebalancing prior of its "
        f"images (Zhang et al. section 2.2): run `{tool} --output=PRIOR.npy` on the same "
        "source (its flags or --gin_file) and bind colorization.prior_path = 'PRIOR.npy'; only "
        f"the built-in {SOURCE_WITHOUT_PRIOR} images may train without one.")
  if not tf.io.gfile.exists(prior_path):
    raise ValueError(
        f"colorization.prior_path {prior_path!r} does not exist: compute it with `{tool} "
        f"--output={prior_path}` on the pretraining images (WORKSPACE.md, Data).")
  with tf.io.gfile.GFile(prior_path, "rb") as f:
    return np.load(f)


@base.register("colorization")
@gin.configurable("colorization")
class Colorization(base.Task):
  """The colorization task: head and loss on the shared trunk at output stride 8."""

  output_stride = TARGET_STRIDE

  def __init__(self, trunk, head_width=256, prior_path=None, batch_size=16, crop_size=224,
               source_fn=None):
    """Creates the head.

    Args:
      trunk: the shared `Trunk`; this task calls it at output stride 8 whatever its own.
      head_width: channels of the head's hidden 3x3 conv.
      prior_path: .npy of the 313-bin color prior of the training images
        (tools/compute_color_prior.py). None (uniform weights: no rebalancing) only on the toy
        source, or with a warning on a custom `source_fn`.
      batch_size: global batch size (split over replicas by the input context).
      crop_size: input crop side.
      source_fn: a function(input_context) -> unbatched dataset of {'image': uint8}; default
        `mtssl_tf.data.sources.image_dataset` (gin-configured).

    Raises:
      ValueError: when there is no prior (`load_prior`) or it is malformed.
    """
    super().__init__(trunk, source_fn=source_fn)
    # What `images` will read: gin's unscoped image_dataset bindings (the training loop
    # builds the input pipelines outside the task's gin scope).
    source = color_prior.describe_source({})["source"] if source_fn is None else None
    self.class_weights = color.rebalancing_weights(load_prior(prior_path, source))
    self.batch_size = batch_size
    self.crop_size = crop_size
    self.head = base.dense_prediction_head(head_width, color.NUM_BINS, "colorization_head")

  def input_fn(self, input_context=None):
    """Batched (per replica) dataset of the task's features."""
    return self.pipeline(
        input_context, lambda ex: preprocess(ex, training=True, crop_size=self.crop_size))

  def model_fn(self, features, mode):
    training = mode == heads.Mode.TRAIN
    block3 = self.representation(features["colorization/image"], training)
    # Float32 from here (mixed precision): the softmax and the 313-bin math.
    logits = tf.cast(self.head(block3, training=training), tf.float32)
    probs = tf.nn.softmax(logits)
    predictions = {"colorization/ab": color.annealed_mean(probs)}
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    loss, metrics = colorization_loss(logits, features["colorization/ab_target"],
                                      features["colorization/has_color"], self.class_weights)
    return heads.Spec(loss=loss, predictions=predictions, metrics=metrics)
