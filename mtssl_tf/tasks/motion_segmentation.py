"""Motion segmentation (Pathak et al. 2017, as in the paper, section 2): from one video frame,
predict which pixels will move on their own in the following frames.

Data: frames and masks from `tools/prepare_motion_segmentation.py` (dense tracking over 10
frames with the camera's motion removed; masks at 1/8 of the frame's size), read by
`motion_records.motion_dataset`, or its built-in toy clips. Input: a crop of the frame whose
corners sit on the mask's 8-pixel grid, so every mask cell stays one 8x8 block of the crop; a
random crop and flip when training, the centre crop otherwise. Frames whose shorter side is
below the crop size are resized up (bilinear; the mask by nearest neighbour), both sides to
multiples of 8, never skipped.

Model: the trunk at output stride 8 (one block-3 cell per mask cell), a head of batch norm,
ReLU, a 3x3 convolution, batch norm, ReLU and a 1x1 convolution to 2 logits per cell
(static, moving). Loss: per-cell cross-entropy with the mask, the paper's; optionally the
moving class weighted up (`moving_weight`, 1 by default). Metrics: cell accuracy and the IoU of
the moving class (1 for a batch where neither the mask nor the prediction has moving cells).
"""

import gin
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import motion_records
from mtssl_tf.tasks import base

STRIDE = 8


def _round_up(value, multiple):
  return (value + multiple - 1) // multiple * multiple


def resize_to_cover(image, mask, min_size):
  """Resizes image and mask up so both image sides are >= min_size and multiples of 8.

  Args:
    image: uint8 or float [H, W, 3], H and W multiples of 8.
    mask: [H/8, W/8].
    min_size: the shorter side's minimum (a multiple of 8).

  Returns:
    (float32 image [H', W', 3], mask [H'/8, W'/8] of mask's dtype); unchanged sizes when the
    shorter side is already >= min_size.
  """
  image = tf.cast(image, tf.float32)
  shape = tf.shape(image)[:2]
  shorter = tf.reduce_min(shape)

  def grow():
    scale = tf.cast(min_size, tf.float32) / tf.cast(shorter, tf.float32)
    size = tf.cast(tf.math.ceil(tf.cast(shape, tf.float32) * scale), tf.int32)
    size = _round_up(tf.maximum(size, min_size), STRIDE)
    grown = tf.image.resize(image, size, method="bilinear")
    cells = tf.image.resize(mask[..., None], size // STRIDE, method="nearest")[..., 0]
    return grown, tf.cast(cells, mask.dtype)

  return tf.cond(shorter < min_size, grow, lambda: (image, mask))


@gin.configurable("preprocess", module="motion_segmentation", denylist=["example", "training"])
def preprocess(example, training=True, crop_size=224, seed=None):
  """{'image': uint8 [H, W, 3], 'mask': uint8 [H/8, W/8]} -> the task's features.

  Args:
    example: dict with 'image' and 'mask' (0/1); H and W multiples of 8.
    training: random grid-aligned crop and horizontal flip when True, centre crop otherwise.
    crop_size: side of the square crop; a multiple of 8.
    seed: optional op seed.

  Returns:
    dict with 'motion_segmentation/image' (float32 [S, S, 3], trunk input) and
    'motion_segmentation/mask' (int32 [S/8, S/8], 1 where pixels move).

  Raises:
    ValueError: if crop_size is not a multiple of 8.
  """
  if crop_size % STRIDE:
    raise ValueError(f"motion_segmentation crop_size must be a multiple of {STRIDE}, got "
                     f"{crop_size} (gin: motion_segmentation.crop_size).")
  image, mask = resize_to_cover(example["image"], tf.cast(example["mask"], tf.int32),
                                crop_size)
  cells = crop_size // STRIDE
  grid = tf.shape(mask)
  # Distinct op seeds: one seed shared by ops in a graph gives equal draws.
  seeds = [None] * 3 if seed is None else [seed, seed + 1, seed + 2]
  if training:
    top = tf.random.uniform([], 0, grid[0] - cells + 1, dtype=tf.int32, seed=seeds[0])
    left = tf.random.uniform([], 0, grid[1] - cells + 1, dtype=tf.int32, seed=seeds[1])
  else:
    top, left = (grid[0] - cells) // 2, (grid[1] - cells) // 2
  image = image[top * STRIDE:(top + cells) * STRIDE, left * STRIDE:(left + cells) * STRIDE]
  mask = mask[top:top + cells, left:left + cells]
  if training:
    flip = tf.random.uniform([], seed=seeds[2]) < 0.5
    image = tf.where(flip, image[:, ::-1], image)
    mask = tf.where(flip, mask[:, ::-1], mask)
  image = tf.ensure_shape(image, [crop_size, crop_size, 3])
  return {
      "motion_segmentation/image": input_convention.to_trunk_input(image[None])[0],
      "motion_segmentation/mask": tf.ensure_shape(mask, [cells, cells]),
  }


@gin.configurable("loss", module="motion_segmentation")
def motion_loss(logits, mask, moving_weight=1.0):
  """Per-cell cross-entropy and metrics.

  Args:
    logits: float [B, h, w, 2].
    mask: int [B, h, w], 1 = moving.
    moving_weight: weight of moving cells in the loss (static cells weigh 1).

  Returns:
    (loss: scalar, the weighted mean over cells; metrics: {'accuracy', 'moving_iou',
    'moving_fraction' (of the mask), 'predicted_moving_fraction'}).
  """
  mask = tf.cast(mask, tf.int32)
  per_cell = tf.nn.sparse_softmax_cross_entropy_with_logits(mask, tf.cast(logits, tf.float32))
  weights = tf.where(mask > 0, tf.cast(moving_weight, tf.float32), 1.0)
  loss = tf.reduce_sum(per_cell * weights) / tf.reduce_sum(weights)
  predicted = tf.argmax(logits, -1, output_type=tf.int32)
  moving, predicted_moving = mask > 0, predicted > 0
  intersection = tf.reduce_sum(tf.cast(moving & predicted_moving, tf.float32))
  union = tf.reduce_sum(tf.cast(moving | predicted_moving, tf.float32))
  metrics = {
      "accuracy": tf.reduce_mean(tf.cast(tf.equal(predicted, mask), tf.float32)),
      "moving_iou": tf.where(union > 0, intersection / tf.maximum(union, 1.0), 1.0),
      "moving_fraction": tf.reduce_mean(tf.cast(moving, tf.float32)),
      "predicted_moving_fraction": tf.reduce_mean(tf.cast(predicted_moving, tf.float32)),
  }
  return loss, metrics


@base.register("motion_segmentation")
@gin.configurable("motion_segmentation")
class MotionSegmentation(base.Task):
  """The motion segmentation task: a 2-way per-cell head on the shared trunk at stride 8."""

  output_stride = STRIDE

  def __init__(self, trunk, head_width=256, batch_size=16, crop_size=224, source_fn=None):
    """Creates the head.

    Args:
      trunk: the shared `Trunk`, called at output stride 8.
      head_width: channels of the head's hidden 3x3 convolution.
      batch_size: global batch size in frames.
      crop_size: input crop side (a multiple of 8).
      source_fn: None (the gin-configured `motion_records.motion_dataset`) or a function
        (input_context) -> unbatched dataset of {'image', 'mask'}.
    """
    super().__init__(trunk, source_fn=source_fn)
    self.batch_size = batch_size
    self.crop_size = crop_size
    self.head = base.dense_prediction_head(head_width, 2, "motion_segmentation_head")

  def images(self, input_context=None):
    """Frames and masks (not plain images): the motion source, sharded for input_context."""
    if self.source_fn is not None:
      return self.source_fn(input_context)
    return motion_records.motion_dataset(input_context=input_context, stats=self.decode_stats)

  def input_fn(self, input_context=None):
    """Batched (per replica) dataset of crops and their masks."""
    return self.pipeline(
        input_context, lambda ex: preprocess(ex, training=True, crop_size=self.crop_size))

  def model_fn(self, features, mode):
    training = mode == heads.Mode.TRAIN
    block3 = self.representation(features["motion_segmentation/image"], training)
    logits = tf.cast(self.head(block3, training=training), tf.float32)  # mixed precision
    predictions = {
        "motion_segmentation/logits": logits,
        "motion_segmentation/moving_probability": tf.nn.softmax(logits)[..., 1],
    }
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    loss, metrics = motion_loss(logits, features["motion_segmentation/mask"])
    return heads.Spec(loss=loss, predictions=predictions, metrics=metrics)
