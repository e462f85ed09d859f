"""The evaluation loop (paper section 5): load a pretrained trunk, train an evaluation's head
(and the trunk, where the evaluation fine-tunes it), measure it on the test split, and write a
results JSON and TensorBoard summaries.

`evaluate` does one checkpoint (or a random trunk, the "Random Init" baseline);
`evaluate_directory` evaluates every pretraining checkpoint of a model directory as it appears
and skips those already done, which gives the paper's Figure 3 curves.

Optimizer: SGD with momentum, learning rate decayed by `decay_rate` every `decay_steps` (gin:
`<evaluation>/EvalSettings.*`). Weight decay as slim's on the trunk when it is fine-tuned.
"""

import dataclasses
import glob
import json
import os
import re
import time

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import distribute
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.evals import base

INITS = ("checkpoint", "random")


@gin.configurable
@dataclasses.dataclass
class EvalSettings:
  """How an evaluation trains; bind per evaluation, e.g. `nyu_depth/EvalSettings.train_steps`.

  Attributes:
    train_steps: steps of head (and trunk) training before the test.
    learning_rate, momentum: SGD with momentum.
    decay_rate, decay_steps: learning rate times decay_rate every decay_steps (staircase).
    summary_every_steps: training scalars to TensorBoard every this many steps.
    log_every_secs: seconds between progress lines.
  """
  train_steps: int = 1000
  learning_rate: float = 0.01
  momentum: float = 0.9
  decay_rate: float = 0.1
  decay_steps: int = 100000
  summary_every_steps: int = 50
  log_every_secs: float = 30.0


def _settings(name):
  with gin.config_scope(name):
    return EvalSettings()


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


def _write_json(path, value):
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(value, indent=1, sort_keys=True))
  tf.io.gfile.rename(tmp, path, overwrite=True)


@gin.configurable(denylist=["eval_name", "output_dir", "checkpoint", "init", "strategy", "trunk"])
def evaluate(eval_name, output_dir, checkpoint=None, init="checkpoint", strategy=None,
             use_lasso=False, trunk=None):
  """Trains and tests one evaluation on one trunk; writes and returns its results.

  Args:
    eval_name: a registered evaluation ("imagenet_linear", "voc_detection", "nyu_depth").
    output_dir: results JSON and TensorBoard summaries go here.
    checkpoint: a pretraining checkpoint (prefix or directory: its latest), slim's public
      ImageNet checkpoint, or None with init="random".
    init: "checkpoint" or "random" (the trunk keeps its random initialization).
    strategy: a `tf.distribute.Strategy` (default: the current one).
    use_lasso: the head reads a learned lasso combination of block 3's units (paper Table 4's
      "eval lasso"); its alpha row goes into the results.
    trunk: evaluate this live `Trunk` as it is (init and checkpoint are then only recorded;
      the demo evaluates the trunk it just trained); it is changed if the evaluation
      fine-tunes it.

  Returns:
    The results dict (also written to `results_path(output_dir, eval_name, checkpoint,
    use_lasso)`).

  Raises:
    ValueError: an unknown init, a missing or empty checkpoint, a checkpoint whose depth is not
      the configured trunk's, a missing dataset.
  """
  if init not in INITS:
    raise ValueError(f"--init must be one of {INITS}, got {init!r}.")
  prefix = None
  if init == "checkpoint" and trunk is None:
    if not checkpoint:
      raise ValueError("Give --checkpoint (or --checkpoint_dir), or --init=random.")
    prefix = trunk_lib.resolve_checkpoint(checkpoint)
  strategy = strategy or tf.distribute.get_strategy()
  settings = _settings(eval_name)
  cls = base.get(eval_name)
  with strategy.scope():
    # In the evaluation's gin scope, so that `<eval>/Trunk.*` (e.g. a faster batch norm decay
    # for short runs) applies to this evaluation only.
    with gin.config_scope(eval_name):
      trunk = trunk or trunk_lib.Trunk()
    if prefix is not None:
      depth = trunk_lib.checkpoint_depth(prefix)
      if depth != trunk.depth:
        raise ValueError(
            f"{prefix} holds a depth-{depth} trunk but the configured trunk has depth "
            f"{trunk.depth}; bind Trunk.depth = {depth} (gin) or give the right checkpoint.")
    with gin.config_scope(eval_name):
      evaluation = cls(trunk)
    if use_lasso:
      evaluation.lasso = lasso_lib.Lasso([eval_name],
                                         len(trunk_lib.unit_endpoint_names(trunk.depth)))
  train_data = strategy.distribute_datasets_from_function(
      lambda ctx: evaluation.input_fn(ctx, "train"))
  test_data = evaluation.input_fn(None, "test")
  with strategy.scope():
    spec = evaluation.input_fn(tf.distribute.InputContext(), "train").element_spec
    dummy = tf.nest.map_structure(lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
    evaluation.model_fn(dummy, base.Mode.PREDICT)
    report = None
    if prefix is not None:
      report = trunk_lib.init_from_checkpoint(trunk, prefix)
      logging.info("%s", report.summary())
    variables = list(evaluation.head_variables)
    if evaluation.fine_tunes_trunk:
      variables += list(trunk.trainable_variables)
    if evaluation.lasso is not None:
      variables.append(evaluation.lasso.row(eval_name))
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(
        settings.learning_rate, settings.decay_steps, settings.decay_rate, staircase=True)
    optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=settings.momentum)
    optimizer.build(variables)

  def replica_step(features):
    with tf.GradientTape() as tape:
      out = evaluation.model_fn(features, base.Mode.TRAIN)
      loss = out.loss
      if evaluation.fine_tunes_trunk:
        loss += trunk.regularization_loss()
      if evaluation.lasso is not None:
        loss += evaluation.lasso.penalty(eval_name)
      scaled = distribute.scale_loss(loss, strategy)
    grads = tape.gradient(scaled, variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    optimizer.apply_gradients(zip(grads, variables))
    if evaluation.lasso is not None:
      evaluation.lasso.project(eval_name)
    return out.loss, out.metrics

  @tf.function
  def train_step(iterator):
    loss, metrics = strategy.run(replica_step, args=(next(iterator),))
    mean = lambda x: strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)
    return mean(loss), {k: mean(v) for k, v in metrics.items()}

  @tf.function
  def predict(features):
    return evaluation.model_fn(features, base.Mode.PREDICT).predictions

  tag = "random" if prefix is None else os.path.basename(prefix)
  writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard",
                                                      f"{eval_name}-{tag}"))
  iterator = iter(train_data)
  start, last_log, loss = time.time(), 0.0, None
  with writer.as_default():
    for step in range(1, settings.train_steps + 1):
      loss, metrics = train_step(iterator)
      value = float(loss)
      if not np.isfinite(value):
        raise RuntimeError(f"{eval_name}: non-finite training loss {value} at step {step}; "
                           f"lower {eval_name}/EvalSettings.learning_rate.")
      if step % settings.summary_every_steps == 0 or step == settings.train_steps:
        tf.summary.scalar("train/loss", value, step=step)
        for key, metric in metrics.items():
          tf.summary.scalar(f"train/{key}", metric, step=step)
      now = time.time()
      if now - last_log >= settings.log_every_secs or step == settings.train_steps:
        last_log = now
        rate = step / max(now - start, 1e-9)
        eta = (settings.train_steps - step) / max(rate, 1e-9)
        logging.info("%s on %s: step %d/%d, loss %.4g, %.2f steps/s, ETA %s", eval_name, tag,
                     step, settings.train_steps, value, rate,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
    accumulator = evaluation.metrics_accumulator()
    tested = 0
    for features in test_data:
      predictions = predict(features)
      accumulator.update(tf.nest.map_structure(np.asarray, features),
                         tf.nest.map_structure(np.asarray, predictions))
      tested += 1
    metrics = accumulator.result()
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        tf.summary.scalar(f"test/{key}", value, step=settings.train_steps)
  writer.flush()
  results = {
      "evaluation": eval_name,
      "init": init,
      "checkpoint": prefix,
      "pretraining": _pretraining_position(prefix) if prefix else None,
      "trunk": {"depth": trunk.depth, "output_stride": evaluation.output_stride,
                "fine_tuned": evaluation.fine_tunes_trunk},
      "checkpoint_report": report.summary() if report else None,
      "train_steps": settings.train_steps,
      "final_train_loss": None if loss is None else float(loss),
      "test_batches": tested,
      "metrics": metrics,
      "lasso_alpha": ({eval_name: evaluation.lasso.row(eval_name).numpy().tolist()}
                      if evaluation.lasso is not None else None),
      "seconds": time.time() - start,
  }
  tf.io.gfile.makedirs(output_dir)
  _write_json(results_path(output_dir, eval_name, prefix, lasso=use_lasso), results)
  logging.info("%s on %s: %s", eval_name, tag, metrics)
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
    raise ValueError(f"--checkpoint_dir={checkpoint_dir!r} is not a directory.")
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
