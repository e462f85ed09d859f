"""The "trunk" benchmark: the trunk's training step beside the same network written in Keras.

The trunk's training step (forward, backward, RMSProp update) in images/s beside the same step
for `tf.keras.applications.ResNet101V2(weights=None, include_top=False)` cut at
`conv4_block23_out` (ResNet-v2 up to block 3, as the paper's trunk, section 3.1); and the trunk's
achieved GFLOP/s beside the best conv/matmul throughput measured on the machine in the same run.
The trunk and its peer alternate in rounds and the median round is kept.
"""

import time

from absl import flags
import tensorflow as tf

from benchmarks import common
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib


def measure_peak(seconds=3.0):
  """{name: best GFLOP/s} of a large matmul and of a ResNet-like 3x3 conv on this machine."""
  results = {}
  a = tf.random.normal([2048, 2048])
  matmul = tf.function(lambda x: tf.matmul(x, x))
  x = tf.random.normal([8, 28, 28, 256])
  w = tf.random.normal([3, 3, 256, 256])
  conv = tf.function(lambda x: tf.nn.conv2d(x, w, 1, "SAME"))
  for name, fn, arg, flops in [
      ("matmul_2048", matmul, a, 2 * 2048**3),
      ("conv3x3_256_28x28_b8", conv, x, 2 * 8 * 28 * 28 * 256 * 256 * 9),
  ]:
    fn(arg).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      fn(arg).numpy()
      count += 1
    results[name] = flops * count / (time.perf_counter() - start) / 1e9
  return results


def keras_peer(size):
  """Keras' ResNet101V2 up to block 3 (`conv4_block23_out`) on size x size inputs."""
  resnet = tf.keras.applications.ResNet101V2(
      weights=None, include_top=False, input_shape=(size, size, 3))
  return tf.keras.Model(resnet.input, resnet.get_layer("conv4_block23_out").output)


def run(emit, sizes, depth, batch_size, steps, rounds, peak_seconds=3.0):
  """Emits "peak", then one "trunk_train_step" record per size."""
  peak = measure_peak(peak_seconds)
  peak_gflops = max(peak.values())
  emit(benchmark="peak", **{f"{k}_gflops": round(v, 1) for k, v in peak.items()})
  for size in sizes:
    _trunk_against_keras(emit, size, depth, batch_size, steps, rounds, peak_gflops)


def _trunk_against_keras(emit, size, depth, batch_size, steps, rounds, peak_gflops):
  trunk = trunk_lib.Trunk(depth=depth)
  trunk(tf.zeros([1, size, size, 3]))
  flops_per_image = common.forward_flops(lambda x: trunk(x, training=False)["block3"],
                                         tf.TensorSpec([1, size, size, 3], tf.float32))
  peer = keras_peer(size)
  images = input_convention.to_trunk_input(tf.random.uniform([batch_size, size, size, 3], 0, 255))
  ours_step = common.make_train_step(lambda x: trunk(x, training=True)["block3"],
                                     trunk.trainable_variables)
  peer_step = common.make_train_step(lambda x: peer(x, training=True), peer.trainable_variables)
  seconds, rounds_s = common.alternate(
      {"trunk": lambda: ours_step(images), "keras": lambda: peer_step(images)}, rounds, steps)
  ours_ips, peer_ips = batch_size / seconds["trunk"], batch_size / seconds["keras"]
  # A training step costs about 3x the forward pass (forward, grad wrt inputs, grad wrt weights).
  achieved = 3 * flops_per_image * batch_size / seconds["trunk"] / 1e9
  emit(benchmark="trunk_train_step", size=size, batch_size=batch_size, depth=depth,
       trunk_images_per_s=round(ours_ips, 2),
       keras_resnet101v2_block3_images_per_s=round(peer_ips, 2),
       ratio_trunk_over_keras=round(ours_ips / peer_ips, 3),
       forward_gflops_per_image=round(flops_per_image / 1e9, 2),
       trunk_achieved_gflops=round(achieved, 1), peak_gflops=round(peak_gflops, 1),
       fraction_of_peak=round(achieved / peak_gflops, 3),
       trunk_trainable_params=trunk_lib.count_parameters(trunk.trainable_variables),
       keras_trainable_params=trunk_lib.count_parameters(peer.trainable_variables),
       trunk_round_s=[round(t, 3) for t in rounds_s["trunk"]],
       keras_round_s=[round(t, 3) for t in rounds_s["keras"]])


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of 'trunk' only (common.define_flags has the shared ones)."""
  flags.DEFINE_list("sizes", ["96", "224"], "'trunk': square input sizes.",
                    flag_values=flag_values)


def run_from_flags(emit, values=flags.FLAGS):
  run(emit, [int(s) for s in values.sizes], values.depth, values.batch_size, values.steps,
      values.rounds)
