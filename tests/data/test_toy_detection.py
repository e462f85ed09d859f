"""Tests of the toy detection scenes: boxes are the drawn shapes, classes in range, determinism."""

import colorsys

import numpy as np
import tensorflow as tf

from mtssl_tf.data import toy_detection


def test_scenes_have_boxes_inside_the_image_and_classes_in_range():
  scenes = toy_detection.make_scenes(num_scenes=12, size=(64, 80), seed=3)
  assert scenes["image"].shape == (12, 64, 80, 3) and scenes["image"].dtype == np.uint8
  counts = scenes["num_objects"]
  assert counts.min() >= 1 and counts.max() <= 3
  for n, count in enumerate(counts):
    boxes, labels = scenes["bbox"][n, :count], scenes["label"][n, :count]
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all((labels >= 0) & (labels < toy_detection.NUM_CLASSES))
    assert np.all(scenes["label"][n, count:] == -1)
    # The box is the drawn shape's extent: the object's hue fills the box's central pixel.
    for box in boxes:
      cy = int((box[0] + box[2]) / 2 * 64)
      cx = int((box[1] + box[3]) / 2 * 80)
      assert np.ptp(scenes["image"][n, cy, cx].astype(int)) > 40  # saturated, not grey
  again = toy_detection.make_scenes(num_scenes=12, size=(64, 80), seed=3)
  for key in scenes:
    np.testing.assert_array_equal(scenes[key], again[key])
  other = toy_detection.make_scenes(num_scenes=12, size=(64, 80), seed=4)
  assert not np.array_equal(scenes["image"], other["image"])


def test_rectangles_fill_their_boxes():
  scenes = toy_detection.make_scenes(num_scenes=20, size=(48, 48), num_classes=3, seed=0)
  found = 0
  for n, count in enumerate(scenes["num_objects"]):
    for box, label in zip(scenes["bbox"][n, :count], scenes["label"][n, :count]):
      if toy_detection.SHAPES[label % 3] != "rectangle":
        continue
      found += 1
      top, left, bottom, right = np.round(box * 48).astype(int)
      inside = scenes["image"][n, top:bottom, left:right].astype(int)
      # A saturated color fills the whole rectangle (grey background would have ptp ~0-50).
      assert np.median(np.ptp(inside, axis=-1)) > 40
  assert found > 0


def test_to_voc_example_keeps_the_scene_objects_in_tf_data():
  scenes = toy_detection.make_scenes(num_scenes=3, size=(32, 32), seed=1)
  ds = tf.data.Dataset.from_tensor_slices(scenes).map(toy_detection.to_voc_example)
  for n, example in enumerate(ds):
    count = scenes["num_objects"][n]
    np.testing.assert_array_equal(example["image"], scenes["image"][n])
    np.testing.assert_array_equal(example["objects"]["bbox"], scenes["bbox"][n, :count])
    np.testing.assert_array_equal(example["objects"]["label"], scenes["label"][n, :count])
    np.testing.assert_array_equal(example["objects"]["is_difficult"], [False] * count)


def test_color_says_nothing_of_the_class():
  # Each class's objects take hues all around the circle: the mean of their hue angles' unit
  # vectors is short (hues within +-0.03 of one value per class would give about 1).
  scenes = toy_detection.make_scenes(num_scenes=60, size=(64, 64), seed=2)
  hues = {c: [] for c in range(toy_detection.NUM_CLASSES)}
  for n, count in enumerate(scenes["num_objects"]):
    for box, label in zip(scenes["bbox"][n, :count], scenes["label"][n, :count]):
      cy, cx = int((box[0] + box[2]) / 2 * 64), int((box[1] + box[3]) / 2 * 64)
      rgb = scenes["image"][n, cy, cx].astype(float) / 255.0
      hues[label].append(colorsys.rgb_to_hsv(*rgb)[0])
  for label, values in hues.items():
    angles = 2 * np.pi * np.array(values)
    assert len(values) >= 10
    assert np.hypot(np.cos(angles).mean(), np.sin(angles).mean()) < 0.5, label
