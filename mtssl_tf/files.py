"""Writing files so that a reader never sees half of one: a temporary file in the target's
directory, flushed and synced, then renamed over the target (`os.replace` is atomic on POSIX)."""

import os
import tempfile


def write_atomically(path, write_fn, mode="w"):
  """Calls `write_fn(f)` on a temporary file next to `path`, then renames it to `path`.

  Args:
    path: the file to (re)write; its directory is created if needed.
    write_fn: function(file object) that writes the contents.
    mode: "w" for text, "wb" for bytes.

  On any error (or interrupt) the temporary file is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
