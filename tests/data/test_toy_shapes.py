"""Tests of the toy classification set: balanced shape classes that color does not give away."""

import colorsys

import numpy as np
import pytest

from mtssl_tf.data import toy
from mtssl_tf.data import toy_shapes


def test_set_is_balanced_deterministic_and_read_only():
  data = toy_shapes.toy_classification(num_images=40, size=(48, 56), num_classes=8, seed=3)
  assert data["image"].shape == (40, 48, 56, 3) and data["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(data["label"]), [5] * 8)
  again = toy_shapes.toy_classification(num_images=40, size=(48, 56), num_classes=8, seed=3)
  np.testing.assert_array_equal(data["image"], again["image"])
  other = toy_shapes.toy_classification(num_images=40, size=(48, 56), num_classes=8, seed=4)
  assert not np.array_equal(data["image"], other["image"])
  with pytest.raises(ValueError):
    data["image"][0, 0, 0, 0] = 1
  # The evaluations and the ImageNet-labels baseline read it through toy.py.
  assert toy.toy_classification is toy_shapes.toy_classification
  with pytest.raises(ValueError, match="num_classes"):
    toy_shapes.toy_classification(num_images=4, num_classes=9)


def test_shapes_are_told_apart_by_points_of_their_frame():
  # (u, v) probes, v down: inside (1) or outside (0) each shape, by its geometry.
  probes = [(0.0, 0.0), (0.8, 0.8), (0.0, 0.9), (0.7, 0.7), (0.45, 0.45), (0.0, -0.8),
            (0.7, 0.0), (0.8, -0.8), (0.6, 0.6)]
  expected = {
      "square": [1, 1, 0, 1, 1, 1, 1, 1, 1],
      "disc": [1, 0, 1, 0, 1, 1, 1, 0, 1],
      "triangle": [1, 1, 1, 1, 1, 1, 0, 0, 1],
      "plus": [1, 0, 1, 0, 0, 1, 1, 0, 0],
      "ring": [0, 0, 1, 0, 1, 1, 1, 0, 1],
      "diamond": [1, 0, 1, 0, 1, 1, 1, 0, 0],
      "frame": [0, 1, 1, 1, 0, 1, 1, 1, 1],
      "cross": [1, 1, 0, 1, 1, 0, 0, 1, 1],
  }
  u = np.array([p[0] for p in probes])
  v = np.array([p[1] for p in probes])
  for shape in toy_shapes.SHAPES:
    np.testing.assert_array_equal(toy_shapes.shape_mask(shape, u, v), expected[shape], shape)
  # On a fine grid no two shapes coincide (intersection over union below 0.85; the closest
  # pair, square and disc, differ at the corners).
  v, u = np.mgrid[-1:1:64j, -1:1:64j]
  masks = {s: toy_shapes.shape_mask(s, u, v) for s in toy_shapes.SHAPES}
  for i, a in enumerate(toy_shapes.SHAPES):
    for b in toy_shapes.SHAPES[i + 1:]:
      iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
      assert iou < 0.85, (a, b, iou)


def test_color_does_not_give_the_class_away():
  # A nearest-class-mean classifier on each image's mean color and mean hue (what the earlier,
  # hue-labelled toy set was labelled by) stays near chance (1/8) on images of another seed.
  def color_features(images):
    rgb = images.reshape(len(images), -1, 3).mean(1) / 255.0
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] for c in rgb])
    return np.concatenate([rgb, np.cos(2 * np.pi * hue)[:, None],
                           np.sin(2 * np.pi * hue)[:, None]], 1)

  train = toy_shapes.toy_classification(num_images=256, size=(32, 40), seed=0)
  test = toy_shapes.toy_classification(num_images=256, size=(32, 40), seed=1)
  x, y = color_features(train["image"]), train["label"]
  centroids = np.stack([x[y == c].mean(0) for c in range(8)])
  xt = color_features(test["image"])
  predicted = np.argmin(((xt[:, None] - centroids[None])**2).sum(-1), 1)
  assert np.mean(predicted == test["label"]) < 0.25
