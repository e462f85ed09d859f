"""Tests of the VOC detection evaluation: protocol defaults, input, metrics, end to end."""

import inspect
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import detection_metrics
from mtssl_tf.evals import faster_rcnn
from mtssl_tf.evals import voc_detection
from tests.conftest import save_tf1_checkpoint
from tests.conftest import untraced_steps

# Small detector settings for CPU tests (gin bindings in the evaluation's scope).
_SMALL = {
    "batch_size": 2, "min_size": 128, "max_size": 128, "padded_size": (128, 128),
    "shuffle_buffer": 4, "rpn_num_filters": 32, "num_sampled_rois": 8,
    "train_num_proposals": 32, "test_num_proposals": 16,
}


def _image_info(original, scale, offset=(0.0, 0.0)):
  """The parser's image_info: original size, resized size, (y, x) scale, (y, x) offset."""
  original = np.asarray(original, np.float32)
  resized = np.round(original * scale)
  return np.stack([original, resized, resized / original, np.asarray(offset, np.float32)])


def test_accumulator_maps_boxes_back_to_the_original_image():
  # Two images; ground truth in original pixels, one difficult box, -1 padding.
  gt_boxes = np.full([2, 4, 4], -1.0, np.float32)
  gt_boxes[0, :3] = [[10, 20, 110, 220], [50, 60, 90, 100], [0, 0, 30, 30]]
  gt_boxes[1, :1] = [[100, 50, 300, 250]]
  gt_classes = np.array([[0, 14, 6, -1], [19, -1, -1, -1]], np.int32)
  difficult = np.array([[False, False, True, False], [False] * 4])
  info = np.stack([_image_info([375, 500], 1.024), _image_info([400, 300], 0.5, (7, 3))])
  # Detections: the non-difficult ground truth in the network input's pixels
  # (input = original x scale - offset), as the detector outputs them, then padding.
  det_boxes = np.zeros([2, 5, 4], np.float32)
  for i, count in ((0, 2), (1, 1)):
    scale, offset = np.tile(info[i, 2], 2), np.tile(info[i, 3], 2)
    det_boxes[i, :count] = gt_boxes[i, :count] * scale - offset
  features = {"voc_detection/image_info": info, "voc_detection/boxes": gt_boxes,
              "voc_detection/classes": gt_classes, "voc_detection/difficult": difficult}
  predictions = {
      "voc_detection/detection_boxes": det_boxes,
      "voc_detection/detection_scores": np.array([[0.9, 0.8, 0, 0, 0], [0.7, 0, 0, 0, 0]]),
      "voc_detection/detection_classes": np.array([[0, 14, -1, -1, -1], [19, -1, -1, -1, -1]]),
      "voc_detection/num_detections": np.array([2, 1]),
  }
  accumulator = voc_detection.DetectionMetrics(20, detection_metrics.VOC_CLASSES,
                                               notes={"box_head_init": "random"})
  accumulator.update(features, predictions)
  result = accumulator.result()
  assert result["num_images"] == 2 and result["box_head_init"] == "random"
  for key in ("map50_voc07", "map50_area", "map75_voc07", "map75_area"):
    assert result[key] == pytest.approx(1.0), key
  assert result["per_class"]["aeroplane"]["num_positives"] == 1
  assert result["per_class"]["cow"]["num_positives"] == 0  # only a difficult box
  assert result["per_class"]["cow"]["ap50_voc07"] is None
  np.testing.assert_allclose(accumulator.detections[1]["boxes"], gt_boxes[1, :1], atol=1e-3)
  # A box 40 input pixels (80 original pixels) lower misses.
  shifted = dict(predictions)
  shifted["voc_detection/detection_boxes"] = det_boxes.copy()
  shifted["voc_detection/detection_boxes"][1, 0] += 40
  accumulator = voc_detection.DetectionMetrics(20, detection_metrics.VOC_CLASSES)
  accumulator.update(features, shifted)
  assert accumulator.result()["per_class"]["tvmonitor"]["ap50_voc07"] == 0.0


# The TF object detection API's faster_rcnn_resnet101_voc07.config (and the multi-scale
# augmentation the paper adds), as constructor defaults.
_API_DEFAULTS = {
    "dataset": "voc/2007", "train_split": "train+validation", "eval_split": "test",
    "num_classes": None, "batch_size": 8,
    "min_size": 600, "max_size": 1024, "padded_size": (1024, 1024), "aug_rand_hflip": True,
    "aug_scale": (0.8, 1.25),
    "anchor_base_size": 256, "anchor_scales": (0.25, 0.5, 1.0, 2.0),
    "aspect_ratios": (0.5, 1.0, 2.0), "rpn_batch_size_per_im": 256, "rpn_fg_fraction": 0.5,
    "rpn_match_threshold": 0.7, "rpn_unmatched_threshold": 0.3, "rpn_nms_threshold": 0.7,
    "train_num_proposals": 300, "test_num_proposals": 300, "num_sampled_rois": 64,
    "foreground_fraction": 0.25, "crop_size": 14, "detection_score_threshold": 0.0,
    "detection_nms_threshold": 0.6, "max_detections_per_class": 100, "max_detections": 300,
}


def test_defaults_are_the_api_voc07_config():
  signature = inspect.signature(voc_detection.VocDetection.__init__)
  defaults = {name: signature.parameters[name].default for name in _API_DEFAULTS}
  assert defaults == _API_DEFAULTS
  # The API trains batch 1 at 1e-4 for 800K steps, x0.1 at 500K and 700K; at batch 8 the
  # same images take 100K steps at 8e-4 (linear scaling), decayed at the same images.
  protocol = voc_detection.VocDetection.protocol
  batch = _API_DEFAULTS["batch_size"]
  assert protocol["learning_rate"] == pytest.approx(1e-4 * batch)
  assert protocol["train_steps"] * batch == 800000
  np.testing.assert_allclose(np.array(protocol["decay_at"]) * 800000, [500000, 700000])
  assert protocol["decay_rate"] == 0.1 and protocol["momentum"] == 0.9
  assert protocol["clip_gradient_norm"] == 10.0
  # The built detector uses them.
  evaluation = voc_detection.VocDetection(trunk_lib.Trunk(depth=26))
  assert evaluation.num_classes == 20 and evaluation.class_names[0] == "aeroplane"
  rois = evaluation.detector.roi_generator.get_config()
  assert rois["nms_iou_threshold"] == rois["test_nms_iou_threshold"] == 0.7
  assert rois["num_proposals"] == rois["test_num_proposals"] == 300
  assert evaluation.detector.roi_aligner.get_config()["crop_size"] == 14
  assert evaluation.box_head.pool_crops
  assert evaluation.parser.padded_size == (1024, 1024)
  assert evaluation.anchor_boxes(tf.zeros([1, 1024, 1024, 3]))["4"].shape == (1, 64, 64, 48)


def _example_with_a_difficult_object():
  """A grey 96x128 image with a cat (difficult) and a dog, TFDS voc/2007-shaped."""
  return {"image": np.full([96, 128, 3], 200, np.uint8),
          "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 0.75]], np.float32),
                      "label": np.array([7, 11], np.int64),
                      "is_difficult": np.array([True, False])}}


def test_preprocess_keeps_difficult_objects_for_the_test_only():
  evaluation = voc_detection.VocDetection(trunk_lib.Trunk(depth=26), max_num_instances=4,
                                          **_SMALL)
  example = _example_with_a_difficult_object()
  features = voc_detection.preprocess(example, False, evaluation.parser)
  np.testing.assert_allclose(features["voc_detection/boxes"].numpy(),
                             [[9.6, 25.6, 48, 76.8], [48, 64, 96, 96]] + [[-1] * 4] * 2,
                             rtol=1e-6)
  np.testing.assert_array_equal(features["voc_detection/classes"], [7, 11, -1, -1])
  np.testing.assert_array_equal(features["voc_detection/difficult"], [True, False, False, False])
  # 96x128 fits 128x128 at scale 1; the trunk input is the grey minus the ImageNet mean.
  np.testing.assert_allclose(features["voc_detection/image_info"].numpy(),
                             [[96, 128], [96, 128], [1, 1], [0, 0]])
  image = features["voc_detection/image"].numpy()
  assert image.shape == (128, 128, 3)
  np.testing.assert_allclose(image[:96], 200 - np.array(input_convention.MEAN_RGB)
                             * np.ones([96, 128, 1]), atol=1e-4)
  assert not image[96:].any()  # padding: the mean
  ds = tf.data.Dataset.from_tensors(example).map(
      lambda ex: voc_detection.preprocess(ex, True, evaluation.parser))
  train = next(iter(ds))
  # Training: the difficult cat is dropped, the dog is class 12 (1-based, 0 is background).
  np.testing.assert_array_equal(train["voc_detection/gt_classes"], [12, -1, -1, -1])
  assert train["voc_detection/rpn_score_targets"].shape == (8, 8, 12)
  assert train["voc_detection/rpn_box_targets"].shape == (8, 8, 48)
  assert (train["voc_detection/rpn_score_targets"].numpy() == 1).any()


def test_evaluation_loads_block4_when_its_variables_are_made(tmp_path):
  head = faster_rcnn.SlimBlock4BoxHead(21, depth=26)
  head(tf.zeros([1, 2, 14, 14, trunk_lib.NUM_OUTPUT_CHANNELS]), training=False)
  values = {n: np.full(v.shape, 0.25, np.float32) for n, v in head.slim_variables.items()}
  prefix = save_tf1_checkpoint(values, str(tmp_path / "block4.ckpt"))
  evaluation = voc_detection.VocDetection(
      trunk_lib.Trunk(depth=26), dataset="toy", block4_checkpoint=prefix,
      **dict(_SMALL, min_size=64, max_size=64, padded_size=(64, 64)))
  spec = evaluation.input_fn(None, "test").element_spec
  dummy = tf.nest.map_structure(lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
  predictions = evaluation.model_fn(dummy, heads.Mode.PREDICT).predictions
  assert predictions["voc_detection/detection_boxes"].shape == (1, 300, 4)
  for var in evaluation.box_head.slim_variables.values():
    np.testing.assert_array_equal(var.numpy(), 0.25)
  assert evaluation.metrics_accumulator().result()["box_head_init"] == f"checkpoint {prefix}"
  # Block 4 belongs to the head (trained, decayed), not to the trunk.
  head_names = {v.name for v in evaluation.head_variables}
  assert "resnet_v2_26/block4/unit_1/bottleneck_v2/conv1/weights:0" in head_names
  assert not any("block3" in n for n in head_names)


def test_padded_size_must_be_a_multiple_of_16():
  with pytest.raises(ValueError, match="voc_detection.padded_size must be multiples of 16"):
    voc_detection.VocDetection(trunk_lib.Trunk(depth=26), padded_size=(1000, 1024))


def test_evaluation_end_to_end_on_mock_voc(tmp_path):
  from mtssl_tf import evaluation  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  # A 64-pixel input and 8 x 8 crops (as gin/experiments/demo.gin's): block 4, nearly all of a
  # step's work, runs on 8 sampled RoIs per image and 16 proposals at test, pooled to 4 x 4.
  small = dict(_SMALL, min_size=64, max_size=64, padded_size=(64, 64), crop_size=8)
  bindings = [f"voc_detection.{k} = {v!r}" for k, v in small.items()]
  common.parse_gin([], ["Trunk.depth = 26", "voc_detection/EvalSettings.train_steps = 1",
                        "voc_detection/EvalSettings.batch_norm_batches = 1"] + bindings)
  try:
    # What the loop does around its steps is under test here, not how they compile.
    with untraced_steps(), tfds.testing.mock_data(num_examples=2,
                                                  policy=tfds.testing.MockPolicy.USE_CODE):
      results = evaluation.evaluate("voc_detection", str(tmp_path), init="random")
  finally:
    gin.clear_config()
  assert results["trunk"] == {"depth": 26, "output_stride": 16, "fine_tuned": True}
  assert np.isfinite(results["final_train_loss"]) and results["final_train_loss"] > 0
  with open(os.path.join(str(tmp_path), "voc_detection-random.json")) as f:
    written = json.load(f)
  metrics = written["metrics"]
  assert metrics["num_images"] == 2 and metrics["box_head_init"] == "random"
  for key in ("map50_voc07", "map50_area", "map75_voc07", "map75_area"):
    assert key in metrics
  assert sorted(metrics["per_class"]) == sorted(detection_metrics.VOC_CLASSES)
  # The mock ground truth reached the metric.
  positives = sum(c["num_positives"] for c in metrics["per_class"].values())
  assert positives > 0
