"""Tests of tools/toy_table.py: the rows' configurations, the table and the chart it writes."""

import importlib.util
import json
import os

import gin
import numpy as np
from PIL import Image
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# tools/ is not a package: load the binary's module from its file (defines no flags).
_spec = importlib.util.spec_from_file_location("toy_table",
                                               os.path.join(_ROOT, "tools", "toy_table.py"))
toy_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy_table)


def _result(directory, evaluation, metrics, step, gin_config=None):
  """A results JSON as mtssl_tf.evaluation writes it (step None: random init)."""
  os.makedirs(directory, exist_ok=True)
  tag = "random" if step is None else f"ckpt-{step}"
  with open(os.path.join(directory, f"{evaluation}-{tag}.json"), "w") as f:
    json.dump({"evaluation": evaluation, "init": "random" if step is None else "checkpoint",
               "checkpoint": None if step is None else f"/runs/x/ckpt-{step}",
               "pretraining": None if step is None else {"global_step": step},
               "metrics": metrics, "lasso_alpha": None, "gin_config": gin_config}, f)


def test_each_row_trains_its_own_tasks_on_the_demo_configuration():
  try:
    toy_table.configure(["colorization"], gin_params=["TaskSettings.learning_rate = 1e-3"])
    assert gin.query_parameter("MultiTaskTrainer.tasks") == ["colorization"]
    assert gin.query_parameter("Trunk.depth") == 26  # demo.gin's trunk
    assert gin.query_parameter("TaskSettings.learning_rate") == 1e-3
    toy_table.configure(None)  # the random row keeps demo.gin's four tasks
    assert len(gin.query_parameter("MultiTaskTrainer.tasks")) == 4
  finally:
    gin.clear_config()


def test_table_and_chart_from_results(tmp_path):
  # Toy numbers: top-1 and mAP as fractions, depth in percent (as the evaluations write them).
  numbers = {"rp": (0.30, 0.20, 40.0), "ex": (0.25, 0.10, 35.0), "random": (0.15, 0.05, 30.0)}
  dirs = {}
  for row, (top1, map50, delta1) in numbers.items():
    dirs[row] = str(tmp_path / row)
    step = None if row == "random" else 240
    _result(dirs[row], "imagenet_linear", {"top1": top1, "top5": 0.9}, step)
    _result(dirs[row], "voc_detection", {"map50_voc07": map50}, step)
    _result(dirs[row], "nyu_depth", {"delta1_pct": delta1}, step)
  rows = toy_table.load(dirs)
  text = toy_table.markdown(rows, num_steps=240, seed=0)
  lines = text.splitlines()
  assert lines[0] == ("| Pre-training | toy shapes top-1 | toy detection mAP | "
                      "toy depth % < 1.25 |")
  # Rows in the paper's order (ex after rp), ours in percent beside Table 1's numbers.
  assert lines[2] == "| Rel. Pos. | 30.0 (36.2) | 20.0 (66.8) | 40.0 (80.6) |"
  assert lines[3] == "| Exemplar | 25.0 (31.5) | 10.0 | 35.0 (71.3) |"
  assert lines[4] == "| Random Init | 15.0 | 5.0 | 30.0 |"
  assert "240 global steps per row" in text
  path = str(tmp_path / "chart.png")
  drawn = toy_table.plot(rows, path)
  assert drawn == {"imagenet_linear": [30.0, 25.0], "voc_detection": [20.0, 10.0],
                   "nyu_depth": [40.0, 35.0]}
  image = np.asarray(Image.open(path))
  assert image.shape[:2] == (340, 1200)
  assert os.listdir(tmp_path).count("chart.png") == 1


def test_evaluation_jobs_are_the_rows_evaluations_not_yet_done(tmp_path):
  # A rerun resumes: an evaluation whose results JSON exists for this checkpoint, seed and
  # configuration is not rerun.
  workdir = str(tmp_path)
  evals = ["imagenet_linear", "voc_detection", "nyu_depth"]
  _result(os.path.join(workdir, "results", "rp", "seed3"), "voc_detection",
          {"map50_voc07": 0.1}, 240, gin_config="a = 1\n")
  jobs, output_dir = toy_table.evaluation_jobs("rp", "/runs/x/ckpt-240", workdir, evals, seed=3,
                                               config="a = 1\n")
  assert output_dir == os.path.join(workdir, "results", "rp", "seed3")
  assert [j.eval_name for j in jobs] == ["imagenet_linear", "nyu_depth"]
  assert all(j.seed == 3 and j.kwargs == {"checkpoint": "/runs/x/ckpt-240"} for j in jobs)
  assert all(j.output_dir == output_dir for j in jobs)
  # Another seed, another checkpoint or a random trunk is still to do.
  jobs, _ = toy_table.evaluation_jobs("rp", "/runs/x/ckpt-240", workdir, evals, seed=0,
                                      config="a = 1\n")
  assert len(jobs) == 3
  jobs, _ = toy_table.evaluation_jobs("rp", "/runs/x/ckpt-480", workdir, evals, seed=3,
                                      config="a = 1\n")
  assert len(jobs) == 3
  jobs, _ = toy_table.evaluation_jobs("random", None, workdir, evals, seed=3, config="a = 1\n")
  assert len(jobs) == 3 and all(j.kwargs == {"init": "random"} for j in jobs)


@pytest.mark.parametrize("previous", ["a = 2\n", None])
def test_a_result_of_another_configuration_is_refused_not_reused(tmp_path, previous):
  # After a change to demo.gin (e.g. an evaluation's protocol) the old results must not fill
  # the new table; results written before configurations were recorded are refused too.
  workdir = str(tmp_path)
  _result(os.path.join(workdir, "results", "rp", "seed0"), "nyu_depth", {"delta1_pct": 50.0},
          240, gin_config=previous)
  with pytest.raises(ValueError) as info:
    toy_table.evaluation_jobs("rp", "/runs/x/ckpt-240", workdir, ["nyu_depth"], seed=0,
                              config="a = 1\n")
  message = str(info.value)
  assert "nyu_depth-ckpt-240.json was computed with another gin configuration" in message
  assert "a = 1" in message and "new --workdir" in message


def test_the_evaluations_configuration_does_not_depend_on_the_row_configured_last():
  # Rows are pretrained one after another, each with its own task list (and a color prior
  # bound on the way); the configuration the evaluations run with, and that their results are
  # compared with, must be the same whichever row came last.
  toy_table.configure(toy_table.ROWS["rp"])
  with gin.unlock_config():
    gin.bind_parameter("colorization.prior_path", "/somewhere/prior.npy")
  row_config = gin.config_str()
  try:
    after_rp = toy_table.evaluation_config([], ["nyu_depth.batch_size = 2"])
    toy_table.configure(toy_table.ROWS["ms"])
    after_ms = toy_table.evaluation_config([], ["nyu_depth.batch_size = 2"])
    assert after_rp == after_ms == gin.config_str()
    assert "nyu_depth.batch_size = 2" in after_rp and "/somewhere/prior.npy" not in after_rp
    assert after_rp != row_config
  finally:
    gin.clear_config()
