"""Benchmarks, printed as JSON lines, each against a peer measured in the same run.

  python tools/benchmark.py                       # trunk, inputs, motion_labels, training, evals
  python tools/benchmark.py --benchmarks=trunk --sizes=224 --steps=3
  python tools/benchmark.py --benchmarks=inputs --tasks=relative_position,exemplar
  python tools/benchmark.py --device=gpu          # "precision", on a GPU (tools/gpu_check.sh)

One module per benchmark in tools/benchmarks/, where each says what it measures against what,
and defines its flags (all listed by --help):

  trunk          the trunk's training step beside Keras' ResNet101V2 up to block 3
  inputs         each task's input pipeline beside its training step
  motion_labels  motion segmentation labels beside the optical flow they are made from
  training       the multi-task loop beside its bare steps; two workers beside one
  evals          each evaluation's inference and training step beside the bare trunk's
  precision      trunk and task steps per precision and XLA, beside the chip's peak and input

The first line describes the machine. Not a test: nothing here asserts.
"""

import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

# Run as a script: tools/ (this file's folder) is on the path, the repository root is added.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import evals
from benchmarks import inputs
from benchmarks import motion_labels
from benchmarks import precision
from benchmarks import training
from benchmarks import trunk
# pylint: enable=g-import-not-at-top,wrong-import-position

# In the order they run.
BENCHMARKS = {"precision": precision, "evals": evals, "training": training,
              "motion_labels": motion_labels, "inputs": inputs, "trunk": trunk}
DEFAULT = ["trunk", "inputs", "motion_labels", "training", "evals"]

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS):
  """Defines every benchmark's flags and the entry point's own (importing defines none)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_list("benchmarks", DEFAULT, f"Which benchmarks to run, of {sorted(BENCHMARKS)}.",
                    **fv)
  flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "gpu: require a GPU, and run the "
                    "'precision' benchmark with the paper's sizes unless --benchmarks says "
                    "otherwise.", **fv)
  flags.DEFINE_string("output", None, "Also append every JSON line to this file.", **fv)
  for module in (common, trunk, inputs, training, evals, precision):
    module.define_flags(flag_values)
    # Listed by --help (which shows the main module's key flags), not only by --helpfull.
    flags.adopt_module_key_flags(module, **fv)


def selected(gpus, values=flags.FLAGS):
  """The benchmarks to run, in order; raises app.UsageError naming the flag to fix."""
  benchmarks = values.benchmarks
  if values.device == "gpu":
    if not gpus:
      raise app.UsageError(
          "--device=gpu, but TensorFlow sees no GPU (built with CUDA: "
          f"{tf.test.is_built_with_cuda()}). Install tensorflow[and-cuda]=={tf.__version__} "
          "(tools/gpu_check.sh does) and check nvidia-smi.")
    if not values["benchmarks"].present:
      benchmarks = ["precision"]
  unknown = set(benchmarks) - set(BENCHMARKS)
  if unknown:
    raise app.UsageError(f"--benchmarks: unknown {sorted(unknown)}; choose from "
                         f"{sorted(BENCHMARKS)}.")
  return [name for name in BENCHMARKS if name in benchmarks]


def run(values, emit):
  """Runs the benchmarks that `values` (the parsed flags) select; JSON records go to `emit`."""
  gpus = tf.config.list_physical_devices("GPU")
  names = selected(gpus, values)
  emit(benchmark="machine", tensorflow=tf.__version__, cpus=os.cpu_count(), gpus=len(gpus),
       built_with_cuda=tf.test.is_built_with_cuda(),
       device=precision.device_description()[0])
  for name in names:
    BENCHMARKS[name].run_from_flags(emit, values)


def main(argv):
  del argv
  if FLAGS.worker_output:
    training.run_worker_from_flags(FLAGS)
  else:
    run(FLAGS, common.json_emitter(FLAGS.output))


if __name__ == "__main__":
  define_flags()
  app.run(main)
