"""The "precision" benchmark: speed per precision and XLA, on any device.

`python tools/benchmark.py --device=gpu` runs it with the paper's sizes (ResNet-101 to block 3,
224x224, each task at its own batch and crop) for float32, bfloat16 and bfloat16 + XLA; on a CPU
`--benchmarks=precision` runs the same code at whatever small sizes the flags give, e.g.

  python tools/benchmark.py --benchmarks=precision --depth=26 --precision_size=64 \
      --precision_batch_size=4 --task_gin="Trunk.depth = 26" ...

For each mode it prints, as JSON lines:

- "trunk_precision": the trunk's training step (forward at output stride 32, backward, RMSProp)
  in images/s, its achieved TFLOP/s (3x the forward FLOPs TF's profiler counts: 13.3 GFLOPs
  per 224x224 image at depth 101) and that as a fraction of the chip's peak for the precision
  (a table of datasheet peaks by device name; float32 convolutions run as TF32 on Ampere and
  later), beside the best matmul TFLOP/s measured in the same run in the same dtype (the peer).
- "task_step_precision": each task's whole training step through `MultiTaskTrainer.train`
  (trunk, head, loss, RMSProp, the loop's host work) in trunk images/s (a relative-position
  pair or an exemplar pair is two), beside that task's input pipeline on every CPU core of the
  machine, in the same units, and their ratio (`input_over_step`: below 1, the input starves the
  chip).
"""

import os
import tempfile
import time

from absl import flags
import gin
import tensorflow as tf

from benchmarks import common
from mtssl_tf import precision as precision_lib
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common as bin_common


# Dense datasheet peaks in TFLOP/s, by a substring of the device name: (bf16/fp16, tf32).
DATASHEET_PEAKS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "V100": (125.0, 15.7),
}
# Trunk inputs per example of each task's batch (a pair is two trunk inputs).
INPUTS_PER_EXAMPLE = {"relative_position": 2, "exemplar": 2}


def parse_mode(mode):
  """'mixed_bfloat16+xla' -> ('mixed_bfloat16', True)."""
  name, _, suffix = mode.partition("+")
  if name not in precision_lib.PRECISIONS or suffix not in ("", "xla"):
    raise ValueError(f"Unknown mode {mode!r}: a precision {precision_lib.PRECISIONS}, "
                     "optionally followed by '+xla'.")
  return name, suffix == "xla"


def device_description():
  """(name, is_gpu): the first GPU's name, or the CPU."""
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return "CPU", False
  details = tf.config.experimental.get_device_details(gpus[0])
  return details.get("device_name", "GPU"), True


def datasheet_peak(device_name, precision):
  """TFLOP/s the chip can do at best in this precision, or None if the chip is not listed."""
  for key, (half, tf32) in DATASHEET_PEAKS.items():
    if key in device_name:
      return tf32 if precision == "float32" else half
  return None


def matmul_peak_tflops(dtype, size, seconds=2.0):
  """Best measured TFLOP/s of a [size, size] x [size, size] matmul in `dtype`."""
  a = tf.cast(tf.random.normal([size, size]), dtype)
  matmul = tf.function(lambda x: tf.matmul(x, x))
  matmul(a).numpy()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    result = matmul(a)
    count += 1
  result.numpy()
  return 2 * size**3 * count / (time.perf_counter() - start) / 1e12


def trunk_step_seconds(mode, depth, size, batch_size, steps, rounds):
  """Median seconds of the trunk's training step in `mode`, and the forward FLOPs per image."""
  name, xla = parse_mode(mode)
  with precision_lib.policy_scope(name):
    trunk = trunk_lib.Trunk(depth=depth)
    trunk(tf.zeros([1, size, size, 3]))
  flops = common.forward_flops(lambda x: trunk(x, training=False)["block3"],
                               tf.TensorSpec([1, size, size, 3], tf.float32))
  variables = trunk.trainable_variables
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=1e-4, epsilon=1.0)
  optimizer.build(variables)

  @tf.function(jit_compile=xla)
  def step(images):
    with tf.GradientTape() as tape:
      out = tf.cast(trunk(images, training=True)["block3"], tf.float32)
      loss = tf.reduce_mean(tf.square(out))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  images = tf.random.uniform([batch_size, size, size, 3], -120.0, 120.0, seed=0)
  step(images).numpy()  # compile
  seconds, _ = common.alternate({"step": lambda: step(images)}, rounds, steps)
  return seconds["step"], flops


def benchmark_trunk_precision(modes, depth, size, batch_size, steps, rounds, emit):
  """Emits one "trunk_precision" record per mode."""
  device, is_gpu = device_description()
  for mode in modes:
    name, xla = parse_mode(mode)
    seconds, flops = trunk_step_seconds(mode, depth, size, batch_size, steps, rounds)
    achieved = 3 * flops * batch_size / seconds / 1e12
    dtype = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
             "mixed_float16": tf.float16}[name]
    peer = matmul_peak_tflops(dtype, 8192 if is_gpu else 1024)
    peak = datasheet_peak(device, name) if is_gpu else None
    emit(benchmark="trunk_precision", device=device, mode=mode, precision=name, xla=xla,
         depth=depth, size=size, batch_size=batch_size,
         images_per_s=round(batch_size / seconds, 2),
         forward_gflops_per_image=round(flops / 1e9, 2),
         achieved_tflops=float(f"{achieved:.4g}"),
         datasheet_peak_tflops=peak,
         fraction_of_datasheet_peak=None if peak is None else round(achieved / peak, 3),
         matmul_peer_tflops=round(peer, 3),
         fraction_of_matmul_peer=round(achieved / peer, 3))


def benchmark_task_precision(modes, tasks, steps, input_seconds, emit, folder=None):
  """Each task's training step through the real loop, per mode, beside its input pipeline.

  The pipeline reads toy JPEGs and motion TFRecords written into `folder` (default: a new
  temporary folder) on every core of the machine; the step runs on one repeated batch.
  """
  device, _ = device_description()
  folder = folder or tempfile.mkdtemp(prefix="mtssl_benchmark_data_")
  sources = common.source_fns(folder, common.write_input_files(folder))
  input_rate = {}
  for mode in modes:
    name, xla = parse_mode(mode)
    for task_name in tasks:
      with tempfile.TemporaryDirectory() as model_dir:
        probe = training.MultiTaskTrainer(model_dir + "/probe", tasks=[task_name],
                                          checkpoint_every_secs=None)
        task = probe.tasks[task_name]
        task.source_fn = sources[common.source_kind(task_name)]
        if task_name not in input_rate:
          input_rate[task_name] = common.input_examples_per_s(
              task.input_fn(), task.batch_size, os.cpu_count(), input_seconds)
        fixed = {task_name: common.repeat_batch(next(iter(task.input_fn())))}
        trainer = training.MultiTaskTrainer(
            model_dir + "/run", tasks=[task_name], input_fns=fixed, precision=name,
            jit_compile=xla, checkpoint_every_secs=None, log_every_secs=1e9)
        trainer.train(num_steps=2, save_at_end=False)  # compile and warm up
        start = time.perf_counter()
        trainer.train(num_steps=2 + steps, save_at_end=False)
        seconds = (time.perf_counter() - start) / steps
      images = task.batch_size * INPUTS_PER_EXAMPLE.get(task_name, 1)
      step_rate = task.batch_size / seconds
      emit(benchmark="task_step_precision", device=device, mode=mode, task=task_name,
           batch_size=task.batch_size, trunk_images_per_step=images,
           step_images_per_s=round(images / seconds, 2),
           step_examples_per_s=round(step_rate, 2),
           input_examples_per_s=round(input_rate[task_name], 2), input_cores=os.cpu_count(),
           input_over_step=round(input_rate[task_name] / step_rate, 2))


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of 'precision' only (common.define_flags has the shared ones)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_list("modes", ["float32", "mixed_bfloat16", "mixed_bfloat16+xla"],
                    "'precision': precisions, each optionally '+xla'.", **fv)
  flags.DEFINE_integer("precision_size", 224, "'precision': the trunk step's image side.", **fv)
  flags.DEFINE_integer("precision_batch_size", None, "'precision': the trunk step's batch "
                       "(default 128 on a GPU, --batch_size on a CPU).", **fv)
  flags.DEFINE_list("precision_tasks", ["relative_position", "colorization", "exemplar",
                                        "motion_segmentation"],
                    "'precision': tasks whose training step is measured (empty: none).", **fv)
  flags.DEFINE_multi_string("task_gin", [], "'precision': gin bindings for the task steps "
                            "(e.g. smaller batches and crops on a CPU).", **fv)


def run_from_flags(emit, values=flags.FLAGS):
  """The trunk in every --modes, then each of --precision_tasks (configured by --task_gin)."""
  gpu = device_description()[1]
  batch = values.precision_batch_size or (128 if gpu else values.batch_size)
  benchmark_trunk_precision(values.modes, values.depth, values.precision_size, batch,
                            values.steps, values.rounds, emit)
  if not values.precision_tasks:
    return
  gin.clear_config()
  bin_common.parse_gin(["trunk/resnet_v2_101.gin"] +
                       [f"tasks/{t}.gin" for t in values.precision_tasks],
                       [f"Trunk.depth = {values.depth}"] + values.task_gin)
  try:
    benchmark_task_precision(values.modes, values.precision_tasks, values.steps,
                             values.input_seconds, emit)
  finally:
    gin.clear_config()
