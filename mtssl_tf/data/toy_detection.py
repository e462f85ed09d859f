"""The built-in toy detection scenes: textured shapes on textured backgrounds, with their boxes.

The PASCAL VOC detection evaluation (paper section 5) trains Faster R-CNN on images with boxed,
classified objects. Tests and the demo need such data without a download, and a detector must
be able to learn it in a few hundred CPU steps. VOC's classes are told apart by form, not by
hue, and the pretext tasks are built to ignore color (paper sections 3.1-3.2), so the class of
a toy object is visible in its outline only:

  * class c is drawn as shape `SHAPES[c % 3]` (rectangle, ellipse, upright triangle) in a color
    drawn independently of the class (a uniform hue, saturation 0.6-1, value 0.6-1), with a
    stripe texture of its own;
  * the background is a low-saturation gradient with stripes, and every pixel gets noise;
  * each scene has 1 to `max_objects` objects, 20-50% of the image height, that never overlap
    (placements that would are redrawn, and dropped after 20 tries), so every box is fully
    visible and is exactly the drawn shape's extent.

`to_voc_example` turns a scene into a TFDS `voc/2007`-shaped example, so the evaluation reads
toy scenes and VOC through one input pipeline.
"""

import colorsys
import functools

import numpy as np
import tensorflow as tf

SHAPES = ("rectangle", "ellipse", "triangle")
NUM_CLASSES = 3
# (height, width) of the scenes the evaluation draws.
SIZE = (128, 128)
# Tries to place an object where it overlaps no other before it is dropped.
_PLACEMENT_TRIES = 20


def _hsv_color(hue, saturation, value):
  return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32) * 255.0


def _stripes(rng, yy, xx, amplitude):
  angle = rng.uniform(0, np.pi)
  period = rng.uniform(5.0, 12.0)
  phase = (yy * np.sin(angle) + xx * np.cos(angle)) * 2 * np.pi / period
  return amplitude * np.sin(phase)[..., None]


def _shape_mask(shape, yy, xx, top, left, height, width):
  inside_y = (yy >= top) & (yy < top + height)
  inside_x = (xx >= left) & (xx < left + width)
  if shape == "rectangle":
    return inside_y & inside_x
  cy, cx = top + height / 2.0, left + width / 2.0
  if shape == "ellipse":
    return ((yy + 0.5 - cy) / (height / 2.0))**2 + ((xx + 0.5 - cx) / (width / 2.0))**2 <= 1.0
  # An upright isosceles triangle: apex at the top centre, base the bottom edge.
  rel = (yy + 0.5 - top) / height
  return inside_y & (np.abs(xx + 0.5 - cx) <= rel * width / 2.0)


def make_scenes(num_scenes=256, size=SIZE, num_classes=NUM_CLASSES, max_objects=3, seed=0):
  """Toy detection scenes (see the module docstring); deterministic given the seed.

  Args:
    num_scenes: number of scenes.
    size: (height, width) in pixels.
    num_classes: number of object classes.
    max_objects: most objects per scene.
    seed: random seed.

  Returns:
    dict of numpy arrays: "image" uint8 [N, H, W, 3]; "bbox" float32 [N, max_objects, 4],
    normalized (ymin, xmin, ymax, xmax) like TFDS's, the continuous extent of the drawn shape
    (rows r0..r1 give ymin = r0 / H, ymax = (r1 + 1) / H), zeros for absent objects; "label"
    int64 [N, max_objects] (-1 for absent objects); "num_objects" int32 [N].
  """
  rng = np.random.RandomState(seed)
  height, width = size
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  images = np.zeros([num_scenes, height, width, 3], np.uint8)
  boxes = np.zeros([num_scenes, max_objects, 4], np.float32)
  labels = np.full([num_scenes, max_objects], -1, np.int64)
  counts = np.zeros([num_scenes], np.int32)
  fy, fx = yy[..., None] / max(height - 1, 1), xx[..., None] / max(width - 1, 1)
  for n in range(num_scenes):
    # Background: grey corners tinted slightly, blended bilinearly, with stripes.
    corners = rng.uniform(70.0, 190.0, [4, 1]) + rng.uniform(-25.0, 25.0, [4, 3])
    image = ((corners[0] * (1 - fx) + corners[1] * fx) * (1 - fy) +
             (corners[2] * (1 - fx) + corners[3] * fx) * fy)
    image = image + _stripes(rng, yy, xx, 12.0)
    placed = []
    for _ in range(rng.randint(1, max_objects + 1)):
      for _ in range(_PLACEMENT_TRIES):
        box_h = rng.uniform(0.2, 0.5) * height
        box_w = min(box_h * rng.uniform(0.7, 1.4), 0.6 * width)
        top = rng.uniform(0, height - box_h)
        left = rng.uniform(0, width - box_w)
        # One pixel of margin between objects so that drawn shapes cannot touch.
        if all(top > b[2] + 1 or top + box_h < b[0] - 1 or left > b[3] + 1 or
               left + box_w < b[1] - 1 for b in placed):
          break
      else:
        continue
      label = rng.randint(num_classes)
      mask = _shape_mask(SHAPES[label % len(SHAPES)], yy, xx, top, left, box_h, box_w)
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      if not rows.size:
        continue
      color = _hsv_color(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
      image = np.where(mask[..., None], color + _stripes(rng, yy, xx, 20.0), image)
      k = len(placed)
      placed.append((top, left, top + box_h, left + box_w))
      boxes[n, k] = (rows[0] / height, cols[0] / width, (rows[-1] + 1) / height,
                     (cols[-1] + 1) / width)
      labels[n, k] = label
    counts[n] = len(placed)
    image = image + rng.normal(0.0, 6.0, image.shape)
    images[n] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return {"image": images, "bbox": boxes, "label": labels, "num_objects": counts}


@functools.lru_cache(maxsize=4)
def cached_scenes(num_scenes, size, num_classes, seed):
  """`make_scenes`, drawn once per argument set: an evaluation reads its toy set several
  times (input spec, training, test)."""
  return make_scenes(num_scenes=num_scenes, size=size, num_classes=num_classes, seed=seed)


def to_voc_example(scene):
  """One `make_scenes` row (tensors, in tf.data) -> a TFDS `voc/2007`-shaped example.

  Returns:
    {"image": uint8 [H, W, 3], "objects": {"bbox": [n, 4], "label": [n], "is_difficult":
    all False [n]}}, n = the scene's "num_objects".
  """
  count = scene["num_objects"]
  return {"image": scene["image"],
          "objects": {"bbox": scene["bbox"][:count], "label": scene["label"][:count],
                      "is_difficult": tf.zeros([count], tf.bool)}}
