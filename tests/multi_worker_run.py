"""One worker of the two-process MultiWorkerMirroredStrategy test (tests/test_distributed.py).

  TF_CONFIG=... python tests/multi_worker_run.py MODEL_DIR OUTPUT.npz NUM_STEPS BINDINGS.json \
      [BATCHES.npz]

Trains the tasks the bindings name with MultiWorkerMirroredStrategy (one CPU replica per
worker), then saves every trunk and head variable, optimizer variable (slots and iteration
counts) and accumulator, as this worker sees them, to OUTPUT.npz. With BATCHES.npz the tasks
read fixed global batches from it instead of their input pipelines (`fixed_input_fns`).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from mtssl_tf import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def fixed_input_fns(batches):
  """{task: input_fn} reading fixed global batches, each replica its contiguous share.

  Args:
    batches: {feature key: array [steps, global batch, ...]}; a key's task is its prefix
      ("relative_position/patches"). Step i's global batch is cut into as many equal
      contiguous parts as there are replicas; replica r (counting over workers in order) reads
      part r. An input pipeline (one per worker) yields its replicas' parts in turn.

  Returns:
    {task: function(input_context) -> dataset}, for `MultiTaskTrainer(input_fns=...)`.
  """
  by_task = {}
  for key, value in batches.items():
    by_task.setdefault(key.split("/")[0], {})[key] = np.asarray(value)

  def input_fn(features, context):
    replicas = context.num_replicas_in_sync
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def parts(value):
      steps, size = value.shape[:2]
      value = value.reshape((steps, replicas, size // replicas) + value.shape[2:])
      value = value[:, first:first + local]
      return value.reshape((steps * local, size // replicas) + value.shape[3:])

    return tf.data.Dataset.from_tensor_slices({k: parts(v) for k, v in features.items()})

  return {task: (lambda f: lambda ctx: input_fn(f, ctx))(features)
          for task, features in by_task.items()}


def main(model_dir, output, num_steps, bindings_path, batches_path=None):
  with open(bindings_path) as f:
    bindings = json.load(f)
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  common.parse_gin([], bindings)
  input_fns = fixed_input_fns(dict(np.load(batches_path))) if batches_path else None
  trainer = training.MultiTaskTrainer(model_dir, strategy=strategy, input_fns=input_fns)
  summary = trainer.train(num_steps=int(num_steps))
  values = trainer_state(trainer)
  values["task_steps"] = np.array([summary["task_steps"][n] for n in trainer.names])
  np.savez(output, **values)


def trainer_state(trainer):
  """{key: array}: what a run's workers must agree on, read in cross-replica context.

  Keys name variables by task, position and kind (layer names differ between two trainers
  built in one process): "variable/TASK/I" (the task's trainable variables, trunk first),
  "statistic/TASK/I/KIND" (batch norm moving_mean and moving_variance, ON_READ/MEAN: the mean
  over replicas), "optimizer/TASK/I/KIND" (iteration, velocity, momentum) and
  "accumulator/TASK/I" (ON_READ/SUM: the sum over every replica).
  """
  values = {}
  kind = lambda v, part: v.name.split(":")[0].split("/")[part]
  for name in trainer.names:
    for i, v in enumerate(trainer.var_lists[name]):
      values[f"variable/{name}/{i}"] = v.read_value().numpy()
    # The task's module holds the trunk too.
    for i, v in enumerate(trainer.tasks[name].non_trainable_variables):
      values[f"statistic/{name}/{i}/{kind(v, -1)}"] = v.read_value().numpy()
    for i, v in enumerate(trainer.optimizers[name].variables):
      values[f"optimizer/{name}/{i}/{kind(v, 0)}"] = v.read_value().numpy()
    for i, v in enumerate(trainer.accumulators[name]):
      values[f"accumulator/{name}/{i}"] = v.read_value().numpy()
  return values


if __name__ == "__main__":
  main(*sys.argv[1:])
