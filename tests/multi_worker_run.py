"""One worker of the two-process MultiWorkerMirroredStrategy test (tests/test_distributed.py).

  TF_CONFIG=... python tests/multi_worker_run.py MODEL_DIR OUTPUT.npz NUM_STEPS BINDINGS.json

Trains the tasks the bindings name with MultiWorkerMirroredStrategy (one CPU replica per
worker), then saves every trunk and head variable, optimizer variable (slots and iteration
counts) and accumulator, as this worker sees them, to OUTPUT.npz.
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


def main(model_dir, output, num_steps, bindings_path):
  with open(bindings_path) as f:
    bindings = json.load(f)
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  common.parse_gin([], bindings)
  trainer = training.MultiTaskTrainer(model_dir, strategy=strategy)
  summary = trainer.train(num_steps=int(num_steps))
  values = {}
  for i, v in enumerate(trainer.trunk.variables):
    values[f"trunk/{i}/{v.name}"] = v.numpy()
  for name in trainer.names:
    for i, v in enumerate(trainer.tasks[name].head_variables):
      values[f"head/{name}/{i}/{v.name}"] = v.numpy()
    for i, v in enumerate(trainer.optimizers[name].variables):
      values[f"optimizer/{name}/{i}/{v.name}"] = v.numpy()
    for i, v in enumerate(trainer.accumulators[name]):
      # Read in cross-replica context: the sum over every replica of every worker.
      values[f"accumulator/{name}/{i}"] = v.read_value().numpy()
  values["task_steps"] = np.array([summary["task_steps"][n] for n in trainer.names])
  np.savez(output, **values)


if __name__ == "__main__":
  main(*sys.argv[1:])
