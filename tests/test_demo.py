"""Tests of what mtssl-demo prints: pretrained against random init over seeds, pretext chance."""

import numpy as np
import pytest

from mtssl_tf import color
from mtssl_tf.bin import demo


def test_compare_means_difference_and_noise_over_seeds():
  result = demo.compare({"pretrained": [0.50, 0.56], "random init": [0.40, 0.42]})
  # Means 0.53 and 0.41; the larger spread over seeds is the pretrained trunk's 0.06.
  assert result["pretrained"] == pytest.approx(0.53)
  assert result["random"] == pytest.approx(0.41)
  assert result["difference"] == pytest.approx(0.12)
  assert result["noise"] == pytest.approx(0.06)
  assert result["verdict"] == "ahead"


@pytest.mark.parametrize("pretrained, random, verdict", [
    ([0.50, 0.56], [0.50, 0.58], "within noise"),  # difference -0.01, noise 0.08
    ([0.30, 0.31], [0.50, 0.52], "behind"),  # difference -0.205, noise 0.02
    ([0.60], [0.50], "one seed"),
])
def test_compare_verdicts(pretrained, random, verdict):
  result = demo.compare({"pretrained": pretrained, "random init": random})
  assert result["verdict"] == verdict
  assert (result["noise"] is None) == (len(pretrained) == 1)


def test_comparison_line_shows_each_seed_the_difference_and_noise():
  values = {"pretrained": [0.5, 0.56], "random init": [0.4, 0.42]}
  line = demo.format_comparison("imagenet_linear", "top1", values, demo.compare(values))
  assert line.split() == ["imagenet_linear", "top1", "0.500/0.560", "0.400/0.420", "+0.120",
                          "0.060", "ahead"]


def test_chance_of_the_pretext_tasks():
  assert demo._chance("relative_position", [])[:2] == ("accuracy", 1 / 8)
  assert demo._chance("exemplar", [])[:2] == ("triplet_accuracy", 0.5)
  # Motion: the majority class of pixels, moving in 10% and 30% of two batches: 80% static.
  batches = [({}, {"moving_fraction": 0.1}), ({}, {"moving_fraction": 0.3})]
  metric, chance, _ = demo._chance("motion_segmentation", batches)
  assert metric == "accuracy" and chance == pytest.approx(0.8)


def test_chance_of_colorization_is_the_most_frequent_bin():
  # ab values at two bin centres: 3 cells of one, 1 of another, and an image without color.
  centers = color.ab_bins()
  a, b = np.asarray(centers[10], np.float32), np.asarray(centers[200], np.float32)
  colored = np.stack([a, a, a, b]).reshape(1, 2, 2, 2)
  gray = np.zeros([1, 2, 2, 2], np.float32)
  features = {"colorization/ab_target": np.concatenate([colored, gray]),
              "colorization/has_color": np.array([1.0, 0.0], np.float32)}
  metric, chance, _ = demo._chance("colorization", [(features, {})])
  assert metric == "accuracy" and chance == pytest.approx(0.75)


def test_explain_names_each_evaluation_pretraining_did_not_lift():
  outcome = {"imagenet_linear": demo.compare({"pretrained": [0.3, 0.32],
                                              "random init": [0.2, 0.21]}),
             "nyu_depth": demo.compare({"pretrained": [60.0, 66.0],
                                        "random init": [64.0, 65.0]})}
  held_out = {"relative_position": dict(metric="accuracy", value=0.17, chance=0.125,
                                        chance_is="")}
  lines = demo.explain(outcome, held_out, {"relative_position": 200})
  assert len(lines) == 1
  assert lines[0].startswith("nyu_depth: pretrained within noise (difference -1.500, spread "
                             "between seeds 6.000)")
  assert "200 steps per task" in lines[0] and "relative_position 0.170 vs 0.125" in lines[0]
  assert "fine-tuning the whole trunk" in lines[0]
