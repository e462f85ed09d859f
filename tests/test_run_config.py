"""Tests of resuming a model directory under a changed configuration, and of warm starts."""

import hashlib
import logging
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import run_config
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from tests import test_training
from tests.conftest import untraced_steps

# One worker runs the module: the tests share `old_run`.
pytestmark = pytest.mark.xdist_group("test_run_config")

# The configuration of the run whose directory the tests resume: two tasks with tiny heads on
# the small trunk, one step (relative position's), one checkpoint (ckpt-1) that holds both tasks.
OLD = test_training.TINY + [
    "MultiTaskTrainer.tasks = ['relative_position', 'exemplar']",
    "TaskSettings.learning_rate = 3e-4",
    "run_training.num_steps = 1",
]


def _parse(*bindings):
  gin.clear_config()
  common.parse_gin([], OLD + list(bindings))


@pytest.fixture(autouse=True)
def _gin():
  # What the loop does around its steps is under test here, not the steps: they run untraced.
  with untraced_steps():
    yield
  gin.clear_config()


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
  """(model directory, its trunk's variables by name) of a one-step run."""
  model_dir = str(tmp_path_factory.mktemp("old_run"))
  _parse()
  with untraced_steps():
    trainer, summary = training.run_training(model_dir)
  gin.clear_config()
  assert summary["step"] == 1
  return model_dir, {v.name: v.numpy() for v in trainer.trunk.variables}


def _hashes(folder):
  """{relative path: sha256} of every file under folder."""
  hashes = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return hashes


def _resume(model_dir):
  """The allowed changes (check_resume only reads), then what mtssl-train does: run_training."""
  changes = run_config.check_resume(model_dir)
  trainer, summary = training.run_training(model_dir)
  return changes, trainer, summary


# Each configuration also trains one more step (allowed), so that a resume that went ahead
# would write a checkpoint and the operative config.
@pytest.mark.parametrize("bindings, refused", [
    (["MultiTaskTrainer.tasks = ['relative_position']"],
     [("MultiTaskTrainer.tasks", "['relative_position', 'exemplar']", "['relative_position']")]),
    (["MultiTaskTrainer.tasks = ['exemplar', 'relative_position']"],
     [("MultiTaskTrainer.tasks", "['relative_position', 'exemplar']",
       "['exemplar', 'relative_position']")]),
    (["Trunk.depth = 50"], [("Trunk.depth", "26", "50")]),
    (["relative_position.fc_width = 32"],
     [("relative_position/relative_position.fc_width", "16", "32")]),
    (["exemplar/exemplar.embedding_size = 4"], [("exemplar/exemplar.embedding_size", "8", "4")]),
    (["MultiTaskTrainer.use_lasso = True"], [("MultiTaskTrainer.use_lasso", "False", "True")]),
    (["exemplar/TaskSettings.accumulation_steps = 2"],
     [("exemplar/TaskSettings.accumulation_steps", "1", "2")]),
    (["Trunk.depth = 50", "exemplar.head_width = 32", "TaskSettings.learning_rate = 1e-4"],
     [("exemplar/exemplar.head_width", "16", "32"), ("Trunk.depth", "26", "50")]),
])
def test_a_change_to_what_the_checkpoint_holds_is_refused_and_the_directory_untouched(
    old_run, bindings, refused):
  model_dir, _ = old_run
  before = _hashes(model_dir)
  _parse("run_training.num_steps = 2", *bindings)
  with pytest.raises(run_config.ConfigChanged) as error:
    training.run_training(model_dir)  # as mtssl-train calls it
  assert sorted(error.value.changes) == sorted(refused)
  message = str(error.value)
  for binding, old, new in refused:
    assert f"{binding}: {old} in its operative_config.gin, now {new}" in message
  assert "learning_rate" not in message and "num_steps" not in message
  assert "run_training.model_dir" in message
  assert f"run_training.warm_start_from = '{model_dir}'" in message
  assert _hashes(model_dir) == before


def test_allowed_changes_are_returned_and_the_run_resumes(old_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(old_run[0], model_dir)
  _parse("run_training.num_steps = 2", "TaskSettings.learning_rate = 1e-4",
         "MultiTaskTrainer.checkpoint_every_secs = 30.0",
         "MultiTaskTrainer.max_checkpoints_to_keep = 3", "relative_position.batch_size = 2")
  changes, trainer, summary = _resume(model_dir)
  assert sorted(changes) == sorted([
      ("run_training.num_steps", "1", "2"),
      ("relative_position/TaskSettings.learning_rate", "0.0003", "0.0001"),
      ("exemplar/TaskSettings.learning_rate", "0.0003", "0.0001"),
      ("MultiTaskTrainer.checkpoint_every_secs", "None", "30.0"),
      ("MultiTaskTrainer.max_checkpoints_to_keep", "5", "3"),
      ("relative_position/relative_position.batch_size", "4", "2"),
  ])
  assert trainer.restored_from.endswith("ckpt-1")
  assert summary["step"] == 2
  assert summary["task_steps"] == {"relative_position": 1, "exemplar": 1}
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
  assert trainer.settings["exemplar"].learning_rate == 1e-4
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    assert "relative_position/TaskSettings.learning_rate = 0.0001" in f.read()
  # The directory now resumes under its new configuration without a word.
  assert run_config.check_resume(model_dir) == []


def test_nothing_to_check_without_a_checkpoint_or_a_saved_config(old_run, tmp_path):
  _parse("Trunk.depth = 50")
  assert run_config.check_resume(str(tmp_path)) == []
  # The operative config of a run that never saved: nothing to protect.
  shutil.copy(os.path.join(old_run[0], "operative_config.gin"), tmp_path)
  assert run_config.check_resume(str(tmp_path)) == []
  # A checkpoint without a saved config cannot be checked.
  other = tmp_path / "other"
  tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(other / "ckpt"))
  before = _hashes(str(other))
  assert run_config.check_resume(str(other)) == []
  assert _hashes(str(other)) == before


def test_compare_resolves_macros_scopes_and_defaults():
  saved = "\n".join([
      "WIDTH = 16",
      "relative_position/relative_position.fc_width = %WIDTH",
      "Trunk.depth = 26",
      "Trunk.weight_decay = 0.0001",
      "relative_position/TaskSettings.learning_rate = 3e-4",
      "relative_position/TaskSettings.weight = 2.0",
      "NoSuchConfigurable.width = 1",
  ])
  gin.clear_config()
  common.parse_gin([], ["Trunk.depth = 26", "relative_position.fc_width = 16",
                        "TaskSettings.learning_rate = 1e-3",
                        "relative_position/TaskSettings.weight = 2"])
  # The macro's value, the unscoped binding seen from the task's scope, the default weight
  # decay, the unscoped learning rate; 2 == 2.0; the unknown configurable is skipped.
  assert run_config.compare(saved) == (
      [("relative_position/TaskSettings.learning_rate", "0.0003", "0.001")], [])
  gin.clear_config()
  common.parse_gin([], ["relative_position.fc_width = 32",
                        "relative_position/TaskSettings.learning_rate = 3e-4",
                        "relative_position/TaskSettings.weight = 2"])
  # Unbound now: the defaults (learning rate 1e-5 is not the saved one, depth 101).
  allowed, refused = run_config.compare(saved)
  assert allowed == []
  assert refused == [("relative_position/relative_position.fc_width", "16", "32"),
                     ("Trunk.depth", "26", "101")]


def test_may_change():
  assert run_config.may_change("mtssl_tf.training.TaskSettings", "learning_rate")
  assert not run_config.may_change("mtssl_tf.training.TaskSettings", "accumulation_steps")
  assert run_config.may_change("relative_position.preprocess", "gap")
  assert not run_config.may_change("mtssl_tf.tasks.relative_position.relative_position",
                                   "patch_size")
  assert run_config.may_change("mtssl_tf.tasks.exemplar.exemplar", "patch_size")
  assert not run_config.may_change("mtssl_tf.trunk.Trunk", "depth")
  assert not run_config.may_change("mtssl_tf.lasso.Lasso", "init")


def test_warm_start_loads_the_old_runs_trunk_only(old_run):
  model_dir, old_trunk = old_run
  trunk = trunk_lib.Trunk(depth=26)
  report = run_config.warm_start(trunk, model_dir)
  assert report.path.endswith("ckpt-1")
  assert sorted(report.loaded) == sorted(v.name.split(":")[0] for v in trunk.variables)
  assert {v.name for v in trunk.variables} == set(old_trunk)
  for v in trunk.variables:
    np.testing.assert_array_equal(v.numpy(), old_trunk[v.name])
  with pytest.raises(ValueError, match=r"depth-26 trunk, this run's is depth 50; bind "
                                       r"Trunk.depth = 26"):
    run_config.warm_start(trunk_lib.Trunk(depth=50), model_dir)


def test_warm_start_from_starts_a_new_run_from_the_old_trunk_once(old_run, tmp_path, caplog):
  old_dir, old_trunk = old_run
  new_dir = str(tmp_path / "new")
  # Another task list and head width: refused as a resume of old_dir, fine as a new run.
  _parse("MultiTaskTrainer.tasks = ['exemplar']", "exemplar.head_width = 32",
         "TaskSettings.learning_rate = 1e-3")
  trainer, summary = training.run_training(new_dir, warm_start_from=old_dir)
  assert trainer.restored_from is None and summary["task_steps"] == {"exemplar": 1}
  # One RMSProp step from the old trunk: each weight moves by at most the learning rate times
  # 1/sqrt(1 - rho) = 3.2e-3 (a mean square starting at 0; from TF1's 1, by about the learning
  # rate times the gradient); a fresh initialization is nowhere near the old trunk.
  trained = {v.name: v.numpy() for v in trainer.trunk.trainable_variables}
  for name, value in trained.items():
    np.testing.assert_allclose(value, old_trunk[name], rtol=0, atol=4e-3, err_msg=name)
  fresh = trunk_lib.Trunk(depth=26)
  fresh.ensure_built()
  weights = [v for v in fresh.trainable_variables if v.name.endswith("weights:0")]
  assert max(np.abs(v.numpy() - old_trunk[v.name]).max() for v in weights) > 0.1
  # Restarted with the same flag, the new run resumes from its own checkpoint, not the old one.
  _parse("MultiTaskTrainer.tasks = ['exemplar']", "exemplar.head_width = 32",
         "TaskSettings.learning_rate = 1e-3", "run_training.num_steps = 2")
  caplog.set_level(logging.INFO, logger="absl")
  trainer, summary = training.run_training(new_dir, warm_start_from=old_dir)
  assert trainer.restored_from.endswith("ckpt-1") and summary["step"] == 2
  assert f"resumes from its own {trainer.restored_from}" in caplog.text
