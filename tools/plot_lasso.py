"""Draws the lasso's alpha matrix the way the paper's Figure 4 does (section 3.2).

  python tools/plot_lasso.py --checkpoint=/runs/rp_col_ex_ms_lasso --output=/tmp/alpha.png
  python tools/plot_lasso.py --checkpoint=/runs/lasso/ckpt-120000 \
      --tasks=relative_position,colorization,exemplar,motion_segmentation \
      --results_json=/runs/lasso/eval_imagenet.json --results_json=/runs/lasso/eval_voc.json \
      --output=/tmp/figure4.png

One row per consumer, one column per residual unit of block 3 (shallowest at the left,
labelled 1..M). Each cell shows |alpha| in grayscale, white for the largest, on a nonlinear
scale: the cell's brightness is (|alpha| / max |alpha|) ** gamma, with gamma 0.5 by default, so
that small nonzero weights stay visible (the caption of Figure 4). The colorbar is labelled with
the true |alpha| values at its ticks.

Inputs (at least one):
  --checkpoint     a training checkpoint prefix (.../ckpt-N), or a model directory, meaning its
                   latest checkpoint. Every variable whose key is
                   `lasso/rows/<task>/.ATTRIBUTES/VARIABLE_VALUE` (the MultiTaskTrainer keeps its
                   `Lasso` under `lasso` in its `tf.train.Checkpoint`) is a self-supervised
                   row; they are drawn on top, in the order of --tasks, else by name.
  --results_json   an evaluation's results file, repeatable, with an entry
                   "lasso_alpha": {"<evaluation name>": [M floats]}. These rows are drawn below
                   the self-supervised ones, after a separating line, in file order.

Output: the PNG `--output`, written through a temporary file and `os.replace`, so that a killed
run never leaves a truncated image (local filesystems only).
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from matplotlib import colors as mpl_colors
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np
import tensorflow as tf

from mtssl_tf import files

FLAGS = flags.FLAGS

# A lasso row's key in an object-based checkpoint; the name is escaped by TensorFlow ("." -> "..",
# "/" -> ".S").
ROW_KEY = re.compile(r"^lasso/rows/(?P<name>[^/]+)/\.ATTRIBUTES/VARIABLE_VALUE$")
LASSO_GIN = "experiments/common/lasso.gin"
RESULTS_KEY = "lasso_alpha"
DEFAULT_TITLE = "Lasso weights |alpha| over block-3 units"
# Figure layout, in inches.
_CELL = 0.3
_LABEL_CHAR = 0.075
_SEPARATOR_COLOR = "tab:red"
_NUM_TICKS = 6


def define_flags(flag_values=flags.FLAGS):
  """Defines the binary's flags; called only when run as a binary, so importing defines none."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("checkpoint", None, "Training checkpoint prefix, or a model directory "
                      "(its latest checkpoint): the self-supervised rows.", **fv)
  flags.DEFINE_multi_string("results_json", [], "Evaluation results JSON with "
                            f'"{RESULTS_KEY}": {{name: [M floats]}}; repeatable: the evaluation '
                            "rows, drawn below the line.", **fv)
  flags.DEFINE_list("tasks", None, "The checkpoint's rows to draw, in this order (default: all, "
                    "by name).", **fv)
  flags.DEFINE_string("output", None, "Where to write the figure, a .png path.", **fv)
  flags.DEFINE_float("gamma", 0.5, "Brightness is (|alpha| / max) ** gamma; below 1 lifts small "
                     "weights into view, 1 is linear.", **fv)
  flags.DEFINE_string("title", None, "Figure title (default: says what was read).", **fv)
  flags.DEFINE_integer("dpi", 150, "Pixels per inch of the PNG.", lower_bound=10, **fv)
  flags.mark_flag_as_required("output", **fv)
  flags.register_validator(
      "gamma", lambda v: v > 0,
      message="--gamma must be positive, e.g. --gamma=0.5 (1 is a linear scale).", **fv)
  flags.register_validator(
      "output", lambda v: v is None or v.lower().endswith(".png"),
      message="--output must be a .png path, e.g. --output=/tmp/lasso.png.", **fv)


def _unescape(name):
  """Undoes TensorFlow's escaping of object names in checkpoint keys ("..": ".", ".S": "/")."""
  return re.sub(r"\.(.)", lambda m: "/" if m.group(1) == "S" else m.group(1), name)


def resolve_checkpoint(path):
  """The checkpoint prefix that `path` (a prefix, or a directory: its latest) stands for.

  Raises:
    FileNotFoundError: for a directory without a checkpoint, or a prefix with no index file.
  """
  if tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise FileNotFoundError(f"{path} is a directory with no checkpoint in it (expected a "
                              "model directory with a 'checkpoint' file, or a prefix such as "
                              f"{os.path.join(path, 'ckpt-1000')}).")
    return prefix
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"No checkpoint at {path} (expected {path}.index; give a checkpoint "
                            "prefix such as /runs/x/ckpt-1000, or the model directory).")
  return path


def _stack(names, rows, source):
  """[N, M] float32 from N rows of one length; ValueError naming `source` otherwise."""
  rows = [np.asarray(r, np.float32) for r in rows]
  lengths = {n: (r.shape[0] if r.ndim == 1 else r.shape) for n, r in zip(names, rows)}
  if any(r.ndim != 1 for r in rows) or len(set(lengths.values())) > 1:
    raise ValueError(f"Lasso rows of {source} have different lengths (expected one alpha per "
                     f"block-3 unit, the same M for all): {lengths}.")
  for name, row in zip(names, rows):
    if not np.all(np.isfinite(row)):
      raise ValueError(f"Lasso row {name!r} of {source} is not finite: {row.tolist()}.")
  if not rows:
    return np.zeros([0, 0], np.float32)
  return np.stack(rows)


def read_checkpoint_rows(path, tasks=None):
  """Reads the lasso rows of a training checkpoint.

  Args:
    path: a checkpoint prefix, or a model directory (its latest checkpoint).
    tasks: names of the rows to return, in this order; None for all of them, by name.

  Returns:
    (names: list of N str, rows: float32 numpy array [N, M]).

  Raises:
    FileNotFoundError: when there is no checkpoint at `path`.
    ValueError: for a checkpoint without lasso rows, a task it has no row for, or rows of
      different lengths.
  """
  prefix = resolve_checkpoint(path)
  keys = {}
  for key, _ in tf.train.list_variables(prefix):
    match = ROW_KEY.match(key)
    if match:
      keys[_unescape(match.group("name"))] = key
  if not keys:
    raise ValueError(f"Checkpoint {prefix} has no lasso rows (expected variables "
                     "'lasso/rows/<task>/.ATTRIBUTES/VARIABLE_VALUE'): this run was not trained "
                     f"with the lasso: use gin {LASSO_GIN} (--gin_file={LASSO_GIN}).")
  if tasks:
    missing = [t for t in tasks if t not in keys]
    if missing:
      raise ValueError(f"Checkpoint {prefix} has no lasso row for {missing}; it has rows for "
                       f"{sorted(keys)} (--tasks).")
    names = list(tasks)
  else:
    names = sorted(keys)
  rows = [tf.train.load_variable(prefix, keys[n]) for n in names]
  return names, _stack(names, rows, f"checkpoint {prefix}")


def read_results_rows(paths):
  """Reads the evaluation rows of results JSON files.

  Args:
    paths: JSON files, each with an entry "lasso_alpha": {"<evaluation name>": [M floats]}.

  Returns:
    (names: list of N str, in file order, then each file's order; rows: float32 [N, M];
     [0, 0] for no paths).

  Raises:
    ValueError: for a file without a well-formed "lasso_alpha" entry, a name given twice, or
      rows of different lengths.
  """
  names, rows, origin = [], [], {}
  for path in paths:
    with tf.io.gfile.GFile(path) as f:
      results = json.load(f)
    alphas = results.get(RESULTS_KEY) if isinstance(results, dict) else None
    if not isinstance(alphas, dict) or not alphas:
      raise ValueError(f"{path} has no lasso rows: expected an entry "
                       f'"{RESULTS_KEY}": {{"<evaluation name>": [M floats]}} (written by an '
                       "evaluation run with the lasso).")
    for name, row in alphas.items():
      if name in origin:
        raise ValueError(f"Lasso row {name!r} is in both {origin[name]} and {path}.")
      if not (isinstance(row, list) and all(isinstance(v, (int, float)) for v in row)):
        raise ValueError(f'{path}: "{RESULTS_KEY}"["{name}"] must be a list of floats, one per '
                         f"block-3 unit; got {row!r:.200}.")
      origin[name] = path
      names.append(name)
      rows.append(row)
  return names, _stack(names, rows, ", ".join(paths))


def scaled(rows, gamma=0.5):
  """Cell brightness in [0, 1]: (|alpha| / max |alpha|) ** gamma, 0 where all are 0.

  Args:
    rows: float [N, M].
    gamma: the power, > 0.

  Returns:
    (float64 [N, M], max |alpha|).
  """
  magnitude = np.abs(np.asarray(rows, np.float64))
  top = float(magnitude.max()) if magnitude.size else 0.0
  if top == 0.0:
    return np.zeros_like(magnitude), 0.0
  return (magnitude / top) ** gamma, top


def colorbar_ticks(top, gamma, num=_NUM_TICKS):
  """Ticks of the colorbar: (positions in [0, 1], true |alpha| labels).

  The ticks are about evenly spaced along the bar (the nonlinear scale), at values rounded to
  two significant digits, each placed where that value's cells are drawn.
  """
  if top == 0.0:
    return [0.0], ["0"]
  values = [0.0]
  for s in np.linspace(0.0, 1.0, num)[1:]:
    value = float(f"{top * s ** (1.0 / gamma):.2g}")
    if value > values[-1] and value <= top:
      values.append(value)
  positions = [(v / top) ** gamma for v in values]
  return positions, [f"{v:.2g}" for v in values]


def figure_size(num_rows, num_units, names):
  """(width, height) of the figure in inches: cells of `_CELL`, room for labels and colorbar."""
  label = _LABEL_CHAR * max([len(n) for n in names] + [4]) + 0.6
  return _CELL * num_units + label + 1.4, _CELL * num_rows + 1.6


def plot(pretext_names, pretext_rows, eval_names, eval_rows, output, gamma=0.5,
         title=DEFAULT_TITLE, dpi=150):
  """Draws the alpha matrix (Figure 4) and writes it to `output` as a PNG, atomically.

  Args:
    pretext_names: N_p self-supervised task names (rows on top).
    pretext_rows: float [N_p, M].
    eval_names: N_e evaluation names (rows below the line); may be empty.
    eval_rows: float [N_e, M] ([0, 0] or [0, M] when empty).
    output: the .png path.
    gamma: brightness is (|alpha| / max |alpha|) ** gamma.
    title: the figure's title.
    dpi: pixels per inch.

  Returns:
    dict: "image", the float [N, M] drawn (rows: pretext then eval; 1 is white); "axes_box",
    (left, top, right, bottom), the matrix's pixel box in the PNG (origin top left); "size",
    (height, width) of the PNG in pixels.

  Raises:
    ValueError: for no rows, names that do not match the rows, rows of different lengths, or
      gamma <= 0.
  """
  if gamma <= 0:
    raise ValueError(f"gamma must be positive, got {gamma}.")
  parts = [(list(n), np.asarray(r, np.float32))
           for n, r in ((pretext_names, pretext_rows), (eval_names, eval_rows)) if len(n)]
  if not parts:
    raise ValueError("Nothing to plot: no lasso rows were given.")
  for names, rows in parts:
    if rows.ndim != 2 or rows.shape[0] != len(names):
      raise ValueError(f"{len(names)} names {names} for rows of shape {rows.shape}; expected "
                       f"[{len(names)}, M].")
  names = [n for p in parts for n in p[0]]
  if len({rows.shape[1] for _, rows in parts}) > 1:
    lengths = {n: p[1].shape[1] for p in parts for n in p[0]}
    raise ValueError("The self-supervised and evaluation lasso rows have different lengths "
                     f"(expected one alpha per block-3 unit, the same M for all): {lengths}.")
  matrix = np.concatenate([rows for _, rows in parts])
  image, top = scaled(matrix, gamma)
  num_rows, num_units = image.shape

  fig = mpl_figure.Figure(figsize=figure_size(num_rows, num_units, names), dpi=dpi,
                          layout="constrained")
  backend_agg.FigureCanvasAgg(fig)  # Draws without pyplot or a display.
  ax = fig.add_subplot()
  shown = ax.imshow(image, cmap="gray", norm=mpl_colors.Normalize(0.0, 1.0),
                    interpolation="nearest", aspect="auto")
  ax.set_xticks(np.arange(num_units), [str(m + 1) for m in range(num_units)], fontsize=7)
  ax.set_yticks(np.arange(num_rows), names, fontsize=9)
  ax.tick_params(length=0)
  ax.set_xlabel("block-3 unit (shallowest at the left)", fontsize=9)
  if len(parts) == 2:
    ax.axhline(len(parts[0][0]) - 0.5, color=_SEPARATOR_COLOR, linewidth=2)
  ax.set_title(title, fontsize=10)
  bar = fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.02)
  positions, labels = colorbar_ticks(top, gamma)
  bar.set_ticks(positions, labels=labels, fontsize=7)
  bar.set_label(f"|alpha| (scale: power {gamma:g})", fontsize=8)

  # Lays the figure out once and keeps it, so that the PNG shows the matrix in the box returned.
  fig.canvas.draw()
  fig.set_layout_engine("none")
  width, height = fig.canvas.get_width_height()
  box = ax.get_window_extent()
  axes_box = (box.x0, height - box.y1, box.x1, height - box.y0)

  files.write_atomically(output, lambda f: fig.savefig(f, format="png", dpi=dpi), "wb")
  return {"image": image, "axes_box": axes_box, "size": (height, width)}


def _log_rows(names, rows):
  for name, row in zip(names, rows):
    largest = np.argsort(-np.abs(row), kind="stable")[:3]
    logging.info("%s: largest |alpha| at units %s (%s); sum %.4f, sum |alpha| %.4f", name,
                 [int(m) + 1 for m in largest], ", ".join(f"{row[m]:.3g}" for m in largest),
                 float(row.sum()), float(np.abs(row).sum()))


def main(argv):
  if len(argv) > 1:
    sys.exit(f"plot_lasso: unexpected arguments {argv[1:]}; everything is a --flag.")
  if not FLAGS.checkpoint and not FLAGS.results_json:
    sys.exit("plot_lasso: give --checkpoint (self-supervised rows) and/or --results_json "
             "(evaluation rows).")
  try:
    pretext_names, pretext_rows = [], np.zeros([0, 0], np.float32)
    if FLAGS.checkpoint:
      pretext_names, pretext_rows = read_checkpoint_rows(FLAGS.checkpoint, FLAGS.tasks)
    eval_names, eval_rows = read_results_rows(FLAGS.results_json)
    title = FLAGS.title
    if title is None:
      source = FLAGS.checkpoint or ", ".join(FLAGS.results_json)
      source = os.path.normpath(source)
      where = os.path.join(os.path.basename(os.path.dirname(source)), os.path.basename(source))
      title = f"{DEFAULT_TITLE}\n{where}"
    _log_rows(pretext_names + eval_names, list(pretext_rows) + list(eval_rows))
    plot(pretext_names, pretext_rows, eval_names, eval_rows, FLAGS.output, gamma=FLAGS.gamma,
         title=title, dpi=FLAGS.dpi)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"plot_lasso: {e}")
  print(f"Lasso matrix ({len(pretext_names)} self-supervised + {len(eval_names)} evaluation "
        f"rows) written to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
