"""The evaluation loop (paper section 5): load a pretrained trunk, train an evaluation's head
(and the trunk, where the evaluation fine-tunes it), measure it on the test split, and write a
results JSON and TensorBoard summaries.

`Evaluator` holds one evaluation of one trunk: its settings (the evaluation's protocol, changed
by gin), data, optimizer and a public `train_step`; `run` trains, re-estimates batch norm
statistics, tests and writes the results. `evaluate` does one checkpoint (or a random trunk,
the "Random Init" baseline); `evaluate_directory` evaluates every pretraining checkpoint of a
model directory as it appears and skips those already done, which gives the paper's Figure 3
curves (summaries are written at the checkpoint's pretraining step).

Settings (`<evaluation>/EvalSettings.*`): every field left unset takes the evaluation's
`protocol` (the paper's, restated in gin/evals/<evaluation>.gin), then `DEFAULTS`.
Optimizer: SGD with momentum, the learning rate times `decay_rate` at each fraction of
training in `decay_at`, optional gradient clipping by global norm. Weight decay as slim's on
the trunk when it is fine-tuned.

Batch norm statistics (`batch_norm_statistics`). A random trunk's moving statistics are their
initial 0 and 1, on 0-255 inputs, so its block 3 explodes in inference mode; after multi-task
pretraining they are a blend of four tasks' inputs (grayscale crops, patches, video frames).
With "estimate" (the default) the statistics are re-estimated on the evaluation's own training
images before training: a pass in training mode that averages the batch statistics of
`batch_norm_batches` batches ("precise" batch norm), with no weight change. Frozen evaluations
keep those; fine-tuned ones train their moving averages as usual and are re-estimated again
(trunk and head) before the test, as are the head's own batch norms of frozen evaluations.
"checkpoint" keeps the checkpoint's statistics (the trunk's batch norm then starts from them).
The results JSON records which was used.

Reproducibility: with a `seed` (gin `evaluate.seed`, flag `--seed`) the Python, NumPy and
TensorFlow seeds are set and TensorFlow's op determinism is on for the run, so data order,
augmentation and initialization repeat: the same checkpoint and seed give the same metrics
(the input pipeline's random maps then run one element at a time, which is slower).
"""

import dataclasses
import glob
import json
import math
import os
import random
import re
import time
from typing import Optional, Tuple

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import distribute
from mtssl_tf import files
from mtssl_tf import heads
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import progress
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import base

INITS = ("checkpoint", "random")
BATCH_NORM_STATISTICS = ("estimate", "checkpoint")

# Values of the settings that neither gin nor the evaluation's protocol give.
DEFAULTS = dict(train_steps=0, train_epochs=1.0, learning_rate=0.01, momentum=0.9,
                decay_rate=0.1, decay_at=(), clip_gradient_norm=0.0,
                batch_norm_statistics="estimate", batch_norm_batches=50,
                feature_cache_passes=0, summary_every_steps=50, log_every_secs=30.0)
# The most memory cached frozen features may take (feature_cache_passes).
MAX_FEATURE_CACHE_BYTES = 4 << 30


@gin.configurable
@dataclasses.dataclass
class EvalSettings:
  """How an evaluation trains; bind per evaluation, e.g. `nyu_depth/EvalSettings.train_epochs`.

  Every field left None takes the evaluation's `protocol`, then `DEFAULTS` (see `resolve`).

  Attributes:
    train_steps: steps of head (and trunk) training; 0 computes them from train_epochs.
    train_epochs: passes over the training split (steps = ceil(epochs x examples / batch)).
    learning_rate, momentum: SGD with momentum.
    decay_rate, decay_at: the learning rate is multiplied by decay_rate at each fraction of
      the training steps in decay_at (e.g. (0.625, 0.875)).
    clip_gradient_norm: clip the gradients to this global norm (0: no clipping).
    batch_norm_statistics: "estimate" (on the evaluation's training images) or "checkpoint".
    batch_norm_batches: training batches averaged to estimate the statistics.
    feature_cache_passes: 0, or (frozen evaluations without a lasso) the number of augmented
      passes over the training split whose frozen features are computed once, after the batch
      norm statistics are estimated; the head then trains on those cached features, shuffled,
      for train_steps steps, without running the trunk again. For small training sets (the
      demo's toy set), where a probe needs many more steps than the trunk passes cost.
    summary_every_steps: training scalars to TensorBoard every this many steps.
    log_every_secs: seconds between progress lines.
  """
  train_steps: Optional[int] = None
  train_epochs: Optional[float] = None
  learning_rate: Optional[float] = None
  momentum: Optional[float] = None
  decay_rate: Optional[float] = None
  decay_at: Optional[Tuple[float, ...]] = None
  clip_gradient_norm: Optional[float] = None
  batch_norm_statistics: Optional[str] = None
  batch_norm_batches: Optional[int] = None
  feature_cache_passes: Optional[int] = None
  summary_every_steps: Optional[int] = None
  log_every_secs: Optional[float] = None

  def resolve(self, eval_name, protocol):
    """The settings with every unset field filled (protocol, then DEFAULTS), checked.

    Raises:
      ValueError: naming the `<eval_name>/EvalSettings.<field>` binding of a bad value.
    """
    values = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None:
        value = protocol.get(field.name, DEFAULTS[field.name])
      values[field.name] = value
    unknown = set(protocol) - set(values)
    if unknown:
      raise ValueError(f"{eval_name}.protocol names unknown settings {sorted(unknown)}.")
    settings = EvalSettings(**values)
    settings._check(eval_name)  # pylint: disable=protected-access
    return settings

  def _check(self, eval_name):
    def fail(field, want):
      raise ValueError(f"{eval_name}/EvalSettings.{field} = {getattr(self, field)!r}: {want}.")

    numbers = ("train_steps", "train_epochs", "learning_rate", "momentum", "decay_rate",
               "clip_gradient_norm", "batch_norm_batches", "feature_cache_passes",
               "summary_every_steps", "log_every_secs")
    for field in numbers:
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, "must be a number")
      if value < 0:
        fail(field, "must be >= 0")
    for field in ("train_steps", "batch_norm_batches", "feature_cache_passes",
                  "summary_every_steps"):
      if int(getattr(self, field)) != getattr(self, field):
        fail(field, "must be a whole number")
    if self.learning_rate <= 0:
      fail("learning_rate", "must be > 0")
    if not self.train_steps and not self.train_epochs:
      fail("train_steps", "give train_steps or train_epochs > 0")
    if self.summary_every_steps < 1:
      fail("summary_every_steps", "must be >= 1")
    try:
      fractions = [float(f) for f in self.decay_at]
    except (TypeError, ValueError):
      fail("decay_at", "must be a sequence of fractions of training, e.g. (0.5, 0.75)")
    if any(not 0 < f < 1 for f in fractions) or fractions != sorted(fractions):
      fail("decay_at", "must be increasing fractions of training in (0, 1)")
    self.decay_at = tuple(fractions)
    if self.batch_norm_statistics not in BATCH_NORM_STATISTICS:
      fail("batch_norm_statistics", f"must be one of {BATCH_NORM_STATISTICS}")


def settings_for(eval_name):
  """The resolved `EvalSettings` of an evaluation (gin scope `eval_name`, its protocol)."""
  with gin.config_scope(eval_name):
    settings = EvalSettings()
  return settings.resolve(eval_name, base.get(eval_name).protocol)


def learning_rate_schedule(settings, train_steps):
  """Piecewise-constant: learning_rate x decay_rate^k after the k-th boundary of decay_at.

  Returns a Keras schedule, or the learning rate itself (a float) when decay_at is empty.
  """
  boundaries = [max(1, int(round(f * train_steps))) for f in settings.decay_at]
  values = [settings.learning_rate * settings.decay_rate**k for k in range(len(boundaries) + 1)]
  if not boundaries:
    return float(settings.learning_rate)
  return tf.keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def train_steps_for(eval_name, settings, train_examples, batch_size):
  """settings.train_steps, or train_epochs over `train_examples` in batches of `batch_size`.

  Raises:
    ValueError: epochs are asked for and the training split's size is unknown.
  """
  if settings.train_steps:
    return int(settings.train_steps)
  if not train_examples:
    raise ValueError(
        f"{eval_name}: the size of its training split is unknown, so "
        f"{eval_name}/EvalSettings.train_epochs cannot become steps; bind "
        f"{eval_name}/EvalSettings.train_steps instead.")
  return max(1, math.ceil(settings.train_epochs * train_examples / batch_size))


def make_plan(eval_name, evaluation, trunk, settings, train_examples, test_examples):
  """What an evaluation run will do: data, steps, epochs, schedule (a JSON-ready dict)."""
  train_steps = train_steps_for(eval_name, settings, train_examples, evaluation.batch_size)
  return {
      "evaluation": eval_name,
      "dataset": evaluation.dataset,
      "train_split": evaluation.train_split,
      "eval_split": evaluation.eval_split,
      "train_examples": train_examples,
      "test_examples": test_examples,
      "batch_size": evaluation.batch_size,
      "train_steps": train_steps,
      "epochs": (train_steps * evaluation.batch_size / train_examples
                 if train_examples else None),
      "learning_rate": settings.learning_rate,
      "decay_steps": [max(1, int(round(f * train_steps))) for f in settings.decay_at],
      "decay_rate": settings.decay_rate,
      "momentum": settings.momentum,
      "clip_gradient_norm": settings.clip_gradient_norm,
      "batch_norm_statistics": settings.batch_norm_statistics,
      "feature_cache_passes": settings.feature_cache_passes,
      "fine_tunes_trunk": evaluation.fine_tunes_trunk,
      "trunk_depth": trunk.depth,
      "output_stride": evaluation.output_stride,
  }


def _pretraining_position(prefix):
  """The pretraining step and compute a checkpoint of ours was written at (None if absent)."""
  out = {}
  names = dict(tf.train.list_variables(prefix))
  for key, field, cast in (("global_step/.ATTRIBUTES/VARIABLE_VALUE", "global_step", int),
                           ("compute_used/.ATTRIBUTES/VARIABLE_VALUE", "compute_used", float)):
    out[field] = cast(tf.train.load_variable(prefix, key)) if key in names else None
  return out


def results_path(output_dir, eval_name, checkpoint=None, lasso=False):
  """Where the results of `eval_name` on `checkpoint` (None: random init) are written.

  Evaluations with an evaluation lasso get their own name ("-lasso"), so both cases of one
  checkpoint (paper Table 4) can share an output directory.
  """
  tag = "random" if checkpoint is None else os.path.basename(checkpoint)
  return os.path.join(output_dir, f"{eval_name}-{tag}{'-lasso' if lasso else ''}.json")


# Seeds Python, NumPy and TensorFlow and turns on op determinism inside (if seed given).
_seeded = distribute.seeded


def _batch_norm_layers(module):
  """Keras batch norm layers anywhere inside `module` (heads, decoders, RPNs)."""
  return [m for m in module.submodules if isinstance(m, tf.keras.layers.BatchNormalization)]


def _moving_statistics(module):
  return [v for v in module.variables
          if re.search(r"moving_(mean|variance)(:\d+)?$", v.name)]


class Evaluator:
  """One evaluation of one trunk: settings, data, optimizer, a train step, the test.

  Build it, then `run(output_dir)`; or drive it step by step (`train_step`, as the benchmark
  does). The evaluation's variables exist and the checkpoint is loaded after `__init__`.
  """

  def __init__(self, eval_name, checkpoint=None, init="checkpoint", strategy=None,
               use_lasso=False, trunk=None, seed=None, evaluation=None):
    """Builds the evaluation.

    Args:
      eval_name: a registered evaluation ("imagenet_linear", "voc_detection", "nyu_depth").
      checkpoint: a pretraining checkpoint (prefix or directory: its latest), slim's public
        ImageNet checkpoint, or None with init="random".
      init: "checkpoint" or "random" (the trunk keeps its random initialization).
      strategy: a `tf.distribute.Strategy` (default: the current one).
      use_lasso: the head reads a learned lasso combination of block 3's units (paper Table 4's
        "eval lasso"); its alpha row goes into the results.
      trunk: evaluate this live `Trunk` as it is (init and checkpoint are then only recorded;
        the demo evaluates the trunk it just trained); it is changed if the evaluation
        fine-tunes it.
      seed: recorded in the results (`evaluate` seeds the run with it).
      evaluation: an `Evaluation` already made on `trunk` (e.g. a benchmark's, on its own
        data); default: the registered class, gin-configured.

    Raises:
      ValueError: an unknown init, a missing or empty checkpoint, a checkpoint whose depth is
        not the configured trunk's, bad settings.
    """
    if init not in INITS:
      raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    self.name = eval_name
    self.init = init
    self.use_lasso = use_lasso
    self.seed = seed
    self.prefix = None
    if init == "checkpoint" and trunk is None:
      if not checkpoint:
        raise ValueError("No trunk to evaluate: give evaluate.checkpoint (a checkpoint prefix "
                         "or a run directory), or evaluate.init = 'random'.")
      self.prefix = trunk_lib.resolve_checkpoint(checkpoint)
    self.tag = "random" if self.prefix is None else os.path.basename(self.prefix)
    self.strategy = strategy or tf.distribute.get_strategy()
    self.settings = settings_for(eval_name)
    cls = base.get(eval_name)
    with self.strategy.scope():
      # In the evaluation's gin scope, so that `<eval>/Trunk.*` (e.g. a faster batch norm decay
      # for short runs) applies to this evaluation only.
      with gin.config_scope(eval_name):
        self.trunk = trunk or trunk_lib.Trunk()
      if self.prefix is not None:
        depth = trunk_lib.checkpoint_depth(self.prefix)
        if depth != self.trunk.depth:
          raise ValueError(
              f"{self.prefix} holds a depth-{depth} trunk but the configured trunk has depth "
              f"{self.trunk.depth}; bind Trunk.depth = {depth} (gin) or give the right "
              "checkpoint.")
      if evaluation is not None:
        if evaluation.trunk is not self.trunk:
          raise ValueError("Evaluator: the evaluation given is not made on the trunk given.")
        self.evaluation = evaluation
      else:
        with gin.config_scope(eval_name):
          self.evaluation = cls(self.trunk)
      if use_lasso:
        self.evaluation.lasso = lasso_lib.Lasso(
            [eval_name], len(trunk_lib.unit_endpoint_names(self.trunk.depth)))
    self.train_data = self.strategy.distribute_datasets_from_function(
        lambda ctx: self.evaluation.input_fn(ctx, "train"))
    self.train_examples = self.evaluation.num_examples(training=True)
    self.train_steps = train_steps_for(eval_name, self.settings, self.train_examples,
                                       self.evaluation.batch_size)
    with self.strategy.scope():
      spec = self.evaluation.input_fn(tf.distribute.InputContext(), "train").element_spec
      dummy = tf.nest.map_structure(
          lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
      self.evaluation.model_fn(dummy, heads.Mode.PREDICT)
      if self.settings.feature_cache_passes:
        self._check_feature_cache(dummy)
      self.checkpoint_report = None
      if self.prefix is not None:
        self.checkpoint_report = trunk_lib.init_from_checkpoint(self.trunk, self.prefix)
        logging.info("%s", self.checkpoint_report.summary())
      self.variables = list(self.evaluation.head_variables)
      if self.evaluation.fine_tunes_trunk:
        self.variables += list(self.trunk.trainable_variables)
      if self.evaluation.lasso is not None:
        self.variables.append(self.evaluation.lasso.row(eval_name))
      self.optimizer = tf.keras.optimizers.SGD(
          learning_rate=learning_rate_schedule(self.settings, self.train_steps),
          momentum=self.settings.momentum)
      self.optimizer.build(self.variables)
    self._train_step = tf.function(self._distributed_step)
    self._step_on = tf.function(
        lambda features: self._reduce(self.strategy.run(self._replica_step, args=(features,))))
    self._predict = tf.function(
        lambda features: self.evaluation.model_fn(features, heads.Mode.PREDICT).predictions)
    self._iterator = None
    self.batch_norm_notes = []
    self.feature_cache = None

  def _check_feature_cache(self, dummy):
    """Raises ValueError naming the binding if this evaluation cannot train on cached
    features."""
    why = None
    if self.evaluation.fine_tunes_trunk:
      why = "it fine-tunes the trunk, so the trunk's features change as it trains"
    elif self.evaluation.lasso is not None:
      why = "its evaluation lasso's alpha row trains, so the combined features change"
    elif isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      why = "the cache holds one machine's features; evaluate on one machine"
    elif self.train_examples is None:
      why = "the size of its training split is unknown"
    elif self.evaluation.frozen_features(dummy) is None:
      why = "it does not say which of its features are frozen"
    if why:
      raise ValueError(
          f"{self.name}/EvalSettings.feature_cache_passes = "
          f"{self.settings.feature_cache_passes}: {self.name} cannot train on cached features "
          f"({why}); bind it to 0.")

  def cache_features(self):
    """Computes the frozen features of `feature_cache_passes` augmented training passes.

    Each pass is ceil(training examples / batch size) batches of the training input (its
    augmentation included), run through `evaluation.frozen_features` once.

    Returns:
      A distributed iterator over the cached features: shuffled, repeated, in batches of the
      evaluation's global batch size (what `train` takes instead of the training split).

    Raises:
      ValueError: the cache would exceed MAX_FEATURE_CACHE_BYTES.
    """
    start = time.time()
    passes = int(self.settings.feature_cache_passes)
    batches = passes * math.ceil(self.train_examples / self.evaluation.batch_size)
    extract = tf.function(
        lambda it: self.strategy.run(self.evaluation.frozen_features, args=(next(it),)))
    local = lambda v: np.concatenate(
        [np.asarray(x) for x in self.strategy.experimental_local_results(v)])
    parts = []
    for i in range(batches):
      parts.append(tf.nest.map_structure(local, extract(self.iterator)))
      if i == 0:
        per_batch = sum(a.nbytes for a in tf.nest.flatten(parts[0]))
        if per_batch * batches > MAX_FEATURE_CACHE_BYTES:
          raise ValueError(
              f"{self.name}/EvalSettings.feature_cache_passes = {passes}: the cached features "
              f"would take {per_batch * batches / 2**30:.1f} GiB (at most "
              f"{MAX_FEATURE_CACHE_BYTES / 2**30:.0f}); bind fewer passes, or 0 to train on "
              "the images.")
    cache = tf.nest.map_structure(lambda *xs: np.concatenate(xs), *parts)
    examples = len(tf.nest.flatten(cache)[0])
    self.feature_cache = dict(passes=passes, examples=examples,
                              megabytes=sum(a.nbytes for a in tf.nest.flatten(cache)) / 2**20,
                              seconds=time.time() - start)
    logging.info("%s on %s: cached the frozen features of %d training examples (%d passes) "
                 "in %.0f s", self.name, self.tag, examples, passes, time.time() - start)
    dataset = (tf.data.Dataset.from_tensor_slices(cache).shuffle(examples).repeat()
               .batch(self.evaluation.batch_size, drop_remainder=True))
    return iter(self.strategy.experimental_distribute_dataset(dataset))

  def plan(self):
    """What `run` will do: data, steps, epochs, schedule (a JSON-ready dict)."""
    return make_plan(self.name, self.evaluation, self.trunk, self.settings, self.train_examples,
                     self.evaluation.num_examples(training=False))

  def _replica_step(self, features):
    evaluation, trunk, name = self.evaluation, self.trunk, self.name
    with tf.GradientTape() as tape:
      out = evaluation.model_fn(features, heads.Mode.TRAIN)
      loss = out.loss
      if evaluation.fine_tunes_trunk:
        loss += trunk.regularization_loss()
      if evaluation.lasso is not None:
        loss += evaluation.lasso.penalty(name)
      scaled = distribute.scale_loss(loss, self.strategy)
    grads = tape.gradient(scaled, self.variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.variables)]
    if self.settings.clip_gradient_norm:
      # The global norm of the whole (cross-replica) gradient, as the detection API clips.
      ctx = tf.distribute.get_replica_context()
      grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads) if ctx else grads
      grads, _ = tf.clip_by_global_norm(grads, self.settings.clip_gradient_norm)
      self.optimizer.apply_gradients(zip(grads, self.variables),
                                     skip_gradients_aggregation=True)
    else:
      self.optimizer.apply_gradients(zip(grads, self.variables))
    if evaluation.lasso is not None:
      evaluation.lasso.project(name)
    return out.loss, out.metrics

  def _reduce(self, outputs):
    loss, metrics = outputs
    mean = lambda x: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)
    return mean(loss), {k: mean(v) for k, v in metrics.items()}

  def _distributed_step(self, iterator):
    return self._reduce(self.strategy.run(self._replica_step, args=(next(iterator),)))

  @property
  def iterator(self):
    """The distributed iterator over the training split (made on first use)."""
    if self._iterator is None:
      self._iterator = iter(self.train_data)
    return self._iterator

  def train_step(self, features=None):
    """One training step: (mean loss, {metric: mean}) tensors.

    Args:
      features: None (the next batch of the training split), or a batch of training features
        (each replica trains on it; benchmarks time the step without the input pipeline).
    """
    if features is None:
      return self._train_step(self.iterator)
    return self._step_on(features)

  def predict(self, features):
    """The evaluation's PREDICT outputs (dict of tensors) for a batch of test features."""
    return self._predict(features)

  def estimate_batch_norm_statistics(self, include_trunk, batches=None):
    """Re-estimates moving batch norm statistics on the evaluation's training images.

    Runs `batches` training batches forward in training mode (no gradient, no weight change)
    with every batch norm's decay at 0, so each moving statistic holds its batch's statistic
    after a step, and sets it to their average over the batches.

    Args:
      include_trunk: re-estimate the trunk's statistics too (frozen evaluations: only before
        training; fine-tuned ones: before training and before the test).
      batches: batches averaged (default: settings.batch_norm_batches).

    Returns:
      The number of statistics variables set.
    """
    batches = int(batches or self.settings.batch_norm_batches)
    head_layers = _batch_norm_layers(self.evaluation)
    # A frozen evaluation's head reads the trunk in inference mode, so its trunk pass runs the
    # trunk alone; its head's own statistics are estimated before the test.
    trunk_only = include_trunk and not self.evaluation.fine_tunes_trunk
    trunk_statistics = _moving_statistics(self.trunk)
    if trunk_only:
      variables = trunk_statistics
    else:
      trunk_ids = {id(v) for v in trunk_statistics}
      variables = [v for v in _moving_statistics(self.evaluation) if id(v) not in trunk_ids]
      if include_trunk:
        variables += trunk_statistics
    if not variables or not batches:
      return 0
    # Slim modules (trunk, block 4) read `batch_norm_decay` and Keras layers `momentum` when a
    # function is traced: a fresh trace with them at 0 makes each moving average its batch's.
    slim_modules = [m for m in [self.trunk] + list(self.evaluation.submodules)
                    if hasattr(m, "batch_norm_decay")]
    saved = ([(m, "batch_norm_decay", m.batch_norm_decay) for m in slim_modules] +
             [(layer, "momentum", layer.momentum) for layer in head_layers])
    image_key = f"{self.name}/image"

    def replica_forward(features):
      if trunk_only:
        self.trunk(features[image_key], training=True,
                   output_stride=self.evaluation.output_stride)
      else:
        self.evaluation.model_fn(features, heads.Mode.TRAIN)

    try:
      for module, attribute, _ in saved:
        setattr(module, attribute, 0.0)
      forward = tf.function(lambda it: self.strategy.run(replica_forward, args=(next(it),)))
      iterator = iter(self.strategy.distribute_datasets_from_function(
          lambda ctx: self.evaluation.input_fn(ctx, "train")))
      sums = [np.zeros(v.shape, np.float64) for v in variables]
      for _ in range(batches):
        forward(iterator)
        for total, variable in zip(sums, variables):
          total += variable.numpy()
      for total, variable in zip(sums, variables):
        variable.assign(tf.cast(total / batches, variable.dtype))
    finally:
      for module, attribute, value in saved:
        setattr(module, attribute, value)
    return len(variables)

  def _check_finite(self, value, step):
    if not np.isfinite(value):
      raise RuntimeError(f"{self.name}: non-finite training loss {value} at step {step}; "
                         f"lower {self.name}/EvalSettings.learning_rate.")

  def train(self, summary_step=0, iterator=None):
    """Runs `train_steps` training steps with progress lines and TensorBoard scalars.

    Args:
      summary_step: offset of the summaries' steps (0: the evaluation's own steps).
      iterator: a distributed iterator to train on (`cache_features`'s); default: the
        training split.

    Returns:
      The last step's mean training loss (float).
    """
    settings = self.settings
    start, last_log, value = time.time(), 0.0, None
    for step in range(1, self.train_steps + 1):
      if iterator is None:
        loss, metrics = self.train_step()
      else:
        loss, metrics = self._train_step(iterator)
      value = float(loss)
      self._check_finite(value, step)
      if step % settings.summary_every_steps == 0 or step == self.train_steps:
        tf.summary.scalar("train/loss", value, step=summary_step + step)
        tf.summary.scalar("train/learning_rate",
                          float(self.optimizer.learning_rate), step=summary_step + step)
        for key, metric in metrics.items():
          tf.summary.scalar(f"train/{key}", metric, step=summary_step + step)
      now = time.time()
      if now - last_log >= settings.log_every_secs or step == self.train_steps:
        last_log = now
        rate = step / max(now - start, 1e-9)
        logging.info("%s on %s: step %d/%d, loss %.4g, %.2f steps/s, ETA %s", self.name,
                     self.tag, step, self.train_steps, value, rate,
                     progress.format_duration((self.train_steps - step) / max(rate, 1e-9)))
    return value

  def test(self):
    """Predicts the whole test split; the evaluation's metrics over it (dict)."""
    test_data = self.evaluation.input_fn(None, self.evaluation.eval_split)
    total = self.evaluation.num_examples(training=False)
    accumulator = self.evaluation.metrics_accumulator()
    start, last_log, images = time.time(), time.time(), 0
    for features in test_data:
      predictions = self.predict(features)
      accumulator.update(tf.nest.map_structure(np.asarray, features),
                         tf.nest.map_structure(np.asarray, predictions))
      images += int(tf.nest.flatten(features)[0].shape[0])
      now = time.time()
      if now - last_log >= self.settings.log_every_secs:
        last_log = now
        rate = images / max(now - start, 1e-9)
        eta = "?" if not total else progress.format_duration((total - images) / max(rate, 1e-9))
        logging.info("%s on %s: test %d/%s images, %.1f images/s, ETA %s", self.name,
                     self.tag, images, total or "?", rate, eta)
    logging.info("%s on %s: tested %d images in %.0f s", self.name, self.tag, images,
                 time.time() - start)
    metrics = accumulator.result()
    metrics.setdefault("test_images", images)
    return metrics

  def run(self, output_dir):
    """Estimates batch norm statistics, trains, tests; writes and returns the results dict."""
    start = time.time()
    position = _pretraining_position(self.prefix) if self.prefix else None
    # Summaries at the checkpoint's pretraining step, so TensorBoard shows score against
    # pretraining time across checkpoints (paper Figure 3); training scalars follow it.
    summary_step = (position or {}).get("global_step") or 0
    writer = tf.summary.create_file_writer(
        os.path.join(output_dir, "tensorboard", f"{self.name}-{self.tag}"))
    estimate = self.settings.batch_norm_statistics == "estimate"
    with writer.as_default():
      if estimate:
        count = self.estimate_batch_norm_statistics(include_trunk=True)
        self.batch_norm_notes.append(f"{count} statistics estimated before training")
      cached = self.cache_features() if self.settings.feature_cache_passes else None
      loss = self.train(summary_step, cached)
      if estimate:
        count = self.estimate_batch_norm_statistics(
            include_trunk=self.evaluation.fine_tunes_trunk)
        self.batch_norm_notes.append(f"{count} statistics estimated before the test")
      metrics = self.test()
      with tf.summary.record_if(True):
        for key, value in metrics.items():
          if isinstance(value, (int, float)) and not isinstance(value, bool):
            tf.summary.scalar(f"test/{key}", value, step=summary_step)
    writer.flush()
    results = {
        "evaluation": self.name,
        "init": self.init,
        "checkpoint": self.prefix,
        "pretraining": position,
        "trunk": {"depth": self.trunk.depth, "output_stride": self.evaluation.output_stride,
                  "fine_tuned": self.evaluation.fine_tunes_trunk},
        "checkpoint_report": (self.checkpoint_report.summary()
                              if self.checkpoint_report else None),
        "settings": dataclasses.asdict(self.settings),
        "plan": self.plan(),
        "batch_norm_statistics": {
            "mode": self.settings.batch_norm_statistics,
            "batches": self.settings.batch_norm_batches if estimate else 0,
            "notes": self.batch_norm_notes},
        "train_steps": self.train_steps,
        "feature_cache": self.feature_cache,
        "final_train_loss": loss,
        "metrics": metrics,
        "lasso_alpha": ({self.name: self.evaluation.lasso.row(self.name).numpy().tolist()}
                        if self.evaluation.lasso is not None else None),
        "seed": self.seed,
        "seconds": time.time() - start,
        # Every gin binding in force, so a result says what produced it (and tools that
        # resume, like tools/toy_table.py, can tell a stale result from a current one).
        "gin_config": gin.config_str(),
    }
    tf.io.gfile.makedirs(output_dir)
    path = results_path(output_dir, self.name, self.prefix, lasso=self.use_lasso)
    files.write_atomically(path, lambda f: f.write(json.dumps(results, indent=1,
                                                              sort_keys=True)))
    logging.info("%s on %s: %s", self.name, self.tag, metrics)
    return results


@gin.configurable(denylist=["eval_name", "output_dir", "checkpoint", "init", "strategy", "trunk"])
def evaluate(eval_name, output_dir, checkpoint=None, init="checkpoint", strategy=None,
             use_lasso=False, trunk=None, seed=None):
  """Trains and tests one evaluation on one trunk; writes and returns its results.

  Args:
    eval_name, checkpoint, init, strategy, use_lasso, trunk: see `Evaluator`.
    output_dir: results JSON and TensorBoard summaries go here.
    seed: None, or an int that fixes data order, augmentation and initialization.

  Returns:
    The results dict (also written to `results_path(output_dir, eval_name, checkpoint,
    use_lasso)`), with the seed.
  """
  with _seeded(seed):
    evaluator = Evaluator(eval_name, checkpoint=checkpoint, init=init, strategy=strategy,
                          use_lasso=use_lasso, trunk=trunk, seed=seed)
    results = evaluator.run(output_dir)
  return results


def checkpoints_in(directory):
  """The pretraining checkpoints (prefixes) of a model directory, by step."""
  found = []
  for index in glob.glob(os.path.join(directory, "ckpt-*.index")):
    match = re.search(r"ckpt-(\d+)\.index$", index)
    if match:
      found.append((int(match.group(1)), index[:-len(".index")]))
  return [prefix for _, prefix in sorted(found)]


def evaluate_directory(eval_name, checkpoint_dir, output_dir, poll_secs=60.0,
                       stop_after_idle_secs=0.0, **kwargs):
  """Evaluates every checkpoint of `checkpoint_dir` not yet evaluated, as they appear.

  Args:
    eval_name: a registered evaluation.
    checkpoint_dir: a pretraining model directory.
    output_dir: results go here; a checkpoint whose results JSON exists is skipped.
    poll_secs: seconds between looks for new checkpoints.
    stop_after_idle_secs: stop when no new checkpoint appeared for this long (0: stop as soon
      as every present checkpoint is done).
    **kwargs: passed to `evaluate`.

  Returns:
    List of the results dicts written in this call.

  Raises:
    ValueError: if checkpoint_dir does not exist.
  """
  if not tf.io.gfile.isdir(checkpoint_dir):
    raise ValueError(f"evaluate_directory.checkpoint_dir = {checkpoint_dir!r} is not a "
                     "directory.")
  written, idle_since = [], time.time()
  while True:
    lasso = kwargs.get("use_lasso", False)
    pending = [p for p in checkpoints_in(checkpoint_dir)
               if not tf.io.gfile.exists(results_path(output_dir, eval_name, p, lasso))]
    for prefix in pending:
      written.append(evaluate(eval_name, output_dir, checkpoint=prefix, **kwargs))
      idle_since = time.time()
    if time.time() - idle_since >= stop_after_idle_secs:
      break
    time.sleep(poll_secs)
  if not written and not checkpoints_in(checkpoint_dir):
    logging.warning("No checkpoints (ckpt-N) in %s.", checkpoint_dir)
  return written
