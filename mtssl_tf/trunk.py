"""The common trunk (paper section 3.1): tf-slim ResNet-v2 truncated after block 3.

The trunk is built from slim's own pieces (`resnet_v2_block`, `bottleneck`,
`resnet_utils.stack_blocks_dense`) so that its variables carry exactly the names of slim's public
`resnet_v2_101` checkpoint (`resnet_v2_101/block1/unit_1/bottleneck_v2/conv1/weights`, ...). It
stops after block 3: no block 4, no `postnorm`, no logits. Its representation is the raw
(pre-activation) `block3` output with 1024 channels, as in the paper and the authors' release.

Slim is TF1 code; `Trunk` is a Keras layer whose `call` runs slim under
`track_tf1_style_variables`, so it works eagerly, inside `tf.function` and under
`tf.distribute`. Batch norm updates its moving statistics in place (`updates_collections=None`)
and only in training mode. Input follows `mtssl_tf.input_convention` (RGB, 0-255 minus the
ImageNet mean); use `to_trunk_input` first.

`init_from_checkpoint` loads slim's public checkpoint or any of ours into a built trunk and says
by name what it loaded and what it skipped.
"""

import dataclasses
import os
import re

from absl import logging
import gin
import tensorflow as tf

from mtssl_tf import input_convention
from mtssl_tf import precision
from mtssl_tf.slim_compat import resnet_utils
from mtssl_tf.slim_compat import resnet_v2
from mtssl_tf.slim_compat import slim

# Units per block for each depth. "Depth" counts the full network (3 conv layers per unit, with
# block 4's 3 units, plus the root conv and the logits), so these are slim's resnet_v2_{50,101,152};
# we build blocks 1-3 only. 26 is a small trunk for tests and the demo (1024 output channels
# still, 2 units per block).
BLOCK_UNITS = {
    26: (2, 2, 2),
    50: (3, 4, 6),
    101: (3, 4, 23),
    152: (3, 8, 36),
}
# Bottleneck width of each block; the unit output is 4x this (256, 512, 1024 channels).
_BASE_DEPTHS = (64, 128, 256)
OUTPUT_STRIDES = (8, 16, 32)
# The block-3 output of every depth.
NUM_OUTPUT_CHANNELS = 1024
# Variables of slim's full network that the trunk does not have: they are skipped on loading.
_NOT_IN_TRUNK = re.compile(r"^resnet_v2_\d+/(block[4-9]|postnorm|logits)(/|$)")
_EMA_SUFFIX = "/ExponentialMovingAverage"
# Error messages list at most this many missing variables by name.
_MAX_LISTED = 40


def scope_name(depth):
  """The variable scope of a trunk of this depth: slim's `resnet_v2_<depth>`."""
  return f"resnet_v2_{depth}"


def trunk_arg_scope(weight_decay=1e-4,
                    batch_norm_decay=0.997,
                    batch_norm_epsilon=1e-5,
                    batch_norm_scale=True):
  """slim's `resnet_arg_scope`, with batch norm updating its statistics in place.

  `resnet_utils.resnet_arg_scope` hard-codes `updates_collections=UPDATE_OPS`, whose update ops
  nobody runs in TF2; with `None` the moving averages are assigned inside the layer call.

  Args:
    weight_decay: L2 weight decay on conv weights (slim's `l2_regularizer` scale).
    batch_norm_decay: moving-average decay of batch norm statistics.
    batch_norm_epsilon: batch norm epsilon (1e-5 in slim's ResNet-v2 checkpoints).
    batch_norm_scale: whether batch norm has a gamma.

  Returns:
    A slim arg scope.
  """
  batch_norm_params = {
      "decay": batch_norm_decay,
      "epsilon": batch_norm_epsilon,
      "scale": batch_norm_scale,
      "updates_collections": None,
  }
  with slim.arg_scope(
      [slim.conv2d],
      weights_regularizer=slim.l2_regularizer(weight_decay),
      weights_initializer=slim.variance_scaling_initializer(),
      activation_fn=tf.nn.relu,
      normalizer_fn=slim.batch_norm,
      normalizer_params=batch_norm_params):
    with slim.arg_scope([slim.batch_norm], **batch_norm_params):
      with slim.arg_scope([slim.max_pool2d], padding="SAME") as arg_sc:
        return arg_sc


def block_names():
  """Names of the trunk's blocks, in order."""
  return ("block1", "block2", "block3")


def unit_endpoint_names(depth, block="block3"):
  """Endpoint names of the units of one block, e.g. ('block3/unit_1', ..., 'block3/unit_23')."""
  _check_depth(depth)
  num_units = BLOCK_UNITS[depth][block_names().index(block)]
  return tuple(f"{block}/unit_{i + 1}" for i in range(num_units))


def _check_depth(depth):
  if depth not in BLOCK_UNITS:
    raise ValueError(f"Unknown trunk depth {depth!r}: choose one of {sorted(BLOCK_UNITS)} "
                     "(gin: Trunk.depth).")


def _check_output_stride(output_stride):
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"Unknown output_stride {output_stride!r}: choose one of "
                     f"{list(OUTPUT_STRIDES)}.")


def slim_variable_getter(layer, getter, name, *args, **kwargs):
  """The custom getter of our slim layers (the trunk, block 4).

  Three jobs:
  - MirroredStrategy runs replicas 1..N-1 in threads of their own under `reuse=True`; the Keras
    shim's variable store (thread-local) is absent there and TF1's store would fail to find the
    variables. The layer's own variables are looked up by name instead.
  - Batch norm statistics are `ON_READ`/`MEAN` variables: each replica updates its own copy
    (no all-reduce per layer and step, none inside an XLA-compiled step) and a read outside the
    replicas gives their mean (`slim_compat`).
  - Under mixed precision slim asks for its conv weights in bfloat16 or float16: they are
    created float32 and handed to slim cast (`precision.float32_storage_getter`), so
    checkpoints are float32 and the same in every precision.
  """
  if kwargs.get("reuse") is True:
    existing = {v.name.split(":")[0]: v for v in layer.variables}
    if name in existing:
      dtype = kwargs.get("dtype")
      variable = existing[name]
      return variable if dtype is None or dtype == variable.dtype else precision.autocast(variable)
  if name.endswith(("/moving_mean", "/moving_variance")):
    kwargs["synchronization"] = tf.VariableSynchronization.ON_READ
    kwargs["aggregation"] = tf.VariableAggregation.MEAN
  return precision.float32_storage_getter(getter, name, *args, **kwargs)


# `output_stride` is not a gin setting: each task and evaluation calls the shared trunk at the
# stride the paper gives it (`heads.Head.output_stride`), whatever the trunk's own is, so a
# global binding would only reach callers that do not choose (see `Trunk.__init__`).
@gin.configurable(denylist=["output_stride"])
class Trunk(tf.keras.layers.Layer):
  """ResNet-v2 up to the end of block 3, returning a dict of named endpoints.

  Call it on `to_trunk_input(images)` ([batch, height, width, 3] float); it returns a dict:

    'conv1'          [B, H/2,  W/2,  64]   root conv (no BN, no ReLU: v2 pre-activation)
    'pool1'          [B, H/4,  W/4,  64]
    'block1/unit_k'  unit outputs of block 1 (256 channels), likewise block2 (512), block3 (1024)
    'block1', 'block2', 'block3'
                     block outputs: [B, H/8, W/8, 256], [B, H/16, W/16, 512],
                     [B, H/32, W/32, 1024] at output_stride 32.

  Sizes are ceil(size / stride) (SAME padding). At output_stride 16 or 8 the later units run
  atrous with the same variables. Note that block 3's stride sits in its last unit (slim's
  convention), so at output_stride 32 `block3/unit_1..N-1` are twice the size of `block3/unit_N`.

  Attributes:
    depth: 26, 50, 101 or 152.
    output_stride: 8, 16 or 32.
    scope: the variable scope, `resnet_v2_<depth>`.
  """

  def __init__(self,
               depth=101,
               output_stride=32,
               weight_decay=1e-4,
               batch_norm_decay=0.997,
               batch_norm_epsilon=1e-5,
               name="trunk",
               **kwargs):
    """Creates the trunk; variables are made on the first call.

    Args:
      depth: network depth in slim's sense; one of `BLOCK_UNITS`.
      output_stride: ratio of input to block-3 output size (8, 16 or 32) of calls that do not
        choose one: `trunk(images)` and an exported SavedModel (the `output_stride` of
        `export.export_from_checkpoint`). Tasks and evaluations pass their own to every call.
      weight_decay: L2 weight decay on conv weights, reported through `self.losses`.
      batch_norm_decay: moving-average decay of batch norm statistics.
      batch_norm_epsilon: batch norm epsilon.
      name: Keras layer name (does not appear in variable names).
      **kwargs: passed to `tf.keras.layers.Layer`.

    Raises:
      ValueError: for an unknown depth or output stride.
    """
    _check_depth(depth)
    _check_output_stride(output_stride)
    super().__init__(name=name, **kwargs)
    self.depth = depth
    self.output_stride = output_stride
    self.weight_decay = weight_decay
    self.batch_norm_decay = batch_norm_decay
    self.batch_norm_epsilon = batch_norm_epsilon
    self.scope = scope_name(depth)
    self._blocks = [
        resnet_v2.resnet_v2_block(name, base_depth=base, num_units=units, stride=2)
        for name, base, units in zip(block_names(), _BASE_DEPTHS, BLOCK_UNITS[depth])
    ]

  def get_config(self):
    config = super().get_config()
    config.update(
        depth=self.depth,
        output_stride=self.output_stride,
        weight_decay=self.weight_decay,
        batch_norm_decay=self.batch_norm_decay,
        batch_norm_epsilon=self.batch_norm_epsilon)
    return config

  @tf.compat.v1.keras.utils.track_tf1_style_variables
  def call(self, inputs, training=False, output_stride=None):
    """Runs the trunk.

    Args:
      inputs: float Tensor [batch, height, width, 3] from `input_convention.to_trunk_input`.
      training: Python bool or bool Tensor; batch norm uses batch statistics and updates its
        moving averages only when True.
      output_stride: overrides the layer's `output_stride` for this call (8, 16 or 32). The
        variables are the same at every stride, so tasks that need different strides share
        one trunk: colorization calls it at 8, relative position at 32.

    Returns:
      Dict of endpoint name -> Tensor (see the class docstring).

    Raises:
      ValueError: on a wrong rank or channel count.
      TypeError: on a non-float dtype (uint8 images must go through `to_trunk_input`).
    """
    inputs = input_convention.check_images(inputs, name=f"{self.name} inputs")
    if not inputs.dtype.is_floating:
      raise TypeError(
          f"{self.name} takes float images with the ImageNet mean subtracted, got dtype "
          f"{inputs.dtype.name}. Pass images through "
          "mtssl_tf.input_convention.to_trunk_input(images) first.")
    if training is None:
      training = False
    if output_stride is None:
      output_stride = self.output_stride
    _check_output_stride(output_stride)
    # slim's stack_blocks_dense counts strides after the root block (stride 4).
    block_stride = None if output_stride == 32 else output_stride // 4
    endpoints = {}
    prefix = self.scope + "/"

    def recording_unit(net, **unit_args):
      # Records each unit's output under 'blockK/unit_J' (the enclosing variable scope). This
      # replaces slim's outputs_collections, which live on the global graph: they leak in eager
      # and are shared between MirroredStrategy's replica threads.
      net = resnet_v2.bottleneck(net, **unit_args)
      endpoints[tf.compat.v1.get_variable_scope().name[len(prefix):]] = net
      return net

    blocks = [resnet_utils.Block(b.scope, recording_unit, b.args) for b in self._blocks]
    with slim.arg_scope(
        trunk_arg_scope(
            weight_decay=self.weight_decay,
            batch_norm_decay=self.batch_norm_decay,
            batch_norm_epsilon=self.batch_norm_epsilon)):
      with tf.compat.v1.variable_scope(
          self.scope, values=[inputs], custom_getter=self._variable_getter):
        with slim.arg_scope([slim.batch_norm], is_training=training):
          # As in slim's resnet_v2: no BN or ReLU after conv1, the first unit does them.
          with slim.arg_scope([slim.conv2d], activation_fn=None, normalizer_fn=None):
            endpoints["conv1"] = resnet_utils.conv2d_same(inputs, 64, 7, stride=2, scope="conv1")
          endpoints["pool1"] = slim.max_pool2d(
              endpoints["conv1"], [3, 3], stride=2, scope="pool1")
          resnet_utils.stack_blocks_dense(endpoints["pool1"], blocks, block_stride)
    for block, num_units in zip(block_names(), BLOCK_UNITS[self.depth]):
      # A block's output is its last unit's output (stack_blocks_dense adds nothing after it).
      endpoints[block] = endpoints[f"{block}/unit_{num_units}"]
    return endpoints

  def _variable_getter(self, getter, name, *args, **kwargs):
    return slim_variable_getter(self, getter, name, *args, **kwargs)

  def regularization_loss(self):
    """slim's weight decay on the conv weights: sum of weight_decay * ||w||^2 / 2.

    Equals `tf.add_n(self.losses)` after a call, but needs no call: the training loop and the
    export use it.
    """
    weights = self.conv_kernels()
    if not weights:
      return tf.constant(0.0)
    return self.weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in weights])

  def conv_kernels(self):
    """The conv layers' kernels (slim's `.../weights` variables): what weight decay acts on."""
    return [v for v in self.trainable_variables if v.name.split(":")[0].endswith("/weights")]

  def ensure_built(self):
    """Creates the variables (by a call on a small dummy batch) if they do not exist yet."""
    if not self.variables:
      self(tf.zeros([1, 32, 32, 3]), training=False)


def _object_key_to_name(key):
  """Maps an object-based checkpoint key to the slim variable name it holds, or None.

  TF2 checkpoints store a variable tracked by `track_tf1_style_variables` under a key such as
  `model/trunk/.ATTRIBUTES/...` with the variable's own name escaped inside it
  (`/` -> `.S`, `.` -> `..`). We recover the name from the first `resnet_v2_<N>/` onward.
  """
  suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
  if not key.endswith(suffix) or ".OPTIMIZER_SLOT" in key:
    return None
  parts = key[:-len(suffix)].split("/")
  for part in reversed(parts):
    name = re.sub(r"\.(S|\.)", lambda m: "/" if m.group(1) == "S" else ".", part)
    match = re.search(r"(resnet_v2_\d+/.*)$", name)
    if match:
      return match.group(1)
  return None


@dataclasses.dataclass
class CheckpointReport:
  """What `init_from_checkpoint` did, by variable name.

  Attributes:
    path: the checkpoint file prefix that was read.
    loaded: trunk variables assigned from the checkpoint.
    skipped: checkpoint variables of the full slim network that the trunk does not have
      (block 4, postnorm, logits) and moving-average shadows.
    ignored: other checkpoint entries (global step, optimizer slots, other models' variables).
  """
  path: str
  loaded: list
  skipped: list
  ignored: list

  def summary(self):
    lines = [f"init_from_checkpoint({self.path}): loaded {len(self.loaded)} trunk variables, "
             f"skipped {len(self.skipped)} not in the trunk, ignored {len(self.ignored)} "
             "other entries."]
    if self.skipped:
      lines.append("  skipped: " + ", ".join(sorted(self.skipped)))
    return "\n".join(lines)


def resolve_checkpoint(path):
  """Returns the checkpoint prefix for `path`: a prefix as is, a directory's latest checkpoint.

  Raises:
    FileNotFoundError: when nothing readable is there.
  """
  path = os.fspath(path)
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(
          f"No checkpoint in directory {path}: expected a 'checkpoint' index file written by "
          "tf.train.CheckpointManager or a TF1 Saver. Pass a checkpoint prefix such as "
          "resnet_v2_101.ckpt or model_dir/ckpt-100 instead.")
    return latest
  if not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + ".index")):
    raise FileNotFoundError(
        f"Checkpoint {path} does not exist: neither the file nor {path}.index was found. "
        "Pass the checkpoint prefix (e.g. /data/resnet_v2_101.ckpt, without .index or "
        ".data-*) or a directory holding checkpoints.")
  return path


def slim_name_index(prefix, shapes=None):
  """Which checkpoint key holds each slim variable, for slim's and for our own checkpoints.

  Args:
    prefix: a checkpoint prefix (see `resolve_checkpoint`).
    shapes: its variable-to-shape map, if already read.

  Returns:
    ({slim name 'resnet_v2_<depth>/...': checkpoint key}, [keys that hold no slim variable]).
    TF1 checkpoints (slim's) use the names as keys; TF2 object-based checkpoints escape them
    inside longer keys (`_object_key_to_name`).

  Raises:
    ValueError: if a name occurs twice (an object-based checkpoint of two models).
  """
  if shapes is None:
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  by_name, other = {}, []
  for key in sorted(shapes):
    name = key if key.startswith("resnet_v2_") else _object_key_to_name(key)
    if name is None:
      other.append(key)
      continue
    if name in by_name:
      raise ValueError(f"Checkpoint {prefix} holds variable {name} twice "
                       f"({by_name[name]} and {key}); load from a checkpoint of one model.")
    by_name[name] = key
  return by_name, other


def init_from_checkpoint(trunk, path):
  """Assigns a trunk's variables from a checkpoint, matched by slim variable name.

  Works for slim's public `resnet_v2_<depth>.ckpt` (TF1, name-based), for TF1 checkpoints of
  our own, and for TF2 object-based checkpoints (`tf.train.Checkpoint`) that hold a `Trunk`.

  Args:
    trunk: a `Trunk`; built first (on a dummy batch) if it has no variables yet.
    path: a checkpoint prefix or a directory (its latest checkpoint is used).

  Returns:
    A `CheckpointReport`; its summary is also logged.

  Raises:
    FileNotFoundError: if `path` holds no checkpoint.
    ValueError: if any trunk variable is missing from the checkpoint or has another shape
      (all offenders listed), or a name occurs twice in an object-based checkpoint.
  """
  prefix = resolve_checkpoint(path)
  trunk.ensure_built()
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  by_name, ignored = slim_name_index(prefix, shapes)

  wanted = {v.name.split(":")[0]: v for v in trunk.variables}
  missing, misshaped = [], []
  for name, var in sorted(wanted.items()):
    if name not in by_name:
      missing.append(name)
    elif list(shapes[by_name[name]]) != var.shape.as_list():
      misshaped.append(f"{name}: checkpoint {shapes[by_name[name]]}, trunk {var.shape.as_list()}")
  if missing or misshaped:
    found_scopes = sorted({n.split("/")[0] for n in by_name})
    lines = [f"Checkpoint {prefix} does not fit the trunk {trunk.scope} "
             f"(depth {trunk.depth}); it holds scopes {found_scopes}."]
    if missing:
      shown = ", ".join(missing[:_MAX_LISTED])
      more = f", ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
      lines.append(f"Missing {len(missing)} trunk variables: {shown}{more}")
    if misshaped:
      lines.append(f"Mis-shaped {len(misshaped)} trunk variables: " + "; ".join(misshaped))
    lines.append("Use a checkpoint of the same depth (gin: Trunk.depth).")
    raise ValueError("\n".join(lines))

  for name, var in wanted.items():
    var.assign(reader.get_tensor(by_name[name]))
  loaded = sorted(wanted)
  skipped = []
  for name, key in by_name.items():
    if name in wanted:
      continue
    if _NOT_IN_TRUNK.match(name) or name.endswith(_EMA_SUFFIX):
      skipped.append(name)
    else:
      ignored.append(key)
  report = CheckpointReport(prefix, loaded, sorted(skipped), sorted(ignored))
  logging.info(report.summary())
  return report


def checkpoint_depth(path):
  """The depth of the slim ResNet-v2 held in a checkpoint, read from its variable names.

  Raises:
    FileNotFoundError: if `path` holds no checkpoint.
    ValueError: if the checkpoint holds no `resnet_v2_<depth>` scope, or several.
  """
  prefix = resolve_checkpoint(path)
  depths = set()
  for key in tf.train.load_checkpoint(prefix).get_variable_to_shape_map():
    name = key if key.startswith("resnet_v2_") else _object_key_to_name(key)
    if name is not None:
      depths.add(int(re.match(r"resnet_v2_(\d+)/", name).group(1)))
  if len(depths) != 1:
    raise ValueError(f"Checkpoint {prefix} holds ResNet-v2 scopes of depths {sorted(depths)}; "
                     "expected exactly one resnet_v2_<depth> scope.")
  depth = depths.pop()
  _check_depth(depth)
  return depth


def count_parameters(variables):
  """Total number of elements in `variables`."""
  return sum(int(v.shape.num_elements()) for v in variables)


def endpoint_shapes(depth, output_stride, height, width):
  """Static endpoint shapes [H, W, C] (without batch) for an input of height x width.

  Follows slim's SAME padding: every stride-s layer maps n to ceil(n / s).
  """
  _check_depth(depth)
  _check_output_stride(output_stride)
  shapes = {}
  stride, h, w = 2, -(-height // 2), -(-width // 2)
  shapes["conv1"] = [h, w, 64]
  stride, h, w = 4, -(-h // 2), -(-w // 2)
  shapes["pool1"] = [h, w, 64]
  for block, base, units in zip(block_names(), _BASE_DEPTHS, BLOCK_UNITS[depth]):
    for i in range(units):
      if i == units - 1 and stride < output_stride:
        stride, h, w = stride * 2, -(-h // 2), -(-w // 2)
      shapes[f"{block}/unit_{i + 1}"] = [h, w, 4 * base]
    shapes[block] = [h, w, 4 * base]
  return shapes


__all__ = [
    "BLOCK_UNITS", "OUTPUT_STRIDES", "NUM_OUTPUT_CHANNELS", "Trunk", "CheckpointReport",
    "init_from_checkpoint", "resolve_checkpoint", "checkpoint_depth", "trunk_arg_scope", "scope_name",
    "unit_endpoint_names", "block_names", "count_parameters", "endpoint_shapes",
]
