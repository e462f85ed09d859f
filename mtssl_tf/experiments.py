"""The paper's Tables 1-4 as experiments: each row's gin file, commands and published numbers.

Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017. Table 1 compares
the four single tasks with a random trunk and ImageNet labels (section 6.1), Table 2 their
combinations (section 6.2), Table 3 harmonization and Table 4 the lasso (section 6.3). Every
row is a pretraining run (gin/experiments/<name>.gin, into /runs/<name>) evaluated three times
(section 5: ImageNet with frozen weights, VOC 2007 detection, NYU depth, into /results/<name>),
except "Random Init", which evaluates an untrained trunk. Table 4's "Eval ... Lasso" rows
evaluate the same checkpoints with the lasso over block 3 (`mtssl-evaluate --eval_lasso`).

`TABLES` and `PAPER` are what tools/results_table.py prints ours beside; `experiments()` turns
them into runs, `markdown_table()` into the README's table and `text_listing()` into what
`mtssl-train --list_experiments` prints.
"""

import collections
import dataclasses
from typing import Optional, Tuple

# Display names of the rows, by experiment name (gin/experiments/<name>.gin), as the paper
# writes them. `random` is the untrained trunk, `imagenet_supervised` the supervised ImageNet
# ResNet-101 (gin/experiments/imagenet_supervised.gin, or slim's public checkpoint).
ROW_NAMES = {
    "rp": "Rel. Pos.",
    "col": "Color",
    "ex": "Exemplar",
    "ms": "Motion Seg.",
    "random": "Random Init",
    "imagenet_supervised": "INet Labels",
    "rp_col": "RP+Col",
    "rp_ex": "RP+Ex",
    "rp_ms": "RP+MS",
    "rp_ex_col": "RP+Ex+Col",
    "rp_col_ex_ms": "RP+Col+Ex+MS",
    "rp_harmonized": "RP / H",
    "rp_col_harmonized": "RP+Col / H",
    "rp_col_ex_ms_lasso": "RP+Col+Ex+MS / Lasso",
}

# What a column shows: an evaluation's metric, and the factor that makes it a percentage
# (top-k and mAP are written as fractions, NYU's delta as a percentage already).
Column = collections.namedtuple("Column", ["header", "evaluation", "metric", "scale"])
TOP1 = Column("ImageNet top-1", "imagenet_linear", "top1", 100.0)
TOP5 = Column("ImageNet top-5", "imagenet_linear", "top5", 100.0)
RECALL5 = Column("ImageNet Recall@5", "imagenet_linear", "top5", 100.0)
VOC07 = Column("PASCAL VOC07 mAP", "voc_detection", "map50_voc07", 100.0)
VOC = Column("PASCAL mAP", "voc_detection", "map50_voc07", 100.0)
# Section 6.2's "more stringent overlap criterion: 75% IoU"; the paper does not say which AP it
# computed there, VOC07's 11-point AP is the one its IoU 0.5 numbers use.
VOC07_IOU75 = Column("PASCAL VOC07 mAP@0.75", "voc_detection", "map75_voc07", 100.0)
NYU = Column("NYU % < 1.25", "nyu_depth", "delta1_pct", 1.0)

# The paper's numbers, in percent, by experiment and (evaluation, metric). Table 1 (single
# tasks: ImageNet frozen top-1 and top-5, VOC07 mAP, NYU % < 1.25); Table 2's RP+Col+Ex+MS row
# (recall@5, mAP, NYU), which Table 4 says its "No Lasso" row equals; section 6.1's text for the
# ImageNet-labels Faster-RCNN mAP ("74.2 for ours") and for the random ResNet's top-5 recall
# ("10.5% for ResNet"); section 6.2's text for mAP at 75% IoU ("Our model gets 43.91% mAP ...
# versus the standard ImageNet model's performance of 44.27%").
PAPER = {
    "rp": {("imagenet_linear", "top1"): 36.2, ("imagenet_linear", "top5"): 59.2,
           ("voc_detection", "map50_voc07"): 66.8, ("nyu_depth", "delta1_pct"): 80.6},
    "col": {("imagenet_linear", "top1"): 39.6, ("imagenet_linear", "top5"): 62.5,
            ("nyu_depth", "delta1_pct"): 76.8},
    "ex": {("imagenet_linear", "top1"): 31.5, ("imagenet_linear", "top5"): 53.1,
           ("nyu_depth", "delta1_pct"): 71.3},
    "ms": {("imagenet_linear", "top1"): 27.6, ("imagenet_linear", "top5"): 48.3,
           ("nyu_depth", "delta1_pct"): 74.2},
    "rp_col_ex_ms": {("imagenet_linear", "top5"): 69.3, ("voc_detection", "map50_voc07"): 70.5,
                     ("voc_detection", "map75_voc07"): 43.91,
                     ("nyu_depth", "delta1_pct"): 79.3},
    "imagenet_supervised": {("voc_detection", "map50_voc07"): 74.2,
                            ("voc_detection", "map75_voc07"): 44.27},
    "random": {("imagenet_linear", "top5"): 10.5},
}

# A table row: the experiment, whether its evaluations used the lasso, and its label there.
TableRow = collections.namedtuple("TableRow", ["experiment", "eval_lasso", "label"])
Table = collections.namedtuple("Table", ["title", "columns", "rows"])


def _row(experiment, eval_lasso=False, label=None):
  return TableRow(experiment, eval_lasso, label or ROW_NAMES[experiment])


# The paper's tables: captions shortened, rows in the paper's order.
TABLES = (
    Table("Table 1. Individual self-supervised tasks (ImageNet: top-1 and top-5 with frozen "
          "features; PASCAL VOC 2007 mAP and NYU depth with fine-tuning)",
          (TOP1, TOP5, VOC07, NYU),
          tuple(_row(e) for e in ("rp", "col", "ex", "ms", "random", "imagenet_supervised"))),
    Table("Table 2. Combinations of self-supervised tasks (ImageNet: Recall@5; PASCAL: mAP; "
          "NYU: % pixels below 1.25)",
          (RECALL5, VOC, NYU),
          (_row("rp", label="RP"),) + tuple(_row(e) for e in (
              "rp_col", "rp_ex", "rp_ms", "rp_ex_col", "rp_col_ex_ms", "imagenet_supervised"))),
    Table("Table 3. With and without harmonization (H: relative position on grayscale inputs)",
          (RECALL5, VOC, NYU),
          (_row("rp", label="RP"), _row("rp_harmonized"), _row("rp_col"),
           _row("rp_col_harmonized"))),
    Table("Table 4. With and without the lasso, all four tasks (\"No Lasso\" is Table 2's "
          "RP+Col+Ex+MS)",
          (RECALL5, VOC, NYU),
          (_row("rp_col_ex_ms", False, "No Lasso"),
           _row("rp_col_ex_ms", True, "Eval Only Lasso"),
           _row("rp_col_ex_ms_lasso", False, "Pre-train Only Lasso"),
           _row("rp_col_ex_ms_lasso", True, "Pre-train & Eval Lasso"))),
)

# Section 5's evaluations, each with its protocol in gin/evals/<evaluation>.gin.
EVALUATIONS = ("imagenet_linear", "voc_detection", "nyu_depth")
# The paper's numbers as `markdown_table` and `paper_numbers` show them: Table 1's top-1,
# recall@5 (top-5) as everywhere else, then detection and depth.
NUMBER_COLUMNS = (TOP1, RECALL5, VOC07, VOC07_IOU75, NYU)
# Section 5: "For our ImageNet pre-trained ResNet-101 model, we ... transfer block 4 into the
# proposal categorization head"; self-supervised trunks have no block 4 and start it random.
BLOCK4_FROM_RUN = ("imagenet_supervised",)
RESULTS_TABLES = "/results/tables.md"
MISSING = "\u2014"  # An em dash, as in the paper.


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One pretraining run and one way of evaluating it: one or more rows of the paper's tables.

  Attributes:
    name: the experiment: gin/experiments/<name>.gin, the run's /runs/<name>, its results'
      /results/<name>, and the NAME tools/results_table.py reads them under ("random" for the
      untrained trunk, which has no gin file).
    eval_lasso: whether the evaluations read a lasso combination of block 3 (Table 4).
    rows: ((table number, row label), ...), the paper's rows this gives, in the paper's order.
  """
  name: str
  eval_lasso: bool
  rows: Tuple[Tuple[int, str], ...]

  @property
  def gin_file(self) -> Optional[str]:
    """The experiment's gin file, relative to gin/ (as --gin_file takes it); None untrained."""
    return None if self.name == "random" else f"experiments/{self.name}.gin"

  @property
  def model_dir(self) -> Optional[str]:
    return None if self.gin_file is None else f"/runs/{self.name}"

  @property
  def output_dir(self) -> str:
    return f"/results/{self.name}"

  @property
  def paper_rows(self) -> str:
    """E.g. "Table 1 'Rel. Pos.', Table 2 'RP', Table 3 'RP'"."""
    return ", ".join(f"Table {number} '{label}'" for number, label in self.rows)

  @property
  def paper(self):
    """{(evaluation, metric): the paper's number in percent}; the lasso rows have none."""
    return {} if self.eval_lasso else PAPER.get(self.name, {})

  def paper_numbers(self) -> Optional[str]:
    """The paper's numbers as text, e.g. "ImageNet top-1 36.2, ..."; None if none is recorded."""
    paper = self.paper
    numbers = [f"{c.header} {paper[(c.evaluation, c.metric)]:g}" for c in NUMBER_COLUMNS
               if (c.evaluation, c.metric) in paper]
    return ", ".join(numbers) or None

  def train_command(self) -> Optional[str]:
    """The pretraining command (on one machine's GPUs); None for the untrained trunk."""
    if self.gin_file is None:
      return None
    return (f"mtssl-train --gin_file={self.gin_file} --model_dir={self.model_dir} "
            "--strategy=mirrored")

  def evaluate_commands(self) -> Tuple[str, ...]:
    """The three evaluations of the run's latest checkpoint (or of a random trunk)."""
    commands = []
    for evaluation in EVALUATIONS:
      source = ("--init=random" if self.model_dir is None
                else f"--checkpoint={self.model_dir}")
      command = (f"mtssl-evaluate --eval={evaluation} --gin_file=evals/{evaluation}.gin "
                 f"{source} --output_dir={self.output_dir}")
      if evaluation == "voc_detection" and self.name in BLOCK4_FROM_RUN:
        command += f" --gin_param=\"voc_detection.block4_checkpoint='{self.model_dir}'\""
      if self.eval_lasso:
        command += " --eval_lasso"
      commands.append(command)
    return tuple(commands)

  def commands(self) -> Tuple[str, ...]:
    train = self.train_command()
    return ((train,) if train else ()) + self.evaluate_commands()


def experiments():
  """The `Experiment`s behind the paper's Tables 1-4, in the order their first row appears.

  Returns:
    Tuple of `Experiment`, one per (experiment, eval_lasso) of `TABLES`.
  """
  rows = {}
  for number, table in enumerate(TABLES, start=1):
    for row in table.rows:
      rows.setdefault((row.experiment, row.eval_lasso), []).append((number, row.label))
  return tuple(Experiment(name, eval_lasso, tuple(labels))
               for (name, eval_lasso), labels in rows.items())


def results_table_command():
  """The tools/results_table.py command that gathers every experiment's results."""
  names = dict.fromkeys(e.name for e in experiments())
  pairs = " ".join(f"--results={name}=/results/{name}" for name in names)
  return f"python tools/results_table.py {pairs} --output={RESULTS_TABLES}"


def markdown_table():
  """The README's table: one line per experiment, commands in the last cell."""
  headers = ["Paper rows", "Name", "Gin file"] + [c.header for c in NUMBER_COLUMNS]
  lines = ["| " + " | ".join(headers + ["Commands"]) + " |",
           "|" + "---|" * (len(headers) + 1)]
  for experiment in experiments():
    paper = experiment.paper
    numbers = [f"{paper[(c.evaluation, c.metric)]:g}" if (c.evaluation, c.metric) in paper
               else MISSING for c in NUMBER_COLUMNS]
    gin_file = f"`gin/{experiment.gin_file}`" if experiment.gin_file else MISSING
    commands = "<br>".join(f"`{command}`" for command in experiment.commands())
    cells = [experiment.paper_rows, f"`{experiment.name}`", gin_file] + numbers + [commands]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def text_listing():
  """What `mtssl-train --list_experiments` prints: each experiment and its commands."""
  runs = experiments()
  lines = [f"The paper's Tables 1-4 as {len(runs)} experiments (paper numbers in %; "
           "results under /results/<name>, read by tools/results_table.py as NAME)."]
  for experiment in runs:
    lines += ["", f"{experiment.paper_rows}: {experiment.name}"
              + (" (evaluated with the lasso)" if experiment.eval_lasso else ""),
              "  gin file: " + (f"gin/{experiment.gin_file}" if experiment.gin_file
                                else "none (an untrained trunk)"),
              "  paper: " + (experiment.paper_numbers() or "no number recorded")]
    lines += [f"  {command}" for command in experiment.commands()]
  lines += ["", "The tables, ours beside the paper's:", f"  {results_table_command()}"]
  return "\n".join(lines)
