"""The trunk's input convention, defined once.

Every task, evaluation and export turns images into trunk input with `to_trunk_input`, so the
convention cannot drift between them. It is the convention of tf-slim's ImageNet ResNet-v2
checkpoints and of the paper's released weights:

  * channel order RGB, NHWC;
  * pixel values in [0, 255] (uint8 images are cast, float images are taken as they are);
  * the per-channel ImageNet mean `MEAN_RGB` subtracted; no division by a standard deviation.

Tasks that build their input in the mean-subtracted space (relative position's color dropping
replaces channels by noise around zero) use `MEAN_RGB` from here too.
"""

import tensorflow as tf

# Per-channel mean of ImageNet in RGB order, on the 0-255 scale (slim's vgg_preprocessing).
MEAN_RGB = (123.68, 116.779, 103.939)
# The value range trunk images live in before the mean is subtracted.
PIXEL_MAX = 255.0
NUM_CHANNELS = 3

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def check_images(images, name="images"):
  """Checks that `images` is a rank-4 NHWC batch with 3 channels; returns it as a tensor.

  Args:
    images: a Tensor or array of shape [batch, height, width, 3].
    name: what to call the argument in error messages.

  Returns:
    `images` as a `tf.Tensor`.

  Raises:
    ValueError: on a wrong rank or channel count (known statically).
  """
  images = tf.convert_to_tensor(images)
  shape = images.shape
  if shape.rank is not None and shape.rank != 4:
    raise ValueError(
        f"{name} must be a batch of images of shape [batch, height, width, 3] (rank 4), got "
        f"rank {shape.rank} with shape {shape}. Add a batch axis with tf.expand_dims(x, 0) "
        "for a single image.")
  if shape.rank == 4 and shape[-1] is not None and shape[-1] != NUM_CHANNELS:
    raise ValueError(
        f"{name} must have 3 channels (RGB, NHWC), got {shape[-1]} in shape {shape}. "
        "Replicate a grayscale channel with tf.image.grayscale_to_rgb; drop an alpha channel "
        "with x[..., :3]; transpose NCHW to NHWC.")
  return images


def to_trunk_input(images, dtype=tf.float32):
  """Maps RGB images in [0, 255] to the trunk's input: float, ImageNet mean subtracted.

  Args:
    images: uint8 or float Tensor [batch, height, width, 3], RGB, values in [0, 255].
    dtype: the float dtype of the result.

  Returns:
    A `dtype` Tensor [batch, height, width, 3] equal to `images - MEAN_RGB`.

  Raises:
    ValueError: on a wrong rank or channel count.
    TypeError: on a dtype other than uint8 or float.
  """
  images = check_images(images)
  if images.dtype != tf.uint8 and images.dtype not in _FLOAT_DTYPES:
    raise TypeError(
        f"images must be uint8 or float RGB in [0, 255], got dtype {images.dtype.name}. "
        "Cast with tf.cast(x, tf.float32) if the values are already on the 0-255 scale.")
  images = tf.cast(images, dtype)
  return images - tf.constant(MEAN_RGB, dtype=dtype)


def from_trunk_input(inputs):
  """Inverse of `to_trunk_input` for float inputs: adds the mean back (for visualisation)."""
  inputs = tf.convert_to_tensor(inputs)
  return inputs + tf.constant(MEAN_RGB, dtype=inputs.dtype)
