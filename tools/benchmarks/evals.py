"""The "evals" benchmark: each evaluation's inference and training step beside the bare trunk's.

For each evaluation (`--evals`: ImageNet linear probe 224x224, batch 8, stride 32; NYU depth
240x320, batch 4, stride 16; VOC detection 512x512, batch 2, stride 16), in images/s: its
inference (`Evaluator.predict`) beside the bare trunk's forward pass on the same images at the
same stride, and its training step as the evaluation loop takes it (`Evaluator.train_step`:
the TRAIN loss, plus the trunk's weight decay where the trunk is fine-tuned; gradients over the
head's variables, and the trunk's only where the evaluation fine-tunes it; SGD with momentum)
beside a bare trunk training step (forward at that stride, backward, RMSProp) on the same
images. The probe and depth get random images with constant labels; detection gets a batch of
its toy scenes, drawn at its input size, through its own parser (image_info, anchor targets,
ground truth). The four measurements alternate in rounds and the median round is kept.
"""

from absl import app
from absl import flags
import tensorflow as tf

from benchmarks import common
from mtssl_tf import evaluation as evaluation_lib
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.data import toy_detection
from mtssl_tf.data import toy_shapes
from mtssl_tf.evals import base as evals_base
from mtssl_tf.evals import imagenet_linear
from mtssl_tf.evals import voc_detection

# Per evaluation: (height, width) of its network input and its batch.
SIZES = {"imagenet_linear": ((224, 224), 8), "nyu_depth": ((240, 320), 4),
         "voc_detection": ((512, 512), 2)}


class FewScenesDetection(voc_detection.VocDetection):
  """VOC detection on `2 x batch_size` toy scenes drawn at the network's input size.

  The toy set's default 256 + 64 scenes at 512x512 take ~25 s to draw; one batch is timed.
  """

  def __init__(self, trunk, size, batch_size):
    height, width = size
    super().__init__(trunk, dataset="toy", batch_size=batch_size, min_size=min(size),
                     max_size=max(size), padded_size=(height, width), shuffle_buffer=batch_size)
    self.scene_size = (height, width)

  def toy_data(self, training):
    return toy_detection.make_scenes(num_scenes=2 * self.batch_size, size=self.scene_size,
                                     num_classes=self.num_classes, seed=0 if training else 1)


class ThousandClassProbe(imagenet_linear.ImagenetLinear):
  """The linear probe with ImageNet's 1000 classes (the classifier's size), built on a few images
  of the toy set (its 8 shape classes: nothing to download)."""

  def __init__(self, trunk, batch_size):
    super().__init__(trunk, dataset="toy", batch_size=batch_size, num_classes=1000,
                     num_toy_images=2 * batch_size)

  def toy_data(self, training):
    return toy_shapes.toy_classification(num_images=self.num_toy_images,
                                         seed=0 if training else 1)


def eval_features(name, trunk, size, batch):
  """(evaluation, training batch, PREDICT batch, input description) of evaluation `name`.

  The linear probe (`ThousandClassProbe`) and depth take random images with constant labels
  (built on the toy set: nothing to download). Detection's features (image_info, anchor
  targets, ground truth) come from its own parser on its toy scenes (`FewScenesDetection`).
  """
  height, width = size
  if name == "voc_detection":
    evaluation = FewScenesDetection(trunk, size, batch)
    train = next(iter(evaluation.input_fn(None, split="train")))
    test = next(iter(evaluation.input_fn(None, split=evaluation.eval_split)))
    return evaluation, train, test, "toy scenes through its parser"
  features = {f"{name}/image": input_convention.to_trunk_input(
      tf.random.uniform([batch, height, width, 3], 0, 255, seed=0))}
  if name == "imagenet_linear":
    evaluation = ThousandClassProbe(trunk, batch)
    features["imagenet_linear/label"] = tf.zeros([batch], tf.int32)
  else:
    evaluation = evals_base.get(name)(trunk, dataset="toy", batch_size=batch)
    features["nyu_depth/depth"] = tf.ones([batch, height, width])
    features["nyu_depth/valid"] = tf.ones([batch, height, width], tf.bool)
  return evaluation, features, features, "random images, constant labels"


def run(emit, evals, depth, steps, rounds, sizes=None):
  """Emits one "eval" record per evaluation; `sizes` overrides `SIZES` ({name: (size, batch)})."""
  sizes = dict(SIZES, **(sizes or {}))
  unknown = set(evals) - set(sizes)
  if unknown:
    raise app.UsageError(f"--evals: unknown {sorted(unknown)}; choose from {sorted(SIZES)}.")
  for name in evals:
    _eval_against_trunk(emit, name, depth, steps, rounds, *sizes[name])


def _eval_against_trunk(emit, name, depth, steps, rounds, size, batch):
  trunk = trunk_lib.Trunk(depth=depth)
  evaluation, train_features, features, source = eval_features(name, trunk, size, batch)
  images, train_images = features[f"{name}/image"], train_features[f"{name}/image"]
  stride = evaluation.output_stride
  # The evaluation loop's own step (SGD on its protocol's schedule, weight decay, lasso).
  evaluator = evaluation_lib.Evaluator(name, init="random", trunk=trunk, evaluation=evaluation)
  forward = tf.function(lambda x: trunk(x, training=False, output_stride=stride)["block3"])
  trunk_step = common.make_train_step(
      lambda x: trunk(x, training=True, output_stride=stride)["block3"],
      trunk.trainable_variables)
  seconds, rounds_s = common.alternate({
      "predict": lambda: evaluator.predict(features),
      "forward": lambda: forward(images),
      "eval_train": lambda: evaluator.train_step(train_features)[0],
      "trunk_train": lambda: trunk_step(train_images),
  }, rounds, steps)
  emit(benchmark="eval", evaluation=name, depth=depth, size=list(size), batch_size=batch,
       output_stride=stride, input=source,
       eval_images_per_s=round(batch / seconds["predict"], 2),
       trunk_forward_images_per_s=round(batch / seconds["forward"], 2),
       ratio_eval_over_trunk=round(seconds["forward"] / seconds["predict"], 3),
       eval_trains_trunk=evaluation.fine_tunes_trunk,
       eval_train_images_per_s=round(batch / seconds["eval_train"], 2),
       trunk_train_images_per_s=round(batch / seconds["trunk_train"], 2),
       ratio_eval_train_over_trunk_train=round(seconds["trunk_train"] / seconds["eval_train"], 3),
       round_s={k: [round(t, 3) for t in v] for k, v in rounds_s.items()})


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of 'evals' only (common.define_flags has the shared ones)."""
  flags.DEFINE_list("evals", list(SIZES), f"'evals': evaluations to measure, of {list(SIZES)}.",
                    flag_values=flag_values)


def run_from_flags(emit, values=flags.FLAGS):
  run(emit, values.evals, values.task_depth, values.steps, values.rounds)
