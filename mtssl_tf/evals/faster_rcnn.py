"""Faster R-CNN's parts for a ResNet "C4" detector on our trunk (paper section 5).

The paper trains Faster R-CNN (Ren et al. 2015) with the TF object detection API's defaults
(`faster_rcnn_resnet101_voc07.config`): "we transfer all layers up through block 3 from the
pre-trained model into the trunk, and transfer block 4 into the proposal categorization head,
as is standard". The detector itself is official.vision's `MaskRCNNModel` without a mask head
(assembled in `voc_detection.py`); this file holds what a C4 detector needs beyond it:

  * `single_level_anchor_generator`: the API's grid anchors, every scale on the one stride-16
    level of block 3. official.vision's own `anchor.Anchor` spans one octave per level (its
    `num_scales` adds steps 2^(i/n) within an octave), so it cannot put 64-512 pixel anchors on
    one level.
  * `SingleLevelParser`: the input pipeline. It resizes as the API's keep-aspect-ratio resizer
    (shorter side `min_size`, longer side at most `max_size`), per image, and pads to one
    static `padded_size`; in training it flips horizontally, multiplies the shorter-side target
    by a random factor (multi-scale training) and labels RPN targets with our anchors.
  * `second_stage_nms`: the API's per-class NMS with a per-class and a total detection limit
    (official.vision's `DetectionGenerator` has one limit for both).
  * `SlimBlock4BoxHead` / `load_box_head_checkpoint`: the RoI head, slim's ResNet-v2 block 4
    under slim's variable names, so that the ImageNet baseline loads it from slim's checkpoint.
  * `Block3AsFeatureLevel`: the detector's "backbone"; the trunk runs before the detector.
"""

import tensorflow as tf

from mtssl_tf import block4 as block4_lib
from mtssl_tf import input_convention
from official.vision.dataloaders import parser as parser_lib
from official.vision.ops import anchor
from official.vision.ops import anchor_generator
from official.vision.ops import box_ops
from official.vision.ops import preprocess_ops

# Block 3 of the trunk runs at output stride 16: the API's first_stage_features_stride.
OUTPUT_STRIDE = 16
# The one feature level, named as official.vision names levels (stride 2^4 = 16).
LEVEL = "4"


def single_level_anchor_generator(base_size, scales, aspect_ratios):
  """The API's `grid_anchor_generator` on the one stride-16 level.

  An anchor of scale s and aspect ratio r (width / height) is base_size x s / sqrt(r) high and
  base_size x s x sqrt(r) wide, centred on every 16-pixel cell ((i + 0.5) x 16).

  Args:
    base_size: side of the scale-1 anchor in input pixels (the API's 256).
    scales: anchor scales relative to base_size, e.g. (0.25, 0.5, 1, 2): 64-512 pixels.
    aspect_ratios: width / height of the anchors, e.g. (0.5, 1.0, 2.0).

  Returns:
    An `AnchorGenerator`; called with image_size (H, W) it gives {'4': [H/16, W/16, 4K]},
    K = len(scales) x len(aspect_ratios) anchors (y0, x0, y1, x1) per location, scales outer
    and ratios inner.
  """
  return anchor_generator.AnchorGenerator(
      anchor_sizes={LEVEL: float(base_size)}, scales=[float(s) for s in scales],
      aspect_ratios=[float(r) for r in aspect_ratios], strides={LEVEL: OUTPUT_STRIDE})


def keep_aspect_size(image_size, min_size, max_size):
  """The API's keep-aspect-ratio resizer: the size with shorter side min_size, unless the
  longer side would exceed max_size, then the size with longer side max_size.

  Args:
    image_size: (height, width), int or float tensor.
    min_size: target of the shorter side (float or scalar tensor).
    max_size: bound on the longer side.

  Returns:
    float32 [2]: round(image_size x min(min_size / shorter, max_size / longer)).
  """
  size = tf.cast(image_size, tf.float32)
  scale = tf.minimum(tf.cast(min_size, tf.float32) / tf.reduce_min(size),
                     tf.cast(max_size, tf.float32) / tf.reduce_max(size))
  return tf.round(size * scale)


class SingleLevelParser(parser_lib.Parser):
  """Decoded examples -> (trunk input, labels) for Faster R-CNN on one stride-16 level.

  Reads official.vision's decoded-example dict ("image" uint8 [H, W, 3], "groundtruth_boxes"
  normalized [N, 4], "groundtruth_classes" [N] 1-based, "groundtruth_is_crowd" bool [N]).
  Images become trunk input (`input_convention.to_trunk_input`), resized per image by
  `keep_aspect_size` and padded at the bottom and right with zeros (the ImageNet mean) to
  `padded_size`, so every example has the same static shape. `image_info` is official.vision's
  [4, 2]: original size, resized size, (y, x) scale and (y, x) offset (always 0 here); an input
  pixel is original pixel x scale.

  Training drops "crowd" objects (the evaluation passes VOC's difficult flags there), flips
  horizontally with probability 1/2 (`aug_rand_hflip`), multiplies min_size by a factor drawn
  uniformly from `aug_scale` (multi-scale training; max_size still bounds the longer side, so
  nothing is cropped), and labels the RPN's anchors as official.vision's `RpnAnchorLabeler`.
  """

  def __init__(self, anchors, min_size=600, max_size=1024, padded_size=(1024, 1024),
               aug_scale=(1.0, 1.0), aug_rand_hflip=False, rpn_match_threshold=0.7,
               rpn_unmatched_threshold=0.3, rpn_batch_size_per_im=256, rpn_fg_fraction=0.5,
               max_num_instances=100, binding_prefix="voc_detection"):
    """Creates the parser.

    Args:
      anchors: a `single_level_anchor_generator`.
      min_size, max_size: the resizer's shorter-side target and longer-side bound.
      padded_size: (height, width) of every network input, multiples of 16, at least max_size.
      aug_scale: (min, max) of the training factor on min_size; (1, 1) turns it off.
      aug_rand_hflip: random horizontal flips in training.
      rpn_match_threshold, rpn_unmatched_threshold: anchor IoU to be positive / negative.
      rpn_batch_size_per_im, rpn_fg_fraction: anchors sampled per image for the RPN loss and
        the most positive fraction of them.
      max_num_instances: objects per image kept (more are dropped); the padded length.
      binding_prefix: the gin name the errors cite (`<binding_prefix>.padded_size`).

    Raises:
      ValueError: for a padded_size that is not a multiple of 16 or smaller than max_size, or a
        bad aug_scale.
    """
    self.padded_size = tuple(int(s) for s in padded_size)
    if any(s % OUTPUT_STRIDE for s in self.padded_size):
      raise ValueError(f"{binding_prefix}.padded_size must be multiples of {OUTPUT_STRIDE}, got "
                       f"{self.padded_size}.")
    if max_size > min(self.padded_size):
      raise ValueError(f"{binding_prefix}.max_size = {max_size} does not fit "
                       f"{binding_prefix}.padded_size = {self.padded_size}: bind a padded_size "
                       f"of at least ({max_size}, {max_size}) rounded up to {OUTPUT_STRIDE}.")
    if not 0 < aug_scale[0] <= aug_scale[1]:
      raise ValueError(f"{binding_prefix}.aug_scale must satisfy 0 < min <= max, got "
                       f"{aug_scale}.")
    self.anchors = anchors
    self.min_size = min_size
    self.max_size = max_size
    self.aug_scale = (float(aug_scale[0]), float(aug_scale[1]))
    self.aug_rand_hflip = aug_rand_hflip
    self.max_num_instances = max_num_instances
    self._labeler = anchor.RpnAnchorLabeler(rpn_match_threshold, rpn_unmatched_threshold,
                                            rpn_batch_size_per_im, rpn_fg_fraction)

  def resize(self, image, min_size):
    """uint8 [H, W, 3] -> (trunk input [padded_size, 3], image_info [4, 2])."""
    image = input_convention.to_trunk_input(image[None])[0]
    desired = keep_aspect_size(tf.shape(image)[:2], min_size, self.max_size)
    return preprocess_ops.resize_and_crop_image(image, desired, padded_size=self.padded_size)

  def _parse_train_data(self, data):
    keep = tf.logical_not(tf.cast(data["groundtruth_is_crowd"], tf.bool))
    boxes = tf.boolean_mask(data["groundtruth_boxes"], keep)
    classes = tf.boolean_mask(data["groundtruth_classes"], keep)
    image = data["image"]
    if self.aug_rand_hflip:
      image, boxes, _ = preprocess_ops.random_horizontal_flip(image, boxes)
    boxes = box_ops.denormalize_boxes(boxes, tf.shape(image)[:2])
    min_size = self.min_size
    if self.aug_scale != (1.0, 1.0):
      min_size = min_size * tf.random.uniform([], *self.aug_scale)
    image, image_info = self.resize(image, min_size)
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, image_info[2], image_info[1],
                                                 image_info[3])
    nonempty = box_ops.get_non_empty_box_indices(boxes)
    boxes, classes = tf.gather(boxes, nonempty), tf.gather(classes, nonempty)
    anchor_boxes = self.anchors(image_size=self.padded_size)
    score_targets, box_targets = self._labeler.label_anchors(
        anchor_boxes, boxes, tf.cast(classes[:, None], tf.float32))
    return image, {
        "image_info": image_info,
        "anchor_boxes": anchor_boxes,
        "rpn_score_targets": score_targets,
        "rpn_box_targets": box_targets,
        "gt_boxes": preprocess_ops.clip_or_pad_to_fixed_size(boxes, self.max_num_instances, -1),
        "gt_classes": preprocess_ops.clip_or_pad_to_fixed_size(classes, self.max_num_instances,
                                                               -1),
    }

  def _parse_eval_data(self, data):
    # Only the image and its image_info: the evaluation keeps the ground truth as it is.
    image, image_info = self.resize(data["image"], self.min_size)
    return image, {"image_info": image_info}


def second_stage_nms(boxes, scores, iou_threshold, max_per_class, max_total,
                     score_threshold=0.0):
  """The API's `batch_non_max_suppression`: per-class NMS, then the best `max_total`.

  Args:
    boxes: float [B, N, C, 4], the class-specific boxes of N RoIs (background removed), as
      official.vision's `DetectionGenerator(apply_nms=False)` decodes them.
    scores: float [B, N, C], their softmax scores.
    iou_threshold: NMS IoU within a class.
    max_per_class: detections kept per class and image.
    max_total: detections kept per image.
    score_threshold: scores at or below it are dropped.

  Returns:
    (boxes [B, max_total, 4], scores [B, max_total], classes int32 [B, max_total] (0-based),
    num_detections int32 [B]); entries past num_detections are zero padding.
  """
  boxes, scores, classes, count = tf.image.combined_non_max_suppression(
      boxes, scores, max_output_size_per_class=max_per_class, max_total_size=max_total,
      iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False,
      clip_boxes=False)
  return boxes, scores, tf.cast(classes, tf.int32), count


class SlimBlock4BoxHead(tf.keras.layers.Layer):
  """The RoI head: slim's ResNet-v2 block 4 and post-norm, pooled, then two linear layers.

  Takes RoIAlign crops [B, N, h, w, C] (official.vision's `DetectionHead` interface), max-pools
  them 2x2 (14x14 -> 7x7, the API's maxpool_kernel_size and maxpool_stride), runs
  `block4.Block4` (slim's block 4, stride 1, 2048 channels, and `postnorm`, under the variable
  scope `resnet_v2_<depth>` so the names match slim's checkpoints), averages over space and
  returns (class logits [B, N, num_classes], box deltas [B, N, 4 num_classes]).
  """

  def __init__(self, num_classes, depth=101, train_batch_norm=True, weight_decay=1e-4,
               batch_norm_decay=0.997, batch_norm_epsilon=1e-5, pool_crops=True, **kwargs):
    """Creates the head; variables are made on the first call.

    Args:
      num_classes: classes including the background (C + 1).
      depth: the trunk's depth: the scope name and block 4's units (`block4.BLOCK4_UNITS`).
      train_batch_norm: batch norm uses batch statistics (and updates its moving averages)
        when called with training=True; when False always the moving statistics.
      weight_decay: slim's L2 weight decay scale on block 4's weights.
      batch_norm_decay, batch_norm_epsilon: of block 4's and postnorm's batch norm (slim's
        checkpoints use 0.997 and 1e-5).
      pool_crops: max-pool the crops 2x2 first.
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.depth = depth
    self.pool_crops = pool_crops
    self.block4 = block4_lib.Block4(
        depth=depth, train_batch_norm=train_batch_norm, weight_decay=weight_decay,
        batch_norm_decay=batch_norm_decay, batch_norm_epsilon=batch_norm_epsilon)
    self.scope = self.block4.scope
    # Initializers as py-faster-rcnn's: N(0, 0.01) scores, N(0, 0.001) box deltas.
    self.classifier = tf.keras.layers.Dense(
        num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01),
        name="detection-scores")
    self.box_regressor = tf.keras.layers.Dense(
        num_classes * 4, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.001),
        name="detection-boxes")

  def call(self, inputs, training=None):
    _, num_rois, height, width, channels = inputs.get_shape().as_list()
    net = tf.reshape(inputs, [-1, height, width, channels])
    if self.pool_crops:
      net = tf.nn.max_pool2d(net, 2, 2, "VALID")
    net = self.block4(net, training=training)["pooled"]
    net = tf.reshape(net, [-1, num_rois, net.shape[-1]])
    return self.classifier(net), self.box_regressor(net)

  @property
  def slim_variables(self):
    """Block 4's and postnorm's variables, by slim name ('resnet_v2_101/block4/...')."""
    return self.block4.slim_variables


def load_box_head_checkpoint(head, path):
  """Assigns the head's block 4 and postnorm from a slim-style checkpoint, by name.

  Args:
    head: a built `SlimBlock4BoxHead`.
    path: a checkpoint prefix or directory holding `resnet_v2_<depth>/block4/...` and
      `resnet_v2_<depth>/postnorm/...`: slim's public `resnet_v2_101.ckpt`, or a checkpoint
      of the ImageNet-labels baseline (`gin/experiments/imagenet_supervised.gin`).

  Returns:
    Sorted list of the variable names loaded.

  Raises:
    FileNotFoundError: if `path` holds no checkpoint.
    ValueError: if the head is not built, or any of its block 4 / postnorm variables is
      missing from the checkpoint or has another shape (all offenders listed).
  """
  return block4_lib.load_checkpoint(
      head.slim_variables, path,
      what=f"box head's {head.scope}/block4 and {head.scope}/postnorm")


class Block3AsFeatureLevel(tf.keras.layers.Layer):
  """The detector's "backbone": the trunk has run already; block 3 becomes level '4'."""

  def call(self, inputs):
    return {LEVEL: inputs}
