"""Mixed precision: the switch, the float32 variable storage, and per-task loss scaling.

`set_precision("mixed_bfloat16")` (gin: `set_precision.name`, flag `--precision`) makes the
networks compute in bfloat16 ("mixed_float16": float16) while every variable stays float32:

- Keras layers (the heads) follow Keras's global dtype policy, which this sets.
- The slim trunk and block 4 are Keras layers too, so their inputs arrive cast to the compute
  dtype; slim then asks for its conv weights in that dtype, and `float32_storage_getter` creates
  them in float32 and hands slim a cast copy. Slim's batch norm keeps its parameters and
  statistics in float32 by itself (its fused kernel takes half inputs with float parameters).
  Checkpoints therefore hold float32 variables under the same names whatever the precision,
  and load under any other.
- What must stay float32 stays float32: losses, softmaxes and log-softmaxes (each task casts
  its logits up first), batch norm statistics, the lasso's alphas and combination, and the
  colorization's bin math (its targets are never cast down).
- "mixed_float16" needs loss scaling (float16 gradients underflow): each task's optimizer is
  wrapped in its own `LossScaleOptimizer` (`wrap_optimizer`), which scales that task's loss,
  skips an update whose gradients overflowed (no variable or slot changes) and halves the scale,
  and grows it again after a run of good steps. bfloat16 has float32's range and needs none.

Mixed precision pays on GPUs with tensor cores (and TPUs); on CPUs it is correct but usually
slower than float32, so the CPU default stays "float32".
"""

import contextlib

import gin
import tensorflow as tf
# pylint: disable=g-direct-tensorflow-import
# The auto-cast variable of the Keras inside TensorFlow, whose TF1-style layers slim builds on
# (the standalone keras package has its own, which those layers do not know).
from tensorflow.python.keras.mixed_precision import autocast_variable
# pylint: enable=g-direct-tensorflow-import

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_HALF = (tf.bfloat16, tf.float16)


@gin.configurable
def set_precision(name="float32"):
  """Sets Keras's global dtype policy; layers built afterwards compute in its dtype.

  Args:
    name: one of `PRECISIONS`.

  Returns:
    The compute dtype (tf.float32, tf.bfloat16 or tf.float16).

  Raises:
    ValueError: for an unknown name.
  """
  if name not in PRECISIONS:
    raise ValueError(f"Unknown precision {name!r}; choose one of {PRECISIONS} "
                     "(gin: set_precision.name, flag --precision).")
  tf.keras.mixed_precision.set_global_policy(name)
  return compute_dtype()


@contextlib.contextmanager
def policy_scope(name):
  """Sets the precision `name` for what is built inside; restores the previous one after.

  Layers keep the policy they were built under, so a model built inside computes in `name`'s
  dtype for good, and nothing else in the process is affected.
  """
  previous = current()
  set_precision(name)
  try:
    yield compute_dtype()
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


def current():
  """The name of the precision in force ("float32", "mixed_bfloat16", "mixed_float16")."""
  return tf.keras.mixed_precision.global_policy().name


def compute_dtype():
  return tf.as_dtype(tf.keras.mixed_precision.global_policy().compute_dtype)


def needs_loss_scale():
  """Whether the precision in force computes in float16 (whose gradients need scaling)."""
  return compute_dtype() == tf.float16


def float32_storage_getter(getter, name, *args, **kwargs):
  """A variable-scope custom getter: variables asked for in half precision are made float32.

  Slim creates each conv weight in its input's dtype. Under mixed precision that is bfloat16 or
  float16; this creates (or finds) the float32 variable instead and returns it cast to the dtype
  asked for, so the computation is half precision, the stored weight and its gradient float32.
  """
  dtype = kwargs.get("dtype")
  if dtype is not None and tf.as_dtype(dtype) in _HALF:
    kwargs["dtype"] = tf.float32
    return autocast(getter(name, *args, **kwargs))
  return getter(name, *args, **kwargs)


def autocast(variable):
  """`variable` (float32) wrapped so that layers read it in their compute dtype.

  Slim's layers are TF1-style Keras layers (`tf.compat.v1.layers`): they must be handed a
  variable, not a cast tensor, and they read their variables inside an auto-cast scope of
  their compute dtype, which an `AutoCastVariable` honours (as Keras's own mixed precision
  does for its layers' weights).
  """
  if isinstance(variable, autocast_variable.AutoCastVariable):
    return variable
  return autocast_variable.create_autocast_variable(variable)


def to_float32(tensor):
  """Casts a half-precision tensor to float32 (losses and softmaxes are computed in float32)."""
  return tf.cast(tensor, tf.float32) if tensor.dtype in _HALF else tensor


def wrap_optimizer(optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000):
  """The task's optimizer, wrapped for loss scaling when the precision needs it.

  Args:
    optimizer: a Keras optimizer (built or not).
    initial_scale: the first loss scale.
    dynamic_growth_steps: good (finite) updates after which the scale doubles.

  Returns:
    `optimizer` itself, or a `tf.keras.mixed_precision.LossScaleOptimizer` around it.
  """
  if not needs_loss_scale():
    return optimizer
  return tf.keras.mixed_precision.LossScaleOptimizer(
      optimizer, initial_scale=initial_scale, dynamic_growth_steps=dynamic_growth_steps)
