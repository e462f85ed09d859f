"""Motion segmentation examples: the TFRecord format, its reader, and the toy video source.

`tools/prepare_motion_segmentation.py` writes one `tf.train.Example` per labelled frame:

  image/encoded    JPEG of the frame (RGB), both sides multiples of the mask stride
  image/height, image/width   int64
  mask/encoded     PNG (1 channel) of the moving-pixel mask at 1/stride of the frame's size:
                   255 where pixels move, 0 elsewhere (viewable as it is)
  mask/height, mask/width     int64
  video/id         the video's path relative to the tool's --videos folder (or as listed)
  frame/index      int64, the frame's index in the video (0-based, decoded order)

`motion_dataset` reads those files, or the built-in toy clips (`toy_video`), and returns
unbatched dicts {"image": uint8 [H, W, 3], "mask": uint8 [H/8, W/8] (0/1), "video_id",
"frame_index"}, whatever the source. Records that cannot be parsed or decoded are skipped and
counted (`sources.DecodeStats`), never fatal.
"""

import gin
import tensorflow as tf

from mtssl_tf.data import sources

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "mask/encoded": tf.io.FixedLenFeature([], tf.string),
    "mask/height": tf.io.FixedLenFeature([], tf.int64),
    "mask/width": tf.io.FixedLenFeature([], tf.int64),
    "video/id": tf.io.FixedLenFeature([], tf.string),
    "frame/index": tf.io.FixedLenFeature([], tf.int64),
}
MOTION_SOURCES = ("tfrecord", "toy")


def _bytes(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(frame, mask, video_id, frame_index, jpeg_quality=90):
  """One record: a frame and its downsampled mask.

  Args:
    frame: uint8 [H, W, 3] RGB numpy array.
    mask: bool or 0/1 [h, w] numpy array (the downsampled mask).
    video_id: str.
    frame_index: int.
    jpeg_quality: JPEG quality of the frame.

  Returns:
    A serialized `tf.train.Example` (bytes).
  """
  # OpenCV encodes several times faster than eager TF ops, and the tool's workers need speed.
  import cv2  # pylint: disable=g-import-not-at-top
  ok_image, image = cv2.imencode(".jpg", frame[..., ::-1],
                                 [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
  ok_mask, mask_png = cv2.imencode(".png", mask.astype("uint8") * 255)
  if not (ok_image and ok_mask):
    raise ValueError(f"Could not encode frame {frame_index} of {video_id!r}.")
  image, mask_png = image.tobytes(), mask_png.tobytes()
  return tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": _bytes(image),
      "image/height": _int(frame.shape[0]),
      "image/width": _int(frame.shape[1]),
      "mask/encoded": _bytes(mask_png),
      "mask/height": _int(mask.shape[0]),
      "mask/width": _int(mask.shape[1]),
      "video/id": _bytes(video_id.encode("utf-8")),
      "frame/index": _int(frame_index),
  })).SerializeToString()


def parse_example(serialized):
  """A serialized record -> {"image", "mask", "video_id", "frame_index"} (see module docstring).

  Fails (at run time) on a record that is not of this format or whose image or mask does not
  decode to the sizes it states.
  """
  parsed = tf.io.parse_single_example(serialized, FEATURES)
  image = tf.io.decode_jpeg(parsed["image/encoded"], channels=3)
  mask = tf.io.decode_png(parsed["mask/encoded"], channels=1)[..., 0]
  image = tf.ensure_shape(image, [None, None, 3])
  checks = [
      tf.debugging.assert_equal(tf.shape(image, tf.int64)[:2],
                                tf.stack([parsed["image/height"], parsed["image/width"]]),
                                message="motion record: image size differs from its fields"),
      tf.debugging.assert_equal(tf.shape(mask, tf.int64),
                                tf.stack([parsed["mask/height"], parsed["mask/width"]]),
                                message="motion record: mask size differs from its fields"),
  ]
  with tf.control_dependencies(checks):
    mask = tf.cast(mask > 127, tf.uint8)
  return {"image": image, "mask": mask, "video_id": parsed["video/id"],
          "frame_index": parsed["frame/index"]}


@gin.configurable
def motion_dataset(source="toy",
                   pattern=None,
                   input_context=None,
                   shuffle_files=True,
                   seed=0,
                   num_toy_clips=8,
                   toy_frames_per_clip=4,
                   toy_size=(240, 320),
                   stats=None):
  """Frames and masks for the motion segmentation task, unbatched.

  Args:
    source: "tfrecord" (files matching the glob `pattern`, written by
      tools/prepare_motion_segmentation.py) or "toy" (generated clips whose masks are the
      generator's true masks of independently moving objects).
    pattern: file glob for "tfrecord", e.g. "/data/motion_seg/motion_seg-*.tfrecord".
    input_context: `tf.distribute.InputContext` or None; each input pipeline reads its part.
    shuffle_files: shuffle the file order each epoch.
    seed: seed of the file shuffle and of the toy clips.
    num_toy_clips, toy_frames_per_clip, toy_size: the toy source's size.
    stats: a `sources.DecodeStats` counting skipped records ("tfrecord" only).

  Returns:
    A dataset of {"image": uint8 [H, W, 3], "mask": uint8 [H/8, W/8], "video_id": string,
    "frame_index": int64}.

  Raises:
    ValueError: for an unknown source, a missing pattern or no matching files.
  """
  if source not in MOTION_SOURCES:
    raise ValueError(f"Unknown motion source {source!r}; choose one of {MOTION_SOURCES} "
                     "(gin: motion_dataset.source).")
  if source == "toy":
    # Imported here: the generator needs OpenCV, which the TFRecord reader does not.
    from mtssl_tf.data import toy_video  # pylint: disable=g-import-not-at-top
    examples = toy_video.toy_motion_examples(
        num_clips=num_toy_clips, frames_per_clip=toy_frames_per_clip, size=tuple(toy_size),
        seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices({
        "image": examples["image"],
        "mask": examples["mask"].astype("uint8"),
        "video_id": examples["video_id"],
        "frame_index": examples["frame_index"].astype("int64"),
    })
    if input_context is not None:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    return dataset
  if not pattern:
    raise ValueError("motion_dataset(source='tfrecord') needs pattern, a glob of the files "
                     "tools/prepare_motion_segmentation.py wrote (gin: motion_dataset.pattern).")
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"No files match {pattern!r} (gin: motion_dataset.pattern); run "
                     "tools/prepare_motion_segmentation.py first.")
  files, shard_records = sources.shard_files(files, input_context)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle_files:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  return sources.decode_guarded(dataset, parse_example, stats)
