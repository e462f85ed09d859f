"""The one place that imports tf-slim, after patching it for TF 2.15.

tf-slim 1.1.0 still refers to `tensorflow.python.framework.ops.Tensor`, which TF 2.15 removed
(`layers/utils.py` uses it in `constant_value`, which slim's batch norm calls on `is_training`).
We alias it to `tf.Tensor` once, here, before any slim layer runs. Every module of this package
imports slim through this file: `from mtssl_tf.slim_compat import slim, resnet_utils, resnet_v2`.

Second patch: slim's batch norm updates its moving statistics with TF's
`moving_averages.assign_moving_average`, which in a replica context always makes a `merge_call`
(an all-reduce of the batch statistics per layer and step). A merge_call cannot sit inside an
XLA-compiled function under MirroredStrategy. Our slim layers create the statistics as
`ON_READ`/`MEAN` variables (`trunk.slim_variable_getter`, as Keras's own batch norm does), and
for those the patched function updates each replica's own copy, with no communication; a read
outside the replicas (a checkpoint, an evaluation) gives their mean, which, the moving average
being linear, is the moving average of the replicas' mean statistics: what the merge computed.
"""

import tensorflow as tf
from tensorflow.python.framework import ops as _tf_ops  # pylint: disable=g-direct-tensorflow-import

if not hasattr(_tf_ops, "Tensor"):
  _tf_ops.Tensor = tf.Tensor

import tf_slim as slim  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_slim.layers import layers as _slim_layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_slim.nets import resnet_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_slim.nets import resnet_v2  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow.python.training import moving_averages as _moving_averages  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top,wrong-import-position


class _ReplicaLocalMovingAverages:
  """Stands in for `moving_averages` inside slim's layers (see the module docstring)."""

  def __getattr__(self, name):
    return getattr(_moving_averages, name)

  @staticmethod
  def assign_moving_average(variable, value, decay, zero_debias=True, name=None):
    local = (getattr(variable, "synchronization", None) == tf.VariableSynchronization.ON_READ
             and tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False)
    if not local or zero_debias:
      return _moving_averages.assign_moving_average(variable, value, decay, zero_debias, name)
    with tf.name_scope(name or "AssignMovingAvg"):
      decay = tf.cast(1.0 - decay, variable.dtype.base_dtype)
      return variable.assign_sub((variable - tf.cast(value, variable.dtype)) * decay)


_slim_layers.moving_averages = _ReplicaLocalMovingAverages()

__all__ = ["slim", "resnet_utils", "resnet_v2"]
