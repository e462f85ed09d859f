"""The "inputs" benchmark: each pretext task's input pipeline beside its own training step.

Each task's input pipeline (`task.input_fn`) in examples/s on 1 and on 2 cores (tf.data's
private thread pool), reading JPEGs of ImageNet's typical size (500x375) from a folder (motion
segmentation: TFRecords of 320x240 toy frames and masks, as tools/prepare_motion_segmentation.py
writes them), beside the same task's whole training step as the training loop runs it
(`MultiTaskTrainer.run_step`: trunk + head + loss + weight decay + RMSProp, at the task's default
batch) in examples/s, measured in the same run. `input_over_step` above 1 means the input
keeps up with training. The pipeline is measured a second time from decoded images held in
memory, so that decoding and the task's own preprocessing can be told apart.
"""

import os
import tempfile

from absl import flags
import gin

from benchmarks import common
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common as bin_common
from mtssl_tf.tasks import base


def task_step_examples_per_s(name, batch, depth, steps, model_dir):
  """Examples/s of task `name`'s training step (`MultiTaskTrainer.run_step`) on one batch."""
  gin.clear_config()
  bin_common.parse_gin([], [f"Trunk.depth = {depth}"])
  try:
    trainer = training.MultiTaskTrainer(model_dir, tasks=[name],
                                        input_fns={name: common.repeat_batch(batch)},
                                        checkpoint_every_secs=None, log_every_secs=1e9)
    seconds = common.seconds_per_call(lambda: trainer.run_step(name, apply=True)[0], steps)
  finally:
    gin.clear_config()
  return trainer.tasks[name].batch_size / seconds


def run(emit, tasks, cores, depth, steps, input_seconds, folder=None):
  """Emits one "task_input" record per task; the input files go to `folder` (default: a new
  temporary folder)."""
  folder = folder or tempfile.mkdtemp(prefix="mtssl_benchmark_data_")
  motion_path = common.write_input_files(folder)
  from_files = common.source_fns(folder, motion_path)
  decoded = common.source_fns(folder, motion_path, cached=True)
  for name in tasks:
    kind = common.source_kind(name)
    task = base.get(name)(trunk_lib.Trunk(depth=depth), source_fn=from_files[kind])
    record = dict(benchmark="task_input", task=name, batch_size=task.batch_size,
                  image_size=[240, 320] if kind == "motion" else [375, 500],
                  cpus=os.cpu_count())
    for n in cores:
      record[f"input_examples_per_s_{n}_cores"] = round(common.input_examples_per_s(
          task.input_fn(), task.batch_size, n, input_seconds), 1)
      task.source_fn = decoded[kind]
      record[f"input_examples_per_s_{n}_cores_predecoded"] = round(common.input_examples_per_s(
          task.input_fn(), task.batch_size, n, input_seconds), 1)
      task.source_fn = from_files[kind]
    step = task_step_examples_per_s(name, next(iter(task.input_fn())), depth, steps,
                                    os.path.join(folder, f"model_{name}"))
    record.update(depth=depth, step_examples_per_s=round(step, 2))
    for n in cores:
      record[f"input_over_step_{n}_cores"] = round(
          record[f"input_examples_per_s_{n}_cores"] / step, 2)
    emit(**record)


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of 'inputs' only (common.define_flags has the shared ones)."""
  flags.DEFINE_list("tasks", ["relative_position", "colorization", "exemplar",
                              "motion_segmentation"],
                    "'inputs': tasks whose input pipelines are measured.", flag_values=flag_values)
  flags.DEFINE_list("input_cores", ["1", "2"], "'inputs': tf.data thread pool sizes to measure.",
                    flag_values=flag_values)


def run_from_flags(emit, values=flags.FLAGS):
  run(emit, values.tasks, [int(n) for n in values.input_cores], values.task_depth,
      values.steps, values.input_seconds)
