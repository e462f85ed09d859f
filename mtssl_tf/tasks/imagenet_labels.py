"""The ImageNet-labels baseline (paper section 5, "ImageNet"): the whole ResNet-101 v2 on labels.

Not a pretext task but trained by the same loop, so that it gets the same trunk, data, resume,
distribution and checkpoints: `gin/experiments/imagenet_supervised.gin`. The network is slim's
full `resnet_v2_<depth>`: the shared trunk (blocks 1-3, output stride 32), then `block4.Block4`
with logits (block 4, post-norm, global average pool, a 1x1 convolution), all under slim's
variable names, with slim's 1001 outputs (class 0 is a background class that no image has) by
default. Its checkpoints therefore serve the evaluations as the paper's baseline did: the trunk
loads from them (`mtssl-evaluate --checkpoint=...`), and so does Faster R-CNN's block-4 box head
(`voc_detection.block4_checkpoint`); slim's public `resnet_v2_101.ckpt` is interchangeable with
them.

Preprocessing (training): a random crop covering 8-100% of the image's area with aspect ratio
3/4-4/3, resized to 224x224, and a random horizontal flip (the "Inception" crop that slim's
ResNet-v2 checkpoints were trained with). Evaluation: the image resized so its shorter side is
256, the center 224 crop. Loss: softmax cross-entropy (optionally label-smoothed) plus slim's
weight decay on block 4 and the logits (the trunk's is added by the training loop).
"""

import gin
import tensorflow as tf

from mtssl_tf import block4 as block4_lib
from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.data import toy
from mtssl_tf.tasks import base

# Classes of the built-in toy set (toy images labelled by hue; see data/toy.py).
TOY_NUM_CLASSES = 8


@gin.configurable("preprocess", module="imagenet_labels", denylist=["example", "training"])
def preprocess(example, training=True, crop_size=224, resize=256, area_range=(0.08, 1.0),
               aspect_ratio_range=(3 / 4, 4 / 3), label_offset=1, seed=None):
  """{'image': uint8 [H, W, 3], 'label': int} -> the task's features (no batch axis).

  Args:
    example: dict with 'image' and 'label'.
    training: random crop and flip when True; center crop otherwise.
    crop_size: side of the network input.
    resize: evaluation only: the shorter side is resized to this before the center crop.
    area_range: training crop area, as fractions of the image's.
    aspect_ratio_range: training crop width / height.
    label_offset: added to the label (1: slim's background class 0 comes first).
    seed: optional op seed (each random op gets its own, derived from it).

  Returns:
    {'imagenet_labels/image': float32 [S, S, 3] trunk input, 'imagenet_labels/label': int32 []}.
  """
  image = example["image"]
  if training:
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=20,
        use_image_if_no_bounding_boxes=True, seed=seed)
    image = tf.slice(image, begin, size)
    image = tf.image.resize(tf.cast(image, tf.float32), [crop_size, crop_size],
                            method="bilinear", antialias=True)
    image = tf.image.random_flip_left_right(image, seed=None if seed is None else seed + 1)
  else:
    image = sources.center_crop(sources.resize_shorter_side(image, max(resize, crop_size)),
                                crop_size)
  image = tf.ensure_shape(image, [crop_size, crop_size, 3])
  return {"imagenet_labels/image": input_convention.to_trunk_input(image[None])[0],
          "imagenet_labels/label": tf.cast(example["label"], tf.int32) + label_offset}


@base.register("imagenet_labels")
@gin.configurable("imagenet_labels")
class ImagenetLabels(base.Task):
  """Trunk + slim's block 4, post-norm and logits, trained with softmax cross-entropy."""

  output_stride = 32

  def __init__(self, trunk, source_fn=None, dataset="imagenet2012", split="train",
               num_classes=None, background_class=True, batch_size=32, crop_size=224,
               label_smoothing=0.0, num_toy_images=256, shuffle_buffer=1024):
    """Creates the head (variables are made on the first `model_fn` call).

    Args:
      trunk: the shared `Trunk`.
      source_fn: None, or a function (input_context) -> unbatched dataset of {'image',
        'label'} replacing `dataset` (tests).
      dataset: a TFDS classification dataset with 'image' and 'label' ("imagenet2012",
        prepared from its manual download; see WORKSPACE.md), or "toy".
      split: its TFDS split.
      num_classes: the dataset's classes; None reads them from its TFDS info (1000 for
        ImageNet, which TFDS knows without the data) or 8 for "toy".
      background_class: one more output, class 0, before the dataset's (slim's 1001-way
        logits), so that checkpoints match slim's `resnet_v2_<depth>.ckpt` in every shape.
      batch_size: global batch size.
      crop_size: network input side.
      label_smoothing: of the cross-entropy (0: none).
      num_toy_images: images generated for "toy".
      shuffle_buffer: examples in the shuffle buffer.
    """
    super().__init__(trunk, source_fn)
    self.dataset = dataset
    self.split = split
    if num_classes is None:
      num_classes = TOY_NUM_CLASSES if dataset == "toy" else _tfds_num_classes(dataset)
    self.num_dataset_classes = num_classes
    self.label_offset = 1 if background_class else 0
    self.batch_size = batch_size
    self.crop_size = crop_size
    self.label_smoothing = label_smoothing
    self.num_toy_images = num_toy_images
    self.shuffle_buffer = shuffle_buffer
    self.block4 = block4_lib.Block4(
        depth=trunk.depth, num_classes=num_classes + self.label_offset,
        weight_decay=trunk.weight_decay, batch_norm_decay=trunk.batch_norm_decay,
        batch_norm_epsilon=trunk.batch_norm_epsilon)

  @property
  def num_classes(self):
    """Outputs of the logits layer (the dataset's classes, plus the background class)."""
    return self.num_dataset_classes + self.label_offset

  def examples(self, input_context=None):
    """Unbatched labelled examples {'image', 'label'}, sharded for `input_context`."""
    if self.source_fn is not None:
      return self.source_fn(input_context)
    if self.dataset == "toy":
      data = toy.toy_classification(num_images=self.num_toy_images,
                                    num_classes=self.num_dataset_classes, seed=0)
      dataset = tf.data.Dataset.from_tensor_slices(data)
      if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
      return dataset
    dataset, _ = sources.tfds_split(self.dataset, self.split, input_context=input_context,
                                    shuffle_files=True)
    return dataset.map(lambda ex: {"image": ex["image"], "label": ex["label"]},
                       num_parallel_calls=tf.data.AUTOTUNE)

  def images(self, input_context=None):
    return self.examples(input_context)

  def input_fn(self, input_context=None):
    return self.pipeline(
        input_context,
        lambda ex: preprocess(ex, training=True, crop_size=self.crop_size,
                              label_offset=self.label_offset),
        shuffle_buffer=self.shuffle_buffer)

  def model_fn(self, features, mode):
    training = mode == heads.Mode.TRAIN
    block3 = self.representation(features[self.key("image")], training)
    logits = tf.cast(self.block4(block3, training=training)["logits"], tf.float32)
    predictions = {self.key("logits"): logits,
                   self.key("class"): tf.argmax(logits, -1, output_type=tf.int32)}
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    labels = features[self.key("label")]
    targets = tf.one_hot(labels, self.num_classes)
    cross_entropy = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(
        targets, logits, from_logits=True, label_smoothing=self.label_smoothing))
    loss = cross_entropy + self.block4.regularization_loss()
    top1 = tf.reduce_mean(tf.cast(tf.equal(predictions[self.key("class")], labels),
                                  tf.float32))
    top5 = tf.reduce_mean(tf.cast(tf.nn.in_top_k(labels, logits, 5), tf.float32))
    return heads.Spec(loss=loss, predictions=predictions,
                      metrics={"cross_entropy": cross_entropy, "top1": top1, "top5": top5})


def _tfds_num_classes(name):
  """A TFDS dataset's label classes, from its code (no data needed for ImageNet's)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.builder(name).info.features
  if "label" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'label' feature (it has "
                     f"{sorted(features.keys())}); imagenet_labels needs a classification "
                     "dataset (gin: imagenet_labels.dataset).")
  return features["label"].num_classes
