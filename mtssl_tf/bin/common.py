"""Flag and gin plumbing shared by the absl binaries (flags live only in binaries)."""

import os

from absl import flags
from absl import logging
import gin
import tensorflow as tf

# The repository's gin/ directory, searched for relative --gin_file paths after the cwd.
GIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "gin")


def define_gin_flags():
  """Defines --gin_file and --gin_param."""
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin config files, applied in order. Relative paths are looked up in the "
      "current directory, then in the repository's gin/ directory.")
  flags.DEFINE_multi_string(
      "gin_param", [], "Gin bindings applied after the files, e.g. 'Trunk.output_stride = 16'.")


def parse_gin(gin_files, gin_params):
  """Parses gin files and bindings, naming the file that is missing.

  Raises:
    FileNotFoundError: when a --gin_file exists neither as given nor under gin/.
  """
  # Every gin configurable of the library must be registered before parsing.
  from mtssl_tf import evaluation  # pylint: disable=g-import-not-at-top,unused-import
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top,unused-import
  import mtssl_tf.evals  # pylint: disable=g-import-not-at-top,unused-import
  resolved = []
  for path in gin_files:
    if not tf.io.gfile.exists(path):
      candidate = os.path.join(GIN_ROOT, path)
      if not tf.io.gfile.exists(candidate):
        raise FileNotFoundError(f"--gin_file {path} not found (also looked in {GIN_ROOT}).")
      path = candidate
    resolved.append(path)
  gin.add_config_file_search_path(GIN_ROOT)
  gin.parse_config_files_and_bindings(resolved, gin_params)
  logging.info("Gin files %s, bindings %s", resolved, gin_params)
