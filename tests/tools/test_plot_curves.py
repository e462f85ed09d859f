"""Tests of tools/plot_curves.py: the curves of Figure 3 (compute, or steps when compute is
missing), the PNG, and the binary."""

import importlib.util
import json
import os
import subprocess
import sys

from absl import flags
from matplotlib import colors as mpl_colors
from matplotlib import image as mpl_image
import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "plot_curves.py")
# tools/ is not a package: load the binary's module from its file (defines no flags).
_spec = importlib.util.spec_from_file_location("plot_curves", _TOOL)
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

HOUR = 3600.0


def _write(directory, evaluation, metrics, step=None, hours=None, init="checkpoint",
           lasso=False):
  """Writes a results JSON as mtssl_tf.evaluation does; returns its path."""
  os.makedirs(directory, exist_ok=True)
  tag = "random" if init == "random" else f"ckpt-{step}"
  results = {
      "evaluation": evaluation, "init": init,
      "checkpoint": None if init == "random" else f"/runs/x/{tag}",
      "pretraining": None if init == "random" else {
          "global_step": step, "compute_used": None if hours is None else hours * HOUR},
      "metrics": metrics, "lasso_alpha": {evaluation: [1.0]} if lasso else None}
  path = os.path.join(directory, f"{evaluation}-{tag}.json")
  with open(path, "w") as f:
    json.dump(results, f)
  return path


@pytest.fixture(name="pairs")
def _pairs(tmp_path):
  """rp at three checkpoints (written out of order), col at one, random init; --results."""
  rp, col, rnd = (str(tmp_path / n) for n in ("rp", "col", "random"))
  for step, hours, top5, ap, delta in ((1000, 12000, 0.62, 0.67, 80.1),
                                       (200, 2400, 0.55, 0.60, 78.2),
                                       (600, 7200, 0.58, None, 79.0)):
    _write(rp, "imagenet_linear", {"top1": 0.3, "top5": top5}, step, hours)
    if ap is not None:
      _write(rp, "voc_detection", {"map50_voc07": ap, "map75_voc07": 0.1}, step, hours)
    _write(rp, "nyu_depth", {"delta1_pct": delta}, step, hours)
  _write(col, "imagenet_linear", {"top1": 0.4, "top5": 0.61}, 400, 4800)
  # Evaluated with the lasso: written elsewhere (its file name is the plain one's).
  _write(col + "_lasso", "imagenet_linear", {"top1": 0.4, "top5": 0.64}, 400, 4800, lasso=True)
  _write(col, "nyu_depth", {"delta1_pct": None}, 400, 4800)  # A metric that is missing.
  _write(rnd, "imagenet_linear", {"top1": 0.03, "top5": 0.105}, init="random")
  _write(rnd, "nyu_depth", {"delta1_pct": 50.0}, init="random")
  return [f"rp={rp}", f"col={col}", f"col={col}_lasso", f"random={rnd}"]


def _rounded(lines):
  return {e: {n: [(None if x is None else round(x, 6), round(y, 6)) for x, y in points]
              for n, points in by_name.items()} for e, by_name in lines.items()}


def test_curves_against_compute_sorted(pairs):
  results = pc.results_table.load_results(pairs)
  assert pc.x_axis(results) == "compute"
  assert _rounded(pc.curves(results)) == {
      "imagenet_linear": {
          "col": [(4800.0, 61.0)],
          "col/eval_lasso": [(4800.0, 64.0)],
          "random": [(None, 10.5)],
          "rp": [(2400.0, 55.0), (7200.0, 58.0), (12000.0, 62.0)]},
      "voc_detection": {"rp": [(2400.0, 60.0), (12000.0, 67.0)]},
      "nyu_depth": {"random": [(None, 50.0)],
                    "rp": [(2400.0, 78.2), (7200.0, 79.0), (12000.0, 80.1)]},
  }
  assert [pc.label(n) for n in ("rp", "col/eval_lasso", "random", "mine")] == [
      "Rel. Pos.", "Color + Eval Lasso", "Random Init", "mine"]


def test_curves_fall_back_to_steps_without_compute(pairs, tmp_path):
  _write(str(tmp_path / "ms"), "nyu_depth", {"delta1_pct": 70.0}, 300)  # No compute recorded.
  results = pc.results_table.load_results(pairs + [f"ms={tmp_path / 'ms'}"])
  assert pc.x_axis(results) == "step"
  lines = _rounded(pc.curves(results))
  assert lines["nyu_depth"] == {"ms": [(300.0, 70.0)], "random": [(None, 50.0)],
                                "rp": [(200.0, 78.2), (600.0, 79.0), (1000.0, 80.1)]}
  assert lines["imagenet_linear"]["rp"] == [(200.0, 55.0), (600.0, 58.0), (1000.0, 62.0)]
  assert "step" in pc.X_LABELS["step"] and "compute not recorded" in pc.X_LABELS["step"]
  with pytest.raises(ValueError, match="axis must be one of"):
    pc.curves(results, "hours")


def test_png_is_written_with_the_lines(pairs, tmp_path):
  results = pc.results_table.load_results(pairs)
  lines = pc.curves(results)
  output = tmp_path / "figures" / "figure3.png"
  drawn = pc.plot(lines, str(output), axis="compute", title="test", dpi=60)
  assert sorted(os.listdir(output.parent)) == ["figure3.png"]  # No temporary file left.
  png = mpl_image.imread(str(output))
  assert png.shape == (round(4.6 * 60), round(15.0 * 60), 4) == drawn["size"] + (4,)
  # What matplotlib drew is the curves; "Random Init" a horizontal line at its score.
  imagenet = _rounded({"": drawn["drawn"]["imagenet_linear"]})[""]
  assert imagenet["Rel. Pos."] == [(2400.0, 55.0), (7200.0, 58.0), (12000.0, 62.0)]
  assert imagenet["Random Init"] == [(0.0, 10.5), (1.0, 10.5)]
  assert imagenet["Color + Eval Lasso"] == [(4800.0, 64.0)]
  assert drawn["styles"] == {"Rel. Pos.": "-", "Color": "-", "Color + Eval Lasso": "-",
                            "Random Init": "--"}
  assert sorted(drawn["drawn"]["voc_detection"]) == ["Rel. Pos."]
  assert sorted(drawn["drawn"]["nyu_depth"]) == ["Random Init", "Rel. Pos."]
  # Rel. Pos.'s lines (first in the paper's order: C0) are on the image, in three panels.
  blue = np.all(np.abs(png[..., :3] - mpl_colors.to_rgb("C0")) < 0.05, axis=-1)
  columns = np.flatnonzero(blue.any(axis=0))
  assert blue.sum() > 300 and columns.min() < png.shape[1] / 3 < 2 * png.shape[1] / 3 < (
      columns.max())
  with pytest.raises(ValueError, match="Nothing to plot"):
    pc.plot({"imagenet_linear": {}}, str(tmp_path / "empty.png"))
  assert not (tmp_path / "empty.png").exists()


def test_flags():
  def parse(*args):
    values = flags.FlagValues()
    pc.define_flags(values)
    values(["plot_curves", *args])
    return values

  parsed = parse("--results=rp=/a", "--results=col=/b", "--output=f.png")
  assert parsed.results == ["rp=/a", "col=/b"] and parsed.dpi == 100
  for args, message in [(["--results=rp=/a", "--output=f.jpg"], "--output must be a .png"),
                        (["--output=f.png"], "Give --results=NAME=DIR_OR_GLOB"),
                        (["--results=rp=/a"], "output")]:
    with pytest.raises(flags.Error, match=message):
      parse(*args)


def test_binary_writes_the_png(pairs, tmp_path):
  output = tmp_path / "figure3.png"
  run = subprocess.run([sys.executable, _TOOL, *(f"--results={p}" for p in pairs),
                        f"--output={output}", "--dpi=50"], cwd=_ROOT, text=True,
                       capture_output=True, timeout=60,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert ("imagenet_linear: 4 lines, voc_detection: 1 lines, nyu_depth: 2 lines; x: compute"
          in run.stdout)
  assert mpl_image.imread(str(output)).shape == (230, 750, 4)
