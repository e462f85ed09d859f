"""Computes the empirical ab color prior of Zhang et al. 2016 (section 2.2) for colorization.

  python tools/compute_color_prior.py --source=tfds --name=imagenet2012 --split=train \
      --num_images=0 --output=/data/color_prior/imagenet_prior.npy
  python tools/compute_color_prior.py --source=folder --pattern=/data/imagenet/train \
      --num_images=0 --output=/data/color_prior/imagenet_prior.npy
  python tools/compute_color_prior.py --gin_file=my_data.gin --output=/tmp/prior.npy

Reads the images of any `mtssl_tf.data.sources.image_dataset` source (flags, or gin bindings of
`image_dataset` for what the flags leave unset) and writes their smoothed ab prior and a JSON
summary with `mtssl_tf.color_prior.make_prior_file`, whose docstring says what is counted and
what the files hold. Bind the prior to colorization with `colorization.prior_path` (gin); run it
on the same images as pretraining (gin/experiments/common/pretrain.gin: `COLOR_PRIOR_PATH`).
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtssl_tf import color_prior  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
# Arguments of `image_dataset` that flags can set; unset flags leave gin (or the default) in
# charge.
SOURCE_FLAGS = ("source", "name", "split", "data_dir", "pattern", "seed")


def define_flags(flag_values=flags.FLAGS):
  """Defines the binary's flags; called only when run as a binary, so importing defines none.

  Args:
    flag_values: where to define them; the gin flags (`common.define_gin_flags`) are defined
      only in the global `flags.FLAGS`.
  """
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("output", None, "Where to write the prior, a .npy path; the summary goes "
                      "to <output>.json.", **fv)
  flags.DEFINE_enum("source", None, sources.SOURCES, "Image source (gin: image_dataset.source). "
                    "One of the two is required.", **fv)
  flags.DEFINE_string("name", None, "TFDS dataset name (gin: image_dataset.name).", **fv)
  flags.DEFINE_string("split", None, "TFDS split, e.g. train or 'train[:10%]' "
                      "(gin: image_dataset.split).", **fv)
  flags.DEFINE_string("data_dir", None, "TFDS data directory (gin: image_dataset.data_dir).",
                      **fv)
  flags.DEFINE_string("pattern", None, "TFRecord glob (--source=tfrecord) or image directory "
                      "(--source=folder) (gin: image_dataset.pattern).", **fv)
  flags.DEFINE_integer("seed", None, "Seed of the source's file shuffle "
                       "(gin: image_dataset.seed).", **fv)
  flags.DEFINE_integer("num_images", 10000, "At most this many decoded images are read; 0 "
                       "reads the whole source.", lower_bound=0, **fv)
  flags.DEFINE_integer("max_side", 256, "Images are first resized so that their shorter side "
                       "is at most this.", lower_bound=1, **fv)
  flags.DEFINE_integer("pixel_stride", 4, "Count every n-th pixel of every n-th row; 1 counts "
                       "every pixel.", lower_bound=1, **fv)
  flags.DEFINE_float("sigma", 5.0, "Width, in ab units, of the Gaussian that smooths the counts "
                     "(Zhang et al.: 5).", **fv)
  flags.DEFINE_integer("log_every", 1000, "Log progress every this many images.", lower_bound=1,
                       **fv)
  if flag_values is flags.FLAGS:
    common.define_gin_flags()
  flags.mark_flag_as_required("output", **fv)
  flags.register_validator(
      "sigma", lambda v: v > 0,
      message="--sigma must be positive, e.g. --sigma=5 (the paper's smoothing).", **fv)
  flags.register_validator(
      "output", lambda v: v is None or v.endswith(".npy"),
      message="--output must be a .npy path, e.g. --output=/data/color_prior.npy.", **fv)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"compute_color_prior: unexpected arguments {argv[1:]}; everything is a --flag.")
  try:
    common.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"compute_color_prior: {e}")
  source_kwargs = {k: FLAGS[k].value for k in SOURCE_FLAGS if FLAGS[k].value is not None}
  try:
    _, summary = color_prior.make_prior_file(
        FLAGS.output, source_kwargs, num_images=FLAGS.num_images, max_side=FLAGS.max_side,
        pixel_stride=FLAGS.pixel_stride, sigma=FLAGS.sigma, log_every=FLAGS.log_every,
        extra_summary={"gin_file": list(FLAGS.gin_file), "gin_param": list(FLAGS.gin_param)})
  except ValueError as e:
    sys.exit(f"compute_color_prior: {e}")
  print(json.dumps({k: summary[k] for k in (
      "images_read", "images_used", "grayscale_skipped", "decode_skipped",
      "decode_skipped_at_most", "pixels_counted", "images_per_s")}))
  print(f"Prior written to {FLAGS.output}, summary to {color_prior.summary_path(FLAGS.output)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
