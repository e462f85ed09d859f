"""The paper's Tables 1 and 2 at toy scale: each task alone, all four together, and random init.

  python tools/toy_table.py --workdir=/tmp/toy_table

Each row pretrains the demo's small trunk (gin/experiments/demo.gin: depth 26, toy images and
toy videos, the demo's learning rate and batch sizes) on its tasks for --num_steps global steps,
the same for every row (the paper compares rows at equal pretraining compute), then runs the
three evaluations with the demo's toy protocol (demo.gin: a linear probe on the toy shapes,
fine-tuned detection of toy objects, fine-tuned depth of toy scenes) and --seed. The "Random
Init" row evaluates the untrained trunk with the same protocol. The rows pretrain one after
another; then every row's evaluations run side by side (mtssl_tf/eval_pool.py: one
single-threaded process per CPU core, --eval_processes), longest first.

Outputs, in --workdir: `toy_table.md` (our number beside the paper's, "ours (paper)", in
percent, as tools/results_table.py writes cells; the paper's are on the real datasets, so only
the ordering of rows can be compared), `toy_table.png` (one bar chart per evaluation, the
random-init row as a dashed line), each row's run directory and results JSONs. Rerunning with
the same --workdir resumes: a finished pretraining is not redone, an evaluation whose results
JSON exists for the same --seed is not rerun, and one computed with another gin configuration
(e.g. demo.gin changed since) stops the run with the file's name rather than fill the table.
"""

import collections
import importlib.util
import json
import os
import sys
import time

from absl import app
from absl import flags
import gin

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf import color_prior
from mtssl_tf import eval_pool
from mtssl_tf import evaluation
from mtssl_tf import experiments
from mtssl_tf import files
from mtssl_tf import training
from mtssl_tf.bin import common
# pylint: enable=g-import-not-at-top,wrong-import-position

# tools/ is not a package: its sibling's module is loaded from the file, for its table cells.
_spec = importlib.util.spec_from_file_location(
    "results_table", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_table.py"))
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)

FLAGS = flags.FLAGS

# Rows: experiment name (as the paper's tables and tools/results_table.py name them) -> tasks.
ROWS = collections.OrderedDict([
    ("rp", ["relative_position"]),
    ("col", ["colorization"]),
    ("ex", ["exemplar"]),
    ("ms", ["motion_segmentation"]),
    ("rp_col_ex_ms", ["relative_position", "colorization", "exemplar", "motion_segmentation"]),
    ("random", None),
])
# Columns: each evaluation's headline metric. Table 1 gives top-1 for single tasks; for all four
# tasks the paper gives only recall@5 (Table 2), so that cell has no paper number.
COLUMNS = (experiments.TOP1, experiments.VOC07, experiments.NYU)
TOY_HEADERS = {"imagenet_linear": "toy shapes top-1", "voc_detection": "toy detection mAP",
               "nyu_depth": "toy depth % < 1.25"}


def configure(tasks, gin_files=(), gin_params=()):
  """Parses the demo's configuration with the row's task list (the random row: the demo's),
  then `gin_files` and `gin_params`."""
  gin.clear_config()
  bindings = [] if tasks is None else [f"MultiTaskTrainer.tasks = {tasks!r}"]
  common.parse_gin(["experiments/demo.gin"] + list(gin_files), bindings + list(gin_params))


def pretrain(row, workdir, num_steps):
  """Pretrains (or resumes) the row's run to `num_steps`; returns its last checkpoint."""
  color_prior.bind_prior_of_source(workdir, reuse=True)
  _, summary = training.run_training(os.path.join(workdir, "runs", row), num_steps=num_steps)
  return summary["checkpoint"]


def evaluation_jobs(row, checkpoint, workdir, evals, seed, config):
  """The row's evaluations not yet done, as `eval_pool.Job`s on its checkpoint (None: random
  init), and the row's results directory for `seed`.

  A results JSON already there is kept only if it was computed with `config`, the gin
  configuration the evaluations run with (`gin.config_str()`): one computed with another is
  refused, not silently reused or overwritten.

  Raises:
    ValueError: naming a results file computed with another configuration, and the fix.
  """
  output_dir = os.path.join(workdir, "results", row, f"seed{seed}")
  kwargs = dict(checkpoint=checkpoint) if checkpoint else dict(init="random")
  jobs = []
  for name in evals:
    path = evaluation.results_path(output_dir, name, checkpoint)
    if not os.path.exists(path):
      jobs.append(eval_pool.Job(name, output_dir, seed, kwargs))
      continue
    with open(path) as f:
      previous = json.load(f).get("gin_config")
    if previous != config:
      changed = sorted(set((config or "").splitlines()) ^ set((previous or "").splitlines()))
      raise ValueError(
          f"{path} was computed with another gin configuration than this run's "
          f"(differing lines: {'; '.join(changed[:3]) or 'none recorded'}); pass a new "
          f"--workdir, or delete {os.path.join(workdir, 'results')} to recompute the "
          "evaluations")
  return jobs, output_dir


def evaluation_config(gin_files=(), gin_params=()):
  """Configures this process as the evaluations run (the demo's configuration, `gin_files`
  and `gin_params`; the task list does not matter to an evaluation) and returns it as
  `gin.config_str()`."""
  configure(None, gin_files, gin_params)
  return gin.config_str()


def load(result_dirs):
  """{row: `results_table.Selected`} from {row: its results directory}."""
  found = results_table.load_results([(row, d) for row, d in result_dirs.items()])
  return {name: s for (name, lasso), s in results_table.select(found).items() if not lasso}


def markdown(rows, num_steps, seed):
  """The toy table: one line per row, "ours (paper)" per evaluation, in percent."""
  lines = ["| Pre-training | " + " | ".join(TOY_HEADERS[c.evaluation] for c in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  for row in ROWS:
    if row not in rows:
      continue
    paper = experiments.PAPER.get(row, {})
    cells = [results_table.cell(results_table.value(rows[row], c),
                                paper.get((c.evaluation, c.metric))) for c in COLUMNS]
    lines.append(f"| {experiments.ROW_NAMES[row]} | " + " | ".join(cells) + " |")
  lines += ["", f"Ours: the demo's small trunk pretrained {num_steps} global steps per row on toy "
            f"data, each evaluation at the demo's toy protocol, seed {seed}. In parentheses: "
            "the paper's number on the real dataset (Table 1: ImageNet top-1, VOC07 mAP, NYU), "
            "where it gives one."]
  return "\n".join(lines) + "\n"


def plot(rows, path):
  """One bar chart per evaluation: a bar per pretrained row, random init as a dashed line."""
  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure
  from matplotlib.backends import backend_agg
  fig = mpl_figure.Figure(figsize=(4 * len(COLUMNS), 3.4))
  backend_agg.FigureCanvasAgg(fig)
  bars = [row for row in ROWS if row in rows and row != "random"]
  for i, column in enumerate(COLUMNS):
    ax = fig.add_subplot(1, len(COLUMNS), i + 1)
    values = [results_table.value(rows[row], column) or 0.0 for row in bars]
    ax.bar(range(len(bars)), values, color="tab:blue")
    ax.set_xticks(range(len(bars)), [experiments.ROW_NAMES[row] for row in bars], rotation=30,
                  ha="right", fontsize=8)
    random = results_table.value(rows.get("random"), column)
    if random is not None:
      ax.axhline(random, color="tab:red", linestyle="--", label="Random Init")
      ax.legend(fontsize=8, loc="lower right")
    ax.set_title(TOY_HEADERS[column.evaluation], fontsize=10)
    ax.set_ylabel("%")
  fig.tight_layout()
  files.write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100), "wb")
  return {column.evaluation: [results_table.value(rows[row], column) for row in bars]
          for column in COLUMNS}


def define_flags(flag_values=flags.FLAGS):
  """Defines the binary's flags; called only when run as a binary, so importing defines none."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("workdir", "/tmp/mtssl_toy_table", "Runs, results, the table and the "
                      "PNG go here; rerunning resumes.", **fv)
  flags.DEFINE_integer("num_steps", 800, "Global pretraining steps of every row (the demo's "
                       "--num_steps: the four tasks' row gives each task 200, past the ~130 "
                       "updates of RMSProp's warm-up).", **fv)
  flags.DEFINE_list("rows", list(ROWS), f"Rows to run, of {list(ROWS)}.", **fv)
  flags.DEFINE_list("evals", list(experiments.EVALUATIONS), "Evaluations of each row.", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of every evaluation.", **fv)
  flags.DEFINE_integer("eval_processes", None, "Evaluations at once, each in its own "
                       "single-threaded process (default: one per CPU core); 1 runs them one "
                       "after another in this process.", **fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; everything is a --flag.")
  unknown = sorted(set(FLAGS.rows) - set(ROWS))
  if unknown:
    raise app.UsageError(f"Unknown --rows {unknown}; choose from {list(ROWS)}.")
  result_dirs, jobs, start = {}, [], time.time()
  config = evaluation_config(FLAGS.gin_file, FLAGS.gin_param)
  for row in FLAGS.rows:
    row_start = time.time()
    configure(ROWS[row], FLAGS.gin_file, FLAGS.gin_param)
    checkpoint = None if ROWS[row] is None else pretrain(row, FLAGS.workdir, FLAGS.num_steps)
    row_jobs, result_dirs[row] = evaluation_jobs(row, checkpoint, FLAGS.workdir, FLAGS.evals,
                                                 FLAGS.seed, config)
    jobs += row_jobs
    print(f"[toy_table] {row}: pretrained in {time.time() - row_start:.0f} s; "
          f"{len(row_jobs)} evaluation(s) to run", flush=True)
  jobs = eval_pool.longest_first(jobs)
  processes = FLAGS.eval_processes or eval_pool.default_processes(jobs)
  eval_start = time.time()

  done = []

  def report(i, results, seconds):
    done.append(i)
    shown = ", ".join(f"{c.metric} {results['metrics'][c.metric]:.3f}" for c in COLUMNS
                      if c.evaluation == jobs[i].eval_name and c.metric in results["metrics"])
    row = os.path.basename(os.path.dirname(jobs[i].output_dir))  # results/<row>/seed<seed>
    print(f"[toy_table] {row}: {jobs[i].eval_name} {shown} "
          f"[{seconds:.0f} s; {len(done)}/{len(jobs)} done, "
          f"{time.time() - eval_start:.0f} s so far]", flush=True)

  # Workers parse the demo's configuration with the user's files and bindings; evaluations in
  # this process (one at a time) run with the same.
  evaluation_config(FLAGS.gin_file, FLAGS.gin_param)
  eval_pool.run_jobs(jobs, processes, ["experiments/demo.gin"] + FLAGS.gin_file,
                     FLAGS.gin_param, on_done=report)
  print(f"[toy_table] {len(jobs)} evaluations in {time.time() - eval_start:.0f} s, "
        f"{processes} at a time", flush=True)
  rows = load(result_dirs)
  text = markdown(rows, FLAGS.num_steps, FLAGS.seed)
  files.write_atomically(os.path.join(FLAGS.workdir, "toy_table.md"), lambda f: f.write(text))
  plot(rows, os.path.join(FLAGS.workdir, "toy_table.png"))
  print(text)
  print(f"[toy_table] {len(FLAGS.rows)} rows in {time.time() - start:.0f} s: "
        f"{os.path.join(FLAGS.workdir, 'toy_table.md')}, toy_table.png")


if __name__ == "__main__":
  define_flags()
  common.define_gin_flags()  # after demo.gin, for every row
  common.run(main, "toy_table")
