"""Tests of what all tasks share: the registry, the default image source, skipped images."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import sources
from mtssl_tf.tasks import base


def test_registry_knows_the_image_tasks():
  assert set(base.registered()) == {"colorization", "exemplar", "imagenet_labels",
                                    "motion_segmentation", "relative_position"}
  assert base.get("colorization").output_stride == 8
  assert base.get("relative_position").output_stride == 32
  with pytest.raises(KeyError, match="registered tasks"):
    base.get("jigsaw")


def test_default_source_is_gin_configured_and_counts_corrupt_images(tmp_path):
  rng = np.random.RandomState(0)
  for i in range(3):
    encoded = tf.io.encode_png(rng.randint(0, 256, [40, 40, 3]).astype(np.uint8))
    tf.io.write_file(str(tmp_path / f"good{i}.png"), encoded)
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  task = base.get("colorization")(trunk_lib.Trunk(depth=26), batch_size=3, crop_size=32)
  task.decode_stats = sources.DecodeStats("colorization images")
  with gin.unlock_config():
    gin.bind_parameter("image_dataset.source", "folder")
    gin.bind_parameter("image_dataset.pattern", str(tmp_path))
  try:
    images = list(task.images())
  finally:
    gin.clear_config()
  assert len(images) == 3
  assert task.decode_stats.attempted() == 4
  assert task.decode_stats.skipped() == 1
  assert task.decode_stats.log() == 1
