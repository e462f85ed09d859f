"""Test setup: two logical CPU devices (so MirroredStrategy has two replicas) and shared helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
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


@pytest.fixture
def rng():
  return np.random.RandomState(0)
