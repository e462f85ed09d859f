"""mtssl-demo: the project's main job on built-in data, end to end, on one CPU core or more.

Pretrains the small trunk on all four pretext tasks together (gin/experiments/demo.gin: toy
images for relative position, colorization and exemplar, toy videos for motion segmentation)
with the multi-task loop that `mtssl-train` runs, colorization rebalanced with the ab prior of
the same toy images (computed first, into the work directory); then exports the trunk as a
SavedModel with the code of `mtssl-export`, reloads it and checks it against the trained trunk.
It prints each task's loss at the start and at the end of pretraining, and each task's score on
held-out toy data against chance (`pretext_held_out`). Finally it runs the three evaluations at
toy scale (`mtssl-evaluate`'s code; toy data in mtssl_tf/data/toy_shapes.py, toy_depth.py and
toy_detection.py) on the pretrained trunk and on a random one (paper Table 2's "Random Init"
row), with the identical protocol and `--eval_seeds` seeds each, and prints them side by side
with their difference and whether it exceeds the spread between seeds (`compare`)."""

# First: it quiets TensorFlow's start-up, which has to happen before TensorFlow is imported.
from mtssl_tf.bin import common  # pylint: disable=g-bad-import-order

import contextlib
import os
import sys
import tempfile
import time

from absl import flags
from absl import logging
import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import color
from mtssl_tf import color_prior
from mtssl_tf import eval_pool
from mtssl_tf import evaluation
from mtssl_tf import export as export_lib
from mtssl_tf import heads
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
flags.DEFINE_integer("eval_processes", None, "Evaluation runs at once, each in its own "
                     "single-threaded process (default: one per CPU core); 1 runs them one "
                     "after another in this process.")
flags.DEFINE_integer("eval_seeds", 2, "Seeds of each evaluation (0, 1, ...), for each trunk: "
                     "with two or more, the table says whether the difference exceeds the "
                     "spread between seeds.")
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
  held_out = pretext_held_out(trainer)
  print_held_out(held_out)
  outcome = run_evaluations(summary["checkpoint"], os.path.join(workdir, "results"),
                            seeds=list(range(FLAGS.eval_seeds)), names=FLAGS.evals,
                            processes=FLAGS.eval_processes,
                            gin_files=["experiments/demo.gin"] + FLAGS.gin_file,
                            gin_params=FLAGS.gin_param)
  for line in explain(outcome, held_out, summary["task_steps"]):
    print(f"[demo] {line}")
  print("[demo] OK")


def bind_color_prior(workdir):
  """Binds colorization.prior_path to the prior of the demo's toy images, computed into
  `workdir` (a prior already bound with --gin_param is kept)."""
  start = time.time()
  path, summary = color_prior.bind_prior_of_source(workdir)
  if summary is not None:
    print(f"[demo] colorization's color prior from {summary['images_used']} "
          f"{summary['source']['source']} images in {time.time() - start:.1f} s: {path}")


# The held-out toy data: the toy image and video sources drawn with another seed than the
# pretraining's (sources.image_dataset's and motion_dataset's default, 0), and how many batches
# of each task's input pipeline are scored.
HELD_OUT_SEED = 1
HELD_OUT_BATCHES = 8


@contextlib.contextmanager
def _bound(bindings):
  """Gin bindings {name: value} in force inside, the previous ones restored after."""
  saved = {}
  with gin.unlock_config():
    for name, value in bindings.items():
      try:
        saved[name] = gin.query_parameter(name)
      except ValueError:
        saved[name] = None
      gin.bind_parameter(name, value)
  try:
    yield
  finally:
    with gin.unlock_config():
      for name, value in saved.items():
        gin.bind_parameter(name, value)


def _chance(name, batches):
  """(metric, chance level, what chance is) of a task's held-out score, from its batches.

  Args:
    name: the task.
    batches: list of (features, metrics) dicts of numpy values, one per scored batch.
  """
  if name == "relative_position":
    return "accuracy", 1 / 8, "1 of 8 positions"
  if name == "exemplar":
    return "triplet_accuracy", 0.5, "anchor nearer its positive than the negative by chance"
  if name == "colorization":
    # A constant answer at best: the most frequent ab bin of the held-out color cells.
    counts = np.zeros(color.NUM_BINS)
    for features, _ in batches:
      bins = np.argmax(color.soft_encode(features["colorization/ab_target"]), -1)
      has_color = features["colorization/has_color"].astype(bool)
      counts += np.bincount(bins[has_color].ravel(), minlength=color.NUM_BINS)
    return "accuracy", counts.max() / max(counts.sum(), 1), "most frequent ab bin everywhere"
  if name == "motion_segmentation":
    moving = np.mean([m["moving_fraction"] for _, m in batches])
    return "accuracy", max(moving, 1 - moving), "majority class (moving or not) everywhere"
  return None, None, None


def pretext_held_out(trainer, batches=HELD_OUT_BATCHES):
  """Each pretext task's score on held-out toy data against chance, after pretraining.

  The tasks' own input pipelines and metrics (relative position's 8-way accuracy, colorization's
  ab-bin accuracy, exemplar's triplet accuracy, motion segmentation's pixel accuracy) over
  `batches` batches of toy images and clips drawn with `HELD_OUT_SEED`, none of which the
  pretraining saw. Batch norm uses each batch's statistics, as in pretraining: the trunk's
  moving averages blend four tasks' inputs (paper section 3.1 trains each task on its own
  inputs). No weight changes; the trunk's moving statistics do, so run it after saving.

  Returns:
    {task: dict(metric=..., value=..., chance=..., chance_is=...)}.
  """
  out = {}
  with _bound({"image_dataset.seed": HELD_OUT_SEED, "motion_dataset.seed": HELD_OUT_SEED}):
    for name, task in trainer.tasks.items():
      scored = []
      forward = tf.function(lambda f, task=task: task.model_fn(f, heads.Mode.TRAIN).metrics)
      for features in task.input_fn(None).take(batches):
        metrics = forward(features)
        scored.append((tf.nest.map_structure(np.asarray, features),
                       {k: float(v) for k, v in metrics.items()}))
      metric, chance, chance_is = _chance(name, scored)
      if metric is None:
        continue
      out[name] = dict(metric=metric, value=float(np.mean([m[metric] for _, m in scored])),
                       chance=chance, chance_is=chance_is)
  return out


def print_held_out(scores):
  for name, score in scores.items():
    print(f"[demo] {name:20s} held-out {score['metric']} {score['value']:.3f} vs chance "
          f"{score['chance']:.3f} ({score['chance_is']})")


# Each evaluation's headline metric (higher is better for each) and the others it shows.
HEADLINE = {"imagenet_linear": ("top1", "top5"), "nyu_depth": ("delta1_pct", "rmse"),
            "voc_detection": ("map50_voc07", "map50_area")}
TRUNKS = ("pretrained", "random init")


def compare(values):
  """Pretrained against random init for one metric, over seeds.

  Args:
    values: {"pretrained": [one value per seed], "random init": [...]}, the same seeds in the
      same order.

  Returns:
    dict: "pretrained" and "random" (means over seeds), "difference" (pretrained - random),
    "noise" (the larger spread, max - min over seeds, of the two trunks; None with one seed)
    and "verdict": "ahead" (the difference exceeds the noise), "behind" (it is below minus the
    noise), "within noise", or "one seed" (no noise to compare with).
  """
  pretrained, random = np.asarray(values[TRUNKS[0]]), np.asarray(values[TRUNKS[1]])
  difference = float(pretrained.mean() - random.mean())
  noise = None
  if len(pretrained) > 1:
    noise = float(max(np.ptp(pretrained), np.ptp(random)))
  if noise is None:
    verdict = "one seed"
  elif difference > noise:
    verdict = "ahead"
  elif difference < -noise:
    verdict = "behind"
  else:
    verdict = "within noise"
  return dict(pretrained=float(pretrained.mean()), random=float(random.mean()),
              difference=difference, noise=noise, verdict=verdict)


def format_comparison(name, metric, values, result):
  """One table line: evaluation, metric, each trunk's values over seeds, difference, noise."""
  each = lambda vs: "/".join(f"{v:.3f}" for v in vs)
  noise = "n/a" if result["noise"] is None else f"{result['noise']:.3f}"
  return (f"{name:16s} {metric:12s} {each(values[TRUNKS[0]]):>17s} "
          f"{each(values[TRUNKS[1]]):>17s} {result['difference']:+9.3f} {noise:>7s}  "
          f"{result['verdict']}")


def run_evaluations(checkpoint, output_dir, seeds, names=None, processes=None, gin_files=(),
                    gin_params=()):
  """Evaluates the pretrained checkpoint and a random trunk with each seed; prints a table.

  Both trunks get the identical protocol (the evaluation's settings in demo.gin) and the same
  seeds; each seed's results go to `output_dir`/seed<seed>. `names`: the evaluations (None:
  every registered one). The runs go through
  `eval_pool.run_jobs`: `processes` at once (None: one per CPU core), each worker parsing
  `gin_files` and `gin_params`; the longest evaluations start first.

  Returns:
    {evaluation: `compare` result of its headline metric}.
  """
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  names = evals_base.registered() if names is None else names
  if not names:
    return {}
  start_all = time.time()
  jobs = eval_pool.longest_first([
      eval_pool.Job(name, os.path.join(output_dir, f"seed{seed}"), seed, kwargs)
      for name in names for seed in seeds
      for kwargs in (dict(checkpoint=checkpoint), dict(init="random"))])
  trunk_of = lambda job: TRUNKS[0] if "checkpoint" in job.kwargs else TRUNKS[1]
  processes = processes or eval_pool.default_processes(jobs)
  print(f"[demo] {len(jobs)} evaluation runs ({', '.join(names)}; 2 trunks x {len(seeds)} "
        f"seed(s)), {processes} at a time" + (", each in its own single-threaded process"
                                               if processes > 1 else ""))
  done = []

  def report(i, results, seconds):
    job = jobs[i]
    done.append(i)
    metrics = results["metrics"]
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE.get(job.eval_name, ()))
    print(f"[demo] {job.eval_name} ({trunk_of(job)}, seed {job.seed}): {shown} [{seconds:.0f} s; "
          f"{len(done)}/{len(jobs)} done, {time.time() - start_all:.0f} s so far]", flush=True)

  finished = eval_pool.run_jobs(jobs, processes, gin_files, gin_params, on_done=report)
  values = {name: {k: {t: [] for t in TRUNKS} for k in HEADLINE.get(name, ())}
            for name in names}
  for job, (results, _) in zip(jobs, finished):
    for key in values[job.eval_name]:
      values[job.eval_name][key][trunk_of(job)].append(float(results["metrics"][key]))
  print(f"[demo] evaluations at toy scale, {len(seeds)} seed(s) each, in "
        f"{time.time() - start_all:.0f} s (results JSON in {output_dir}):")
  print(f"[demo] {'evaluation':16s} {'metric':12s} {'pretrained':>17s} {'random init':>17s} "
        f"{'pre-rand':>9s} {'noise':>7s}  pretrained is")
  outcome = {}
  for name, metrics in values.items():
    for i, (metric, by_trunk) in enumerate(metrics.items()):
      result = compare(by_trunk)
      if metric == "rmse":  # lower is better: the verdict is the headline's
        result["verdict"] = ""
      if i == 0:
        outcome[name] = result
      print(f"[demo] {format_comparison(name, metric, by_trunk, result)}")
  print("[demo] noise: the larger spread (max - min) of one trunk's results over the seeds; "
        "rmse: lower is better")
  return outcome


# What was measured on the demo's checkpoints (README, "Pretrained against random at toy
# scale"), printed for an evaluation where pretraining does not lead: why toy depth cannot show
# it, and how near its seed noise toy detection's lead is.
MEASURED_CAUSES = {
    "nyu_depth": (
        "toy depth is answered by the scenes' layout, which a random trunk reads as well: each "
        "image row's median depth over the training scenes, with no network, scores delta1 90.5 "
        "on the test scenes, and 100 fine-tuning steps from the demo's checkpoint against random "
        "init, seeds 0-2, gave 87.1 vs 87.2 at learning rate 0.001, 89.2 vs 90.2 at the demo's "
        "0.003 and 89.8 vs 90.5 at 0.01; 300 steps on 256 scenes gave 92.6 vs 93.7 (a "
        "checkpoint pretrained with the mean square of RMSProp starting at 0). Started at 1, the "
        "demo's seeded pretraining gave 89.2 / 89.5 with seeds 0-1 and two unseeded runs 91.0 / "
        "90.2 and 87.6 / 88.3, random init 90.7 / 89.6"),
    "voc_detection": (
        "the demo's 50-step detector is near its seed noise: the demo's seeded pretraining gave "
        "mAP 0.143 and 0.102 with seeds 0-1, and two unseeded pretraining runs 0.100, 0.100, "
        "0.074, 0.090 and 0.083, 0.092, 0.066, 0.061 with seeds 0-3, random init 0.055, 0.078, "
        "0.023, 0.046: ahead on every seed, by less than the seeds' spread on some. Trained "
        "longer (the first unseeded run) the two starts meet: 0.293 vs 0.264 after 200 steps (seeds 0-2), "
        "0.437 vs 0.450 after 400 and 0.619 vs 0.664 after 800 (seeds 0-1). Before each task's "
        "RMSProp started its mean square at 1 (TF1's start; Keras's 0 takes full-size steps "
        "from the first update, which collapsed block 3's features), the pretrained trunk fell "
        "further behind the longer it trained: 0.187 vs 0.264 after 200 steps, 0.291 vs 0.450 "
        "after 400 and 0.446 vs 0.664 after 800"),
}


def explain(outcome, held_out, task_steps):
  """Lines saying, with numbers, why pretraining did not pull ahead on an evaluation.

  Each line gives the live comparison, how far each pretext task got above chance, and what was
  measured about that evaluation at toy scale (`MEASURED_CAUSES`).

  Args:
    outcome: `run_evaluations`'s {evaluation: `compare` result}.
    held_out: `pretext_held_out`'s scores.
    task_steps: {task: pretraining steps}.

  Returns:
    One line per evaluation whose verdict is not "ahead" (none when all are).
  """
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  margins = ", ".join(f"{n} {s['value']:.3f} vs {s['chance']:.3f}" for n, s in held_out.items())
  at_chance = [n for n, s in held_out.items() if s["value"] <= s["chance"] + 0.01]
  steps = ", ".join(str(v) for v in sorted(set(task_steps.values())))
  lines = []
  for name, result in outcome.items():
    if result["verdict"] == "ahead":
      continue
    how = ("fine-tuning the whole trunk from either start" if evals_base.get(name).fine_tunes_trunk
           else "the linear probe on the frozen trunk")
    noise = "one seed, no noise estimate" if result["noise"] is None else (
        f"spread between seeds {result['noise']:.3f}")
    chance = (f"; {', '.join(at_chance)} at chance (within 0.01)" if at_chance else "")
    cause = MEASURED_CAUSES.get(name)
    lines.append(
        f"{name}: pretrained {result['verdict']} (difference {result['difference']:+.3f}, "
        f"{noise}), with {how}. Pretext held-out vs chance after {steps} steps per task: "
        f"{margins}{chance}." + (f" Measured: {cause}." if cause else ""))
  return lines


def run():
  common.run(main, "mtssl-demo")


if __name__ == "__main__":
  run()
