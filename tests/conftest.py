"""Test setup: two logical CPU devices (so MirroredStrategy has two replicas) and shared helpers."""

import contextlib
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's LLVM backend without its optimization passes: CPU compiles of the trunk's step take about
# half the time. The compiled computation (XLA's own HLO passes: fusion, reordering) is the same.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


def _iterate_without_autotuning(apply_debug_options):
  """Wraps `Dataset._apply_debug_options`, which every TensorFlow iterator constructor calls.

  An iterator whose dataset autotunes runs a thread that sleeps between optimizations, for a
  period that doubles up to a minute; in TensorFlow 2.15 destroying the iterator can wait for
  that sleep to end. A trainer holds its iterators in reference cycles, so a test process
  destroys them in some later garbage collection, which then stalls whatever test runs (seen:
  18 s for one trainer's four iterators, 95 s in a full run). Test pipelines are tiny: without
  autotuning, parallel maps run on as many threads as there are cores; the elements are the
  same.
  """

  def apply(dataset):
    options = tf.data.Options()
    options.autotune.enabled = False
    return apply_debug_options(dataset).with_options(options)

  return apply


tf.data.Dataset._apply_debug_options = _iterate_without_autotuning(  # pylint: disable=protected-access
    tf.data.Dataset._apply_debug_options)  # pylint: disable=protected-access


def pytest_configure(config):
  """`-n N` schedules as `--dist loadgroup`: tests marked `xdist_group(name)` share a worker.

  xdist's default (`load`) ignores the mark, and a module fixture that several tests of a group
  share is then built once on each worker. An explicit `--dist` is kept.
  """
  if getattr(config, "workerinput", {}).get("loadgroup"):
    config.option.loadgroup = True  # a worker: names its tests by group for the scheduler
  elif (getattr(config.option, "dist", "no") == "load" and
        not any(a == "-d" or a.startswith("--dist") for a in config.invocation_params.args)):
    config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
  """Tells each xdist worker that the controller schedules by group (see pytest_configure)."""
  if node.config.getoption("dist") == "loadgroup":
    node.workerinput["loadgroup"] = True


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


def step_rounding(before, after):
  """float32 rounding of a step read off as `after - before`: one ulp at the larger |weight|."""
  largest = max(np.abs(before).max(), np.abs(after).max())
  return float(np.spacing(np.float32(largest)))


def assert_close_at_scale(actual, expected, names, rtol, slacks=None):
  """Each actual[i] equals expected[i] within rtol of the largest |expected| (plus slacks[i]).

  One scale for all the arrays, e.g. all the gradients of a model: a gradient that is zero but
  for rounding (a bias that a training-mode batch norm follows) cannot be compared relative to
  its own size, and the small elements of a gradient are sums that cancel, with the rounding
  errors of the large ones.

  Returns:
    The worst discrepancy, beyond the slack, in units of that scale.
  """
  assert len(actual) == len(expected) == len(names)
  scale = max(np.abs(e).max() for e in expected)
  assert scale > 0, "every expected array is zero"
  worst, worst_name = 0.0, None
  for i, (a, e) in enumerate(zip(actual, expected)):
    error = np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)).max()
    value = max(error - (slacks[i] if slacks else 0.0), 0.0) / scale
    if value > worst:
      worst, worst_name = value, names[i]
  assert worst <= rtol, f"{worst_name}: off by {worst:.3g} of the largest value (> {rtol})"
  return worst


def free_ports(count):
  """`count` TCP ports on 127.0.0.1 that nothing listens on now (for loopback clusters)."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@contextlib.contextmanager
def untraced_steps():
  """Runs every tf.function, a trainer's steps among them, as plain Python (eagerly).

  For tests of what the training loop does around its steps (progress lines, checkpoints,
  configuration checks): one eager step of the depth-26 trunk costs about a CPU-second, tracing
  it about nine. Tests of what compiled steps compute (precision, XLA, distribution) trace them.
  """
  previous = tf.config.functions_run_eagerly()
  tf.config.run_functions_eagerly(True)
  try:
    yield
  finally:
    tf.config.run_functions_eagerly(previous)
