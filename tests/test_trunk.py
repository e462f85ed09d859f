"""Tests of the slim ResNet-v2 trunk truncated after block 3."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from tests.conftest import randomize_batch_norm

# Trainable parameters (conv weights and biases, BN gammas and betas) of the root and blocks 1-3;
# "all" adds the BN moving statistics. 101: the paper's "roughly 30 million" for the trunk.
PARAMS = {
    26: (3_443_840, 3_452_672),
    50: (8_548_480, 8_573_440),
    101: (27_558_016, 27_635_200),
    152: (43_217_024, 43_340_288),
}


def _images(batch, height, width, seed=0):
  rng = np.random.RandomState(seed)
  return input_convention.to_trunk_input(rng.uniform(0, 255, [batch, height, width, 3]))


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_parameter_count(depth):
  trunk = trunk_lib.Trunk(depth=depth)
  trunk.ensure_built()
  assert trunk_lib.count_parameters(trunk.trainable_variables) == PARAMS[depth][0]
  assert trunk_lib.count_parameters(trunk.variables) == PARAMS[depth][1]


def test_variable_names_are_slims():
  trunk = trunk_lib.Trunk(depth=101)
  trunk.ensure_built()
  names = {v.name for v in trunk.variables}
  for name in [
      "resnet_v2_101/conv1/weights:0",
      "resnet_v2_101/conv1/biases:0",
      "resnet_v2_101/block1/unit_1/bottleneck_v2/preact/gamma:0",
      "resnet_v2_101/block1/unit_1/bottleneck_v2/shortcut/weights:0",
      "resnet_v2_101/block1/unit_1/bottleneck_v2/conv1/weights:0",
      "resnet_v2_101/block1/unit_1/bottleneck_v2/conv1/BatchNorm/moving_variance:0",
      "resnet_v2_101/block3/unit_23/bottleneck_v2/conv3/biases:0",
  ]:
    assert name in names
  assert not [n for n in names if "block4" in n or "postnorm" in n or "logits" in n]
  assert len(names) == 488


# Endpoint shapes at 224x224 for each output stride, written out by hand (not computed).
_SHAPES_224 = {
    32: {"conv1": [112, 112, 64], "pool1": [56, 56, 64], "block1": [28, 28, 256],
         "block2": [14, 14, 512], "block3": [7, 7, 1024], "block3/unit_1": [14, 14, 1024],
         "block3/unit_22": [14, 14, 1024], "block3/unit_23": [7, 7, 1024],
         "block1/unit_2": [56, 56, 256], "block2/unit_4": [14, 14, 512]},
    16: {"block1": [28, 28, 256], "block2": [14, 14, 512], "block3": [14, 14, 1024],
         "block3/unit_1": [14, 14, 1024], "block3/unit_23": [14, 14, 1024]},
    8: {"block1": [28, 28, 256], "block2": [28, 28, 512], "block2/unit_3": [28, 28, 512],
        "block3": [28, 28, 1024], "block3/unit_23": [28, 28, 1024]},
}


@pytest.fixture(scope="module")
def trunk101():
  trunk = trunk_lib.Trunk(depth=101)
  trunk.ensure_built()
  return trunk


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_endpoint_shapes_224(trunk101, output_stride):
  trunk = trunk_lib.Trunk(depth=101, output_stride=output_stride)
  trunk.ensure_built()
  for src, dst in zip(trunk101.variables, trunk.variables):
    dst.assign(src)
  endpoints = trunk(_images(1, 224, 224), training=False)
  expected_keys = {"conv1", "pool1", "block1", "block2", "block3"}
  expected_keys |= {f"block1/unit_{i}" for i in range(1, 4)}
  expected_keys |= {f"block2/unit_{i}" for i in range(1, 5)}
  expected_keys |= {f"block3/unit_{i}" for i in range(1, 24)}
  assert set(endpoints) == expected_keys
  for name, shape in _SHAPES_224[output_stride].items():
    assert endpoints[name].shape.as_list() == [1] + shape, name
  assert trunk_lib.unit_endpoint_names(101) == tuple(f"block3/unit_{i}" for i in range(1, 24))


def test_same_variables_serve_every_output_stride(trunk101):
  """Atrous output strides reuse the stride-32 variables: the stride-8 output subsampled at the
  stride-32 grid is not expected to be equal (different receptive fields), but shapes and
  variable names are; and the variable sets are identical."""
  t8 = trunk_lib.Trunk(depth=101, output_stride=8)
  t8.ensure_built()
  assert [v.name for v in t8.variables] == [v.name for v in trunk101.variables]
  assert [v.shape for v in t8.variables] == [v.shape for v in trunk101.variables]


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_endpoint_shapes_match_the_formula_at_odd_sizes(output_stride):
  trunk = trunk_lib.Trunk(depth=26, output_stride=output_stride)
  endpoints = trunk(_images(2, 97, 65), training=False)
  expected = trunk_lib.endpoint_shapes(26, output_stride, 97, 65)
  assert set(endpoints) == set(expected)
  for name, shape in expected.items():
    assert endpoints[name].shape.as_list() == [2] + shape, name


def test_batch_norm_statistics_change_in_training_mode_only():
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  stats = [v for v in trunk.variables if "moving_" in v.name]
  assert len(stats) == 2 * 18  # 6 units x 3 batch norms (preact, conv1, conv2)
  before = [v.numpy().copy() for v in stats]
  trunk(_images(2, 64, 64), training=False)
  assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, stats))
  trunk(_images(2, 64, 64), training=True)
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, stats)]
  assert all(changed)


def test_training_mode_uses_batch_statistics():
  trunk = trunk_lib.Trunk(depth=26)
  x = _images(2, 64, 64)
  infer = trunk(x, training=False)["block3"]
  train = trunk(x, training=True)["block3"]
  assert not np.allclose(infer.numpy(), train.numpy())


def test_gradients_reach_every_trainable_variable():
  trunk = trunk_lib.Trunk(depth=26)
  x = _images(2, 64, 64)
  with tf.GradientTape() as tape:
    out = trunk(x, training=True)["block3"]
    loss = tf.reduce_mean(tf.square(out)) + trunk.regularization_loss()
  grads = tape.gradient(loss, trunk.trainable_variables)
  assert len(grads) == 68
  for var, grad in zip(trunk.trainable_variables, grads):
    assert grad is not None, var.name
    assert np.any(grad.numpy() != 0), var.name
  non_trainable = [v for v in trunk.variables if not v.trainable]
  assert all("moving_" in v.name for v in non_trainable) and len(non_trainable) == 36


def test_regularization_loss_is_slims_weight_decay():
  trunk = trunk_lib.Trunk(depth=26, weight_decay=3e-4)
  trunk(_images(1, 32, 32), training=True)
  weights = [v for v in trunk.trainable_variables if v.name.endswith("/weights:0")]
  expected = 3e-4 * sum(0.5 * np.sum(np.square(w.numpy())) for w in weights)
  np.testing.assert_allclose(trunk.regularization_loss().numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(tf.add_n(trunk.losses).numpy(), expected, rtol=1e-5)


def _collection_sizes(graph):
  sizes = {k: len(graph.get_collection(k)) for k in graph.get_all_collection_keys()}
  return {k: n for k, n in sizes.items() if n}


def test_second_call_creates_no_variables_eager_and_in_tf_function():
  trunk = trunk_lib.Trunk(depth=26)
  trunk(_images(1, 32, 32), training=False)
  names = [v.name for v in trunk.variables]
  graph = tf.compat.v1.get_default_graph()
  sizes = _collection_sizes(graph)
  trunk(_images(2, 48, 48), training=True)
  step = tf.function(lambda x: trunk(x, training=True)["block3"])
  out = step(_images(2, 40, 40))
  assert out.shape.as_list() == [2, 2, 2, 1024]
  assert [v.name for v in trunk.variables] == names
  # Nothing accumulates on the global graph from call to call (slim's end-points collection).
  assert _collection_sizes(graph) == sizes
  assert not [k for k in graph.get_all_collection_keys() if "end_points" in k]


def test_tf_function_matches_eager():
  trunk = trunk_lib.Trunk(depth=26)
  trunk.ensure_built()
  randomize_batch_norm(trunk.variables)
  x = _images(2, 64, 64)
  eager = trunk(x, training=False)["block3"].numpy()
  graph = tf.function(lambda x: trunk(x, training=False))(x)["block3"].numpy()
  np.testing.assert_allclose(graph, eager, rtol=1e-4, atol=1e-4 * np.abs(eager).max())


def test_runs_under_mirrored_strategy_with_two_replicas():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    trunk = trunk_lib.Trunk(depth=26)
    trunk.ensure_built()
    optimizer = tf.keras.optimizers.RMSprop(1e-3)
    optimizer.build(trunk.trainable_variables)
  assert isinstance(trunk.trainable_variables[0], tf.distribute.DistributedValues)
  before = trunk.trainable_variables[0].numpy().copy()

  @tf.function
  def step(x):
    def replica_fn(x):
      with tf.GradientTape() as tape:
        out = trunk(x, training=True)["block3"]
        loss = tf.reduce_mean(tf.square(out)) / strategy.num_replicas_in_sync
      grads = tape.gradient(loss, trunk.trainable_variables)
      optimizer.apply_gradients(zip(grads, trunk.trainable_variables))
      return loss
    return strategy.reduce("SUM", strategy.run(replica_fn, args=(x,)), axis=None)

  ds = tf.data.Dataset.from_tensors(_images(4, 32, 32)).repeat(2)
  for batch in strategy.experimental_distribute_dataset(ds):
    loss = step(batch)
  assert np.isfinite(loss.numpy())
  after = trunk.trainable_variables[0]
  # Mirrored variables stay identical across replicas and moved.
  values = strategy.experimental_local_results(after)
  np.testing.assert_array_equal(values[0].numpy(), values[1].numpy())
  assert not np.array_equal(before, values[0].numpy())
  # Batch norm statistics were updated in replica context, each replica's copy from its own
  # half of the batch (ON_READ, no all-reduce: see slim_compat); a read gives their mean.
  moving = [v for v in trunk.variables if v.name.endswith("moving_mean:0")][0]
  assert moving.synchronization == tf.VariableSynchronization.ON_READ
  local = [m.numpy() for m in strategy.experimental_local_results(moving)]
  assert np.abs(local[0]).max() > 0 and not np.allclose(local[0], local[1])
  np.testing.assert_allclose(moving.numpy(), (local[0] + local[1]) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs,message", [
    ({"depth": 34}, "Unknown trunk depth 34"),
    ({"output_stride": 4}, "Unknown output_stride 4"),
])
def test_bad_configuration_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    trunk_lib.Trunk(**kwargs)


def test_output_stride_is_not_a_gin_setting():
  # Tasks and evaluations call the trunk at their own strides, so a global binding could only
  # mislead; parsing it fails in one line that says where strides are chosen.
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    with pytest.raises(ValueError) as raised:
      common.parse_gin([], ["Trunk.output_stride = 16"])
  finally:
    gin.clear_config()
  assert str(raised.value) == (
      "--gin_param 'Trunk.output_stride = 16': Configurable 'Trunk' has denylisted kwarg "
      "'output_stride'. Each task and evaluation calls the trunk at the paper's stride for it; "
      "an export's stride is mtssl-export --output_stride.")


def test_bad_input_is_named():
  trunk = trunk_lib.Trunk(depth=26)
  with pytest.raises(ValueError, match="rank 3"):
    trunk(tf.zeros([32, 32, 3]))
  with pytest.raises(ValueError, match="3 channels"):
    trunk(tf.zeros([1, 32, 32, 4]))
  with pytest.raises(TypeError, match="to_trunk_input"):
    trunk(tf.zeros([1, 32, 32, 3], tf.uint8))
