"""Checks of settings against the types their defaults declare, named by their gin binding.

A number bound as a string (`TaskSettings.learning_rate = 'fast'`) or a batch size of 16.5 would
otherwise surface as a TypeError deep inside TensorFlow that names neither the setting nor the
fix. The rule is the one a reader of the signature applies: a parameter whose default is a bool
takes a bool, one whose default is an int takes an integer, one whose default is a float takes a
real number. None is always accepted (several settings use it for "off"); parameters whose
default is None, a string or a container are not checked here.
"""

import functools
import inspect
import numbers

import gin


class SettingError(ValueError):
  """A setting of the wrong type or out of range; the message names its gin binding."""


def _kind(default):
  """What a parameter with this default takes: "bool", "int", "float" or None (unchecked)."""
  if isinstance(default, bool):
    return "bool"
  if isinstance(default, numbers.Integral):
    return "int"
  if isinstance(default, numbers.Real):
    return "float"
  return None


_DESCRIPTION = {"bool": "True or False", "int": "an integer", "float": "a number"}


def _fits(kind, value):
  if kind == "bool":
    return isinstance(value, bool)
  if isinstance(value, bool):  # bool is an int in Python; True is no batch size
    return False
  if kind == "int":
    return isinstance(value, numbers.Integral)
  return isinstance(value, numbers.Real)


def check_value(binding, value, default):
  """Raises `SettingError` when `value` does not have the type `default` declares.

  Args:
    binding: the gin binding that sets the value, e.g. "relative_position.batch_size".
    value: the value given.
    default: the parameter's default.

  Raises:
    SettingError: naming `binding`, the value, and what it takes.
  """
  kind = _kind(default)
  if kind is None or value is None or _fits(kind, value):
    return
  unquoted = " unquoted" if isinstance(value, (str, bytes)) else ""
  raise SettingError(f"{binding} = {value!r}: expects {_DESCRIPTION[kind]} (default "
                     f"{default!r}), got {type(value).__name__}; bind it{unquoted} as in "
                     f"`{binding} = {default!r}`.")


def defaults(fn):
  """{parameter name: default} of a function or class (its constructor) with defaults."""
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def check_arguments(fn, values, prefix):
  """Checks `values` ({parameter: value}) against `fn`'s defaults; see `check_value`.

  Args:
    fn: a function or class.
    values: the arguments given, by name; names without a default are ignored.
    prefix: the gin name the bindings start with, e.g. "relative_position/TaskSettings".

  Raises:
    SettingError: for the first value of the wrong type.
  """
  fn_defaults = defaults(fn)
  for name, value in values.items():
    if name in fn_defaults:
      check_value(f"{prefix}.{name}", value, fn_defaults[name])


def check_positive_int(binding, value):
  """Raises `SettingError` unless `value` is an integer > 0 (a batch size, say)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise SettingError(f"{binding} = {value!r}: expects a positive integer; fix the gin "
                       "binding.")


def checked_init(cls, name_fn):
  """Wraps `cls.__init__` so that its arguments are checked by `check_arguments` on every call.

  The wrapper keeps the signature (gin reads parameter names and defaults from it, for its
  checks of binding names and for the operative config).

  Args:
    cls: a class defining `__init__`.
    name_fn: function cls -> the gin name of its bindings (called at construction, when a
      registering decorator has named the class).

  Returns:
    The wrapped `__init__`.
  """
  init = cls.__init__
  signature = inspect.signature(init)

  @functools.wraps(init)
  def wrapper(self, *args, **kwargs):
    given = signature.bind_partial(self, *args, **kwargs).arguments
    given.pop(next(iter(signature.parameters)), None)  # self
    check_arguments(init, given, name_fn(cls))
    init(self, *args, **kwargs)

  wrapper.__signature__ = signature
  return wrapper


def _display_name(configurable):
  """How a user writes the configurable in gin: "Trunk", "relative_position.preprocess"."""
  module = configurable.module
  if not module or module == getattr(configurable.wrapped, "__module__", None):
    return configurable.name
  return f"{module}.{configurable.name}"


def check_gin_bindings():
  """Checks every parameter bound in the current gin config against its default's type.

  Runs after parsing, before anything is built: a wrong type fails here, in one line naming
  the binding, instead of deep inside TensorFlow. Values gin evaluates later (`@references`,
  `%macros`) are not checked.

  Raises:
    SettingError: for the first bound value of the wrong type.
  """
  # gin keeps the parsed bindings in its module state; it has no public iterator over them.
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    configurable = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
    if configurable is None:
      continue
    try:
      fn_defaults = defaults(configurable.wrapped)
    except (TypeError, ValueError):  # no inspectable signature
      continue
    prefix = (f"{scope}/" if scope else "") + _display_name(configurable)
    for name, value in params.items():
      if name in fn_defaults and isinstance(value, (bool, numbers.Number, str, bytes)):
        check_value(f"{prefix}.{name}", value, fn_defaults[name])
