"""Tests of Faster R-CNN's parts: anchors, keep-aspect resizing, second-stage NMS, box head."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import faster_rcnn
from tests.conftest import save_tf1_checkpoint

_SQRT2 = 2.0**0.5
# The API's grid anchors at one location, scales (0.25, 0.5, 1, 2) of 256 outer, ratios
# (0.5, 1, 2) inner: (height, width) = (256 s / sqrt(r), 256 s sqrt(r)).
_API_ANCHOR_SIZES = [
    (64 * _SQRT2, 64 / _SQRT2), (64, 64), (64 / _SQRT2, 64 * _SQRT2),
    (128 * _SQRT2, 128 / _SQRT2), (128, 128), (128 / _SQRT2, 128 * _SQRT2),
    (256 * _SQRT2, 256 / _SQRT2), (256, 256), (256 / _SQRT2, 256 * _SQRT2),
    (512 * _SQRT2, 512 / _SQRT2), (512, 512), (512 / _SQRT2, 512 * _SQRT2),
]


def test_anchors_are_the_api_grid_anchors_on_one_stride_16_level():
  anchors = faster_rcnn.single_level_anchor_generator(256, (0.25, 0.5, 1.0, 2.0),
                                                      (0.5, 1.0, 2.0))
  grid = anchors(image_size=(32, 48))["4"].numpy()
  assert grid.shape == (2, 3, 48)
  for (row, col), (cy, cx) in (((0, 0), (8, 8)), ((1, 2), (24, 40))):
    boxes = grid[row, col].reshape(12, 4)
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    np.testing.assert_allclose(np.stack([heights, widths], 1), _API_ANCHOR_SIZES, rtol=1e-5)
    np.testing.assert_allclose((boxes[:, 0] + boxes[:, 2]) / 2, cy, atol=1e-4)
    np.testing.assert_allclose((boxes[:, 1] + boxes[:, 3]) / 2, cx, atol=1e-4)


def test_keep_aspect_size_is_the_api_resizer():
  size = lambda h, w, lo=600, hi=1024: faster_rcnn.keep_aspect_size((h, w), lo, hi).numpy()
  np.testing.assert_array_equal(size(375, 500), [600, 800])  # x1.6
  np.testing.assert_array_equal(size(500, 375), [800, 600])
  # Shorter side 600 would make the longer 2000: the longer side is bounded instead, x2.048.
  np.testing.assert_array_equal(size(150, 500), [307, 1024])
  np.testing.assert_array_equal(size(333, 500, lo=480), [480, 721])  # 500 x 480/333 = 720.7


def _parser(**kwargs):
  anchors = faster_rcnn.single_level_anchor_generator(256, (0.25, 0.5, 1.0, 2.0),
                                                      (0.5, 1.0, 2.0))
  return faster_rcnn.SingleLevelParser(anchors, **kwargs)


def _decoded(height, width):
  """A grey image with one box (normalized 0.2, 0.1, 0.6, 0.5) of class 3 and a difficult one."""
  return {"image": tf.fill([height, width, 3], tf.constant(200, tf.uint8)),
          "groundtruth_boxes": tf.constant([[0.2, 0.1, 0.6, 0.5], [0.0, 0.0, 0.5, 0.5]]),
          "groundtruth_classes": tf.constant([3, 5], tf.int64),
          "groundtruth_is_crowd": tf.constant([False, True])}


@pytest.mark.parametrize("height, width, content, box", [
    # Landscape 500 x 375 (W x H) -> 800 x 600; the box (75, 50, 225, 250) x 1.6.
    (375, 500, (600, 800), (120, 80, 360, 400)),
    # Portrait 375 x 500 -> 600 x 800; the box (100, 37.5, 300, 187.5) x 1.6.
    (500, 375, (800, 600), (160, 60, 480, 300)),
])
def test_parser_resizes_keeping_the_aspect_and_pads_to_1024(height, width, content, box):
  parser = _parser()  # min 600, max 1024, padded 1024 x 1024; no augmentation
  grey = 200 - np.array(input_convention.MEAN_RGB, np.float32)
  parsed = {training: parser.parse_fn(training)(_decoded(height, width))
            for training in (True, False)}
  for image, labels in parsed.values():
    image = image.numpy()
    assert image.shape == (1024, 1024, 3)
    np.testing.assert_allclose(image[:content[0], :content[1]], np.broadcast_to(
        grey, content + (3,)), atol=1e-3)
    assert not image[content[0]:].any() and not image[:, content[1]:].any()  # the mean
    np.testing.assert_allclose(labels["image_info"],
                               [[height, width], content, [1.6, 1.6], [0, 0]], rtol=1e-6)
  # Training: the difficult object is gone, the other box is scaled as the image.
  labels = parsed[True][1]
  np.testing.assert_allclose(labels["gt_boxes"][:2], [box, [-1, -1, -1, -1]], rtol=1e-5)
  np.testing.assert_array_equal(labels["gt_classes"][:2], [3, -1])
  assert labels["rpn_score_targets"]["4"].shape == (64, 64, 12)
  assert labels["rpn_box_targets"]["4"].shape == (64, 64, 48)
  # Anchors covering the 240 x 320 box with IoU >= 0.7 (the 256 x 256 one near its centre,
  # IoU 0.76) are positive.
  assert (labels["rpn_score_targets"]["4"].numpy() == 1).any()


def test_multi_scale_training_draws_the_shorter_side_and_keeps_the_longer_bounded():
  # At a tenth of the protocol's sizes, for speed: 75 x 100 images, shorter side 60 x
  # [0.8, 1.25] = 48-75, longer side at most 96 (it would reach 100 at 75).
  parser = _parser(min_size=60, max_size=96, padded_size=(96, 96), aug_scale=(0.8, 1.25),
                   aug_rand_hflip=True)
  sizes, flipped = [], 0
  parse = parser.parse_fn(True)  # eagerly: tracing the anchor labeler takes longer
  tf.random.set_seed(0)
  for _ in range(20):
    _, labels = parse(_decoded(75, 100))
    info, boxes = labels["image_info"].numpy(), labels["gt_boxes"].numpy()
    sizes.append(info[1])
    # The box spans x = 10-50 original pixels, or 50-90 flipped.
    x_scale = info[2, 1]
    is_flipped = abs(boxes[0, 1] - 50 * x_scale) < 1e-3
    assert is_flipped or abs(boxes[0, 1] - 10 * x_scale) < 1e-3
    flipped += is_flipped
  sizes = np.array(sizes)
  assert sizes[:, 0].min() >= 48 and sizes[:, 0].max() <= 72  # 96 x 3/4
  assert sizes[:, 0].max() - sizes[:, 0].min() > 12
  np.testing.assert_allclose(sizes[:, 1], np.minimum(np.round(sizes[:, 0] * 4 / 3), 96),
                             atol=1)
  assert sizes[:, 1].max() <= 96
  assert 0 < flipped < 20


def test_parser_rejects_sizes_that_do_not_fit():
  with pytest.raises(ValueError, match="voc_detection.padded_size must be multiples of 16"):
    _parser(padded_size=(1000, 1024))
  with pytest.raises(ValueError, match=r"voc_detection.max_size = 1024 does not fit "
                                       r"voc_detection.padded_size = \(800, 1024\)"):
    _parser(padded_size=(800, 1024))
  with pytest.raises(ValueError, match="aug_scale"):
    _parser(aug_scale=(1.2, 0.8))


def test_second_stage_nms_keeps_100_per_class_and_300_in_all():
  # 150 disjoint boxes per RoI-class pair, 4 classes, distinct scores.
  n, classes = 150, 4
  x = np.arange(n, dtype=np.float32) * 10
  boxes = np.stack([np.zeros(n), x, np.full(n, 8.0), x + 8], 1).astype(np.float32)
  boxes = np.tile(boxes[None, :, None], [1, 1, classes, 1])
  scores = (0.9 - np.arange(n * classes).reshape(n, classes) * 1e-4)[None].astype(np.float32)
  out_boxes, out_scores, out_classes, count = faster_rcnn.second_stage_nms(
      boxes, scores, 0.6, 100, 300)
  assert int(count[0]) == 300 and out_boxes.shape == (1, 300, 4)
  per_class = np.bincount(out_classes[0].numpy(), minlength=classes)
  # The best 300 of 4 x 100 survivors: scores fall with RoI first, so 75 of each class.
  np.testing.assert_array_equal(per_class, [75] * 4)
  assert np.all(np.diff(out_scores[0].numpy()) <= 0)
  _, _, out_classes, count = faster_rcnn.second_stage_nms(boxes[:, :, :2], scores[:, :, :2],
                                                         0.6, 100, 300)
  assert int(count[0]) == 200  # 100 per class
  np.testing.assert_array_equal(np.bincount(out_classes[0, :200].numpy()), [100, 100])


def test_second_stage_nms_suppresses_above_iou_0_6():
  # [0, 0, 10, 10] then boxes of IoU 0.7 (suppressed) and 0.5 (kept) with it.
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 5]], np.float32)[None, :, None]
  scores = np.array([[0.9], [0.8], [0.7]], np.float32)[None]
  out_boxes, out_scores, _, count = faster_rcnn.second_stage_nms(boxes, scores, 0.6, 100, 300)
  assert int(count[0]) == 2
  np.testing.assert_allclose(out_boxes[0, :2], [[0, 0, 10, 10], [0, 0, 10, 5]])
  np.testing.assert_allclose(out_scores[0, :2], [0.9, 0.7])


def _built_head(depth=26):
  head = faster_rcnn.SlimBlock4BoxHead(5, depth=depth)
  head(tf.zeros([1, 2, 14, 14, trunk_lib.NUM_OUTPUT_CHANNELS]), training=False)
  return head


def test_box_head_pools_crops_and_predicts_per_class_boxes():
  head = faster_rcnn.SlimBlock4BoxHead(5, depth=26)
  scores, deltas = head(tf.zeros([2, 3, 14, 14, trunk_lib.NUM_OUTPUT_CHANNELS]), training=False)
  assert scores.shape == (2, 3, 5) and deltas.shape == (2, 3, 20)


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
  assert faster_rcnn.load_box_head_checkpoint(head, prefix) == names
  for name, var in head.slim_variables.items():
    np.testing.assert_array_equal(var.numpy(), values[name])

  missing = dict(values)
  del missing["resnet_v2_26/postnorm/gamma"]
  with pytest.raises(ValueError, match=r"Missing 1 variables: resnet_v2_26/postnorm/gamma"):
    faster_rcnn.load_box_head_checkpoint(
        _built_head(), save_tf1_checkpoint(missing, str(tmp_path / "missing.ckpt")))
  wrong = dict(values)
  wrong["resnet_v2_26/postnorm/beta"] = np.zeros([3], np.float32)
  with pytest.raises(ValueError, match=r"Mis-shaped 1 variables: resnet_v2_26/postnorm/beta"):
    faster_rcnn.load_box_head_checkpoint(
        _built_head(), save_tf1_checkpoint(wrong, str(tmp_path / "wrong.ckpt")))
  with pytest.raises(ValueError, match="call it once"):
    faster_rcnn.load_box_head_checkpoint(faster_rcnn.SlimBlock4BoxHead(5, depth=26), prefix)
