"""The gin files parse, bind what they say, and build their tasks."""

import glob
import os

import gin
import numpy as np
import pytest

from mtssl_tf import color
from mtssl_tf import trunk as trunk_lib
from mtssl_tf import validate
from mtssl_tf.bin import common
from mtssl_tf.tasks import base
from mtssl_tf.tasks import colorization
from mtssl_tf.tasks import relative_position

TASK_FILES = sorted(
    os.path.basename(p)[:-len(".gin")]
    for p in glob.glob(os.path.join(common.GIN_ROOT, "tasks", "*.gin")))
# Files under gin/tasks/ that modify a task rather than define one.
MODIFIERS = {"harmonized"}


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_every_task_has_a_gin_file():
  assert set(base.registered()) <= set(TASK_FILES)


@pytest.mark.parametrize("name", sorted(set(TASK_FILES) - MODIFIERS))
def test_task_file_builds_its_task_with_its_bindings(name):
  common.parse_gin(["trunk/demo.gin", f"tasks/{name}.gin"], [])
  trunk = trunk_lib.Trunk()
  assert trunk.depth == 26
  task = base.get(name)(trunk)
  assert task.batch_size == gin.query_parameter(f"{name}.batch_size")


def test_harmonized_file_switches_relative_position_to_lightness():
  common.parse_gin(["trunk/demo.gin", "tasks/relative_position.gin", "tasks/harmonized.gin"],
                   ["relative_position.preprocess.gap = 8",
                    "relative_position.preprocess.jitter = 3"])
  image = np.random.RandomState(0).randint(0, 256, [80, 80, 3]).astype(np.uint8)
  features = relative_position.preprocess({"image": image}, patch_size=16)
  # Normalized patches (relative_position.gin) reach the trunk as they are: L in every channel.
  patches = features["relative_position/patches"].numpy()
  np.testing.assert_allclose(patches[..., 0], patches[..., 1], atol=1e-3)
  np.testing.assert_allclose(patches[..., 0], patches[..., 2], atol=1e-3)


EXPERIMENTS = sorted(
    os.path.relpath(p, common.GIN_ROOT)
    for p in glob.glob(os.path.join(common.GIN_ROOT, "experiments", "*.gin")))


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_file_parses_and_says_what_it_reproduces(path):
  with open(os.path.join(common.GIN_ROOT, path)) as f:
    text = f.read()
  assert text.startswith("# "), "an experiment opens with a comment"
  assert "mtssl-train --gin_file=" in text or "mtssl-demo" in text
  common.parse_gin([path], [])
  tasks = gin.query_parameter("MultiTaskTrainer.tasks")
  assert tasks and set(tasks) <= set(base.registered())


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiments_training_colorization_on_real_images_bind_its_prior(path):
  common.parse_gin([path], [])
  if "colorization" not in gin.query_parameter("MultiTaskTrainer.tasks"):
    return
  try:
    source = gin.query_parameter("image_dataset.source")
  except ValueError:
    source = "toy"  # image_dataset's default.
  if source == "toy":  # The demo, which computes its prior when it runs (mtssl-demo).
    assert path == "experiments/demo.gin"
    return
  # Through pretrain.gin's macro, next to the motion segmentation data (WORKSPACE.md, Data).
  assert str(gin.query_parameter("colorization.prior_path")) == "%COLOR_PRIOR_PATH"
  prior_path = gin.query_parameter("%COLOR_PRIOR_PATH")
  assert prior_path == "/data/color_prior/imagenet_prior.npy"
  # The task reads that binding: it asks for the file, not for a prior.
  with pytest.raises(ValueError, match=f"colorization.prior_path '{prior_path}' does not exist"):
    colorization.Colorization(trunk_lib.Trunk(depth=26))


def test_the_lasso_experiment_builds_its_trainer_on_toy_data(tmp_path):
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top
  from tests import test_training  # pylint: disable=g-import-not-at-top
  prior = str(tmp_path / "prior.npy")
  np.save(prior, np.full([color.NUM_BINS], 1.0 / color.NUM_BINS))
  common.parse_gin(["experiments/rp_col_ex_ms_lasso.gin"],
                   test_training.TINY + ["motion_dataset.source = 'toy'",
                                         f"COLOR_PRIOR_PATH = '{prior}'"])
  trainer = training.MultiTaskTrainer(str(tmp_path))
  assert trainer.names == ["relative_position", "colorization", "exemplar",
                           "motion_segmentation"]
  assert trainer.lasso is not None and trainer.lasso.matrix().shape == (4, 2)
  assert trainer.checkpoint_every_compute == 8.64e6
  assert trainer.settings["relative_position"].cost_per_step == 31.5


def test_harmonized_experiments_switch_relative_position_to_lightness():
  for path in ("experiments/rp_harmonized.gin", "experiments/rp_col_harmonized.gin"):
    gin.clear_config()
    common.parse_gin([path], [])
    assert gin.query_parameter("relative_position.preprocess.color_mode") == "harmonized"
  gin.clear_config()
  common.parse_gin(["experiments/rp.gin"], [])
  assert gin.query_parameter("relative_position.preprocess.color_mode") == "drop"


EVAL_FILES = sorted(
    os.path.basename(p)[:-len(".gin")]
    for p in glob.glob(os.path.join(common.GIN_ROOT, "evals", "*.gin")))


def test_every_evaluation_has_a_protocol_file():
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  assert EVAL_FILES == evals_base.registered()


def _same(a, b):
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b and type(a) is type(b) or (isinstance(a, float) and a == b)


@pytest.mark.parametrize("name", EVAL_FILES)
def test_protocol_file_restates_the_code_defaults(name):
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  with open(os.path.join(common.GIN_ROOT, "evals", f"{name}.gin")) as f:
    text = f.read()
  assert text.startswith("#")
  assert f"mtssl-evaluate --eval={name} --gin_file=evals/{name}.gin" in text
  common.parse_gin([f"evals/{name}.gin"], [])
  protocol = evals_base.get(name).protocol
  bound_settings = set()
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    configurable = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
    for param, value in params.items():
      if selector.endswith("EvalSettings"):
        assert scope == name, f"{selector}.{param} bound outside the {name} scope"
        bound_settings.add(param)
        expected = protocol[param]
      else:
        expected = validate.defaults(configurable.wrapped)[param]
      assert _same(value, expected), (f"{scope}/{selector}.{param} = {value!r} in the gin "
                                      f"file, {expected!r} in the code")
  assert bound_settings == set(protocol), "the file must restate the whole protocol"
