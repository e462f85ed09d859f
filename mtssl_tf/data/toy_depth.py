"""The built-in toy depth scenes: images whose content says how far each pixel is.

The NYU depth evaluation (paper section 5) regresses per-pixel depth from one image. Tests and
the demo need such pairs without a download, and a network must be able to learn something from
them, so the depth follows from monocular cues, as in a room:

  * a floor, a plane seen by a level camera: its depth is inversely proportional to the distance
    of the row below the horizon, `NEAREST_FLOOR x (H - horizon) / (row - horizon)`, from
    `NEAREST_FLOOR` metres at the bottom of the frame to `FAR_WALL` at the horizon;
  * a far wall above the horizon, at `FAR_WALL` metres;
  * 1-3 upright boxes, each at one depth in `BOX_DEPTH_RANGE`, standing on the floor (a box's
    base is the row where the floor has its depth) and drawn smaller the farther they are;
  * every surface textured with the toy images (mtssl_tf/data/toy.py), the texture finer the
    farther the surface, and shaded darker with depth (`shade`).

Depths are in metres, like TFDS `nyu_depth_v2`'s, and every pixel is valid (> 0).
"""

import numpy as np

from mtssl_tf.data import toy

# Depth of the floor at the bottom row of the frame and of the far wall, in metres.
NEAREST_FLOOR = 1.5
FAR_WALL = 8.0
# Each box stands at a uniform depth in this range (metres).
BOX_DEPTH_RANGE = (1.5, 6.0)
# The horizon lies at a uniform fraction of the height in this range (from the top).
HORIZON_RANGE = (0.3, 0.5)


def shade(depth):
  """Brightness factor of a surface at `depth` metres: 1.2 - depth / 10, within [0.3, 1]."""
  return np.clip(1.2 - np.asarray(depth) / 10.0, 0.3, 1.0)


def make_scenes(num_scenes=32, size=(96, 128), seed=0):
  """Generates toy depth scenes; the same arguments always give the same scenes.

  Args:
    num_scenes: how many scenes to make.
    size: (height, width) of every image and depth map.
    seed: seed of the `np.random.RandomState` that draws the layouts (and, plus 1, the
      textures).

  Returns:
    dict of numpy arrays {"image": uint8 [N, H, W, 3], "depth": float32 [N, H, W]} (metres),
    the same keys as a TFDS `nyu_depth_v2` example.
  """
  rng = np.random.RandomState(seed)
  height, width = size
  textures = toy.make_toy_images(num_scenes + 4, (2 * height, 2 * width), seed + 1)
  images = np.zeros([num_scenes, height, width, 3], np.uint8)
  depths = np.zeros([num_scenes, height, width], np.float32)
  rows = np.arange(height, dtype=np.float32)[:, None]
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  for n in range(num_scenes):
    horizon = int(height * rng.uniform(*HORIZON_RANGE))
    floor = NEAREST_FLOOR * (height - horizon) / np.maximum(rows - horizon, 1e-3)
    depth = np.where(rows > horizon, np.minimum(floor, FAR_WALL), FAR_WALL) * np.ones([1, width])
    for _ in range(rng.randint(1, 4)):
      box_depth = rng.uniform(*BOX_DEPTH_RANGE)
      # The box stands on the floor: its base row is where the floor has its depth.
      base = int(min(height - 1, horizon + NEAREST_FLOOR * (height - horizon) / box_depth))
      box_height = int(rng.uniform(0.2, 0.5) * height * 2.0 / box_depth) + 4
      box_width = int(rng.uniform(0.1, 0.3) * width * 2.0 / box_depth) + 4
      left = rng.randint(0, max(1, width - box_width))
      top = max(0, base - box_height)
      region = (slice(top, base), slice(left, left + box_width))
      depth[region] = np.minimum(depth[region], box_depth)
    # The texture is sampled at coordinates scaled by 2 / depth: finer with distance.
    scale = 2.0 / depth
    ty = np.clip((ys * scale) % (2 * height), 0, 2 * height - 1).astype(int)
    tx = np.clip((xs * scale) % (2 * width), 0, 2 * width - 1).astype(int)
    texture = textures[n].astype(np.float32)
    images[n] = np.clip(texture[ty, tx] * shade(depth)[..., None], 0, 255).astype(np.uint8)
    depths[n] = depth
  return {"image": images, "depth": depths}
