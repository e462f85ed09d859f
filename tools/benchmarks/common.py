"""What the benchmarks share: their common flags, timing in alternating rounds, FLOP counts and
toy input files (JPEGs of ImageNet's typical size, motion segmentation TFRecords)."""

import json
import os
import statistics
import time

from absl import flags
import tensorflow as tf

from mtssl_tf.data import motion_records
from mtssl_tf.data import sources
from mtssl_tf.data import toy
from mtssl_tf.data import toy_video


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags several benchmarks share (the entry point does; importing defines none)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_integer("steps", 3, "Timed steps (or calls) per round, after one untimed call.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("rounds", 3, "Alternating rounds of a measurement and its peer; the "
                       "median round is kept.", lower_bound=1, **fv)
  flags.DEFINE_integer("depth", 101, "Trunk depth in 'trunk' and 'precision'.", **fv)
  flags.DEFINE_integer("task_depth", 101, "Trunk depth in 'inputs' (task steps) and 'evals'.",
                       **fv)
  flags.DEFINE_integer("batch_size", 8, "Images per step in 'trunk' (and 'precision' on a CPU).",
                       lower_bound=1, **fv)
  flags.DEFINE_float("input_seconds", 8.0, "Seconds of input pipeline timing per setting in "
                     "'inputs' and 'precision'.", lower_bound=0.0, **fv)


def json_emitter(output=None):
  """A function printing its keyword arguments as one JSON line (and appending it to `output`)."""

  def emit(**record):
    line = json.dumps(record)
    print(line, flush=True)
    if output:
      with open(output, "a") as f:
        f.write(line + "\n")

  return emit


def seconds_per_call(fn, calls, warm_up=True):
  """Mean wall seconds of `fn()` over `calls` calls, after one untimed call (which traces).

  Whatever `fn` returns last is read back (`.numpy()`), so asynchronous TensorFlow work is done
  before the clock stops.
  """
  if warm_up:
    _wait(fn())
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  _wait(out)
  return (time.perf_counter() - start) / calls


def _wait(out):
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)


def alternate(measured, rounds, calls, warm_up=True):
  """Times each of `measured` ({name: fn}) in turn, `rounds` times: a busy machine slows all alike.

  Returns:
    ({name: median seconds per call}, {name: [seconds per call in each round]}).
  """
  times = {name: [] for name in measured}
  for _ in range(rounds):
    for name, fn in measured.items():
      times[name].append(seconds_per_call(fn, calls, warm_up))
  return {name: statistics.median(t) for name, t in times.items()}, times


def forward_flops(fn, spec):
  """FLOPs of one call of `fn` on `spec`, counted by TF's profiler on the traced graph."""
  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  from tensorflow.python.profiler import model_analyzer
  from tensorflow.python.profiler import option_builder
  graph = tf.function(fn).get_concrete_function(spec).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return model_analyzer.profile(graph, options=options).total_float_ops


def make_train_step(forward, variables):
  """A bare training step: mean squared output of `forward`, backward, RMSProp (the peers')."""
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=1e-4)
  optimizer.build(variables)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(forward(images)))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  return step


def repeat_batch(batch):
  """An input_fn (input_context -> dataset) giving `batch` forever: steps timed without input."""
  return lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()


def input_examples_per_s(dataset, batch_size, cores, seconds):
  """Examples/s of a batched dataset restricted to `cores` threads (tf.data's own pool)."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  iterator = iter(dataset.with_options(options))
  for _ in range(2):  # warm up: autotuning, prefetch buffers
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += batch_size
  return count / (time.perf_counter() - start)


def write_jpegs(folder, count=128, size=(375, 500)):
  """Toy images of ImageNet's typical size, JPEG-encoded as ImageNet's are."""
  for i, image in enumerate(toy.make_toy_images(count, size, seed=0)):
    tf.io.write_file(os.path.join(folder, f"{i:04d}.jpg"), tf.io.encode_jpeg(image, quality=90))


def write_motion_records(folder, clips=8, frames_per_clip=4):
  """Toy 320x240 frames and masks in the format of tools/prepare_motion_segmentation.py."""
  examples = toy_video.toy_motion_examples(num_clips=clips, frames_per_clip=frames_per_clip,
                                           size=(240, 320), seed=0)
  path = os.path.join(folder, "motion_seg-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(len(examples["image"])):
      writer.write(motion_records.make_example(
          examples["image"][i], examples["mask"][i], str(examples["video_id"][i]),
          int(examples["frame_index"][i])))
  return path


def write_input_files(folder):
  """Writes the toy JPEGs and the motion segmentation TFRecord into `folder`; returns the
  record's path."""
  write_jpegs(folder)
  return write_motion_records(folder)


def source_fns(folder, motion_path, cached=False):
  """{"image": source_fn, "motion": source_fn} over the files of `write_input_files`.

  A task's `source_fn` (input_context -> dataset of examples) in place of its gin-configured
  source; `cached`: decoded once, then read from memory (the task's own preprocessing alone).
  """
  cache = (lambda d: d.cache()) if cached else (lambda d: d)
  return {
      "image": lambda ctx: cache(sources.image_dataset(source="folder", pattern=folder,
                                                       input_context=ctx)),
      "motion": lambda ctx: cache(motion_records.motion_dataset(
          source="tfrecord", pattern=motion_path, input_context=ctx)),
  }


def source_kind(task_name):
  """The key of `source_fns` that task `task_name` reads."""
  return "motion" if task_name == "motion_segmentation" else "image"
