"""Slim ResNet-v2's block 4, post-norm and logits: the part of the network the trunk cuts off.

The trunk (`trunk.py`) stops after block 3, as the paper's does. Two users need what follows:

- the ImageNet-labels baseline (`tasks/imagenet_labels.py`) trains the whole ResNet-101 v2 on
  labels: trunk, then this layer with logits;
- Faster R-CNN's box head (`evals/voc_detection.py`) runs block 4 and post-norm on RoI crops,
  randomly initialized for self-supervised trunks and loaded from the baseline's (or slim's
  public) checkpoint for the ImageNet baseline, as the paper did.

Variables are named as in slim's `resnet_v2_<depth>` checkpoints
(`resnet_v2_101/block4/unit_1/bottleneck_v2/conv1/weights`, `resnet_v2_101/postnorm/gamma`,
`resnet_v2_101/logits/weights`), so slim's public checkpoint, the baseline's checkpoints and the
detector's box head all load from one another (`load_checkpoint`).

In slim's definition block 4 has stride 1 (the network's stride is 32 after block 3 already):
it keeps the spatial size of its input.
"""

from absl import logging
import tensorflow as tf

from mtssl_tf import trunk as trunk_lib
from mtssl_tf.slim_compat import resnet_utils
from mtssl_tf.slim_compat import resnet_v2
from mtssl_tf.slim_compat import slim

# Units of slim's block 4 by trunk depth (depth = 3 x the units of blocks 1-4, + 2; see trunk.py).
BLOCK4_UNITS = {26: 2, 50: 3, 101: 3, 152: 3}
NUM_OUTPUT_CHANNELS = 2048
# Error messages list at most this many variables by name.
_MAX_LISTED = 40


class Block4(tf.keras.layers.Layer):
  """Block 4 (stride 1) and post-norm (batch norm + ReLU); optionally pooled logits.

  Input [N, h, w, 1024] (block 3's output) -> dict:
    'block4'    [N, h, w, 2048]  block 4's output (pre-activation, as every v2 unit's)
    'postnorm'  [N, h, w, 2048]  after batch norm and ReLU
    'pooled'    [N, 2048]        global average of 'postnorm'
    'logits'    [N, num_classes] slim's 1x1 convolution on the pooled features (only when
                                 num_classes is given)
  """

  def __init__(self, depth=101, num_classes=None, train_batch_norm=True, weight_decay=1e-4,
               batch_norm_decay=0.997, batch_norm_epsilon=1e-5, name="block4", **kwargs):
    """Creates the layer; variables are made on the first call.

    Args:
      depth: the trunk's depth: the variable scope and block 4's units (`BLOCK4_UNITS`).
      num_classes: None (no logits) or the classes of the logits layer (slim's ImageNet
        checkpoints have 1001: a background class 0, then ImageNet's 1000).
      train_batch_norm: batch norm uses batch statistics (and updates its moving averages)
        when called with training=True; when False always the moving statistics.
      weight_decay: slim's L2 weight decay scale on the weights (`regularization_loss`).
      batch_norm_decay, batch_norm_epsilon: of the batch norms (slim's checkpoints: 0.997,
        1e-5).
      name: Keras layer name (not part of the variable names).
      **kwargs: passed to `tf.keras.layers.Layer`.

    Raises:
      ValueError: for a depth without a block 4 definition.
    """
    super().__init__(name=name, **kwargs)
    if depth not in BLOCK4_UNITS:
      raise ValueError(f"No block 4 for trunk depth {depth!r}; known: {sorted(BLOCK4_UNITS)}.")
    self.depth = depth
    self.num_classes = num_classes
    self.scope = trunk_lib.scope_name(depth)
    self.train_batch_norm = train_batch_norm
    self.weight_decay = weight_decay
    self.batch_norm_decay = batch_norm_decay
    self.batch_norm_epsilon = batch_norm_epsilon
    self._block = resnet_v2.resnet_v2_block("block4", base_depth=512,
                                            num_units=BLOCK4_UNITS[depth], stride=1)

  def get_config(self):
    config = super().get_config()
    config.update(depth=self.depth, num_classes=self.num_classes,
                  train_batch_norm=self.train_batch_norm, weight_decay=self.weight_decay,
                  batch_norm_decay=self.batch_norm_decay,
                  batch_norm_epsilon=self.batch_norm_epsilon)
    return config

  @tf.compat.v1.keras.utils.track_tf1_style_variables
  def call(self, inputs, training=False):
    outputs = {}
    with slim.arg_scope(trunk_lib.trunk_arg_scope(
        weight_decay=self.weight_decay, batch_norm_decay=self.batch_norm_decay,
        batch_norm_epsilon=self.batch_norm_epsilon)):
      with tf.compat.v1.variable_scope(self.scope, values=[inputs],
                                       custom_getter=self._variable_getter):
        with slim.arg_scope([slim.batch_norm],
                            is_training=bool(training) and self.train_batch_norm):
          outputs["block4"] = resnet_utils.stack_blocks_dense(inputs, [self._block])
          outputs["postnorm"] = slim.batch_norm(outputs["block4"], activation_fn=tf.nn.relu,
                                                scope="postnorm")
          pooled = tf.reduce_mean(outputs["postnorm"], [1, 2], keepdims=True)
          outputs["pooled"] = tf.squeeze(pooled, [1, 2])
          if self.num_classes:
            logits = slim.conv2d(pooled, self.num_classes, [1, 1], activation_fn=None,
                                 normalizer_fn=None, scope="logits")
            outputs["logits"] = tf.squeeze(logits, [1, 2])
    return outputs

  def _variable_getter(self, getter, name, *args, **kwargs):
    return trunk_lib.slim_variable_getter(self, getter, name, *args, **kwargs)

  @property
  def slim_variables(self):
    """All the layer's variables by slim name ('resnet_v2_101/block4/...')."""
    return {v.name.split(":")[0]: v for v in self.variables}

  def regularization_loss(self):
    """slim's weight decay: weight_decay x sum of ||w||^2 / 2 over the conv weights."""
    weights = [v for v in self.trainable_variables if v.name.split(":")[0].endswith("/weights")]
    if not weights:
      return tf.constant(0.0)
    return self.weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in weights])


def load_checkpoint(variables, path, what="block 4"):
  """Assigns slim-named variables from a checkpoint, matched by name.

  Works for slim's public `resnet_v2_<depth>.ckpt` and for our own (TF2 object-based)
  checkpoints, e.g. the ImageNet-labels baseline's (`trunk.slim_name_index`).

  Args:
    variables: {slim name: variable}, e.g. `Block4.slim_variables`.
    path: a checkpoint prefix or directory (its latest checkpoint).
    what: what is being loaded, for messages.

  Returns:
    Sorted list of the names loaded.

  Raises:
    FileNotFoundError: if `path` holds no checkpoint.
    ValueError: if `variables` is empty (not built yet), or any of them is missing from the
      checkpoint or has another shape there (all offenders listed).
  """
  prefix = trunk_lib.resolve_checkpoint(path)
  if not variables:
    raise ValueError(f"The {what} has no variables yet: call it once before loading.")
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  by_name, _ = trunk_lib.slim_name_index(prefix, shapes)
  missing = sorted(n for n in variables if n not in by_name)
  misshaped = sorted(
      f"{n}: checkpoint {shapes[by_name[n]]}, model {variables[n].shape.as_list()}"
      for n in variables if n in by_name and list(shapes[by_name[n]]) != variables[n].shape)
  if missing or misshaped:
    scopes = sorted({n.split("/")[0] for n in by_name})
    lines = [f"Checkpoint {prefix} does not fit the {what}; it holds ResNet-v2 scopes "
             f"{scopes}."]
    if missing:
      more = f", ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
      lines.append(f"Missing {len(missing)} variables: "
                   f"{', '.join(missing[:_MAX_LISTED])}{more}")
    if misshaped:
      lines.append(f"Mis-shaped {len(misshaped)} variables: " + "; ".join(misshaped))
    lines.append("Give a checkpoint of the full network of the trunk's depth (slim's "
                 "resnet_v2_<depth>.ckpt, or the ImageNet-labels baseline's; gin: Trunk.depth).")
    raise ValueError("\n".join(lines))
  for name, var in variables.items():
    var.assign(reader.get_tensor(by_name[name]))
  logging.info("Loaded %d %s variables from %s.", len(variables), what, prefix)
  return sorted(variables)
