"""The built-in toy images: structured, colorful, deterministic, generated in code.

Tests, the demo and smoke runs need images without a download. Pure noise would not do: each
pretext task needs something to learn. The toy images therefore have

  * a smooth color gradient as background, so that neighbouring patches differ predictably
    (relative position) and hue varies with position (colorization);
  * a few rectangles and ellipses in saturated colors, so that patches have edges and objects
    and an image can be told apart from its neighbours (exemplar);
  * faint stripes and pixel noise, so that no patch is flat and the trunk cannot match
    patches on exactly equal pixels (the "trivial shortcut" of paper section 3.2).

Every `GRAYSCALE_EVERY`-th image is grayscale (r = g = b), as a few ImageNet images are, so that
colorization's masking of grayscale images is exercised.
"""

import numpy as np

# The toy classification set (labelled by object shape, not color) lives in toy_shapes.
from mtssl_tf.data.toy_shapes import toy_classification  # pylint: disable=unused-import

# Image i is grayscale when i % GRAYSCALE_EVERY == GRAYSCALE_EVERY - 1 (the 8th, 16th, ...).
GRAYSCALE_EVERY = 8
# ITU-R BT.601 luma weights, the ones tf.image.rgb_to_grayscale uses.
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)
# Shapes per image: at least _MIN_SHAPES, fewer than _MAX_SHAPES.
_MIN_SHAPES = 2
_MAX_SHAPES = 6
# Standard deviation of the pixel noise, on the 0-255 scale.
_NOISE_STD = 6.0
# Amplitude of the stripe texture, on the 0-255 scale.
_STRIPE_AMPLITUDE = 10.0


def is_grayscale_index(index):
  """Whether toy image number `index` is one of the grayscale ones."""
  return index % GRAYSCALE_EVERY == GRAYSCALE_EVERY - 1


def _saturated_color(rng):
  """A random fully saturated, bright RGB color (HSV with s=1, v in [0.8, 1]) in [0, 255]."""
  hue = rng.uniform(0.0, 6.0)
  value = rng.uniform(0.8, 1.0)
  # The standard HSV -> RGB sector formula with saturation 1.
  x = 1.0 - abs(hue % 2.0 - 1.0)
  sector = int(hue) % 6
  rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][sector]
  return np.asarray(rgb, np.float32) * value * 255.0


def _toy_image(rng, height, width):
  """One color toy image as float32 [height, width, 3] in [0, 255]."""
  yy, xx = np.meshgrid(
      np.linspace(0.0, 1.0, height, dtype=np.float32),
      np.linspace(0.0, 1.0, width, dtype=np.float32),
      indexing="ij")
  # Background: bilinear blend of four random corner colors, so hue changes across the image.
  corners = rng.uniform(30.0, 225.0, size=(4, 3)).astype(np.float32)
  top = corners[0] * (1 - xx[..., None]) + corners[1] * xx[..., None]
  bottom = corners[2] * (1 - xx[..., None]) + corners[3] * xx[..., None]
  image = top * (1 - yy[..., None]) + bottom * yy[..., None]

  for _ in range(rng.randint(_MIN_SHAPES, _MAX_SHAPES)):
    color = _saturated_color(rng)
    # Centers and half-sizes in relative coordinates; shapes may run off the border.
    cy, cx = rng.uniform(0.1, 0.9, size=2)
    hy, hx = rng.uniform(0.08, 0.3, size=2)
    if rng.rand() < 0.5:
      mask = (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
    else:
      mask = ((yy - cy) / hy)**2 + ((xx - cx) / hx)**2 <= 1.0
    image[mask] = color

  # Texture: oriented stripes of random frequency, then per-pixel noise.
  angle = rng.uniform(0.0, np.pi)
  frequency = rng.uniform(8.0, 30.0)
  phase = rng.uniform(0.0, 2 * np.pi)
  stripes = np.sin(2 * np.pi * frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
  image += _STRIPE_AMPLITUDE * stripes[..., None]
  image += rng.normal(0.0, _NOISE_STD, size=image.shape).astype(np.float32)
  return image


def make_toy_images(num_images=64, size=(160, 200), seed=0):
  """Generates the toy images; the same arguments always give the same images.

  Args:
    num_images: how many images to make.
    size: (height, width) of every image.
    seed: seed of the `np.random.RandomState` that draws everything.

  Returns:
    uint8 numpy array [num_images, height, width, 3], RGB in [0, 255]. Image i is grayscale
    (all three channels equal) when `is_grayscale_index(i)`.

  Raises:
    ValueError: for a non-positive count or size.
  """
  height, width = size
  if num_images <= 0 or height <= 0 or width <= 0:
    raise ValueError(f"Need num_images > 0 and a positive size, got num_images={num_images}, "
                     f"size={size}.")
  rng = np.random.RandomState(seed)
  images = np.empty((num_images, height, width, 3), np.uint8)
  for i in range(num_images):
    image = _toy_image(rng, height, width)
    if is_grayscale_index(i):
      image = np.repeat(image @ _LUMA[:, None], 3, axis=-1)
    images[i] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return images
