"""What pretext tasks (`tasks/`) and evaluations (`evals/`) share: a head on the common trunk.

Paper section 3.1: one ResNet-101 v2 trunk up to block 3 serves all tasks and evaluations, each
with a head of its own on block 3; section 3.2: with the lasso, each head instead reads its own
linear combination of block 3's unit outputs. A head is Estimator-shaped: `input_fn` returns a
`tf.data.Dataset` of feature dicts batched per replica, and `model_fn(features, mode)` returns a
`Spec` (loss, predictions, metrics). Each kind keeps a `Registry` that finds its heads by name.

Feature keys are prefixed with the head's name (`"colorization/ab_target"`), so heads never
collide.
"""

import dataclasses
import enum
import importlib

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


class Registry:
  """Head classes of one kind ("task", "evaluation") by name.

  Args:
    kind: what the heads are, for messages.
    package: the package whose import registers the built-in heads (imported by `get` and
      `names`, so that a registry is complete without its caller importing every file).
  """

  def __init__(self, kind, package):
    self.kind = kind
    self._package = package
    self._classes = {}

  def register(self, name):
    """Class decorator: makes a `Head` subclass available as `get(name)` and sets its name.

    Raises:
      ValueError: another class is already registered under `name`.
    """

    def decorator(cls):
      known = self._classes.get(name)
      if known is not None and known is not cls:
        raise ValueError(f"{self.kind.capitalize()} name {name!r} is registered twice: "
                         f"{known} and {cls}.")
      self._classes[name] = cls
      cls.name = name
      return cls

    return decorator

  def get(self, name):
    """The class registered under `name`.

    Raises:
      KeyError: naming the registered classes.
    """
    importlib.import_module(self._package)
    if name not in self._classes:
      raise KeyError(f"Unknown {self.kind} {name!r}; registered {self.kind}s: "
                     f"{self.names()}.")
    return self._classes[name]

  def names(self):
    """The registered names, sorted."""
    importlib.import_module(self._package)
    return sorted(self._classes)


class Head(tf.Module):
  """Base class: a head (owned) on a trunk (shared, passed in).

  Attributes:
    name: the registered name; also the prefix of the head's feature keys and its gin scope.
    output_stride: the trunk output stride the head calls the shared trunk at.
    batch_size: the global batch size, a positive integer (checked when set, naming
      `<name>.batch_size`).
    trunk: the shared `Trunk`.
    lasso: None (the head reads block 3) or a `lasso.Lasso` with a row for this head (it reads
      the row's combination of block 3's units); set by the training or evaluation loop.
  """

  name = None
  output_stride = 32
  _batch_size = None

  def __init__(self, trunk):
    super().__init__(name=self.name)
    self.trunk = trunk
    self.lasso = None

  @property
  def batch_size(self):
    """The global batch size (`<name>.batch_size`), a positive integer."""
    return self._batch_size

  @batch_size.setter
  def batch_size(self, value):
    validate.check_positive_int(f"{self.name}.batch_size", value)
    self._batch_size = value

  def key(self, suffix):
    """A feature key owned by this head: '<name>/<suffix>'."""
    return f"{self.name}/{suffix}"

  @property
  def head_variables(self):
    """The head's own trainable variables, without the shared trunk's or the lasso's.

    Variables are made on the first `model_fn` call.
    """
    shared = {v.ref() for v in self.trunk.trainable_variables}
    if self.lasso is not None:
      shared |= {v.ref() for v in self.lasso.trainable_variables}
    return [v for v in self.trainable_variables if v.ref() not in shared]

  def per_replica_batch(self, input_context):
    """This replica's share of the global `batch_size` (all of it without an input context).

    Raises:
      validate.SettingError: the batch does not divide among the replicas.
    """
    if input_context is None:
      return self.batch_size
    replicas = input_context.num_replicas_in_sync
    if self.batch_size % replicas:
      raise validate.SettingError(
          f"{self.name}.batch_size = {self.batch_size} does not divide among {replicas} "
          f"replicas; bind a multiple of {replicas}.")
    return input_context.get_per_replica_batch_size(self.batch_size)

  def representation(self, images, training, frozen=False):
    """What the head reads: block 3 at its stride, or its lasso combination of block 3's units.

    Args:
      images: trunk input [B, H, W, 3].
      training: the trunk's batch norm mode (batch statistics when True).
      frozen: stop the gradient at the trunk's outputs (each unit's, before the lasso
        combination, so that a lasso still learns over a frozen trunk).
    """
    endpoints = self.trunk(images, training=training, output_stride=self.output_stride)
    if self.lasso is None:
      names = ["block3"]
    else:
      # Imported here: trunk imports slim, which the registries need not.
      from mtssl_tf import trunk as trunk_lib  # pylint: disable=g-import-not-at-top
      names = trunk_lib.unit_endpoint_names(self.trunk.depth)
    units = [endpoints[n] for n in names]
    if frozen:
      units = [tf.stop_gradient(u) for u in units]
    if self.lasso is None:
      return units[0]
    return self.lasso.combine(self.name, units)

  def input_fn(self, input_context=None):
    raise NotImplementedError

  def model_fn(self, features, mode):
    raise NotImplementedError
