"""Motion segmentation labels from video: which pixels of a frame move on their own.

The paper (section 2) labels a frame with Improved Dense Trajectories (Wang & Schmid 2013)
tracked over 10 frames: whatever the camera's motion does not explain is foreground. This is
that idea, written with OpenCV:

1. Dense optical flow between consecutive frames t+k and t+k+1 (DIS or Farneback).
2. The camera's motion between them: a homography fitted with RANSAC to the flow sampled on a
   grid (IDT's assumption: the background dominates and moves as a plane or a rotation does).
3. Every pixel of frame t is tracked through the flows for `track_length` steps. At each step
   its residual is the distance between where the flow takes it and where the homography
   takes it. A track ends when it leaves the frame or fails the forward-backward check (the
   backward flow does not bring it back within `forward_backward_threshold` px: it was
   occluded, and following the flow further would follow whatever covers it).
4. A pixel is moving when its track lasted at least `min_track_steps` steps and its residual
   exceeded `residual_threshold` px in at least `min_moving_fraction` of them: the residual
   motion "stays" above the threshold, which one noisy flow vector cannot fake.
5. The mask is cleaned: an opening removes speckles, connected components smaller than
   `min_component_fraction` of the frame are dropped, holes smaller than `max_hole_fraction`
   are filled. Then it is downsampled by `stride` (8, the paper's), a cell moving when at least
   half its pixels are.

A static video gives an empty mask: nothing has residual motion. A step whose homography
cannot be fitted (too little texture) contributes no residual, though the tracks still follow
its flow (and still end there if they leave the frame or fail the check); with no fitted step at
all the mask is empty, and `LabelStats.failed_steps` says so.

Thresholds are in pixels of the frames given, so label at a fixed size (the tool resizes to
`max_side` 320 first); defaults are for that size. They were chosen on the built-in toy clips
(mtssl_tf/data/toy_video.py: textured objects moving 2-4 px/frame under pan and zoom), where a
looser forward-backward check (1 px) or "moving in half the steps" grew a halo around objects
(IoU with the true masks 0.47-0.61) and these settings give IoU 0.72-0.87 (precision 0.95,
recall 0.84 per pixel, 12 clips).
"""

import dataclasses

import cv2
import numpy as np

FLOW_METHODS = ("dis", "farneback")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
  """How labels are made; see the module docstring. Distances in pixels, per frame step."""
  track_length: int = 10
  flow_method: str = "dis"
  grid_step: int = 8
  ransac_threshold: float = 1.0
  forward_backward_threshold: float = 0.5
  residual_threshold: float = 1.0
  min_moving_fraction: float = 0.8
  min_track_steps: int = 3
  opening_size: int = 3
  min_component_fraction: float = 0.002
  max_hole_fraction: float = 0.002
  stride: int = 8

  def check(self):
    """Raises ValueError naming the setting (and its tool flag) that is out of range."""
    problems = []
    if self.track_length < 1:
      problems.append(f"track_length {self.track_length} < 1")
    if self.flow_method not in FLOW_METHODS:
      problems.append(f"flow_method {self.flow_method!r} not in {FLOW_METHODS}")
    if self.grid_step < 1:
      problems.append(f"grid_step {self.grid_step} < 1")
    if not 0 < self.min_moving_fraction <= 1:
      problems.append(f"min_moving_fraction {self.min_moving_fraction} not in (0, 1]")
    if not 1 <= self.min_track_steps <= self.track_length:
      problems.append(f"min_track_steps {self.min_track_steps} not in [1, track_length]")
    if self.stride < 1:
      problems.append(f"stride {self.stride} < 1")
    for name in ("ransac_threshold", "residual_threshold"):
      if getattr(self, name) <= 0:
        problems.append(f"{name} {getattr(self, name)} <= 0")
    if problems:
      raise ValueError("Bad motion label settings (tools/prepare_motion_segmentation.py flags "
                       "of the same names): " + "; ".join(problems) + ".")
    return self


@dataclasses.dataclass
class LabelStats:
  """What happened while labelling one frame (for the tool's summary)."""
  steps: int = 0
  failed_steps: int = 0
  inlier_fraction: float = 0.0
  moving_fraction: float = 0.0


_DIS = {}


def dense_flow(prev_gray, next_gray, method="dis"):
  """Optical flow from one grayscale frame to the next.

  Args:
    prev_gray, next_gray: uint8 [H, W].
    method: "dis" (OpenCV's DIS, medium preset) or "farneback".

  Returns:
    float32 [H, W, 2]: (dx, dy) such that prev[y, x] moves to next[y + dy, x + dx].
  """
  if method == "dis":
    # One DIS object per process: creating it costs more than a small flow.
    if "medium" not in _DIS:
      _DIS["medium"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _DIS["medium"].calc(prev_gray, next_gray, None)
  if method == "farneback":
    return cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, pyr_scale=0.5, levels=4,
                                        winsize=15, iterations=3, poly_n=5, poly_sigma=1.1,
                                        flags=0)
  raise ValueError(f"Unknown flow method {method!r}; choose one of {FLOW_METHODS}.")


def camera_homography(flow, grid_step=8, ransac_threshold=1.0):
  """The homography that explains most of a flow field: the camera's motion.

  Args:
    flow: float32 [H, W, 2] from `dense_flow`.
    grid_step: the flow is sampled every `grid_step` pixels.
    ransac_threshold: RANSAC inlier distance in pixels.

  Returns:
    (float64 [3, 3] mapping (x, y, 1) in the first frame to the second, fraction of grid points
    that are inliers) or (None, 0.0) when no homography could be fitted.
  """
  height, width = flow.shape[:2]
  ys, xs = np.mgrid[grid_step // 2:height:grid_step, grid_step // 2:width:grid_step]
  src = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)
  dst = src + flow[ys.ravel(), xs.ravel()]
  if len(src) < 8:
    return None, 0.0
  homography, inliers = cv2.findHomography(
      src, dst, cv2.RANSAC, ransacReprojThreshold=ransac_threshold, maxIters=2000,
      confidence=0.995)
  if homography is None:
    return None, 0.0
  return homography, float(inliers.mean())


def _apply_homography(homography, points):
  """(x, y) points [..., 2] through a 3x3 homography."""
  h = homography.astype(np.float32)
  x, y = points[..., 0], points[..., 1]
  denom = h[2, 0] * x + h[2, 1] * y + h[2, 2]
  return np.stack([(h[0, 0] * x + h[0, 1] * y + h[0, 2]) / denom,
                   (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / denom], -1)


def _sample(field, points):
  """Bilinear samples of a [H, W, C] field at (x, y) points [H', W', 2]."""
  return cv2.remap(field, points[..., 0], points[..., 1], interpolation=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)


def _to_gray(frame):
  if frame.ndim == 2:
    return frame
  return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def residual_steps(frames, config=LabelConfig()):
  """Tracks every pixel of frames[0] and counts its steps of motion the camera doesn't explain.

  The tracks follow every step's flow, also a step whose homography cannot be fitted: that
  step only has no residual to count, and the later flows are sampled where the tracks are.

  Args:
    frames: uint8 [T, H, W, 3] RGB (or [T, H, W] gray), T >= config.track_length + 1; frames
      after track_length + 1 are ignored.
    config: a `LabelConfig`.

  Returns:
    (steps int32 [H, W]: steps with a homography during which each track lasted; above int32
    [H, W]: those whose residual exceeded the threshold; end_points float32 [H, W, 2]: the
    (x, y) each pixel's track reached after the last step, followed through every flow even
    after the track ended; LabelStats).
  """
  grays = [_to_gray(f) for f in frames[:config.track_length + 1]]
  height, width = grays[0].shape
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  points = np.stack([xs, ys], -1)
  alive = np.ones([height, width], bool)
  steps = np.zeros([height, width], np.int32)
  above = np.zeros([height, width], np.int32)
  stats = LabelStats()
  inliers = []
  for k in range(len(grays) - 1):
    forward = dense_flow(grays[k], grays[k + 1], config.flow_method)
    moved = points + _sample(forward, points)
    inside = ((moved[..., 0] >= 0) & (moved[..., 0] <= width - 1) &
              (moved[..., 1] >= 0) & (moved[..., 1] <= height - 1))
    if config.forward_backward_threshold > 0:
      backward = dense_flow(grays[k + 1], grays[k], config.flow_method)
      back = moved + _sample(backward, moved)
      inside &= np.linalg.norm(back - points, axis=-1) <= config.forward_backward_threshold
    alive &= inside
    homography, inlier_fraction = camera_homography(forward, config.grid_step,
                                                    config.ransac_threshold)
    if homography is None:
      stats.failed_steps += 1
    else:
      inliers.append(inlier_fraction)
      residual = np.linalg.norm(moved - _apply_homography(homography, points), axis=-1)
      steps += alive
      above += alive & (residual > config.residual_threshold)
      stats.steps += 1
    points = moved
  stats.inlier_fraction = float(np.mean(inliers)) if inliers else 0.0
  return steps, above, points, stats


def clean_mask(mask, opening_size=3, min_component_fraction=0.002, max_hole_fraction=0.002):
  """Removes speckles and small components, fills small holes.

  Args:
    mask: bool [H, W].
    opening_size: side of the square structuring element of the opening; < 2 for none.
    min_component_fraction: components smaller than this fraction of the frame are dropped.
    max_hole_fraction: background components smaller than this that don't touch the border are
      filled.

  Returns:
    bool [H, W].
  """
  mask = mask.astype(np.uint8)
  if opening_size >= 2:
    kernel = np.ones([opening_size, opening_size], np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
  area = mask.size
  count, labels, component_stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  keep = np.zeros(count, bool)
  keep[1:] = component_stats[1:, cv2.CC_STAT_AREA] >= min_component_fraction * area
  mask = keep[labels]
  holes = (~mask).astype(np.uint8)
  count, labels, component_stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
  height, width = mask.shape
  for index in range(1, count):
    left, top, w, h, size = component_stats[index]
    touches_border = left == 0 or top == 0 or left + w == width or top + h == height
    if not touches_border and size <= max_hole_fraction * area:
      mask[labels == index] = True
  return mask


def downsample_mask(mask, stride=8):
  """Pools a pixel mask to cells: a cell is moving when at least half its pixels are.

  Args:
    mask: bool (or 0/1) [..., H, W].
    stride: cell size; H and W must be multiples of it.

  Returns:
    bool [..., H / stride, W / stride].

  Raises:
    ValueError: when H or W is not a multiple of `stride`, or `mask` has fewer than 2 dims.
  """
  mask = np.asarray(mask)
  if mask.ndim < 2:
    raise ValueError(f"Expected a mask [..., H, W], got shape {mask.shape}.")
  height, width = mask.shape[-2:]
  if stride <= 0 or height % stride or width % stride:
    raise ValueError(f"Mask size {height}x{width} is not a multiple of the stride {stride}; "
                     "crop frames to multiples of the stride before labelling.")
  cells = mask.astype(bool).reshape(
      mask.shape[:-2] + (height // stride, stride, width // stride, stride))
  # Count rather than average, so that "at least half" is exact.
  return 2 * cells.sum(axis=(-3, -1)) >= stride * stride


def label_frame(frames, config=LabelConfig()):
  """The moving-pixel mask of frames[0], from it and the `track_length` frames after it.

  Args:
    frames: uint8 [T, H, W, 3] RGB, T >= config.track_length + 1, H and W multiples of
      config.stride.
    config: a `LabelConfig`.

  Returns:
    (full-resolution bool [H, W], downsampled bool [H/stride, W/stride], LabelStats).

  Raises:
    ValueError: for too few frames or bad settings.
  """
  config.check()
  if len(frames) < config.track_length + 1:
    raise ValueError(f"Labelling a frame needs {config.track_length + 1} frames (track_length "
                     f"{config.track_length} + 1), got {len(frames)}.")
  steps, above, _, stats = residual_steps(frames, config)
  moving = (steps >= config.min_track_steps) & (above >= config.min_moving_fraction * steps)
  mask = clean_mask(moving, config.opening_size, config.min_component_fraction,
                    config.max_hole_fraction)
  stats.moving_fraction = float(mask.mean())
  return mask, downsample_mask(mask, config.stride), stats
