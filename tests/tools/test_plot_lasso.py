"""Tests of tools/plot_lasso.py: reading lasso rows from checkpoints and results JSON, the errors,
and the figure's pixels."""

import gc
import importlib.util
import json
import os
import subprocess
import sys

from absl import flags
import gin
from matplotlib import image as mpl_image
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import lasso as lasso_lib
from mtssl_tf import training
from mtssl_tf.bin import common

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "plot_lasso.py")
# tools/ is not a package: load the binary's module from its file (defines no flags).
_spec = importlib.util.spec_from_file_location("plot_lasso", _TOOL)
pl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pl)

# The smallest MultiTaskTrainer that writes a real checkpoint (as in tests/test_training.py).
_TINY = [
    "Trunk.depth = 26",
    "image_dataset.source = 'toy'",
    "image_dataset.num_toy_images = 16",
    "image_dataset.toy_size = (64, 72)",
    "relative_position.patch_size = 32",
    "relative_position.preprocess.gap = 4",
    "relative_position.preprocess.jitter = 2",
    "relative_position.batch_size = 4",
    "relative_position.fc_width = 16",
    "exemplar.patch_size = 32",
    "exemplar.batch_size = 4",
    "exemplar.head_width = 16",
    "exemplar.embedding_size = 8",
    "MultiTaskTrainer.checkpoint_every_secs = None",
    "MultiTaskTrainer.log_every_secs = 1000",
]


def _lasso_checkpoint(directory, rows, step=1):
  """Saves {consumer: row} as the MultiTaskTrainer does (its Lasso under `lasso`); returns the prefix."""
  lasso = lasso_lib.Lasso(list(rows), len(next(iter(rows.values()))))
  for name, row in rows.items():
    lasso.rows[name].assign(np.asarray(row, np.float32))
  checkpoint = tf.train.Checkpoint(lasso=lasso, global_step=tf.Variable(step, dtype=tf.int64))
  return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=5).save(step)


def _results(path, alphas, **extra):
  with open(path, "w") as f:
    json.dump({"lasso_alpha": alphas, **extra}, f)
  return str(path)


def _rng_rows(names, units, seed=0):
  rng = np.random.RandomState(seed)
  return {n: rng.uniform(-1, 1, units).astype(np.float32) for n in names}


def test_trainer_checkpoint_rows_are_found_and_equal_the_lasso(tmp_path):
  gin.clear_config()
  common.parse_gin([], _TINY)
  try:
    trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position", "exemplar"],
                               use_lasso=True)
    trainer.train(num_steps=1)  # One relative_position step (exemplar's row stays one-hot).
    expected = trainer.lasso.matrix().numpy()
    # Its input pipelines would go on prefetching, in threads that slow the next tests.
    del trainer
    gc.collect()
  finally:
    gin.clear_config()
  # A row moved off its one-hot start, so reading the right variables is what is tested.
  assert not np.allclose(expected[0, :-1], 0.0)
  names, rows = pl.read_checkpoint_rows(str(tmp_path))
  assert names == ["exemplar", "relative_position"]  # By name.
  np.testing.assert_array_equal(rows, expected[::-1])
  assert rows.shape == (2, 2) and rows.dtype == np.float32  # Depth 26: block 3 has 2 units.
  keys = [k for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path)))]
  assert sorted(k for k in keys if pl.ROW_KEY.match(k)) == [
      "lasso/rows/exemplar/.ATTRIBUTES/VARIABLE_VALUE",
      "lasso/rows/relative_position/.ATTRIBUTES/VARIABLE_VALUE"]
  # The cheap checkpoint of the other tests has the MultiTaskTrainer's keys.
  cheap = _lasso_checkpoint(tmp_path / "cheap", {"exemplar": expected[1],
                                                 "relative_position": expected[0]})
  assert sorted(k for k, _ in tf.train.list_variables(cheap) if pl.ROW_KEY.match(k)) == sorted(
      k for k in keys if pl.ROW_KEY.match(k))


def test_rows_read_back_in_tasks_order_from_a_prefix_or_the_latest(tmp_path):
  first = _rng_rows(["relative_position", "colorization", "exemplar", "odd/name.x"], 7)
  latest = _rng_rows(list(first), 7, seed=1)
  prefix = _lasso_checkpoint(tmp_path, first, step=1)
  _lasso_checkpoint(tmp_path, latest, step=2)
  names, rows = pl.read_checkpoint_rows(str(tmp_path))
  assert names == ["colorization", "exemplar", "odd/name.x", "relative_position"]
  np.testing.assert_array_equal(rows, np.stack([latest[n] for n in names]))
  order = ["exemplar", "relative_position", "colorization"]
  names, rows = pl.read_checkpoint_rows(prefix, tasks=order)
  assert names == order
  np.testing.assert_array_equal(rows, np.stack([first[n] for n in order]))
  with pytest.raises(ValueError, match=r"no lasso row for \['motion_segmentation'\]"):
    pl.read_checkpoint_rows(prefix, tasks=["exemplar", "motion_segmentation"])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="empty is a directory with no checkpoint in it"):
    pl.read_checkpoint_rows(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="ckpt-9.index"):
    pl.read_checkpoint_rows(str(tmp_path / "ckpt-9"))


def test_results_json_rows_are_appended_in_file_order(tmp_path):
  a = _results(tmp_path / "a.json", {"imagenet_linear": [0.5, -0.25, 0.75],
                                     "voc_detection": [0.0, 0.0, 1.0]}, top1=0.3)
  b = _results(tmp_path / "b.json", {"nyu_depth": [1, 2, -2]})
  names, rows = pl.read_results_rows([a, b])
  assert names == ["imagenet_linear", "voc_detection", "nyu_depth"]
  np.testing.assert_array_equal(rows, [[0.5, -0.25, 0.75], [0, 0, 1], [1, 2, -2]])
  names, rows = pl.read_results_rows([])
  assert names == [] and rows.shape == (0, 0)
  with pytest.raises(ValueError, match="in both"):
    pl.read_results_rows([a, a])


def test_errors_for_no_lasso_rows_and_mismatched_lengths(tmp_path):
  # What a MultiTaskTrainer without the lasso writes: an empty module under `lasso`.
  plain = tf.train.Checkpoint(lasso=tf.Module(), global_step=tf.Variable(3)).save(
      str(tmp_path / "plain" / "ckpt"))
  with pytest.raises(ValueError, match=r"(?s)plain/ckpt-1 has no lasso rows.*not trained with "
                     r"the lasso: use gin experiments/common/lasso\.gin"):
    pl.read_checkpoint_rows(str(tmp_path / "plain"))

  module = tf.Module()
  module.rows = {"exemplar": tf.Variable(np.zeros(5, np.float32)),
                 "colorization": tf.Variable(np.zeros(4, np.float32))}
  ragged = tf.train.Checkpoint(lasso=module).save(str(tmp_path / "ragged" / "ckpt"))
  with pytest.raises(ValueError, match=r"ragged/ckpt-1 have different lengths.*"
                     r"'colorization': 4, 'exemplar': 5"):
    pl.read_checkpoint_rows(ragged)

  bad = _results(tmp_path / "bad.json", {"imagenet_linear": [1, 0, 0], "nyu_depth": [1, 0]})
  with pytest.raises(ValueError, match=r"bad\.json have different lengths"):
    pl.read_results_rows([bad])
  missing = tmp_path / "no_lasso.json"
  missing.write_text(json.dumps({"top1": 0.3}))
  with pytest.raises(ValueError, match=r"no_lasso\.json has no lasso rows: expected an entry "
                     '"lasso_alpha"'):
    pl.read_results_rows([str(missing)])
  strings = _results(tmp_path / "strings.json", {"nyu_depth": ["1", "0"]})
  with pytest.raises(ValueError, match="must be a list of floats"):
    pl.read_results_rows([strings])
  with pytest.raises(ValueError, match="self-supervised and evaluation lasso rows have "
                     "different lengths"):
    pl.plot(["exemplar"], np.ones([1, 4]), ["nyu_depth"], np.ones([1, 3]),
            str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="no lasso rows"):
    pl.plot([], np.zeros([0, 0]), [], np.zeros([0, 0]), str(tmp_path / "x.png"))
  assert not (tmp_path / "x.png").exists()


def test_png_pixels_show_the_matrix(tmp_path):
  # Small values everywhere, one large entry in the evaluation rows (row 3, unit 5).
  pretext = np.array([[0.01, -0.04, 0.09, 0.0, 0.16, 0.25],
                      [0.36, 0.0, -0.49, 0.0, 0.0, 0.0]], np.float32)
  evals = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, -4.0, 0.0]], np.float32)
  output = tmp_path / "sub" / "alpha.png"
  drawn = pl.plot(["relative_position", "colorization"], pretext, ["imagenet_linear", "nyu"],
                  evals, str(output), gamma=0.5, title="test", dpi=100)
  matrix = np.concatenate([pretext, evals])
  np.testing.assert_allclose(drawn["image"], np.sqrt(np.abs(matrix) / 4.0), atol=1e-6)
  assert sorted(os.listdir(output.parent)) == ["alpha.png"]  # No temporary file left.

  png = mpl_image.imread(str(output))
  width, height = pl.figure_size(4, 6, ["relative_position"])
  assert png.shape[:2] == drawn["size"] == (round(height * 100), round(width * 100))
  left, top, right, bottom = drawn["axes_box"]
  assert 0 < left < right < png.shape[1] and 0 < top < bottom < png.shape[0]
  ys = (top + (np.arange(4) + 0.5) * (bottom - top) / 4).astype(int)
  xs = (left + (np.arange(6) + 0.5) * (right - left) / 6).astype(int)
  centres = png[ys[:, None], xs[None, :], :3]
  np.testing.assert_allclose(centres[..., 0], centres[..., 1], atol=1e-6)  # Gray cells.
  gray = centres[..., 0]
  assert np.unravel_index(np.argmax(gray), gray.shape) == (3, 4)
  assert gray[3, 4] > 0.99 and gray[2].max() < 0.01
  # Every cell's gray is its (|alpha| / max) ** 0.5, to the colormap's 256 levels.
  np.testing.assert_allclose(gray, drawn["image"], atol=1.5 / 255)
  # The separating line, between the self-supervised and evaluation rows, is red.
  line = png[int(top + (bottom - top) / 2), xs[2], :3]
  assert line[0] > 0.6 and line[1] < 0.4 and line[2] < 0.4
  # With the evaluation rows only, no line: the same place is a (black) cell.
  only = pl.plot([], np.zeros([0, 0]), ["imagenet_linear", "nyu"], evals,
                 str(tmp_path / "evals.png"), dpi=100)
  assert only["image"].shape == (2, 6)
  left, top, right, bottom = only["axes_box"]
  cell = mpl_image.imread(str(tmp_path / "evals.png"))[
      int(top + (bottom - top) / 4), int(left + 2.5 * (right - left) / 6), :3]
  np.testing.assert_allclose(cell, 0.0, atol=1e-6)


def test_colorbar_ticks_are_true_values_at_their_drawn_brightness():
  positions, labels = pl.colorbar_ticks(4.0, 0.5)
  values = [float(v) for v in labels]
  assert values[0] == 0.0 and values[-1] == 4.0 and values == sorted(set(values))
  np.testing.assert_allclose(positions, np.sqrt(np.array(values) / 4.0))
  assert values[1] < 0.2  # The nonlinear scale gives small values their own ticks.
  assert pl.colorbar_ticks(0.0, 0.5) == ([0.0], ["0"])
  image, top = pl.scaled(np.zeros([2, 3]), 0.5)
  assert top == 0.0 and not image.any()


def test_flags_name_the_flag_and_the_fix():
  def parse(*args):
    values = flags.FlagValues()
    pl.define_flags(values)
    values(["plot_lasso", *args])
    return values

  parsed = parse("--output=a.png", "--tasks=exemplar,colorization", "--results_json=x.json",
                 "--results_json=y.json")
  assert parsed.gamma == 0.5 and parsed.tasks == ["exemplar", "colorization"]
  assert parsed.results_json == ["x.json", "y.json"]
  for args, message in [(["--output=a.jpg"], "--output must be a .png path"),
                        (["--output=a.png", "--gamma=0"], "--gamma must be positive"),
                        ([], "output")]:
    with pytest.raises(flags.Error, match=message):
      parse(*args)


def test_binary_writes_the_png_and_fails_clearly(tmp_path):
  rows = _rng_rows(["relative_position", "colorization", "exemplar", "motion_segmentation"], 23)
  _lasso_checkpoint(tmp_path / "run", rows)
  results = _results(tmp_path / "eval.json", {"imagenet_linear": [0.1] * 23})
  output = tmp_path / "figures" / "figure4.png"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

  def start(*args):
    return subprocess.Popen([sys.executable, _TOOL, *args], cwd=_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

  # Both at once, to halve the wait: a good run, and one on a run trained without the lasso.
  plain = tf.train.Checkpoint(step=tf.Variable(1)).save(str(tmp_path / "plain" / "ckpt"))
  good = start(f"--checkpoint={tmp_path / 'run'}", f"--results_json={results}",
               "--tasks=relative_position,colorization,exemplar,motion_segmentation",
               f"--output={output}", "--dpi=80")
  bad = start(f"--checkpoint={plain}", f"--output={tmp_path / 'bad.png'}")
  stdout, stderr = good.communicate(timeout=120)
  assert good.returncode == 0, stderr[-3000:]
  assert "4 self-supervised + 1 evaluation rows" in stdout
  assert sorted(os.listdir(output.parent)) == ["figure4.png"]
  width, height = pl.figure_size(5, 23, ["motion_segmentation"])
  assert mpl_image.imread(str(output)).shape == (round(height * 80), round(width * 80), 4)
  _, stderr = bad.communicate(timeout=120)
  assert bad.returncode == 1
  assert "plot_lasso: Checkpoint" in stderr and "not trained with the lasso" in stderr
  assert "Traceback" not in stderr and not (tmp_path / "bad.png").exists()
