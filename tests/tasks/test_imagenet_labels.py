"""Tests of the ImageNet-labels baseline: preprocessing, the full slim network's names, training
through the multi-task loop, and its checkpoints feeding the trunk and detection's box head."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtssl_tf import block4 as block4_lib
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.tasks import imagenet_labels


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _coordinate_image(height, width):
  """R = row, G = column (both 0..255 over the image), B = 0: a crop says where it came from."""
  rows = np.repeat(np.linspace(0, 255, height)[:, None], width, axis=1)
  cols = np.repeat(np.linspace(0, 255, width)[None, :], height, axis=0)
  return np.stack([rows, cols, np.zeros_like(rows)], -1).round().astype(np.uint8)


def test_training_crop_is_a_resized_region_and_labels_shift_by_the_background_class():
  image = _coordinate_image(120, 200)
  areas, flipped = [], 0
  for seed in range(12):
    out = imagenet_labels.preprocess({"image": image, "label": 7}, training=True,
                                     crop_size=32, seed=seed)
    assert out["imagenet_labels/image"].shape == (32, 32, 3)
    assert int(out["imagenet_labels/label"]) == 8
    rgb = input_convention.from_trunk_input(out["imagenet_labels/image"][None])[0].numpy()
    # Rows and columns span a sub-range of the image's coordinates.
    row_span = rgb[-1, :, 0].mean() - rgb[0, :, 0].mean()
    col_span = rgb[:, -1, 1].mean() - rgb[:, 0, 1].mean()
    assert row_span > 0  # never flipped vertically
    flipped += col_span < 0
    areas.append(row_span * abs(col_span) / 255.0**2)
  # Areas between 8% and 100% of the image (spans shrink a little by the resize's edges).
  assert 0.04 < min(areas) and max(areas) <= 1.0 and max(areas) - min(areas) > 0.1
  assert 0 < flipped < 12


def test_evaluation_crop_is_the_center_of_the_resized_image():
  image = _coordinate_image(100, 300)
  out = imagenet_labels.preprocess({"image": image, "label": 0}, training=False,
                                   crop_size=64, resize=80, label_offset=0)
  rgb = input_convention.from_trunk_input(out["imagenet_labels/image"][None])[0].numpy()
  assert int(out["imagenet_labels/label"]) == 0
  # The shorter side (rows) 100 -> 80, center 64 of 80 rows: rows 8..71 of 80, i.e. ~10%-90%.
  assert abs(rgb[:, :, 0].mean() - 127.5) < 3
  assert abs(rgb[0, :, 0].mean() - 255 * 8.5 / 80) < 6
  # Columns 300 -> 240, center 64: the middle of the image.
  assert abs(rgb[:, :, 1].mean() - 127.5) < 3
  assert rgb[:, -1, 1].mean() - rgb[:, 0, 1].mean() < 255 * 64 / 240 + 6


def test_network_has_slim_resnet_v2_names_and_1001_logits():
  trunk = trunk_lib.Trunk(depth=26)
  task = imagenet_labels.ImagenetLabels(trunk, dataset="toy", batch_size=2)
  assert task.num_classes == imagenet_labels.TOY_NUM_CLASSES + 1
  spec = task.model_fn({"imagenet_labels/image": tf.zeros([2, 64, 64, 3]),
                        "imagenet_labels/label": tf.constant([1, 2])}, heads.Mode.TRAIN)
  names = {v.name.split(":")[0]: v.shape.as_list() for v in task.head_variables}
  assert names["resnet_v2_26/logits/weights"] == [1, 1, 2048, 9]
  assert names["resnet_v2_26/logits/biases"] == [9]
  assert names["resnet_v2_26/postnorm/gamma"] == [2048]
  assert "resnet_v2_26/block4/unit_2/bottleneck_v2/conv3/weights" in names
  assert not any("block3" in n for n in names)
  assert spec.predictions["imagenet_labels/logits"].shape == (2, 9)
  # Loss = cross-entropy + block 4's weight decay, which is > 0.
  assert float(spec.loss) > float(spec.metrics["cross_entropy"]) > 0
  # ImageNet's class count comes from TFDS's code, without the data.
  assert imagenet_labels._tfds_num_classes("imagenet2012") == 1000  # pylint: disable=protected-access


def test_top1_and_top5_on_labels_ranked_first_to_ninth():
  trunk = trunk_lib.Trunk(depth=26)
  task = imagenet_labels.ImagenetLabels(trunk, dataset="toy", batch_size=11)
  features = {"imagenet_labels/image": tf.random.stateless_uniform([11, 64, 64, 3], [0, 1],
                                                                   -100, 100)}
  task.model_fn(features, heads.Mode.PREDICT)
  # Zero weights: every example's 9 logits are the biases, which rank the classes
  # 4, 0, 7, 2, 8, 1, 5, 3, 6 (best first).
  variables = task.block4.slim_variables
  weights = variables["resnet_v2_26/logits/weights"]
  weights.assign(tf.zeros_like(weights))
  variables["resnet_v2_26/logits/biases"].assign(
      [0.8, 0.4, 0.6, 0.2, 0.9, 0.3, 0.1, 0.7, 0.5])
  # Labels ranked 1st, 2nd, ..., 9th, then 5th and 6th: 1 of 11 in the top 1, 6 in the top 5.
  features["imagenet_labels/label"] = tf.constant([4, 0, 7, 2, 8, 1, 5, 3, 6, 8, 1])
  metrics = task.model_fn(features, heads.Mode.EVAL).metrics
  assert float(metrics["top1"]) == pytest.approx(1 / 11, abs=1e-7)
  assert float(metrics["top5"]) == pytest.approx(6 / 11, abs=1e-7)


def test_input_fn_on_mock_imagenet():
  trunk = trunk_lib.Trunk(depth=26)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    task = imagenet_labels.ImagenetLabels(trunk, batch_size=3, crop_size=32)
    batch = next(iter(task.input_fn()))
  assert batch["imagenet_labels/image"].shape == (3, 32, 32, 3)
  labels = batch["imagenet_labels/label"].numpy()
  assert ((labels >= 1) & (labels <= 1000)).all()


def test_trains_through_the_loop_and_its_checkpoint_feeds_trunk_and_box_head(tmp_path):
  common.parse_gin([], [
      "Trunk.depth = 26", "MultiTaskTrainer.tasks = ['imagenet_labels']",
      "imagenet_labels.dataset = 'toy'", "imagenet_labels.num_toy_images = 64",
      "imagenet_labels.batch_size = 8", "imagenet_labels.crop_size = 64",
      "imagenet_labels/TaskSettings.learning_rate = 1e-3",
      "imagenet_labels/TaskSettings.decay_rate = 0.5",
      "imagenet_labels/TaskSettings.decay_steps = 2",
      "MultiTaskTrainer.checkpoint_every_secs = None", "MultiTaskTrainer.log_every_secs = 1000",
  ])
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"))
  trainer.train(num_steps=4)
  optimizer = trainer.optimizers["imagenet_labels"]
  # The baseline's schedule: the rate times decay_rate every decay_steps updates (staircase):
  # updates 1-2 at 1e-3, 3-4 at 5e-4 (`learning_rate` is the last update's), 5-6 at 2.5e-4.
  assert int(optimizer.iterations) == 4
  assert float(optimizer.learning_rate) == pytest.approx(1e-3 * 0.5)
  schedule = optimizer._learning_rate  # pylint: disable=protected-access
  assert float(schedule(4)) == pytest.approx(1e-3 * 0.5**2)

  task = trainer.tasks["imagenet_labels"]
  trunk = trunk_lib.Trunk(depth=26)
  report = trunk_lib.init_from_checkpoint(trunk, str(tmp_path / "run"))
  assert len(report.loaded) == len(trunk.variables)
  # Block 4, post-norm and the logits are not the trunk's: skipped, by name.
  assert "resnet_v2_26/logits/weights" in report.skipped
  np.testing.assert_array_equal(trunk.variables[0].numpy(), trainer.trunk.variables[0].numpy())

  # Detection's box head loads block 4 and post-norm from the same checkpoint.
  from mtssl_tf.evals import faster_rcnn  # pylint: disable=g-import-not-at-top
  head = faster_rcnn.SlimBlock4BoxHead(4, depth=26)
  head(tf.zeros([1, 2, 14, 14, trunk_lib.NUM_OUTPUT_CHANNELS]), training=False)
  loaded = faster_rcnn.load_box_head_checkpoint(head, str(tmp_path / "run"))
  assert len(loaded) == len(head.slim_variables) > 20
  ours = task.block4.slim_variables
  for name in loaded:
    np.testing.assert_array_equal(head.slim_variables[name].numpy(), ours[name].numpy())


def test_block4_loads_from_a_slim_style_checkpoint_and_names_what_is_missing(tmp_path):
  layer = block4_lib.Block4(depth=26, num_classes=5)
  out = layer(tf.zeros([2, 3, 3, 1024]), training=False)
  assert out["block4"].shape == (2, 3, 3, 2048)  # stride 1, as slim's
  assert out["pooled"].shape == (2, 2048) and out["logits"].shape == (2, 5)
  values = {n: np.full(v.shape, 0.5, np.float32) for n, v in layer.slim_variables.items()}
  with tf.Graph().as_default():
    for name, value in values.items():
      tf.compat.v1.Variable(value, name=name)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = tf.compat.v1.train.Saver().save(session, str(tmp_path / "resnet_v2_26.ckpt"))
  assert block4_lib.load_checkpoint(layer.slim_variables, prefix) == sorted(values)
  assert float(layer.slim_variables["resnet_v2_26/logits/biases"][0]) == 0.5
  other = block4_lib.Block4(depth=26, num_classes=7)
  other(tf.zeros([1, 1, 1, 1024]))
  with pytest.raises(ValueError, match=r"Mis-shaped 2 variables: resnet_v2_26/logits/biases"):
    block4_lib.load_checkpoint(other.slim_variables, prefix)
