"""mtssl-evaluate: transfers a pretrained trunk to an evaluation (paper section 5).

  mtssl-evaluate --eval=imagenet_linear --checkpoint=/runs/rp --output_dir=/results/rp
  mtssl-evaluate --eval=nyu_depth --checkpoint_dir=/runs/rp --output_dir=/results/rp \
      --stop_after_idle_secs=7200          # every checkpoint as it appears (Figure 3)
  mtssl-evaluate --eval=nyu_depth --init=random --output_dir=/results/random
  mtssl-evaluate --eval=imagenet_linear --checkpoint=/data/resnet_v2_101.ckpt ...  # ImageNet
  mtssl-evaluate --eval=voc_detection --gin_file=evals/voc_detection.gin --dry_run

gin/evals/<eval>.gin holds each evaluation's protocol as the paper ran it (the code's defaults
restated); `--dry_run` opens the data, prints the plan (steps, epochs, schedule, and the wall
time at --seconds_per_step) and exits without training or writing anything. `--seed` fixes
data order, augmentation and initialization.

Writes <output_dir>/<eval>-<checkpoint>.json (metrics, checkpoint, pretraining step and
compute, settings) and TensorBoard summaries under <output_dir>/tensorboard/. Settings are gin:
`<eval>.*` (data, batch, sizes) and `<eval>/EvalSettings.*` (steps, learning rate).
"""

# First: it quiets TensorFlow's start-up, which has to happen before TensorFlow is imported.
from mtssl_tf.bin import common  # pylint: disable=g-bad-import-order

from absl import app
from absl import flags
from absl import logging

from mtssl_tf import dry_run
from mtssl_tf import evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string("eval", None, "imagenet_linear, nyu_depth or voc_detection.")
flags.DEFINE_string("checkpoint", None, "A checkpoint prefix, or a directory (its latest).")
flags.DEFINE_string("checkpoint_dir", None, "Evaluate every checkpoint of this pretraining "
                    "directory not yet evaluated, as they appear.")
flags.DEFINE_enum("init", "checkpoint", list(evaluation.INITS),
                  "'random' evaluates a randomly initialized trunk (the baseline).")
flags.DEFINE_string("output_dir", None, "Where results and summaries go.")
flags.DEFINE_bool("eval_lasso", False, "The head reads a lasso combination of block 3's units.")
flags.DEFINE_integer("seed", None, "Seed of data order, augmentation and initialization "
                     "(overrides evaluate.seed); the same checkpoint and seed give the same "
                     "metrics.")
flags.DEFINE_bool("dry_run", False, "Open the data, print the plan and exit.")
flags.DEFINE_float("seconds_per_step", None, "With --dry_run: the time of one training step, "
                   "for the wall time.")
flags.DEFINE_float("poll_secs", 60.0, "With --checkpoint_dir: seconds between looks.")
flags.DEFINE_float("stop_after_idle_secs", 0.0, "With --checkpoint_dir: stop when no new "
                   "checkpoint came for this long (0: when all present ones are done).")
common.define_gin_flags()
# The library settings these flags set, added to an error line that names one.
FLAG_FOR = {"evaluate.checkpoint": "--checkpoint", "evaluate.init": "--init",
            "evaluate_directory.checkpoint_dir": "--checkpoint_dir"}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.eval or not (FLAGS.output_dir or FLAGS.dry_run):
    raise app.UsageError("--eval and --output_dir are required.")
  if FLAGS.checkpoint and FLAGS.checkpoint_dir:
    raise app.UsageError("Give --checkpoint or --checkpoint_dir, not both.")
  common.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  if FLAGS.dry_run:
    try:
      plan = dry_run.evaluation_plan(FLAGS.eval, FLAGS.seconds_per_step)
    except ValueError as e:
      print(f"mtssl-evaluate --dry_run: {e}")
      return 1
    print("\n".join(dry_run.format_evaluation_plan(plan)))
    return 0
  seed = {} if FLAGS.seed is None else {"seed": FLAGS.seed}
  if FLAGS.checkpoint_dir:
    done = evaluation.evaluate_directory(
        FLAGS.eval, FLAGS.checkpoint_dir, FLAGS.output_dir, poll_secs=FLAGS.poll_secs,
        stop_after_idle_secs=FLAGS.stop_after_idle_secs, use_lasso=FLAGS.eval_lasso, **seed)
    logging.info("Evaluated %d checkpoints.", len(done))
    return 0
  results = evaluation.evaluate(FLAGS.eval, FLAGS.output_dir, checkpoint=FLAGS.checkpoint,
                                init=FLAGS.init, use_lasso=FLAGS.eval_lasso, **seed)
  logging.info("%s: %s", FLAGS.eval, results["metrics"])
  return 0


def run():
  common.run(main, "mtssl-evaluate", flag_for=FLAG_FOR)


if __name__ == "__main__":
  run()
