"""Tests of the dry runs: plans from gin and the data's sizes, one-line errors, nothing written."""

import os
import subprocess
import sys

import gin
import pytest
import tensorflow_datasets as tfds

from mtssl_tf import dry_run
from mtssl_tf import evaluation
from mtssl_tf.bin import common

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's VOC 2007 split sizes (PASCAL VOC 2007 development kit; TFDS voc/2007).
VOC_SIZES = {"train": 2501, "validation": 2510, "test": 4952}


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _fake_prepared(data_dir, name, sizes):
  """Writes a TFDS dataset's info (its split sizes) as `tfds build` would, without the data."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0,
                          filename_template=None) for split, count in sizes.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def test_training_plan_of_the_demo():
  common.parse_gin(["experiments/demo.gin"], [])
  plan = dry_run.training_plan(seconds_per_step=0.5)
  steps = gin.query_parameter("run_training.num_steps")
  images = gin.query_parameter("image_dataset.num_toy_images")
  frames = (gin.query_parameter("motion_dataset.num_toy_clips") *
            gin.query_parameter("motion_dataset.toy_frames_per_clip"))
  assert plan["num_steps"] == steps
  assert set(plan["tasks"]) == set(gin.query_parameter("MultiTaskTrainer.tasks"))
  for name, task in plan["tasks"].items():
    batch = gin.query_parameter(f"{name}.batch_size")
    size = frames if name == "motion_segmentation" else images
    assert task["share"] == pytest.approx(0.25)
    assert task["steps"] == pytest.approx(steps / 4)
    assert task["epochs"] == pytest.approx(steps / 4 * batch / size)
  assert plan["tasks"]["exemplar"]["updates"] == pytest.approx(steps / 4 / 2)
  assert plan["compute"] == pytest.approx(steps * 1.0)
  assert plan["checkpoints_by_compute"] == steps // 100
  assert plan["wall_seconds"] == pytest.approx(steps * 0.5)
  assert any("relative_position: 25% of steps" in line
             for line in dry_run.format_training_plan(plan))


def test_training_plan_names_a_missing_folder(tmp_path):
  common.parse_gin(["experiments/demo.gin"],
                   ["image_dataset.source = 'folder'",
                    f"image_dataset.pattern = '{tmp_path / 'nowhere'}'"])
  with pytest.raises(dry_run.MissingData, match=r"image_dataset.pattern = .*nowhere.* is not "
                     r"a directory.*WORKSPACE.md, section 'Data'"):
    dry_run.training_plan()


def test_evaluation_plan_from_the_prepared_split_sizes(tmp_path):
  _fake_prepared(tmp_path, "voc/2007", VOC_SIZES)
  common.parse_gin(["evals/voc_detection.gin"], [f"tfds_split.data_dir = '{tmp_path}'"])
  plan = dry_run.evaluation_plan("voc_detection", seconds_per_step=2.0)
  trainval = VOC_SIZES["train"] + VOC_SIZES["validation"]  # VOC07 trainval: 5011 images
  assert plan["train_examples"] == trainval
  assert plan["test_examples"] == VOC_SIZES["test"]
  settings = evaluation.settings_for("voc_detection")
  batch = gin.query_parameter("voc_detection.batch_size")
  assert plan["train_steps"] == settings.train_steps
  assert plan["epochs"] == pytest.approx(settings.train_steps * batch / trainval)
  assert plan["decay_steps"] == [round(f * settings.train_steps) for f in settings.decay_at]
  assert plan["wall_seconds"] == pytest.approx(2.0 * settings.train_steps)


def _run(args, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m"] + args, cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_evaluate_dry_run_on_an_empty_data_dir_is_one_line(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  result = _run(["mtssl_tf.bin.evaluate", "--eval=nyu_depth", "--dry_run",
                 "--gin_file=evals/nyu_depth.gin",
                 f"--gin_param=tfds_split.data_dir = '{empty}'"], tmp_path)
  assert result.returncode == 1
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, result.stdout
  assert "nyu_depth_v2" in lines[0] and str(empty) in lines[0]
  assert "WORKSPACE.md, section 'Data'" in lines[0]
  assert "Traceback" not in result.stderr


def test_train_dry_run_writes_nothing(tmp_path):
  model_dir = tmp_path / "run"
  result = _run(["mtssl_tf.bin.train", "--gin_file=experiments/demo.gin", "--dry_run",
                 f"--model_dir={model_dir}", "--seconds_per_step=1"], tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "relative_position: 25% of steps" in result.stdout
  assert "wall time 13.3 min" in result.stdout  # 800 steps at 1 s
  assert not model_dir.exists()
