"""Tests of the lasso: combination, equal sizes, row sums, sparsity on a synthetic problem."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.tasks import base


def test_combination_is_the_weighted_sum_and_last_init_is_the_plain_trunk():
  lasso = lasso_lib.Lasso(["a", "b"], num_units=3, init="last")
  units = [tf.fill([1, 2, 2, 4], float(m + 1)) for m in range(3)]
  np.testing.assert_allclose(lasso.combine("a", units).numpy(), 3.0)
  lasso.row("b").assign([0.5, -0.25, 0.75])
  np.testing.assert_allclose(lasso.combine("b", units).numpy(), 0.5 - 0.5 + 2.25)
  uniform = lasso_lib.Lasso(["a"], num_units=4, init="uniform")
  np.testing.assert_allclose(uniform.row("a").numpy(), 0.25)
  np.testing.assert_allclose(lasso.penalty("b").numpy(), 1e-3 * 1.5, rtol=1e-6)
  assert lasso.matrix().shape == (2, 3)
  # Readable at any size: each entry a 12 x 12 square, shaded sqrt(|alpha|) / max.
  image = lasso.image().numpy()
  assert image.shape == (1, 24, 36, 1) and image.max() == 1.0
  np.testing.assert_allclose(image[0, :12, :24, 0], 0.0)  # a: all on its last unit
  np.testing.assert_allclose(image[0, :12, 24:36, 0], 1.0)
  np.testing.assert_allclose(image[0, 12:24, 12:24, 0], np.sqrt(0.25), rtol=1e-6)
  np.testing.assert_allclose(image[0, 12:24, 24:36, 0], np.sqrt(0.75), rtol=1e-6)
  table = lasso.markdown_table().splitlines()
  assert table[0] == "| | unit 1 | unit 2 | unit 3 |"
  assert table[3] == "| b | 0.500 | -0.250 | 0.750 |"
  with pytest.raises(KeyError, match="no row for 'c'"):
    lasso.row("c")
  with pytest.raises(ValueError, match="3 units got 2"):
    lasso.combine("a", units[:2])


def test_units_of_different_sizes_are_subsampled_like_slim():
  big = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
  small = tf.zeros([1, 2, 2, 1])
  equal = lasso_lib.equalize([big, small])
  np.testing.assert_array_equal(equal[0].numpy()[0, ..., 0], [[0, 2], [8, 10]])
  # At output stride 32, block 3's last unit is half the size of the others.
  trunk = trunk_lib.Trunk(depth=26)
  endpoints = trunk(tf.zeros([1, 64, 64, 3]))
  units = [endpoints[n] for n in trunk_lib.unit_endpoint_names(26)]
  assert units[0].shape[1] == 2 * units[-1].shape[1]
  lasso = lasso_lib.Lasso(["t"], num_units=len(units))
  assert lasso.combine("t", units).shape == endpoints["block3"].shape


def test_rows_sum_to_one_after_many_updates():
  lasso = lasso_lib.Lasso(["a", "b"], num_units=23, l1_weight=0.01, init="uniform")
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=0.05)
  optimizer.build(list(lasso.trainable_variables))
  rng = np.random.RandomState(0)
  for step in range(300):
    name = "ab"[step % 2]
    with tf.GradientTape() as tape:
      target = tf.constant(rng.normal(size=[23]), tf.float32)
      loss = tf.reduce_sum(lasso.row(name) * target) ** 2 + lasso.penalty(name)
    optimizer.apply_gradients([(tape.gradient(loss, lasso.row(name)), lasso.row(name))])
    lasso.project(name)
    assert abs(float(tf.reduce_sum(lasso.row(name))) - 1.0) < 1e-5
  # Entries may be negative.
  assert lasso.matrix().numpy().min() < 0


def test_alpha_concentrates_on_the_one_unit_that_carries_the_signal():
  rng = np.random.RandomState(1)
  num_units, width = 6, 8
  lasso = lasso_lib.Lasso(["task"], num_units=num_units, l1_weight=0.02, init="uniform")
  readout = tf.Variable(rng.normal(size=[width, 1]).astype(np.float32) * 0.1)
  optimizer = tf.keras.optimizers.Adam(learning_rate=0.02)
  true_weights = rng.normal(size=[width, 1]).astype(np.float32)

  @tf.function  # one graph for the 600 small steps (eagerly, op dispatch dominates)
  def step(units):
    target = tf.reshape(units[3], [32, width]) @ true_weights
    with tf.GradientTape() as tape:
      combined = tf.reshape(lasso.combine("task", units), [32, width])
      loss = tf.reduce_mean((combined @ readout - target) ** 2) + lasso.penalty("task")
    variables = [lasso.row("task"), readout]
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    lasso.project("task")

  for _ in range(600):
    step([tf.constant(rng.normal(size=[32, 1, 1, width]), tf.float32)
          for _ in range(num_units)])
  alpha = lasso.row("task").numpy()
  assert np.argmax(np.abs(alpha)) == 3
  assert abs(alpha[3]) > 0.8 and np.abs(np.delete(alpha, 3)).max() < 0.1
  np.testing.assert_allclose(alpha.sum(), 1.0, atol=1e-5)


def test_tasks_read_their_lasso_row_and_do_not_own_it():
  trunk = trunk_lib.Trunk(depth=26)
  task = base.get("exemplar")(trunk, embedding_size=4, head_width=8, patch_size=32)
  lasso = lasso_lib.Lasso(["exemplar", "other"], num_units=2)
  task.lasso = lasso
  images = tf.random.uniform([2, 32, 32, 3], -100, 100)
  endpoints = trunk(images, training=False)
  plain = task.representation(images, training=False)
  np.testing.assert_allclose(plain.numpy(), endpoints["block3"].numpy(), rtol=1e-5, atol=1e-5)
  lasso.row("exemplar").assign([1.0, 0.0])
  mixed = task.representation(images, training=False)
  expected = endpoints["block3/unit_1"].numpy()[:, ::2, ::2]
  np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-5, atol=1e-5)
  task.model_fn({"exemplar/x1": images, "exemplar/x2": images}, heads.Mode.TRAIN)
  refs = {v.ref() for v in task.head_variables}
  assert not refs & {v.ref() for v in lasso.trainable_variables}
