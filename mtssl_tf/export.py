"""SavedModel export of the trunk: serving signatures and a fine-tunable function.

The exported object follows TF2's reusable SavedModel convention, so `tf.saved_model.load` and
`hub.KerasLayer(path, trainable=True)` can both use it:

  * `__call__(images, training=False)`: float32 RGB images in [0, 255], [B, H, W, 3] -> dict of
    endpoints (see `mtssl_tf.trunk.Trunk`). With `training=True` batch norm uses batch statistics
    and updates its moving averages: this is the function to fine-tune.
  * `variables`, `trainable_variables`: the trunk's variables (trainable ones stay trainable).
  * `regularization_losses`: [a function returning slim's weight decay on the conv weights].
  * signatures `serving_default` (= `serve_uint8`, uint8 images) and `serve_float` (float32 RGB
    in [0, 255]), both returning the endpoints dict in inference mode.

Both the signatures and `__call__` apply `input_convention.to_trunk_input`: callers never
subtract the mean themselves. A JSON description of the trunk (depth, output stride, input
convention, source checkpoint) is written to `assets.extra/mtssl_trunk.json`.

The SavedModel is written to a temporary directory beside the target and renamed when complete,
so an interrupted export never leaves a half-written model at `export_dir`.
"""

import json
import os

from absl import logging
import gin
import tensorflow as tf

from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib

_IMAGES_SPEC = {
    tf.uint8: tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
    tf.float32: tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
}
METADATA_FILE = "mtssl_trunk.json"


class TrunkExportModule(tf.Module):
  """What the SavedModel holds: the trunk, its functions and its variable lists."""

  # Plain attributes shadow tf.Module's computed properties so that they are saved with the
  # model (the reusable SavedModel convention reads them after loading).
  variables = None
  trainable_variables = None

  def __init__(self, trunk):
    """Wraps a built `Trunk`.

    Args:
      trunk: a `mtssl_tf.trunk.Trunk`; built on a dummy batch if it has no variables.
    """
    super().__init__(name="mtssl_trunk")
    trunk.ensure_built()
    self.trunk = trunk
    self.variables = list(trunk.variables)
    self.trainable_variables = list(trunk.trainable_variables)
    self._regularization_loss = tf.function(trunk.regularization_loss, input_signature=[])
    self.regularization_losses = [self._regularization_loss]
    self.__call__ = tf.function(self._call)
    self.serve_uint8 = tf.function(self._serve, input_signature=[_IMAGES_SPEC[tf.uint8]])
    self.serve_float = tf.function(self._serve, input_signature=[_IMAGES_SPEC[tf.float32]])

  def _call(self, images, training=False):
    return self.trunk(input_convention.to_trunk_input(images), training=training)

  def _serve(self, images):
    return self.trunk(input_convention.to_trunk_input(images), training=False)

  def signatures(self):
    """The serving signatures, keyed by signature name."""
    uint8_fn = self.serve_uint8.get_concrete_function()
    return {
        "serving_default": uint8_fn,
        "serve_uint8": uint8_fn,
        "serve_float": self.serve_float.get_concrete_function(),
    }

  def trace(self):
    """Traces `__call__` for both training modes (the saved function dispatches on the bool)."""
    for training in (False, True):
      self.__call__.get_concrete_function(_IMAGES_SPEC[tf.float32], training=training)
    self._regularization_loss.get_concrete_function()


def export_trunk(trunk, export_dir, source_checkpoint=None, overwrite=False):
  """Writes `trunk` as a SavedModel to `export_dir`, atomically.

  Args:
    trunk: a `Trunk` holding the weights to export.
    export_dir: target directory; must not exist unless `overwrite`.
    source_checkpoint: recorded in the metadata JSON.
    overwrite: replace an existing `export_dir`.

  Returns:
    `export_dir`.

  Raises:
    FileExistsError: if `export_dir` exists and `overwrite` is False.
  """
  export_dir = os.fspath(export_dir)
  if tf.io.gfile.exists(export_dir) and not overwrite:
    raise FileExistsError(f"Export directory {export_dir} already exists; pass "
                          "overwrite=True (--overwrite) or choose another --export_dir.")
  module = TrunkExportModule(trunk)
  module.trace()
  tmp_dir = f"{export_dir.rstrip('/')}.tmp-{os.getpid()}"
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)
  tf.saved_model.save(module, tmp_dir, signatures=module.signatures())
  metadata = {
      "depth": trunk.depth,
      "output_stride": trunk.output_stride,
      "scope": trunk.scope,
      "weight_decay": trunk.weight_decay,
      "source_checkpoint": source_checkpoint,
      "input": {
          "channels": "RGB",
          "layout": "NHWC",
          "value_range": [0, input_convention.PIXEL_MAX],
          "mean_rgb_subtracted_inside": list(input_convention.MEAN_RGB),
      },
      "endpoints": sorted(trunk_lib.endpoint_shapes(trunk.depth, trunk.output_stride, 224, 224)),
  }
  extra = os.path.join(tmp_dir, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
    json.dump(metadata, f, indent=2)
  old_dir = None
  if tf.io.gfile.exists(export_dir):
    # Move the old export aside first so that export_dir always holds a complete model.
    old_dir = f"{export_dir.rstrip('/')}.old-{os.getpid()}"
    tf.io.gfile.rename(export_dir, old_dir)
  tf.io.gfile.rename(tmp_dir, export_dir)
  if old_dir is not None:
    tf.io.gfile.rmtree(old_dir)
  logging.info("Exported %s (output stride %d) to %s", trunk.scope, trunk.output_stride,
               export_dir)
  return export_dir


def export_from_checkpoint(checkpoint, export_dir, overwrite=False, output_stride=32,
                           **trunk_kwargs):
  """Builds a trunk of the checkpoint's depth, loads the checkpoint and exports it.

  Args:
    checkpoint: slim's public `resnet_v2_<depth>.ckpt`, one of ours, or a directory.
    export_dir: target directory.
    overwrite: replace an existing `export_dir`.
    output_stride: the SavedModel's block-3 stride, 8, 16 or 32 (32: slim's classification
      trunk; section 5 of the paper runs detection and depth at 16).
    **trunk_kwargs: other `Trunk` arguments than depth (weight decay, batch norm settings);
      those not given come from gin bindings of `Trunk`.

  Returns:
    (export_dir, the `CheckpointReport` of the load).

  Raises:
    ValueError: when gin binds `Trunk.depth` to another depth than the checkpoint's (the
      export would silently be of the checkpoint's trunk, not the one configured).
  """
  prefix = trunk_lib.resolve_checkpoint(checkpoint)
  depth = trunk_lib.checkpoint_depth(prefix)
  try:
    bound = gin.query_parameter("Trunk.depth")
  except ValueError:  # not bound
    bound = depth
  if bound != depth:
    raise ValueError(f"Trunk.depth = {bound!r} (gin) but {prefix} holds a depth-{depth} trunk "
                     f"(resnet_v2_{depth}); drop the binding, bind Trunk.depth = {depth}, or "
                     f"export a depth-{bound} checkpoint.")
  trunk = trunk_lib.Trunk(depth=depth, output_stride=output_stride, **trunk_kwargs)
  report = trunk_lib.init_from_checkpoint(trunk, prefix)
  export_trunk(trunk, export_dir, source_checkpoint=prefix, overwrite=overwrite)
  return export_dir, report


def load_metadata(export_dir):
  """Reads the JSON description written beside an exported trunk."""
  with tf.io.gfile.GFile(os.path.join(export_dir, "assets.extra", METADATA_FILE)) as f:
    return json.load(f)
