"""TFDS split names and sizes, checked before any data is read.

A split expression such as "train+validation" or "train[:10%]" names base splits of a TFDS
dataset. Which base splits exist is part of the dataset's builder code, so it can be known
offline, without downloading or preparing anything: `declared_splits` asks the builder (its
`_split_generators`, run with a download manager that downloads nothing), and `check_split`
refuses an expression naming any other split, in one line naming the gin binding to fix. TFDS's
mock data (`tfds.testing.mock_data`, used by the tests) accepts any split name, so without this
check a split that does not exist (e.g. "trainval" for voc/2007, whose TFDS split names are
"train", "validation" and "test") would only fail on the first real run.

The size of a split is a property of the prepared data: `num_examples` reads it from the
dataset's `dataset_info.json` in the data directory (no examples are read), and raises
`DataNotFoundError` when the dataset is not prepared there; `maybe_num_examples` returns None
instead, for a dry run.
"""

import ast
import contextlib
import inspect
import logging as std_logging
import tarfile
import tempfile
import textwrap

from absl import logging
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

# TFDS's split that reads every split of a dataset; valid for any dataset.
ALL = "all"

# What a builder's `_split_generators` may raise when run with `_NoDownloadManager`: missing
# manual downloads (AssertionError, e.g. ImageNet's tars), files that are not there (OSError,
# tf.errors.NotFoundError), empty archives, or a download-manager method the fake lacks.
_SPLIT_GENERATOR_ERRORS = (AssertionError, AttributeError, NotImplementedError, OSError,
                           tarfile.TarError, tf.errors.OpError)

# Base splits found in builder code, by dataset name (the code does not change in a process).
_DECLARED_CACHE = {}


class DataNotFoundError(ValueError):
  """A TFDS dataset, or one of its splits, is not prepared in the data directory."""


class _NoDownloadManager:
  """Stands in for `tfds.download.DownloadManager` and downloads nothing.

  Every download or extraction returns a path under an empty directory and every archive
  iterates over nothing, so a builder's `_split_generators` returns its split generators
  without touching the network; builders that need manually downloaded files (ImageNet) find
  an empty `manual_dir`.
  """

  def __init__(self, root):
    self._root = epath.Path(root)

  @property
  def manual_dir(self):
    return self._root / "manual"

  @property
  def download_dir(self):
    return self._root / "downloads"

  def _paths(self, url_or_urls):
    return tfds.core.utils.map_nested(lambda _: self._root / "extracted", url_or_urls)

  download = extract = download_and_extract = _paths

  def iter_archive(self, path):
    del path
    return iter(())


@contextlib.contextmanager
def _quiet_absl():
  """Silences absl warnings, e.g. ImageNet's "split not found" for the empty manual_dir.

  A filter, not a level: `set_verbosity` would leave an explicit level on absl's logger where
  there was none (it inherits the root's), hiding INFO lines from whoever logs later.
  """
  absl_logger = logging.get_absl_logger()

  def below_error(record):
    return record.levelno >= std_logging.ERROR

  absl_logger.addFilter(below_error)
  try:
    yield
  finally:
    absl_logger.removeFilter(below_error)


def _builder(name, data_dir):
  """`tfds.builder(name)`, or a one-line ValueError when TFDS knows no such dataset."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    # TFDS's own message lists every dataset it knows, over a thousand lines.
    raise ValueError(
        f"TFDS has no dataset {name!r}: no builder code, and none prepared in data_dir="
        f"{data_dir!r} ({str(e).splitlines()[0]}).") from e


def _splits_from_generators(builder):
  """The split names `builder._split_generators` returns, or None if it cannot run offline."""
  with tempfile.TemporaryDirectory() as root, _quiet_absl():
    try:
      # pylint: disable-next=protected-access
      generators = builder._split_generators(_NoDownloadManager(root))
    except _SPLIT_GENERATOR_ERRORS as e:
      logging.info("%s: _split_generators needs data (%s: %s); reading its source instead.",
                   builder.name, type(e).__name__, e)
      return None
  if isinstance(generators, dict):  # The newer style: {split name: examples generator}.
    return frozenset(str(k) for k in generators)
  return frozenset(str(g.name) for g in generators)


def _is_split_class(node):
  """Whether an AST node is `Split` or `<module>.Split` (e.g. `tfds.Split`)."""
  return (isinstance(node, ast.Name) and node.id == "Split") or (
      isinstance(node, ast.Attribute) and node.attr == "Split")


def _splits_from_source(builder):
  """The split names written in the source of the builder's `_split_generators`.

  Finds `tfds.Split.TRAIN` and the like, `SplitGenerator(name="...")` and the string keys of a
  returned dict literal.

  Args:
    builder: a `tfds.core.DatasetBuilder` instance.

  Returns:
    A frozenset of names, or None when the source cannot be read or names none.
  """
  try:
    # pylint: disable-next=protected-access
    source = textwrap.dedent(inspect.getsource(type(builder)._split_generators))
  except (OSError, TypeError):
    return None
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Attribute) and _is_split_class(node.value):
      value = getattr(tfds.Split, node.attr, None)
      if isinstance(value, str):
        names.add(str(value))
    elif isinstance(node, ast.Call) and getattr(
        node.func, "attr", getattr(node.func, "id", None)) == "SplitGenerator":
      for keyword in node.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
          names.add(str(keyword.value.value))
    elif isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
      names.update(k.value for k in node.value.keys
                   if isinstance(k, ast.Constant) and isinstance(k.value, str))
  return frozenset(names) or None


def declared_splits(name, data_dir=None):
  """The base split names of a TFDS dataset, found offline.

  In this order: the names `_split_generators` of the dataset's builder returns when run with a
  download manager that downloads nothing (voc/2007, nyu_depth_v2); when that needs data it does
  not find (imagenet2012 reads its manually downloaded tars), the split names written in that
  method's source; for a dataset without builder code, the splits of the prepared copy in
  `data_dir`.

  Args:
    name: TFDS name, e.g. "voc/2007", "nyu_depth_v2", "imagenet2012" (config and version as
      TFDS accepts them, e.g. "voc/2007:5.0.0").
    data_dir: TFDS data directory (None: TFDS's default); only read for datasets without code.

  Returns:
    A frozenset of split names, or None when none of the above can tell (logged).

  Raises:
    ValueError: when TFDS has no code for `name` and it is not prepared in `data_dir`.
  """
  if name in _DECLARED_CACHE:
    return _DECLARED_CACHE[name]
  builder = _builder(name, data_dir)
  if hasattr(builder, "_split_generators"):
    splits = _splits_from_generators(builder) or _splits_from_source(builder)
    if splits:
      _DECLARED_CACHE[name] = splits
      return splits
  if builder.is_prepared():
    return frozenset(builder.info.splits.keys())
  logging.warning("Cannot tell the splits of TFDS dataset %r from its code or from data_dir=%r; "
                  "its split names are not checked.", name, data_dir)
  return None


def base_splits(split):
  """The base split names an expression reads, in order, e.g. "train[:10%]+test" -> [train, test].

  Args:
    split: a split expression (str or `tfds.Split`) or a `tfds.core.ReadInstruction`.

  Raises:
    ValueError: for a string that is not a TFDS split expression.
  """
  names = []
  pending = [tfds.core.ReadInstruction.from_spec(split)]
  while pending:
    node = pending.pop(0)
    if hasattr(node, "left") and hasattr(node, "right"):  # "a+b"
      pending[:0] = [node.left, node.right]
    elif hasattr(node, "split_name"):  # "a" or "a[slice]"
      names.append(str(node.split_name))
    else:  # "all"
      names.append(ALL)
  return names


def _example_splits(declared):
  """Split expressions to suggest: the training splits first, e.g. 'train+validation'."""
  ordered = sorted(declared, key=lambda s: (s != "train", s == "test", s))
  examples = [ordered[0], f"{ordered[0]}[:10%]"]
  if len(ordered) > 1:
    examples.insert(1, f"{ordered[0]}+{ordered[1]}")
  return ", ".join(repr(e) for e in examples)


def _fix(binding):
  """How an error tells the user to change the split."""
  return f"bind {binding} to" if binding else "use"


def _outside(names, available):
  """The base split names that are not in `available` ("all" is always there)."""
  return [n for n in names if n != ALL and n not in available]


def check_split(name, split, binding=None, data_dir=None):
  """Raises unless every base split that `split` reads is declared by dataset `name`.

  Args:
    name: TFDS dataset name.
    split: a split expression, e.g. "train", "train+validation", "validation[:50]", or a
      `tfds.core.ReadInstruction`.
    binding: the gin binding that set `split` (e.g. "voc_detection.train_split"), named in the
      error.
    data_dir: TFDS data directory, for datasets without builder code (see `declared_splits`).

  Returns:
    The base split names `split` reads.

  Raises:
    ValueError: one line naming the dataset, the bad split, the declared splits and `binding`,
      for a split the dataset does not declare or a malformed expression; or for an unknown
      dataset (see `declared_splits`).
  """
  fix = _fix(binding)
  try:
    names = base_splits(split)
  except ValueError as e:
    raise ValueError(
        f"TFDS split {str(split)!r} of dataset {name!r} is not a split expression "
        f"({str(e).splitlines()[0]}); {fix} a name, a sum or a slice, e.g. 'train+validation' "
        "or 'train[:10%]'.") from e
  declared = declared_splits(name, data_dir=data_dir)
  if declared is None:
    return names
  unknown = _outside(names, declared)
  if unknown:
    raise ValueError(
        f"TFDS dataset {name!r} has no split {unknown[0]!r} (in split {str(split)!r}); it "
        f"declares {sorted(declared)}: {fix} one of them or an expression such as "
        f"{_example_splits(declared)}.")
  return names


def _prepared_builder(name, data_dir):
  """The builder of a dataset prepared in `data_dir`, or DataNotFoundError naming where."""
  builder = _builder(name, data_dir)
  if not builder.is_prepared():
    raise DataNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {str(builder.data_dir)!r} (data_dir="
        f"{data_dir!r}): prepare it, e.g. `tfds build {name} --data_dir=DIR` (see WORKSPACE.md), "
        "and bind tfds_split.data_dir = DIR.")
  return builder


def num_examples(name, split, data_dir=None, binding=None):
  """The number of examples a split expression of a prepared TFDS dataset reads.

  Read from the prepared dataset's info (no examples are read); "+" adds, slices count as TFDS
  reads them (e.g. "train[:10%]" of 2,501 examples is 250).

  Args:
    name: TFDS dataset name.
    split: a split expression, e.g. "train+validation", "train[:10%]", "validation[:50]".
    data_dir: TFDS data directory (None: TFDS's default).
    binding: the gin binding that set `split`, named in errors.

  Returns:
    int, the number of examples.

  Raises:
    ValueError: for an unknown dataset or a split it does not declare (see `check_split`).
    DataNotFoundError: when the dataset, or one of the splits `split` reads, is not prepared in
      `data_dir`; names the dataset and the directory looked in.
  """
  names = check_split(name, split, binding=binding, data_dir=data_dir)
  builder = _prepared_builder(name, data_dir)
  prepared = set(builder.info.splits.keys())
  missing = _outside(names, prepared)
  if missing:
    raise DataNotFoundError(
        f"Split {missing[0]!r} of TFDS dataset {name!r} is not prepared in "
        f"{str(builder.data_dir)!r} (it has {sorted(prepared)}): prepare it again with its "
        f"data, or {_fix(binding)} a prepared split.")
  return int(builder.info.splits[split].num_examples)


def maybe_num_examples(name, split, data_dir=None, binding=None):
  """`num_examples`, or None when the data is not prepared (a bad split name still raises)."""
  try:
    return num_examples(name, split, data_dir=data_dir, binding=binding)
  except DataNotFoundError as e:
    logging.warning("%s", e)
    return None
