"""Mistakes a user makes end in one line naming the binding and the fix; the console is quiet."""

import logging
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf import validate
from mtssl_tf.bin import common
from mtssl_tf.tasks import base

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEMO = "--gin_file=experiments/demo.gin"


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _run(args, cwd, verbose=False):
  """Runs a binary as a user would: no TF_CPP_MIN_LOG_LEVEL of the tests' own."""
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                          "MTSSL_VERBOSE")}
  env["PYTHONPATH"] = _ROOT
  return subprocess.run([sys.executable, "-m"] + args + (["--verbose"] if verbose else []),
                        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def _log_line(line):
  """Whether a stderr line is an absl log line ("I1130 09:02:52 ...")."""
  return len(line) > 5 and line[0] in "IWEF" and line[1:5].isdigit()


# --- the binaries ------------------------------------------------------------------------------


def test_a_wrong_type_is_one_line_naming_the_binding_and_verbose_shows_the_traceback(tmp_path):
  args = ["mtssl_tf.bin.train", _DEMO, "--dry_run",
          "--gin_param=relative_position.batch_size = 'sixteen'"]
  quiet = _run(args, tmp_path)
  assert quiet.returncode == 1 and not quiet.stdout
  assert "Traceback" not in quiet.stderr
  assert [line for line in quiet.stderr.splitlines() if not _log_line(line)] == [
      "mtssl-train: relative_position.batch_size = 'sixteen': expects an integer (default "
      "32), got str; bind it unquoted as in `relative_position.batch_size = 32`."]
  verbose = _run(args, tmp_path, verbose=True)
  assert verbose.returncode == 1
  assert "Traceback (most recent call last)" in verbose.stderr
  assert "SettingError: relative_position.batch_size = 'sixteen'" in verbose.stderr


def test_the_demo_dry_run_prints_no_start_up_noise(tmp_path):
  result = _run(["mtssl_tf.bin.train", _DEMO, "--dry_run"], tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("Dry run: ")
  # TensorFlow's CUDA factory lines, gin's false "Path not found" for every include, Google's
  # Python version warning: none of them; what is left is our one log line.
  for noise in ("Path not found", "Unable to register", "FutureWarning", "cpu_feature_guard"):
    assert noise not in result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].endswith(
      f"Gin files ['{_ROOT}/gin/experiments/demo.gin'], bindings []"), lines


def _write_broken_jpegs(folder, count):
  full = tf.io.encode_jpeg(np.full([32, 32, 3], 99, np.uint8)).numpy()
  paths = []
  for i in range(count):
    path = folder / f"broken{i}.jpg"
    # Alternately truncated JPEGs and bytes that are no image at all.
    path.write_bytes(full[:len(full) // 2] if i % 2 else b"\xff\xd8 not a jpeg")
    paths.append(str(path))
  return paths


def test_a_folder_of_broken_images_stops_training_in_one_line(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  broken = _write_broken_jpegs(folder, 3)
  result = _run(["mtssl_tf.bin.train", _DEMO, f"--model_dir={tmp_path / 'run'}",
                 "--gin_param=MultiTaskTrainer.tasks = ['relative_position']",
                 "--gin_param=image_dataset.source = 'folder'",
                 f"--gin_param=image_dataset.pattern = '{folder}'"], tmp_path)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  # Before it, libjpeg may say "Improper call to JPEG library" for a truncated file.
  assert result.stderr.splitlines()[-1:] == [
      f"mtssl-train: None of the 3 image files under '{folder}' can be read and decoded "
      f"({', '.join(broken)}); check image_dataset.pattern or replace the files."]


# --- parsing gin -------------------------------------------------------------------------------


@pytest.mark.parametrize("binding, message", [
    ("TaskSetings.learning_rate = 1",
     "--gin_param 'TaskSetings.learning_rate = 1': No configurable matching 'TaskSetings'. "
     "Did you mean 'TaskSettings'"),
    ("relative_position.batch_sise = 8",
     "--gin_param 'relative_position.batch_sise = 8': Configurable 'relative_position' doesn't "
     "have a parameter named 'batch_sise'. Did you mean 'batch_size' or 'patch_size'?"),
    ("TaskSettings.learning_rate = fast",
     "--gin_param 'TaskSettings.learning_rate = fast': not a Python literal. Gin values are "
     "Python literals (strings quoted: 'fast'"),
    ("TaskSettings.learning_rate 1e-4",
     "--gin_param 'TaskSettings.learning_rate 1e-4': Couldn't parse statement, expected ':' or "
     "'='."),
])
def test_a_binding_gin_cannot_place_is_named_with_close_matches(binding, message):
  with pytest.raises(ValueError) as raised:
    common.parse_gin(["experiments/demo.gin"], [binding])
  assert str(raised.value).startswith(message)
  assert "\n" not in str(raised.value)


def test_a_mistake_in_a_gin_file_names_the_file_and_line(tmp_path):
  path = tmp_path / "mine.gin"
  path.write_text("include 'experiments/demo.gin'\nTaskSettings.weight = 'two\n")
  with pytest.raises(ValueError, match=rf"^{path}, line 2: \"TaskSettings.weight = 'two\": "
                     r"Unable to parse value\. Gin values are Python literals"):
    common.parse_gin([str(path)], [])


@pytest.mark.parametrize("binding, message", [
    ("TaskSettings.learning_rate = 'fast'",
     "TaskSettings.learning_rate = 'fast': expects a number (default 1e-05), got str; bind it "
     "unquoted as in `TaskSettings.learning_rate = 1e-05`."),
    ("exemplar/TaskSettings.accumulation_steps = 2.5",
     "exemplar/TaskSettings.accumulation_steps = 2.5: expects an integer (default 1), got "
     "float; bind it as in `exemplar/TaskSettings.accumulation_steps = 1`."),
    ("relative_position.preprocess.normalize = 1",
     "relative_position.preprocess.normalize = 1: expects True or False (default True), got "
     "int;"),
    ("Trunk.depth = True",
     "Trunk.depth = True: expects an integer (default 101), got bool;"),
])
def test_a_value_of_the_wrong_type_is_named_by_its_binding_when_parsed(binding, message):
  with pytest.raises(validate.SettingError) as raised:
    common.parse_gin(["experiments/demo.gin"], [binding])
  assert str(raised.value).startswith(message)


def test_a_task_setting_of_the_wrong_type_through_a_macro_is_named_when_built():
  # A macro's value is only known when the configurable is called: the parse-time check cannot
  # see it, the task's settings are checked when read.
  common.parse_gin(["experiments/demo.gin"], ["RATE = 'fast'",
                                              "exemplar/TaskSettings.learning_rate = %RATE"])
  with pytest.raises(validate.SettingError, match=r"^exemplar/TaskSettings\.learning_rate = "
                     r"'fast': expects a number"):
    training.task_settings("exemplar")
  assert training.task_settings("colorization").learning_rate == 3e-4  # demo.gin's


def test_right_types_and_none_pass():
  common.parse_gin(["experiments/demo.gin"], [
      "TaskSettings.learning_rate = 1",  # an int where a float is the default
      "MultiTaskTrainer.checkpoint_every_secs = None",  # None: off
      "relative_position.batch_size = 8", "exemplar/TaskSettings.weight = 2"])


def test_gin_include_lookups_log_no_false_errors(caplog, tmp_path):
  with caplog.at_level(logging.DEBUG):
    common.parse_gin(["experiments/demo.gin"], [])
  assert not [r for r in caplog.records if "Path not found" in r.getMessage() or
              "system_path_file_exists" in r.getMessage()]
  # An include that is nowhere still fails, naming where gin looked.
  gin.clear_config()
  path = tmp_path / "mine.gin"
  path.write_text("include 'tasks/jigsaw.gin'\n")
  with pytest.raises(OSError, match=r"Unable to open file: tasks/jigsaw.gin\. Searched config "
                     r"paths: .*gin'\]"):
    common.parse_gin([str(path)], [])


# --- tasks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, kwargs, message", [
    ("relative_position", {"batch_size": "sixteen"},
     "relative_position.batch_size = 'sixteen': expects an integer (default 32), got str"),
    ("relative_position", {"batch_size": 0},
     "relative_position.batch_size = 0: expects a positive integer"),
    ("exemplar", {"patch_size": 3.5},
     "exemplar.patch_size = 3.5: expects an integer (default 96), got float"),
    ("motion_segmentation", {"head_width": "wide"},
     "motion_segmentation.head_width = 'wide': expects an integer (default 256), got str"),
])
def test_a_task_checks_its_constructor_arguments(task, kwargs, message):
  with pytest.raises(validate.SettingError) as raised:
    base.get(task)(trunk_lib.Trunk(depth=26), **kwargs)
  assert str(raised.value).startswith(message)


def test_checked_constructors_keep_their_signature_for_gin():
  """gin still knows each task's parameters: typos fail, defaults reach the operative config."""
  common.parse_gin([], ["relative_position.batch_size = 8"])
  task = base.get("relative_position")(trunk_lib.Trunk(depth=26), patch_size=32)
  assert (task.batch_size, task.patch_size, task.pairs_per_image) == (8, 32, 1)
  assert "relative_position.fc_width = 1024" in gin.operative_config_str()
  with gin.unlock_config():
    with pytest.raises(ValueError, match="doesn't have a parameter named 'batch_sise'"):
      gin.parse_config("relative_position.batch_sise = 8")


def test_a_batch_that_does_not_divide_among_replicas_is_named():
  task = base.get("relative_position")(trunk_lib.Trunk(depth=26), batch_size=16)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=3)
  with pytest.raises(validate.SettingError, match=r"^relative_position.batch_size = 16 does "
                     r"not divide among 3 replicas; bind a multiple of 3\.$"):
    task.per_replica_batch(context)
  assert task.per_replica_batch(tf.distribute.InputContext(num_replicas_in_sync=4)) == 4


# --- helpers -----------------------------------------------------------------------------------


def test_one_line_folds_tensorflow_and_gin_context():
  error = tf.errors.InvalidArgumentError(
      None, None, "Cannot batch tensors with different shapes\n\t [[{{node IteratorGetNext}}]]")
  assert common.one_line(error) == "Cannot batch tensors with different shapes"
  error = ValueError("No configurable matching 'X'.\n  In bindings string line 1\n    X.y = 1\n"
                     "    ^\n  In call to configurable 'f' (<function f at 0x1>)")
  assert common.one_line(error) == "No configurable matching 'X'. In bindings string line 1 " \
                                   "X.y = 1"
  assert common.one_line(KeyError("Unknown task 'jigsaw'")) == "Unknown task 'jigsaw'"


@pytest.mark.parametrize("argv, environ, verbose", [
    (["train"], {}, False),
    (["train", "--verbose"], {}, True),
    (["train", "--verbose=false"], {}, False),
    (["train", "--verbose", "--noverbose"], {}, False),
    (["train", "--", "--verbose"], {}, False),
    (["train"], {"MTSSL_VERBOSE": "1"}, True),
])
def test_verbose_is_read_before_flags_are_parsed(argv, environ, verbose):
  assert common._verbose_requested(argv, environ) == verbose  # pylint: disable=protected-access
