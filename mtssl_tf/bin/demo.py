"""mtssl-demo: the project's main job on built-in data, end to end, on one CPU core or more.

Until the multi-task trainer lands (issue 5) the demo runs what exists: it builds the small
trunk (gin/trunk/demo.gin), runs a few RMSProp steps of it on built-in synthetic images,
writes a checkpoint, exports it as a SavedModel with the same code as `mtssl-export`, reloads
the SavedModel and checks that it reproduces the live trunk. It prints every step.
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mtssl_tf import export as export_lib
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where to write the checkpoint and export (default: a "
                    "new temporary directory).")
flags.DEFINE_integer("steps", 3, "Training steps on synthetic images.")
flags.DEFINE_integer("batch_size", 4, "Images per step.")
flags.DEFINE_integer("image_size", 96, "Square image side.")
common.define_gin_flags()


def synthetic_images(batch_size, size, seed):
  """Smooth random color images, uint8 [batch, size, size, 3] (deterministic by seed)."""
  rng = np.random.RandomState(seed)
  coarse = rng.uniform(0, 255, [batch_size, 6, 6, 3]).astype(np.float32)
  return tf.cast(tf.image.resize(coarse, [size, size], method="bicubic") * 0.9 + 10, tf.uint8)


def main(argv):
  del argv
  common.parse_gin(FLAGS.gin_file or ["trunk/demo.gin"], FLAGS.gin_param)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="mtssl_demo_")
  trunk = trunk_lib.Trunk()
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=1e-3)
  print(f"[demo] trunk {trunk.scope}, output stride {trunk.output_stride}, workdir {workdir}")

  @tf.function
  def train_step(images):
    with tf.GradientTape() as tape:
      block3 = trunk(input_convention.to_trunk_input(images), training=True)["block3"]
      # A stand-in objective until the pretext tasks land: keep block 3 near unit variance.
      loss = tf.reduce_mean(tf.square(tf.math.reduce_std(block3, axis=[1, 2]) - 1.0))
      loss += trunk.regularization_loss()
    grads = tape.gradient(loss, trunk.trainable_variables)
    optimizer.apply_gradients(zip(grads, trunk.trainable_variables))
    return loss

  start = time.time()
  for step in range(FLAGS.steps):
    images = synthetic_images(FLAGS.batch_size, FLAGS.image_size, seed=step)
    loss = train_step(images)
    rate = (step + 1) / (time.time() - start)
    print(f"[demo] step {step + 1}/{FLAGS.steps} loss {float(loss):.4f} ({rate:.2f} steps/s)")
  print(f"[demo] trainable parameters: {trunk_lib.count_parameters(trunk.trainable_variables):,}")

  ckpt_prefix = tf.train.Checkpoint(trunk=trunk).write(os.path.join(workdir, "ckpt", "trunk"))
  print(f"[demo] checkpoint: {ckpt_prefix}")
  export_dir, report = export_lib.export_from_checkpoint(
      ckpt_prefix, os.path.join(workdir, "export"), overwrite=True,
      output_stride=trunk.output_stride)
  print(f"[demo] {report.summary().splitlines()[0]}")
  print(f"[demo] SavedModel: {export_dir}")

  loaded = tf.saved_model.load(export_dir)
  images = synthetic_images(2, FLAGS.image_size, seed=1000)
  served = loaded.signatures["serving_default"](images=images)
  live = trunk(input_convention.to_trunk_input(images), training=False)
  for name in ("pool1", "block1", "block2", "block3"):
    print(f"[demo] endpoint {name:7s} {served[name].shape}")
  scale = float(tf.reduce_max(tf.abs(live["block3"])))
  error = float(tf.reduce_max(tf.abs(served["block3"] - live["block3"]))) / scale
  print(f"[demo] reloaded SavedModel vs live trunk, block3 max relative error {error:.2e}")
  if error > 1e-4:
    sys.exit("[demo] FAILED: the SavedModel does not reproduce the trunk.")
  print("[demo] OK")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
