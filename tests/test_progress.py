"""Tests of progress lines: durations past a day, short task names, 160 columns, task order."""

import logging
import math

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import progress
from mtssl_tf import training
from mtssl_tf.bin import common
from tests import test_training
from tests.conftest import untraced_steps

# What absl's console prefix adds before a message ("I1130 09:02:52 ").
_PREFIX = len("I1130 09:02:52 ")


def test_format_duration():
  assert progress.format_duration(0) == "00:00:00"
  assert progress.format_duration(59.6) == "00:01:00"
  assert progress.format_duration(3 * 3600 + 25 * 60 + 7) == "03:25:07"
  # Past a day: strftime of gmtime would wrap 30 hours to 06:00:00.
  assert progress.format_duration(30 * 3600) == "1d06h"
  assert progress.format_duration(400 * 86400 + 23 * 3600) == "400d23h"
  for unknown in (math.inf, math.nan, -1.0, None):
    assert progress.format_duration(unknown) == "?"


def test_short_task_names():
  names = ["relative_position", "colorization", "exemplar", "motion_segmentation"]
  assert progress.short_task_names(names) == {
      "relative_position": "rp", "colorization": "col", "exemplar": "ex",
      "motion_segmentation": "ms"}
  # Initials for other names; the full names where two would be the same.
  assert progress.short_task_names(["video_order", "relative_position", "rotation_prediction",
                                    "red_pixels"]) == {
      "video_order": "vo", "relative_position": "relative_position",
      "rotation_prediction": "rotation_prediction", "red_pixels": "red_pixels"}


def test_the_longest_progress_line_fits_160_columns():
  # Four tasks, seven-digit counts, losses in exponent notation (every task's loss is >= 0), a
  # step limit and a compute budget, an ETA of hundreds of days.
  tasks = {s: (9_999_999, 1.23456e-05) for s in ("rp", "col", "ex", "ms")}
  line = training.format_progress(9_999_999, 10_000_000, 1234.567, 999 * 86400, 1.23456e7,
                                  6.048e7, tasks)
  assert _PREFIX + len(line) <= 160, (len(line), line)
  assert line == ("step 9999999/10000000 1234.6/s ETA 999d00h 1.23e+07/6.05e+07 | "
                  "rp 9999999 1.23e-05 col 9999999 1.23e-05 ex 9999999 1.23e-05 "
                  "ms 9999999 1.23e-05")
  # No limit, no budget: neither is shown; slow rates keep three digits.
  assert training.format_progress(5, math.inf, 0.01234, math.inf, 5.0, math.inf, {
      "rp": (5, 2.0794)}) == "step 5 0.0123/s ETA ? 5 | rp 5 2.08"


def test_progress_lines_list_every_task_in_the_order_of_the_task_list(caplog, tmp_path):
  gin.clear_config()
  # exemplar first in the list, relative position twice as often: it runs first.
  common.parse_gin([], test_training.TINY + [
      "MultiTaskTrainer.tasks = ['exemplar', 'relative_position']",
      "relative_position/TaskSettings.weight = 2.0", "MultiTaskTrainer.log_every_secs = 0"])
  # Fixed batches of TINY's shapes: 4 pairs of 32-pixel patches for each task.
  rng = np.random.RandomState(0)
  patches = lambda *shape: rng.uniform(-100, 100, shape).astype(np.float32)
  batches = {
      "relative_position": {"relative_position/patches": patches(4, 2, 32, 32, 3),
                            "relative_position/label": np.zeros([4], np.int32)},
      "exemplar": {"exemplar/x1": patches(4, 32, 32, 3), "exemplar/x2": patches(4, 32, 32, 3)},
  }
  try:
    # The lines, not the steps, are under test: the steps run untraced.
    with untraced_steps():
      trainer = training.MultiTaskTrainer(str(tmp_path), input_fns={
          name: (lambda b: lambda ctx: tf.data.Dataset.from_tensors(b).repeat())(batch)
          for name, batch in batches.items()})
      with caplog.at_level(logging.INFO, logger="absl"):
        trainer.train(num_steps=3, save_at_end=False)
  finally:
    gin.clear_config()
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(lines) == 3
  # Step 1 ran relative position only: exemplar is listed first all the same, with no loss.
  first = lines[0]
  assert first.startswith("step 1/3 ") and " | ex 0 - rp 1 " in first
  assert " | ex 1 " in lines[2] and " rp 2 " in lines[2]
  assert "Tasks in progress lines: ex = exemplar, rp = relative_position." in caplog.text
  # The legend fits the console too (160 columns with the log prefix).
  legend = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(("Progress lines:", "Tasks in progress lines:"))]
  assert len(legend) == 2 and all(_PREFIX + len(m) <= 160 for m in legend), legend


def _windows(losses, window=training.LOSS_WINDOW):
  """What the training loop keeps of a task's losses: its first and last `window`."""
  return losses[:window], losses[-window:]


def test_loss_windows_never_overlap():
  # A task's losses 0, 1, 2, ...: the first and last means of n steps, computed by hand.
  for n, k in [(1, 0), (2, 1), (3, 1), (7, 3), (25, 12), (39, 19), (40, 20), (100, 20)]:
    losses = [float(i) for i in range(n)]
    first, latest = _windows(losses)
    result = training.loss_windows({"t": first}, {"t": latest}, {"t": n})
    if k == 0:
      assert result == {"first_mean_loss": {}, "last_mean_loss": {}, "loss_window": {}}
      continue
    assert result["loss_window"] == {"t": k}
    assert result["first_mean_loss"]["t"] == (k - 1) / 2  # mean of 0 .. k-1
    assert result["last_mean_loss"]["t"] == n - 1 - (k - 1) / 2  # mean of n-k .. n-1
