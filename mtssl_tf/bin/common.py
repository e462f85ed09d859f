"""What the absl binaries share: gin flags and parsing, a quiet console, one-line errors.

Import this module before anything that imports TensorFlow (the binaries import it first): it
sets TensorFlow's C++ log level to errors only and drops the CUDA plugins' duplicate-factory
lines that importing TensorFlow prints, unless `--verbose` (or the environment variable
MTSSL_VERBOSE=1) asks for everything. `run(main, program)` runs a binary's `main` with absl:
an error ends it with one line on stderr, `<program>: <what went wrong and how to fix it>`,
and exit status 1; `--verbose` shows the traceback instead.
"""

import difflib
import logging as std_logging
import os
import re
import sys
import tempfile
import warnings


def _verbose_requested(argv=None, environ=None):
  """Whether --verbose is on the command line or MTSSL_VERBOSE in the environment.

  Read before flags are parsed, to decide how to import TensorFlow.
  """
  argv = sys.argv if argv is None else argv
  environ = os.environ if environ is None else environ
  if environ.get("MTSSL_VERBOSE", "").lower() in ("1", "true", "yes"):
    return True
  verbose = False
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg in ("--verbose", "-verbose", "--verbose=true", "--verbose=1", "--verbose=True"):
      verbose = True
    elif arg in ("--noverbose", "--verbose=false", "--verbose=0", "--verbose=False"):
      verbose = False
  return verbose


# Lines that importing TensorFlow 2.15 prints where the CUDA libraries are installed: each
# plugin registers its factory twice and says so at error level, harmlessly.
_IMPORT_NOISE = re.compile(r"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to "
                           r"register factory for plugin cu\w+ when one has already been "
                           r"registered")


def _import_tensorflow_quietly():
  """Imports TensorFlow with fd 2 captured, and replays what it printed, less the noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not _IMPORT_NOISE.search(line):
          sys.stderr.write(line)


if "tensorflow" not in sys.modules and not _verbose_requested():
  # INFO and WARNING lines of TensorFlow's C++ code (CPU features, TensorRT missing, CUDA
  # absent): errors still show. A value the user set is kept.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # google.api_core, imported by TensorFlow, warns about Python versions it will drop.
  warnings.filterwarnings("ignore", message=r"You are using a Python version .* which Google "
                          r"will stop supporting", category=FutureWarning)
  _import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import gin
import tensorflow as tf

from mtssl_tf import supervise
from mtssl_tf import validate
# pylint: enable=g-import-not-at-top,wrong-import-position

# The repository's gin/ directory, searched for relative --gin_file paths after the cwd.
GIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "gin")

flags.DEFINE_bool("verbose", False, "On an error, show the traceback (not one line), and show "
                  "TensorFlow's own start-up and deprecation messages. Also MTSSL_VERBOSE=1.")
FLAGS = flags.FLAGS

# Deprecation warnings of the TF1 code that slim's layers run on (tf_slim calls
# `layer.apply` and reads `layer.updates`); nothing a user of the binaries can act on.
_DEPRECATIONS = (r"`layer\.apply` is deprecated", r"`layer\.updates` will be removed")
# Errors whose message says what to fix; others also get the hint that --verbose shows more.
_EXPLAINED = (ValueError, TypeError, KeyError, OSError, SyntaxError, RuntimeError,
              tf.errors.OpError)


def define_gin_flags():
  """Defines --gin_file and --gin_param."""
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin config files, applied in order. Relative paths are looked up in the "
      "current directory, then in the repository's gin/ directory.")
  flags.DEFINE_multi_string(
      "gin_param", [], "Gin bindings applied after the files, e.g. "
      "'TaskSettings.learning_rate = 1e-4'.")


class _GinIncludeNoise(std_logging.Filter):
  """Drops gin's false alarms while it looks for an include.

  For `include 'tasks/colorization.gin'` gin asks its Python-package reader about the path as
  given before it tries the search path (gin/), and that reader logs "Path not found" at error
  level although the search path then has the file. An include found nowhere still fails, with
  gin's "Unable to open file" naming the paths searched.
  """

  _MESSAGES = ("system_path_file_exists:%s", "Path not found: %s")

  def filter(self, record):
    return not (record.module == "resource_reader" and record.msg in self._MESSAGES)


_INCLUDE_NOISE = _GinIncludeNoise()


def _close_matches(word, candidates):
  matches = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=0.6)
  return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def _gin_suggestion(message):
  """A "did you mean" for gin's unknown-configurable and unknown-parameter errors."""
  # pylint: disable=protected-access
  unknown = re.match(r"No configurable matching '([^']+)'", message)
  if unknown:
    names = [c.name for _, c in gin.config._REGISTRY.items()]
    return _close_matches(unknown.group(1).rsplit(".", 1)[-1], names)
  parameter = re.match(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'",
                       message)
  if parameter:
    configurable = gin.config._REGISTRY.get_match(parameter.group(1))
    if configurable is not None:
      try:
        names = validate.defaults(configurable.wrapped)
      except (TypeError, ValueError):
        return ""
      return _close_matches(parameter.group(2), names)
  if re.match(r"Configurable '[^']*Trunk' has denylisted kwarg 'output_stride'", message):
    return (" Each task and evaluation calls the trunk at the paper's stride for it; an "
            "export's stride is mtssl-export --output_stride.")
  return ""


def one_line(error):
  """An exception's message on one line: gin's and TensorFlow's context lines folded in."""
  if isinstance(error, tf.errors.OpError):
    text = error.message
  elif isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0]
  elif isinstance(error, SyntaxError):  # without str()'s "(file, line n)"; callers say where
    text = error.msg
  else:
    text = str(error)
  lines = []
  for line in text.splitlines():
    line = line.strip()
    # Carets under a gin binding; TensorFlow's graph node names; gin's "In call to
    # configurable 'x' (<class ...>)", which the message already names.
    if (not line or set(line) <= {"^"} or line.startswith("[[") or
        line.startswith("In call to configurable")):
      continue
    lines.append(line)
  return " ".join(lines) or type(error).__name__


def _gin_syntax_error(error, binding=None):
  """One line for a gin parse error: where, what, and how gin values are written."""
  reason = one_line(error).split(" Failed to parse token")[0].rstrip(".")
  if reason.startswith("malformed node or string"):
    reason = "not a Python literal"
  where = (f"--gin_param {binding!r}" if binding is not None else
           f"{error.filename}, line {error.lineno}: {(error.text or '').strip()!r}")
  return (f"{where}: {reason}. Gin values are Python literals (strings quoted: 'fast'; "
          "numbers, True, None unquoted) or @references.")


def parse_gin(gin_files, gin_params):
  """Parses gin files and bindings, then checks the bound values' types.

  Raises:
    FileNotFoundError: when a --gin_file exists neither as given nor under gin/.
    ValueError: for a binding gin cannot parse or place (naming it, with close matches for a
      misspelt name), or a value of the wrong type (`validate.SettingError`).
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
  # gin's search path is global; add gin/ once however often parsing happens.
  if GIN_ROOT not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
    gin.add_config_file_search_path(GIN_ROOT)
  root_logger = std_logging.getLogger()
  root_logger.addFilter(_INCLUDE_NOISE)
  try:
    for path in resolved:
      try:
        gin.parse_config_file(path)
      except SyntaxError as e:
        raise ValueError(_gin_syntax_error(e)) from e
      except ValueError as e:
        raise ValueError(one_line(e) + _gin_suggestion(str(e))) from e
  finally:
    root_logger.removeFilter(_INCLUDE_NOISE)
  for binding in gin_params:
    try:
      gin.parse_config(binding)
    except SyntaxError as e:
      raise ValueError(_gin_syntax_error(e, binding)) from e
    except ValueError as e:
      raise ValueError(f"--gin_param {binding!r}: {str(e).splitlines()[0]}"
                       f"{_gin_suggestion(str(e))}") from e
  gin.finalize()
  validate.check_gin_bindings()
  logging.info("Gin files %s, bindings %s", resolved, gin_params)


def _quiet_console():
  """Short log prefixes and no deprecation warnings that only slim's internals cause."""
  for message in _DEPRECATIONS:
    warnings.filterwarnings("ignore", message=message, category=UserWarning)
  logging.get_absl_handler().setFormatter(supervise.ConsoleFormatter())
  # TensorFlow's Python INFO lines (each collective's size under MultiWorkerMirroredStrategy,
  # twice: through its own handler and absl's); its warnings and errors still show.
  std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def with_flags(message, flag_for):
  """`message` (which names library settings) followed by the binary's flags for those it names.

  Args:
    message: one line, e.g. "... use a new run_training.model_dir ...".
    flag_for: {library setting: the binary's flag that sets it}, e.g.
      {"run_training.model_dir": "--model_dir"}.
  """
  named = [f"{flag} sets {name}" for name, flag in (flag_for or {}).items() if name in message]
  return f"{message} ({'; '.join(named)})" if named else message


def run(main, program, flag_for=None):
  """Runs `main` under absl's `app.run`; an error ends the program with one line.

  Args:
    main: the binary's main(argv).
    program: its name as typed, e.g. "mtssl-train", prefixed to error lines.
    flag_for: {library setting: flag} for `with_flags`: library errors name gin settings and
      arguments; the line the user sees adds the binary's flag for each.
  """

  def guarded_main(argv):
    verbose = FLAGS.verbose or _verbose_requested([], os.environ)
    if not verbose:
      _quiet_console()
    try:
      return main(argv)
    except app.UsageError:
      raise  # absl prints it with the usage hint
    except Exception as e:  # pylint: disable=broad-except
      if verbose:
        raise
      message = with_flags(one_line(e), flag_for)
      if not isinstance(e, _EXPLAINED):
        message = f"{type(e).__name__}: {message} (--verbose shows the traceback)"
      print(f"{program}: {message}", file=sys.stderr)
      return 1

  app.run(guarded_main)
