"""The evaluations' base class and the registry that finds them by name.

An evaluation is a `heads.Head` like a pretext task: `input_fn(input_context, split)` returns a
dataset of feature dicts batched per replica (repeated and shuffled for "train", one pass for
the test split), `model_fn(features, mode)` returns a `heads.Spec`. On top of that it says which
variables it trains (`fine_tunes_trunk`: the linear probe keeps the trunk frozen, detection and
depth fine-tune it) and gives a host-side `MetricsAccumulator` for metrics pooled over the whole
test set (mean AP, pixel ratios), which per-batch means would get wrong. The loop that trains,
evaluates and writes results is `mtssl_tf/evaluation.py`.
"""

import gin
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf.data import splits
from mtssl_tf.data.sources import tfds_split

# Importing mtssl_tf.evals registers the built-in evaluations.
REGISTRY = heads.Registry("evaluation", "mtssl_tf.evals")
register = REGISTRY.register
get = REGISTRY.get
registered = REGISTRY.names


def _tfds_data_dir():
  """The TFDS data directory bound to `tfds_split.data_dir` (None: TFDS's default)."""
  try:
    return gin.query_parameter("tfds_split.data_dir")
  except ValueError:
    return None


class MetricsAccumulator:
  """Host-side metrics over a whole split: `update` per batch, `result` at the end."""

  def update(self, features, predictions):
    raise NotImplementedError

  def result(self):
    raise NotImplementedError


class Evaluation(heads.Head):
  """Base class of the evaluations: a `heads.Head` trained on a labelled dataset.

  Attributes (beyond `heads.Head`'s):
    fine_tunes_trunk: whether the trunk's weights train with the head (BN in training mode).
    lasso: as `heads.Head`'s, a row of the evaluation lasso (paper Table 4, "eval lasso").
    protocol: the paper's training protocol of this evaluation, as values of the fields of
      `evaluation.EvalSettings` (restated in gin/evals/<name>.gin); gin overrides them.

  Features: the trunk input is `"<name>/image"` (float [B, H, W, 3]); the loop reads it to
  re-estimate batch norm statistics.
  """

  fine_tunes_trunk = True
  dataset = None
  train_split = "train"
  eval_split = "test"
  shuffle_buffer = 256
  protocol = {}

  def toy_data(self, training):
    """The built-in toy set (dataset "toy"): a dict of numpy arrays, one example per row."""
    raise NotImplementedError

  def num_examples(self, training, strict=False):
    """Examples in the training (or test) split: the toy set's size, or TFDS's count of the
    prepared split.

    Args:
      training: the training split (True) or the test split.
      strict: raise `splits.DataNotFoundError` when the split is not prepared (a dry run);
        otherwise that gives None (the size cannot be known without reading the data).
    """
    if self.dataset == "toy":
      return len(next(iter(self.toy_data(training).values())))
    split = self.train_split if training else self.eval_split
    count = splits.num_examples if strict else splits.maybe_num_examples
    return count(self.dataset, split, data_dir=_tfds_data_dir(),
                 binding=self._split_binding(training))

  def _split_binding(self, training):
    return f"{self.name}.{'train_split' if training else 'eval_split'}"

  def dataset_info(self, info):
    """Called with the TFDS `DatasetInfo` of a TFDS source (e.g. to read the class count)."""
    del info

  def preprocess_example(self, example, training):
    """One source example -> the evaluation's features."""
    raise NotImplementedError

  def source(self, input_context, training):
    """Unbatched examples of the training or the test split (`self.dataset`: TFDS or "toy")."""
    if self.dataset == "toy":
      dataset = tf.data.Dataset.from_tensor_slices(self.toy_data(training))
      if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
      return dataset
    split = self.train_split if training else self.eval_split
    dataset, info = tfds_split(self.dataset, split, input_context=input_context,
                               shuffle_files=training, binding=self._split_binding(training))
    self.dataset_info(info)
    return dataset

  def input_fn(self, input_context=None, split="train"):
    """Per-replica batches: "train" repeated and shuffled, any other split one pass."""
    training = split == "train"
    dataset = self.source(input_context, training).map(
        lambda ex: self.preprocess_example(ex, training), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
      dataset = dataset.repeat().shuffle(self.shuffle_buffer)
    batch = self.per_replica_batch(input_context)
    return dataset.batch(batch, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

  def metrics_accumulator(self):
    raise NotImplementedError

  def frozen_features(self, features):
    """The part of `model_fn` that no training changes, for a frozen evaluation to cache.

    Returns a dict of the tensors `model_fn` reads instead of the images when they are in its
    features (e.g. the pooled block 3 and the label), or None: this evaluation cannot train
    on cached features (the default; `EvalSettings.feature_cache_passes`).
    """
    del features
    return None
