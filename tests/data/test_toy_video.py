"""Tests of the toy videos: geometry that matches `camera`, true masks, texture and video files."""

import functools
import os
import warnings

import cv2
import numpy as np
import pytest

from mtssl_tf.data import toy_video

_SIZE = (240, 320)
# Mean absolute difference of two frames that differ only by the per-frame noise: two
# independent N(0, NOISE_STD) draws differ by about 0.8 * sqrt(2) * 2 = 2.3 on average.
_NOISE_ONLY_MAD = 3.0
# The same after one more bilinear resampling (undoing the camera), which blurs the fine texture.
_WARPED_MAD = 4.5


@functools.lru_cache(maxsize=None)
def _clip(camera, object_motion=True, num_objects=2, seed=0, num_frames=12):
  """Clips are cached: several tests look at the same one, and each takes ~0.2 s to render."""
  return toy_video.make_clip(num_frames, _SIZE, camera, num_objects, object_motion, seed)


def _dilate(mask, pixels):
  kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
  return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _erode(mask, pixels):
  kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
  return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def _interior(border):
  inside = np.zeros(_SIZE, bool)
  inside[border:-border, border:-border] = True
  return inside


def _centroid(mask):
  yy, xx = np.nonzero(mask)
  return np.array([xx.mean(), yy.mean()])


def _warp_back(clip, t):
  """Frame t + 1 resampled into frame t's pixels through the world: camera[t] o camera[t+1]^-1."""
  to_t = clip.camera[t].astype(np.float64) @ np.linalg.inv(clip.camera[t + 1].astype(np.float64))
  warped = cv2.warpPerspective(clip.frames[t + 1].astype(np.float32), to_t, _SIZE[::-1],
                               flags=cv2.INTER_LINEAR)
  warped_mask = cv2.warpPerspective(clip.masks[t + 1].astype(np.uint8), to_t, _SIZE[::-1],
                                    flags=cv2.INTER_NEAREST).astype(bool)
  return warped, warped_mask, to_t


@pytest.mark.parametrize("camera", toy_video.CAMERAS)
def test_shapes_and_dtypes(camera):
  clip = _clip(camera)
  assert clip.frames.shape == (12,) + _SIZE + (3,) and clip.frames.dtype == np.uint8
  assert clip.masks.shape == (12,) + _SIZE and clip.masks.dtype == bool
  assert clip.camera.shape == (12, 3, 3) and clip.camera.dtype == np.float32
  np.testing.assert_allclose(clip.camera[0], np.eye(3), atol=1e-6)
  assert clip.masks.any(axis=(1, 2)).all()


def test_deterministic_by_seed():
  a = toy_video.make_clip(num_frames=3, seed=5)
  b = toy_video.make_clip(num_frames=3, seed=5)
  c = toy_video.make_clip(num_frames=3, seed=6)
  for field in toy_video.Clip._fields:
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert np.abs(a.frames.astype(int) - c.frames).mean() > 20


def test_unknown_camera_raises():
  with pytest.raises(ValueError, match="dolly"):
    toy_video.make_clip(camera="dolly")


def test_static_scene_differs_only_by_noise():
  clip = _clip("static", object_motion=False)
  assert not clip.masks.any()
  np.testing.assert_allclose(clip.camera, np.broadcast_to(np.eye(3), (12, 3, 3)), atol=1e-6)
  frames = clip.frames.astype(np.float32)
  mads = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
  assert (mads < _NOISE_ONLY_MAD).all(), mads
  assert (mads > 1.0).all(), "the per-frame noise should be independent"


def test_static_camera_moving_objects():
  clip = _clip("static")
  frames = clip.frames.astype(np.float32)
  for t in range(11):
    # Two pixels of slack for the objects' anti-aliased edges.
    still = ~_dilate(clip.masks[t] | clip.masks[t + 1], 2)
    assert np.abs(frames[t + 1] - frames[t])[still].mean() < _NOISE_ONLY_MAD
    assert np.abs(frames[t + 1] - frames[t])[clip.masks[t]].mean() > 10.0

  single = _clip("static", num_objects=1)
  centroids = np.stack([_centroid(m) for m in single.masks])
  steps = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
  lo, hi = toy_video.OBJECT_SPEED_RANGE
  assert (steps > lo - 0.3).all() and (steps < hi + 0.3).all(), steps


def test_mask_edge_is_where_the_object_is_half_blended():
  """The mask is the objects' 0.5 coverage level: its inner ring is mostly object, its outer not.

  With a static camera the background is each pixel's median over the frames in which no object
  is near it; a pixel's distance from it, relative to the objects' interiors, measures coverage.
  """
  clip = _clip("static")
  frames = clip.frames.astype(np.float32)
  near_object = np.stack([_dilate(mask, 3) for mask in clip.masks])
  with warnings.catch_warnings():
    # Pixels that every frame's objects come near stay NaN ("All-NaN slice") and are left out.
    warnings.simplefilter("ignore", RuntimeWarning)
    background = np.nanmedian(np.where(near_object[..., None], np.nan, frames), axis=0)
  known = ~np.isnan(background).any(axis=-1)
  for t in (0, 6, 11):
    mask = clip.masks[t]
    distance = np.abs(frames[t] - np.nan_to_num(background)).mean(axis=-1)
    core = _erode(mask, 3) & known
    inner = mask & ~_erode(mask, 1) & known
    outer = _dilate(mask, 1) & ~mask & known
    assert core.sum() > 200 and inner.sum() > 100 and outer.sum() > 100
    assert distance[inner].mean() > 0.5 * distance[core].mean(), t
    assert distance[outer].mean() < 0.4 * distance[core].mean(), t


@pytest.mark.parametrize("camera", ["pan", "pan_zoom", "rotate"])
def test_camera_renders_the_frames(camera):
  """Undoing the known camera motion aligns the background of consecutive frames."""
  clip = _clip(camera)
  frames = clip.frames.astype(np.float32)
  for t in range(11):
    warped, warped_mask, _ = _warp_back(clip, t)
    background = _interior(12) & ~_dilate(clip.masks[t] | warped_mask, 3)
    assert np.abs(warped - frames[t])[background].mean() < _WARPED_MAD, t
    # Without undoing the camera, the frames do not match: the test has teeth.
    assert np.abs(frames[t + 1] - frames[t])[background].mean() > 3 * _WARPED_MAD


@pytest.mark.parametrize("camera", ["pan", "pan_zoom", "rotate"])
def test_camera_motion_ranges(camera):
  clip = _clip(camera)
  camera_matrices = clip.camera.astype(np.float64)
  center = np.array([[(_SIZE[1] - 1) / 2.0, (_SIZE[0] - 1) / 2.0]])
  for t in range(11):
    to_next = camera_matrices[t + 1] @ np.linalg.inv(camera_matrices[t])
    # How far the frame center's scene point moves: the pan, on screen.
    moved = cv2.perspectiveTransform(center[None], to_next)[0, 0] - center[0]
    lo, hi = toy_video.PAN_SPEED_RANGE
    assert lo - 0.05 <= np.linalg.norm(moved) <= hi + 0.05
    scale = np.sqrt(np.linalg.det(to_next[:2, :2]))
    angle = np.degrees(np.arctan2(to_next[1, 0], to_next[0, 0]))
    if camera == "pan_zoom":
      assert toy_video.ZOOM_RATE_RANGE[0] - 1e-4 <= abs(scale - 1) <= toy_video.ZOOM_RATE_RANGE[1]
    else:
      assert abs(scale - 1) < 1e-5
    if camera == "rotate":
      lo, hi = toy_video.ROTATION_RATE_RANGE
      assert lo - 1e-3 <= abs(angle) <= hi + 1e-3
    else:
      assert abs(angle) < 1e-3


@pytest.mark.parametrize("camera", ["pan", "pan_zoom", "rotate"])
def test_objects_move_relative_to_the_scene(camera):
  """An object's centroid lands >= ~2 px/frame away from where the camera alone would take it."""
  clip = _clip(camera, num_objects=1)
  for t in range(11):
    _, _, to_t = _warp_back(clip, t)
    next_in_t = cv2.perspectiveTransform(_centroid(clip.masks[t + 1])[None, None], to_t)[0, 0]
    assert np.linalg.norm(next_in_t - _centroid(clip.masks[t])) > 1.8, t


@pytest.mark.parametrize("camera", toy_video.CAMERAS)
def test_objects_stay_inside_the_frame(camera):
  clip = _clip(camera, num_objects=3, seed=1)
  border = ~_interior(1)
  assert not clip.masks[:, border].any()
  areas = clip.masks.sum(axis=(1, 2))
  # Area changes only with the zoom: at most 1%/frame in scale, so ~25% in area over 11 frames.
  assert areas.max() / areas.min() < (1.3 if camera == "pan_zoom" else 1.05), areas


def test_background_is_textured_everywhere():
  clip = _clip("rotate")
  for t in (0, 11):
    gray = cv2.cvtColor(clip.frames[t], cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean = cv2.blur(gray, (9, 9))
    std = np.sqrt(np.maximum(cv2.blur(gray * gray, (9, 9)) - mean * mean, 0.0))
    background = _interior(4) & ~_dilate(clip.masks[t], 4)
    assert (std[background] > 10.0).mean() >= 0.95


def test_write_and_read_avi(tmp_path):
  frames = _clip("pan").frames[:5]
  path = toy_video.write_video(str(tmp_path / "clip.avi"), frames)
  assert path == str(tmp_path / "clip.avi")
  back = toy_video.read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  # MJPG is lossy, and the noisy texture is its worst case; a wrong channel order or frame order
  # would be off by tens.
  assert np.abs(back.astype(np.float32) - frames).mean() < 8.0
  assert np.abs(back.astype(np.float32) - frames[:, :, :, ::-1]).mean() > 15.0


def test_write_and_read_mp4(tmp_path):
  path = str(tmp_path / "clip.mp4")
  probe = cv2.VideoWriter(str(tmp_path / "probe.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25,
                          (32, 32))
  if not probe.isOpened():
    pytest.skip("this OpenCV build cannot open an mp4v VideoWriter (no FFmpeg backend)")
  probe.release()
  frames = _clip("pan").frames[:5]
  back = toy_video.read_video(toy_video.write_video(path, frames))
  assert back.shape == frames.shape
  assert np.abs(back.astype(np.float32) - frames).mean() < 10.0


def test_video_errors(tmp_path):
  frames = np.zeros((2, 16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match=".mkv"):
    toy_video.write_video(str(tmp_path / "clip.mkv"), frames)
  with pytest.raises(ValueError, match="uint8"):
    toy_video.write_video(str(tmp_path / "clip.avi"), frames.astype(np.float32))
  missing_dir = os.path.join(str(tmp_path), "no", "such", "dir", "clip.avi")
  with pytest.raises(IOError, match="clip.avi"):
    toy_video.write_video(missing_dir, frames)
  with pytest.raises(IOError, match="missing.avi"):
    toy_video.read_video(str(tmp_path / "missing.avi"))


def test_toy_motion_examples():
  examples = toy_video.toy_motion_examples(num_clips=4, frames_per_clip=2, size=(160, 224), seed=3)
  assert set(examples) == {"image", "mask", "video_id", "frame_index"}
  assert examples["image"].shape == (8, 160, 224, 3) and examples["image"].dtype == np.uint8
  assert examples["mask"].shape == (8, 20, 28) and examples["mask"].dtype == np.uint8
  assert set(np.unique(examples["mask"])) <= {0, 1}
  assert examples["frame_index"].dtype == np.int64
  assert ((examples["frame_index"] >= 0) & (examples["frame_index"] < 12)).all()
  assert examples["video_id"].tolist() == [f"toy_video/3/{i}".encode() for i in range(4)
                                           for _ in range(2)]
  # Every clip has moving objects, so every label has moving cells, but not too many.
  assert (examples["mask"].sum(axis=(1, 2)) > 0).all()
  assert examples["mask"].mean() < 0.5
  again = toy_video.toy_motion_examples(num_clips=4, frames_per_clip=2, size=(160, 224), seed=3)
  for key in examples:
    np.testing.assert_array_equal(examples[key], again[key])
