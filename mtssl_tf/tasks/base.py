"""What every task (pretext or evaluation) exposes, and the registry that finds them by name.

A task is Estimator-shaped: `input_fn(input_context)` returns a `tf.data.Dataset` of feature
dicts batched per replica, and `model_fn(features, mode)` returns a `Spec` (loss, predictions,
metrics). Our training loop (`mtssl_tf/training.py`) drives them under `tf.distribute`. Adding a fifth task is
one file that subclasses `Task` and decorates it with `@register("name")`, plus one gin file.

Feature keys are prefixed with the task's name (`"colorization/ab_target"`), so tasks never
collide.
"""

import dataclasses
import enum

import tensorflow as tf

from mtssl_tf import validate


class Mode(str, enum.Enum):
  """What `model_fn` is asked to do (tf.estimator.ModeKeys, without tf.estimator)."""
  TRAIN = "train"
  EVAL = "eval"
  PREDICT = "predict"


@dataclasses.dataclass
class Spec:
  """What `model_fn` returns.

  Attributes:
    loss: scalar float Tensor (per-replica mean; the loop divides by the number of replicas),
      None in PREDICT mode.
    predictions: dict of Tensors, batch-major.
    metrics: dict of scalar Tensors for summaries (accuracy and the like).
  """
  loss: tf.Tensor = None
  predictions: dict = dataclasses.field(default_factory=dict)
  metrics: dict = dataclasses.field(default_factory=dict)


def dense_prediction_head(width, outputs, name):
  """The per-cell head of the dense tasks: BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv to logits.

  Block 3 of ResNet v2 is pre-activation, hence the BN and ReLU first.
  """
  return tf.keras.Sequential([
      tf.keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.997),
      tf.keras.layers.ReLU(),
      tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False),
      tf.keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.997),
      tf.keras.layers.ReLU(),
      tf.keras.layers.Conv2D(outputs, 1),
  ], name=name)


_REGISTRY = {}
# Examples held by each task's shuffle buffer (after preprocessing; see Task.pipeline).
SHUFFLE_BUFFER = 256


def register(name):
  """Class decorator: makes a `Task` subclass available as `get(name)`."""

  def decorator(cls):
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"Task name {name!r} is registered twice: {_REGISTRY[name]} and {cls}.")
    _REGISTRY[name] = cls
    cls.name = name
    return cls

  return decorator


def get(name):
  """The task class registered under `name`.

  Raises:
    KeyError: naming the registered tasks.
  """
  # Importing the package registers the built-in tasks.
  import mtssl_tf.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if name not in _REGISTRY:
    raise KeyError(f"Unknown task {name!r}; registered tasks: {sorted(_REGISTRY)}.")
  return _REGISTRY[name]


def registered():
  import mtssl_tf.tasks  # pylint: disable=g-import-not-at-top,unused-import
  return sorted(_REGISTRY)


class Task(tf.Module):
  """Base class: a head (owned) on a trunk (shared, passed in).

  Attributes:
    name: the registered name; also the prefix of the task's feature keys and gin scope.
    output_stride: the trunk output stride the task calls the shared trunk at.
    batch_size: the global batch size, a positive integer (checked when set, naming
      `<name>.batch_size`). Every subclass's constructor checks its arguments against the
      types of their defaults (`validate.checked_init`).
    trunk: the shared `Trunk`.
    source_fn: None (the gin-configured `sources.image_dataset`) or a function
      (input_context) -> unbatched dataset of {'image': uint8 [H, W, 3]}.
    decode_stats: None or a `sources.DecodeStats` that counts the images the task's input
      pipeline skipped; the training loop sets one (outside the strategy scope) and logs it.
    lasso: None (heads read block 3) or a `lasso.Lasso` with a row for this task (heads read
      the row's combination of block 3's units); set by the training loop.
  """

  name = None
  output_stride = 32
  _batch_size = None

  def __init_subclass__(cls, **kwargs):
    """Every task constructor checks its arguments' types against its defaults.

    A wrong type (`relative_position.batch_size = 'sixteen'`) then fails at construction,
    naming the gin binding, instead of inside tf.data or Keras.
    """
    super().__init_subclass__(**kwargs)
    if "__init__" in cls.__dict__:
      cls.__init__ = validate.checked_init(cls, lambda c: c.name or c.__name__)

  def __init__(self, trunk, source_fn=None):
    super().__init__(name=self.name)
    self.trunk = trunk
    self.source_fn = source_fn
    self.decode_stats = None
    self.lasso = None

  @property
  def batch_size(self):
    """The task's global batch size (`<task>.batch_size`), a positive integer."""
    return self._batch_size

  @batch_size.setter
  def batch_size(self, value):
    validate.check_positive_int(f"{self.name}.batch_size", value)
    self._batch_size = value

  def key(self, suffix):
    """A feature key owned by this task: '<task name>/<suffix>'."""
    return f"{self.name}/{suffix}"

  @property
  def head_variables(self):
    """The task's own trainable variables (its head), without the shared trunk's.

    Variables are made on the first `model_fn` call.
    """
    shared = {v.ref() for v in self.trunk.trainable_variables}
    if self.lasso is not None:
      shared |= {v.ref() for v in self.lasso.trainable_variables}
    return [v for v in self.trainable_variables if v.ref() not in shared]

  def images(self, input_context=None):
    """The task's unbatched image source, sharded for `input_context`."""
    if self.source_fn is not None:
      return self.source_fn(input_context)
    # Imported here: data.sources imports tensorflow_datasets, which tasks/base need not.
    from mtssl_tf.data import sources  # pylint: disable=g-import-not-at-top
    return sources.image_dataset(input_context=input_context, stats=self.decode_stats)

  def per_replica_batch(self, input_context):
    """This replica's share of the task's global `batch_size`."""
    if input_context is None:
      return self.batch_size
    if self.batch_size % input_context.num_replicas_in_sync:
      raise validate.SettingError(
          f"{self.name}.batch_size = {self.batch_size} does not divide among "
          f"{input_context.num_replicas_in_sync} replicas; bind a multiple of "
          f"{input_context.num_replicas_in_sync}.")
    return input_context.get_per_replica_batch_size(self.batch_size)

  def pipeline(self, input_context, preprocess_fn, shuffle_buffer=SHUFFLE_BUFFER):
    """The usual input pipeline: images, repeated, preprocessed, shuffled, batched per replica.

    The source is repeated before preprocessing, so that epoch boundaries cost nothing and a
    small source still fills every batch. Examples (not decoded images, which are larger) are
    shuffled, because TFDS and TFRecord shards keep their records' order.

    Args:
      input_context: a `tf.distribute.InputContext` or None.
      preprocess_fn: function example dict -> features dict of one example.
      shuffle_buffer: examples in the shuffle buffer; 0 for none.

    Returns:
      A dataset of feature dicts with a leading axis of the per-replica batch size.
    """
    dataset = self.images(input_context).repeat()
    dataset = dataset.map(preprocess_fn, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer:
      dataset = dataset.shuffle(shuffle_buffer)
    dataset = dataset.batch(self.per_replica_batch(input_context), drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)

  def features(self, images, training):
    """Runs the trunk at the task's output stride; returns its endpoints."""
    return self.trunk(images, training=training, output_stride=self.output_stride)

  def representation(self, images, training):
    """What the head reads: block 3, or this task's lasso combination of block 3's units."""
    endpoints = self.features(images, training)
    if self.lasso is None:
      return endpoints["block3"]
    # Imported here: trunk imports slim, which the registry need not.
    from mtssl_tf import trunk as trunk_lib  # pylint: disable=g-import-not-at-top
    names = trunk_lib.unit_endpoint_names(self.trunk.depth)
    return self.lasso.combine(self.name, [endpoints[n] for n in names])

  def input_fn(self, input_context=None):
    raise NotImplementedError

  def model_fn(self, features, mode):
    raise NotImplementedError
