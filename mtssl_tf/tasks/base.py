"""The pretext tasks' base class and the registry that finds them by name.

A task is a `heads.Head` (Estimator-shaped: `input_fn(input_context)` returns per-replica
batches of feature dicts, `model_fn(features, mode)` a `heads.Spec`) that reads images from a
source and trains with the others on the shared trunk. Our training loop
(`mtssl_tf/training.py`) drives them under `tf.distribute`. Adding a fifth task is one file that
subclasses `Task` and decorates it with `@register("name")`, plus one gin file.
"""

import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import validate


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


# Examples held by each task's shuffle buffer (after preprocessing; see Task.pipeline).
SHUFFLE_BUFFER = 256

# Importing mtssl_tf.tasks registers the built-in tasks.
REGISTRY = heads.Registry("task", "mtssl_tf.tasks")
register = REGISTRY.register
get = REGISTRY.get
registered = REGISTRY.names


class Task(heads.Head):
  """Base class of the pretext tasks: a `heads.Head` fed from an image source.

  Attributes (beyond `heads.Head`'s):
    source_fn: None (the gin-configured `sources.image_dataset`) or a function
      (input_context) -> unbatched dataset of {'image': uint8 [H, W, 3]}.
    decode_stats: None or a `sources.DecodeStats` that counts the images the task's input
      pipeline skipped; the training loop sets one (outside the strategy scope) and logs it.

  Every subclass's constructor checks its arguments against the types of their defaults
  (`validate.checked_init`).
  """

  def __init_subclass__(cls, **kwargs):
    """Every task constructor checks its arguments' types against its defaults.

    A wrong type (`relative_position.batch_size = 'sixteen'`) then fails at construction,
    naming the gin binding, instead of inside tf.data or Keras.
    """
    super().__init_subclass__(**kwargs)
    if "__init__" in cls.__dict__:
      cls.__init__ = validate.checked_init(cls, lambda c: c.name or c.__name__)

  def __init__(self, trunk, source_fn=None):
    super().__init__(trunk)
    self.source_fn = source_fn
    self.decode_stats = None

  def images(self, input_context=None):
    """The task's unbatched image source, sharded for `input_context`."""
    if self.source_fn is not None:
      return self.source_fn(input_context)
    # Imported here: data.sources imports tensorflow_datasets, which tasks/base need not.
    from mtssl_tf.data import sources  # pylint: disable=g-import-not-at-top
    return sources.image_dataset(input_context=input_context, stats=self.decode_stats)

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
