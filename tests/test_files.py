"""Atomic writes: a reader sees the old file or the whole new one, never a part."""

import os

import pytest
import tensorflow as tf

from mtssl_tf import files


def test_write_replaces_the_target_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.json"
  files.write_atomically(str(path), lambda f: f.write("first"))
  files.write_atomically(str(path), lambda f: f.write(b"\x00second"), "wb")
  assert path.read_bytes() == b"\x00second"
  assert os.listdir(path.parent) == ["results.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "table.md"
  path.write_text("old table")

  def half(f):
    f.write("half of a new ")
    raise KeyboardInterrupt  # an interrupt, not only an Exception, cleans up

  with pytest.raises(KeyboardInterrupt):
    files.write_atomically(str(path), half)
  assert path.read_text() == "old table"
  assert os.listdir(tmp_path) == ["table.md"]


def test_a_writer_that_opens_the_path_itself_sees_only_the_temporary(tmp_path):
  path = str(tmp_path / "shard.tfrecord")
  with files.atomic_path(path) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      writer.write(b"record")
    # Until the block ends, the target does not exist; the temporary is named for it.
    assert not os.path.exists(path)
    assert files.is_temporary(os.path.basename(tmp), r"shard\.tfrecord")
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == [b"record"]
  assert os.listdir(tmp_path) == ["shard.tfrecord"]


def test_temporary_names_are_told_from_look_alikes():
  pid = os.getpid()
  assert files.temporary_name("/a/operative_config.gin") == f"/a/operative_config.gin.tmp-{pid}"
  assert files.is_temporary("operative_config.gin.tmp-4242", r"operative_config\.gin")
  for name in ("operative_config.gin", "operative_config.gin.tmp-", "operative_config.gin.tmp-4x",
               "my_operative_config.gin.tmp-42", "operative_config.gin.tmp-42.bak"):
    assert not files.is_temporary(name, r"operative_config\.gin"), name


def test_gfile_urls_go_through_tensorflow(tmp_path):
  # TensorFlow's in-memory filesystem stands in for an object store (gs://...).
  path = "ram://mtssl_files_test/config.gin"
  files.write_atomically(path, lambda f: f.write("Trunk.depth = 26\n"))
  assert tf.io.gfile.GFile(path).read() == "Trunk.depth = 26\n"
  assert tf.io.gfile.listdir("ram://mtssl_files_test") == ["config.gin"]
