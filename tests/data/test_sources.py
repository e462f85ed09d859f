"""Tests of the image sources: toy, folder, TFRecord and (mocked) TFDS, and ensure_min_size."""

import logging
import os
import re
import time

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf.data import sources
from mtssl_tf.data import toy


def _collect(dataset):
  """{source_id: uint8 image array} of a whole dataset, checking each element's structure."""
  out = {}
  for example in dataset:
    assert set(example) == {"image", "source_id"}
    image = example["image"]
    assert image.dtype == tf.uint8 and image.shape.rank == 3 and image.shape[-1] == 3
    source_id = example["source_id"].numpy().decode()
    assert source_id not in out, f"duplicate {source_id}"
    out[source_id] = image.numpy()
  return out


def _context(num, index):
  return tf.distribute.InputContext(
      num_input_pipelines=num, input_pipeline_id=index, num_replicas_in_sync=num)


def _image(height, width, value):
  """A distinct uint8 [height, width, 3] image: a ramp offset by `value`."""
  ramp = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
  return ((ramp * 7 + value) % 256).astype(np.uint8)


def _jpeg_bytes(image):
  return tf.io.encode_jpeg(image).numpy()


def _png_bytes(image):
  return tf.io.encode_png(image).numpy()


# --- toy ---------------------------------------------------------------------------------------


def test_toy_is_deterministic_by_seed():
  def images(seed):
    ds = sources.image_dataset(source="toy", num_toy_images=8, toy_size=(24, 30), seed=seed)
    return np.stack([e["image"].numpy() for e in ds])

  first, again, other = images(3), images(3), images(4)
  assert first.shape == (8, 24, 30, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  # Different seeds differ almost everywhere, not in a few pixels.
  assert np.mean(first != other) > 0.9


def test_toy_default_size_color_and_grayscale():
  images = toy.make_toy_images()
  assert images.shape == (64, 160, 200, 3) and images.dtype == np.uint8
  spread = images.astype(np.int32)
  channel_gap = np.abs(spread[..., 0] - spread[..., 1]) + np.abs(spread[..., 1] - spread[..., 2])
  gray = [i for i in range(64) if not channel_gap[i].any()]
  assert gray == [7, 15, 23, 31, 39, 47, 55, 63]
  assert all(toy.is_grayscale_index(i) == (i in gray) for i in range(64))
  color = [i for i in range(64) if i not in gray]
  # Color images are colorful on average, and every image has structure, not a flat field.
  assert channel_gap[color].mean(axis=(1, 2)).min() > 10
  assert spread.std(axis=(1, 2, 3)).min() > 15


def test_toy_sharding_gives_disjoint_halves():
  halves = [
      _collect(sources.image_dataset(source="toy", num_toy_images=10, toy_size=(8, 8),
                                     input_context=_context(2, k)))
      for k in range(2)
  ]
  assert len(halves[0]) == len(halves[1]) == 5
  assert not set(halves[0]) & set(halves[1])
  everything = _collect(sources.image_dataset(source="toy", num_toy_images=10, toy_size=(8, 8)))
  assert set(halves[0]) | set(halves[1]) == set(everything)
  for half in halves:
    for source_id, image in half.items():
      np.testing.assert_array_equal(image, everything[source_id])


# --- folder ------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
  """3 good images in nested folders with mixed-case extensions, 2 corrupt ones, 1 text file.

  Returns:
    (root, {path: expected image or None for the lossy JPEG}).
  """
  (tmp_path / "sub" / "deeper").mkdir(parents=True)
  good = {
      tmp_path / "a.png": _image(5, 7, 0),
      tmp_path / "sub" / "B.PNG": _image(6, 4, 50),
      tmp_path / "sub" / "deeper" / "c.Jpeg": _image(9, 11, 100),
  }
  for path, image in good.items():
    path.write_bytes(_png_bytes(image) if path.suffix.lower() == ".png" else _jpeg_bytes(image))
  (tmp_path / "sub" / "random.jpg").write_bytes(np.random.RandomState(0).bytes(300))
  full = _jpeg_bytes(_image(32, 32, 9))
  (tmp_path / "truncated.JPG").write_bytes(full[:len(full) // 2])
  (tmp_path / "notes.txt").write_text("not an image")
  return tmp_path, {str(p): image for p, image in good.items()}


def test_folder_search_is_recursive_and_case_insensitive(image_folder):
  root, _ = image_folder
  names = sorted(os.path.relpath(p, root) for p in sources.list_image_files(str(root)))
  assert names == ["a.png", "sub/B.PNG", "sub/deeper/c.Jpeg", "sub/random.jpg", "truncated.JPG"]


def test_folder_skips_and_counts_corrupt_images(image_folder, caplog):
  root, good = image_folder
  stats = sources.DecodeStats()
  images = _collect(sources.image_dataset(source="folder", pattern=str(root), stats=stats))
  assert sorted(images) == sorted(good)
  for path, image in images.items():
    assert image.shape == good[path].shape
    if path.endswith(".png") or path.endswith(".PNG"):
      np.testing.assert_array_equal(image, good[path])  # PNG is lossless.
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (5, 3, 2)
  bad = [str(root / "sub" / "random.jpg"), str(root / "truncated.JPG")]
  assert stats.skipped_ids() == bad
  with caplog.at_level(logging.WARNING):
    assert stats.log() == 2
  assert f"Skipped 2 images that could not be read or decoded (5 reads, 3 decoded): " \
         f"{bad[0]}, {bad[1]}" in caplog.text
  # Reads accumulate over epochs until reset; a broken file is skipped once.
  _collect(sources.image_dataset(source="folder", pattern=str(root), stats=stats))
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (10, 6, 2)
  stats.reset()
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (0, 0, 0)


def _write_folder(root, good, bad):
  """`good` decodable and `bad` broken .jpg files in `root`; returns the broken ones' paths."""
  for i in range(good):
    (root / f"good{i}.jpg").write_bytes(_jpeg_bytes(_image(8, 8, i)))
  full = _jpeg_bytes(_image(32, 32, 9))
  broken = [root / f"bad{i}.jpg" for i in range(bad)]
  for i, path in enumerate(broken):
    # Alternately truncated JPEGs and bytes that are no image at all.
    path.write_bytes(full[:len(full) // 2] if i % 2 else b"\xff\xd8 not a jpeg %d" % i)
  return sorted(str(p) for p in broken)


def test_a_repeated_source_counts_each_broken_file_once(tmp_path):
  """As in training: the source repeats, each broken file fails every epoch, counts once."""
  bad = _write_folder(tmp_path, good=5, bad=3)
  stats = sources.DecodeStats()
  dataset = sources.image_dataset(source="folder", pattern=str(tmp_path), stats=stats)
  assert len(list(dataset.repeat(4))) == 4 * 5
  assert (stats.attempted(), stats.decoded()) == (4 * 8, 4 * 5)
  assert stats.skipped() == 3 and stats.skipped_ids() == bad


def _broken_between_two_good(root, bad, passes):
  """a.jpg, `bad` broken files, c.jpg, read in that order `passes` times.

  Returns:
    (the broken files' paths, the stats, an iterator in which only the decoding map runs
    ahead of the consumer: no prefetch at the end).
  """
  broken = _write_folder(root, good=0, bad=bad)
  (root / "a.jpg").write_bytes(_jpeg_bytes(_image(8, 8, 1)))
  (root / "c.jpg").write_bytes(_jpeg_bytes(_image(8, 8, 2)))
  stats = sources.DecodeStats()
  dataset = sources.image_dataset(source="folder", pattern=str(root), stats=stats,
                                  shuffle_files=False).repeat(passes)
  options = tf.data.Options()
  options.experimental_optimization.inject_prefetch = False
  return broken, stats, iter(dataset.with_options(options))


def _next_name(iterator):
  return os.path.basename(next(iterator)["source_id"].numpy().decode())


def _wait_for_reads(stats, count):
  deadline = time.time() + 30
  while stats.attempted() < count and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.2)


def test_broken_files_read_again_stay_counted_while_in_flight(tmp_path):
  """Mid-pass, as when training stops: a broken file read again is still counted, once."""
  bad, stats, iterator = _broken_between_two_good(tmp_path, bad=3, passes=2)
  assert [_next_name(iterator) for _ in range(3)] == ["a.jpg", "c.jpg", "a.jpg"]
  _wait_for_reads(stats, 7)  # into the second pass's broken files
  assert stats.attempted() >= 7 and stats.decoded() == 3
  assert stats.skipped_ids() == bad


def test_reads_still_in_flight_are_not_counted_as_skipped(tmp_path):
  """Only reads older than an image that came out, or than the end of a pass, are failures."""
  bad, stats, iterator = _broken_between_two_good(tmp_path, bad=6, passes=1)
  assert _next_name(iterator) == "a.jpg"
  _wait_for_reads(stats, 2)  # the parallel map reads ahead into the broken files
  assert stats.attempted() >= 2 and stats.decoded() == 1
  assert stats.skipped() == 0  # bad0, ... failed, but nothing after them has come out yet
  assert _next_name(iterator) == "c.jpg"
  assert stats.skipped_ids() == bad
  assert not list(iterator)
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (8, 2, 6)


def test_a_folder_of_broken_images_is_one_clear_error(tmp_path):
  bad = _write_folder(tmp_path, good=0, bad=4)
  with pytest.raises(ValueError, match=(
      rf"^None of the 4 image files under '{tmp_path}' can be read and decoded "
      rf"\({bad[0]}, {bad[1]}, {bad[2]}, \.\.\.\); check image_dataset.pattern")):
    sources.image_dataset(source="folder", pattern=str(tmp_path))


@pytest.mark.parametrize("num_pipelines", [2, 8])  # 8 > 5 files: falls back to record sharding.
def test_folder_sharding_gives_disjoint_sets(image_folder, num_pipelines):
  root, good = image_folder
  stats = sources.DecodeStats()
  parts = [
      set(_collect(sources.image_dataset(source="folder", pattern=str(root), stats=stats,
                                         input_context=_context(num_pipelines, k))))
      for k in range(num_pipelines)
  ]
  assert sum(len(p) for p in parts) == 3
  assert set().union(*parts) == set(good)
  # Every file was attempted by exactly one pipeline.
  assert (stats.attempted(), stats.skipped()) == (5, 2)


def test_folder_shuffles_by_seed(tmp_path):
  for i in range(12):
    (tmp_path / f"{i:02d}.png").write_bytes(_png_bytes(_image(2, 2, i)))

  def order(seed, shuffle_files=True):
    ds = sources.image_dataset(source="folder", pattern=str(tmp_path), seed=seed,
                               shuffle_files=shuffle_files)
    return [os.path.basename(e["source_id"].numpy().decode()) for e in ds]

  assert order(None, shuffle_files=False) == [f"{i:02d}.png" for i in range(12)]
  assert order(1) == order(1)
  assert order(1) != order(None, shuffle_files=False)
  assert sorted(order(1)) == sorted(order(2))


# --- tfrecord ----------------------------------------------------------------------------------


def _example(features):
  return tf.train.Example(features=tf.train.Features(feature={
      key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
      for key, value in features.items()
  })).SerializeToString()


@pytest.fixture
def tfrecord_shards(tmp_path):
  """4 shards of 3 PNG examples each; returns (glob pattern, {"path:index": image})."""
  expected = {}
  for shard in range(4):
    path = str(tmp_path / f"images-{shard:05d}-of-00004.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for i in range(3):
        image = _image(4 + shard, 5 + i, 10 * shard + i)
        writer.write(_example({"encoded": _png_bytes(image)}))
        expected[f"{path}:{i}"] = image
  return str(tmp_path / "images-*.tfrecord"), expected


def test_tfrecord_reads_every_record(tfrecord_shards):
  pattern, expected = tfrecord_shards
  stats = sources.DecodeStats()
  images = _collect(sources.image_dataset(source="tfrecord", pattern=pattern,
                                          image_key="encoded", stats=stats))
  assert sorted(images) == sorted(expected)
  for source_id, image in images.items():
    np.testing.assert_array_equal(image, expected[source_id])
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (12, 12, 0)


def test_tfrecord_shards_files_per_pipeline(tfrecord_shards):
  pattern, expected = tfrecord_shards
  parts = [
      _collect(sources.image_dataset(source="tfrecord", pattern=pattern, image_key="encoded",
                                     input_context=_context(2, k)))
      for k in range(2)
  ]
  assert len(parts[0]) == len(parts[1]) == 6
  assert not set(parts[0]) & set(parts[1])
  assert set(parts[0]) | set(parts[1]) == set(expected)
  # Whole files go to one pipeline: no shard's records are split.
  files = [{sid.rsplit(":", 1)[0] for sid in part} for part in parts]
  assert len(files[0]) == len(files[1]) == 2 and not files[0] & files[1]


def test_tfrecord_skips_and_counts_corrupt_records(tfrecord_shards, tmp_path):
  pattern, expected = tfrecord_shards
  bad_path = str(tmp_path / "images-bad.tfrecord")
  full = _jpeg_bytes(_image(16, 16, 3))
  with tf.io.TFRecordWriter(bad_path) as writer:
    writer.write(_example({"encoded": _jpeg_bytes(_image(3, 8, 1))}))  # good
    writer.write(_example({"encoded": b"\x00garbage, not an image"}))
    writer.write(_example({"encoded": full[:len(full) // 2]}))  # truncated JPEG
    writer.write(_example({"other_key": _png_bytes(_image(2, 2, 0))}))  # no image feature
  stats = sources.DecodeStats()
  images = _collect(sources.image_dataset(source="tfrecord", pattern=pattern,
                                          image_key="encoded", stats=stats))
  assert len(images) == 13
  assert images[f"{bad_path}:0"].shape == (3, 8, 3)
  assert set(images) - {f"{bad_path}:0"} == set(expected)
  assert (stats.attempted(), stats.decoded(), stats.skipped()) == (16, 13, 3)
  assert stats.skipped_ids() == [f"{bad_path}:{i}" for i in (1, 2, 3)]


def test_tfrecords_without_a_decodable_image_are_one_clear_error(tfrecord_shards):
  pattern, expected = tfrecord_shards
  with pytest.raises(ValueError, match=rf"^None of the {len(expected)} records of the files "
                     rf"matching '{re.escape(pattern)}' can be read and decoded .*image_key"):
    sources.image_dataset(source="tfrecord", pattern=pattern, image_key="jpeg")


# --- tfds --------------------------------------------------------------------------------------


def test_tfds_imagenet_mock():
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    images = _collect(sources.image_dataset(source="tfds", name="imagenet2012", split="train"))
  assert len(images) == 5
  assert all(sid.startswith("imagenet2012/") for sid in images)
  # Mock images have random odd sizes; all must still be RGB.
  assert {image.shape[-1] for image in images.values()} == {3}
  assert len({image.shape for image in images.values()}) > 1


def test_tfds_grayscale_becomes_rgb():
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    images = _collect(sources.image_dataset(source="tfds", name="mnist", split="train"))
  assert len(images) == 3
  for image in images.values():
    assert image.shape == (28, 28, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 1], image[..., 2])


def test_tfds_split_refuses_undeclared_split_under_mock_data():
  # Mock data reads any split name; the split is checked against the builder's own.
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ValueError, match=r"TFDS dataset 'voc/2007' has no split 'trainval'.*"
                                         r"bind voc_detection.train_split to"):
      sources.tfds_split("voc/2007", "trainval", binding="voc_detection.train_split")
    with pytest.raises(ValueError, match=r"'nyu_depth_v2' has no split 'test'"):
      sources.tfds_split("nyu_depth_v2", "test")
    dataset, info = sources.tfds_split("voc/2007", "train+validation[:10]")
  assert info.full_name.startswith("voc/2007/") and dataset.cardinality() == 2


def test_tfds_image_source_refuses_undeclared_split_under_mock_data():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ValueError, match=r"'imagenet2012' has no split 'val'.*"
                                         r"bind image_dataset.split to"):
      sources.image_dataset(source="tfds", name="imagenet2012", split="val")


# --- ensure_min_size ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,min_size,expected", [
    ((10, 20), 32, (32, 64)),
    ((30, 45), 32, (32, 48)),
    ((7, 10), 32, (32, 46)),  # ceil(10 * 32 / 7) = 46
    ((50, 13), 26, (100, 26)),
    ((32, 40), 32, (32, 40)),  # exactly at the minimum: untouched
    ((50, 40), 32, (50, 40)),
])
def test_ensure_min_size_eagerly(shape, min_size, expected):
  image = np.full(shape + (3,), 77, np.uint8)
  image[0, 0] = (0, 128, 255)
  out = sources.ensure_min_size(image, min_size)
  assert out.dtype == tf.uint8 and tuple(out.shape) == expected + (3,)
  if expected == shape:
    np.testing.assert_array_equal(out.numpy(), image)
  else:
    # Bilinear upsampling keeps a flat region flat and the values in range.
    assert out.numpy()[-1, -1].tolist() == [77, 77, 77]


def test_ensure_min_size_keeps_float_dtype():
  out = sources.ensure_min_size(tf.fill([4, 6, 3], 0.5), 8)
  assert out.dtype == tf.float32 and out.shape == (8, 12, 3)
  np.testing.assert_allclose(out.numpy(), 0.5)


def test_ensure_min_size_inside_tf_data():
  sizes = tf.constant([[10, 20], [40, 50], [31, 64]])
  ds = tf.data.Dataset.from_tensor_slices(sizes)
  ds = ds.map(lambda hw: tf.zeros(tf.concat([hw, [3]], 0), tf.uint8))
  ds = ds.map(lambda image: sources.ensure_min_size(image, 32))
  assert ds.element_spec.shape.as_list() == [None, None, 3]
  assert [tuple(x.shape) for x in ds] == [(32, 64, 3), (40, 50, 3), (32, 67, 3)]


def test_ensure_min_size_rejects_empty_images():
  with pytest.raises(tf.errors.InvalidArgumentError, match="empty side"):
    sources.ensure_min_size(tf.zeros([0, 5, 3], tf.uint8), 8)


# --- API ---------------------------------------------------------------------------------------


def test_gin_binds_image_dataset():
  gin.clear_config()
  try:
    gin.parse_config("""
        image_dataset.source = "toy"
        image_dataset.num_toy_images = 3
        image_dataset.toy_size = (6, 9)
    """)
    images = _collect(sources.image_dataset())
  finally:
    gin.clear_config()
  assert sorted(images) == ["toy/0/0", "toy/0/1", "toy/0/2"]
  assert {image.shape for image in images.values()} == {(6, 9, 3)}


@pytest.mark.parametrize("kwargs,message", [
    ({"source": "webdataset"}, "Unknown image source"),
    ({"source": "folder"}, "needs pattern"),
    ({"source": "folder", "pattern": "/nonexistent/folder"}, "not a directory"),
    ({"source": "tfrecord", "pattern": "/nonexistent/*.tfrecord"}, "No TFRecord files"),
    ({"source": "toy", "input_context": tf.distribute.InputContext(2, 2, 2)}, "not in"),
])
def test_bad_arguments_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sources.image_dataset(**kwargs)


def test_decode_stats_refuses_strategy_scope():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope(), pytest.raises(RuntimeError, match="outside strategy.scope"):
    sources.DecodeStats()
