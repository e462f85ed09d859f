"""Whether a model directory may resume under the configuration now parsed; warm starts.

A model directory holds checkpoints and `operative_config.gin`, gin's record of every setting
the run that wrote them used (the trainer writes it at its first step). Resuming it under
another configuration can change what its checkpoints mean without a word: a shorter task list
drops the other tasks' heads, optimizers and step counters from every later checkpoint, so the
old configuration can no longer resume the directory; another trunk depth or head width no
longer fits the saved variables. `check_resume`, called once gin is parsed and before the
trainer is built, compares the two configurations binding by binding and refuses such a
change before anything in the directory is written.

The rule. A setting may differ between the runs of one model directory only if `MAY_CHANGE`
lists it:

- optimization: each task's RMSProp, schedule weight and compute cost (paper sections 4 and
  6.1), weight decay, batch norm decay, the lasso's L1 weight, the losses' constants;
- the run itself: its length, checkpoint cadence, summaries, logging, distribution, precision
  (variables, slots and checkpoints are float32 in every precision) and XLA;
- the data and its preprocessing, and the batch and input sizes no variable's shape depends on.

Every other setting is refused when it differs, in particular the task list and its order
(heads, optimizers, counters, the lasso's rows), `MultiTaskTrainer.use_lasso`, `Trunk.depth`,
head widths, embedding sizes and class counts, `relative_position.patch_size` (the per-patch
layer flattens the patch's block 3 features), `<task>/TaskSettings.accumulation_steps` (whether
the task has accumulators, and how many steps they sum), initializations, and any setting the
list does not name, including ones added later: a needless refusal costs a new model
directory, a silent change costs the run.

How bindings are compared. Both sides are gin text read by gin's own parser
(`gin.config_parser.ConfigParser`): the saved file, and `gin.config_str()` of the current
configuration. Each becomes (scope, configurable, parameter) -> value, configurables completed
through gin's registry, macros (`%NAME`) replaced by their values, references (`@name`,
`@name()`) kept as names. For every binding of the saved file, the current value is the one gin
would pass in that scope: the binding of the innermost scope that has one
(`exemplar/exemplar.head_width`, else `exemplar.head_width`), else the configurable's default.
Values compare as parsed, so `3e-4` equals `0.0003`. Settings the old run never used are not
compared (they did not shape its checkpoints; a new task or the lasso shows up as a change of
`MultiTaskTrainer.tasks` or `use_lasso`), and saved bindings of configurables or parameters the
code no longer has are skipped with a warning.

`warm_start` is the other way to reuse a run: a new run (a new model directory) whose trunk
starts from another run's checkpoint, with fresh heads, optimizers and counters.
"""

import dataclasses
import inspect
import os
import typing

from absl import logging
import gin
from gin import config_parser
import tensorflow as tf

from mtssl_tf import trunk as trunk_lib

# The file in the model directory holding the configuration of the run that wrote it.
OPERATIVE_CONFIG = "operative_config.gin"

# Every parameter of the configurable.
ALL = "*"

# The settings that may change between the runs of one model directory: {configurable: its
# parameters, or ALL}. A configurable matches its registered name or any dotted suffix of it
# (`TaskSettings` matches `mtssl_tf.training.TaskSettings`), in every scope.
MAY_CHANGE = {
    # Optimization. Not TaskSettings.accumulation_steps: the checkpoint holds a task's
    # accumulators only when it is above 1, and they sum that many of its steps.
    # initial_mean_square: a resumed run's mean squares come from its checkpoint.
    "TaskSettings": ("weight", "cost_per_step", "learning_rate", "decay_rate", "decay_steps",
                     "rho", "momentum", "epsilon", "initial_mean_square"),
    "Trunk": ("weight_decay", "batch_norm_decay"),
    "Lasso": ("l1_weight",),
    "colorization.loss": ALL,
    "exemplar.loss": ALL,
    "motion_segmentation.loss": ALL,
    # The run: length, cadence, output, distribution, precision, compilation.
    "run_training": ("num_steps", "max_compute", "strategy_name", "warm_start_from", "seed",
                     "deterministic"),
    "MultiTaskTrainer": ("strategy", "checkpoint_every_compute", "checkpoint_every_secs",
                         "max_checkpoints_to_keep", "summary_every_steps", "log_every_secs",
                         "input_fns", "precision", "jit_compile"),
    "make_strategy": ALL,
    "distribute_input": ALL,
    "set_precision": ALL,
    # Data and preprocessing.
    "image_dataset": ALL,
    "motion_dataset": ALL,
    "tfds_split": ALL,
    "relative_position.preprocess": ALL,
    "colorization.preprocess": ALL,
    "exemplar.preprocess": ALL,
    "exemplar.augment": ALL,
    "motion_segmentation.preprocess": ALL,
    "imagenet_labels.preprocess": ALL,
    # The tasks' batch and input sizes that no head shape depends on (the dense heads are
    # convolutions, exemplar's and block 4's end in a global average pool).
    "relative_position": ("batch_size", "pairs_per_image"),
    "colorization": ("batch_size", "crop_size", "prior_path"),
    "exemplar": ("batch_size", "patch_size"),
    "motion_segmentation": ("batch_size", "crop_size"),
    "imagenet_labels": ("batch_size", "crop_size", "split", "label_smoothing", "num_toy_images",
                        "shuffle_buffer"),
}


class ConfigChanged(ValueError):
  """The configuration changes what a model directory's checkpoints hold.

  Attributes:
    changes: the refused `Change`s.
  """

  def __init__(self, message, changes):
    super().__init__(message)
    self.changes = changes


class Change(typing.NamedTuple):
  """One binding whose value differs: gin's text of the binding and of both values."""
  binding: str
  old: str
  new: str


@dataclasses.dataclass(frozen=True)
class _Reference:
  """`@name` or `@name()` in gin text, compared by name."""
  name: str
  evaluate: bool

  def __repr__(self):
    return f"@{self.name}()" if self.evaluate else f"@{self.name}"


@dataclasses.dataclass(frozen=True)
class _Macro:
  """`%NAME` in gin text, replaced by the macro's value when the text defines it."""
  name: str

  def __repr__(self):
    return f"%{self.name}"


class _Unset:
  """No value: neither bound nor defaulted (e.g. `gin.REQUIRED`)."""

  def __repr__(self):
    return "(not set)"


_UNSET = _Unset()


class _Delegate(config_parser.ParserDelegate):
  """Makes references and macros plain values (gin's own delegate resolves them)."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return _Macro(macro_name)


def _complete_selector(scope, selector, param):
  """The registered name of `selector`, or None when the code has no such parameter."""
  try:
    return gin.config.ParsedBindingKey.parse((scope, selector, param)).complete_selector
  except ValueError:
    return None


def _resolve(value, macros, depth=0):
  """`value` with macros replaced by their values (recursively, also inside containers)."""
  if depth > 20:
    return value
  if isinstance(value, _Macro):
    return _resolve(macros[value.name], macros, depth + 1) if value.name in macros else value
  if isinstance(value, (list, tuple)):
    return type(value)(_resolve(v, macros, depth + 1) for v in value)
  if isinstance(value, dict):
    return {k: _resolve(v, macros, depth + 1) for k, v in value.items()}
  return value


def parse_bindings(text, source):
  """Gin text -> {(scope, complete selector, parameter): (binding text, value)}.

  Args:
    text: gin bindings, e.g. an operative config.
    source: what the text is, for warnings.

  Returns:
    The bindings in the order of the text, macros resolved. Bindings of configurables or
    parameters the code does not have are left out (with a warning).
  """
  statements = [s for s in config_parser.ConfigParser(text, _Delegate())
                if isinstance(s, config_parser.BindingStatement)]
  # A macro is a binding without a parameter: `NAME = value`.
  macros = {"/".join(filter(None, (s.scope, s.selector))): s.value
            for s in statements if not s.arg_name}
  bindings, unknown = {}, []
  for s in statements:
    if not s.arg_name:
      continue
    text_key = f"{s.scope}/{s.selector}.{s.arg_name}" if s.scope else f"{s.selector}.{s.arg_name}"
    selector = _complete_selector(s.scope, s.selector, s.arg_name)
    if selector is None:
      unknown.append(text_key)
      continue
    bindings[(s.scope, selector, s.arg_name)] = (text_key, _resolve(s.value, macros))
  if unknown:
    logging.warning("%s binds settings this code does not have; not compared: %s", source,
                    ", ".join(unknown))
  return bindings


def _default(selector, param):
  """The default value of a configurable's parameter, or `_UNSET`."""
  parameter = inspect.signature(gin.get_configurable(selector)).parameters.get(param)
  if (parameter is None or parameter.default is inspect.Parameter.empty or
      parameter.default is gin.REQUIRED):
    return _UNSET
  return parameter.default


def _current_value(scope, selector, param, current):
  """What gin would pass for `param` of `selector` called in `scope` (see the docstring)."""
  parts = scope.split("/") if scope else []
  value = _UNSET
  for i in range(len(parts) + 1):
    key = ("/".join(parts[:i]), selector, param)
    if key in current:
      value = current[key][1]
  return _default(selector, param) if value is _UNSET else value


def may_change(selector, param):
  """Whether `MAY_CHANGE` lets the parameter of this (complete) selector change on resume."""
  for name, params in MAY_CHANGE.items():
    if selector == name or selector.endswith("." + name):
      if params == ALL or param in params:
        return True
  return False


def compare(saved_text, source="the saved configuration"):
  """Compares saved gin bindings with the configuration gin holds now.

  Args:
    saved_text: the operative config of the run that wrote a model directory.
    source: what `saved_text` is, for warnings.

  Returns:
    (allowed, refused): lists of `Change`, in the order of `saved_text`: the bindings whose
    value differs now, split by `may_change`.
  """
  saved = parse_bindings(saved_text, source)
  current = parse_bindings(gin.config_str(), "the current configuration")
  allowed, refused = [], []
  for (scope, selector, param), (text_key, old) in saved.items():
    new = _current_value(scope, selector, param, current)
    if new == old:
      continue
    change = Change(text_key, repr(old), repr(new))
    (allowed if may_change(selector, param) else refused).append(change)
  return allowed, refused


def _refusal(model_dir, checkpoint, refused):
  lines = [f"The configuration changes what the checkpoints of {model_dir} hold (latest "
           f"{os.path.basename(checkpoint)}); not resuming it:"]
  lines += [f"  {c.binding}: {c.old} in its {OPERATIVE_CONFIG}, now {c.new}" for c in refused]
  lines.append(f"Nothing in {model_dir} was changed. To resume it, bind those settings back "
               "to their old values. To train this configuration, use a new "
               f"run_training.model_dir, with run_training.warm_start_from = '{model_dir}' to "
               "start from this run's trunk.")
  return "\n".join(lines)


def check_resume(model_dir):
  """Refuses to resume `model_dir` under a configuration that changes what it holds.

  Call it after gin is parsed and before the trainer is built; it only reads. A directory
  without a checkpoint has nothing to protect; one without `operative_config.gin` (a run that
  never finished its first step) cannot be checked, and is let through with a warning.

  Args:
    model_dir: the run's directory.

  Returns:
    The allowed changes (also logged): a list of `Change(binding, old, new)`, empty when
    nothing differs or there is nothing to resume.

  Raises:
    ConfigChanged: some binding outside `MAY_CHANGE` differs; the message lists each one
      (binding, old value, new value) and how to proceed.
  """
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if checkpoint is None:
    return []
  path = os.path.join(model_dir, OPERATIVE_CONFIG)
  if not tf.io.gfile.exists(path):
    logging.warning("%s has no %s: cannot check that this configuration fits %s.", model_dir,
                    OPERATIVE_CONFIG, checkpoint)
    return []
  with tf.io.gfile.GFile(path) as f:
    saved_text = f.read()
  allowed, refused = compare(saved_text, path)
  if refused:
    raise ConfigChanged(_refusal(model_dir, checkpoint, refused), refused)
  if allowed:
    logging.info("Resuming %s with changed settings: %s", model_dir,
                 "; ".join(f"{c.binding}: {c.old} -> {c.new}" for c in allowed))
  return allowed


def warm_start(trunk, checkpoint):
  """Starts a new run's trunk from another run's checkpoint (the trunk's variables only).

  Heads, optimizers, accumulators, the lasso and the counters stay as built. Call it on a
  fresh run only (the trainer restored nothing from its own model directory): a restarted run
  resumes from its own checkpoints.

  Args:
    trunk: the new run's `Trunk`.
    checkpoint: a checkpoint prefix or a model directory (its latest checkpoint).

  Returns:
    The `trunk.CheckpointReport` of `trunk.init_from_checkpoint`.

  Raises:
    FileNotFoundError: nothing readable at `checkpoint`.
    ValueError: the checkpoint's trunk has another depth (gin: Trunk.depth).
  """
  depth = trunk_lib.checkpoint_depth(checkpoint)
  if depth != trunk.depth:
    raise ValueError(f"Cannot warm start from {checkpoint}: it holds a depth-{depth} trunk, "
                     f"this run's is depth {trunk.depth}; bind Trunk.depth = {depth}.")
  return trunk_lib.init_from_checkpoint(trunk, checkpoint)
