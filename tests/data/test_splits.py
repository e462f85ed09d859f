"""Tests of TFDS split checking and split sizes (mtssl_tf/data/splits.py), all offline."""

import inspect
import logging
import pathlib
import re

from absl import logging as absl_logging
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtssl_tf.data import sources
from mtssl_tf.data import splits
from mtssl_tf.evals import base as evals_base
from mtssl_tf.tasks import base as tasks_base

_REPO = pathlib.Path(__file__).resolve().parents[2]
_TINY = "mtssl_tiny_splits"
# Examples per split of the tiny dataset the tests prepare.
_TINY_SIZES = {"train": 10, "validation": 4, "test": 3}


class MtsslTinySplits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A dataset of integers: 10 train, 4 validation and 3 test examples.

  Unregistered, so TFDS reads it back from its prepared files alone, without builder code, as
  a dataset prepared elsewhere.
  """

  VERSION = tfds.core.Version("1.0.0")
  # No files of its own (checksums, metadata) next to its code: TFDS would otherwise locate
  # this test module through importlib resources.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict({"x": np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(size) for split, size in _TINY_SIZES.items()}

  def _generate_examples(self, size):
    for i in range(size):
      yield i, {"x": i}


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  MtsslTinySplits(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return str(data_dir)


# --- declared splits ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    # TFDS's VOC: train 2,501, validation 2,510, test 4,952 images (VOC07 trainval = train +
    # validation); NYU: train 47,584 frames, validation the 654 test images; ImageNet: train,
    # validation (50,000) and, from version 5.1.0, test (images without labels).
    ("voc/2007", {"train", "validation", "test"}),
    ("nyu_depth_v2", {"train", "validation"}),
    ("imagenet2012", {"train", "validation", "test"}),
])
def test_declared_splits_of_the_papers_datasets(name, expected):
  assert splits.declared_splits(name) == expected


def test_imagenet_splits_come_from_its_source_without_the_manual_download():
  # ImageNet's _split_generators reads the tars in manual_dir: offline it cannot run, and the
  # names come from its source instead.
  # pylint: disable=protected-access
  builder = tfds.builder("imagenet2012")
  assert splits._splits_from_generators(builder) is None
  assert splits._splits_from_source(builder) == {"train", "validation", "test"}
  # Where the builder runs offline, its source says the same as its run.
  voc = tfds.builder("voc/2007")
  assert splits._splits_from_source(voc) == splits._splits_from_generators(voc)


def test_reading_splits_leaves_absl_logging_as_it_was(caplog):
  # ImageNet's builder warns about its empty manual_dir while its splits are read; silencing
  # that must not leave a level on absl's logger, or later INFO lines (progress) disappear.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  splits.declared_splits("imagenet2012")
  assert absl_logger.level == level
  caplog.set_level(logging.INFO, logger="absl")
  absl_logging.info("after reading splits")
  assert "after reading splits" in caplog.text


def test_declared_splits_of_a_dataset_without_code_are_its_prepared_ones(tiny_data_dir):
  assert splits.declared_splits(_TINY, data_dir=tiny_data_dir) == set(_TINY_SIZES)


def test_unknown_dataset_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset'") as error:
    splits.check_split("no_such_dataset", "train", data_dir=str(tmp_path))
  assert "\n" not in str(error.value)


# --- check_split -------------------------------------------------------------------------------


@pytest.mark.parametrize("split,names", [
    ("train+validation", ["train", "validation"]),
    ("train[:10%] + test", ["train", "test"]),
    ("validation[:50]", ["validation"]),
    ("test[-5%:]+train[10:20]+validation", ["test", "train", "validation"]),
    ("all", ["all"]),
    (tfds.Split.TEST, ["test"]),
    (tfds.core.ReadInstruction("train", to=10, unit="%"), ["train"]),
])
def test_check_split_accepts_expressions_of_declared_splits(split, names):
  assert splits.check_split("voc/2007", split) == names


@pytest.mark.parametrize("split,bad", [
    ("trainval", "trainval"),
    ("train+val", "val"),
    ("test[:10%]+trainval[:5]", "trainval"),
])
def test_check_split_names_dataset_split_declared_and_binding(split, bad):
  with pytest.raises(ValueError) as error:
    splits.check_split("voc/2007", split, binding="voc_detection.train_split")
  message = str(error.value)
  assert "\n" not in message
  assert f"TFDS dataset 'voc/2007' has no split '{bad}'" in message
  assert "['test', 'train', 'validation']" in message
  assert "bind voc_detection.train_split to" in message


def test_check_split_of_nyu_refuses_test():
  with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'validation'\].*"
                                       r"nyu_depth.eval_split"):
    splits.check_split("nyu_depth_v2", "test", binding="nyu_depth.eval_split")


def test_check_split_refuses_malformed_expression():
  with pytest.raises(ValueError, match=r"'train\[' of dataset 'voc/2007' is not a split .*"
                                       r"bind voc_detection.train_split"):
    splits.check_split("voc/2007", "train[", binding="voc_detection.train_split")


def test_check_split_of_a_dataset_without_code(tiny_data_dir):
  assert splits.check_split(_TINY, "train+test", data_dir=tiny_data_dir) == ["train", "test"]
  with pytest.raises(ValueError, match="no split 'trainval'"):
    splits.check_split(_TINY, "trainval", data_dir=tiny_data_dir)


# --- num_examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("split,expected", [
    ("train", 10),
    ("validation", 4),
    ("train+validation", 14),
    ("train[:50%]", 5),
    ("validation[:2]", 2),
    ("train[:30%]+test", 6),
    ("train[-3:]+validation[1:]", 6),
    ("all", 17),
])
def test_num_examples_of_a_prepared_dataset(tiny_data_dir, split, expected):
  assert splits.num_examples(_TINY, split, data_dir=tiny_data_dir) == expected
  assert splits.maybe_num_examples(_TINY, split, data_dir=tiny_data_dir) == expected


def test_num_examples_refuses_undeclared_split(tiny_data_dir):
  with pytest.raises(ValueError, match="no split 'trainval'.*bind my_eval.train_split"):
    splits.num_examples(_TINY, "trainval", data_dir=tiny_data_dir, binding="my_eval.train_split")


def test_num_examples_of_a_declared_split_that_is_not_prepared(tiny_data_dir, monkeypatch):
  # As ImageNet prepared without its test tar: declared by the code, absent from the data.
  monkeypatch.setattr(splits, "declared_splits",
                      lambda name, data_dir=None: {"train", "validation", "test", "extra"})
  with pytest.raises(splits.DataNotFoundError,
                     match=r"Split 'extra' of TFDS dataset 'mtssl_tiny_splits' is not prepared "
                           r"in .*bind my_eval.train_split to"):
    splits.num_examples(_TINY, "train+extra", data_dir=tiny_data_dir,
                        binding="my_eval.train_split")
  assert splits.maybe_num_examples(_TINY, "train+extra", data_dir=tiny_data_dir) is None


def test_num_examples_without_prepared_data_names_dataset_and_directory(tmp_path):
  data_dir = str(tmp_path / "empty")
  with pytest.raises(splits.DataNotFoundError) as error:
    splits.num_examples("voc/2007", "train+validation", data_dir=data_dir)
  message = str(error.value)
  assert "\n" not in message
  assert "TFDS dataset 'voc/2007' is not prepared in" in message
  assert f"{data_dir}/voc/2007/" in message and "tfds_split.data_dir" in message
  assert splits.maybe_num_examples("voc/2007", "train+validation", data_dir=data_dir) is None
  # A dry run without the data still catches a wrong split name.
  with pytest.raises(ValueError, match="no split 'trainval'") as error:
    splits.maybe_num_examples("voc/2007", "trainval", data_dir=data_dir)
  assert not isinstance(error.value, splits.DataNotFoundError)


# --- the defaults of the evaluations, tasks and gin files --------------------------------------


def _default(function, parameter):
  return inspect.signature(function).parameters[parameter].default


def _default_pairs():
  """(binding, dataset, split) of every TFDS split the code reads by default."""
  pairs = []
  for name in evals_base.registered():
    init = evals_base.get(name).__init__
    dataset = _default(init, "dataset")
    if dataset != "toy":
      for parameter in ("train_split", "eval_split"):
        pairs.append((f"{name}.{parameter}", dataset, _default(init, parameter)))
  for name in tasks_base.registered():
    parameters = inspect.signature(tasks_base.get(name).__init__).parameters
    if "dataset" in parameters and "split" in parameters:
      dataset = parameters["dataset"].default
      if dataset != "toy":
        pairs.append((f"{name}.split", dataset, parameters["split"].default))
  pairs.append(("image_dataset.split", _default(sources.image_dataset, "name"),
                _default(sources.image_dataset, "split")))
  return pairs


def test_default_pairs_cover_every_evaluation_and_the_imagenet_readers():
  bindings = {binding for binding, _, _ in _default_pairs()}
  assert {"imagenet_linear.train_split", "imagenet_linear.eval_split", "nyu_depth.train_split",
          "nyu_depth.eval_split", "voc_detection.train_split", "voc_detection.eval_split",
          "imagenet_labels.split", "image_dataset.split"} <= bindings


@pytest.mark.parametrize("binding,dataset,split", _default_pairs())
def test_default_splits_exist(binding, dataset, split):
  splits.check_split(dataset, split, binding=binding)


# gin bindings of a dataset or a split: `[scope/]configurable.parameter = 'value'`.
_GIN_BINDING = re.compile(
    r"^\s*(?:[\w./]+/)?(\w+)\.(dataset|name|split|train_split|eval_split)\s*=\s*"
    r"['\"]([^'\"]*)['\"]\s*$", re.M)


def _gin_pairs():
  """(file: binding, dataset, split) of every split bound in the repository's gin files."""
  datasets = {binding.split(".")[0]: dataset for binding, dataset, _ in _default_pairs()}
  pairs = []
  for path in sorted((_REPO / "gin").rglob("*.gin")):
    bound = {}
    for configurable, parameter, value in _GIN_BINDING.findall(path.read_text()):
      bound[configurable, parameter] = value
    for (configurable, parameter), split in sorted(bound.items()):
      if "split" not in parameter or configurable not in datasets:
        continue
      dataset_key = "name" if configurable == "image_dataset" else "dataset"
      dataset = bound.get((configurable, dataset_key), datasets[configurable])
      if dataset != "toy":
        pairs.append((f"{path.relative_to(_REPO)}: {configurable}.{parameter}", dataset, split))
  return pairs


@pytest.mark.parametrize("binding,dataset,split", _gin_pairs())
def test_gin_bound_splits_exist(binding, dataset, split):
  splits.check_split(dataset, split, binding=binding)
