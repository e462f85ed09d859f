"""ImageNet with frozen features (paper section 5): a linear classifier on the frozen trunk.

Protocol (section 5): "a single linear classification layer (a softmax) ... at the end of
block 3", trained "on the full ImageNet training set" with every pretrained weight frozen, tested
on the ImageNet validation set (50,000 images). The trunk runs at output stride 32 in inference
mode; its weights never change, and its batch norm statistics are re-estimated on ImageNet
training images before training (`batch_norm_statistics="estimate"`): a multi-task checkpoint's
moving averages mix four tasks' differently preprocessed inputs, and a random trunk has none.
Block 3's output, 7x7x1024 for a 224 px crop, is max-pooled to 3x3x1024 (3x3 windows, stride 2),
flattened and fed to one linear softmax layer. With an evaluation lasso (paper Table 4, "eval
lasso") the layer reads a learned combination of the frozen outputs of all block 3 units
instead (section 3.2): the gradient stops at the unit outputs, so the alpha row trains and the
trunk does not.

Before the classifier, a batch normalization without scale or offset (`normalize_features`, on
by default; as in MAE's linear probing) standardizes each feature: the classifier stays linear in
the features (at test time it is a fixed affine map), but one learning rate then suits every
trunk, whose feature scales differ by orders of magnitude (a random trunk's block 3, with
untrained batch norm statistics, reaches 1e5).

Augmentation, "in translation and color, following Szegedy et al.": a random 224 crop of the
image resized so that its shorter side is 256 (translation only, no scale change), then the
photometric distortions of TF-slim's Inception preprocessing (`distort_color`: brightness
+-32/255, saturation and contrast x[0.5, 1.5], hue +-0.2, in one of its four orders picked per
image). Test: the center 224 crop of the same resize, no multi-crop, no mirroring. Metrics:
top-1 (paper Table 1) and top-5 accuracy (the paper's "recall at 5"), over the whole split.

Schedule (the paper does not give one): SGD with momentum 0.9, batch 256, learning rate 0.1,
30 epochs, x0.1 after 10 and 20 epochs; no weight decay. This is the usual ImageNet SGD recipe
(momentum 0.9, 0.1 at batch 256, step decays by 10) shortened for a convex problem on fixed
features, as linear-probe benchmarks on frozen ImageNet features do (e.g. Goyal et al., 2019,
about 30 epochs with x0.1 steps). The features are standardized (above), so the rate does not
depend on the trunk's feature scale.

Small training sets (the demo's toy set) can train the layer on cached features
(`imagenet_linear/EvalSettings.feature_cache_passes`): `frozen_features` gives the pooled block
3 of a few augmented passes once, and the layer then trains on them for as many steps as it
needs without running the trunk again. The paper's protocol trains on the images.

Data: TFDS `imagenet2012` (manual download), or any TFDS classification dataset with 'image'
and 'label' features (`imagenet_linear.dataset`), or a built-in toy set (`"toy"`: toy images
one object each, labelled by its shape, its color drawn independently of the class:
`mtssl_tf.data.toy_shapes`, for the demo and tests).
"""

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import input_convention
from mtssl_tf.data import sources
from mtssl_tf.data import toy
from mtssl_tf.evals import base

RESIZE = 256
# The key of cached frozen features (`frozen_features`) in the features `model_fn` reads.
FEATURES = "imagenet_linear/frozen_features"

# TF-slim's inception_preprocessing.distort_color (fast_mode=False): its four orders of the
# color ops, one picked at random per image (the ops do not commute).
COLOR_ORDERS = (("brightness", "saturation", "hue", "contrast"),
                ("saturation", "brightness", "contrast", "hue"),
                ("contrast", "hue", "brightness", "saturation"),
                ("hue", "saturation", "contrast", "brightness"))


def distort_color(image, brightness, contrast, saturation, hue, seed=None):
  """Szegedy et al.'s photometric distortions as TF-slim's Inception preprocessing does them.

  Args:
    image: float [H, W, 3] in [0, 1].
    brightness: largest brightness shift (a fraction of the range); 0 for none.
    contrast, saturation: factors drawn from [1 - x, 1 + x]; 0 for none.
    hue: largest hue shift (a fraction of the hue circle); 0 for none.
    seed: optional op seed.

  Returns:
    float [H, W, 3], clipped to [0, 1].
  """
  ops = {
      "brightness": lambda x: tf.image.random_brightness(x, brightness, seed=seed),
      "saturation": lambda x: tf.image.random_saturation(x, 1 - saturation, 1 + saturation,
                                                         seed=seed),
      "hue": lambda x: tf.image.random_hue(x, hue, seed=seed),
      "contrast": lambda x: tf.image.random_contrast(x, 1 - contrast, 1 + contrast, seed=seed),
  }
  ranges = {"brightness": brightness, "saturation": saturation, "hue": hue,
            "contrast": contrast}

  def ordered(order):
    def apply():
      out = image
      for name in order:
        if ranges[name]:
          out = ops[name](out)
      return out
    return apply

  which = tf.random.uniform([], maxval=len(COLOR_ORDERS), dtype=tf.int32, seed=seed)
  image = tf.switch_case(which, [ordered(order) for order in COLOR_ORDERS])
  return tf.clip_by_value(image, 0.0, 1.0)


@gin.configurable("preprocess", module="imagenet_linear", denylist=["example", "training"])
def preprocess(example, training, crop_size=224, resize=RESIZE, brightness=32 / 255,
               contrast=0.5, saturation=0.5, hue=0.2, seed=None):
  """{'image': uint8 [H, W, 3], 'label': int} -> trunk input and label.

  Args:
    example: dict with 'image' and 'label'.
    training: random crop and color changes when True, center crop otherwise.
    crop_size: crop side (224).
    resize: the image's shorter side is resized to this first (256).
    brightness, contrast, saturation, hue: color distortion ranges (`distort_color`; TF-slim's
      Inception values by default; 0 turns one off).
    seed: optional op seed.

  Returns:
    {'imagenet_linear/image': float32 [S, S, 3], 'imagenet_linear/label': int32 []}.
  """
  image = sources.resize_shorter_side(example["image"], max(resize, crop_size))
  if training:
    image = tf.image.random_crop(image, [crop_size, crop_size, 3], seed=seed)
    image = distort_color(image / 255.0, brightness, contrast, saturation, hue, seed) * 255.0
  else:
    image = sources.center_crop(image, crop_size)
  image = tf.ensure_shape(image, [crop_size, crop_size, 3])
  return {"imagenet_linear/image": input_convention.to_trunk_input(image[None])[0],
          "imagenet_linear/label": tf.cast(example["label"], tf.int32)}


# The toy set lives with the toy images; the ImageNet-labels baseline trains on it too.
toy_classification = toy.toy_classification


class TopKAccumulator(base.MetricsAccumulator):
  """Top-1 and top-5 accuracy over a whole split."""

  def __init__(self):
    self.count = 0
    self.top1 = 0
    self.top5 = 0

  def update(self, features, predictions):
    labels = np.asarray(features["imagenet_linear/label"])
    logits = np.asarray(predictions["imagenet_linear/logits"])
    top = np.argsort(-logits, axis=-1)[:, :5]
    self.count += len(labels)
    self.top1 += int((top[:, 0] == labels).sum())
    self.top5 += int((top == labels[:, None]).any(axis=1).sum())

  def result(self):
    count = max(self.count, 1)
    return {"top1": self.top1 / count, "top5": self.top5 / count, "examples": self.count}


@base.register("imagenet_linear")
@gin.configurable("imagenet_linear")
class ImagenetLinear(base.Evaluation):
  """Linear softmax on max-pooled block 3 of the frozen trunk."""

  output_stride = 32
  fine_tunes_trunk = False
  # The schedule (module docstring): 30 epochs of SGD with momentum 0.9 at 0.1, x0.1 after 10
  # and 20 epochs; batch norm statistics re-estimated on the training images, weights frozen.
  protocol = dict(train_epochs=30, learning_rate=0.1, momentum=0.9, decay_rate=0.1,
                  decay_at=(1 / 3, 2 / 3), clip_gradient_norm=0.0,
                  batch_norm_statistics="estimate")

  def __init__(self, trunk, dataset="imagenet2012", train_split="train",
               eval_split="validation", num_classes=None, batch_size=256, crop_size=224,
               shuffle_buffer=1024, normalize_features=True, num_toy_images=128):
    """Creates the linear layer.

    Args:
      trunk: the trunk (frozen here).
      dataset: TFDS name of a classification dataset ('image', 'label'), or "toy".
      train_split, eval_split: TFDS splits (ImageNet's full training set and its 50,000
        validation images).
      num_classes: classes; None reads them from the dataset's info (8 for "toy": more than
        5, so that top-5 means something).
      batch_size: global batch size.
      crop_size: crop side.
      shuffle_buffer: training examples in the shuffle buffer.
      normalize_features: standardize the pooled features (batch norm, no scale or offset).
      num_toy_images: images of each split of the "toy" set.
    """
    super().__init__(trunk)
    self.dataset = dataset
    self.train_split = train_split
    self.eval_split = eval_split
    self.batch_size = batch_size
    self.crop_size = crop_size
    self.shuffle_buffer = shuffle_buffer
    self.num_toy_images = num_toy_images
    if num_classes is None:
      num_classes = 8 if dataset == "toy" else None
    self.num_classes = num_classes
    self.pool = tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding="valid")
    self.flatten = tf.keras.layers.Flatten()
    self.normalize = (tf.keras.layers.BatchNormalization(center=False, scale=False,
                                                         epsilon=1e-6, name="feature_norm")
                      if normalize_features else None)
    self.classifier = None  # made once num_classes is known (from the dataset's info)

  def toy_data(self, training):
    return toy_classification(num_images=self.num_toy_images, num_classes=self.num_classes,
                              seed=0 if training else 1)

  def dataset_info(self, info):
    if self.num_classes is None:
      self.num_classes = info.features["label"].num_classes

  def preprocess_example(self, example, training):
    return preprocess(example, training, crop_size=self.crop_size)

  def model_fn(self, features, mode):
    if self.classifier is None:
      if self.num_classes is None:
        raise ValueError("imagenet_linear needs num_classes: bind imagenet_linear.num_classes "
                         "or build the input first (it reads the dataset's info).")
      self.classifier = tf.keras.layers.Dense(self.num_classes, name="linear")
    if FEATURES in features:  # cached by frozen_features
      features_flat = features[FEATURES]
    else:
      # Frozen: inference-mode batch norm whatever the mode; the gradient stops at the trunk's
      # outputs, before the lasso combination: no gradient reaches the trunk, while the
      # evaluation lasso's alpha row learns "the weight for each layer" of "the (frozen)
      # features from all block 3 layers" (paper section 5).
      block3 = self.representation(features["imagenet_linear/image"], False, frozen=True)
      features_flat = self.flatten(self.pool(block3))
    if self.normalize is not None:
      features_flat = self.normalize(features_flat, training=mode == heads.Mode.TRAIN)
    logits = self.classifier(features_flat)
    predictions = {"imagenet_linear/logits": logits,
                   "imagenet_linear/label": tf.argmax(logits, -1, output_type=tf.int32)}
    if mode == heads.Mode.PREDICT:
      return heads.Spec(predictions=predictions)
    labels = features["imagenet_linear/label"]
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, tf.cast(logits, tf.float32)))
    top1 = tf.reduce_mean(tf.cast(tf.equal(predictions["imagenet_linear/label"], labels),
                                  tf.float32))
    top5 = tf.reduce_mean(tf.cast(tf.nn.in_top_k(labels, logits, 5), tf.float32))
    return heads.Spec(loss=loss, predictions=predictions, metrics={"top1": top1, "top5": top5})

  def metrics_accumulator(self):
    return TopKAccumulator()

  def frozen_features(self, features):
    """Max-pooled, flattened block 3 of the frozen trunk, and the label (none with a lasso,
    whose alpha row trains)."""
    if self.lasso is not None:
      return None
    block3 = self.representation(features["imagenet_linear/image"], False, frozen=True)
    return {FEATURES: self.flatten(self.pool(block3)),
            "imagenet_linear/label": features["imagenet_linear/label"]}
