"""The one place that imports tf-slim, after patching it for TF 2.15.

tf-slim 1.1.0 still refers to `tensorflow.python.framework.ops.Tensor`, which TF 2.15 removed
(`layers/utils.py` uses it in `constant_value`, which slim's batch norm calls on `is_training`).
We alias it to `tf.Tensor` once, here, before any slim layer runs. Every module of this package
imports slim through this file: `from mtssl_tf.slim_compat import slim, resnet_utils, resnet_v2`.
"""

import tensorflow as tf
from tensorflow.python.framework import ops as _tf_ops  # pylint: disable=g-direct-tensorflow-import

if not hasattr(_tf_ops, "Tensor"):
  _tf_ops.Tensor = tf.Tensor

import tf_slim as slim  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_slim.nets import resnet_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_slim.nets import resnet_v2  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ["slim", "resnet_utils", "resnet_v2"]
