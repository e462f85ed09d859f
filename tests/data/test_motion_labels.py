"""Tests of the motion label maker on toy clips whose true moving-object masks are known."""

import numpy as np
import pytest

from mtssl_tf.data import motion_labels
from mtssl_tf.data import toy_video


def _iou(a, b):
  union = (a | b).sum()
  return (a & b).sum() / union if union else 1.0


@pytest.mark.parametrize("camera", ["pan_zoom", "pan", "rotate", "static"])
@pytest.mark.parametrize("seed", [0, 1])
def test_masks_match_the_moving_objects(camera, seed):
  clip = toy_video.make_clip(num_frames=11, camera=camera, seed=seed)
  full, small, stats = motion_labels.label_frame(clip.frames)
  truth = clip.masks[0]
  assert _iou(full, truth) >= 0.6
  assert _iou(small, motion_labels.downsample_mask(truth)) >= 0.6
  # Almost none of the background is marked.
  assert (full & ~truth).sum() / (~truth).sum() < 0.02
  assert stats.steps == 10 and stats.failed_steps == 0
  assert stats.inlier_fraction > 0.8
  assert small.shape == (30, 40)


@pytest.mark.parametrize("camera", ["pan_zoom", "static"])
def test_no_object_motion_gives_an_empty_mask(camera):
  clip = toy_video.make_clip(num_frames=11, camera=camera, object_motion=False, seed=2)
  full, small, stats = motion_labels.label_frame(clip.frames)
  assert not full.any() and not small.any()
  assert stats.moving_fraction == 0.0


def test_textureless_video_gives_an_empty_mask_and_reports_failed_steps():
  frames = np.full([11, 64, 64, 3], 128, np.uint8)
  full, _, stats = motion_labels.label_frame(frames)
  assert not full.any()
  # A flat frame's flow is zero: RANSAC fits the identity, nothing moves.
  assert stats.steps + stats.failed_steps == 10


def test_farneback_also_finds_the_objects():
  clip = toy_video.make_clip(num_frames=11, camera="pan", seed=0)
  config = motion_labels.LabelConfig(flow_method="farneback")
  full, _, _ = motion_labels.label_frame(clip.frames, config)
  assert _iou(full, clip.masks[0]) >= 0.5


def test_camera_homography_recovers_a_known_shift():
  flow = np.zeros([64, 80, 2], np.float32)
  flow[..., 0], flow[..., 1] = 3.0, -2.0
  flow[20:30, 20:30] = [10.0, 10.0]  # an independently moving object: an outlier
  homography, inliers = motion_labels.camera_homography(flow)
  np.testing.assert_allclose(homography / homography[2, 2],
                             [[1, 0, 3], [0, 1, -2], [0, 0, 1]], atol=1e-3)
  assert 0.9 < inliers < 1.0


def test_tracks_follow_the_flow_through_a_step_without_homography(monkeypatch):
  # Frame k is filled with k, so the mocked flow knows its step; the flow of step k moves x by
  # c_k + 0.02 x and y by d_k, sampled where each track is (bilinear, the border replicated).
  height, width, length = 12, 16, 10
  scale, c, d = 0.02, 0.3 + 0.05 * np.arange(length), -0.2 + 0.04 * np.arange(length)
  xs = np.arange(width, dtype=np.float32)
  flows = [np.stack(np.broadcast_arrays(c[k] + scale * xs, np.full([height, 1], d[k])),
                    -1).astype(np.float32) for k in range(length)]

  def fake_flow(prev_gray, next_gray, method):
    del method
    assert int(next_gray[0, 0]) == int(prev_gray[0, 0]) + 1
    return flows[int(prev_gray[0, 0])]

  fit = motion_labels.camera_homography
  calls = []

  def first_fit_fails(flow, grid_step, ransac_threshold):
    calls.append(len(calls))
    return (None, 0.0) if len(calls) == 1 else fit(flow, grid_step, ransac_threshold)

  monkeypatch.setattr(motion_labels, "dense_flow", fake_flow)
  monkeypatch.setattr(motion_labels, "camera_homography", first_fit_fails)
  frames = np.broadcast_to(np.arange(length + 1, dtype=np.uint8)[:, None, None],
                           [length + 1, height, width])
  config = motion_labels.LabelConfig(track_length=length, grid_step=2,
                                     forward_backward_threshold=0)
  steps, _, end_points, stats = motion_labels.residual_steps(frames, config)
  assert (stats.steps, stats.failed_steps) == (length - 1, 1)

  # The same chain by hand: every step's flow, step 0's included.
  x, y = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
  alive = np.ones([height, width], bool)
  expected_steps = np.zeros([height, width], np.int32)
  for k in range(length):
    x, y = x + c[k] + scale * np.clip(x, 0, width - 1), y + d[k]
    alive &= (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    if k > 0:  # Step 0 had no homography: no residual, but the tracks moved and may end.
      expected_steps += alive
  np.testing.assert_allclose(end_points, np.stack([x, y], -1), atol=0.01)
  np.testing.assert_array_equal(steps, expected_steps)
  assert 0 < expected_steps.sum() < (length - 1) * height * width


def test_clean_mask_drops_specks_and_fills_holes():
  mask = np.zeros([100, 100], bool)
  mask[20:60, 20:60] = True
  mask[35:40, 35:40] = False  # a 25 px hole: filled (< 0.5% of 10000)
  mask[80, 80] = True  # a speck: removed by the opening
  mask[85:90, 5:10] = True  # 25 px component: survives the opening, dropped as too small
  cleaned = motion_labels.clean_mask(mask, opening_size=3, min_component_fraction=0.005,
                                     max_hole_fraction=0.005)
  expected = np.zeros([100, 100], bool)
  expected[20:60, 20:60] = True
  np.testing.assert_array_equal(cleaned, expected)


def test_downsample_mask():
  mask = np.zeros((16, 24), bool)
  mask[0:4, 0:8] = True  # 32 of 64 pixels: exactly half, moving.
  mask[8:16, 8:15] = True  # 56 of 64: moving.
  mask[8:11, 16:24] = True
  mask[11, 16:23] = True  # 31 of 64: not moving.
  np.testing.assert_array_equal(
      motion_labels.downsample_mask(mask), [[True, False, False], [False, True, False]])
  assert motion_labels.downsample_mask(np.stack([mask, ~mask])).shape == (2, 2, 3)
  assert motion_labels.downsample_mask(mask, stride=4).shape == (4, 6)
  with pytest.raises(ValueError, match="multiple"):
    motion_labels.downsample_mask(np.zeros((20, 24), bool))


def test_bad_settings_and_short_input_are_named():
  with pytest.raises(ValueError, match="flow_method"):
    motion_labels.LabelConfig(flow_method="lucas").check()
  with pytest.raises(ValueError, match="min_track_steps"):
    motion_labels.LabelConfig(track_length=2, min_track_steps=3).check()
  with pytest.raises(ValueError, match="needs 11 frames"):
    motion_labels.label_frame(np.zeros([5, 64, 64, 3], np.uint8))
