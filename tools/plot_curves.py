"""Draws the paper's Figure 3: each evaluation's score against pretraining compute.

  python tools/plot_curves.py --results=rp=/results/rp --results=col=/results/col \
      --results=ex=/results/ex --results=ms=/results/ms --results=random=/results/random \
      --output=/tmp/figure3.png

One subplot per evaluation (ImageNet frozen recall@5, PASCAL VOC07 mAP, NYU % of pixels below
1.25), one line per experiment through its checkpoints' results, in percent. The x-axis is the
pretraining compute of each checkpoint ("pretraining"."compute_used" in the results JSON,
device-seconds, shown in GPU-hours = seconds / 3600; the paper's ticks are 2.4K GPU-hours
apart). If any checkpoint's compute is unrecorded, every line is drawn against the pretraining
step instead, and the axis says so. Results without a pretraining step are drawn as horizontal
lines: "Random Init" dashed, others (e.g. ImageNet labels) dotted.

Inputs are read as tools/results_table.py reads them (`--results=NAME=DIR_OR_GLOB`, repeatable;
random-init results always form "Random Init"; results evaluated with the lasso are a line of
their own, "<name> + Eval Lasso").

Output: the PNG `--output`, written through a temporary file and `os.replace` (local
filesystems).
"""

import collections
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
from matplotlib import figure as mpl_figure
from matplotlib import ticker as mpl_ticker
from matplotlib.backends import backend_agg

from mtssl_tf import files

FLAGS = flags.FLAGS

# tools/ is not a package: its sibling's module is loaded from the file, for its reader and names.
_spec = importlib.util.spec_from_file_location(
    "results_table", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_table.py"))
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)

# The subplots, left to right, and what each shows (Figure 3 reports ImageNet as recall@5).
PANELS = (
    (results_table.RECALL5, "ImageNet frozen: recall@5 (%)"),
    (results_table.VOC, "PASCAL VOC07: mAP (%)"),
    (results_table.NYU, "NYU depth: % pixels < 1.25"),
)
SECONDS_PER_HOUR = 3600.0
PAPER_TICK_HOURS = 2400.0  # "∼2.4K GPU hours per tick" (Figure 3's caption).
X_LABELS = {
    "compute": "Pre-training compute (GPU-hours)",
    "step": "Pre-training step (compute not recorded in every result)",
}
DEFAULT_TITLE = "Performance over pre-training time (Figure 3)"
LASSO_SUFFIX = "/eval_lasso"


def x_axis(results):
  """"compute" if every result with a pretraining step records its compute, else "step"."""
  stepped = [r for r in results if r.step is not None]
  return "compute" if all(r.compute is not None for r in stepped) else "step"


def series_name(result):
  """A line's key: the experiment, with "/eval_lasso" for lasso-evaluated results."""
  return result.name + (LASSO_SUFFIX if result.eval_lasso else "")


def label(name):
  """A line's legend label: the paper's row name (tools/results_table.py's ROW_NAMES)."""
  lasso = name.endswith(LASSO_SUFFIX)
  base = name[:-len(LASSO_SUFFIX)] if lasso else name
  base = results_table.ROW_NAMES.get(base, base)
  return f"{base} + Eval Lasso" if lasso else base


def _order(name):
  """Lines in the paper's row order (`ROW_NAMES`), then the others by name."""
  known = list(results_table.ROW_NAMES)
  base = name[:-len(LASSO_SUFFIX)] if name.endswith(LASSO_SUFFIX) else name
  return (known.index(base) if base in known else len(known), name)


def curves(results, axis=None):
  """Each experiment's score at each checkpoint, per evaluation.

  Args:
    results: `Result`s of tools/results_table.py's `load_results`.
    axis: "compute" (x in GPU-hours) or "step"; None: `x_axis(results)`.

  Returns:
    {evaluation: {name: [(x, y), ...]}} for the three evaluations of `PANELS` (a dict, maybe
    empty, for each), y in percent, points sorted by x. A series without a pretraining step
    (random init, ImageNet labels) is a single point (None, y). Results missing the metric are
    left out.

  Raises:
    ValueError: for an unknown axis.
  """
  axis = axis or x_axis(results)
  if axis not in X_LABELS:
    raise ValueError(f"axis must be one of {sorted(X_LABELS)}, got {axis!r}.")
  out = {column.evaluation: collections.defaultdict(list) for column, _ in PANELS}
  for column, _ in PANELS:
    for result in results:
      if result.evaluation != column.evaluation:
        continue
      y = results_table.value(results_table.Selected(
          result.name, result.eval_lasso, result.step, result.compute,
          {result.evaluation: result}), column)
      if y is None:
        continue
      if result.step is None:
        x = None
      elif axis == "compute":
        x = result.compute / SECONDS_PER_HOUR
      else:
        x = float(result.step)
      out[column.evaluation][series_name(result)].append((x, y))
  for evaluation, by_name in out.items():
    for name, points in by_name.items():
      stepped = [p for p in points if p[0] is not None]
      if stepped and len(stepped) < len(points):
        logging.warning("%s, %s: ignoring results without a pretraining step among its "
                        "checkpoints' results.", name, evaluation)
      by_name[name] = sorted(stepped) if stepped else points[:1]
    out[evaluation] = dict(sorted(by_name.items()))
  return out


def plot(lines, output, axis="compute", title=DEFAULT_TITLE, dpi=100):
  """Draws `curves`' result as Figure 3 and writes the PNG.

  Args:
    lines: {evaluation: {name: [(x, y), ...]}}, as `curves` returns it.
    output: the .png path; its directory is created.
    axis: what x is, "compute" (GPU-hours) or "step": the axis label.
    title: the figure's title.
    dpi: pixels per inch.

  Returns:
    {"size": (height, width) in pixels, "drawn": {evaluation: {legend label: [(x, y), ...]}},
    "styles": {legend label: matplotlib linestyle}}: the lines as matplotlib holds them (a
    horizontal line: its two ends, x in axes fraction).

  Raises:
    ValueError: when there is nothing to draw.
  """
  if not any(lines.get(c.evaluation) for c, _ in PANELS):
    raise ValueError("Nothing to plot: no results of "
                     f"{[c.evaluation for c, _ in PANELS]} with their metrics.")
  fig = mpl_figure.Figure(figsize=(5.0 * len(PANELS), 4.6), dpi=dpi, layout="constrained")
  backend_agg.FigureCanvasAgg(fig)  # Draws without pyplot or a display.
  axes = fig.subplots(1, len(PANELS))
  names = sorted({n for by_name in lines.values() for n in by_name}, key=_order)
  stepped = [n for n in names if any(p[0] is not None for by_name in lines.values()
                                     for p in by_name.get(n, []))]
  colors = {n: f"C{i % 10}" for i, n in enumerate(stepped)}
  drawn, handles, styles = {}, {}, {}
  top = 0.0
  for ax, (column, panel_title) in zip(axes, PANELS):
    drawn[column.evaluation] = {}
    by_name = lines.get(column.evaluation, {})
    for name in (n for n in names if n in by_name):
      points = by_name[name]
      if points[0][0] is None:
        random = name == "random"
        line = ax.axhline(points[0][1], color="0.4" if random else "black",
                          linestyle="--" if random else ":", linewidth=1.5)
      else:
        xs, ys = zip(*points)
        top = max(top, max(xs))
        line, = ax.plot(xs, ys, color=colors[name], marker="o", markersize=3.5, linewidth=1.5)
      line.set_label(label(name))
      handles.setdefault(label(name), line)
      styles[label(name)] = line.get_linestyle()
      drawn[column.evaluation][label(name)] = [tuple(map(float, p)) for p in line.get_xydata()]
    if not by_name:
      ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes,
              color="0.5")
    ax.set_title(panel_title, fontsize=10)
    ax.set_xlabel(X_LABELS[axis], fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
  for ax in axes:
    # The paper's ticks, one per checkpoint, where they are neither too few nor too many.
    if axis == "compute" and 2 <= top / PAPER_TICK_HOURS <= 25:
      ax.xaxis.set_major_locator(mpl_ticker.MultipleLocator(PAPER_TICK_HOURS))
      ax.xaxis.set_major_formatter(mpl_ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}K"))
    ax.set_xlim(left=0)
  fig.legend(list(handles.values()), list(handles), loc="outside lower center",
             ncol=min(len(handles), 6), fontsize=9, frameon=False)
  fig.suptitle(title, fontsize=11)

  fig.canvas.draw()
  width, height = fig.canvas.get_width_height()
  files.write_atomically(output, lambda f: fig.savefig(f, format="png", dpi=dpi), "wb")
  return {"size": (height, width), "drawn": drawn, "styles": styles}


def define_flags(flag_values=flags.FLAGS):
  """Defines the binary's flags; called only when run as a binary, so importing defines none."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_multi_string("results", [], "NAME=DIR_OR_GLOB, repeatable: an experiment's "
                            "results JSONs (one per checkpoint), e.g. --results=rp=/results/rp.",
                            **fv)
  flags.DEFINE_string("output", None, "Where to write the figure, a .png path.", **fv)
  flags.DEFINE_string("title", DEFAULT_TITLE, "Figure title.", **fv)
  flags.DEFINE_integer("dpi", 100, "Pixels per inch of the PNG.", lower_bound=10, **fv)
  flags.mark_flag_as_required("output", **fv)
  flags.register_validator(
      "output", lambda v: v is None or v.lower().endswith(".png"),
      message="--output must be a .png path, e.g. --output=/tmp/figure3.png.", **fv)
  flags.register_validator(
      "results", lambda v: bool(v) and all("=" in p for p in v),
      message="Give --results=NAME=DIR_OR_GLOB at least once, e.g. --results=rp=/results/rp.",
      **fv)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"plot_curves: unexpected arguments {argv[1:]}; everything is a --flag.")
  try:
    results = results_table.load_results(FLAGS.results)
    axis = x_axis(results)
    lines = curves(results, axis)
    plot(lines, FLAGS.output, axis=axis, title=FLAGS.title, dpi=FLAGS.dpi)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"plot_curves: {e}")
  counts = {e: len(by_name) for e, by_name in lines.items()}
  print(f"Figure 3 ({', '.join(f'{e}: {n} lines' for e, n in counts.items())}; x: {axis}) "
        f"written to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
