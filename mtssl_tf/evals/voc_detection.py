"""PASCAL VOC 2007 detection (paper section 5): Faster R-CNN on the fine-tuned trunk.

The detector is official.vision's `MaskRCNNModel` without a mask head, in the "C4" form of
Faster R-CNN on a ResNet (He et al. 2016, as the paper: "we transfer all layers up through
block 3 from the pre-trained model into the trunk, and transfer block 4 into the proposal
categorization head, as is standard"):

  * Features: block 3 of our trunk at output stride 16 (or the evaluation's lasso combination of
    block 3's units, `Evaluation.representation`), one feature level, '4' (2^4 = 16). The trunk
    runs in `model_fn`; the detector's "backbone" only wraps block 3 as {'4': block3}.
  * RPN: official.vision's `RPNHead` (3x3 conv of 512 filters with batch norm and ReLU, then
    per-anchor objectness and box deltas) on that level.
  * Anchors: one level spanning several octaves, `anchor_generator.AnchorGenerator(
    anchor_sizes={'4': 16}, scales=anchor_sizes / 16, aspect_ratios, strides={'4': 16})`. The
    probe that preceded this file found that official.vision's own `anchor.Anchor` /
    `build_anchor_generator` cannot express this: their `num_scales` only adds steps 2^(i/n)
    *within* one octave per level, so a C4 model needs its own generator. The same generator
    labels RPN targets in the input pipeline (`_SingleLevelParser` relabels what the official
    `maskrcnn_input.Parser` computed with a dummy grid) and is passed to the model as
    `anchor_boxes` on every call (with `anchor_boxes=None` the model would build `anchor.Anchor`
    anchors, which differ from ours).
  * RoI head: RoIAlign of 14x14 crops of block 3, a 2x2 max pool to 7x7, then slim's ResNet-v2
    block 4 (stride 1; 3 units for ResNet-50/101/152, 2 for our 26-layer test trunk) and its
    `postnorm` batch norm + ReLU, global average pooling and two linear layers (class scores
    and class-specific box deltas). Block 4's variables carry slim's names
    (`resnet_v2_<depth>/block4/...`, `resnet_v2_<depth>/postnorm/...`), so the ImageNet
    baseline loads them from slim's `resnet_v2_101.ckpt` (`block4_checkpoint`); for
    self-supervised trunks block 4 starts random, as in the paper.
  * Batch norm: block 4, postnorm and the RPN's batch norm take the trunk's decay and epsilon
    (gin `Trunk.batch_norm_decay`, `Trunk.batch_norm_epsilon`); with `train_batch_norm` (the
    default, as the project's other fine-tuning evaluation) the trunk and block 4 use batch
    statistics in training.
  * Losses as official.vision's Mask R-CNN task: RPN binary cross-entropy on 256 sampled anchors
    per image (normalized by that number) + Huber (delta 1/9) on box deltas; Fast R-CNN softmax
    cross-entropy + Huber (delta 1) on the sampled RoIs; plus slim-style weight decay on the
    head's kernels (the loop adds the trunk's). All weights are fine-tuned.

Input: TFDS `voc/2007` through official.vision's `maskrcnn_input.Parser`: TFDS labels + 1
(0 is the background class there), `is_difficult` passed as `is_crowd`, so that difficult
objects are left out of training (as py-faster-rcnn's `use_diff=False`) yet reach the test
ground truth, where the metric ignores them. Training augmentation: random horizontal flip and
multi-scale jitter (the paper follows Doersch et al. 2015 in using multi-scale augmentation; the
Parser scales the image by a random factor in `aug_scale` and crops or pads to `output_size`).
Images are resized, keeping their aspect ratio, to fit `output_size` and padded to it, so every
tensor is static-shaped. `output_size` must be a multiple of 16 (the Parser pads it up to one,
and the anchor grid must match block 3's grid exactly).

Default `output_size` [512, 512]: VOC images are at most 500 pixels on their longer side, so
512 x 512 holds every image at about its own resolution (scale ~1.02) with one static shape.
The usual Faster R-CNN setting (shorter side 600, longer side at most 1000; TF object detection
API's VOC configs) enlarges VOC images ~1.6x; `output_size = [800, 800]` reproduces it for 4:3
images at 2.4x the compute. Anchors default to 32-512 pixels (5 octaves x 3 ratios): the
64-512 set of the 600-pixel setting, plus 32 for the smaller objects at our ~1.0 scale.

Metrics (`DetectionMetrics`): per-image ground truth (original-image pixels, 0-based classes,
difficult flags) and detections, the latter mapped back from the network input's pixels to the
original image with the Parser's `image_info` (add the crop offset, divide by the scale, clip
to the image), scored by `detection_metrics.voc_metrics`: "map50_voc07" is the paper's number.

A toy dataset (`dataset="toy"`, `toy_detection_scenes`) of textured shapes on textured
backgrounds, the class given by shape and hue, lets the demo and tests train a detector in a
few hundred CPU steps. Short runs must bind `Trunk.batch_norm_decay = 0.9` (the head and RPN
follow it): the test uses the moving statistics, which at 0.997 are still mostly their initial
values after a few hundred steps (a random depth-26 trunk then scores mAP@0.5 ~0 on the toy
test scenes after 300 steps). With 0.9, a random depth-26 trunk trained 150 steps of batch 4 at
128x128 (rpn_num_filters 128, num_sampled_rois 32, proposals 1000 -> 200 in training and
1000 -> 50 at test, learning rate 0.01) reached mAP@0.5 0.71 (VOC07 11-point), in 6 minutes
on 2 shared CPUs.
"""

import colorsys
import functools

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import block4 as block4_lib
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import base
from mtssl_tf.evals import detection_metrics
from official.vision.dataloaders import maskrcnn_input
from official.vision.losses import maskrcnn_losses
from official.vision.modeling import maskrcnn_model
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.layers import detection_generator
from official.vision.modeling.layers import roi_aligner
from official.vision.modeling.layers import roi_generator
from official.vision.modeling.layers import roi_sampler
from official.vision.ops import anchor
from official.vision.ops import anchor_generator
from official.vision.ops import preprocess_ops

OUTPUT_STRIDE = 16
# The one feature level, named as official.vision names levels (stride 2^4 = 16).
LEVEL = "4"
# Toy scenes: the shape of class c is c % 3 (rectangle, ellipse, triangle); its hue c / C.
TOY_SHAPES = ("rectangle", "ellipse", "triangle")
TOY_NUM_CLASSES = 3
# Feature and prediction keys start with the evaluation's name.
_PREFIX = "voc_detection/"


def _key(name):
  return _PREFIX + name


def single_level_anchor_generator(anchor_sizes, aspect_ratios):
  """Anchors of every size on the one stride-16 level.

  Args:
    anchor_sizes: anchor sides in input pixels (before the aspect ratio), e.g. (32, ..., 512).
    aspect_ratios: width / height of the anchors, e.g. (0.5, 1.0, 2.0).

  Returns:
    An `AnchorGenerator`; called with image_size (H, W) it gives {'4': [H/16, W/16, 4K]},
    K = len(anchor_sizes) x len(aspect_ratios) anchors (y0, x0, y1, x1) per location, sizes
    outer and ratios inner.
  """
  return anchor_generator.AnchorGenerator(
      anchor_sizes={LEVEL: float(OUTPUT_STRIDE)},
      scales=[float(s) / OUTPUT_STRIDE for s in anchor_sizes],
      aspect_ratios=[float(r) for r in aspect_ratios],
      strides={LEVEL: OUTPUT_STRIDE})


def voc_to_decoded(example):
  """A TFDS `voc/2007`-shaped example -> the dict official.vision's Parser reads.

  Classes become 1-based (0 is the background class in official.vision) and `is_difficult`
  becomes `is_crowd`. Two clean-ups are no-ops on real VOC data but make TFDS's mock data
  usable (it draws every object feature independently): the object features are cut to their
  common length, and each box's coordinates are put in order.

  Args:
    example: {"image": uint8 [H, W, 3], "objects": {"bbox": float [N, 4] normalized (ymin,
      xmin, ymax, xmax), "label": int [N] 0-based, "is_difficult": bool [N]}}.

  Returns:
    The Parser's decoded-tensor dict.
  """
  image = example["image"]
  objects = example["objects"]
  count = tf.reduce_min([tf.shape(objects["bbox"])[0], tf.shape(objects["label"])[0],
                         tf.shape(objects["is_difficult"])[0]])
  boxes = tf.reshape(tf.cast(objects["bbox"][:count], tf.float32), [-1, 4])
  boxes = tf.concat([tf.minimum(boxes[:, :2], boxes[:, 2:]),
                     tf.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  return {
      "source_id": tf.constant("0"),
      "image": image,
      "height": tf.shape(image, out_type=tf.int64)[0],
      "width": tf.shape(image, out_type=tf.int64)[1],
      "groundtruth_boxes": boxes,
      "groundtruth_classes": tf.cast(objects["label"][:count], tf.int64) + 1,
      "groundtruth_is_crowd": tf.cast(objects["is_difficult"][:count], tf.bool),
      "groundtruth_area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * height *
                          width,
  }


def _parser_to_trunk_input(image):
  """The Parser's normalized image ((x / 255 - mean) / std) -> our trunk input (x - MEAN_RGB).

  The Parser pads with zeros, i.e. its mean; that becomes a near-zero grey in ours.
  """
  std = tf.constant(preprocess_ops.STDDEV_RGB, image.dtype)
  offset = tf.constant(preprocess_ops.MEAN_RGB, image.dtype) - tf.constant(
      input_convention.MEAN_RGB, image.dtype)
  return image * std + offset


class _SingleLevelParser(maskrcnn_input.Parser):
  """official.vision's Mask R-CNN Parser with our single-level, multi-octave anchors.

  The base class labels RPN targets with `anchor.build_anchor_generator`, which cannot span
  octaves on one level: we let it label a dummy one-anchor grid (cheap) and relabel with ours.
  """

  def __init__(self, anchors, **kwargs):
    super().__init__(min_level=int(LEVEL), max_level=int(LEVEL), num_scales=1,
                     aspect_ratios=[1.0], anchor_size=1.0, include_mask=False, **kwargs)
    self._anchors = anchors

  @property
  def max_num_instances(self):
    """Objects per image after padding (more are dropped)."""
    return self._max_num_instances

  def _parse_train_data(self, data):
    image, labels = super()._parse_train_data(data)
    height, width, _ = image.get_shape().as_list()
    anchor_boxes = self._anchors(image_size=(height, width))
    valid = labels["gt_classes"] > 0  # padding is -1
    labeler = anchor.RpnAnchorLabeler(self._rpn_match_threshold, self._rpn_unmatched_threshold,
                                      self._rpn_batch_size_per_im, self._rpn_fg_fraction)
    score_targets, box_targets = labeler.label_anchors(
        anchor_boxes, tf.boolean_mask(labels["gt_boxes"], valid),
        tf.cast(tf.boolean_mask(labels["gt_classes"], valid)[:, None], tf.float32))
    labels.update(anchor_boxes=anchor_boxes, rpn_score_targets=score_targets,
                  rpn_box_targets=box_targets)
    return image, labels

  def _parse_eval_data(self, data):
    # Only the image and its image_info: the ground truth is taken from `data` directly.
    image = preprocess_ops.normalize_image(data["image"])
    image, image_info = preprocess_ops.resize_and_crop_image(
        image, self._output_size,
        padded_size=preprocess_ops.compute_padded_size(self._output_size, OUTPUT_STRIDE))
    return image, {"image_info": image_info}


def preprocess(example, training, parser):
  """A TFDS `voc/2007`-shaped example -> the evaluation's features.

  Args:
    example: see `voc_to_decoded`.
    training: augment and label anchors (True), or keep the test ground truth (False).
    parser: a `_SingleLevelParser`; its output_size and max_num_instances (M) size the
      features.

  Returns:
    Always 'voc_detection/image' (float32 [H, W, 3], trunk input; H, W = output_size) and
    'voc_detection/image_info' (float32 [4, 2], the Parser's: original size, output_size,
    scale (y, x) and crop offset (y, x); input pixel = original pixel x scale - offset).
    Training adds the detector's targets, in its conventions: 'gt_boxes' (float32 [M, 4],
    input-image pixels, -1 padding), 'gt_classes' (int32 [M], 1..C, -1 padding),
    'rpn_score_targets' ([H/16, W/16, K]) and 'rpn_box_targets' ([H/16, W/16, 4K]).
    The test adds the ground truth in the dataset's conventions: 'boxes' (float32 [M, 4],
    original-image pixels, -1 padding), 'classes' (int32 [M], 0-based, -1 padding) and
    'difficult' (bool [M]). All keys are prefixed 'voc_detection/'.
  """
  data = voc_to_decoded(example)
  image, labels = parser.parse_fn(training)(data)
  features = {_key("image"): _parser_to_trunk_input(image),
              _key("image_info"): labels["image_info"]}
  if training:
    features.update({
        _key("gt_boxes"): labels["gt_boxes"],
        _key("gt_classes"): tf.cast(labels["gt_classes"], tf.int32),
        _key("rpn_score_targets"): labels["rpn_score_targets"][LEVEL],
        _key("rpn_box_targets"): labels["rpn_box_targets"][LEVEL],
    })
  else:
    size = tf.cast(tf.shape(data["image"])[:2], tf.float32)
    pad = lambda x, value: preprocess_ops.clip_or_pad_to_fixed_size(
        x, parser.max_num_instances, value)
    features.update({
        _key("boxes"): pad(data["groundtruth_boxes"] * tf.tile(size, [2]), -1),
        _key("classes"): pad(tf.cast(data["groundtruth_classes"], tf.int32) - 1, -1),
        _key("difficult"): pad(tf.cast(data["groundtruth_is_crowd"], tf.int32), 0) > 0,
    })
  return features


def _hsv_color(hue, saturation, value):
  return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32) * 255.0


def _stripes(rng, yy, xx, amplitude):
  angle = rng.uniform(0, np.pi)
  period = rng.uniform(5.0, 12.0)
  phase = (yy * np.sin(angle) + xx * np.cos(angle)) * 2 * np.pi / period
  return amplitude * np.sin(phase)[..., None]


def _shape_mask(shape, yy, xx, top, left, height, width):
  inside_y = (yy >= top) & (yy < top + height)
  inside_x = (xx >= left) & (xx < left + width)
  if shape == "rectangle":
    return inside_y & inside_x
  cy, cx = top + height / 2.0, left + width / 2.0
  if shape == "ellipse":
    return ((yy + 0.5 - cy) / (height / 2.0))**2 + ((xx + 0.5 - cx) / (width / 2.0))**2 <= 1.0
  # An upright isosceles triangle: apex at the top centre, base the bottom edge.
  rel = (yy + 0.5 - top) / height
  return inside_y & (np.abs(xx + 0.5 - cx) <= rel * width / 2.0)


def toy_detection_scenes(num_scenes=256, size=(128, 128), num_classes=TOY_NUM_CLASSES,
                         max_objects=3, seed=0):
  """Toy detection scenes: textured shapes on textured backgrounds, with their boxes.

  Class c is drawn as shape `TOY_SHAPES[c % 3]` in hue c / num_classes (jittered by +-0.03,
  saturation 0.6-1, value 0.6-1), with a stripe texture of its own; the background is a
  low-saturation gradient with stripes and pixel noise. Each scene has 1 to `max_objects`
  objects, 20-50% of the image height, that never overlap (placements that would are redrawn,
  and dropped after 20 tries), so every box is fully visible. Deterministic given the seed.

  Args:
    num_scenes: number of scenes.
    size: (height, width) in pixels.
    num_classes: number of object classes.
    max_objects: most objects per scene.
    seed: random seed.

  Returns:
    dict of numpy arrays: "image" uint8 [N, H, W, 3]; "bbox" float32 [N, max_objects, 4],
    normalized (ymin, xmin, ymax, xmax) like TFDS's, the continuous extent of the drawn shape
    (rows r0..r1 give ymin = r0 / H, ymax = (r1 + 1) / H), zeros for absent objects; "label"
    int64 [N, max_objects] (-1 for absent objects); "num_objects" int32 [N].
  """
  rng = np.random.RandomState(seed)
  height, width = size
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  images = np.zeros([num_scenes, height, width, 3], np.uint8)
  boxes = np.zeros([num_scenes, max_objects, 4], np.float32)
  labels = np.full([num_scenes, max_objects], -1, np.int64)
  counts = np.zeros([num_scenes], np.int32)
  fy, fx = yy[..., None] / max(height - 1, 1), xx[..., None] / max(width - 1, 1)
  for n in range(num_scenes):
    # Background: grey corners tinted slightly, blended bilinearly, with stripes.
    corners = rng.uniform(70.0, 190.0, [4, 1]) + rng.uniform(-25.0, 25.0, [4, 3])
    image = ((corners[0] * (1 - fx) + corners[1] * fx) * (1 - fy) +
             (corners[2] * (1 - fx) + corners[3] * fx) * fy)
    image = image + _stripes(rng, yy, xx, 12.0)
    placed = []
    for _ in range(rng.randint(1, max_objects + 1)):
      for _ in range(20):
        box_h = rng.uniform(0.2, 0.5) * height
        box_w = min(box_h * rng.uniform(0.7, 1.4), 0.6 * width)
        top = rng.uniform(0, height - box_h)
        left = rng.uniform(0, width - box_w)
        # One pixel of margin between objects so that drawn shapes cannot touch.
        if all(top > b[2] + 1 or top + box_h < b[0] - 1 or left > b[3] + 1 or
               left + box_w < b[1] - 1 for b in placed):
          break
      else:
        continue
      label = rng.randint(num_classes)
      mask = _shape_mask(TOY_SHAPES[label % len(TOY_SHAPES)], yy, xx, top, left, box_h, box_w)
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      if not rows.size:
        continue
      color = _hsv_color(label / num_classes + rng.uniform(-0.03, 0.03), rng.uniform(0.6, 1.0),
                         rng.uniform(0.6, 1.0))
      image = np.where(mask[..., None], color + _stripes(rng, yy, xx, 20.0), image)
      k = len(placed)
      placed.append((top, left, top + box_h, left + box_w))
      boxes[n, k] = (rows[0] / height, cols[0] / width, (rows[-1] + 1) / height,
                     (cols[-1] + 1) / width)
      labels[n, k] = label
    counts[n] = len(placed)
    image = image + rng.normal(0.0, 6.0, image.shape)
    images[n] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return {"image": images, "bbox": boxes, "label": labels, "num_objects": counts}


@functools.lru_cache(maxsize=4)
def _cached_toy_scenes(num_scenes, size, num_classes, seed):
  # input_fn is called several times per evaluation (spec, train, test): draw each set once.
  return toy_detection_scenes(num_scenes=num_scenes, size=size, num_classes=num_classes,
                              seed=seed)


def _toy_example(scene):
  """One `toy_detection_scenes` row -> a TFDS `voc/2007`-shaped example."""
  count = scene["num_objects"]
  return {"image": scene["image"],
          "objects": {"bbox": scene["bbox"][:count], "label": scene["label"][:count],
                      "is_difficult": tf.zeros([count], tf.bool)}}


class SlimBlock4BoxHead(tf.keras.layers.Layer):
  """The RoI head: slim's ResNet-v2 block 4 and post-norm, pooled, then two linear layers.

  Takes RoIAlign crops [B, N, h, w, C] (official.vision's `DetectionHead` interface), max-pools
  them 2x2 (14x14 -> 7x7, as the TF object detection API's ResNet Faster R-CNN), runs
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


class _Block3AsFeatureLevel(tf.keras.layers.Layer):
  """The detector's "backbone": the trunk has run already; block 3 becomes level '4'."""

  def call(self, inputs):
    return {LEVEL: inputs}


class DetectionMetrics(base.MetricsAccumulator):
  """VOC AP over a whole split, from the evaluation's feature and prediction dicts.

  `update` keeps, per image, the ground truth ('boxes', 'classes', 'difficult' features, with
  the padding dropped) and the detections: the first 'num_detections' of 'detection_boxes',
  mapped from the network input's pixels to the original image's with 'image_info'
  (original = (input + offset) / scale, clipped to the image), with their classes and scores.
  `result` is `detection_metrics.voc_metrics` of them.
  """

  def __init__(self, num_classes, class_names=None, notes=None):
    """Creates an empty accumulator.

    Args:
      num_classes: object classes (without background).
      class_names: their names (default class_0, ...).
      notes: extra (JSON-ready) entries for the result, e.g. how the box head started.
    """
    self.num_classes = num_classes
    self.class_names = class_names
    self.notes = dict(notes or {})
    self.ground_truth = []
    self.detections = []

  def update(self, features, predictions):
    info = np.asarray(features[_key("image_info")], np.float64)
    gt_boxes = np.asarray(features[_key("boxes")], np.float64)
    gt_classes = np.asarray(features[_key("classes")])
    difficult = np.asarray(features[_key("difficult")], bool)
    boxes = np.asarray(predictions[_key("detection_boxes")], np.float64)
    scores = np.asarray(predictions[_key("detection_scores")], np.float64)
    classes = np.asarray(predictions[_key("detection_classes")])
    counts = np.asarray(predictions[_key("num_detections")])
    for i in range(len(info)):
      valid = gt_classes[i] >= 0
      self.ground_truth.append({"boxes": gt_boxes[i][valid], "classes": gt_classes[i][valid],
                                "difficult": difficult[i][valid]})
      n = int(counts[i])
      original = (boxes[i, :n] + np.tile(info[i, 3], 2)) / np.tile(info[i, 2], 2)
      original = np.clip(original, 0.0, np.tile(info[i, 0], 2))
      keep = (classes[i, :n] >= 0) & (classes[i, :n] < self.num_classes)
      self.detections.append({"boxes": original[keep], "classes": classes[i, :n][keep],
                              "scores": scores[i, :n][keep]})

  def result(self):
    metrics = detection_metrics.voc_metrics(self.ground_truth, self.detections,
                                            self.num_classes, self.class_names)
    metrics.update(self.notes)
    return metrics


@base.register("voc_detection")
@gin.configurable("voc_detection")
class VocDetection(base.Evaluation):
  """Faster R-CNN (C4) on block 3 at stride 16 with a slim block-4 RoI head; all fine-tuned."""

  output_stride = OUTPUT_STRIDE
  fine_tunes_trunk = True

  def __init__(self, trunk, dataset="voc/2007", train_split="trainval", eval_split="test",
               num_classes=None, batch_size=8, output_size=None, aug_scale=(0.8, 1.25),
               aug_rand_hflip=True, anchor_sizes=(32, 64, 128, 256, 512),
               aspect_ratios=(0.5, 1.0, 2.0), rpn_batch_size_per_im=256, rpn_fg_fraction=0.5,
               rpn_match_threshold=0.7, rpn_unmatched_threshold=0.3, rpn_num_filters=512,
               train_pre_nms_top_k=12000, train_num_proposals=2000, test_pre_nms_top_k=6000,
               test_num_proposals=300, num_sampled_rois=128, foreground_fraction=0.25,
               crop_size=14, detection_score_threshold=0.05, detection_nms_threshold=0.5,
               max_detections=100, nms_version="batched", max_num_instances=100,
               train_batch_norm=True, weight_decay=1e-4, block4_checkpoint=None,
               shuffle_buffer=256):
    """Creates the detector (variables are made on the first `model_fn` call).

    Args:
      trunk: the trunk (fine-tuned with the detector).
      dataset: "voc/2007" (TFDS, or any TFDS dataset with its features) or "toy"
        (`toy_detection_scenes`).
      train_split, eval_split: TFDS splits (VOC 2007 trainval and test, as the paper).
      num_classes: object classes without background; None: 20 for VOC, 3 for "toy".
      batch_size: global batch size (images).
      output_size: [height, width] of the network input, multiples of 16; None: [512, 512]
        for VOC (see the module docstring), [128, 128] for "toy".
      aug_scale: (min, max) random scale of the training image relative to output_size (the
        multi-scale augmentation); (1, 1) turns it off.
      aug_rand_hflip: random horizontal flips in training.
      anchor_sizes: anchor sides in input pixels, all on the stride-16 level.
      aspect_ratios: anchor width / height.
      rpn_batch_size_per_im, rpn_fg_fraction: anchors sampled per image for the RPN loss and
        the most positive fraction of them.
      rpn_match_threshold, rpn_unmatched_threshold: anchor IoU to be positive / negative.
      rpn_num_filters: filters of the RPN's 3x3 conv.
      train_pre_nms_top_k, train_num_proposals: RPN proposals kept before / after NMS (IoU
        0.7) in training (py-faster-rcnn's 12000 / 2000)...
      test_pre_nms_top_k, test_num_proposals: ... and at test (6000 / 300).
      num_sampled_rois, foreground_fraction: RoIs per image for the Fast R-CNN loss and their
        most foreground fraction (IoU >= 0.5 foreground, below background).
      crop_size: RoIAlign crop side (14; the head max-pools it to 7).
      detection_score_threshold, detection_nms_threshold, max_detections: test-time
        per-class score threshold, per-class NMS IoU and detections kept per image.
      nms_version: the test-time NMS of official.vision's `DetectionGenerator`: "batched"
        (`tf.image.combined_non_max_suppression`, per-class NMS as py-faster-rcnn; a much
        smaller graph than "v2", which TPUs need).
      max_num_instances: objects per image kept (VOC 2007 has at most 42).
      train_batch_norm: batch norm in the trunk and block 4 uses batch statistics in
        training; False keeps their moving statistics (as the TF object detection API does
        for batches of one or two images; gamma and beta still train). The RPN's own batch
        norm always follows the mode.
      weight_decay: slim-style L2 scale on the head's kernels (block 4, RPN, linear layers).
      block4_checkpoint: None (block 4 random, for self-supervised trunks) or a slim-style
        checkpoint holding resnet_v2_<depth>/block4 and postnorm (the ImageNet baseline:
        slim's resnet_v2_101.ckpt), loaded when the variables are made.
      shuffle_buffer: training examples in the shuffle buffer.

    Raises:
      ValueError: for an output_size that is not a multiple of 16, or a bad aug_scale.
    """
    super().__init__(trunk)
    toy = dataset == "toy"
    self.dataset = dataset
    self.train_split = train_split
    self.eval_split = eval_split
    self.num_classes = num_classes or (TOY_NUM_CLASSES if toy else len(
        detection_metrics.VOC_CLASSES))
    if toy:
      self.class_names = [f"{TOY_SHAPES[c % 3]}_{c}" for c in range(self.num_classes)]
    elif self.num_classes == len(detection_metrics.VOC_CLASSES):
      self.class_names = list(detection_metrics.VOC_CLASSES)
    else:
      self.class_names = None
    self.batch_size = batch_size
    self.output_size = tuple(output_size or ((128, 128) if toy else (512, 512)))
    if any(s % OUTPUT_STRIDE for s in self.output_size):
      raise ValueError(f"voc_detection output_size must be multiples of {OUTPUT_STRIDE}, got "
                       f"{self.output_size} (gin: voc_detection.output_size).")
    if not 0 < aug_scale[0] <= 1.0 <= aug_scale[1]:
      raise ValueError(f"voc_detection aug_scale must satisfy 0 < min <= 1 <= max, got "
                       f"{aug_scale}.")
    self.shuffle_buffer = shuffle_buffer
    self.weight_decay = weight_decay
    self.rpn_batch_size_per_im = rpn_batch_size_per_im
    self.block4_checkpoint = block4_checkpoint
    self.box_head_init = "random"
    self.anchors = single_level_anchor_generator(anchor_sizes, aspect_ratios)
    self.parser = _SingleLevelParser(
        self.anchors, output_size=list(self.output_size),
        rpn_match_threshold=rpn_match_threshold,
        rpn_unmatched_threshold=rpn_unmatched_threshold,
        rpn_batch_size_per_im=rpn_batch_size_per_im, rpn_fg_fraction=rpn_fg_fraction,
        aug_rand_hflip=aug_rand_hflip, aug_scale_min=aug_scale[0], aug_scale_max=aug_scale[1],
        skip_crowd_during_training=True, max_num_instances=max_num_instances)
    self.train_batch_norm = train_batch_norm
    self.box_head = SlimBlock4BoxHead(self.num_classes + 1, depth=trunk.depth,
                                      train_batch_norm=train_batch_norm,
                                      weight_decay=weight_decay,
                                      batch_norm_decay=trunk.batch_norm_decay,
                                      batch_norm_epsilon=trunk.batch_norm_epsilon,
                                      name="box_head")
    self.detector = maskrcnn_model.MaskRCNNModel(
        backbone=_Block3AsFeatureLevel(name="block3_features"),
        decoder=None,
        rpn_head=dense_prediction_heads.RPNHead(
            min_level=int(LEVEL), max_level=int(LEVEL),
            num_anchors_per_location=len(anchor_sizes) * len(aspect_ratios),
            num_convs=1, num_filters=rpn_num_filters, norm_momentum=trunk.batch_norm_decay,
            norm_epsilon=trunk.batch_norm_epsilon, name="rpn_head"),
        detection_head=self.box_head,
        roi_generator=roi_generator.MultilevelROIGenerator(
            # With one level, the per-level numbers are the totals.
            pre_nms_top_k=train_pre_nms_top_k, nms_iou_threshold=0.7,
            num_proposals=train_num_proposals, test_pre_nms_top_k=test_pre_nms_top_k,
            test_nms_iou_threshold=0.7, test_num_proposals=test_num_proposals),
        roi_sampler=roi_sampler.ROISampler(
            mix_gt_boxes=True, num_sampled_rois=num_sampled_rois,
            foreground_fraction=foreground_fraction, foreground_iou_threshold=0.5,
            background_iou_high_threshold=0.5, background_iou_low_threshold=0.0),
        roi_aligner=roi_aligner.MultilevelROIAligner(crop_size=crop_size, sample_offset=0.5),
        detection_generator=detection_generator.DetectionGenerator(
            apply_nms=True, pre_nms_top_k=5000,
            pre_nms_score_threshold=detection_score_threshold,
            nms_iou_threshold=detection_nms_threshold, max_num_detections=max_detections,
            nms_version=nms_version),
        class_agnostic_bbox_pred=False,
        # Only used for anchor_boxes=None, which never happens: we always pass ours.
        min_level=int(LEVEL), max_level=int(LEVEL), num_scales=1,
        aspect_ratios=list(aspect_ratios), anchor_size=1.0,
        name="faster_rcnn")
    self._rpn_score_loss = maskrcnn_losses.RpnScoreLoss(rpn_batch_size_per_im)
    self._rpn_box_loss = maskrcnn_losses.RpnBoxLoss(huber_loss_delta=1.0 / 9.0)
    self._frcnn_class_loss = maskrcnn_losses.FastrcnnClassLoss()
    self._frcnn_box_loss = maskrcnn_losses.FastrcnnBoxLoss(huber_loss_delta=1.0,
                                                           class_agnostic_bbox_pred=False)

  def toy_data(self, training):
    return _cached_toy_scenes(256 if training else 64, self.output_size, self.num_classes,
                              0 if training else 1)

  def preprocess_example(self, example, training):
    if self.dataset == "toy":
      example = _toy_example(example)
    return preprocess(example, training, self.parser)

  def anchor_boxes(self, images):
    """{'4': [B, H/16, W/16, 4K]} anchors for a static-sized batch of network inputs."""
    height, width = images.shape[1:3]
    boxes = self.anchors(image_size=(height, width))[LEVEL]
    return {LEVEL: tf.tile(boxes[None], [tf.shape(images)[0], 1, 1, 1])}

  def regularization_loss(self):
    """slim-style weight decay on the head's kernels: sum of weight_decay x ||w||^2 / 2."""
    kernels = [v for v in self.head_variables
               if v.name.split(":")[0].endswith(("/weights", "/kernel"))]
    if not kernels:
      return tf.constant(0.0)
    return self.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in kernels])

  def model_fn(self, features, mode):
    training = mode == base.Mode.TRAIN
    images = features[_key("image")]
    block3 = self.representation(images, training and self.train_batch_norm)
    # image_info[1] is output_size (the Parser's convention, as official.vision's Mask R-CNN
    # task uses it): proposals and detections are clipped to the whole padded input.
    image_shape = features[_key("image_info")][:, 1, :]
    targets = {}
    if training:
      targets = {"gt_boxes": features[_key("gt_boxes")],
                 "gt_classes": features[_key("gt_classes")]}
    outputs = self.detector(block3, image_shape=image_shape,
                            anchor_boxes=self.anchor_boxes(images), training=training,
                            **targets)
    self._maybe_load_box_head()
    if not training:
      return base.Spec(predictions={
          _key("detection_boxes"): outputs["detection_boxes"],
          _key("detection_scores"): outputs["detection_scores"],
          # The detector's classes are 1..C (0 is the background): back to 0-based.
          _key("detection_classes"): outputs["detection_classes"] - 1,
          _key("num_detections"): outputs["num_detections"],
      })
    losses = {
        "rpn_score_loss": tf.reduce_mean(self._rpn_score_loss(
            outputs["rpn_scores"], {LEVEL: features[_key("rpn_score_targets")]})),
        "rpn_box_loss": tf.reduce_mean(self._rpn_box_loss(
            outputs["rpn_boxes"], {LEVEL: features[_key("rpn_box_targets")]})),
        "frcnn_class_loss": tf.reduce_mean(self._frcnn_class_loss(
            outputs["class_outputs"], outputs["class_targets"])),
        "frcnn_box_loss": tf.reduce_mean(self._frcnn_box_loss(
            outputs["box_outputs"], outputs["class_targets"], outputs["box_targets"])),
    }
    loss = tf.add_n(list(losses.values())) + self.regularization_loss()
    class_targets = tf.cast(outputs["class_targets"], tf.int32)
    predicted = tf.argmax(outputs["class_outputs"], -1, output_type=tf.int32)
    foreground = tf.cast(class_targets > 0, tf.float32)
    losses["roi_accuracy"] = tf.reduce_mean(tf.cast(predicted == class_targets, tf.float32))
    losses["roi_foreground_fraction"] = tf.reduce_mean(foreground)
    return base.Spec(loss=loss, predictions={_key("class_outputs"): outputs["class_outputs"]},
                     metrics=losses)

  def _maybe_load_box_head(self):
    """Loads block 4 from `block4_checkpoint` once, right after its variables exist."""
    if self.block4_checkpoint is None or self.box_head_init != "random":
      return
    with tf.init_scope():
      load_box_head_checkpoint(self.box_head, self.block4_checkpoint)
    self.box_head_init = f"checkpoint {self.block4_checkpoint}"

  def metrics_accumulator(self):
    return DetectionMetrics(self.num_classes, self.class_names,
                            notes={"box_head_init": self.box_head_init})
