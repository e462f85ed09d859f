"""The built-in toy videos: a textured world seen by a moving camera, with objects moving in it.

The motion segmentation task (paper section 2) shows the network one frame and asks which pixels
will move. Its labels come from video: pixels are tracked densely over several frames, the camera
motion is explained away by a homography, and whatever still moves is an object. Tests of that
label maker and smoke runs of the task need videos without a download, and, unlike for real
videos, need to know the right answer. The toy clips therefore come with

  * the frames, rendered by warping a textured world canvas with a known camera homography per
    frame (static, panning, panning and zooming, or panning and rotating);
  * the true masks of the pixels of the objects that move on their own in each frame;
  * the camera homographies themselves, so that a test can undo the camera exactly.

The label maker tracks with dense optical flow, which is ill-posed on flat regions and on
motions much larger than the texture scale. So the world is textured everywhere (smoothed colour
noise at several scales, shapes with edges, and fine luminance noise at 2-8 px scales), objects
carry their own, different texture (stripes over a saturated colour), and motions are moderate:
see the `*_RANGE` constants below. A little independent pixel noise per frame stands in for
sensor noise, so that no two frames are equal even where nothing moves.

Coordinates: points are (x, y) pixel coordinates with pixel centers at integers, the convention
of `cv2.warpPerspective`. World coordinates are the pixel coordinates of frame 0, so `camera[0]`
is the identity, and a static camera is the identity in every frame.
"""

import collections
import os

import cv2
import numpy as np

from mtssl_tf.data import motion_labels

# Camera modes of `make_clip`; `toy_motion_examples` cycles through them in this order.
CAMERAS = ("static", "pan", "pan_zoom", "rotate")
# Camera translation, in frame pixels per frame, in a uniformly random direction.
PAN_SPEED_RANGE = (1.5, 3.0)
# Relative change of the camera's scale per frame (zoom in or out with equal chance):
# scale_t = (1 +- rate)**t about the frame center.
ZOOM_RATE_RANGE = (0.004, 0.01)
# Camera roll about the frame center, in degrees per frame, either way ("rotate" only).
ROTATION_RATE_RANGE = (0.2, 0.5)
# Object speed in world pixels per frame, in a random direction. The lower end leaves a motion
# relative to the scene of >= 2 px/frame on screen even when a zoom-out has shrunk the scale to
# 0.9 (12 frames at 1%/frame).
OBJECT_SPEED_RANGE = (2.25, 4.0)
# Object spin about its own center, in degrees per frame, either way.
OBJECT_SPIN_RANGE = (0.0, 1.0)
# Object size (its longer axis) as a fraction of the frame's shorter side.
OBJECT_SIZE_RANGE = (0.15, 0.25)
# Standard deviation of the independent per-frame pixel noise, on the 0-255 scale.
NOISE_STD = 2.0
# Cell size, in pixels, of the motion segmentation labels that `toy_motion_examples` returns.
MASK_FACTOR = 8

# Objects keep this many pixels between their bounding circle and the frame border, and between
# each other's bounding circles, in every frame.
_OBJECT_MARGIN = 3.0
# Tries at placing one object before giving up (the defaults need a handful).
_PLACEMENT_TRIES = 2000
# Extra world canvas around what the camera sees over the clip, in pixels.
_CANVAS_MARGIN = 16
# Background texture: (Gaussian sigma in px, amplitude on 0-255, colour or luminance-only).
# The coarse layers vary colour across the scene; the fine luminance layers are what optical flow
# locks on to.
_BACKGROUND_LAYERS = ((32.0, 30.0, True), (12.0, 20.0, True), (4.0, 14.0, True),
                      (2.5, 16.0, False), (1.2, 18.0, False))
# Period, in pixels, of the stripes on the objects.
_OBJECT_STRIPE_PERIOD_RANGE = (10.0, 16.0)
# Shapes (rectangles, ellipses, lines) on the background per 10,000 canvas pixels.
_SHAPES_PER_10K_PIXELS = 1.5
# Frames per clip in `toy_motion_examples`.
_EXAMPLE_CLIP_FRAMES = 12
# Video codecs by file extension, for `write_video`.
_FOURCC_BY_EXTENSION = {".avi": "MJPG", ".mp4": "mp4v"}

Clip = collections.namedtuple("Clip", ["frames", "masks", "camera"])
Clip.__doc__ = """One toy video clip.

Attributes:
  frames: uint8 [T, H, W, 3], RGB.
  masks: bool [T, H, W]; True on the pixels of objects that move on their own in frame t (all
    False when the clip was made with `object_motion=False`).
  camera: float32 [T, 3, 3]; camera[t] maps world (x, y, 1) (= frame 0 pixel coordinates) to
    frame t pixel coordinates, up to scale. camera[0] is the identity.
"""


def _translation(tx, ty):
  return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _similarity(scale, angle):
  """Scale and rotation about the origin; `angle` in radians."""
  c, s = scale * np.cos(angle), scale * np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _apply(homography, points):
  """Maps (x, y) points [..., 2] through a 3x3 homography."""
  points = np.asarray(points, np.float64)
  mapped = points @ homography[:2, :2].T + homography[:2, 2]
  w = points @ homography[2, :2] + homography[2, 2]
  return mapped / w[..., None]


def _random_direction(rng):
  angle = rng.uniform(0.0, 2 * np.pi)
  return np.array([np.cos(angle), np.sin(angle)])


def _camera_trajectory(rng, camera, num_frames, height, width):
  """float64 [T, 3, 3] homographies from world (= frame 0 pixels) to frame t pixels."""
  if camera not in CAMERAS:
    raise ValueError(f"Unknown camera {camera!r}; expected one of {CAMERAS}.")
  # Every mode draws the same numbers, so that a seed gives the same world whatever the camera.
  pan = rng.uniform(*PAN_SPEED_RANGE) * _random_direction(rng)
  zoom = rng.uniform(*ZOOM_RATE_RANGE) * rng.choice([-1.0, 1.0])
  roll = np.deg2rad(rng.uniform(*ROTATION_RATE_RANGE)) * rng.choice([-1.0, 1.0])
  if camera == "static":
    pan = np.zeros(2)
  if camera != "pan_zoom":
    zoom = 0.0
  if camera != "rotate":
    roll = 0.0
  center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  homographies = []
  for t in range(num_frames):
    # The camera looks at world point center + pan * t; the scene appears to move by -pan.
    look_at = center + pan * t
    homographies.append(
        _translation(*center) @ _similarity((1.0 + zoom)**t, roll * t) @ _translation(*-look_at))
  return np.stack(homographies)


def _frame_corners(height, width):
  return np.array([[0.0, 0.0], [width - 1.0, 0.0], [0.0, height - 1.0],
                   [width - 1.0, height - 1.0]])


def _smooth_noise(rng, shape, sigma):
  """Gaussian-blurred white noise of the given shape, rescaled to unit standard deviation."""
  noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma,
                           borderType=cv2.BORDER_REFLECT)
  # OpenCV drops a trailing 1-channel axis; put it back.
  noise = noise.reshape(shape)
  return noise / max(float(noise.std()), 1e-6)


def _background(rng, height, width):
  """The world canvas: float32 [height, width, 3], textured everywhere, mostly in [0, 255]."""
  image = np.full((height, width, 3), 128.0, np.float32) + rng.uniform(-30.0, 30.0, 3)
  fine = []
  for sigma, amplitude, colour in _BACKGROUND_LAYERS:
    layer = amplitude * _smooth_noise(rng, (height, width, 3 if colour else 1), sigma)
    if sigma >= 4.0:
      image += layer
    else:
      fine.append(layer)
  # Shapes give edges and corners at all orientations; filled ones get the fine texture below,
  # so they are not flat.
  num_shapes = int(round(_SHAPES_PER_10K_PIXELS * height * width / 1e4))
  for _ in range(num_shapes):
    colour = tuple(float(c) for c in rng.uniform(50.0, 205.0, 3))
    x, y = int(rng.randint(0, width)), int(rng.randint(0, height))
    kind = rng.randint(3)
    if kind == 0:
      w, h = rng.randint(6, 40, size=2)
      cv2.rectangle(image, (x, y), (int(x + w), int(y + h)), colour, thickness=-1)
    elif kind == 1:
      axes = tuple(int(a) for a in rng.randint(4, 22, size=2))
      cv2.ellipse(image, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, thickness=-1,
                  lineType=cv2.LINE_AA)
    else:
      end = (int(x + rng.randint(-40, 41)), int(y + rng.randint(-40, 41)))
      cv2.line(image, (x, y), end, colour, thickness=int(rng.randint(1, 4)), lineType=cv2.LINE_AA)
  for layer in fine:
    image += layer
  return image


def _saturated_colour(rng):
  """A random saturated RGB colour (HSV with s in [0.6, 1], v in [0.5, 0.85]) in [0, 255]."""
  hue = rng.uniform(0.0, 6.0)
  saturation = rng.uniform(0.6, 1.0)
  value = rng.uniform(0.5, 0.85)
  x = 1.0 - abs(hue % 2.0 - 1.0)
  rgb = np.asarray([(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6])
  return (1.0 - saturation * (1.0 - rgb)) * value * 255.0


def _object_sprite(rng, short_side):
  """One object in its own frame.

  Returns:
    (texture float32 [S, S, 3], alpha float32 [S, S] in [0, 1], radius): the sprite's center is
    at pixel ((S - 1) / 2, (S - 1) / 2) and its support lies within `radius` of it.
  """
  major = rng.uniform(*OBJECT_SIZE_RANGE) * short_side / 2.0
  minor = major * rng.uniform(0.6, 1.0)
  half = int(np.ceil(major)) + 3
  size = 2 * half + 1
  yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
  tilt = rng.uniform(0.0, np.pi)
  u = np.cos(tilt) * xx + np.sin(tilt) * yy
  v = -np.sin(tilt) * xx + np.cos(tilt) * yy
  kind = rng.randint(3)
  if kind == 0:  # Ellipse.
    support = (u / major)**2 + (v / minor)**2 <= 1.0
  elif kind == 1:  # Rounded rectangle (a superellipse), inside the same ellipse's bounding box.
    support = (u / major)**4 + (v / minor)**4 <= 1.0
  else:  # Blob: an ellipse with a wobbly radius, kept within the major axis.
    angle = np.arctan2(v, u)
    wobble = sum(
        rng.uniform(0.04, 0.1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    support = np.hypot(u / major, v / minor) <= (1.0 + wobble) / 1.3
  # Slightly soft edges, so that warped masks are anti-aliased rather than jagged.
  alpha = cv2.GaussianBlur(support.astype(np.float32), (0, 0), 0.6)
  radius = float(np.hypot(xx, yy)[alpha > 0.01].max()) + 1.0

  # Own texture, unlike the background's: a saturated colour with broad stripes and fine
  # luminance noise. The stripes' period is more than twice the fastest object motion, so that
  # optical flow cannot lock on to the wrong stripe.
  period = rng.uniform(*_OBJECT_STRIPE_PERIOD_RANGE)
  direction = rng.uniform(0.0, np.pi)
  stripes = np.sin(2 * np.pi / period * (np.cos(direction) * xx + np.sin(direction) * yy) +
                   rng.uniform(0, 2 * np.pi))
  texture = (_saturated_colour(rng).astype(np.float32) + 20.0 * stripes[..., None] +
             22.0 * _smooth_noise(rng, (size, size, 1), 1.2) +
             14.0 * _smooth_noise(rng, (size, size, 1), 3.0))
  return texture.astype(np.float32), alpha, radius


def _place_object(rng, radius, homographies, placed, object_motion, height, width):
  """Draws a start (world) position and velocity keeping the object in view and apart.

  Args:
    rng: the clip's `np.random.RandomState`.
    radius: the object's bounding radius in world pixels.
    homographies: float64 [T, 3, 3] camera trajectory.
    placed: list of (centers [T, 2] on screen, radius [T] on screen) of objects placed so far.
    object_motion: whether the object moves in the world.
    height: frame height.
    width: frame width.

  Returns:
    (start [2], velocity [2], spin in rad/frame, centers [T, 2] on screen, radii [T] on screen).

  Raises:
    RuntimeError: when no placement fits (too many objects or too long a clip for the frame).
  """
  num_frames = len(homographies)
  t = np.arange(num_frames, dtype=np.float64)
  # Screen scale of each frame: the square root of the determinant of the affine part.
  scales = np.sqrt(np.abs(np.linalg.det(homographies[:, :2, :2])))
  screen_radii = radius * scales
  for _ in range(_PLACEMENT_TRIES):
    low = radius + _OBJECT_MARGIN
    start = np.array([rng.uniform(low, width - 1 - low), rng.uniform(low, height - 1 - low)])
    velocity = rng.uniform(*OBJECT_SPEED_RANGE) * _random_direction(rng)
    spin = np.deg2rad(rng.uniform(*OBJECT_SPIN_RANGE)) * rng.choice([-1.0, 1.0])
    if not object_motion:
      velocity, spin = np.zeros(2), 0.0
    world = start + velocity * t[:, None]
    centers = np.stack([_apply(h, p) for h, p in zip(homographies, world)])
    inside = ((centers - screen_radii[:, None] >= _OBJECT_MARGIN).all() and
              (centers[:, 0] + screen_radii <= width - 1 - _OBJECT_MARGIN).all() and
              (centers[:, 1] + screen_radii <= height - 1 - _OBJECT_MARGIN).all())
    apart = all((np.linalg.norm(centers - other, axis=1) >= screen_radii + other_radii +
                 _OBJECT_MARGIN).all() for other, other_radii in placed)
    if inside and apart:
      return start, velocity, spin, centers, screen_radii
  raise RuntimeError(
      f"Could not place object {len(placed) + 1} inside a {height}x{width} frame for "
      f"{num_frames} frames apart from the others; use fewer objects, fewer frames or a larger "
      "size.")


def make_clip(num_frames=12, size=(240, 320), camera="pan_zoom", num_objects=2,
              object_motion=True, seed=0):
  """Renders one toy clip; the same arguments always give the same clip.

  Args:
    num_frames: T, the number of frames.
    size: (H, W) of the frames.
    camera: one of `CAMERAS`: "static" (identity in every frame), "pan" (translation of
      `PAN_SPEED_RANGE` px/frame), "pan_zoom" (pan plus a zoom of `ZOOM_RATE_RANGE` per frame, in
      or out) or "rotate" (pan plus a roll of `ROTATION_RATE_RANGE` deg/frame).
    num_objects: number of textured objects, each fully inside every frame.
    object_motion: whether the objects move in the world (`OBJECT_SPEED_RANGE` px/frame plus a
      spin of `OBJECT_SPIN_RANGE` deg/frame). When False they are part of the rigid scene and
      the masks are all False.
    seed: seed of the `np.random.RandomState` that draws everything.

  Returns:
    A `Clip`: frames uint8 [T, H, W, 3] RGB, masks bool [T, H, W], camera float32 [T, 3, 3]
    (world = frame 0 pixel coordinates -> frame t pixel coordinates, (x, y) convention).

  Raises:
    ValueError: for an unknown camera, a non-positive frame count or size, or negative
      `num_objects`.
    RuntimeError: when the objects cannot be placed to stay in view and apart.
  """
  height, width = size
  if num_frames <= 0 or height <= 0 or width <= 0 or num_objects < 0:
    raise ValueError(f"Need num_frames > 0, a positive size and num_objects >= 0, got "
                     f"num_frames={num_frames}, size={size}, num_objects={num_objects}.")
  rng = np.random.RandomState(seed)
  homographies = _camera_trajectory(rng, camera, num_frames, height, width)

  # The canvas covers every frame's view of the world, plus a margin.
  corners = np.concatenate(
      [_apply(np.linalg.inv(h), _frame_corners(height, width)) for h in homographies])
  origin = np.floor(corners.min(axis=0)) - _CANVAS_MARGIN
  extent = np.ceil(corners.max(axis=0)) + _CANVAS_MARGIN - origin + 1
  canvas = _background(rng, int(extent[1]), int(extent[0]))
  # Canvas pixel (x, y) is world point origin + (x, y).
  canvas_to_world = _translation(*origin)

  objects = []
  placed = []
  for _ in range(num_objects):
    texture, alpha, radius = _object_sprite(rng, min(height, width))
    start, velocity, spin, centers, screen_radii = _place_object(
        rng, radius, homographies, placed, object_motion, height, width)
    placed.append((centers, screen_radii))
    objects.append((texture, alpha, start, velocity, spin))

  frames = np.empty((num_frames, height, width, 3), np.uint8)
  masks = np.zeros((num_frames, height, width), bool)
  flags = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
  for t, homography in enumerate(homographies):
    frame = cv2.warpPerspective(canvas, homography @ canvas_to_world, (width, height), **flags)
    for texture, alpha, start, velocity, spin in objects:
      sprite_center = (texture.shape[1] - 1) / 2.0
      # Sprite pixels -> world: spin about the sprite's center, then move to its position.
      sprite_to_world = (_translation(*(start + velocity * t)) @ _similarity(1.0, spin * t) @
                         _translation(-sprite_center, -sprite_center))
      warp = homography @ sprite_to_world
      warped_texture = cv2.warpPerspective(texture, warp, (width, height), **flags)
      warped_alpha = cv2.warpPerspective(alpha, warp, (width, height), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
      frame += warped_alpha[..., None] * (warped_texture - frame)
      if object_motion:
        masks[t] |= warped_alpha >= 0.5
    frame += rng.normal(0.0, NOISE_STD, size=frame.shape).astype(np.float32)
    frames[t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
  # Normalize so that camera[0] is exactly the identity (it is, up to rounding).
  camera_matrices = homographies / homographies[:, 2:3, 2:3]
  return Clip(frames=frames, masks=masks, camera=camera_matrices.astype(np.float32))


def write_video(path, frames, fps=25):
  """Writes RGB frames to a video file; the codec follows the extension.

  Args:
    path: output file; ".avi" is written with MJPG, ".mp4" with "mp4v". Both are lossy.
    frames: uint8 [T, H, W, 3], RGB.
    fps: frames per second recorded in the file.

  Returns:
    `path`.

  Raises:
    ValueError: for another extension, or frames that are not uint8 [T, H, W, 3].
    IOError: when OpenCV cannot open a writer for `path` (missing codec or directory).
  """
  extension = os.path.splitext(str(path))[1].lower()
  if extension not in _FOURCC_BY_EXTENSION:
    raise ValueError(f"Cannot choose a codec for {path!r}: the extension must be one of "
                     f"{sorted(_FOURCC_BY_EXTENSION)}.")
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"Expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}.")
  height, width = frames.shape[1:3]
  writer = cv2.VideoWriter(
      str(path), cv2.VideoWriter_fourcc(*_FOURCC_BY_EXTENSION[extension]), float(fps),
      (width, height))
  if not writer.isOpened():
    raise IOError(f"OpenCV could not open a {_FOURCC_BY_EXTENSION[extension]} video writer for "
                  f"{path!r}.")
  try:
    for frame in frames:
      writer.write(np.ascontiguousarray(frame[..., ::-1]))
  finally:
    writer.release()
  return path


def read_video(path):
  """Reads all frames of a video file.

  Args:
    path: a video file OpenCV can decode.

  Returns:
    uint8 [T, H, W, 3], RGB.

  Raises:
    IOError: when the file cannot be opened or holds no frames.
  """
  capture = cv2.VideoCapture(str(path))
  frames = []
  try:
    if not capture.isOpened():
      raise IOError(f"OpenCV could not open the video {path!r}.")
    while True:
      ok, frame = capture.read()
      if not ok:
        break
      frames.append(frame[..., ::-1])
  finally:
    capture.release()
  if not frames:
    raise IOError(f"No frames could be read from the video {path!r}.")
  return np.ascontiguousarray(np.stack(frames))


def toy_motion_examples(num_clips=4, frames_per_clip=2, size=(240, 320), seed=0):
  """The built-in toy source of the motion segmentation task: frames and their true masks.

  Clip i is `make_clip` with `_EXAMPLE_CLIP_FRAMES` frames, camera `CAMERAS[i % 4]`, two moving
  objects and a seed drawn from `seed`; `frames_per_clip` distinct frames are drawn from it.

  Args:
    num_clips: number of clips, N = num_clips * frames_per_clip examples in all.
    frames_per_clip: frames taken from each clip, at most `_EXAMPLE_CLIP_FRAMES`.
    size: (H, W) of the frames, multiples of `MASK_FACTOR`. Below about 160 px on the shorter
      side the smallest objects may cover no label cell by half, leaving a label all zeros.
    seed: seed of everything.

  Returns:
    {"image": uint8 [N, H, W, 3] RGB, "mask": uint8 [N, H/8, W/8] in {0, 1} (`motion_labels.downsample_mask`
    of the true mask), "video_id": bytes [N] ("toy_video/<seed>/<clip>"), "frame_index": int64
    [N] (the frame's index in its clip)}, clip by clip, frames in increasing order.

  Raises:
    ValueError: for non-positive counts, too many frames per clip or a size that is not a
      multiple of `MASK_FACTOR`.
  """
  height, width = size
  if num_clips <= 0 or not 0 < frames_per_clip <= _EXAMPLE_CLIP_FRAMES:
    raise ValueError(f"Need num_clips > 0 and 0 < frames_per_clip <= {_EXAMPLE_CLIP_FRAMES}, got "
                     f"{num_clips} and {frames_per_clip}.")
  if height % MASK_FACTOR or width % MASK_FACTOR:
    raise ValueError(f"Size {size} is not a multiple of {MASK_FACTOR}.")
  rng = np.random.RandomState(seed)
  images, labels, video_ids, frame_indices = [], [], [], []
  for i in range(num_clips):
    clip = make_clip(_EXAMPLE_CLIP_FRAMES, size, CAMERAS[i % len(CAMERAS)], num_objects=2,
                     object_motion=True, seed=int(rng.randint(2**31 - 1)))
    chosen = np.sort(rng.choice(_EXAMPLE_CLIP_FRAMES, frames_per_clip, replace=False))
    images.append(clip.frames[chosen])
    labels.append(
        motion_labels.downsample_mask(clip.masks[chosen], MASK_FACTOR).astype(np.uint8))
    video_ids.extend([f"toy_video/{seed}/{i}".encode()] * frames_per_clip)
    frame_indices.append(chosen)
  return {
      "image": np.concatenate(images),
      "mask": np.concatenate(labels),
      "video_id": np.array(video_ids),
      "frame_index": np.concatenate(frame_indices).astype(np.int64),
  }
