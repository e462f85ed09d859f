"""mtssl-demo: the project's main job on built-in data, end to end, on one CPU core or more.

Pretrains the small trunk on all four pretext tasks together (gin/experiments/demo.gin: toy
images for relative position, colorization and exemplar, toy videos for motion segmentation)
with the multi-task loop that `mtssl-train` runs, colorization rebalanced with the ab prior of
the same toy images (computed first, into the work directory); then exports the trunk as a
SavedModel with the code of `mtssl-export`, reloads it and checks it against the trained trunk,
and finally runs the evaluations at toy scale (`mtssl-evaluate`'s code) on the pretrained trunk
and on a random one and prints them side by side. It prints what it ran, each task's loss at
the start and at the end, and where everything was written. About 12 minutes on 2 CPU cores
(detection evaluations take most of it)."""

# First: it quiets TensorFlow's start-up, which has to happen before TensorFlow is imported.
from mtssl_tf.bin import common  # pylint: disable=g-bad-import-order

import os
import sys
import tempfile
import time

from absl import flags
from absl import logging
import gin
import tensorflow as tf

from mtssl_tf import color_prior
from mtssl_tf import evaluation
from mtssl_tf import export as export_lib
from mtssl_tf import input_convention
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import toy

FLAGS = flags.FLAGS
# Each of a task's two loss means (start, end of the run) takes at least this many of its steps
# before the demo judges whether the loss went down; fewer are noise.
MIN_LOSS_WINDOW = 5
flags.DEFINE_string("workdir", None, "Where to write the run and the export (default: a new "
                    "temporary directory).")
flags.DEFINE_integer("num_steps", 800, "Global training steps (all tasks together).")
flags.DEFINE_list("evals", None, "Evaluations to run after pretraining (default: every "
                  "registered one); empty to skip.")
common.define_gin_flags()


def main(argv):
  del argv
  common.parse_gin(["experiments/demo.gin"] + FLAGS.gin_file, FLAGS.gin_param)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="mtssl_demo_")
  model_dir = os.path.join(workdir, "run")
  logging.set_verbosity(logging.INFO)
  bind_color_prior(workdir)
  print(f"[demo] pretraining on the four tasks with toy data; run directory {model_dir}")
  start = time.time()
  trainer, summary = training.run_training(model_dir, num_steps=FLAGS.num_steps)
  trunk = trainer.trunk
  print(f"[demo] trained {summary['step']} steps in {time.time() - start:.0f} s: "
        + ", ".join(f"{n} {c}" for n, c in summary["task_steps"].items()))
  print(f"[demo] trunk {trunk.scope}: {trunk_lib.count_parameters(trunk.trainable_variables):,} "
        "trainable parameters")
  went_down = True
  for name in summary["task_steps"]:
    k = summary["loss_window"].get(name, 0)
    if k < MIN_LOSS_WINDOW:
      print(f"[demo] {name:20s} too few steps in this run to tell whether its loss went down "
            f"({2 * MIN_LOSS_WINDOW} of its steps needed)")
      continue
    first, last = summary["first_mean_loss"][name], summary["last_mean_loss"][name]
    went_down &= last < first
    print(f"[demo] {name:20s} loss {first:.4f} (first {k} steps) -> {last:.4f} (last {k})"
          f"{'' if last < first else '   NOT LOWER'}")
  print(f"[demo] checkpoint: {summary['checkpoint']}; TensorBoard: "
        f"tensorboard --logdir={model_dir}")

  export_dir, report = export_lib.export_from_checkpoint(
      summary["checkpoint"], os.path.join(workdir, "export"), overwrite=True)
  print(f"[demo] {report.summary().splitlines()[0]}")
  print(f"[demo] SavedModel: {export_dir}")
  loaded = tf.saved_model.load(export_dir)
  images = tf.constant(toy.make_toy_images(2, (96, 96), seed=1000))
  served = loaded.signatures["serving_default"](images=images)
  live = trunk(input_convention.to_trunk_input(images), training=False)
  scale = float(tf.reduce_max(tf.abs(live["block3"])))
  error = float(tf.reduce_max(tf.abs(served["block3"] - live["block3"]))) / scale
  print(f"[demo] reloaded SavedModel vs trained trunk, block3 max relative error {error:.2e}")
  if error > 1e-4:
    sys.exit("[demo] FAILED: the SavedModel does not reproduce the trained trunk.")
  if not went_down:
    sys.exit("[demo] FAILED: a task's loss did not go down.")
  run_evaluations(summary["checkpoint"], os.path.join(workdir, "results"))
  print("[demo] OK")


def bind_color_prior(workdir):
  """Binds colorization.prior_path to the prior of the demo's images, computed into `workdir`.

  The same count as tools/compute_color_prior.py, on every image of the gin-configured (toy)
  source; a prior already bound (--gin_param) is kept.
  """
  if gin.query_parameter("colorization.prior_path") is not None:
    return
  path = os.path.join(workdir, "color_prior.npy")
  start = time.time()
  _, summary = color_prior.make_prior_file(path, {}, num_images=0)
  with gin.unlock_config():
    gin.bind_parameter("colorization.prior_path", path)
  print(f"[demo] colorization's color prior from {summary['images_used']} "
        f"{summary['source']['source']} images in {time.time() - start:.1f} s: {path}")


# What the table shows of each evaluation's metrics.
_HEADLINE = {"imagenet_linear": ("top1", "top5"), "nyu_depth": ("delta1_pct", "rmse"),
             "voc_detection": ("map50_voc07", "map50_area")}


def run_evaluations(checkpoint, output_dir):
  """Evaluates the pretrained checkpoint and a random trunk; prints a table."""
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  names = evals_base.registered() if FLAGS.evals is None else FLAGS.evals
  rows = []
  for name in names:
    for label, kwargs in (("pretrained", dict(checkpoint=checkpoint)),
                          ("random init", dict(init="random"))):
      start = time.time()
      results = evaluation.evaluate(name, output_dir, **kwargs)
      metrics = results["metrics"]
      shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in _HEADLINE.get(name, ())
                        if isinstance(metrics.get(k), (int, float)))
      rows.append((name, label, shown, time.time() - start))
      print(f"[demo] {name} ({label}): {shown} [{time.time() - start:.0f} s]")
  print(f"[demo] evaluations at toy scale (results JSON in {output_dir}):")
  print(f"[demo] {'evaluation':16s} {'trunk':12s} metrics")
  for name, label, shown, _ in rows:
    print(f"[demo] {name:16s} {label:12s} {shown}")


def run():
  common.run(main, "mtssl-demo")


if __name__ == "__main__":
  run()
