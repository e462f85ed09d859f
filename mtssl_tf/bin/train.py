"""mtssl-train: pretrains the shared trunk on one or more pretext tasks (paper sections 3-4).

  mtssl-train --gin_file=experiments/rp_col_ex_ms.gin --model_dir=/runs/rp_col_ex_ms
  mtssl-train --gin_file=experiments/rp.gin --model_dir=/runs/rp --strategy=mirrored
  mtssl-train --gin_file=experiments/rp_col_ex_ms.gin --dry_run --seconds_per_step=0.5
  TF_CONFIG=... mtssl-train --gin_file=... --model_dir=gs://... --strategy=multi_worker
  mtssl-train --gin_file=experiments/rp.gin --model_dir=/runs/rp --precision=mixed_bfloat16 \
    --jit_compile                                     # GPUs: bf16 compute, XLA-compiled steps
  mtssl-train --list_experiments    # the paper's Tables 1-4: gin files, commands, paper numbers

Everything else is gin (MultiTaskTrainer.*, run_training.*, <task>/TaskSettings.*). Running it
again with the same --model_dir resumes from the latest checkpoint, unless the configuration
changes what the checkpoints hold (tasks, depth, heads, lasso): that is refused, naming each
changed binding, and --warm_start_from=<old run> starts a new --model_dir from the old trunk.
SIGTERM or Ctrl-C, from start-up on, saves a checkpoint at the next step and exits with status
0. A NaN or Inf loss or gradient exits with status 1, naming the task and the step, and leaves
the last checkpoint as it was. A mistake in the configuration or the data ends with one line on
stderr that names the gin binding or file and the fix, and status 1; `--verbose` (or
MTSSL_VERBOSE=1) shows the traceback and TensorFlow's own messages.

With a multi-machine TF_CONFIG, or --max_restarts=N, the command supervises a child process
that trains (mtssl_tf/supervise.py): a cluster that has not formed after --join_timeout seconds
fails naming the missing workers, and a worker that lost a peer (or was killed) is started again,
up to N times, resuming from the latest checkpoint.
"""

# Nothing here imports TensorFlow before the supervisor check below.
import os
import sys

from absl import flags

from mtssl_tf import supervise

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The run's directory: checkpoints, summaries, config.")
flags.DEFINE_integer("num_steps", None, "Global steps to train to (overrides "
                     "run_training.num_steps).")
flags.DEFINE_enum("strategy", None, ["default", "mirrored", "multi_worker"],
                  "Distribution strategy (overrides run_training.strategy_name).")
flags.DEFINE_enum("precision", None, ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Compute precision (overrides MultiTaskTrainer.precision); variables and "
                  "checkpoints stay float32.")
flags.DEFINE_bool("jit_compile", None, "Compile each task's step with XLA (overrides "
                  "MultiTaskTrainer.jit_compile).")
flags.DEFINE_string("tf_data_service", None, "Address (grpc://host:port) of a tf.data service "
                    "dispatcher: input pipelines run on its workers (overrides "
                    "distribute_input.tf_data_service).")
flags.DEFINE_string("warm_start_from", None, "A new run's trunk starts from this run directory's "
                    "(or checkpoint's) trunk; heads, optimizers and counters start fresh "
                    "(overrides run_training.warm_start_from).")
flags.DEFINE_bool("dry_run", False, "Open every dataset the run needs, print the plan (steps, "
                  "epochs, checkpoints, compute, wall time) and exit; nothing is written.")
flags.DEFINE_float("seconds_per_step", None, "With --dry_run: the time of one global step, "
                   "for the wall time.")
flags.DEFINE_integer("max_restarts", 0, "Start the worker again after a failure TensorFlow "
                     "recovers from by a restart (a lost peer, a timed-out collective) or a kill "
                     "by a signal, up to this many times; it resumes from the latest checkpoint.")
flags.DEFINE_float("join_timeout", 600.0, "Seconds a worker of a multi-machine cluster (TF_CONFIG)"
                   " may wait for the others; then it fails naming the missing ones.")
flags.DEFINE_bool("run_eagerly", False, "Run each training step as plain Python, not as a traced "
                  "tf.function: slower steps, but no tracing, and print and pdb work inside a "
                  "step (--jit_compile then has no effect).")
flags.DEFINE_bool("list_experiments", False, "Print every row of the paper's Tables 1-4 with its "
                  "gin file, its training and evaluation commands and the paper's numbers, and "
                  "exit.")
# absl's own flags that print and exit: the full parse does those.
_HELP_FLAGS = ("help", "helpfull", "helpshort", "helpxml", "?", "h", "only_check_args")


def _supervise_before_tensorflow(argv):
  """Runs this command line's supervisor, if it has one, before TensorFlow is imported.

  A supervisor only starts the worker (which parses every flag again and reports any mistake
  in them), so it spares itself TensorFlow's start-up (about 9 CPU-seconds and 600 MB).

  Args:
    argv: sys.argv.

  Returns:
    The supervisor's exit status, or None when this process trains or prints (no supervision,
    --dry_run, --list_experiments, help), or when only the full flag parse can tell.
  """
  try:
    rest = FLAGS(argv, known_only=True)  # this module's flags and absl's logging flags
    if (FLAGS.dry_run or FLAGS.list_experiments or
        not supervise.wants_supervision(FLAGS.max_restarts)):
      return None
  except (flags.Error, ValueError):  # a bad value or TF_CONFIG: the full parse names it
    return None
  if any(a.lstrip("-").split("=")[0] in _HELP_FLAGS for a in rest[1:] if a.startswith("-")):
    return None
  if FLAGS["verbosity"].using_default_value:
    FLAGS.verbosity = 0  # INFO, as under absl's app.run
  supervise.log_to_stderr()
  return supervise.supervise([sys.executable, "-m", "mtssl_tf.bin.train"] + argv[1:],
                             max_restarts=FLAGS.max_restarts, join_timeout=FLAGS.join_timeout)


# `python -m mtssl_tf.bin.train`, or the `mtssl-train` script (which imports this module).
if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "mtssl-train":
  _STATUS = _supervise_before_tensorflow(sys.argv)
  if _STATUS is not None:
    sys.exit(_STATUS)

# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
# First of the rest: it quiets TensorFlow's start-up, which has to happen before TensorFlow is
# imported.
from mtssl_tf.bin import common

from absl import app
from absl import logging
import gin
import tensorflow as tf

from mtssl_tf import dry_run
from mtssl_tf import experiments
from mtssl_tf import training
# pylint: enable=g-import-not-at-top,g-bad-import-order,wrong-import-position

common.define_gin_flags()
# The library settings these flags set, added to an error line that names one.
FLAG_FOR = {"run_training.model_dir": "--model_dir",
            "run_training.warm_start_from": "--warm_start_from",
            "run_training.strategy_name": "--strategy"}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.list_experiments:
    print(experiments.text_listing())
    return 0
  if not FLAGS.model_dir and not FLAGS.dry_run:
    raise app.UsageError("--model_dir is required.")
  if not FLAGS.gin_file:
    raise app.UsageError("--gin_file is required, e.g. --gin_file=experiments/rp.gin "
                         "(files under gin/ are found by their relative path).")
  if not FLAGS.dry_run and supervise.wants_supervision(FLAGS.max_restarts):
    # This process supervises; a child process does the work (see supervise.py).
    return supervise.supervise([sys.executable, "-m", "mtssl_tf.bin.train"] + sys.argv[1:],
                               max_restarts=FLAGS.max_restarts, join_timeout=FLAGS.join_timeout)
  training.honour_stop_signals()
  bindings = list(FLAGS.gin_param or [])
  if FLAGS.precision is not None:
    bindings.append(f"MultiTaskTrainer.precision = {FLAGS.precision!r}")
  if FLAGS.jit_compile is not None:
    bindings.append(f"MultiTaskTrainer.jit_compile = {FLAGS.jit_compile}")
  if FLAGS.tf_data_service is not None:
    bindings.append(f"distribute_input.tf_data_service = {FLAGS.tf_data_service!r}")
  common.parse_gin(FLAGS.gin_file, bindings)
  if FLAGS.dry_run:
    if FLAGS.num_steps is not None:
      with gin.unlock_config():
        gin.bind_parameter("run_training.num_steps", FLAGS.num_steps)
    try:
      plan = dry_run.training_plan(FLAGS.seconds_per_step)
    except ValueError as e:
      print(f"mtssl-train --dry_run: {e}")
      return 1
    print("\n".join(dry_run.format_training_plan(plan)))
    return 0
  overrides = {}
  if FLAGS.num_steps is not None:
    overrides["num_steps"] = FLAGS.num_steps
  if FLAGS.strategy is not None:
    overrides["strategy_name"] = FLAGS.strategy
  if FLAGS.warm_start_from is not None:
    overrides["warm_start_from"] = FLAGS.warm_start_from
  if FLAGS.run_eagerly:
    tf.config.run_functions_eagerly(True)
  try:
    trainer, summary = training.run_training(FLAGS.model_dir, **overrides)
  except supervise.restartable_errors() as e:
    if not supervise.is_supervised():
      raise
    print(f"mtssl-train: {common.one_line(e)} (a restart of the cluster recovers from this)",
          file=sys.stderr)
    supervise.end_worker(supervise.RESTART_EXIT)
  del trainer
  logging.info("Finished at step %d %s; checkpoint %s%s.", summary["step"],
               summary["task_steps"], summary["checkpoint"],
               " (stopped by a signal)" if summary["stopped_by_signal"] else "")
  if supervise.is_supervised():
    supervise.end_worker(0)
  return 0


def run():
  common.run(main, "mtssl-train", flag_for=FLAG_FOR)


if __name__ == "__main__":
  run()
