"""Dry runs: what a pretraining or evaluation run will read and do, checked in seconds.

`training_plan` and `evaluation_plan` read the parsed gin configuration, open every dataset
the run needs (TFDS data directory and splits, TFRecord shards, image folders, motion shards),
count what can be counted without reading the data, and return the plan: steps, epochs over
each dataset, checkpoints, compute at the configured cost per step, and wall time at a given
time per step. They build no model and write nothing. Missing data raises `MissingData`, one
line naming the dataset, where it was looked for and the WORKSPACE.md section that prepares it.
"""

import math

import gin
import tensorflow as tf

from mtssl_tf import trunk as trunk_lib
from mtssl_tf import validate
from mtssl_tf.data import motion_records
from mtssl_tf.data import sources
from mtssl_tf.data import splits

PREPARE = "WORKSPACE.md, section 'Data'"


class MissingData(ValueError):
  """A dataset the run needs is not where the configuration says."""


def bound(function, param, selector=None):
  """The value gin binds to `selector.param` (default: the function's name), else its default."""
  selector = selector or function.__name__
  try:
    return gin.query_parameter(f"{selector}.{param}")
  except ValueError:
    return validate.defaults(function)[param]


def _missing(error):
  """A `splits.DataNotFoundError` as `MissingData` naming the WORKSPACE.md section."""
  message = str(error)
  if "WORKSPACE.md" in message:
    return MissingData(message.replace("WORKSPACE.md", PREPARE, 1))
  return MissingData(f"{message} ({PREPARE})")


def _tfds_examples(name, split, data_dir, binding):
  try:
    return splits.num_examples(name, split, data_dir=data_dir, binding=binding)
  except splits.DataNotFoundError as e:
    raise _missing(e) from None


def image_source():
  """The pretext tasks' image source (gin `image_dataset.*`): a dict describing it.

  Raises:
    MissingData: the TFDS split is not prepared, no TFRecord file matches, the folder has no
      images.
  """
  fn = sources.image_dataset
  source = bound(fn, "source")
  if source == "toy":
    return {"source": "toy", "examples": bound(fn, "num_toy_images")}
  if source == "tfds":
    name, split = bound(fn, "name"), bound(fn, "split")
    data_dir = bound(fn, "data_dir")
    return {"source": "tfds", "dataset": name, "split": split, "data_dir": data_dir,
            "examples": _tfds_examples(name, split, data_dir, "image_dataset.split")}
  pattern = bound(fn, "pattern")
  if source == "tfrecord":
    shards = tf.io.gfile.glob(pattern or "")
    if not shards:
      raise MissingData(f"No TFRecord file matches image_dataset.pattern = {pattern!r}; "
                        f"write the shards there or fix the pattern ({PREPARE}).")
    return {"source": "tfrecord", "pattern": pattern, "files": len(shards), "examples": None}
  if source == "folder":
    if not pattern or not tf.io.gfile.isdir(pattern):
      raise MissingData(f"image_dataset.pattern = {pattern!r} is not a directory; point it at "
                        f"a folder of JPEG/PNG images ({PREPARE}).")
    images = sources.list_image_files(pattern)
    if not images:
      raise MissingData(f"No JPEG/PNG image under image_dataset.pattern = {pattern!r} "
                        f"({PREPARE}).")
    return {"source": "folder", "pattern": pattern, "examples": len(images)}
  raise ValueError(f"image_dataset.source = {source!r}: choose one of {sources.SOURCES}.")


def motion_source():
  """Motion segmentation's source (gin `motion_dataset.*`): a dict describing it.

  Raises:
    MissingData: no shard matches the pattern.
  """
  fn = motion_records.motion_dataset
  source = bound(fn, "source")
  if source == "toy":
    return {"source": "toy",
            "examples": bound(fn, "num_toy_clips") * bound(fn, "toy_frames_per_clip")}
  pattern = bound(fn, "pattern")
  shards = tf.io.gfile.glob(pattern or "")
  if not shards:
    raise MissingData(f"No motion segmentation shard matches motion_dataset.pattern = "
                      f"{pattern!r}; make them with tools/prepare_motion_segmentation.py "
                      f"({PREPARE}, videos for motion segmentation).")
  return {"source": "tfrecord", "pattern": pattern, "files": len(shards), "examples": None}


def _task_source(task):
  if task.name == "motion_segmentation":
    return motion_source()
  if getattr(task, "dataset", None) and getattr(task, "split", None):  # ImageNet labels
    data_dir = bound(sources.tfds_split, "data_dir")
    return {"source": "tfds", "dataset": task.dataset, "split": task.split,
            "examples": _tfds_examples(task.dataset, task.split, data_dir,
                                       f"{task.name}.split")}
  return image_source()


def training_plan(seconds_per_step=None):
  """The plan of `mtssl-train` under the parsed gin configuration (nothing is built or run).

  Args:
    seconds_per_step: if given, the wall time of the run at this time per global step.

  Returns:
    A JSON-ready dict: steps, per task (share of steps, steps, updates, examples per step,
    source, epochs over it), compute, checkpoints, wall time.

  Raises:
    MissingData, ValueError: missing data or bad settings, before anything is built.
  """
  # pylint: disable=g-import-not-at-top
  from mtssl_tf import training
  from mtssl_tf.tasks import base as tasks_base
  trainer = training.MultiTaskTrainer
  names = bound(trainer.__init__, "tasks", "MultiTaskTrainer")
  if names is gin.REQUIRED or not names:
    raise ValueError("No tasks: bind MultiTaskTrainer.tasks (e.g. include an experiment's gin "
                     "file).")
  num_steps = bound(training.run_training, "num_steps")
  max_compute = bound(training.run_training, "max_compute")
  every_compute = bound(trainer.__init__, "checkpoint_every_compute", "MultiTaskTrainer")
  every_secs = bound(trainer.__init__, "checkpoint_every_secs", "MultiTaskTrainer")
  settings = {name: training.task_settings(name) for name in names}
  total_weight = sum(s.weight for s in settings.values())
  trunk = trunk_lib.Trunk()  # only read: no variable is made
  tasks, compute_per_step = {}, 0.0
  for name in names:
    with gin.config_scope(name):
      task = tasks_base.get(name)(trunk)
    share = settings[name].weight / total_weight
    compute_per_step += share * settings[name].cost_per_step
    tasks[name] = {"share": share, "batch_size": task.batch_size,
                   "accumulation_steps": settings[name].accumulation_steps,
                   "cost_per_step": settings[name].cost_per_step,
                   "source": _task_source(task)}
  if num_steps is None and max_compute:
    num_steps = math.ceil(max_compute / compute_per_step) if compute_per_step else None
  for entry in tasks.values():
    steps = None if num_steps is None else num_steps * entry["share"]
    entry["steps"] = steps
    entry["updates"] = None if steps is None else steps / entry["accumulation_steps"]
    examples = entry["source"].get("examples")
    entry["epochs"] = (steps * entry["batch_size"] / examples
                       if steps is not None and examples else None)
  compute = None if num_steps is None else num_steps * compute_per_step
  if max_compute and compute is not None:
    compute = min(compute, max_compute)
  return {
      "tasks": tasks,
      "num_steps": num_steps,
      "trunk_depth": trunk.depth,
      "compute": compute,
      "checkpoints_by_compute": (int(compute // every_compute)
                                 if compute is not None and every_compute else 0),
      "checkpoint_every_secs": every_secs,
      "seconds_per_step": seconds_per_step,
      "wall_seconds": (num_steps * seconds_per_step
                       if seconds_per_step and num_steps is not None else None),
  }


def evaluation_plan(eval_name, seconds_per_step=None):
  """The plan of `mtssl-evaluate --eval=eval_name` (nothing is built or run).

  Raises:
    MissingData: a split of the evaluation's TFDS dataset is not prepared.
    ValueError: a split the dataset does not declare, bad settings.
  """
  # pylint: disable=g-import-not-at-top
  from mtssl_tf import evaluation
  from mtssl_tf.evals import base
  settings = evaluation.settings_for(eval_name)
  with gin.config_scope(eval_name):
    trunk = trunk_lib.Trunk()
    head = base.get(eval_name)(trunk)
  try:
    counts = {training: head.num_examples(training, strict=True) for training in (True, False)}
  except splits.DataNotFoundError as e:
    raise _missing(e) from None
  plan = evaluation.make_plan(eval_name, head, trunk, settings, counts[True], counts[False])
  plan["seconds_per_step"] = seconds_per_step
  plan["wall_seconds"] = (plan["train_steps"] * seconds_per_step if seconds_per_step else None)
  return plan


def _duration(seconds):
  if seconds is None:
    return "? (give --seconds_per_step)"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def format_training_plan(plan):
  """Lines a person reads: one per task, then the totals."""
  lines = [f"Dry run: {plan['num_steps']} global steps of a depth-{plan['trunk_depth']} trunk."]
  for name, task in plan["tasks"].items():
    source = task["source"]
    where = source.get("dataset") or source.get("pattern") or source["source"]
    size = (f"{source['examples']} examples" if source.get("examples")
            else f"{source.get('files', '?')} files")
    epochs = "?" if task["epochs"] is None else f"{task['epochs']:.2f}"
    steps = "?" if task["steps"] is None else f"{task['steps']:.0f}"
    lines.append(f"  {name}: {task['share']:.0%} of steps = {steps} steps of batch "
                 f"{task['batch_size']}, {where} ({size}): {epochs} epochs")
  compute = "?" if plan["compute"] is None else f"{plan['compute']:.4g}"
  lines.append(f"  compute {compute} device-seconds, {plan['checkpoints_by_compute']} "
               f"checkpoints by compute (and every {plan['checkpoint_every_secs']} s), "
               f"wall time {_duration(plan['wall_seconds'])}")
  return lines


def format_evaluation_plan(plan):
  epochs = "?" if plan["epochs"] is None else f"{plan['epochs']:.2f}"
  return [
      f"Dry run: {plan['evaluation']} on {plan['dataset']}: train {plan['train_split']} "
      f"({plan['train_examples']} examples), test {plan['eval_split']} "
      f"({plan['test_examples']} examples).",
      f"  {plan['train_steps']} steps of batch {plan['batch_size']} = {epochs} epochs; "
      f"learning rate {plan['learning_rate']:g} x {plan['decay_rate']:g} at steps "
      f"{plan['decay_steps']}; batch norm statistics: {plan['batch_norm_statistics']}; "
      f"trunk {'fine-tuned' if plan['fine_tunes_trunk'] else 'frozen'}; "
      f"wall time {_duration(plan['wall_seconds'])}",
  ]
