"""PASCAL VOC 2007 detection (paper section 5): Faster R-CNN on the fine-tuned trunk.

The paper trains Faster R-CNN with the TF object detection API, "all other settings ... left at
their defaults" (`faster_rcnn_resnet101_voc07.config`) apart from multi-scale training
augmentation, on VOC 2007 trainval, and reports mean AP on VOC 2007 test. All weights are
fine-tuned. The detector is official.vision's `MaskRCNNModel` without a mask head, in the "C4"
form of Faster R-CNN on a ResNet, with the parts in `faster_rcnn.py`:

  * Features: block 3 of our trunk at output stride 16 (the API's first_stage_features_stride),
    or the evaluation's lasso combination of block 3's units (`Evaluation.representation`).
  * RPN: official.vision's `RPNHead` (3x3 conv of 512 filters with batch norm and ReLU, then
    per-anchor objectness and box deltas) on the API's grid anchors: scales 0.25, 0.5, 1, 2 of
    a 256-pixel base (64-512 pixels) x aspect ratios 0.5, 1, 2, every 16 pixels. NMS at IoU 0.7
    over all anchors keeps 300 proposals, in training and at test.
  * RoI head: RoIAlign of 14x14 crops of block 3, a 2x2 max pool to 7x7, then slim's ResNet-v2
    block 4 (stride 1) and its `postnorm` batch norm + ReLU, global average pooling and two
    linear layers (class scores and class-specific box deltas). "We transfer block 4 into the
    proposal categorization head ... except that we initialize the proposal categorization
    head randomly" for self-supervised trunks: block 4 starts random, or, for the ImageNet
    baseline, from slim's `resnet_v2_101.ckpt` (`block4_checkpoint`).
  * Test: softmax scores; per class NMS at IoU 0.6, at most 100 detections per class and 300
    per image (the API's second_stage_post_processing).
  * Training: 256 anchors per image for the RPN loss (half positive at most), 64 RoIs per image
    for the box head (a quarter foreground at most), losses as official.vision's Mask R-CNN
    task (RPN binary cross-entropy + Huber on box deltas; Fast R-CNN softmax cross-entropy +
    Huber), plus slim-style weight decay on the head's kernels (the loop adds the trunk's).
  * Batch norm: block 4, postnorm and the RPN's batch norm take the trunk's decay and epsilon
    (gin `Trunk.batch_norm_decay`, `Trunk.batch_norm_epsilon`); with `train_batch_norm` the
    trunk and block 4 use batch statistics in training.

Input: TFDS `voc/2007` ("train+validation" is VOC 2007 trainval; "test"). Images are resized
as the API's keep-aspect-ratio resizer, shorter side 600 and longer side at most 1024 (a 500 x
375 VOC image becomes 800 x 600), and padded to 1024 x 1024 so that every batch has one static
shape. Training flips horizontally and scales the shorter side by a random factor in
`aug_scale` (the paper's multi-scale augmentation, which it takes from Doersch et al. 2015);
the longer side stays at most 1024, so nothing is cropped. Classes become 1-based (0 is the
background in official.vision) and VOC's `is_difficult` becomes `is_crowd`: difficult objects
are left out of training (as py-faster-rcnn's `use_diff=False`) yet reach the test ground
truth, where the metric ignores them.

Optimization (`VocDetection.protocol`): the API's momentum 0.9, learning rate 1e-4 at batch 1
for 800K steps, x0.1 at 500K and 700K, gradients clipped to norm 10. We train at batch 8, so
the same 800K images take 100K steps at 8e-4 (the rate scaled linearly with the batch), x0.1
at 62.5% and 87.5% of training.

Where this departs from the API's defaults: the losses and their normalization are
official.vision's (the API weights localization x2 in both stages, on its own box encoding);
weight decay 1e-4 on the head (`weight_decay`; the API's ResNet has none); batch norm trains on
batch statistics (`train_batch_norm`; the API keeps it frozen at batch 1); anchors are centred
in their 16-pixel cells; ground-truth boxes join the proposals the RoIs are sampled from
(official.vision's `mix_gt_boxes`, as py-faster-rcnn).

Metrics (`DetectionMetrics`): per-image ground truth (original-image pixels, 0-based classes,
difficult flags) and detections, the latter mapped back from the network input's pixels to the
original image with `image_info` ((input + offset) / scale, clipped to the image), scored by
`detection_metrics.voc_metrics`: "map50_voc07" is the paper's number, "map75_voc07" its
stricter one (section 6.2).

`dataset="toy"` reads `mtssl_tf.data.toy_detection` scenes (128 x 128 pixels, 3 classes), with
which the demo and tests train a small detector on CPUs; their small input sizes and anchors
are bound in gin (gin/experiments/demo.gin).
"""

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf.data import toy_detection
from mtssl_tf.evals import base
from mtssl_tf.evals import detection_metrics
from mtssl_tf.evals import faster_rcnn
from official.vision.losses import maskrcnn_losses
from official.vision.modeling import maskrcnn_model
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.layers import detection_generator
from official.vision.modeling.layers import roi_aligner
from official.vision.modeling.layers import roi_generator
from official.vision.modeling.layers import roi_sampler
from official.vision.ops import preprocess_ops

LEVEL = faster_rcnn.LEVEL
# Feature and prediction keys start with the evaluation's name.
_PREFIX = "voc_detection/"
# Toy scenes drawn for training and for the test.
_TOY_TRAIN_SCENES = 256
_TOY_TEST_SCENES = 64


def _key(name):
  return _PREFIX + name


def voc_to_decoded(example):
  """A TFDS `voc/2007`-shaped example -> the decoded-example dict the parser reads.

  Classes become 1-based (0 is the background class in official.vision) and `is_difficult`
  becomes `is_crowd`. Two clean-ups are no-ops on real VOC data but make TFDS's mock data
  usable (it draws every object feature independently): the object features are cut to their
  common length, and each box's coordinates are put in order.

  Args:
    example: {"image": uint8 [H, W, 3], "objects": {"bbox": float [N, 4] normalized (ymin,
      xmin, ymax, xmax), "label": int [N] 0-based, "is_difficult": bool [N]}}.

  Returns:
    {"image", "groundtruth_boxes" (normalized [n, 4]), "groundtruth_classes" (int64 [n],
    1-based), "groundtruth_is_crowd" (bool [n])}.
  """
  objects = example["objects"]
  count = tf.reduce_min([tf.shape(objects["bbox"])[0], tf.shape(objects["label"])[0],
                         tf.shape(objects["is_difficult"])[0]])
  boxes = tf.reshape(tf.cast(objects["bbox"][:count], tf.float32), [-1, 4])
  boxes = tf.concat([tf.minimum(boxes[:, :2], boxes[:, 2:]),
                     tf.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
  return {
      "image": example["image"],
      "groundtruth_boxes": boxes,
      "groundtruth_classes": tf.cast(objects["label"][:count], tf.int64) + 1,
      "groundtruth_is_crowd": tf.cast(objects["is_difficult"][:count], tf.bool),
  }


def preprocess(example, training, parser):
  """A TFDS `voc/2007`-shaped example -> the evaluation's features.

  Args:
    example: see `voc_to_decoded`.
    training: augment and label anchors (True), or keep the test ground truth (False).
    parser: a `faster_rcnn.SingleLevelParser`; its padded_size and max_num_instances (M) size
      the features.

  Returns:
    Always 'voc_detection/image' (float32 [H, W, 3], trunk input; H, W = padded_size) and
    'voc_detection/image_info' (float32 [4, 2]: original size, resized size, scale (y, x),
    offset (y, x); input pixel = original pixel x scale - offset).
    Training adds the detector's targets, in its conventions: 'gt_boxes' (float32 [M, 4],
    input-image pixels, -1 padding), 'gt_classes' (int32 [M], 1..C, -1 padding),
    'rpn_score_targets' ([H/16, W/16, K]) and 'rpn_box_targets' ([H/16, W/16, 4K]).
    The test adds the ground truth in the dataset's conventions: 'boxes' (float32 [M, 4],
    original-image pixels, -1 padding), 'classes' (int32 [M], 0-based, -1 padding) and
    'difficult' (bool [M]). All keys are prefixed 'voc_detection/'.
  """
  data = voc_to_decoded(example)
  image, labels = parser.parse_fn(training)(data)
  features = {_key("image"): image, _key("image_info"): labels["image_info"]}
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
  """Faster R-CNN (C4) on block 3 at stride 16 with a slim block-4 RoI head; all fine-tuned.

  The constructor's defaults and `protocol` are the paper's: the TF object detection API's
  `faster_rcnn_resnet101_voc07.config` with multi-scale training, at batch 8 instead of the
  API's 1 (learning rate scaled linearly, steps divided by 8: the same 800K training images).
  """

  output_stride = faster_rcnn.OUTPUT_STRIDE
  fine_tunes_trunk = True
  protocol = dict(train_steps=100000, learning_rate=8e-4, momentum=0.9, decay_rate=0.1,
                  decay_at=(0.625, 0.875), clip_gradient_norm=10.0,
                  batch_norm_statistics="estimate")

  def __init__(self, trunk, dataset="voc/2007", train_split="train+validation",
               eval_split="test", num_classes=None, batch_size=8, min_size=600, max_size=1024,
               padded_size=(1024, 1024), aug_scale=(0.8, 1.25), aug_rand_hflip=True,
               anchor_base_size=256, anchor_scales=(0.25, 0.5, 1.0, 2.0),
               aspect_ratios=(0.5, 1.0, 2.0), rpn_batch_size_per_im=256, rpn_fg_fraction=0.5,
               rpn_match_threshold=0.7, rpn_unmatched_threshold=0.3, rpn_num_filters=512,
               rpn_nms_threshold=0.7, train_num_proposals=300, test_num_proposals=300,
               num_sampled_rois=64, foreground_fraction=0.25, crop_size=14,
               detection_score_threshold=0.0, detection_nms_threshold=0.6,
               max_detections_per_class=100, max_detections=300, max_num_instances=100,
               train_batch_norm=True, weight_decay=1e-4, block4_checkpoint=None,
               shuffle_buffer=256):
    """Creates the detector (variables are made on the first `model_fn` call).

    Args:
      trunk: the trunk (fine-tuned with the detector).
      dataset: "voc/2007" (TFDS, or any TFDS dataset with its features) or "toy"
        (`toy_detection.make_scenes`).
      train_split, eval_split: TFDS splits: VOC 2007 trainval ("train+validation") and test.
      num_classes: object classes without background; None: 20 for VOC, 3 for "toy".
      batch_size: global batch size (images).
      min_size, max_size: the keep-aspect-ratio resizer: shorter side min_size, unless the
        longer side would exceed max_size.
      padded_size: [height, width] of every network input: multiples of 16, at least max_size.
      aug_scale: (min, max) of the random factor on min_size in training (multi-scale
        augmentation); (1, 1) turns it off.
      aug_rand_hflip: random horizontal flips in training.
      anchor_base_size, anchor_scales, aspect_ratios: anchors of side anchor_base_size x
        scale (before the aspect ratio, width / height), all on the stride-16 level.
      rpn_batch_size_per_im, rpn_fg_fraction: anchors sampled per image for the RPN loss and
        the most positive fraction of them.
      rpn_match_threshold, rpn_unmatched_threshold: anchor IoU to be positive / negative.
      rpn_num_filters: filters of the RPN's 3x3 conv.
      rpn_nms_threshold: IoU of the NMS over all anchors' proposals.
      train_num_proposals, test_num_proposals: proposals kept after that NMS.
      num_sampled_rois, foreground_fraction: RoIs per image for the box head's loss and their
        most foreground fraction (IoU >= 0.5 foreground, below background).
      crop_size: RoIAlign crop side (14; the head max-pools it to 7).
      detection_score_threshold, detection_nms_threshold: test-time per-class score threshold
        and NMS IoU.
      max_detections_per_class, max_detections: detections kept per class and per image.
      max_num_instances: objects per image kept (VOC 2007 has at most 42).
      train_batch_norm: batch norm in the trunk and block 4 uses batch statistics in
        training; False keeps their moving statistics (gamma and beta still train). The RPN's
        own batch norm always follows the mode.
      weight_decay: slim-style L2 scale on the head's kernels (block 4, RPN, linear layers).
      block4_checkpoint: None (block 4 random, for self-supervised trunks) or a slim-style
        checkpoint holding resnet_v2_<depth>/block4 and postnorm (the ImageNet baseline:
        slim's resnet_v2_101.ckpt), loaded when the variables are made.
      shuffle_buffer: training examples in the shuffle buffer.

    Raises:
      ValueError: for a padded_size that is not a multiple of 16 or smaller than max_size, or a
        bad aug_scale.
    """
    super().__init__(trunk)
    toy = dataset == "toy"
    self.dataset = dataset
    self.train_split = train_split
    self.eval_split = eval_split
    self.num_classes = num_classes or (toy_detection.NUM_CLASSES if toy else len(
        detection_metrics.VOC_CLASSES))
    if toy:
      self.class_names = [f"{toy_detection.SHAPES[c % 3]}_{c}" for c in range(self.num_classes)]
    elif self.num_classes == len(detection_metrics.VOC_CLASSES):
      self.class_names = list(detection_metrics.VOC_CLASSES)
    else:
      self.class_names = None
    self.batch_size = batch_size
    self.shuffle_buffer = shuffle_buffer
    self.weight_decay = weight_decay
    self.block4_checkpoint = block4_checkpoint
    self.box_head_init = "random"
    self.max_detections_per_class = max_detections_per_class
    self.max_detections = max_detections
    self.detection_score_threshold = detection_score_threshold
    self.detection_nms_threshold = detection_nms_threshold
    self.anchors = faster_rcnn.single_level_anchor_generator(anchor_base_size, anchor_scales,
                                                             aspect_ratios)
    self.parser = faster_rcnn.SingleLevelParser(
        self.anchors, min_size=min_size, max_size=max_size, padded_size=padded_size,
        aug_scale=aug_scale, aug_rand_hflip=aug_rand_hflip,
        rpn_match_threshold=rpn_match_threshold,
        rpn_unmatched_threshold=rpn_unmatched_threshold,
        rpn_batch_size_per_im=rpn_batch_size_per_im, rpn_fg_fraction=rpn_fg_fraction,
        max_num_instances=max_num_instances)
    self.train_batch_norm = train_batch_norm
    self.box_head = faster_rcnn.SlimBlock4BoxHead(
        self.num_classes + 1, depth=trunk.depth, train_batch_norm=train_batch_norm,
        weight_decay=weight_decay, batch_norm_decay=trunk.batch_norm_decay,
        batch_norm_epsilon=trunk.batch_norm_epsilon, name="box_head")
    self.detector = maskrcnn_model.MaskRCNNModel(
        backbone=faster_rcnn.Block3AsFeatureLevel(name="block3_features"),
        decoder=None,
        rpn_head=dense_prediction_heads.RPNHead(
            min_level=int(LEVEL), max_level=int(LEVEL),
            num_anchors_per_location=len(anchor_scales) * len(aspect_ratios),
            num_convs=1, num_filters=rpn_num_filters, norm_momentum=trunk.batch_norm_decay,
            norm_epsilon=trunk.batch_norm_epsilon, name="rpn_head"),
        detection_head=self.box_head,
        # NMS over every anchor's proposal, no top-k cut before it (use_batched_nms: with
        # one level, pre_nms_top_k only bounds the NMS output, num_proposals).
        roi_generator=roi_generator.MultilevelROIGenerator(
            pre_nms_top_k=train_num_proposals, nms_iou_threshold=rpn_nms_threshold,
            num_proposals=train_num_proposals, test_pre_nms_top_k=test_num_proposals,
            test_nms_iou_threshold=rpn_nms_threshold, test_num_proposals=test_num_proposals,
            use_batched_nms=True),
        roi_sampler=roi_sampler.ROISampler(
            mix_gt_boxes=True, num_sampled_rois=num_sampled_rois,
            foreground_fraction=foreground_fraction, foreground_iou_threshold=0.5,
            background_iou_high_threshold=0.5, background_iou_low_threshold=0.0),
        roi_aligner=roi_aligner.MultilevelROIAligner(crop_size=crop_size, sample_offset=0.5),
        # Decodes and clips the class-specific boxes; `faster_rcnn.second_stage_nms` follows.
        detection_generator=detection_generator.DetectionGenerator(apply_nms=False),
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
    return toy_detection.cached_scenes(_TOY_TRAIN_SCENES if training else _TOY_TEST_SCENES,
                                       toy_detection.SIZE, self.num_classes,
                                       0 if training else 1)

  def preprocess_example(self, example, training):
    if self.dataset == "toy":
      example = toy_detection.to_voc_example(example)
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
    training = mode == heads.Mode.TRAIN
    images = features[_key("image")]
    block3 = self.representation(images, training and self.train_batch_norm)
    # Proposals and detections are clipped to the resized image (image_info[1]), as
    # official.vision's Mask R-CNN task does.
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
      boxes, scores, classes, count = faster_rcnn.second_stage_nms(
          outputs["decoded_boxes"], outputs["decoded_box_scores"],
          self.detection_nms_threshold, self.max_detections_per_class, self.max_detections,
          self.detection_score_threshold)
      return heads.Spec(predictions={
          _key("detection_boxes"): boxes,
          _key("detection_scores"): scores,
          _key("detection_classes"): classes,
          _key("num_detections"): count,
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
    return heads.Spec(loss=loss, predictions={_key("class_outputs"): outputs["class_outputs"]},
                      metrics=losses)

  def _maybe_load_box_head(self):
    """Loads block 4 from `block4_checkpoint` once, right after its variables exist."""
    if self.block4_checkpoint is None or self.box_head_init != "random":
      return
    with tf.init_scope():
      faster_rcnn.load_box_head_checkpoint(self.box_head, self.block4_checkpoint)
    self.box_head_init = f"checkpoint {self.block4_checkpoint}"

  def metrics_accumulator(self):
    return DetectionMetrics(self.num_classes, self.class_names,
                            notes={"box_head_init": self.box_head_init})
