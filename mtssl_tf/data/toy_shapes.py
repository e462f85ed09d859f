"""The built-in toy classification set: one object per image, labelled by its shape alone.

The linear ImageNet evaluation (paper section 5) asks whether frozen block 3 features tell
object categories apart. ImageNet's categories are objects, recognized by form rather than by
hue, and the pretext tasks are built to ignore color (colorization sees grayscale input, the
exemplar task jitters hue, relative position drops color channels, paper sections 3.1-3.2). A toy
set for this evaluation therefore has to be separable by shape and not by color, so here

  * the class is the object's shape, one of `SHAPES` (square, disc, triangle, plus, ring,
    diamond, frame, cross), drawn at a random position near the middle (so that the
    evaluation's random crops keep it), at 50-80% of the shorter side, its aspect ratio
    jittered by up to 25%;
  * the object's color is drawn independently of its class: a uniform hue, saturation and
    value in [0.45, 1], and a stripe texture of random orientation and period of its own, so
    neither the mean color nor the texture says the class;
  * the background is a smooth gradient between four random corner colors with stripes of its
    own, and every pixel gets noise, as in the toy images of `mtssl_tf.data.toy`;
  * classes are balanced: image i has class i mod num_classes, in a random order.

A probe that reads color statistics alone sits at chance (1 / num_classes); one that reads
outlines can reach 100%.
"""

import colorsys
import functools

import numpy as np

SHAPES = ("square", "disc", "triangle", "plus", "ring", "diamond", "frame", "cross")
# Half the object's extent, as a fraction of the image's shorter side.
HALF_SIZE_RANGE = (0.25, 0.4)
# Largest offset of the object's centre from the image centre, as a fraction of each side.
CENTER_JITTER = 0.1
# Largest stretch of one axis against the other (1 + this, either way).
ASPECT_JITTER = 0.25
# Standard deviation of the pixel noise and stripe amplitudes, on the 0-255 scale.
_NOISE_STD = 6.0
_BACKGROUND_STRIPES = 10.0
_OBJECT_STRIPES = 20.0


def shape_mask(shape, u, v):
  """Whether points (u, v) of the object's frame (both in [-1, 1] on its box) are inside.

  Args:
    shape: one of `SHAPES`.
    u, v: float arrays of one shape: horizontal and vertical coordinates, v down.

  Returns:
    bool array: the shape's pixels.

  Raises:
    ValueError: for an unknown shape.
  """
  au, av = np.abs(u), np.abs(v)
  box = np.maximum(au, av)
  radius = np.sqrt(u**2 + v**2)
  if shape == "square":
    return box <= 0.85
  if shape == "disc":
    return radius <= 0.95
  if shape == "triangle":
    # Upright: apex at the top centre, base along the bottom edge.
    return (av <= 0.95) & (au <= (v + 0.95) / 1.9 * 0.95)
  if shape == "plus":
    return ((au <= 0.3) | (av <= 0.3)) & (box <= 0.95)
  if shape == "ring":
    return (radius <= 0.95) & (radius >= 0.55)
  if shape == "diamond":
    return au + av <= 1.0
  if shape == "frame":
    return (box <= 0.9) & (box >= 0.55)
  if shape == "cross":
    return ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4)) & (box <= 0.95)
  raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}.")


def _stripes(rng, yy, xx, amplitude):
  angle = rng.uniform(0.0, np.pi)
  period = rng.uniform(4.0, 10.0)
  phase = rng.uniform(0.0, 2 * np.pi)
  wave = np.sin((yy * np.sin(angle) + xx * np.cos(angle)) * 2 * np.pi / period + phase)
  return amplitude * wave[..., None]


def _image(rng, label, height, width, yy, xx):
  """One image of class `label`: float32 [height, width, 3] in [0, 255] (before clipping)."""
  fy, fx = yy[..., None] / max(height - 1, 1), xx[..., None] / max(width - 1, 1)
  corners = rng.uniform(30.0, 225.0, size=(4, 3))
  image = ((corners[0] * (1 - fx) + corners[1] * fx) * (1 - fy) +
           (corners[2] * (1 - fx) + corners[3] * fx) * fy)
  image = image + _stripes(rng, yy, xx, _BACKGROUND_STRIPES)
  side = min(height, width)
  half = rng.uniform(*HALF_SIZE_RANGE) * side
  stretch = rng.uniform(1.0, 1.0 + ASPECT_JITTER)
  half_y, half_x = (half * stretch, half) if rng.rand() < 0.5 else (half, half * stretch)
  cy = height / 2 + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * height
  cx = width / 2 + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * width
  mask = shape_mask(SHAPES[label], (xx + 0.5 - cx) / half_x, (yy + 0.5 - cy) / half_y)
  color = np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.45, 1.0),
                                         rng.uniform(0.45, 1.0)), np.float32) * 255.0
  image = np.where(mask[..., None], color + _stripes(rng, yy, xx, _OBJECT_STRIPES), image)
  return image + rng.normal(0.0, _NOISE_STD, size=image.shape)


def toy_classification(num_images=128, size=(96, 112), num_classes=len(SHAPES), seed=0):
  """The toy classification set (see the module docstring); the same arguments, the same set.

  Args:
    num_images: how many images.
    size: (height, width) of every image.
    num_classes: how many of `SHAPES` (the first ones) are classes.
    seed: seed of the `np.random.RandomState` that draws everything.

  Returns:
    dict of numpy arrays {"image": uint8 [N, H, W, 3], "label": int64 [N]}.

  Raises:
    ValueError: for a non-positive count or size, or more classes than shapes.
  """
  height, width = size
  if num_images <= 0 or height <= 0 or width <= 0:
    raise ValueError(f"Need num_images > 0 and a positive size, got num_images={num_images}, "
                     f"size={size}.")
  if not 1 <= num_classes <= len(SHAPES):
    raise ValueError(f"The toy classification set has {len(SHAPES)} shapes; num_classes must "
                     f"be 1-{len(SHAPES)}, got {num_classes}.")
  return dict(_make(num_images, (height, width), num_classes, seed))


@functools.lru_cache(maxsize=4)
def _make(num_images, size, num_classes, seed):
  """The set, drawn once per argument set (an evaluation reads it several times: input spec,
  batch norm statistics, training, test); its arrays are read-only."""
  height, width = size
  rng = np.random.RandomState(seed)
  labels = rng.permutation(np.arange(num_images) % num_classes).astype(np.int64)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  images = np.empty((num_images, height, width, 3), np.uint8)
  for i, label in enumerate(labels):
    image = _image(rng, label, height, width, yy, xx)
    images[i] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  images.flags.writeable = labels.flags.writeable = False
  return {"image": images, "label": labels}
