"""Tests of mtssl_tf/experiments.py: every row of the paper's Tables 1-4 has a gin file that
parses, commands that name real flags and concrete paths, the paper's numbers; the README's
table and `mtssl-train --list_experiments` are what the module generates."""

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import gin
import pytest

from mtssl_tf import experiments
from mtssl_tf.bin import common
from mtssl_tf.tasks import base

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## The paper's tables, as commands"

# The rows of the paper's Tables 1-4 (Doersch & Zisserman, ICCV 2017), as printed there.
PAPER_ROWS = {
    (1, "Rel. Pos."), (1, "Color"), (1, "Exemplar"), (1, "Motion Seg."), (1, "Random Init"),
    (1, "INet Labels"),
    (2, "RP"), (2, "RP+Col"), (2, "RP+Ex"), (2, "RP+MS"), (2, "RP+Ex+Col"), (2, "RP+Col+Ex+MS"),
    (2, "INet Labels"),
    (3, "RP"), (3, "RP / H"), (3, "RP+Col"), (3, "RP+Col / H"),
    (4, "No Lasso"), (4, "Eval Only Lasso"), (4, "Pre-train Only Lasso"),
    (4, "Pre-train & Eval Lasso"),
}


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _by_name(name, eval_lasso=False):
  (found,) = [e for e in experiments.experiments()
              if e.name == name and e.eval_lasso == eval_lasso]
  return found


def _defined_flags(*modules):
  """Flag names a binary defines, read from its source (importing two binaries clashes)."""
  names = set()
  for module in modules:
    with open(os.path.join(_ROOT, "mtssl_tf", "bin", f"{module}.py")) as f:
      names |= set(re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", f.read()))
  return names


def test_every_paper_row_is_one_experiment_row():
  rows = [row for e in experiments.experiments() for row in e.rows]
  assert len(rows) == len(set(rows)) == 21
  assert set(rows) == PAPER_ROWS
  # 13 pretraining runs (two also evaluated with the lasso) and the random trunk.
  assert len(experiments.experiments()) == 16
  assert _by_name("rp").rows == ((1, "Rel. Pos."), (2, "RP"), (3, "RP"))
  assert _by_name("rp_col_ex_ms", True).rows == ((4, "Eval Only Lasso"),)
  assert _by_name("rp_col_ex_ms_lasso", True).rows == ((4, "Pre-train & Eval Lasso"),)


@pytest.mark.parametrize("experiment", [e for e in experiments.experiments() if e.gin_file],
                         ids=lambda e: e.name + ("+eval_lasso" if e.eval_lasso else ""))
def test_gin_file_exists_parses_and_says_what_it_reproduces(experiment):
  path = os.path.join(common.GIN_ROOT, experiment.gin_file)
  assert os.path.isfile(path)
  common.parse_gin([experiment.gin_file], [])
  tasks = gin.query_parameter("MultiTaskTrainer.tasks")
  assert tasks and set(tasks) <= set(base.registered())
  try:
    use_lasso = gin.query_parameter("MultiTaskTrainer.use_lasso")
  except ValueError:  # Unbound: the default, no lasso.
    use_lasso = False
  assert use_lasso == (experiment.name == "rp_col_ex_ms_lasso")
  # The header: the paper's rows, the training command and the paper's numbers, wrapped freely.
  with open(path) as f:
    header = [line for line in f.read().split("\n") if line.startswith("#")]
  text = " ".join(" ".join(line.lstrip("#").split()) for line in header)
  assert experiment.paper_rows in text
  assert experiment.train_command() in text
  if experiment.paper_numbers():
    assert experiment.paper_numbers() in text


def test_every_experiment_gin_file_is_a_paper_row():
  files = {os.path.relpath(p, common.GIN_ROOT)
           for p in glob.glob(os.path.join(common.GIN_ROOT, "experiments", "*.gin"))}
  assert files - {"experiments/demo.gin"} == {e.gin_file for e in experiments.experiments()
                                              if e.gin_file}


def test_commands_are_concrete_and_name_real_flags():
  train_flags = _defined_flags("train") | {"gin_file", "gin_param"}
  evaluate_flags = _defined_flags("evaluate") | {"gin_file", "gin_param"}
  assert {"eval", "checkpoint", "init", "output_dir", "eval_lasso"} <= evaluate_flags
  for experiment in experiments.experiments():
    for command in experiment.commands():
      assert "..." not in command and "<" not in command and "DIR" not in command, command
      binary, *args = shlex.split(command)
      names = [a[2:].split("=")[0] for a in args]
      assert all(a.startswith("--") for a in args), command
      known = train_flags if binary == "mtssl-train" else evaluate_flags
      assert binary in ("mtssl-train", "mtssl-evaluate") and set(names) <= known, command
    train = experiment.train_command()
    if experiment.name == "random":
      assert train is None
    else:
      assert train == (f"mtssl-train --gin_file=experiments/{experiment.name}.gin "
                       f"--model_dir=/runs/{experiment.name} --strategy=mirrored")
    evaluations = []
    for command in experiment.evaluate_commands():
      flags = dict(a[2:].partition("=")[::2] for a in shlex.split(command)[1:])
      evaluations.append(flags["eval"])
      assert flags["gin_file"] == f"evals/{flags['eval']}.gin"
      assert os.path.isfile(os.path.join(common.GIN_ROOT, flags["gin_file"]))
      assert flags["output_dir"] == f"/results/{experiment.name}"
      # Table 4's "Eval ... Lasso" rows, and only those, evaluate with the lasso.
      assert ("eval_lasso" in flags) == ("Eval" in experiment.rows[0][1]
                                         and experiment.rows[0][0] == 4)
      if experiment.name == "random":
        assert flags["init"] == "random" and "checkpoint" not in flags
      else:
        assert flags["checkpoint"] == f"/runs/{experiment.name}"
      # Section 5: only the ImageNet network brings its own block 4 into the box head.
      assert ("gin_param" in flags) == (experiment.name == "imagenet_supervised"
                                        and flags["eval"] == "voc_detection")
    assert evaluations == ["imagenet_linear", "voc_detection", "nyu_depth"]
  assert _by_name("imagenet_supervised").evaluate_commands()[1].endswith(
      " --gin_param=\"voc_detection.block4_checkpoint='/runs/imagenet_supervised'\"")


def test_paper_numbers():
  # Table 1's rows, Table 2's RP+Col+Ex+MS row and the numbers of sections 6.1 and 6.2's text.
  assert _by_name("rp").paper_numbers() == ("ImageNet top-1 36.2, ImageNet Recall@5 59.2, "
                                            "PASCAL VOC07 mAP 66.8, NYU % < 1.25 80.6")
  assert _by_name("rp_col_ex_ms").paper_numbers() == (
      "ImageNet Recall@5 69.3, PASCAL VOC07 mAP 70.5, PASCAL VOC07 mAP@0.75 43.91, "
      "NYU % < 1.25 79.3")
  assert _by_name("imagenet_supervised").paper_numbers() == (
      "PASCAL VOC07 mAP 74.2, PASCAL VOC07 mAP@0.75 44.27")
  assert _by_name("random").paper_numbers() == "ImageNet Recall@5 10.5"
  # The lasso rows' numbers are not "No Lasso"'s.
  assert _by_name("rp_col_ex_ms", True).paper_numbers() is None
  lines = experiments.markdown_table().split("\n")
  assert lines[2].startswith("| Table 1 'Rel. Pos.', Table 2 'RP', Table 3 'RP' | `rp` | "
                             "`gin/experiments/rp.gin` | 36.2 | 59.2 | 66.8 | \u2014 | 80.6 | "
                             "`mtssl-train ")
  assert "| `random` | \u2014 | \u2014 | 10.5 | \u2014 | \u2014 | \u2014 | `mtssl-evaluate " in (
      lines[6])


def test_results_table_reads_the_same_numbers_and_names():
  spec = importlib.util.spec_from_file_location(
      "results_table", os.path.join(_ROOT, "tools", "results_table.py"))
  results_table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(results_table)
  assert results_table.PAPER is experiments.PAPER
  assert results_table.TABLES is experiments.TABLES
  command = shlex.split(experiments.results_table_command())
  assert command[:2] == ["python", "tools/results_table.py"]
  pairs = [results_table.parse_pair(a[len("--results="):]) for a in command[2:-1]]
  assert pairs == [(name, f"/results/{name}") for name in dict.fromkeys(
      e.name for e in experiments.experiments())]
  assert len(pairs) == 14 and command[-1] == "--output=/results/tables.md"


def test_readme_table_is_the_generated_one():
  with open(os.path.join(_ROOT, "README.md")) as f:
    readme = f.read()
  assert readme.count(SECTION) == 1
  section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
  table = [line for line in section.split("\n") if line.startswith("|")]
  assert table == experiments.markdown_table().split("\n")
  assert experiments.results_table_command() in section
  # Right after the pretraining section, before the evaluations.
  assert readme.index("## Pretraining") < readme.index(SECTION) < readme.index("## Evaluations")


def test_list_experiments_prints_the_list_and_exits_0(tmp_path):
  env = dict(os.environ, PYTHONPATH=_ROOT)
  result = subprocess.run([sys.executable, "-m", "mtssl_tf.bin.train", "--list_experiments"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout == experiments.text_listing() + "\n"
  for experiment in experiments.experiments():
    for command in experiment.commands():
      assert f"\n  {command}\n" in result.stdout
