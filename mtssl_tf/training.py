"""The multi-task training loop (paper section 4): one shared trunk, one head per task, one task
per step, per-task gradient accumulation and a separate RMSProp per task.

Read it top to bottom in `MultiTaskTrainer.train`: pick the task (schedule), run its step
(accumulate or apply), write summaries, checkpoint, repeat.

Schedule. Each task has a weight (gin: `<task>/task_settings.weight`). At every step the task
that runs is the one with the smallest (steps_done + 1) / weight, ties to the first in the
list: a deterministic interleaving in which each task's share of steps converges to its weight's
share. It depends only on the per-task step counters, which every worker holds identically (they
are checkpointed), never on data or time, so all workers of a MultiWorkerMirroredStrategy run
the same task at the same step.

Accumulate or apply. Task n applies its gradients every `accumulation_steps` of its own steps,
with its own optimizer (RMSProp: rho, momentum, epsilon, learning rate per task in gin), without
waiting for other tasks: the paper's hybrid of per-task synchrony and cross-task independence.
Between applies, each replica adds its gradient to the task's accumulators, `ON_READ`/`SUM`
variables, one per trainable variable of the task: each replica keeps its own sum, no
communication happens, and a checkpoint stores (and restores) their sum over replicas. At the
apply step each replica passes accumulator + gradient, divided by `accumulation_steps`, to the
optimizer, which sums over replicas (the all-reduce), and the accumulators are zeroed. Whether a
step applies is decided from the task's step counter on the host, so it too is the same on every
worker. The trunk's variables are shared by every task's optimizer (each has its own slots for
them); head variables and the task's lasso row belong to that task alone. Weight decay is
slim's (`Trunk.regularization_loss`), added to every task's loss.

Compute accounting (paper section 6.1). Each task has a cost per step in device-seconds
(`<task>/task_settings.cost_per_step`); the loop adds them up and checkpoints each time the
total crosses the next multiple of `checkpoint_every_compute` (the paper's "every 2.4K GPU
hours"), and also every `checkpoint_every_secs` of wall time. Checkpoints hold the step, the
per-task counters (the schedule's position), the compute used, every optimizer's slots, every
accumulator and the lasso. TensorFlow writes a checkpoint's files before the `checkpoint` index
names it, so a run killed while saving restarts from the previous complete one; what such a
save left (TensorFlow's `ckpt-<step>_temp/` directory and `.tempstate` files, other workers'
directories, see `distribute.py`) is removed when the next run starts, and logged. Restarting
with the same model directory resumes; SIGTERM (and Ctrl-C) saves a checkpoint at the current
step and stops.

Divergence. No checkpoint ever holds a NaN or an Inf. Every step checks, inside its
tf.function, the task's loss, its gradients and, after the update (or the accumulation), every
value the step wrote: the trunk's and head's variables (batch norm statistics included), the
lasso, the task's optimizer slots, or its accumulators. A diverging rate overflows RMSProp's mean
square (the squared gradient) steps before the loss or the weights overflow, so the slots must
be checked too. The written values are screened by the sum of their squares (one kernel per
variable), which is also infinite for finite values beyond ~1e16; when it is, the host checks
every value exactly. The first step that leaves a NaN or an Inf stops the run, and the error
names the task, the step and the last checkpoint, written before that step, and clean; the
trainer then refuses to save. The values in memory are not rolled back (a restart resumes from
that checkpoint). As a last guard, each checkpoint is checked whole before it is written, and
the one a run resumes from after it is read.

Precision and XLA (`mtssl_tf/precision.py`). `precision` ("float32", "mixed_bfloat16",
"mixed_float16") is the Keras policy in force while the model is built (every layer keeps the
policy it was built under; the global policy is restored afterwards): the networks compute in
half precision, variables, slots, accumulators and checkpoints stay float32 (a checkpoint loads
under any precision). Under "mixed_float16" each task's RMSProp is wrapped in its own
`LossScaleOptimizer`: an update whose gradients overflowed is skipped (no variable, slot or
accumulator keeps it) and that task's scale halves; overflowed gradients are then expected and
counted (`<task>/skipped_updates`), not errors; a non-finite loss still is. An overflowed
gradient at an accumulating step is not added to the accumulators (they stay finite): a flag
makes the task's next apply skip the update it belongs to. The loss scale and that flag are not
checkpointed (the inner optimizer is, so checkpoints are the same in every precision): a resumed
float16 run starts from the initial scale again, and an update whose accumulation overflowed
before the save applies without the overflowed gradients. `jit_compile` compiles each task's
forward and backward pass (per replica) with XLA; batch shapes are static per task (batches
drop their remainder), so each compiles once.
"""

import collections
import contextlib
import dataclasses
import math
import os
import re
import signal
import time

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import distribute
from mtssl_tf import files
from mtssl_tf import heads
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import precision as precision_lib
from mtssl_tf import progress
from mtssl_tf import run_config
from mtssl_tf import supervise
from mtssl_tf import trunk as trunk_lib
from mtssl_tf import validate
from mtssl_tf.data import sources
from mtssl_tf.tasks import base


# Steps of each task whose mean loss a run's summary reports, at its start and at its end.
LOSS_WINDOW = 20
# CheckpointManager's checkpoint name: checkpoints are <dir>/ckpt-<step>.
CHECKPOINT_NAME = "ckpt"
# What an interrupted save of ckpt-<step> leaves next to the checkpoints: TensorFlow's temporary
# directory (`MultiDeviceSaver.save`: "<prefix>_temp", "<prefix>_temp_<hex>" in older versions),
# the files its tensor bundle writer had not yet renamed ("<file>.tempstate<random>"), the
# `checkpoint` index file written through `file_io.atomic_write_string_to_file`
# ("checkpoint.tmp<uuid hex>"), and our own operative config's (`files.temporary_name`:
# "operative_config.gin.tmp-<pid>").
_INCOMPLETE_SAVE_DIR = re.compile(rf"{CHECKPOINT_NAME}-\d+_temp(_[0-9a-f]+)?")
_INCOMPLETE_SAVE_FILE = re.compile(
    rf"{CHECKPOINT_NAME}-\d+\.(index|data-\d{{5}}-of-\d{{5}})\.tempstate\d+"
    r"|checkpoint\.tmp[0-9a-f]{32}|operative_config\.gin\.tmp-\d+")


class NonFiniteLoss(RuntimeError):
  """A task's loss, gradients or updated values became NaN or Inf (nothing is saved)."""


def remove_incomplete_saves(directory):
  """Deletes what interrupted saves left in `directory` (not below it); returns the paths.

  Only the names in `_INCOMPLETE_SAVE_DIR` (directories) and `_INCOMPLETE_SAVE_FILE` (files):
  complete checkpoints and anything else stay.
  """
  if not tf.io.gfile.isdir(directory):
    return []
  removed = []
  for entry in sorted(tf.io.gfile.listdir(directory)):
    entry = entry.rstrip("/")
    path = os.path.join(directory, entry)
    is_dir = tf.io.gfile.isdir(path)
    pattern = _INCOMPLETE_SAVE_DIR if is_dir else _INCOMPLETE_SAVE_FILE
    if not pattern.fullmatch(entry):
      continue
    if is_dir:
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
    removed.append(path)
  if removed:
    logging.info("Removed what interrupted saves left in %s: %s.", directory,
                 ", ".join(os.path.basename(p) for p in removed))
  return removed


@gin.configurable
@dataclasses.dataclass
class TaskSettings:
  """How one task is trained; bind per task in its gin scope, e.g.
  `relative_position/TaskSettings.weight = 2`.

  Attributes:
    weight: share of steps (relative to the other tasks' weights); > 0.
    accumulation_steps: the task's steps whose gradients make one update.
    cost_per_step: device-seconds one of its steps costs (compute accounting).
    learning_rate: RMSProp learning rate at step 0 of the task's updates.
    decay_rate, decay_steps: learning rate times decay_rate every decay_steps of the task's
      updates (staircase); decay_rate 1 keeps it constant.
    rho, momentum, epsilon: RMSProp's (epsilon inside the square root, as in TF1's RMSProp).
      Epsilon is tiny so that the update does not depend on the loss's scale (paper section
      4): at the trunk's gradients (|g| ~ 1e-5 to 3e-2 per element at depth 101), 1e-14
      keeps a task's update within 3% when its loss is scaled by 0.01 or 100. Slim's TF1
      recipe (epsilon 1.0, gin/experiments/common/slim_rmsprop.gin) makes the update momentum
      SGD, proportional to the loss scale.
    initial_mean_square: where RMSProp's mean of squared gradients starts. The paper's
      TensorFlow-Slim code trained with TF1's `tf.train.RMSPropOptimizer`, whose mean square
      starts at 1; Keras's `RMSprop` starts it at 0. From 0, with a tiny epsilon, every update
      from the first is a full step of about the learning rate per weight whatever the
      gradient (the first is sqrt(1 / (1 - rho)) = 3.2 times that, and momentum adds the next
      ones up), so the first updates are large and nearly sign(gradient). From 1 the mean
      square decays towards the squared gradients at rate rho, so the step grows over the
      first ~log(g^2) / log(rho) updates (about 130 for |g| ~ 1e-3): TF1's built-in warm-up.
      On the demo (depth 26, rate 3e-4) the start at 0 collapsed block 3's features onto a
      few directions within 25 updates per task (the participation ratio of their channels'
      correlation matrix on the toy detection scenes: 4.7, against 45 at random init; from 1:
      25 after 60 updates). After the demo's 200 updates per task both starts end near 5,
      but only the trunk started at 0 fell behind random init on toy detection (mAP after 400
      fine-tuning steps, seeds 0-1: 0.291 vs 0.450; started at 1, two pretraining runs: 0.448
      and 0.437 vs 0.450), and the linear probe did no worse (top-1 0.383/0.396 and
      0.357/0.340 against 0.342/0.336).
  """
  weight: float = 1.0
  accumulation_steps: int = 1
  cost_per_step: float = 1.0
  learning_rate: float = 1e-5
  decay_rate: float = 1.0
  decay_steps: int = 10000
  rho: float = 0.9
  momentum: float = 0.9
  epsilon: float = 1e-14
  initial_mean_square: float = 1.0

  def check(self, task):
    """Returns self if every setting has the right type and range (ValueError naming it)."""
    # Types too: a value gin evaluates when called (a %MACRO) escapes the checks at parsing.
    validate.check_arguments(TaskSettings, dataclasses.asdict(self), f"{task}/TaskSettings")
    problems = []
    if self.weight < 0:
      problems.append(f"weight {self.weight} < 0")
    if self.accumulation_steps < 1:
      problems.append(f"accumulation_steps {self.accumulation_steps} < 1")
    if self.cost_per_step < 0:
      problems.append(f"cost_per_step {self.cost_per_step} < 0")
    if self.learning_rate <= 0:
      problems.append(f"learning_rate {self.learning_rate} <= 0")
    if self.initial_mean_square < 0:
      problems.append(f"initial_mean_square {self.initial_mean_square} < 0")
    if problems:
      raise ValueError(f"Bad settings for task {task!r} (gin: {task}/TaskSettings.*): " +
                       "; ".join(problems) + ".")
    return self


def make_optimizer(settings, variables, name="rmsprop"):
  """A task's RMSProp, built for `variables`, its mean square at `settings.initial_mean_square`.

  The update is TF1's `tf.train.RMSPropOptimizer`'s (epsilon inside the square root, momentum
  on the scaled gradient) and, with the default initial_mean_square of 1, so is its start.

  Args:
    settings: the task's `TaskSettings`.
    variables: the variables it updates (their slots are created now).
    name: the optimizer's name.

  Returns:
    A built `tf.keras.optimizers.RMSprop`.
  """
  schedule = tf.keras.optimizers.schedules.ExponentialDecay(
      settings.learning_rate, settings.decay_steps, settings.decay_rate, staircase=True)
  optimizer = tf.keras.optimizers.RMSprop(
      learning_rate=schedule, rho=settings.rho, momentum=settings.momentum,
      epsilon=settings.epsilon, name=name)
  optimizer.build(variables)
  if settings.initial_mean_square:
    # Keras keeps the mean squares as "velocity" slots, created as zeros by build().
    velocities = getattr(optimizer, "_velocities", None)
    if velocities is None or len(velocities) != len(variables):
      raise RuntimeError("This Keras RMSprop keeps no per-variable '_velocities'; "
                         "TaskSettings.initial_mean_square cannot be set: bind it to 0.")
    for velocity in velocities:
      velocity.assign(tf.fill(tf.shape(velocity),
                              tf.cast(settings.initial_mean_square, velocity.dtype)))
  return optimizer


def task_settings(task):
  """The `TaskSettings` gin binds in the task's scope (`<task>/TaskSettings.*`)."""
  with gin.config_scope(task):
    return TaskSettings().check(task)


def next_task(counts, weights):
  """Index of the task that runs next: smallest (count + 1) / weight, ties to the first.

  Args:
    counts: steps each task has run.
    weights: each task's weight (tasks of weight 0 never run).

  Returns:
    int.
  """
  best, best_key = None, math.inf
  for i, (count, weight) in enumerate(zip(counts, weights)):
    if weight <= 0:
      continue
    key = (count + 1) / weight
    if key < best_key - 1e-12:
      best, best_key = i, key
  return best


@contextlib.contextmanager
def _quiet_retracing_warning():
  """Hides TF's "frequent retracing" warning while the loop runs.

  Each (task, accumulate-or-apply) pair has its own tf.function, all made by one Python
  function, so TF's detector, which counts traces per Python code object, sees up to eight
  traces and warns; each function is traced once, which is what we want.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  class Filter(std_logging.Filter):

    def filter(self, record):
      return "triggered tf.function retracing" not in record.getMessage()

  tf_logger = tf.get_logger()
  quiet = Filter()
  tf_logger.addFilter(quiet)
  try:
    yield
  finally:
    tf_logger.removeFilter(quiet)


# The signal that asked this process to stop before `train` began (see `honour_stop_signals`).
_EARLY_STOP = {"signal": None}


def _early_stop_handler(signum, frame):
  del frame
  if _EARLY_STOP["signal"] is None:
    logging.warning("Signal %d before training began: stopping after the first step, with a "
                    "checkpoint there.", signum)
  _EARLY_STOP["signal"] = signum


def honour_stop_signals():
  """Records SIGTERM and SIGINT from now on, for `train` to act on when it starts.

  The binary calls it at start-up and `run_training` again once the strategy is built
  (building a MultiWorkerMirroredStrategy installs TensorFlow's own SIGTERM handler, its
  preemption notifier, which would otherwise swallow the signal). A signal that arrives while
  the process waits for its cluster, builds or restores is acted on at the first step: the
  workers agree on it, save a checkpoint and stop.
  """
  for sig in (signal.SIGTERM, signal.SIGINT):
    try:
      signal.signal(sig, _early_stop_handler)
    except ValueError:  # not the main thread: signals cannot be caught here
      pass


class _StopRequest:
  """Turns SIGTERM and SIGINT into a flag the loop checks between steps (set from the start
  when one arrived before, see `honour_stop_signals`)."""

  def __init__(self):
    self.requested = _EARLY_STOP["signal"] is not None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Signal %d: saving a checkpoint at the current step, then stopping.", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def conv_weight_rms(trunk):
  """Mean over the trunk's conv kernels of each kernel's root mean square (a float).

  Written as the summary `trunk/conv_weight_rms`. With batch norm after every conv a kernel's
  scale does not change the trunk's output, but a shrinking one makes each step relatively
  larger: weight decay inside a loss that RMSProp normalizes can shrink it steadily (the demo
  measured 0.091 -> 0.0067 in 3200 steps, and its features lost what pretraining gave them).
  """
  kernels = trunk.conv_kernels()
  if not kernels:
    return 0.0
  return float(tf.reduce_mean(
      tf.stack([tf.sqrt(tf.reduce_mean(tf.square(tf.cast(v, tf.float32)))) for v in kernels])))


@gin.configurable
class MultiTaskTrainer:
  """Builds the model, optimizers, accumulators and checkpoint; `train` runs the loop."""

  def __init__(self,
               model_dir,
               tasks=gin.REQUIRED,
               strategy=None,
               use_lasso=False,
               checkpoint_every_compute=None,
               checkpoint_every_secs=600.0,
               max_checkpoints_to_keep=5,
               summary_every_steps=20,
               log_every_secs=10.0,
               input_fns=None,
               precision="float32",
               jit_compile=False):
    """Creates everything and restores the latest checkpoint of model_dir, if any.

    Args:
      model_dir: checkpoints, summaries and the operative config go here.
      tasks: names of the registered tasks to train, e.g. ["relative_position",
        "colorization"]; the order breaks ties in the schedule and orders the lasso's rows.
      strategy: a `tf.distribute.Strategy`; default `distribute.make_strategy()` (gin).
      use_lasso: give every task a lasso row over block 3's units (paper section 3.2).
      checkpoint_every_compute: device-seconds of compute between checkpoints (e.g. 2.4K GPU
        hours = 8.64e6); None for none.
      checkpoint_every_secs: wall-clock seconds between checkpoints; None for none.
      max_checkpoints_to_keep: older checkpoints are deleted.
      summary_every_steps: TensorBoard cadence. Each task writes its scalars every this many of
        its own steps (its mean loss since its last write, its metrics at that step, its
        learning rate), so every task appears whatever the schedule; steps/s, the compute used
        and the lasso every this many global steps.
      log_every_secs: seconds between progress lines.
      input_fns: optional {task: function(input_context) -> dataset} replacing `task.input_fn`
        (tests feed fixed batches).
      precision: "float32", "mixed_bfloat16" or "mixed_float16" (see the module docstring).
      jit_compile: compile each task's forward and backward pass with XLA.

    Raises:
      ValueError: no tasks, an unknown or repeated task, every weight zero, bad settings.
      KeyError: an unknown task name.
      NonFiniteLoss: the checkpoint to resume from holds a NaN or an Inf.
    """
    if tasks is gin.REQUIRED or not tasks:
      raise ValueError("No tasks to train: bind MultiTaskTrainer.tasks, e.g. "
                       "MultiTaskTrainer.tasks = ['relative_position', 'colorization'].")
    if len(set(tasks)) != len(tasks):
      raise ValueError(f"MultiTaskTrainer.tasks names a task twice: {tasks}.")
    classes = {name: base.get(name) for name in tasks}  # KeyError names the known tasks
    self.names = list(tasks)
    self.settings = {name: task_settings(name) for name in self.names}
    if not any(s.weight > 0 for s in self.settings.values()):
      raise ValueError(f"Every task weight is zero ({self.names}): nothing would train. Bind "
                       "<task>/TaskSettings.weight to a positive value.")
    self.model_dir = model_dir
    self._max_checkpoints_to_keep = max_checkpoints_to_keep
    self.strategy = strategy or distribute.make_strategy()
    self.is_chief, _, self.num_workers = distribute.worker_info(self.strategy)
    self.write_dir = distribute.write_dir(model_dir, self.strategy)
    self.checkpoint_every_compute = checkpoint_every_compute
    self.checkpoint_every_secs = checkpoint_every_secs
    self.summary_every_steps = summary_every_steps
    self.log_every_secs = log_every_secs
    self.precision = precision
    self.jit_compile = jit_compile
    if self.is_chief:
      remove_incomplete_saves(model_dir)
    distribute.remove_stale_worker_dirs(model_dir, self.strategy)
    tf.io.gfile.makedirs(self.write_dir)
    with precision_lib.policy_scope(precision):
      self._build(classes, use_lasso, input_fns)

  def _build(self, classes, use_lasso, input_fns):
    """Builds input, model, optimizers and checkpoint, and restores (under the precision)."""
    model_dir = self.model_dir

    # Input first: a missing dataset fails here, before any variable or step.
    self.decode_stats = {name: sources.DecodeStats(f"{name} images") for name in self.names}
    with self.strategy.scope():
      self.trunk = trunk_lib.Trunk()
      self.tasks = {}
      for name in self.names:
        with gin.config_scope(name):
          self.tasks[name] = classes[name](self.trunk)
        self.tasks[name].decode_stats = self.decode_stats[name]
    self._input_fns = input_fns or {}
    self.datasets = {name: self.strategy.distribute_datasets_from_function(self._input_fn(name))
                     for name in self.names}

    with self.strategy.scope():
      self.lasso = None
      if use_lasso:
        self.lasso = lasso_lib.Lasso(self.names,
                                     len(trunk_lib.unit_endpoint_names(self.trunk.depth)))
        for task in self.tasks.values():
          task.lasso = self.lasso
      self._build_variables()
      self.optimizers, self.accumulators, self.var_lists = {}, {}, {}
      self._overflowed = {}
      for name in self.names:
        self._build_task_state(name)
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
      self.task_steps = {n: tf.Variable(0, dtype=tf.int64, trainable=False, name=f"steps_{n}")
                         for n in self.names}
      self.compute_used = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                      name="compute_used")
    # The inner optimizers (not their loss-scale wrappers): the same checkpoint in every
    # precision.
    self.checkpoint = tf.train.Checkpoint(
        trunk=self.trunk, heads={n: t for n, t in self.tasks.items()},
        optimizers={n: _inner(o) for n, o in self.optimizers.items()},
        accumulators=self.accumulators,
        global_step=self.global_step, task_steps=self.task_steps,
        compute_used=self.compute_used, lasso=self.lasso or tf.Module())
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir,
                                              max_to_keep=self._max_checkpoints_to_keep,
                                              checkpoint_name=CHECKPOINT_NAME)
    self._diverged = False
    self._warned_huge = set()
    # The checkpoint's floating-point values: the trunk's and heads' variables (batch norm
    # statistics too), the lasso, the slots and the accumulators.
    self._checked = _unique_floats(
        v for n in self.names for v in self.tasks[n].variables +
        tuple(_inner(self.optimizers[n]).variables) + tuple(self.accumulators[n]))
    # Every worker restores the chief's latest checkpoint (the others write theirs elsewhere).
    self.restored_from = tf.train.latest_checkpoint(model_dir)
    if self.restored_from:
      self.checkpoint.restore(self.restored_from).assert_existing_objects_matched()
      bad = self._nonfinite_variables()
      if bad:
        raise NonFiniteLoss(
            f"{self.restored_from} holds NaN or Inf (in {_some(bad)}): a diverged run saved it. "
            f"Name an earlier checkpoint in {os.path.join(model_dir, 'checkpoint')} "
            "(model_checkpoint_path) to resume from it, or start a new model directory.")
      logging.info("Resumed from %s at step %d.", self.restored_from, int(self.global_step.numpy()))
    self._iterators = {name: iter(ds) for name, ds in self.datasets.items()}
    self._steps = {}
    self._writer = (tf.summary.create_file_writer(os.path.join(model_dir, "train"))
                    if self.is_chief else tf.summary.create_noop_writer())
    self._wrote_config = False
    self.skipped_updates = {n: 0 for n in self.names}
    # Each task's losses since its last TensorBoard write (written as their mean).
    self._unwritten_losses = {n: [] for n in self.names}
    self._short_names = progress.short_task_names(self.names)

  # --- building ---------------------------------------------------------------------------

  def _input_fn(self, name):
    """The task's input_fn (or the test's), run on the tf.data service when one is given."""
    input_fn = self._input_fns.get(name, self.tasks[name].input_fn)
    return lambda ctx: distribute.distribute_input(input_fn(ctx), job_name=name)

  def _build_variables(self):
    """Creates the trunk's and heads' variables with one inference pass per task."""
    for name in self.names:
      spec = self._input_fn(name)(tf.distribute.InputContext()).element_spec
      dummy = tf.nest.map_structure(
          lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
      self.tasks[name].model_fn(dummy, heads.Mode.PREDICT)

  def _build_task_state(self, name):
    task, settings = self.tasks[name], self.settings[name]
    variables = list(self.trunk.trainable_variables) + task.head_variables
    if self.lasso is not None:
      variables.append(self.lasso.row(name))
    self.var_lists[name] = variables
    # Slots up front: every worker must create the same variables in the same order, and the
    # checkpoint must hold them before the first apply.
    optimizer = make_optimizer(settings, variables, name=f"rmsprop_{name}")
    self.optimizers[name] = precision_lib.wrap_optimizer(optimizer)
    if settings.accumulation_steps > 1:
      self.accumulators[name] = [
          tf.Variable(tf.zeros_like(v), trainable=False, name=f"accum_{name}_{i}",
                      synchronization=tf.VariableSynchronization.ON_READ,
                      aggregation=tf.VariableAggregation.SUM)
          for i, v in enumerate(variables)]
    else:
      self.accumulators[name] = []
    # float16: whether a gradient of the update being accumulated overflowed (per replica; not
    # checkpointed, see the module docstring).
    if settings.accumulation_steps > 1 and self._loss_scaled(name):
      self._overflowed[name] = tf.Variable(
          0.0, trainable=False, name=f"overflowed_{name}",
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM)

  def _step_fn(self, name, apply):
    """The tf.function running one step of task `name`, accumulating or applying (`apply`).

    One function per (task, apply): the choice is made on the host from counters, so each
    function traces once and no `tf.cond` has to hold the optimizer's cross-replica update.
    """
    if (name, apply) in self._steps:
      return self._steps[(name, apply)]
    task, optimizer = self.tasks[name], self.optimizers[name]
    variables, accumulators = self.var_lists[name], self.accumulators[name]
    settings = self.settings[name]
    strategy = self.strategy

    loss_scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

    def loss_and_gradients(features):
      """Forward and backward: (task loss, metrics, float32 gradients of the total loss)."""
      with tf.GradientTape() as tape:
        spec = task.model_fn(features, heads.Mode.TRAIN)
        loss = spec.loss + self.trunk.regularization_loss()
        if self.lasso is not None:
          loss += self.lasso.penalty(name)
        scaled = distribute.scale_loss(loss, strategy)
        if loss_scaled:
          scaled = optimizer.get_scaled_loss(scaled)
      grads = tape.gradient(scaled, variables)
      grads = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype)
               for g, v in zip(grads, variables)]
      if loss_scaled:
        grads = optimizer.get_unscaled_gradients(grads)
      return spec.loss, spec.metrics, grads

    if self.jit_compile:
      loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    overflowed = self._overflowed.get(name)
    # What the step writes: batch norm statistics always; the trainable variables and the
    # slots when it applies (the accumulators are then zeroed), else the accumulators.
    written = _unique_floats(
        task.variables + tuple(_inner(optimizer).variables) if apply else
        task.non_trainable_variables + tuple(accumulators))

    def replica_step(features, apply):
      loss, metrics, grads = loss_and_gradients(features)
      spec = heads.Spec(loss=loss, metrics=metrics)
      # A NaN can hide from the loss (ReLU maps NaN to 0 on CPU) but not from the gradients.
      grads_finite = _all_finite(grads)
      if apply:
        if accumulators:
          k = float(settings.accumulation_steps)
          grads = [(a.read_value() + g) / k for a, g in zip(accumulators, grads)]
        if overflowed is not None:
          # An overflow while accumulating: infinite gradients make the loss-scale optimizer
          # skip this update (on every replica: it sums the gradients first).
          poison = tf.where(overflowed.read_value() > 0, np.inf, 0.0)
          grads = [g + poison for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        for a in accumulators:
          a.assign(tf.zeros_like(a))
        if overflowed is not None:
          overflowed.assign(0.0)
        if self.lasso is not None:
          self.lasso.project(name)
      else:
        if overflowed is not None:
          grads = [tf.where(grads_finite, g, tf.zeros_like(g)) for g in grads]
          overflowed.assign_add(1.0 - tf.cast(grads_finite, tf.float32))
        for a, g in zip(accumulators, grads):
          a.assign_add(g)
      # Read after the writes above (a tf.function orders a resource's reads and writes).
      written_finite = _squares_finite(written)
      flags = tf.cast(tf.logical_not([grads_finite, written_finite]), tf.float32)
      return spec.loss, flags, spec.metrics

    @tf.function
    def step(iterator):
      features = next(iterator)
      loss, flags, metrics = strategy.run(replica_step, args=(features, apply))
      mean = lambda x: strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)
      # Replicas whose gradients, and whose written values, hold a NaN or Inf (0: none).
      flags = strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)
      return mean(loss), flags, {k: mean(v) for k, v in metrics.items()}

    self._steps[(name, apply)] = step
    return step

  def run_step(self, name, apply):
    """Runs one step of task `name` on its next batch, and nothing else.

    `train` calls it once per global step and does the rest around it (schedule, counters,
    divergence checks, summaries, checkpoints); alone it moves no counter and saves nothing, so
    a caller can time the compiled steps without the loop (tools/benchmarks/training.py does).

    Args:
      name: one of the trainer's tasks.
      apply: True: apply the task's gradient (plus its accumulators, divided by its
        accumulation_steps) with its optimizer and zero the accumulators; False: add the
        gradient to its accumulators.

    Returns:
      (loss, flags, metrics): the task's loss (without weight decay and lasso) and its metrics
      ({name: scalar}), each the mean over replicas, and flags, a float32 [2] tensor: how many
      replicas had a NaN or Inf in their gradients, and in the values the step wrote.
    """
    return self._step_fn(name, apply)(self._iterators[name])

  # --- the loop ---------------------------------------------------------------------------

  def _agree(self, *flags):
    """Per-worker booleans -> whether any worker set each (one all-reduce; workers agree)."""
    if self.num_workers <= 1:
      return flags
    values = tf.constant([1.0 if f else 0.0 for f in flags])
    # Every replica contributes its worker's flags; a sum above 0 means some worker set one.
    reduced = self.strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        self.strategy.experimental_distribute_values_from_function(lambda ctx: values),
        axis=None)
    return tuple(bool(v > 0) for v in reduced.numpy())

  def _sync_counters(self, step, counts, compute):
    """Writes the host's counters into the checkpointed variables.

    The loop keeps the step, the per-task steps and the compute used as Python numbers (three
    eager variable writes per step would cost more than the small steps they count) and
    writes them here, before every save and when `train` returns.
    """
    self.global_step.assign(step)
    for name, count in zip(self.names, counts):
      self.task_steps[name].assign(count)
    self.compute_used.assign(compute)

  def save(self):
    """Writes a checkpoint at the global step, if every value it holds is finite.

    Raises:
      NonFiniteLoss: a step diverged, or a value is NaN or Inf (nothing is written).
    """
    step = int(self.global_step.numpy())
    bad = self._nonfinite_variables()
    if self._diverged or bad:
      self._diverged = True
      raise NonFiniteLoss(
          f"Refusing to save step {step}: " +
          (f"{_some(bad)} hold NaN or Inf. " if bad else "a step diverged. ") +
          self._last_clean_checkpoint_text())
    path = self.manager.save(checkpoint_number=step)
    logging.info("Saved %s (step %d, compute %.4g device-s).", path, int(self.global_step.numpy()),
                 float(self.compute_used.numpy()))
    return path

  def train(self, num_steps=None, max_compute=None, save_at_end=True):
    """Runs until num_steps or max_compute is reached (or a stop signal); returns a summary.

    Args:
      num_steps: the global step to stop at (counting every task's steps); None for no limit.
      max_compute: stop once the compute used (device-seconds, see `TaskSettings`) reaches
        this, e.g. the paper's 16.8K GPU hours = 6.048e7; None for no limit.
      save_at_end: write a checkpoint when done (the benchmark times the loop without it).

    Returns:
      dict: {"step", "task_steps", "last_loss": {task: loss}, "stopped_by_signal": bool,
      "checkpoint": latest path, "first_mean_loss" and "last_mean_loss": {task: mean loss of
      its first and last steps in this run, 20 each or half its steps if it ran fewer than 40
      (never overlapping; a task with fewer than 2 steps is left out)}, "loss_window": {task:
      how many steps each of the two means took}}.

    Raises:
      NonFiniteLoss: a task's loss, gradients or update held a NaN or an Inf (nothing is
        saved; the trainer refuses to save from then on).
    """
    if num_steps is None and max_compute is None:
      raise ValueError("Give num_steps or max_compute (gin: run_training.num_steps or "
                       "run_training.max_compute), or training never ends.")
    num_steps = math.inf if num_steps is None else num_steps
    max_compute = math.inf if max_compute is None else max_compute
    weights = [self.settings[n].weight for n in self.names]
    counts = [int(self.task_steps[n].numpy()) for n in self.names]
    step = int(self.global_step.numpy())
    start_step, start_time = step, time.time()
    last_save_time, last_log = time.time(), 0.0
    every = self.checkpoint_every_compute
    compute = float(self.compute_used.numpy())
    next_compute = (math.floor(compute / every) + 1) * every if every else None
    last_loss, recent = {}, {}
    unwritten = self._unwritten_losses
    # Mean loss of each task's first and last `window` steps of this run: is it going down?
    window = LOSS_WINDOW
    first = {n: [] for n in self.names}
    latest = {n: collections.deque(maxlen=window) for n in self.names}
    ran = {n: 0 for n in self.names}  # steps of each task in this run
    stopped = False
    logging.info("Progress lines: global step, steps/s, ETA, compute used (device-s), then "
                 "each task's steps and mean loss since the last line.")
    short = [f"{s} = {n}" for n, s in self._short_names.items() if s != n]
    if short:
      logging.info("Tasks in progress lines: %s.", ", ".join(short))
    with _StopRequest() as stop, self._writer.as_default(), _quiet_retracing_warning():
      while step < num_steps and compute < max_compute:
        index = next_task(counts, weights)
        name = self.names[index]
        counts[index] += 1
        apply = counts[index] % self.settings[name].accumulation_steps == 0
        loss, flags, metrics = self.run_step(name, apply)
        loss_value = float(loss)
        self._screen_step(name, step + 1, counts[index], loss_value, flags)
        step += 1
        compute += self.settings[name].cost_per_step
        last_loss[name] = loss_value
        ran[name] += 1
        if len(first[name]) < window:
          first[name].append(loss_value)
        latest[name].append(loss_value)
        recent.setdefault(name, []).append(loss_value)
        unwritten[name].append(loss_value)
        if counts[index] % self.summary_every_steps == 0:
          self._write_task_summaries(name, unwritten[name], metrics, step)
          unwritten[name] = []
        if step % self.summary_every_steps == 0 or step == num_steps:
          self._write_run_summaries(step, start_step, start_time, compute)
        if not self._wrote_config:
          self._write_operative_config()
        now = time.time()
        due_compute = next_compute is not None and compute >= next_compute
        due_time = (self.checkpoint_every_secs is not None and
                    now - last_save_time >= self.checkpoint_every_secs)
        due_time, stop_now = self._agree(due_time, stop.requested)
        if due_compute or due_time or stop_now:
          self._sync_counters(step, counts, compute)
          self.save()
          last_save_time = time.time()
          if due_compute:
            next_compute = (math.floor(compute / every) + 1) * every
        if now - last_log >= self.log_every_secs or step == num_steps:
          last_log = now
          self._log_progress(step, num_steps, counts, start_step, start_time, recent,
                             compute, max_compute)
          recent = {}
        if stop_now:
          stopped = True
          break
    self._sync_counters(step, counts, compute)
    if (save_at_end and not stopped and
        self.manager.latest_checkpoint != self._checkpoint_path(step)):
      self.save()
    self._writer.flush()
    for stats in self.decode_stats.values():
      if stats.attempted():
        stats.log()
    checkpoint = self.manager.latest_checkpoint
    if not self.is_chief:
      distribute.remove_worker_dir(self.model_dir, self.strategy)
    return {"step": step, "task_steps": dict(zip(self.names, counts)), "last_loss": last_loss,
            **loss_windows(first, latest, ran),
            "stopped_by_signal": stopped, "checkpoint": checkpoint}

  def _screen_step(self, name, step, task_step, loss, flags):
    """Stops the run at a step whose loss, gradients or written values are not all finite.

    Args:
      name: the step's task.
      step, task_step: the global step and the task's step it was.
      loss: its loss (a float).
      flags: `run_step`'s flags: replicas with a NaN or Inf in their gradients, and in the
        values the step wrote.

    Raises:
      NonFiniteLoss: naming the task, the step and the last clean checkpoint; from then on the
        trainer refuses to save.
    """
    bad_grads, bad_values = (int(f) for f in flags.numpy())
    if bad_grads and self._loss_scaled(name) and np.isfinite(loss):
      # float16 overflow: the loss-scale optimizer skips (or, accumulating, will skip) the
      # update and lowers the scale. Expected now and then; counted, not fatal.
      self.skipped_updates[name] += 1
      bad_grads = 0
    # The step's screen failed: which values are NaN or Inf, exactly (none: huge values).
    nonfinite = self._nonfinite_variables() if bad_values else []
    if bad_values and not nonfinite and name not in self._warned_huge:
      self._warned_huge.add(name)
      logging.warning(
          "Task %r at global step %d: its weights, slots or accumulators hold finite values so "
          "large (~1e16 or more) that their squares overflow; it is probably diverging (lower "
          "%s/TaskSettings.learning_rate).", name, step, name)
    if not np.isfinite(loss) or bad_grads or nonfinite:
      self._diverged = True
      raise NonFiniteLoss(self._divergence_message(name, step, task_step, loss, bad_grads,
                                                   nonfinite))

  def _nonfinite_variables(self):
    """Names of the checkpointed variables holding a NaN or an Inf (as a checkpoint reads them).

    Eager: once per checkpoint, a pass over the values costs less than tracing a function.
    """
    return [v.name for v in self._checked if not np.isfinite(v.numpy()).all()]

  def _last_clean_checkpoint_text(self):
    """Which checkpoint a restart resumes from (the chief's latest; each is checked)."""
    latest = tf.train.latest_checkpoint(self.model_dir)
    if latest is None:
      return "There is no checkpoint: a restart starts from the beginning."
    return f"The last checkpoint, {latest}, holds only finite values; a restart resumes from it."

  def _divergence_message(self, name, step, task_step, loss, bad_grads, nonfinite):
    """The one-line error of a step that left a NaN or an Inf (in the variables `nonfinite`)."""
    found = []
    if not np.isfinite(loss):
      found.append(f"its loss is {loss}")
    if bad_grads:
      found.append(f"its gradients hold NaN or Inf (on {bad_grads} of "
                   f"{self.strategy.num_replicas_in_sync} replicas)")
    if nonfinite:
      found.append(f"its step left NaN or Inf in {_some(nonfinite)}")
    return (f"Task {name!r} diverged at global step {step} (its step {task_step}): "
            f"{'; '.join(found)}. Stopped without saving. {self._last_clean_checkpoint_text()} "
            f"Lower {name}/TaskSettings.learning_rate, or check its input.")

  def _loss_scaled(self, name):
    return isinstance(self.optimizers[name], tf.keras.mixed_precision.LossScaleOptimizer)

  def _checkpoint_path(self, step):
    return os.path.join(self.write_dir, f"{CHECKPOINT_NAME}-{step}")

  def _write_task_summaries(self, name, losses, metrics, step):
    """Task `name`'s scalars at global step `step`: mean loss over `losses`, metrics, rate."""
    tf.summary.scalar(f"{name}/loss", float(np.mean(losses)), step=step)
    for key, value in metrics.items():
      tf.summary.scalar(f"{name}/{key}", value, step=step)
    optimizer = _inner(self.optimizers[name])
    # With a schedule, the property is the rate at the optimizer's current update count.
    tf.summary.scalar(f"{name}/learning_rate", optimizer.learning_rate, step=step)
    if self._loss_scaled(name):
      tf.summary.scalar(f"{name}/loss_scale", self.optimizers[name].loss_scale, step=step)
      tf.summary.scalar(f"{name}/skipped_updates", self.skipped_updates[name], step=step)

  def _write_run_summaries(self, step, start_step, start_time, compute):
    """Speed, compute used and the lasso matrix at global step `step`."""
    tf.summary.scalar("steps_per_sec",
                      (step - start_step) / max(time.time() - start_time, 1e-9), step=step)
    tf.summary.scalar("compute_used", compute, step=step)
    tf.summary.scalar("trunk/conv_weight_rms", conv_weight_rms(self.trunk), step=step)
    if self.lasso is not None:
      tf.summary.image("lasso/alpha", self.lasso.image(), step=step)
      tf.summary.text("lasso/alpha_table", self.lasso.markdown_table(), step=step)

  def _write_operative_config(self):
    self._wrote_config = True
    if not self.is_chief:
      return
    config = gin.operative_config_str()
    files.write_atomically(os.path.join(self.model_dir, "operative_config.gin"),
                           lambda f: f.write(config))
    tf.summary.text("operative_config", config, step=int(self.global_step.numpy()))

  def _log_progress(self, step, num_steps, counts, start_step, start_time, recent, compute,
                    max_compute=math.inf):
    """One line: global step, rate, ETA, compute used, then each task (in the order of
    `tasks`) with its steps and its mean loss since the last line ("-": it did not run)."""
    elapsed = max(time.time() - start_time, 1e-9)
    rate = (step - start_step) / elapsed
    remaining = num_steps - step
    if not math.isinf(max_compute) and step > start_step:
      # Steps left until the compute budget, at the compute per step seen so far.
      per_step = compute / max(step, 1)
      remaining = min(remaining, (max_compute - compute) / max(per_step, 1e-12))
    eta = remaining / rate if rate > 0 else math.inf
    logging.info("%s", format_progress(step, num_steps, rate, eta, compute, max_compute, {
        self._short_names[n]: (c, np.mean(recent[n]) if recent.get(n) else None)
        for n, c in zip(self.names, counts)}))


def format_progress(step, num_steps, rate, eta, compute, max_compute, tasks):
  """A progress line of at most 145 characters (160 with the log prefix) for up to four tasks
  (with seven-digit counts, their losses >= 0).

  Args:
    step, num_steps: the global step and the step to stop at (math.inf: none).
    rate: global steps per second.
    eta: seconds left (math.inf: unknown).
    compute, max_compute: device-seconds used and budgeted (math.inf: no budget).
    tasks: {short task name: (its steps, its mean loss since the last line or None)}, in order.

  Returns:
    e.g. "step 1200/100000 3.41/s ETA 08:03:41 1.2e+03 | rp 600 2.08 col 600 -".
  """
  total = "" if math.isinf(num_steps) else f"/{num_steps}"
  budget = "" if math.isinf(max_compute) else f"/{max_compute:.3g}"
  per_task = " ".join(f"{short} {count} {'-' if loss is None else f'{loss:.3g}'}"
                      for short, (count, loss) in tasks.items())
  rate_text = f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}"
  return (f"step {step}{total} {rate_text}/s ETA {progress.format_duration(eta)} "
          f"{compute:.3g}{budget} | {per_task}")


def loss_windows(first, latest, ran):
  """Each task's mean loss over its first and its last steps of a run, never overlapping.

  Args:
    first: {task: losses of its first steps, up to LOSS_WINDOW of them}.
    latest: {task: losses of its last steps, up to LOSS_WINDOW of them}.
    ran: {task: how many steps it ran}.

  Returns:
    {"first_mean_loss": {task: mean}, "last_mean_loss": {task: mean}, "loss_window": {task:
    steps in each mean}}: LOSS_WINDOW steps each, or half the task's steps (rounded down) when
    it ran fewer than twice that; tasks with fewer than 2 steps are left out.
  """
  result = {"first_mean_loss": {}, "last_mean_loss": {}, "loss_window": {}}
  for name, count in ran.items():
    k = min(LOSS_WINDOW, count // 2)
    if k < 1:
      continue
    # With fewer than 2 * LOSS_WINDOW steps, `first` and `latest` hold every loss between them.
    everything = (list(first[name]) + list(latest[name])[len(latest[name]) - (count - len(
        first[name])):] if count < 2 * LOSS_WINDOW else None)
    head = first[name][:k] if everything is None else everything[:k]
    tail = list(latest[name])[-k:] if everything is None else everything[-k:]
    result["first_mean_loss"][name] = float(np.mean(head))
    result["last_mean_loss"][name] = float(np.mean(tail))
    result["loss_window"][name] = k
  return result


def _unique_floats(variables):
  """The floating-point variables among `variables`, each once, in order."""
  seen, unique = set(), []
  for v in variables:
    if v.dtype.is_floating and v.ref() not in seen:
      seen.add(v.ref())
      unique.append(v)
  return unique


def _all_finite(tensors):
  """A scalar bool: no NaN or Inf in any of `tensors`."""
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def _squares_finite(tensors):
  """A scalar bool: the sum of the tensors' squares is finite (one kernel per tensor).

  False whenever one of `tensors` holds a NaN or an Inf, and also for finite values so large
  (~1e16 and more) that their squares overflow: a screen, at about half `_all_finite`'s cost.
  """
  return tf.math.is_finite(tf.add_n([tf.nn.l2_loss(t) for t in tensors]))


def _some(names, shown=3):
  """'a, b, c and 4 more': the first names of a list, for one-line messages."""
  more = f" and {len(names) - shown} more" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def _inner(optimizer):
  """The optimizer itself, or the one inside a `LossScaleOptimizer`."""
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    return optimizer.inner_optimizer
  return optimizer


@gin.configurable
def run_training(model_dir, num_steps=None, max_compute=None, strategy_name="default",
                 warm_start_from=None, seed=None, deterministic=False):
  """Builds a `MultiTaskTrainer` (gin-configured) in model_dir and trains; the `mtssl-train` job.

  Before anything is built or written, a model directory that holds checkpoints is checked
  against the configuration now parsed (`run_config.check_resume`): a change to what its
  checkpoints hold is refused, the directory untouched; allowed changes are logged.

  Args:
    model_dir: the run's directory (resumes from its latest checkpoint).
    num_steps: global steps to stop at.
    max_compute: device-seconds of compute to stop at.
    strategy_name: "default", "mirrored" or "multi_worker" (`distribute.make_strategy`).
    warm_start_from: another run's model directory or checkpoint: a new run's trunk starts
      from its trunk (heads, optimizers and counters fresh). Ignored once model_dir has a
      checkpoint of its own: a restarted run resumes from that.
    seed: None, or an int seeding Python, NumPy and TensorFlow before anything is built: the
      trunk's and heads' initialization and the input pipelines' random draws (crops, patch
      positions, augmentation, shuffling) are drawn from the same seeds in every run. Without
      `deterministic`, parallel input pipelines hand those draws to examples in any order and
      multi-threaded ops sum in any order, so runs differ. A resumed run seeds again, so its
      input pipelines replay the draws of the run's start (the iterators are not checkpointed).
    deterministic: with a seed, TensorFlow's op determinism too
      (`tf.config.experimental.enable_op_determinism`): the same seed, data and machine give
      the same checkpoints. Input pipelines with random ops then run one example at a time, and
      ops without a deterministic kernel (some on GPUs) raise an error. Turned off again when
      training returns (unless it was on before).

  Returns:
    (the `MultiTaskTrainer`, the summary dict of `MultiTaskTrainer.train`).

  Raises:
    run_config.ConfigChanged: the configuration changes what model_dir's checkpoints hold.
  """
  run_config.check_resume(model_dir)
  if deterministic and seed is None:
    raise ValueError("run_training.deterministic needs run_training.seed: bind "
                     "run_training.seed = 0 (or any int).")
  with distribute.seeded(seed, deterministic):
    return _run_training(model_dir, num_steps, max_compute, strategy_name, warm_start_from)


def _run_training(model_dir, num_steps, max_compute, strategy_name, warm_start_from):
  """`run_training` once seeds and determinism are set: the strategy, the trainer, training."""
  strategy = distribute.make_strategy(strategy_name)
  # The cluster is complete: a supervisor stops timing the wait; SIGTERM is ours again.
  supervise.report_joined()
  if signal.getsignal(signal.SIGTERM) is _early_stop_handler:
    honour_stop_signals()
  trainer = MultiTaskTrainer(model_dir, strategy=strategy)
  if warm_start_from:
    if trainer.restored_from:
      logging.info("Not warm starting from %s: %s resumes from its own %s.", warm_start_from,
                   model_dir, trainer.restored_from)
    else:
      report = run_config.warm_start(trainer.trunk, warm_start_from)
      logging.info("Warm start: the trunk (%d variables) from %s; heads, optimizers and "
                   "counters fresh.", len(report.loaded), report.path)
  return trainer, trainer.train(num_steps=num_steps, max_compute=max_compute)
