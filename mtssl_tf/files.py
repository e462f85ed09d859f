"""Writing files so that a reader never sees half of one: the file is written under a temporary
name next to its target, then renamed over the target (`os.replace` is atomic on POSIX; on
object stores `tf.io.gfile.rename` replaces the whole object). A killed writer leaves at most the
temporary file, named `temporary_name(target)`, which the writers' resumes recognise and remove."""

import contextlib
import os
import re


def temporary_name(path):
  """Where a file being written to `path` lives until it is complete: "<path>.tmp-<pid>".

  One writer per target per process: two threads of one process must not write the same path.
  """
  return f"{path}.tmp-{os.getpid()}"


def is_temporary(name, target_pattern):
  """Whether file name `name` is `temporary_name` of a file whose name matches `target_pattern`
  (a regular expression for the target's base name)."""
  return re.fullmatch(rf"(?:{target_pattern})\.tmp-\d+", name) is not None


def _is_remote(path):
  return "://" in path


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path to write `path`'s contents to; renames it to `path` on success.

  The writer opens the yielded path itself (e.g. a `tf.io.TFRecordWriter`). Local files are
  synced to disk before the rename, so that a crash after it cannot leave an empty target. On
  any error or interrupt the temporary file is removed and `path` is left as it was.

  Args:
    path: the file to (re)write: local, or a `tf.io.gfile` URL ("gs://..."); a local target's
      directory is created if needed.
  """
  tmp = temporary_name(path)
  if _is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    exists, remove = tf.io.gfile.exists, tf.io.gfile.remove
  else:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    exists, remove = os.path.exists, os.remove
  try:
    yield tmp
    if _is_remote(path):
      tf.io.gfile.rename(tmp, path, overwrite=True)
    else:
      fd = os.open(tmp, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
      os.replace(tmp, path)
  except BaseException:
    if exists(tmp):
      remove(tmp)
    raise


def write_atomically(path, write_fn, mode="w"):
  """Calls `write_fn(f)` on a file opened for `path` that appears there only when complete.

  Args:
    path: as in `atomic_path`.
    write_fn: function(file object) that writes the contents.
    mode: "w" for text, "wb" for bytes.
  """
  with atomic_path(path) as tmp:
    if _is_remote(path):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with tf.io.gfile.GFile(tmp, mode) as f:
        write_fn(f)
    else:
      with open(tmp, mode) as f:
        write_fn(f)
