"""mtssl-export: turns a trunk checkpoint (slim's public one or ours) into a SavedModel.

  mtssl-export --checkpoint=/data/resnet_v2_101.ckpt --export_dir=/exports/slim_rn101

The trunk's depth is read from the checkpoint's variable names (a `Trunk.depth` binding that
says otherwise is refused); the signatures' output stride is --output_stride; weight decay and
batch norm settings come from gin (`Trunk.*`). See `mtssl_tf/export.py` for what the SavedModel
holds.
"""

# First: it quiets TensorFlow's start-up, which has to happen before TensorFlow is imported.
from mtssl_tf.bin import common  # pylint: disable=g-bad-import-order

from absl import flags
from absl import logging

from mtssl_tf import export as export_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or directory (latest checkpoint).")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
flags.DEFINE_enum("output_stride", "32", ["8", "16", "32"], "Block 3's stride in the "
                  "SavedModel's signatures: 32 as slim's classifier, 16 for detection and depth "
                  "(the paper's section 5), 8 for dense prediction at colorization's stride.")
common.define_gin_flags()
flags.mark_flags_as_required(["checkpoint", "export_dir"])


def main(argv):
  del argv
  common.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  export_dir, report = export_lib.export_from_checkpoint(
      FLAGS.checkpoint, FLAGS.export_dir, overwrite=FLAGS.overwrite,
      output_stride=int(FLAGS.output_stride))
  print(report.summary())
  print(f"SavedModel written to {export_dir}")
  logging.info("Done.")


def run():
  common.run(main, "mtssl-export")


if __name__ == "__main__":
  run()
