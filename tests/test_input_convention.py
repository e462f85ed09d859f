"""Tests of the one input convention: RGB in [0, 255] minus the ImageNet mean."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import input_convention


def test_uint8_and_float_give_the_same_mean_subtracted_input():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  expected = np.array([[[[-123.68, 128 - 116.779, 255 - 103.939]]]], np.float32)
  np.testing.assert_allclose(input_convention.to_trunk_input(images).numpy(), expected, atol=1e-4)
  np.testing.assert_allclose(
      input_convention.to_trunk_input(images.astype(np.float32)).numpy(), expected, atol=1e-4)


def test_round_trip():
  images = np.random.RandomState(0).uniform(0, 255, [2, 5, 7, 3]).astype(np.float32)
  back = input_convention.from_trunk_input(input_convention.to_trunk_input(images))
  np.testing.assert_allclose(back.numpy(), images, atol=1e-4)


def test_inside_tf_data():
  ds = tf.data.Dataset.from_tensors(tf.fill([1, 4, 4, 3], tf.constant(200, tf.uint8)))
  ds = ds.map(input_convention.to_trunk_input)
  out = next(iter(ds)).numpy()
  np.testing.assert_allclose(out[0, 0, 0], 200 - np.array(input_convention.MEAN_RGB), atol=1e-4)


@pytest.mark.parametrize("shape,message", [
    ([4, 4, 3], "rank 3"),
    ([1, 4, 4, 4], "3 channels"),
    ([1, 4, 4, 1], "grayscale_to_rgb"),
])
def test_bad_shapes_are_named(shape, message):
  with pytest.raises(ValueError, match=message):
    input_convention.to_trunk_input(np.zeros(shape, np.uint8))


def test_bad_dtype_is_named():
  with pytest.raises(TypeError, match="int32"):
    input_convention.to_trunk_input(np.zeros([1, 4, 4, 3], np.int32))
