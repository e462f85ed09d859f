"""Tests of the VOC detection evaluation: toy scenes, box-head loading, metrics, end to end."""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import base
from mtssl_tf.evals import detection_metrics
from mtssl_tf.evals import voc_detection
from tests.conftest import save_tf1_checkpoint

# Small detector settings for CPU tests (gin bindings in the evaluation's scope).
_SMALL = {
    "batch_size": 2, "output_size": (128, 128), "shuffle_buffer": 4, "rpn_num_filters": 32,
    "num_sampled_rois": 8, "train_pre_nms_top_k": 200, "train_num_proposals": 32,
    "test_pre_nms_top_k": 200, "test_num_proposals": 16,
}


def test_toy_scenes_have_boxes_inside_the_image_and_classes_in_range():
  scenes = voc_detection.toy_detection_scenes(num_scenes=12, size=(64, 80), seed=3)
  assert scenes["image"].shape == (12, 64, 80, 3) and scenes["image"].dtype == np.uint8
  counts = scenes["num_objects"]
  assert counts.min() >= 1 and counts.max() <= 3
  for n, count in enumerate(counts):
    boxes, labels = scenes["bbox"][n, :count], scenes["label"][n, :count]
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all((labels >= 0) & (labels < voc_detection.TOY_NUM_CLASSES))
    assert np.all(scenes["label"][n, count:] == -1)
    # The box is the drawn shape's extent: the object's hue fills the box's central pixel.
    for box in boxes:
      cy = int((box[0] + box[2]) / 2 * 64)
      cx = int((box[1] + box[3]) / 2 * 80)
      assert np.ptp(scenes["image"][n, cy, cx].astype(int)) > 40  # saturated, not grey
  again = voc_detection.toy_detection_scenes(num_scenes=12, size=(64, 80), seed=3)
  for key in scenes:
    np.testing.assert_array_equal(scenes[key], again[key])
  other = voc_detection.toy_detection_scenes(num_scenes=12, size=(64, 80), seed=4)
  assert not np.array_equal(scenes["image"], other["image"])


def _image_info(original, scale, offset=(0.0, 0.0), output_size=(512, 512)):
  """The Parser's image_info: original size, output size, (y, x) scale, (y, x) crop offset."""
  original = np.asarray(original, np.float32)
  return np.stack([original, np.asarray(output_size, np.float32),
                   np.round(original * scale) / original, np.asarray(offset, np.float32)])


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
                             [[96, 128], [128, 128], [1, 1], [0, 0]])
  image = features["voc_detection/image"].numpy()
  assert image.shape == (128, 128, 3)
  np.testing.assert_allclose(image[:96], 200 - np.array(voc_detection.input_convention.MEAN_RGB)
                             * np.ones([96, 128, 1]), atol=0.01)
  assert np.abs(image[96:]).max() < 0.6  # padding: (almost) the mean, i.e. zero
  ds = tf.data.Dataset.from_tensors(example).map(
      lambda ex: voc_detection.preprocess(ex, True, evaluation.parser))
  train = next(iter(ds))
  # Training: the difficult cat is dropped, the dog is class 12 (1-based, 0 is background).
  np.testing.assert_array_equal(train["voc_detection/gt_classes"], [12, -1, -1, -1])
  assert train["voc_detection/rpn_score_targets"].shape == (8, 8, 15)
  assert train["voc_detection/rpn_box_targets"].shape == (8, 8, 60)
  assert (train["voc_detection/rpn_score_targets"].numpy() == 1).any()


def _built_head(depth=26):
  head = voc_detection.SlimBlock4BoxHead(5, depth=depth)
  head(tf.zeros([1, 2, 14, 14, trunk_lib.NUM_OUTPUT_CHANNELS]), training=False)
  return head


def test_box_head_has_slim_names_and_loads_from_a_slim_checkpoint(tmp_path):
  head = _built_head()
  names = sorted(head.slim_variables)
  assert "resnet_v2_26/block4/unit_2/bottleneck_v2/conv3/weights" in names
  assert "resnet_v2_26/block4/unit_1/bottleneck_v2/shortcut/weights" in names
  assert "resnet_v2_26/postnorm/moving_variance" in names
  assert not any("unit_3" in n for n in names)  # depth 26: block 4 has 2 units
  rng = np.random.RandomState(0)
  values = {n: rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
            for n, v in head.slim_variables.items()}
  values["resnet_v2_26/block1/unit_1/bottleneck_v2/conv1/weights"] = np.zeros([1, 1, 64, 64])
  prefix = save_tf1_checkpoint(values, str(tmp_path / "resnet_v2_26.ckpt"))
  assert voc_detection.load_box_head_checkpoint(head, prefix) == names
  for name, var in head.slim_variables.items():
    np.testing.assert_array_equal(var.numpy(), values[name])

  missing = dict(values)
  del missing["resnet_v2_26/postnorm/gamma"]
  with pytest.raises(ValueError, match=r"Missing 1 variables: resnet_v2_26/postnorm/gamma"):
    voc_detection.load_box_head_checkpoint(
        _built_head(), save_tf1_checkpoint(missing, str(tmp_path / "missing.ckpt")))
  wrong = dict(values)
  wrong["resnet_v2_26/postnorm/beta"] = np.zeros([3], np.float32)
  with pytest.raises(ValueError, match=r"Mis-shaped 1 variables: resnet_v2_26/postnorm/beta"):
    voc_detection.load_box_head_checkpoint(
        _built_head(), save_tf1_checkpoint(wrong, str(tmp_path / "wrong.ckpt")))
  with pytest.raises(ValueError, match="call it once"):
    voc_detection.load_box_head_checkpoint(voc_detection.SlimBlock4BoxHead(5, depth=26),
                                           prefix)


def test_evaluation_loads_block4_when_its_variables_are_made(tmp_path):
  values = {n: np.full(v.shape, 0.25, np.float32)
            for n, v in _built_head().slim_variables.items()}
  prefix = save_tf1_checkpoint(values, str(tmp_path / "block4.ckpt"))
  evaluation = voc_detection.VocDetection(
      trunk_lib.Trunk(depth=26), dataset="toy", block4_checkpoint=prefix,
      **dict(_SMALL, output_size=(64, 64)))
  spec = evaluation.input_fn(None, "test").element_spec
  dummy = tf.nest.map_structure(lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
  predictions = evaluation.model_fn(dummy, base.Mode.PREDICT).predictions
  assert predictions["voc_detection/detection_boxes"].shape == (1, 100, 4)
  for var in evaluation.box_head.slim_variables.values():
    np.testing.assert_array_equal(var.numpy(), 0.25)
  assert evaluation.metrics_accumulator().result()["box_head_init"] == f"checkpoint {prefix}"
  # Block 4 belongs to the head (trained, decayed), not to the trunk.
  head_names = {v.name for v in evaluation.head_variables}
  assert "resnet_v2_26/block4/unit_1/bottleneck_v2/conv1/weights:0" in head_names
  assert not any("block3" in n for n in head_names)


def test_output_size_must_be_a_multiple_of_16():
  with pytest.raises(ValueError, match="multiples of 16"):
    voc_detection.VocDetection(trunk_lib.Trunk(depth=26), output_size=(100, 128))


def test_evaluation_end_to_end_on_mock_voc(tmp_path):
  from mtssl_tf import evaluation  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  bindings = [f"voc_detection.{k} = {v!r}" for k, v in _SMALL.items()]
  common.parse_gin([], ["Trunk.depth = 26", "voc_detection/EvalSettings.train_steps = 2"] +
                   bindings)
  try:
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
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
