"""Library errors name gin settings; a binary's error line adds its flag for each one named."""

import ast
import inspect
import os
import re

import pytest

from mtssl_tf import distribute
from mtssl_tf import evaluation
from mtssl_tf import training
from mtssl_tf.bin import common

_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mtssl_tf", "bin")


def _binary(name):
  """(FLAG_FOR, the flags it defines) of a binary, read from its source: two binaries cannot be
  imported into one process (each defines the shared gin flags)."""
  with open(os.path.join(_BIN, f"{name}.py")) as f:
    source = f.read()
  flag_for = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "FLAG_FOR")
  return flag_for, set(re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", source))


def test_an_error_line_gets_the_flag_of_each_setting_it_names():
  flag_for = {"run_training.model_dir": "--model_dir",
              "run_training.warm_start_from": "--warm_start_from",
              "run_training.strategy_name": "--strategy"}
  message = ("Use a new run_training.model_dir, with run_training.warm_start_from = '/runs/a' "
             "to start from this run's trunk.")
  assert common.with_flags(message, flag_for) == (
      message + " (--model_dir sets run_training.model_dir; --warm_start_from sets "
      "run_training.warm_start_from)")
  assert common.with_flags("Unknown task 'jigsaw'.", flag_for) == "Unknown task 'jigsaw'."
  assert common.with_flags("Unknown task 'jigsaw'.", None) == "Unknown task 'jigsaw'."


@pytest.mark.parametrize("binary, library", [
    ("train", {"run_training": training.run_training}),
    ("evaluate", {"evaluate": evaluation.evaluate,
                  "evaluate_directory": evaluation.evaluate_directory}),
])
def test_every_mapped_setting_and_flag_exists(binary, library):
  flag_for, defined = _binary(binary)
  assert flag_for
  for setting, flag in flag_for.items():
    function, argument = setting.split(".")
    assert argument in inspect.signature(library[function]).parameters, setting
    assert flag[2:] in defined, flag


def test_library_errors_name_settings_not_flags(tmp_path):
  with pytest.raises(ValueError) as raised:
    evaluation.Evaluator("nyu_depth")
  assert "evaluate.checkpoint" in str(raised.value) and "--" not in str(raised.value)
  assert common.with_flags(str(raised.value), _binary("evaluate")[0]).endswith(
      "(--checkpoint sets evaluate.checkpoint; --init sets evaluate.init)")
  with pytest.raises(ValueError, match=r"^evaluate_directory\.checkpoint_dir = '.*' is not a "):
    evaluation.evaluate_directory("nyu_depth", str(tmp_path / "missing"), str(tmp_path / "out"))
  with pytest.raises(ValueError) as raised:
    distribute.make_strategy("tpu")
  assert "run_training.strategy_name" in str(raised.value) and "--" not in str(raised.value)
