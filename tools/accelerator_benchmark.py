"""The "precision" benchmark of tools/benchmark.py: speed per precision and XLA, on any device.

`python tools/benchmark.py --device=gpu` runs it with the paper's sizes (ResNet-101 to block 3,
224x224, each task at its own batch and crop) for float32, bfloat16 and bfloat16 + XLA; on a CPU
`--benchmarks=precision` runs the same code at whatever small sizes the flags give.

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
import statistics
import tempfile
import time

import tensorflow as tf

from mtssl_tf import precision as precision_lib
from mtssl_tf import trunk as trunk_lib

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


def _forward_flops(trunk, size):
  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  from tensorflow.python.profiler import model_analyzer
  from tensorflow.python.profiler import option_builder
  spec = tf.TensorSpec([1, size, size, 3], tf.float32)
  graph = tf.function(lambda x: trunk(x, training=False)["block3"]).get_concrete_function(
      spec).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return model_analyzer.profile(graph, options=options).total_float_ops


def trunk_step_seconds(mode, depth, size, batch_size, steps, rounds):
  """Median seconds of the trunk's training step in `mode`, and the forward FLOPs per image."""
  name, xla = parse_mode(mode)
  with precision_lib.policy_scope(name):
    trunk = trunk_lib.Trunk(depth=depth)
    trunk(tf.zeros([1, size, size, 3]))
  flops = _forward_flops(trunk, size)
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
  step(images).numpy()
  step(images).numpy()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      loss = step(images)
    loss.numpy()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), flops


def benchmark_trunk_precision(modes, depth, size, batch_size, steps, rounds, emit):
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


def _task_batch(trainer, name):
  task = trainer.tasks[name]
  return task.batch_size * INPUTS_PER_EXAMPLE.get(name, 1)


def benchmark_task_precision(modes, tasks, steps, input_seconds, emit, make_sources,
                             measure_input):
  """Each task's training step through the real loop, per mode, beside its input pipeline.

  `make_sources()` gives (image source_fn, motion source_fn); `measure_input(dataset,
  batch_size, cores, seconds)` gives a batched dataset's examples/s on `cores` threads.
  """
  # Imported here: training pulls in every task and the data layer.
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top
  device, _ = device_description()
  image_source, motion_source = make_sources()
  input_rate = {}
  for mode in modes:
    name, xla = parse_mode(mode)
    for task_name in tasks:
      source = motion_source if task_name == "motion_segmentation" else image_source
      with tempfile.TemporaryDirectory() as model_dir:
        probe = training.MultiTaskTrainer(model_dir + "/probe", tasks=[task_name],
                                          checkpoint_every_secs=None)
        task = probe.tasks[task_name]
        task.source_fn = source
        if task_name not in input_rate:
          input_rate[task_name] = measure_input(task.input_fn(), task.batch_size,
                                                os.cpu_count(), input_seconds)
        batch = next(iter(task.input_fn()))
        fixed = {task_name: lambda ctx, b=batch: tf.data.Dataset.from_tensors(b).repeat()}
        trainer = training.MultiTaskTrainer(
            model_dir + "/run", tasks=[task_name], input_fns=fixed, precision=name,
            jit_compile=xla, checkpoint_every_secs=None, log_every_secs=1e9)
        trainer.train(num_steps=2, save_at_end=False)  # compile and warm up
        start = time.perf_counter()
        trainer.train(num_steps=2 + steps, save_at_end=False)
        seconds = (time.perf_counter() - start) / steps
      images = _task_batch(trainer, task_name)
      step_rate = task.batch_size / seconds
      emit(benchmark="task_step_precision", device=device, mode=mode, task=task_name,
           batch_size=task.batch_size, trunk_images_per_step=images,
           step_images_per_s=round(images / seconds, 2),
           step_examples_per_s=round(step_rate, 2),
           input_examples_per_s=round(input_rate[task_name], 2), input_cores=os.cpu_count(),
           input_over_step=round(input_rate[task_name] / step_rate, 2))

