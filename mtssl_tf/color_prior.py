"""The empirical ab color prior of Zhang et al. 2016 (section 2.2), for colorization's class
rebalancing: computed from the pretraining images by `tools/compute_color_prior.py`, and from
the toy images by the demo before it pretrains.

Streams images from any `mtssl_tf.data.sources.image_dataset` source, converts each to Lab, and
counts the ab value of its pixels over the 313 bins by nearest bin centre. The counts are
smoothed with a Gaussian over ab (`color.smooth_prior`, sigma 5 as in the paper) into a
probability vector of 313 entries summing to 1, which `colorization.prior_path` reads (gin) to
build the rebalancing weights.

What is counted, and why:
  * At most `num_images` decoded images (0: the whole source), in the source's shuffled file
    order (`image_dataset` shuffles files by default, so a folder of class directories is
    sampled across classes, not class by class).
  * Each image is first resized (bilinear) so that its shorter side is at most `max_side`, then
    every `pixel_stride`-th pixel of every `pixel_stride`-th row, from the top-left, is
    counted. Both only make the count cheaper: the prior is a distribution over colors, which
    a few thousand pixels per image estimate as well as all of them.
  * Grayscale images (every counted pixel has |a|, |b| < 5: `color.is_grayscale`, the test that
    colorization's loss uses to leave images out) are skipped and counted. The test looks at the
    counted pixels only (all of them with pixel_stride=1), so an otherwise gray image whose
    color lies only between them is skipped too; it would have added almost only gray pixels.
  * Each pixel goes to the bin whose centre is nearest (`nearest_bin` here: the result of
    `color.nearest_bin`, found by rounding to the bins' grid of 10 first).
  * Images that cannot be decoded (TFRecord and folder sources) are skipped by the source and
    counted with `sources.DecodeStats`.

Outputs of `make_prior_file` (written atomically, each through a temporary file and
`os.replace`, so a killed run never leaves a truncated prior; local filesystems only):
  <output>        float64 .npy [313], the smoothed prior.
  <output>.json   summary: images read, used, grayscale and decode-skipped, pixels counted, the
                  source, the settings, the 10 most frequent bins with their ab centres, and
                  the raw (unsmoothed) counts, from which a prior with another sigma can be
                  recomputed without reading the images again. `decode_skipped` is exact when
                  the source was read to the end, else null, with `decode_skipped_at_most`
                  (images still being decoded when reading stopped are not told apart from
                  failed ones).
"""

import inspect
import json
import os
import time

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import files
from mtssl_tf.data import sources

# Arguments of `image_dataset` recorded in the JSON summary to say what was read.
_DESCRIBED_ARGS = ("source", "name", "split", "data_dir", "pattern", "image_key",
                   "shuffle_files", "seed", "num_toy_images", "toy_size")
# Images per batch of per-image counts brought to the host.
_BATCH = 32
TOP_BINS = 10
# Spacing of the ab grid the bin centres lie on.
_GRID = 10.0


def summary_path(output):
  """The JSON summary's path for the prior at `output`."""
  return output + ".json"


def _bin_table():
  """Lookup table from ab grid cell to bin index, for `nearest_bin`.

  Returns:
    (table: int32 numpy array [cells along a, cells along b] of bin indices, -1 where the grid
     point is not a bin; offset: int numpy array [2], the (a, b) cell of table[0, 0]).

  Raises:
    ValueError: if the bin centres are not on a grid of `_GRID` (the shipped ones are).
  """
  bins = color.ab_bins()
  cells = np.round(bins / _GRID).astype(np.int64)
  if not np.allclose(cells * _GRID, bins):
    raise ValueError(f"The ab bin centres are not on a grid of {_GRID}.")
  offset = cells.min(axis=0)
  table = np.full(cells.max(axis=0) - offset + 1, -1, np.int32)
  table[cells[:, 0] - offset[0], cells[:, 1] - offset[1]] = np.arange(len(bins), dtype=np.int32)
  return table, offset


def nearest_bin(ab):
  """`color.nearest_bin`, several times faster, with the same result (ties aside).

  The bin centres are points of a grid of 10 (Zhang et al.'s quantization), so the grid point
  nearest to an ab value is its coordinates rounded to the grid; when that point is a bin it
  is the nearest bin. Only values whose grid point is not a bin (out of the gamut's hull) need
  the full search of `color.nearest_bin` over the 313 centres. Where a value is exactly halfway
  between two centres either may be returned.

  Args:
    ab: float Tensor [N, 2].

  Returns:
    int32 Tensor [N], bin indices.
  """
  ab = tf.convert_to_tensor(ab, tf.float32)
  table, offset = _bin_table()
  cell = tf.cast(tf.round(ab / _GRID), tf.int32) - tf.constant(offset, tf.int32)
  inside = tf.reduce_all((cell >= 0) & (cell < tf.constant(table.shape, tf.int32)), axis=-1)
  cell = tf.clip_by_value(cell, 0, tf.constant(table.shape, tf.int32) - 1)
  index = tf.where(inside, tf.gather_nd(tf.constant(table), cell), -1)
  missing = tf.where(index < 0)
  return tf.tensor_scatter_nd_update(index, missing,
                                     color.nearest_bin(tf.gather_nd(ab, missing)))


def _image_counts(image, max_side, pixel_stride):
  """One image's ab histogram.

  Args:
    image: uint8 Tensor [H, W, 3].
    max_side: int, the largest allowed shorter side.
    pixel_stride: int, subsampling step in both directions.

  Returns:
    dict: 'counts' int64 [313] (zeros for a grayscale image), 'grayscale' bool [],
    'pixels' int64 [] (pixels in 'counts').
  """
  image = tf.cast(image, tf.float32)
  size = tf.shape(image)[:2]
  shorter = tf.reduce_min(size)

  def shrink():
    scale = tf.cast(max_side, tf.float32) / tf.cast(shorter, tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
    # No antialiasing: it would cost more than the rest of the count, and a histogram needs
    # a sample of the pixels' colors, not a smooth picture.
    resized = tf.image.resize(image, new_size, method="bilinear")
    return tf.clip_by_value(resized, 0.0, 255.0)

  image = tf.cond(shorter > max_side, shrink, lambda: image)
  # Subsampled before the Lab conversion, which costs more than everything else here.
  sampled = image[::pixel_stride, ::pixel_stride]
  ab = color.rgb_to_lab(sampled / 255.0)[..., 1:]
  grayscale = color.is_grayscale(ab)

  def histogram():
    return tf.math.bincount(nearest_bin(tf.reshape(ab, [-1, 2])), minlength=color.NUM_BINS,
                            maxlength=color.NUM_BINS, dtype=tf.int64)

  counts = tf.cond(grayscale, lambda: tf.zeros([color.NUM_BINS], tf.int64), histogram)
  return {"counts": counts, "grayscale": grayscale, "pixels": tf.reduce_sum(counts)}


def count_dataset(dataset, num_images, max_side, pixel_stride):
  """The pipeline of per-image histograms, batched.

  Args:
    dataset: unbatched dataset of {'image': uint8 [H, W, 3], ...}.
    num_images: at most this many images are read; 0 reads all.
    max_side, pixel_stride: see `_image_counts`.

  Returns:
    A dataset of dicts of batched `_image_counts` outputs.
  """
  if num_images:
    dataset = dataset.take(num_images)
  dataset = dataset.map(lambda ex: _image_counts(ex["image"], max_side, pixel_stride),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  return dataset.batch(_BATCH).prefetch(tf.data.AUTOTUNE)


def top_bins(counts, prior, k=TOP_BINS):
  """The k most frequent bins: list of dicts with bin index, ab centre, count, fractions."""
  counts = np.asarray(counts, np.int64)
  total = max(int(counts.sum()), 1)
  bins = color.ab_bins()
  order = np.argsort(-counts, kind="stable")[:k]
  return [{"bin": int(i), "a": float(bins[i, 0]), "b": float(bins[i, 1]),
           "count": int(counts[i]), "fraction": float(counts[i] / total), "prior": float(prior[i])}
          for i in order]


def compute_prior(dataset, num_images, max_side, pixel_stride, sigma, stats=None,
                  log_every=1000):
  """Counts the ab bins of a dataset's colored pixels and smooths them into a prior.

  Args:
    dataset: unbatched `tf.data.Dataset` of {'image': uint8 [H, W, 3], ...}, e.g. from
      `sources.image_dataset`.
    num_images: read at most this many images (0: all), grayscale ones included.
    max_side: resize each image so that its shorter side is at most this.
    pixel_stride: count every n-th pixel of every n-th row.
    sigma: width of the Gaussian smoothing over ab (`color.smooth_prior`).
    stats: the `sources.DecodeStats` given to the dataset's source, or None.
    log_every: log progress every this many images.

  Returns:
    (prior: float64 numpy array [313], non-negative, summing to 1;
     summary: JSON-serializable dict, including the raw int counts under 'counts').

  Raises:
    ValueError: if the dataset holds no image with color (the prior would be empty), or for
      bad arguments.
  """
  if num_images < 0 or max_side < 1 or pixel_stride < 1 or not sigma > 0:
    raise ValueError(f"Need num_images >= 0, max_side >= 1, pixel_stride >= 1 and sigma > 0; "
                     f"got {num_images}, {max_side}, {pixel_stride}, {sigma}.")
  counts = np.zeros([color.NUM_BINS], np.int64)
  images = grayscale = pixels = 0
  start = time.perf_counter()
  next_log = log_every
  for batch in count_dataset(dataset, num_images, max_side, pixel_stride):
    counts += batch["counts"].numpy().sum(axis=0)
    images += int(batch["grayscale"].shape[0])
    grayscale += int(batch["grayscale"].numpy().sum())
    pixels += int(batch["pixels"].numpy().sum())
    if images >= next_log:
      logging.info("%d images (%d grayscale skipped), %.1f images/s", images, grayscale,
                   images / (time.perf_counter() - start))
      next_log = (images // log_every + 1) * log_every
  seconds = time.perf_counter() - start
  if not pixels:
    raise ValueError(f"No image with color among the {images} images read ({grayscale} "
                     "grayscale): the prior would be empty. Check the source.")
  prior = color.smooth_prior(counts, sigma=sigma)
  # With a cap, reading stops early and the source may still hold images being decoded, so
  # its decode counters are exact only when it was read to the end.
  exhausted = not num_images or images < num_images
  summary = {
      "images_read": images,
      "images_used": images - grayscale,
      "grayscale_skipped": grayscale,
      "decode_skipped": None,
      "decode_skipped_at_most": None,
      "decode_attempted": None,
      "source_exhausted": exhausted,
      "pixels_counted": pixels,
      "num_images": num_images,
      "max_side": max_side,
      "pixel_stride": pixel_stride,
      "sigma": sigma,
      "seconds": round(seconds, 3),
      "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
      "top_bins": top_bins(counts, prior),
      "counts": counts.tolist(),
  }
  if stats is not None:
    # Images still being decoded when reading stopped count as attempted but not decoded:
    # attempted - decoded is then only an upper bound of the images that failed.
    skipped = stats.skipped()
    summary.update(decode_attempted=stats.attempted(), decode_skipped_at_most=skipped,
                   decode_skipped=skipped if exhausted else None)
  logging.info("Done: %d images (%d grayscale skipped), %d pixels, %.1f images/s", images,
               grayscale, pixels, summary["images_per_s"] or 0.0)
  return prior, summary


def write_prior(prior, summary, output):
  """Writes the prior to `output` (.npy) and the summary to `summary_path(output)`, atomically."""
  files.write_atomically(output, lambda f: np.save(f, np.asarray(prior, np.float64)), "wb")
  files.write_atomically(summary_path(output),
                    lambda f: f.write(json.dumps(summary, indent=1) + "\n"), "w")


def describe_source(source_kwargs):
  """What `image_dataset` reads: each argument from `source_kwargs`, else gin, else its default.

  Returns:
    dict: each described argument's value, and under '<arg>_from' where it came from
    ('argument', 'gin' or 'default').
  """
  defaults = inspect.signature(sources.image_dataset).parameters
  described = {}
  for arg in _DESCRIBED_ARGS:
    if arg in source_kwargs:
      value, origin = source_kwargs[arg], "argument"
    else:
      try:
        value, origin = gin.query_parameter(f"image_dataset.{arg}"), "gin"
      except ValueError:
        value, origin = defaults[arg].default, "default"
    described[arg] = list(value) if isinstance(value, tuple) else value
    described[arg + "_from"] = origin
  return described


def check_source(described):
  """Raises ValueError naming the binding to set when the source is not fully specified.

  A prior must describe the images it rebalances, so the source may not be left to
  `image_dataset`'s default (the toy images) by accident.
  """
  if described["source_from"] == "default":
    raise ValueError(f"No image source for the color prior: bind image_dataset.source "
                     f"({'|'.join(sources.SOURCES)}); tools/compute_color_prior.py: --source.")
  if described["source"] in ("tfrecord", "folder") and not described["pattern"]:
    what = "a TFRecord glob" if described["source"] == "tfrecord" else "an image directory"
    raise ValueError(f"source={described['source']!r} needs {what}: bind "
                     "image_dataset.pattern; tools/compute_color_prior.py: --pattern.")


def make_prior_file(output, source_kwargs, num_images=10000, max_side=256, pixel_stride=4,
                    sigma=5.0, log_every=1000, extra_summary=None):
  """Reads a source, computes its prior and writes the .npy and JSON files.

  Args:
    output: .npy path of the prior; the summary goes to `summary_path(output)`.
    source_kwargs: arguments of `sources.image_dataset` to set; the others come from gin or
      its defaults.
    num_images, max_side, pixel_stride, sigma, log_every: see `compute_prior`.
    extra_summary: dict added to the summary.

  Returns:
    (prior, summary) as written.

  Raises:
    ValueError: for an unspecified source, or no image with color.
  """
  described = describe_source(source_kwargs)
  check_source(described)
  # Outside any strategy scope, as DecodeStats requires.
  stats = sources.DecodeStats("images")
  dataset = sources.image_dataset(stats=stats, **source_kwargs)
  prior, summary = compute_prior(dataset, num_images, max_side, pixel_stride, sigma,
                                 stats=stats, log_every=log_every)
  if summary["source_exhausted"]:
    stats.log()
  elif summary["decode_skipped_at_most"]:
    logging.info("At most %d images could not be decoded (reading stopped at num_images=%d, "
                 "so the count is not exact).", summary["decode_skipped_at_most"], num_images)
  summary["source"] = described
  summary["output"] = output
  summary.update(extra_summary or {})
  write_prior(prior, summary, output)
  return prior, summary


def bind_prior_of_source(directory, reuse=False):
  """Binds colorization.prior_path to the prior of the gin-configured image source.

  The same count as tools/compute_color_prior.py, on every image of the source that
  `sources.image_dataset` is configured with (the demo's toy images), written to
  `directory`/color_prior.npy. A prior already bound in gin is kept and nothing is computed.

  Args:
    directory: where the prior file goes.
    reuse: use a prior file already in `directory` as it is (a resumed run).

  Returns:
    (path, summary): the bound prior file, and the count's summary dict (None when nothing was
    computed).
  """
  bound = gin.query_parameter("colorization.prior_path")
  if bound is not None:
    return bound, None
  path = os.path.join(directory, "color_prior.npy")
  summary = None
  if not (reuse and os.path.exists(path)):
    _, summary = make_prior_file(path, {}, num_images=0)
  with gin.unlock_config():
    gin.bind_parameter("colorization.prior_path", path)
  return path, summary
