"""Tests of the motion record format and its reader."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import motion_records
from mtssl_tf.data import sources


def _write(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)


def test_round_trip_and_corrupt_records_are_skipped_and_counted(tmp_path):
  rng = np.random.RandomState(0)
  frame = np.kron(rng.randint(0, 255, [4, 5, 3]), np.ones([8, 8, 1])).astype(np.uint8)
  mask = rng.randint(0, 2, [4, 5]).astype(bool)
  good = motion_records.make_example(frame, mask, "videos/a.mp4", 30)
  wrong_size = tf.train.Example.FromString(good)
  wrong_size.features.feature["mask/height"].int64_list.value[0] = 7
  _write(tmp_path / "a.tfrecord", [good, b"garbage", wrong_size.SerializeToString()])
  _write(tmp_path / "b.tfrecord", [good])
  stats = sources.DecodeStats("motion records")
  dataset = motion_records.motion_dataset(
      source="tfrecord", pattern=str(tmp_path / "*.tfrecord"), shuffle_files=False, stats=stats)
  examples = list(dataset)
  assert len(examples) == 2
  assert stats.attempted() == 4 and stats.skipped() == 2
  example = examples[0]
  np.testing.assert_array_equal(example["mask"].numpy(), mask.astype(np.uint8))
  decoded = example["image"].numpy().astype(float)
  # JPEG (with chroma subsampling) blurs colour edges, but keeps each channel's mean: a swap of
  # RGB and BGR would not.
  assert np.abs(decoded - frame).mean() < 10
  np.testing.assert_allclose(decoded.mean(axis=(0, 1)), frame.mean(axis=(0, 1)), atol=3)
  assert example["video_id"].numpy() == b"videos/a.mp4" and example["frame_index"] == 30


def test_sharding_and_errors(tmp_path):
  frame = np.zeros([16, 16, 3], np.uint8)
  for i in range(4):
    _write(tmp_path / f"s{i}.tfrecord",
           [motion_records.make_example(frame, np.zeros([2, 2], bool), f"v{i}", 0)])
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
  ids = {ex["video_id"].numpy() for ex in motion_records.motion_dataset(
      source="tfrecord", pattern=str(tmp_path / "*.tfrecord"), input_context=context)}
  assert ids == {b"v1", b"v3"}
  with pytest.raises(ValueError, match="No files match"):
    motion_records.motion_dataset(source="tfrecord", pattern=str(tmp_path / "none*"))
  with pytest.raises(ValueError, match="needs pattern"):
    motion_records.motion_dataset(source="tfrecord")
  with pytest.raises(ValueError, match="Unknown motion source"):
    motion_records.motion_dataset(source="youtube")


def test_toy_source_has_moving_cells():
  examples = list(motion_records.motion_dataset(source="toy", num_toy_clips=2,
                                                toy_frames_per_clip=1, toy_size=(96, 128)))
  assert len(examples) == 2
  for example in examples:
    assert example["image"].shape == (96, 128, 3) and example["mask"].shape == (12, 16)
    assert example["mask"].numpy().sum() > 0
