"""Image sources for the pretext tasks: TFDS, TFRecord shards, image folders, toy images.

`image_dataset` returns an unbatched `tf.data.Dataset` of dicts

  {"image": uint8 Tensor [height, width, 3] (RGB), "source_id": string Tensor []}

whatever the source, so a pretext task never knows where its images come from. `source_id`
names the image (TFDS id, file path, `shard:record` or `toy/<seed>/<index>`) for debugging.
Images keep their own size; tasks crop and resize, using `ensure_min_size` for images that are
too small for them.

Distribution: pass the `tf.distribute.InputContext` that `distribute_datasets_from_function`
hands to its dataset function, and each input pipeline reads a disjoint part of the source
(files where there are enough, records otherwise). Files are sorted before they are split, so
every worker computes the same split; shuffling happens after the split, per worker.

Bad images: TFRecord and folder sources decode images themselves. An image that cannot be read,
parsed or decoded is skipped, never fatal (one broken JPEG among a million must not stop a
pretraining run). `DecodeStats` counts what was skipped, each broken file once, and names it;
see its docstring. A source in which not one image decodes is an error when it is opened.
"""

import os

from absl import logging
import gin
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf.data import splits
from mtssl_tf.data import toy

SOURCES = ("tfds", "tfrecord", "folder", "toy")
# File name extensions of the folder source, compared lower-cased.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# How many TFRecord shards are read at once.
_TFRECORD_CYCLE_LENGTH = 16


class DecodeStats:
  """Counts the images a pipeline tried to decode and those it decoded, and names the failures.

  Pass one to `image_dataset(..., stats=stats)`. The pipeline updates host-side counters with
  no `py_function` (it stays in C++ and scales with parallel decoding): `attempted` counts every
  read, `decoded` every image passed on, and `skipped` the distinct images (files, records)
  whose reading, parsing or decoding failed, which `skipped_ids` names by `source_id`. A
  repeated dataset reads a broken file again every epoch: it adds to `attempted` each time but
  is skipped once.

  How failures are known without catching errors per element: every read is recorded (its
  `source_id`, tagged with the pipeline and a sequence number) before the decoding map, and
  removed when its image comes out of it. Out of order never happens (the decoding map is
  deterministic), so a record older than the last image out of its pipeline, or older than the
  end of a pass, is a read that failed; younger ones are still in flight and not counted. A
  failed image read again keeps its first failed read's record.

  The counters are cumulative over every dataset built with this object and every epoch; use
  `reset` to start again. In a multi-worker job each worker counts its own part.

  Make it outside `strategy.scope()`: there `tf.Variable` makes a distributed variable with a
  copy on every replica's device, which a host-side input pipeline should not be updating (on
  CPU it happens to work, with GPUs or several workers it does not).
  """

  # How many skipped source ids `log` names.
  NAMES_LOGGED = 5
  # A read's tag: pipeline index << _SEQUENCE_BITS | sequence number.
  _SEQUENCE_BITS = 40

  def __init__(self, name="images"):
    """Creates zeroed counters.

    Args:
      name: what the counted images are, used in `log`'s message.

    Raises:
      RuntimeError: when called inside a `tf.distribute.Strategy` scope.
    """
    if tf.distribute.has_strategy():
      raise RuntimeError(
          "Create DecodeStats outside strategy.scope(): inside it tf.Variable makes a "
          "distributed variable on the replicas' devices, which a host-side tf.data pipeline "
          "must not update.")
    self.name = name
    self._pipelines = 0
    # init_scope: the counters are eager host variables even if made while tracing a function.
    with tf.init_scope():
      self._attempted = tf.Variable(0, dtype=tf.int64, trainable=False, name="decode_attempted")
      self._decoded = tf.Variable(0, dtype=tf.int64, trainable=False, name="decode_decoded")
      # source_id -> tag of its latest read, until its image comes out of the decoding map.
      self._pending = tf.lookup.experimental.MutableHashTable(
          key_dtype=tf.string, value_dtype=tf.int64, default_value=-1, name="decode_pending")
      # pipeline index -> sequence number of its latest read that is known to be over.
      self._resolved = tf.lookup.experimental.MutableHashTable(
          key_dtype=tf.int64, value_dtype=tf.int64, default_value=-1, name="decode_resolved")

  def attempted(self):
    """How many times the pipelines tried to read and decode an image (every epoch counts)."""
    return int(self._attempted.read_value())

  def decoded(self):
    """How many images were decoded and passed on (every epoch counts)."""
    return int(self._decoded.read_value())

  def skipped_ids(self):
    """The sorted `source_id`s of the images that could not be read, parsed or decoded."""
    # Resolved first: an image that comes out between the two reads is then not taken for a
    # failure (its pending record is removed before its pipeline's resolved number moves).
    pipelines, sequences = (t.numpy() for t in self._resolved.export())
    resolved = dict(zip(pipelines.tolist(), sequences.tolist()))
    ids, tags = (t.numpy() for t in self._pending.export())
    mask = (1 << self._SEQUENCE_BITS) - 1
    return sorted(
        source_id.decode("utf-8", "replace") for source_id, tag in zip(ids, tags.tolist())
        if tag & mask <= resolved.get(tag >> self._SEQUENCE_BITS, -1))

  def skipped(self):
    """How many distinct images (files, records) could not be read, parsed or decoded."""
    return len(self.skipped_ids())

  def reset(self):
    """Sets both counters to zero and forgets the skipped images."""
    self._attempted.assign(0)
    self._decoded.assign(0)
    for table in (self._pending, self._resolved):
      table.remove(table.export()[0])

  def log(self):
    """Logs the counts: a warning naming the first skipped images if any, else an info line.

    Returns:
      The number of skipped images.
    """
    names = self.skipped_ids()
    if names:
      shown = names[:self.NAMES_LOGGED] + (["..."] if len(names) > self.NAMES_LOGGED else [])
      logging.warning("Skipped %d %s that could not be read or decoded (%d reads, %d "
                      "decoded): %s", len(names), self.name, self.attempted(), self.decoded(),
                      ", ".join(shown))
    else:
      logging.info("Decoded all %d %s.", self.decoded(), self.name)
    return len(names)

  def _new_pipeline(self):
    """A new pipeline's index and the base of its reads' tags."""
    self._pipelines += 1
    index = self._pipelines - 1
    return index, index << self._SEQUENCE_BITS

  def _record_read(self, tag_base, element, source_id):
    """Before decoding: counts the read and records it as pending; returns its sequence.

    An image still pending from an earlier pass failed then: it keeps that read's tag, so that
    it stays counted while this read is in flight.
    """
    sequence = self._attempted.assign_add(1, read_value=True)
    previous = self._pending.lookup(source_id)
    tag = tf.where(previous >= 0, previous, tag_base + sequence)
    with tf.control_dependencies([self._pending.insert(source_id, tag)]):
      return element, tf.identity(sequence), source_id

  def _record_outcome(self, index, loaded, sequence, source_id):
    """After decoding (failed reads never get here): the read and those before it are over."""
    with tf.control_dependencies([self._pending.remove(source_id[None]),
                                  self._decoded.assign_add(1)]):
      resolved = self._resolved.insert(tf.constant(index, tf.int64), sequence)
    with tf.control_dependencies([resolved]):
      return tf.nest.map_structure(tf.identity, loaded)

  def _end_of_pass(self, index):
    """After a pass's last read has left the decoding map: every read so far is over."""
    return self._resolved.insert(tf.constant(index, tf.int64), self._attempted.read_value())

  def __repr__(self):
    return (f"DecodeStats(name={self.name!r}, attempted={self.attempted()}, "
            f"decoded={self.decoded()}, skipped={self.skipped()})")


def decode_image(encoded):
  """Decodes a JPEG, PNG, GIF (first frame) or BMP image to RGB.

  Args:
    encoded: string Tensor [], the encoded file contents.

  Returns:
    uint8 Tensor [height, width, 3]; grayscale is replicated to 3 channels, alpha dropped.

  Raises:
    tf.errors.InvalidArgumentError: (when run) for data that is not a decodable image.
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def ensure_min_size(image, min_size):
  """Upsamples an image whose shorter side is below `min_size`; larger images pass unchanged.

  The rule for images too small for a task: rather than dropping them (which would bias the
  data towards large images) or padding them (which would give relative position and exemplar
  an artificial border to latch onto), scale them up, keeping the aspect ratio, until the
  shorter side is exactly `min_size`; the longer side is rounded up. Each task calls this with
  the smallest size its crops need, before cropping.

  Args:
    image: uint8 or float Tensor [height, width, channels] with height, width > 0.
    min_size: Python int or int32 scalar Tensor, the smallest allowed shorter side.

  Returns:
    A Tensor of `image`'s dtype, [new_height, new_width, channels]: `image` itself if
    min(height, width) >= min_size, else `image` resized bilinearly (integer dtypes rounded and
    saturated back) so that min(new_height, new_width) == min_size.

  Raises:
    tf.errors.InvalidArgumentError: (when run) for an image with an empty side.
  """
  image = tf.convert_to_tensor(image)
  min_size = tf.convert_to_tensor(min_size, tf.int32)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  shorter = tf.minimum(height, width)
  check = tf.debugging.assert_positive(
      shorter, message="ensure_min_size: image has an empty side")

  def upsample():
    # Integer ceil(side * min_size / shorter): the shorter side lands exactly on min_size,
    # where float arithmetic could overshoot it by one.
    new_height = (height * min_size + shorter - 1) // shorter
    new_width = (width * min_size + shorter - 1) // shorter
    resized = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear")
    if image.dtype.is_integer:
      return tf.saturate_cast(tf.round(resized), image.dtype)
    return tf.cast(resized, image.dtype)

  with tf.control_dependencies([check]):
    return tf.cond(shorter < min_size, upsample, lambda: tf.identity(image))


def resize_shorter_side(image, size):
  """Resizes [H, W, C] so that its shorter side is `size` (bilinear, antialiased); float32."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  new = tf.cast(tf.math.ceil(shape * (size / tf.reduce_min(shape))), tf.int32)
  return tf.image.resize(tf.cast(image, tf.float32), new, method="bilinear", antialias=True)


def center_crop(image, size):
  """The central [size, size] window of [H, W, C] (H, W >= size)."""
  shape = tf.shape(image)[:2]
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def _check_input_context(input_context):
  if input_context is not None and not (
      0 <= input_context.input_pipeline_id < input_context.num_input_pipelines):
    raise ValueError(
        f"input_pipeline_id {input_context.input_pipeline_id} is not in "
        f"[0, {input_context.num_input_pipelines}).")


def shard_files(files, input_context):
  """Splits the sorted file list between input pipelines where there are enough files.

  Args:
    files: sorted list of file paths.
    input_context: a `tf.distribute.InputContext` or None.

  Returns:
    (files of this pipeline, whether records still need sharding).
  """
  if input_context is None or input_context.num_input_pipelines == 1:
    return files, False
  num, index = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(files) >= num:
    return files[index::num], False
  # Fewer files than pipelines: every pipeline reads all files and keeps every num-th record.
  logging.warning("Only %d files for %d input pipelines: sharding by record, so every "
                  "pipeline reads every file.", len(files), num)
  return files, True


def _element_id(element):
  """A string naming one element of a source: its source_id, or a hash of a bare record."""
  if isinstance(element, dict) and "source_id" in element:
    return element["source_id"]
  return tf.strings.join(
      ["record hash ", tf.strings.as_string(tf.strings.to_hash_bucket_fast(element, 2**62))])


def _placeholder(spec):
  """An element of structure `spec`, unknown dimensions 0: stands in for an end marker."""
  def fill(s):
    shape = [0 if d is None else d for d in s.shape.as_list()]
    return tf.fill(shape, "") if s.dtype == tf.string else tf.zeros(shape, s.dtype)
  return tf.nest.map_structure(fill, spec)


def decode_guarded(dataset, load_fn, stats):
  """Maps `load_fn` over `dataset`, dropping (and counting) elements on which it fails.

  Args:
    dataset: a dataset of single tensors or dicts (not tuples), what `load_fn` takes; a dict
      with a "source_id" names its element in `DecodeStats.skipped_ids`.
    load_fn: function element -> {"image", "source_id"}; may fail at run time.
    stats: a `DecodeStats` or None.

  Returns:
    The dataset of successfully loaded elements.
  """
  if stats is None:
    # Errors raised by load_fn (unreadable file, bad record, undecodable bytes) drop the
    # element; log_warning names the reason in the log.
    return dataset.map(load_fn, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(
        log_warning=True)
  # pylint: disable=protected-access
  index, tag_base = stats._new_pipeline()
  loaded_spec = dataset.map(load_fn).element_spec

  def record_read(element):
    return stats._record_read(tag_base, element, _element_id(element))

  def load(element, sequence, source_id):
    return load_fn(element), sequence, source_id

  def record_outcome(loaded, sequence, source_id):
    return stats._record_outcome(index, loaded, sequence, source_id)

  def end_of_pass(unused):
    with tf.control_dependencies([stats._end_of_pass(index)]):
      return _placeholder(loaded_spec)

  def nothing(*unused):
    return tf.constant(False)

  # Deterministic whatever the dataset options say: DecodeStats relies on the order.
  dataset = dataset.map(record_read).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
  # Errors raised by load_fn (unreadable file, bad record, undecodable bytes) drop the element.
  dataset = dataset.ignore_errors().map(record_outcome)
  # Pulled only once the pass is over: marks every read of the pass resolved, yields nothing.
  end = tf.data.Dataset.from_tensors(0).map(end_of_pass).filter(nothing)
  return dataset.concatenate(end)


def require_one_decodable(dataset, load_fn, what, binding):
  """Raises when not one element of `dataset` loads: a source of broken files only.

  Reads elements in order until one loads (usually the first, so this costs one read);
  otherwise a training pipeline would repeat an empty dataset and stop at once with
  TensorFlow's "End of sequence".

  Args:
    dataset: unbatched source elements, dicts with "source_id", before `load_fn`.
    load_fn: as for `decode_guarded`.
    what: what the elements are, e.g. "image files under '/data/images'".
    binding: the gin binding that chose the source, named in the error.

  Raises:
    ValueError: naming the count of unreadable elements and the first few.
  """
  with tf.init_scope():
    for _ in dataset.map(load_fn).ignore_errors().take(1):
      return
    ids = [e["source_id"].numpy().decode("utf-8", "replace") for e in dataset]
  shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
  raise ValueError(f"None of the {len(ids)} {what} can be read and decoded ({shown}); check "
                   f"{binding} or replace the files.")


def _to_rgb_uint8(image):
  """Brings a TFDS image feature to uint8 [height, width, 3]."""
  if image.dtype != tf.uint8:
    image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
  channels = image.shape[-1]
  if channels == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif channels == 4:
    image = image[..., :3]
  elif channels != 3:
    raise ValueError(f"TFDS image feature has {channels} channels; expected 1, 3 or 4.")
  return image


def _tfds_builder(name, split, data_dir, manual_dir, binding):
  """The TFDS builder of `name`, after checking `split` against its declared splits.

  The split is checked first, from the builder's code: TFDS's mock data accepts any split name,
  and preparing ImageNet from `manual_dir` takes hours, so a wrong split must fail before either.
  """
  splits.check_split(name, split, binding=binding, data_dir=data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if manual_dir is not None:
    # Prepares from files already on disk (ImageNet's tars); a no-op if already prepared.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _tfds_dataset(name, split, data_dir, manual_dir, image_key, input_context, shuffle_files,
                  seed):
  """The TFDS source; see `image_dataset`."""
  builder = _tfds_builder(name, split, data_dir, manual_dir, "image_dataset.split")
  features = builder.info.features
  if image_key not in features:
    raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r}; it has "
                     f"{sorted(features.keys())}. Set image_key.")
  read_config = tfds.ReadConfig(
      input_context=input_context, shuffle_seed=seed, add_tfds_id=True)
  dataset = builder.as_dataset(
      split=split, shuffle_files=shuffle_files, read_config=read_config)

  def select(example):
    return {
        "image": _to_rgb_uint8(example[image_key]),
        "source_id": tf.strings.join([name, "/", example["tfds_id"]]),
    }

  return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def _tfrecord_dataset(pattern, image_key, input_context, shuffle_files, seed, stats):
  """The TFRecord source; see `image_dataset`."""
  all_files = sorted(tf.io.gfile.glob(pattern))
  if not all_files:
    raise ValueError(f"No TFRecord files match {pattern!r}.")

  def read_file(path):
    records = tf.data.TFRecordDataset(path).enumerate()
    return records.map(lambda i, record: {  # pylint: disable=g-long-lambda
        "source_id": tf.strings.join([path, ":", tf.strings.as_string(i)]),
        "record": record,
    })

  def read_files(paths, count):
    return paths.interleave(read_file, cycle_length=min(count, _TFRECORD_CYCLE_LENGTH),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def load(element):
    parsed = tf.io.parse_single_example(
        element["record"], {image_key: tf.io.FixedLenFeature([], tf.string)})
    return {"image": decode_image(parsed[image_key]), "source_id": element["source_id"]}

  require_one_decodable(
      read_files(tf.data.Dataset.from_tensor_slices(all_files), len(all_files)), load,
      f"records of the files matching {pattern!r}", "image_dataset.pattern and .image_key")
  files, shard_records = shard_files(all_files, input_context)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle_files and not shard_records:
    # After sharding: shard membership must not depend on a worker's shuffle.
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = read_files(dataset, len(files))
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  return decode_guarded(dataset, load, stats)


def list_image_files(folder):
  """Finds the JPEG and PNG files under `folder`, recursively.

  Args:
    folder: a directory path (local or any filesystem tf.io.gfile knows).

  Returns:
    Sorted list of file paths whose extension is one of `IMAGE_EXTENSIONS` in any case.

  Raises:
    ValueError: if `folder` is not a directory.
  """
  if not tf.io.gfile.isdir(folder):
    raise ValueError(f"Image folder {folder!r} does not exist or is not a directory.")
  files = []
  for directory, _, names in tf.io.gfile.walk(folder):
    files.extend(
        os.path.join(directory, n) for n in names
        if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
  return sorted(files)


def _folder_dataset(folder, input_context, shuffle_files, seed, stats):
  """The folder source; see `image_dataset`."""
  all_files = list_image_files(folder)
  if not all_files:
    raise ValueError(f"No {'/'.join(IMAGE_EXTENSIONS)} files under {folder!r}.")

  def load(element):
    path = element["source_id"]
    return {"image": decode_image(tf.io.read_file(path)), "source_id": path}

  def paths(files):
    return tf.data.Dataset.from_tensor_slices({"source_id": files})

  require_one_decodable(paths(all_files), load, f"image files under {folder!r}",
                        "image_dataset.pattern")
  files, shard_records = shard_files(all_files, input_context)
  dataset = paths(files)
  if shard_records:
    # Here a record is a file: the same split, made on the dataset.
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if shuffle_files:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  return decode_guarded(dataset, load, stats)


def _toy_dataset(num_toy_images, toy_size, seed, input_context):
  """The toy source; see `image_dataset`."""
  images = toy.make_toy_images(num_toy_images, toy_size, seed)
  source_ids = [f"toy/{seed}/{i}" for i in range(num_toy_images)]
  dataset = tf.data.Dataset.from_tensor_slices({"image": images, "source_id": source_ids})
  if input_context is not None:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  return dataset


@gin.configurable
def image_dataset(source="toy",
                  split="train",
                  name="imagenet2012",
                  data_dir=None,
                  manual_dir=None,
                  pattern=None,
                  image_key="image",
                  input_context=None,
                  shuffle_files=True,
                  seed=0,
                  num_toy_images=64,
                  toy_size=(160, 200),
                  stats=None):
  """The images of one source, unbatched, as dicts {"image", "source_id"}.

  Args:
    source: one of `SOURCES`:
      "tfds": TFDS dataset `name`, split `split`, from `data_dir`. Its feature `image_key` is
        the image; 1-channel images are replicated to 3, an alpha channel is dropped.
      "tfrecord": TFRecord files matching the glob `pattern`, each record a `tf.train.Example`
        with the encoded image (JPEG/PNG bytes) under feature `image_key`.
      "folder": JPEG/PNG files (any case of .jpg/.jpeg/.png) under the directory `pattern`,
        searched recursively.
      "toy": `num_toy_images` generated images of size `toy_size` (see `toy.py`), in index
        order.
    split: TFDS split expression, e.g. "train" or "train[:10%]", of the splits the dataset's
      builder declares (checked before reading; see `splits.check_split`).
    name: TFDS dataset name.
    data_dir: TFDS data directory; None means TFDS's default (`TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    manual_dir: for TFDS datasets with manual downloads (ImageNet): where the downloaded
      archives are. When given, the dataset is prepared from them if it is not yet; nothing is
      downloaded for ImageNet.
    pattern: file glob ("tfrecord") or directory ("folder").
    image_key: name of the image feature ("tfds", "tfrecord").
    input_context: `tf.distribute.InputContext` or None; with one, this pipeline reads only
      its part of the source (TFDS shards its files itself).
    shuffle_files: shuffle the order of files each epoch (records within a file keep their
      order; shuffling examples is the caller's shuffle buffer's job). Ignored by "toy".
    seed: seed of the file shuffle, and of the toy images.
    num_toy_images: number of toy images.
    toy_size: (height, width) of the toy images.
    stats: a `DecodeStats` whose counters the "tfrecord" and "folder" sources update; ignored
      by the others, whose images are decoded already.

  Returns:
    A `tf.data.Dataset` of {"image": uint8 [height, width, 3], "source_id": string []}.

  Raises:
    ValueError: for an unknown source, a missing `pattern`, no matching files, a missing image
      feature or a bad input context.
  """
  _check_input_context(input_context)
  if source in ("tfrecord", "folder") and not pattern:
    raise ValueError(f"source={source!r} needs pattern (a glob for tfrecord, a directory for "
                     "folder); gin: image_dataset.pattern.")
  if source == "tfds":
    return _tfds_dataset(name, split, data_dir, manual_dir, image_key, input_context,
                         shuffle_files, seed)
  if source == "tfrecord":
    return _tfrecord_dataset(pattern, image_key, input_context, shuffle_files, seed, stats)
  if source == "folder":
    return _folder_dataset(pattern, input_context, shuffle_files, seed, stats)
  if source == "toy":
    return _toy_dataset(num_toy_images, tuple(toy_size), seed, input_context)
  raise ValueError(f"Unknown image source {source!r}; choose one of {SOURCES}.")


@gin.configurable
def tfds_split(name, split, data_dir=None, manual_dir=None, input_context=None,
               shuffle_files=False, binding=None):
  """A TFDS split as a dataset of its feature dicts, sharded for `input_context`.

  Args:
    name: TFDS dataset name, e.g. "imagenet2012", "voc/2007", "nyu_depth_v2".
    split: a split expression of the names the dataset's builder declares, e.g. "train",
      "train+validation", "validation[:50]" (checked by `splits.check_split` before reading).
    data_dir: TFDS data directory (None: TFDS's default).
    manual_dir: manual download directory (ImageNet's tars); prepared if not yet.
    input_context: `tf.distribute.InputContext` or None.
    shuffle_files: shuffle the order of files.
    binding: the caller's gin binding that set `split` (e.g. "voc_detection.train_split"),
      named in the error for a split the dataset does not declare.

  Returns:
    (dataset, `tfds.core.DatasetInfo`).

  Raises:
    ValueError: for a split the dataset does not declare, naming it and `binding`.
    splits.DataNotFoundError: naming the dataset, the directory and how to prepare it, when it
      is missing.
  """
  builder = _tfds_builder(name, split, data_dir, manual_dir, binding)
  try:
    dataset = builder.as_dataset(
        split=split, shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(input_context=input_context))
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    raise splits.DataNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {builder.data_dir!r}: "
        f"{str(e).splitlines()[0]}. Prepare it first (WORKSPACE.md), e.g. `tfds build {name} "
        f"--data_dir=...`, and bind tfds_split.data_dir.") from e
  return dataset, builder.info
