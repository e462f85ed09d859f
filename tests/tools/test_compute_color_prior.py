"""Tests of tools/compute_color_prior.py and mtssl_tf/color_prior.py, its library: the ab
histogram, grayscale and decode skipping, the files it writes, the demo's prior of its toy images
and the colorization task loading them."""

import importlib.util
import json
import os
import subprocess
import sys

from absl import flags
import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import color_prior
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.data import sources
from mtssl_tf.tasks import colorization

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "compute_color_prior.py")
# tools/ is not a package: load the binary's module from its file (defines no flags).
_spec = importlib.util.spec_from_file_location("compute_color_prior", _TOOL)
ccp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ccp)

# (L, a, b) colors whose ab are bin centres far apart, in the sRGB gamut, and whose uint8 RGB
# still falls in the same bin; with the bin index of each.
_COLORS = {"green": ((60, -30, 40), 73), "red": ((60, 40, 20), 198),
           "blue": ((50, 10, -40), 135)}
_TINY_SIGMA = 1e-3  # Smoothing that leaves bins 10 apart untouched: prior = counts / total.


def _solid(name, height, width):
  lab = tf.constant(_COLORS[name][0], tf.float32)
  rgb = np.round(color.lab_to_rgb(lab).numpy() * 255).astype(np.uint8)
  return np.broadcast_to(rgb, [height, width, 3]).copy()


def _gray(height, width, seed):
  values = np.random.RandomState(seed).randint(0, 256, [height, width, 1]).astype(np.uint8)
  return np.repeat(values, 3, axis=-1)


def _dataset(images):
  return tf.data.Dataset.from_generator(
      lambda: ({"image": image} for image in images),
      output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8)})


def test_histogram_mass_lands_on_the_colors_bins_in_pixel_proportions():
  images = [_solid("green", 8, 8), _solid("red", 12, 10), _solid("blue", 6, 6)]
  prior, summary = color_prior.compute_prior(_dataset(images), num_images=0, max_side=1000,
                                             pixel_stride=1, sigma=_TINY_SIGMA)
  expected = np.zeros([color.NUM_BINS], np.int64)
  expected[[73, 198, 135]] = [64, 120, 36]
  np.testing.assert_array_equal(summary["counts"], expected)
  np.testing.assert_allclose(prior, expected / 220.0, atol=1e-12)
  assert summary["pixels_counted"] == 220
  assert (summary["images_read"], summary["images_used"], summary["grayscale_skipped"]) == (
      3, 3, 0)
  top = summary["top_bins"]
  assert len(top) == 10
  assert [(t["bin"], t["a"], t["b"], t["count"]) for t in top[:3]] == [
      (198, 40.0, 20.0, 120), (73, -30.0, 40.0, 64), (135, 10.0, -40.0, 36)]
  assert top[3]["count"] == 0


def test_max_side_resizes_down_only_and_pixel_stride_subsamples():
  # 40x60 -> 20x30 (shorter side 20), every 3rd pixel: 7 x 10; 9x11 is not enlarged: 3 x 4.
  images = [_solid("green", 40, 60), _solid("blue", 9, 11)]
  _, summary = color_prior.compute_prior(_dataset(images), num_images=0, max_side=20,
                                         pixel_stride=3, sigma=_TINY_SIGMA)
  assert summary["counts"][73] == 70
  assert summary["counts"][135] == 12
  assert summary["pixels_counted"] == 82


def test_grayscale_images_are_skipped_and_counted():
  images = [_gray(10, 10, 0), _solid("red", 5, 5), np.zeros([7, 7, 3], np.uint8),
            _gray(6, 9, 1), _solid("blue", 4, 4), np.full([3, 3, 3], 255, np.uint8)]
  prior, summary = color_prior.compute_prior(_dataset(images), num_images=0, max_side=256,
                                             pixel_stride=1, sigma=_TINY_SIGMA)
  assert summary["images_read"] == 6
  assert summary["grayscale_skipped"] == 4
  assert summary["images_used"] == 2
  assert summary["pixels_counted"] == 25 + 16
  np.testing.assert_allclose(prior[[198, 135]], [25 / 41, 16 / 41], atol=1e-12)
  # --num_images caps the images read, grayscale ones included.
  _, capped = color_prior.compute_prior(_dataset(images), num_images=4, max_side=256,
                                        pixel_stride=1, sigma=_TINY_SIGMA)
  assert (capped["images_read"], capped["grayscale_skipped"], capped["pixels_counted"]) == (
      4, 3, 25)
  assert not capped["source_exhausted"]
  with pytest.raises(ValueError, match="No image with color"):
    color_prior.compute_prior(_dataset(images[:1]), num_images=0, max_side=256, pixel_stride=1,
                              sigma=5.0)


def test_prior_is_a_smoothed_probability_vector():
  noise = np.random.RandomState(0).randint(0, 256, [32, 32, 3]).astype(np.uint8)
  images = [_solid("green", 16, 16), noise]
  prior, summary = color_prior.compute_prior(_dataset(images), num_images=0, max_side=256,
                                             pixel_stride=2, sigma=5.0)
  assert prior.shape == (color.NUM_BINS,)
  assert np.all(prior >= 0)
  assert abs(prior.sum() - 1.0) < 1e-9
  assert int(np.argmax(prior)) == 73
  # Smoothing gives mass to a neighbour of the green bin that no pixel may have hit.
  assert prior[72] > 0
  assert summary["pixels_counted"] == 8 * 8 + 16 * 16


def test_nearest_bin_equals_the_full_search():
  ab = np.concatenate([
      np.random.RandomState(0).uniform(-140, 140, [20000, 2]),
      color.ab_bins() + np.random.RandomState(1).uniform(-4.9, 4.9, [color.NUM_BINS, 2]),
  ]).astype(np.float32)
  np.testing.assert_array_equal(color_prior.nearest_bin(ab).numpy(), color.nearest_bin(ab).numpy())
  np.testing.assert_array_equal(color_prior.nearest_bin(color.ab_bins()).numpy(),
                                np.arange(color.NUM_BINS))


def test_bad_flags_name_the_flag_and_the_fix():
  def parse(*args):
    values = flags.FlagValues()
    ccp.define_flags(values)
    values(["compute_color_prior", *args])
    return values

  assert parse("--output=p.npy").pixel_stride == 4
  for args, message in [(["--output=p.txt"], "--output must be a .npy path"),
                        (["--output=p.npy", "--sigma=0"], "--sigma must be positive"),
                        (["--output=p.npy", "--pixel_stride=0"], "pixel_stride"),
                        (["--output=p.npy", "--source=imagenet"], "source"),
                        ([], "output")]:
    with pytest.raises(flags.Error, match=message):
      parse(*args)
  described = color_prior.describe_source({})
  if described["source_from"] == "default":  # No gin binding left by another test.
    with pytest.raises(ValueError, match="bind image_dataset.source.*--source"):
      color_prior.check_source(described)
  with pytest.raises(ValueError, match="'folder' needs an image directory: bind "
                     "image_dataset.pattern; tools/compute_color_prior.py: --pattern"):
    color_prior.check_source(
        color_prior.describe_source({"source": "folder"}) | {"pattern": None})


def test_binary_on_toy_source_writes_a_prior_the_colorization_task_loads(tmp_path):
  output = tmp_path / "sub" / "prior.npy"
  # The source comes from gin alone here, which also exercises the gin flags.
  result = subprocess.run(
      [sys.executable, _TOOL, f"--output={output}", "--num_images=0", "--max_side=64",
       "--gin_param=image_dataset.source = 'toy'",
       "--gin_param=image_dataset.num_toy_images = 16"],
      cwd=_ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  prior = np.load(output)
  assert prior.shape == (color.NUM_BINS,) and abs(prior.sum() - 1) < 1e-9
  with open(color_prior.summary_path(str(output))) as f:
    summary = json.load(f)
  assert summary["images_read"] == 16
  assert summary["grayscale_skipped"] == 2  # Toy images 7 and 15.
  assert summary["decode_skipped"] == 0
  assert summary["source"]["source"] == "toy" and summary["source"]["source_from"] == "gin"
  assert summary["sigma"] == 5.0 and len(summary["top_bins"]) == 10
  assert sorted(os.listdir(output.parent)) == ["prior.npy", "prior.npy.json"]  # No temp files.
  task = colorization.Colorization(trunk_lib.Trunk(depth=26), prior_path=str(output))
  assert abs(np.sum(prior * task.class_weights) - 1.0) < 1e-4
  assert task.class_weights.std() > 0  # Rebalancing with the prior, not uniform weights.


def test_folder_source_counts_a_corrupt_jpeg_as_decode_skipped(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for i, name in enumerate(["green", "red", "blue"]):
    png = tf.io.encode_png(_solid(name, 6 + i, 8)).numpy()
    (folder / f"{i}.png").write_bytes(png)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
  output = str(tmp_path / "prior.npy")
  _, summary = color_prior.make_prior_file(output, {"source": "folder", "pattern": str(folder)},
                                           num_images=0, pixel_stride=1, sigma=_TINY_SIGMA)
  with open(color_prior.summary_path(output)) as f:
    written = json.load(f)
  assert written["decode_skipped"] == 1 and written["decode_attempted"] == 4
  assert written["source_exhausted"] and written["decode_skipped_at_most"] == 1
  assert written["images_read"] == 3 and written["pixels_counted"] == 48 + 56 + 64
  assert written["source"]["source"] == "folder" and written["source"]["pattern"] == str(folder)
  np.testing.assert_array_equal(np.load(output), color_prior.compute_prior(
      sources.image_dataset(source="folder", pattern=str(folder)), 0, 256, 1, _TINY_SIGMA)[0])
  assert written["counts"] == summary["counts"]
  # Stopped early, images may still have been in decoding: no exact count, only a bound.
  _, capped = color_prior.make_prior_file(output, {"source": "folder", "pattern": str(folder)},
                                          num_images=2, pixel_stride=1, sigma=_TINY_SIGMA)
  assert capped["images_read"] == 2 and capped["decode_skipped"] is None
  assert 0 <= capped["decode_skipped_at_most"] <= 2


def test_the_demos_prior_of_its_own_toy_images_rebalances_colorization(tmp_path):
  # What mtssl-demo and tools/toy_table.py do before pretraining: the prior of demo.gin's toy
  # source (here a handful of its images), written into the work directory and bound.
  gin.clear_config()
  try:
    common.parse_gin(["experiments/demo.gin"], ["image_dataset.num_toy_images = 6"])
    path, summary = color_prior.bind_prior_of_source(str(tmp_path))
    assert path == str(tmp_path / "color_prior.npy")
    assert gin.query_parameter("colorization.prior_path") == path
    assert summary["images_read"] == 6 and summary["source"]["source"] == "toy"
    assert summary["source"]["toy_size"] == [96, 112]  # demo.gin's images.
    written = np.load(path)
    assert written.shape == (color.NUM_BINS,) and np.all(written >= 0)
    assert abs(written.sum() - 1.0) < 1e-9
    assert written.max() > 10.0 / color.NUM_BINS  # The toy images' colors, not uniform.
    # Bound now: a second call keeps it and computes nothing.
    assert color_prior.bind_prior_of_source(str(tmp_path / "other")) == (path, None)
    task = colorization.Colorization(trunk_lib.Trunk(depth=26))
    assert abs(np.sum(written * task.class_weights) - 1.0) < 1e-4
    assert task.class_weights.max() > 1.5  # Rebalanced: rare colors weigh more.
  finally:
    gin.clear_config()
