"""Test setup: two logical CPU devices (so MirroredStrategy has two replicas) and shared helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


def randomize_batch_norm(variables, seed=0):
  """Gives batch norm variables and biases non-trivial values, so tests of loading mean something."""
  rng = np.random.RandomState(seed)
  for v in variables:
    name = v.name
    shape = v.shape.as_list()
    if "moving_variance" in name or "gamma" in name:
      v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    elif "moving_mean" in name or "beta" in name or "biases" in name:
      v.assign(rng.uniform(-0.2, 0.2, shape).astype(np.float32))


def save_tf1_checkpoint(values, prefix):
  """Saves {variable name: array} as a TF1 name-based checkpoint (as slim's are); returns prefix."""
  graph = tf.Graph()
  with graph.as_default():
    tf_vars = [tf.compat.v1.Variable(value, name=name) for name, value in values.items()]
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver(tf_vars).save(sess, prefix, write_meta_graph=False)
  return prefix
