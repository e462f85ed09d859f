"""Tests of tools/results_table.py: reading results JSONs, picking the checkpoint, the tables'
cells, Table 4's lasso rows, and the binary."""

import importlib.util
import json
import os
import subprocess
import sys

from absl import flags
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "results_table.py")
# tools/ is not a package: load the binary's module from its file (defines no flags).
_spec = importlib.util.spec_from_file_location("results_table", _TOOL)
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)

HOUR = 3600.0


def _write(directory, evaluation, metrics, step=None, compute=None, init="checkpoint",
           lasso=False, checkpoint=None, pretraining=True):
  """Writes a results JSON as mtssl_tf.evaluation does; returns its path."""
  os.makedirs(directory, exist_ok=True)
  if init == "random":
    checkpoint, position, tag = None, None, "random"
  else:
    checkpoint = checkpoint or os.path.join("/runs", os.path.basename(directory), f"ckpt-{step}")
    position = {"global_step": step, "compute_used": compute} if pretraining else None
    tag = os.path.basename(checkpoint)
  results = {"evaluation": evaluation, "init": init, "checkpoint": checkpoint,
             "pretraining": position, "metrics": metrics, "train_steps": 10,
             "lasso_alpha": {evaluation: [0.5, 0.5]} if lasso else None}
  path = os.path.join(directory, f"{evaluation}-{tag}.json")
  with open(path, "w") as f:
    json.dump(results, f)
  return path


@pytest.fixture(name="dirs")
def _dirs(tmp_path):
  """Results of several experiments; returns {name: directory} as given to --results."""
  d = {n: str(tmp_path / n) for n in ("rp", "col", "random", "imagenet_supervised", "rp_col_ex_ms",
                                      "rp_col_ex_ms_evlasso", "rp_col_ex_ms_lasso", "demo")}
  # rp: steps 1000 (latest; sorts before 200 as text) and 200.
  for step, hours, top1, top5, ap, delta in ((1000, 12000, 0.3712, 0.6049, 0.6634, 79.96),
                                             (200, 2400, 0.2501, 0.4512, 0.5021, 70.12)):
    _write(d["rp"], "imagenet_linear", {"top1": top1, "top5": top5, "examples": 50}, step,
           hours * HOUR)
    _write(d["rp"], "voc_detection", {"map50_voc07": ap, "map50_area": 0.9, "map75_voc07": 0.3},
           step, hours * HOUR)
    _write(d["rp"], "nyu_depth", {"delta1_pct": delta, "delta2_pct": 99.0, "rmse": 0.7}, step,
           hours * HOUR)
  # A random-init result in rp's directory belongs to "Random Init".
  _write(d["rp"], "nyu_depth", {"delta1_pct": 55.61}, init="random")
  # col: NYU only at the older step 400; an old result without "pretraining" (step from path).
  _write(d["col"], "imagenet_linear", {"top1": 0.4018, "top5": 0.6301}, 800, 9600 * HOUR)
  _write(d["col"], "imagenet_linear", {"top1": 0.3333, "top5": 0.5555}, 400, 4800 * HOUR)
  _write(d["col"], "nyu_depth", {"delta1_pct": 75.04}, 400, 4800 * HOUR)
  _write(d["col"], "imagenet_linear", {"top1": 0.1, "top5": 0.2}, 50, pretraining=False)
  _write(d["random"], "imagenet_linear", {"top1": 0.0321, "top5": 0.1049}, init="random")
  # ImageNet labels: slim's checkpoint, which has no step we can read.
  _write(d["imagenet_supervised"], "voc_detection", {"map50_voc07": 0.7412},
         checkpoint="/ckpt/resnet_v2_101.ckpt", pretraining=False)
  with open(os.path.join(d["imagenet_supervised"], "notes.json"), "w") as f:
    json.dump({"comment": "not a results file"}, f)
  # Table 4: plain and lasso evaluations of the plain and the lasso-pretrained networks.
  _write(d["rp_col_ex_ms"], "imagenet_linear", {"top1": 0.5, "top5": 0.7004}, 3000, 16800 * HOUR)
  _write(d["rp_col_ex_ms_evlasso"], "imagenet_linear", {"top1": 0.5, "top5": 0.7104}, 3000,
         16800 * HOUR, lasso=True)
  _write(d["rp_col_ex_ms_evlasso"], "nyu_depth", {"delta1_pct": 80.01}, 3000, 16800 * HOUR,
         lasso=True)
  _write(d["rp_col_ex_ms_lasso"], "voc_detection", {"map50_voc07": 0.6002}, 2900, 16800 * HOUR)
  _write(d["rp_col_ex_ms_lasso"], "nyu_depth", {"delta1_pct": 78.04}, 2900, 16800 * HOUR,
         lasso=True)
  # No paper table has "demo".
  _write(d["demo"], "imagenet_linear", {"top1": 0.1234, "top5": 0.2}, 5, 0.5 * HOUR)
  return d


def _pairs(d):
  return [f"{'rp_col_ex_ms' if n == 'rp_col_ex_ms_evlasso' else n}={p}" for n, p in d.items()]


def _table(text, number):
  """The lines of Table `number` (or "Other") of make_tables' text."""
  start = next(i for i, line in enumerate(text.splitlines())
               if line.startswith(f"### Table {number}.") or
               (number == "Other" and line.startswith("### Other")))
  lines = text.splitlines()[start:]
  end = next((i for i, line in enumerate(lines[1:], 1) if line.startswith("### ")), len(lines))
  lines = lines[:end]
  while lines and not lines[-1]:
    lines.pop()
  return lines


def test_load_results_reads_steps_lasso_and_random_init(dirs):
  results = rt.load_results(_pairs(dirs))
  by = {(r.name, r.evaluation, r.eval_lasso, r.step): r for r in results}
  assert len(results) == len(by) == 19  # notes.json is skipped.
  rp = by[("rp", "imagenet_linear", False, 1000)]
  assert rp.compute == 12000 * HOUR and rp.metrics["top5"] == 0.6049
  assert rp.path == os.path.join(dirs["rp"], "imagenet_linear-ckpt-1000.json")
  # Random init, found in rp's directory and in random's, is "random" either way.
  assert by[("random", "nyu_depth", False, None)].metrics == {"delta1_pct": 55.61}
  assert ("random", "imagenet_linear", False, None) in by
  assert not any(k[0] == "rp" and k[3] is None for k in by)
  # Without "pretraining", the step comes from the checkpoint's name, and compute is unknown.
  assert by[("col", "imagenet_linear", False, 50)].compute is None
  assert by[("imagenet_supervised", "voc_detection", False, None)].compute is None
  assert by[("rp_col_ex_ms", "imagenet_linear", True, 3000)].metrics["top5"] == 0.7104
  assert by[("rp_col_ex_ms", "imagenet_linear", False, 3000)].metrics["top5"] == 0.7004
  # A glob, and a file matched twice, read once.
  globbed = rt.load_results([f"rp={dirs['rp']}/nyu_depth-ckpt-*.json", ("rp", dirs["rp"])])
  assert len(globbed) == 7


def test_load_results_errors(dirs, tmp_path):
  with pytest.raises(ValueError, match=r"expected NAME=DIR_OR_GLOB"):
    rt.load_results([dirs["rp"]])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"--results=x=.*empty: no results JSON there"):
    rt.load_results([f"x={tmp_path / 'empty'}"])
  with pytest.raises(ValueError, match=r"are both imagenet_linear results of 'rp' at step 1000"):
    rt.load_results([f"rp={dirs['rp']}",
                     f"rp={_write(str(tmp_path / 'copy'), 'imagenet_linear', {}, 1000)}"])
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "a.json").write_text("{")
  with pytest.raises(ValueError, match=r"a\.json is not valid JSON"):
    rt.load_results([f"x={tmp_path / 'broken'}"])


def test_select_latest_and_a_step(dirs):
  results = rt.load_results(_pairs(dirs))
  latest = rt.select(results)
  assert sorted(latest) == [("col", False), ("demo", False), ("imagenet_supervised", False),
                            ("random", False), ("rp", False), ("rp_col_ex_ms", False),
                            ("rp_col_ex_ms", True), ("rp_col_ex_ms_lasso", False),
                            ("rp_col_ex_ms_lasso", True)]
  assert latest[("rp", False)].step == 1000  # Numerically, not as text.
  assert latest[("rp", False)].compute == 12000 * HOUR
  assert sorted(latest[("rp", False)].results) == ["imagenet_linear", "nyu_depth",
                                                   "voc_detection"]
  assert latest[("col", False)].step == 800
  assert sorted(latest[("col", False)].results) == ["imagenet_linear"]  # NYU is older.
  assert latest[("random", False)].step is None
  assert sorted(latest[("random", False)].results) == ["imagenet_linear", "nyu_depth"]

  at400 = rt.select(results, "400")
  assert sorted(at400) == [("col", False), ("imagenet_supervised", False), ("random", False)]
  assert at400[("col", False)].results["nyu_depth"].metrics["delta1_pct"] == 75.04
  assert rt.select(results, 200)[("rp", False)].results["imagenet_linear"].metrics[
      "top1"] == 0.2501
  with pytest.raises(ValueError, match="'latest' or a step number"):
    rt.select(results, "last")


def test_cells_are_ours_then_the_paper_to_one_decimal():
  assert rt.cell(37.12, 36.2) == "37.1 (36.2)"
  assert rt.cell(80.0, None) == "80.0"
  assert rt.cell(None, 76.8) == "\u2014 (76.8)"
  assert rt.cell(None, None) == "\u2014"
  assert rt.gpu_hours(16800 * HOUR) == "16.8K" and rt.gpu_hours(0.5 * HOUR) == "0.5"


def test_tables_at_the_latest_checkpoint(dirs):
  text = rt.make_tables(rt.select(rt.load_results(_pairs(dirs))))
  assert _table(text, 1) == [
      "### " + rt.TABLES[0].title,
      "",
      "| Pre-training | ImageNet top-1 | ImageNet top-5 | PASCAL VOC07 mAP | NYU % < 1.25 |",
      "|---|---|---|---|---|",
      "| Rel. Pos. | 37.1 (36.2) | 60.5 (59.2) | 66.3 (66.8) | 80.0 (80.6) |",
      "| Color | 40.2 (39.6) | 63.0 (62.5) | \u2014 | \u2014 (76.8) |",
      "| Exemplar | \u2014 (31.5) | \u2014 (53.1) | \u2014 | \u2014 (71.3) |",
      "| Motion Seg. | \u2014 (27.6) | \u2014 (48.3) | \u2014 | \u2014 (74.2) |",
      "| Random Init | 3.2 | 10.5 (10.5) | \u2014 | 55.6 |",
      "| INet Labels | \u2014 | \u2014 | 74.1 (74.2) | \u2014 |",
      "",
      "Checkpoints: Rel. Pos.: step 1000, 12.0K GPU-h; Color: step 800, 9.6K GPU-h; "
      "Random Init: no pre-training step; INet Labels: no pre-training step.",
  ]
  table2 = _table(text, 2)
  assert table2[2] == "| Pre-training | ImageNet Recall@5 | PASCAL mAP | NYU % < 1.25 |"
  assert table2[4:11] == [
      "| RP | 60.5 (59.2) | 66.3 (66.8) | 80.0 (80.6) |",
      "| RP+Col | \u2014 | \u2014 | \u2014 |",
      "| RP+Ex | \u2014 | \u2014 | \u2014 |",
      "| RP+MS | \u2014 | \u2014 | \u2014 |",
      "| RP+Ex+Col | \u2014 | \u2014 | \u2014 |",
      "| RP+Col+Ex+MS | 70.0 (69.3) | \u2014 (70.5) | \u2014 (79.3) |",
      "| INet Labels | \u2014 | 74.1 (74.2) | \u2014 |",
  ]
  assert [line.split(" | ")[0] for line in _table(text, 3)[4:8]] == [
      "| RP", "| RP / H", "| RP+Col", "| RP+Col / H"]
  assert _table(text, 3)[4] == table2[4]
  # The lasso rows: plain and lasso evaluations of each pretrained network, apart.
  assert _table(text, 4)[4:] == [
      "| No Lasso | 70.0 (69.3) | \u2014 (70.5) | \u2014 (79.3) |",
      "| Eval Only Lasso | 71.0 | \u2014 | 80.0 |",
      "| Pre-train Only Lasso | \u2014 | 60.0 | \u2014 |",
      "| Pre-train & Eval Lasso | \u2014 | \u2014 | 78.0 |",
      "",
      "Checkpoints: No Lasso: step 3000, 16.8K GPU-h; Eval Only Lasso: step 3000, 16.8K GPU-h; "
      "Pre-train Only Lasso: step 2900, 16.8K GPU-h; Pre-train & Eval Lasso: step 2900, "
      "16.8K GPU-h.",
  ]
  assert _table(text, "Other")[4:] == [
      "| demo | 12.3 | 20.0 | \u2014 | \u2014 |", "", "Checkpoints: demo: step 5, 0.5 GPU-h."]
  assert text.startswith("Cells: ours (paper), in percent;") and text.endswith("\n")


def test_tables_at_a_step(dirs):
  text = rt.make_tables(rt.select(rt.load_results(_pairs(dirs)), 200))
  table1 = _table(text, 1)
  assert table1[4:6] == ["| Rel. Pos. | 25.0 (36.2) | 45.1 (59.2) | 50.2 (66.8) | 70.1 (80.6) |",
                         "| Color | \u2014 (39.6) | \u2014 (62.5) | \u2014 | \u2014 (76.8) |"]
  assert table1[8] == "| Random Init | 3.2 | 10.5 (10.5) | \u2014 | 55.6 |"
  assert _table(text, 4)[4] == "| No Lasso | \u2014 (69.3) | \u2014 (70.5) | \u2014 (79.3) |"
  assert "### Other" not in text
  # Nothing at all: every table still has its rows, all "—".
  empty = rt.make_tables({})
  assert "| Rel. Pos. | \u2014 (36.2) | \u2014 (59.2) | \u2014 (66.8) | \u2014 (80.6) |" in empty
  assert empty.count("Checkpoints: no results.") == 4


def test_paper_numbers_are_the_papers():
  # Table 1 and Table 2's all-four-tasks row, as printed in the paper (ICCV 2017).
  table1 = {"rp": (36.2, 59.2, 66.8, 80.6), "col": (39.6, 62.5, None, 76.8),
            "ex": (31.5, 53.1, None, 71.3), "ms": (27.6, 48.3, None, 74.2)}
  for name, numbers in table1.items():
    assert tuple(rt.PAPER[name].get((c.evaluation, c.metric))
                 for c in rt.TABLES[0].columns) == numbers
  assert tuple(rt.PAPER["rp_col_ex_ms"][(c.evaluation, c.metric)]
               for c in rt.TABLES[1].columns) == (69.3, 70.5, 79.3)
  experiments = {os.path.splitext(f)[0]
                 for f in os.listdir(os.path.join(_ROOT, "gin", "experiments"))
                 if f.endswith(".gin")} - {"demo"}
  assert experiments <= set(rt.ROW_NAMES)


def test_flags():
  def parse(*args):
    values = flags.FlagValues()
    rt.define_flags(values)
    values(["results_table", *args])
    return values

  parsed = parse("--results=rp=/a", "--results=col=/b/*.json", "--output=t.md")
  assert parsed.results == ["rp=/a", "col=/b/*.json"] and parsed.checkpoint == "latest"
  assert parse("--results=rp=/a", "--output=t.md", "--checkpoint=1200").checkpoint == "1200"
  for args, message in [(["--results=rp=/a", "--output=t.md", "--checkpoint=last"],
                         "--checkpoint must be 'latest' or a step number"),
                        (["--results=/a", "--output=t.md"], "Give --results=NAME=DIR_OR_GLOB"),
                        (["--output=t.md"], "Give --results=NAME=DIR_OR_GLOB"),
                        (["--results=rp=/a"], "output")]:
    with pytest.raises(flags.Error, match=message):
      parse(*args)


def test_binary_writes_and_prints_the_tables_and_fails_clearly(dirs, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  output = tmp_path / "out" / "tables.md"

  def start(*args):
    return subprocess.Popen([sys.executable, _TOOL, *args], cwd=_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

  good = start(*(f"--results={p}" for p in _pairs(dirs)), f"--output={output}")
  bad = start(f"--results=rp={tmp_path / 'nowhere'}", f"--output={tmp_path / 'bad.md'}")
  stdout, stderr = good.communicate(timeout=60)
  assert good.returncode == 0, stderr[-3000:]
  expected = rt.make_tables(rt.select(rt.load_results(_pairs(dirs))))
  assert output.read_text() == expected
  assert expected in stdout and "9 rows written to" in stdout
  assert sorted(os.listdir(output.parent)) == ["tables.md"]  # No temporary file left.
  _, stderr = bad.communicate(timeout=60)
  assert bad.returncode == 1
  assert "results_table: --results=rp=" in stderr and "no results JSON there" in stderr
  assert "Traceback" not in stderr and not (tmp_path / "bad.md").exists()
