"""Tests of the toy depth scenes: a planar floor under a far wall, boxes on it, shaded images."""

import numpy as np
import pytest

from mtssl_tf.data import toy_depth

_SIZE = (48, 64)


@pytest.fixture(scope="module")
def scenes():
  return toy_depth.make_scenes(num_scenes=6, size=_SIZE, seed=3)


def test_shapes_types_and_determinism(scenes):
  assert scenes["image"].shape == (6, 48, 64, 3) and scenes["image"].dtype == np.uint8
  assert scenes["depth"].shape == (6, 48, 64) and scenes["depth"].dtype == np.float32
  again = toy_depth.make_scenes(num_scenes=6, size=_SIZE, seed=3)
  for key in scenes:
    np.testing.assert_array_equal(scenes[key], again[key])
  assert not np.array_equal(toy_depth.make_scenes(2, _SIZE, seed=4)["depth"],
                            scenes["depth"][:2])


def test_floor_is_a_plane_seen_by_a_level_camera_under_the_far_wall(scenes):
  height = _SIZE[0]
  rows = np.arange(height, dtype=np.float64)
  for depth in scenes["depth"].astype(np.float64):
    # Boxes only bring pixels nearer, and never fill a row: the farthest pixel of each row is
    # the floor (or the wall).
    profile = depth.max(axis=1)
    # The bottom row's floor depth p = 1.5 (H - h) / (H - 1 - h) gives the horizon row h.
    p = profile[-1]
    horizon = (p * (height - 1) - 1.5 * height) / (p - 1.5)
    assert horizon == pytest.approx(round(horizon), abs=1e-3)
    horizon = round(horizon)
    assert 0.3 * height <= horizon < 0.5 * height
    with np.errstate(divide="ignore"):
      floor = np.where(rows > horizon, 1.5 * (height - horizon) / (rows - horizon), 8.0)
    np.testing.assert_allclose(profile, np.minimum(floor, 8.0), rtol=1e-6)
    assert profile[0] == 8.0
    # Every nearer pixel is a box, at a depth in [1.5, 6] m.
    boxes = depth < profile[:, None] - 1e-6
    assert boxes.any()
    assert depth[boxes].min() >= 1.5 and depth[boxes].max() <= 6.0


def test_images_darken_with_depth(scenes):
  # shade = clip(1.2 - d / 10, 0.3, 1): 1 up to 2 m, 0.4 at the 8 m wall.
  np.testing.assert_allclose(toy_depth.shade([1.5, 2.0, 5.0, 8.0, 20.0]),
                             [1.0, 1.0, 0.7, 0.4, 0.3])
  depth, image = scenes["depth"], scenes["image"].astype(np.float64)
  # Texture values are at most 255, times the shade, rounded down.
  bound = np.floor(255 * np.clip(1.2 - depth.astype(np.float64) / 10, 0.3, 1.0) + 1e-4)
  assert (image <= bound[..., None]).all()
  assert image[depth == 8.0].max() <= 102
  assert image[depth < 2.0].max() > 102
