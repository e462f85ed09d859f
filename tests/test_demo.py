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
  assert "at chance" not in lines[0]  # 0.170 is 0.045 above chance
  assert lines[0].endswith(f"Measured: {demo.MEASURED_CAUSES['nyu_depth']}.")


def test_explain_names_the_pretext_tasks_at_chance():
  outcome = {"voc_detection": demo.compare({"pretrained": [0.05], "random init": [0.06]})}
  held_out = {"relative_position": dict(metric="accuracy", value=0.125, chance=0.125,
                                        chance_is=""),
              "exemplar": dict(metric="triplet_accuracy", value=0.711, chance=0.5, chance_is="")}
  [line] = demo.explain(outcome, held_out, {"relative_position": 200, "exemplar": 200})
  assert "(difference -0.010, one seed, no noise estimate)" in line
  assert "; relative_position at chance (within 0.01)." in line
  assert "the linear probe" not in line and "Measured: the demo's 50-step detector" in line


def test_run_evaluations_puts_each_pooled_result_under_its_trunk_and_seed(monkeypatch, capsys):
  # The runs go to the pool longest first (detection, then depth); each result must come back
  # under the trunk and seed that produced it, in seed order.
  seen = {}

  def fake_run_jobs(jobs, processes, gin_files, gin_params, on_done):
    seen.update(processes=processes, gin_files=gin_files, gin_params=gin_params,
                names=[j.eval_name for j in jobs])
    out = []
    for i, job in enumerate(jobs):
      pretrained = "checkpoint" in job.kwargs
      value = (10 if pretrained else 20) + job.seed  # pretrained 10/11, random 20/21
      metrics = {"delta1_pct": value, "rmse": 1.0, "map50_voc07": value / 100,
                 "map50_area": 0.0}
      out.append(({"metrics": metrics}, 1.0))
      on_done(i, *out[-1])
    return out

  monkeypatch.setattr(demo.eval_pool, "run_jobs", fake_run_jobs)
  outcome = demo.run_evaluations("/ckpt", "/out", [0, 1], names=["nyu_depth", "voc_detection"],
                                 processes=3, gin_files=["a.gin"], gin_params=["x = 1"])
  assert seen["processes"] == 3 and seen["gin_files"] == ["a.gin"]
  assert seen["gin_params"] == ["x = 1"]
  assert seen["names"] == ["voc_detection"] * 4 + ["nyu_depth"] * 4
  assert outcome["nyu_depth"]["pretrained"] == 10.5 and outcome["nyu_depth"]["random"] == 20.5
  assert outcome["voc_detection"]["difference"] == pytest.approx(-0.1)
  assert outcome["nyu_depth"]["noise"] == 1.0
  table = capsys.readouterr().out
  assert "10.000/11.000" in table and "20.000/21.000" in table
