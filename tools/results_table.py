"""Gathers evaluation results JSONs into markdown tables shaped like the paper's Tables 1-4.

  python tools/results_table.py --results=rp=/results/rp --results=col=/results/col \
      --results=random=/results/random --results=imagenet_supervised=/results/imagenet \
      --results=rp_col_ex_ms=/results/rp_col_ex_ms \
      --results=rp_col_ex_ms=/results/rp_col_ex_ms_eval_lasso --output=/tmp/tables.md

Inputs: `--results=NAME=DIR_OR_GLOB`, repeatable, maps an experiment (a gin file's name under
gin/experiments/, e.g. `rp`, `rp_col_harmonized`; or `random`, `imagenet_supervised`) to its results JSONs,
as `mtssl_tf.evaluation` writes them (`<evaluation>-<ckpt-N|random>.json`): a directory (its
*.json) or a glob. A NAME may be given several times (e.g. one directory per evaluation). A
results file with "init": "random" always belongs to the "Random Init" row, whatever its NAME;
one with a non-null "lasso_alpha" was evaluated with the lasso (Table 4's "Eval ... Lasso" rows),
and is kept apart from the same experiment's plain results.

Which checkpoint: `--checkpoint=latest` (default) takes each row's highest pretraining step
(the paper's tables are at 16.8K GPU hours, the last checkpoint of `run_training.max_compute`);
`--checkpoint=N` takes step N. A row's results are all of one step, so an evaluation not yet
run at that step shows "—". Results without a pretraining step (random init, ImageNet labels)
are used whatever the selector.

Cells: "ours (paper)" where the paper's number is known, "ours" otherwise, "—" where we have no
result; all in percent with one decimal, as in the paper (ImageNet top-1 and top-5, VOC07 11-point
mAP at IoU 0.5, NYU % of pixels with max(d/d*, d*/d) < 1.25). Experiments that are in none of the
paper's tables go into a last table of their own.

Output: the markdown `--output`, written through a temporary file and `os.replace` (local
filesystems), and the same tables on stdout. Reads gs:// and other remote paths through
`tf.io.gfile`, importing TensorFlow only then.
"""

import collections
import dataclasses
import glob
import json
import os
import re
import sys
from typing import Dict, Optional

from absl import app
from absl import flags
from absl import logging

from mtssl_tf import experiments
from mtssl_tf import files

FLAGS = flags.FLAGS

# The paper's rows, columns and numbers (mtssl_tf/experiments.py holds them, with each row's
# gin file and commands); named here too for plot_curves.py and the tests.
TOP1, TOP5, RECALL5 = experiments.TOP1, experiments.TOP5, experiments.RECALL5
VOC07, VOC, NYU = experiments.VOC07, experiments.VOC, experiments.NYU
ROW_NAMES, PAPER, TABLES = experiments.ROW_NAMES, experiments.PAPER, experiments.TABLES
OTHER_COLUMNS = (TOP1, TOP5, VOC07, NYU)
MISSING = experiments.MISSING
_CKPT = re.compile(r"ckpt-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Result:
  """One results JSON.

  Attributes:
    name: the experiment ("random" for every random-init result).
    evaluation: "imagenet_linear", "voc_detection" or "nyu_depth".
    eval_lasso: whether the evaluation read a lasso combination of block 3 ("lasso_alpha").
    step: the pretraining step of its checkpoint; None without pretraining (random init,
      ImageNet labels).
    compute: the pretraining compute at that checkpoint, device-seconds; None if unrecorded.
    metrics: the file's "metrics".
    path: the file.
  """
  name: str
  evaluation: str
  eval_lasso: bool
  step: Optional[int]
  compute: Optional[float]
  metrics: dict
  path: str


@dataclasses.dataclass
class Selected:
  """A row's results at its selected step: {evaluation: Result}."""
  name: str
  eval_lasso: bool
  step: Optional[int]
  compute: Optional[float]
  results: Dict[str, Result]


def parse_pair(value):
  """("NAME", "DIR_OR_GLOB") from "NAME=DIR_OR_GLOB" (a pair is returned as it is).

  Raises:
    ValueError: without a name or a path.
  """
  if isinstance(value, (tuple, list)):
    name, path = value
  else:
    name, sep, path = str(value).partition("=")
    if not sep:
      name, path = "", name
  if not name or not path or not re.fullmatch(r"[\w.+-]+", name):
    raise ValueError(f"--results={value!r}: expected NAME=DIR_OR_GLOB, NAME an experiment such "
                     "as rp or rp_col_harmonized, e.g. --results=rp=/results/rp.")
  return name, path


def _remote(path):
  return "://" in path


def _glob(pattern):
  if _remote(pattern):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.io.gfile.isdir(pattern):
      pattern = os.path.join(pattern, "*.json")
    return sorted(tf.io.gfile.glob(pattern))
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*.json")
  return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def _read(path):
  if _remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path) as f:
    return f.read()


def _position(results):
  """(step, compute) of a results dict: its "pretraining", else the step of a ckpt-N path."""
  pretraining = results.get("pretraining") or {}
  step, compute = pretraining.get("global_step"), pretraining.get("compute_used")
  if step is None and results.get("checkpoint"):
    match = _CKPT.search(os.path.basename(str(results["checkpoint"])))
    if match:
      step = int(match.group(1))
  return (None if step is None else int(step)), (None if compute is None else float(compute))


def load_results(paths):
  """Reads the results JSONs of experiments.

  Args:
    paths: iterable of "NAME=DIR_OR_GLOB" strings or (name, dir_or_glob) pairs; a directory
      stands for its *.json.

  Returns:
    List of `Result`, by name, then path. JSON files that are not results (no "evaluation" and
    "metrics") are skipped with a warning.

  Raises:
    ValueError: a malformed pair or JSON file, or two files with the same experiment,
      evaluation, lasso use and step.
    FileNotFoundError: a directory or glob that holds no JSON file.
  """
  found, seen, origin = [], set(), {}
  for value in paths:
    name, pattern = parse_pair(value)
    files = _glob(pattern)
    if not files:
      raise FileNotFoundError(f"--results={name}={pattern}: no results JSON there (expected a "
                              "directory of <evaluation>-ckpt-N.json files, or a glob).")
    for path in files:
      key = path if _remote(path) else os.path.realpath(path)
      if key in seen:
        continue
      seen.add(key)
      try:
        results = json.loads(_read(path))
      except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
      if (not isinstance(results, dict) or not isinstance(results.get("evaluation"), str)
          or not isinstance(results.get("metrics"), dict)):
        logging.warning("Skipping %s: not an evaluation's results (no \"evaluation\" and "
                        "\"metrics\").", path)
        continue
      step, compute = _position(results)
      result = Result(name="random" if results.get("init") == "random" else name,
                      evaluation=results["evaluation"],
                      eval_lasso=results.get("lasso_alpha") is not None, step=step,
                      compute=compute, metrics=results["metrics"], path=path)
      slot = (result.name, result.evaluation, result.eval_lasso, result.step)
      if slot in origin:
        raise ValueError(f"{origin[slot]} and {path} are both {result.evaluation} results of "
                         f"{result.name!r} at step {result.step} (lasso: {result.eval_lasso}); "
                         "give each result once.")
      origin[slot] = path
      found.append(result)
  return sorted(found, key=lambda r: (r.name, r.path))


def select(results, checkpoint="latest"):
  """Picks each row's results at one pretraining step.

  Args:
    results: `Result`s, as `load_results` returns them.
    checkpoint: "latest" for each row's highest step, or a step (int or digits).

  Returns:
    {(name, eval_lasso): `Selected`}. A row with steps, none of them the one asked for, is left
    out (with a warning naming its steps); a row without steps keeps its results.

  Raises:
    ValueError: for a selector that is neither "latest" nor a step.
  """
  if checkpoint != "latest":
    if not re.fullmatch(r"\d+", str(checkpoint)):
      raise ValueError(f"--checkpoint must be 'latest' or a step number, got {checkpoint!r}.")
    checkpoint = int(checkpoint)
  groups = collections.defaultdict(list)
  for result in results:
    groups[(result.name, result.eval_lasso)].append(result)
  rows = {}
  for key, group in sorted(groups.items()):
    steps = sorted({r.step for r in group if r.step is not None})
    step = None
    if steps:
      step = steps[-1] if checkpoint == "latest" else checkpoint
      if step not in steps:
        logging.warning("%s%s has no results at step %d (it has steps %s).", key[0],
                        " (eval lasso)" if key[1] else "", step, steps)
        continue
      unstepped = [r.path for r in group if r.step is None]
      if unstepped:
        logging.warning("Ignoring results of %s without a pretraining step: %s", key[0],
                        unstepped)
    picked = [r for r in group if r.step == step]
    computes = [r.compute for r in picked if r.compute is not None]
    rows[key] = Selected(name=key[0], eval_lasso=key[1], step=step,
                         compute=computes[0] if computes else None,
                         results={r.evaluation: r for r in picked})
  return rows


def value(selected, column):
  """Our number for a column, in percent; None if the row lacks it."""
  if selected is None or column.evaluation not in selected.results:
    return None
  number = selected.results[column.evaluation].metrics.get(column.metric)
  if not isinstance(number, (int, float)) or isinstance(number, bool):
    return None
  return float(number) * column.scale


def cell(ours, paper):
  """ "ours (paper)", "ours", or "—" for ours, each to one decimal."""
  text = MISSING if ours is None else f"{ours:.1f}"
  return text if paper is None else f"{text} ({paper:.1f})"


def gpu_hours(seconds):
  """Device-seconds as the paper writes GPU hours: "16.8K" above a thousand, else 3 digits."""
  hours = seconds / 3600.0
  return f"{hours / 1000.0:.1f}K" if hours >= 1000.0 else f"{hours:.3g}"


def _where(label, selected):
  if selected.step is None:
    return f"{label}: no pre-training step"
  compute = "" if selected.compute is None else f", {gpu_hours(selected.compute)} GPU-h"
  return f"{label}: step {selected.step}{compute}"


def _table(title, columns, labelled):
  """Markdown for `labelled`: [(label, Selected or None, {(evaluation, metric): paper})]."""
  lines = [f"### {title}", "",
           "| Pre-training | " + " | ".join(c.header for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for label, selected, paper in labelled:
    cells = [cell(value(selected, c), paper.get((c.evaluation, c.metric))) for c in columns]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  where = [_where(label, s) for label, s, _ in labelled if s is not None]
  lines += ["", "Checkpoints: " + ("; ".join(where) if where else "no results") + "."]
  return "\n".join(lines)


def _other_label(name, eval_lasso):
  label = ROW_NAMES.get(name, name)
  return f"{label} + Eval Lasso" if eval_lasso else label


def make_tables(rows):
  """The paper's Tables 1-4 (and a table of the rows in none of them) as markdown.

  Args:
    rows: {(name, eval_lasso): `Selected`}, as `select` returns them.

  Returns:
    str, the tables separated by blank lines.
  """
  parts = ["Cells: ours (paper), in percent; " + MISSING + ": no result."]
  placed = set()
  for table in TABLES:
    labelled = []
    for row in table.rows:
      key = (row.experiment, row.eval_lasso)
      placed.add(key)
      # The paper's numbers are of plain evaluations, except Table 4's "No Lasso" row.
      paper = {} if row.eval_lasso else PAPER.get(row.experiment, {})
      labelled.append((row.label, rows.get(key), paper))
    parts.append(_table(table.title, table.columns, labelled))
  others = [(_other_label(*key), rows[key], {}) for key in sorted(rows) if key not in placed]
  if others:
    parts.append(_table("Other experiments (in none of the paper's tables)", OTHER_COLUMNS,
                        others))
  return "\n\n".join(parts) + "\n"


def define_flags(flag_values=flags.FLAGS):
  """Defines the binary's flags; called only when run as a binary, so importing defines none."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_multi_string("results", [], "NAME=DIR_OR_GLOB, repeatable: an experiment's "
                            "results JSONs, e.g. --results=rp=/results/rp.", **fv)
  flags.DEFINE_string("output", None, "Where to write the markdown tables.", **fv)
  flags.DEFINE_string("checkpoint", "latest", "'latest' (each row's highest pretraining step) "
                      "or a step number.", **fv)
  flags.mark_flag_as_required("output", **fv)
  flags.register_validator(
      "checkpoint", lambda v: v == "latest" or bool(re.fullmatch(r"\d+", v)),
      message="--checkpoint must be 'latest' or a step number, e.g. --checkpoint=120000.", **fv)
  flags.register_validator(
      "results", lambda v: bool(v) and all("=" in p for p in v),
      message="Give --results=NAME=DIR_OR_GLOB at least once, e.g. --results=rp=/results/rp.",
      **fv)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"results_table: unexpected arguments {argv[1:]}; everything is a --flag.")
  try:
    rows = select(load_results(FLAGS.results), FLAGS.checkpoint)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"results_table: {e}")
  text = make_tables(rows)
  files.write_atomically(FLAGS.output, lambda f: f.write(text))
  print(text)
  print(f"{len(rows)} rows written to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
