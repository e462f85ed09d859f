"""Mixed precision and XLA in the training loop: bf16 vs fp32 losses, float16 loss scaling,
XLA-compiled steps, and checkpoints across precisions."""

import contextlib
import gc

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import precision
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from tests import test_training
from tests.conftest import untraced_steps
from tests.test_distributed import SMALL_DEPTH
from tests.test_distributed import SMALL_UNITS

TASKS = ["relative_position", "colorization", "exemplar", "motion_segmentation"]
# bfloat16 keeps 8 bits of mantissa (0.2-0.4% per rounding). Measured here, same weights: the
# depth-26 trunk's block 3 differs from float32's by ~1% (relative norm) with inference batch
# norm, ~5% with training batch norm on these tiny batches (its statistics come from 4-32
# values, which amplifies rounding). Task losses at one training step then differ by: colorization
# 0.01%, relative position ~2%, motion segmentation ~1%; exemplar 4-22% (its hinge on
# differences of cosine distances between near-identical random embeddings is the most
# sensitive). The trainers here build a trunk of one unit per block (half the depth-26 trunk's
# units: it traces and compiles in about half the time); measured with it: colorization 0.005-0.04%,
# relative position 0.4-0.8%, motion segmentation 0.03-0.4%, exemplar ~1%. Tolerances, per task:
BF16_LOSS_RTOL = {"relative_position": 0.05, "colorization": 0.01, "motion_segmentation": 0.05,
                  "exemplar": 0.3}

# One worker runs the module: the tests share `batches`.
pytestmark = pytest.mark.xdist_group("test_precision")


@pytest.fixture(scope="module", autouse=True)
def _small_trunk():
  """Trainers here build a trunk of one unit per block (`test_distributed.SMALL_DEPTH`)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(trunk_lib.BLOCK_UNITS, SMALL_DEPTH, SMALL_UNITS)
    yield


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  common.parse_gin([], test_training.TINY + [f"Trunk.depth = {SMALL_DEPTH}"])
  yield
  gin.clear_config()
  assert precision.current() == "float32", "a trainer leaked its precision"


@pytest.fixture(scope="module")
def batches():
  gin.clear_config()
  common.parse_gin([], test_training.TINY)
  fns = test_training._fixed_batches(TASKS)  # pylint: disable=protected-access
  gin.clear_config()
  return fns


def _first_losses(trainer):
  """Each task's loss (before its update) at one apply step on its fixed batch."""
  return {name: float(trainer._step_fn(name, True)(trainer._iterators[name])[0])  # pylint: disable=protected-access
          for name in trainer.names}


def _trainer(path, batches, **kwargs):
  return training.MultiTaskTrainer(str(path), tasks=TASKS, input_fns=batches, **kwargs)


def test_policy_scope_restores_and_unknown_precision_is_refused():
  with precision.policy_scope("mixed_bfloat16") as dtype:
    assert dtype == tf.bfloat16 and precision.current() == "mixed_bfloat16"
  assert precision.current() == "float32"
  with pytest.raises(ValueError, match="Unknown precision 'float8'"):
    precision.set_precision("float8")


def test_half_precision_trunk_is_close_in_inference_and_keeps_float32_variables():
  with precision.policy_scope("mixed_bfloat16"):
    trunk = trunk_lib.Trunk(depth=26)
  x = tf.random.uniform([2, 32, 32, 3], -100, 100, seed=0)
  with tf.GradientTape() as tape:
    out = trunk(x, training=True)["block3"]
    loss = tf.reduce_mean(tf.cast(out, tf.float32)**2)
  grads = tape.gradient(loss, trunk.trainable_variables)
  assert out.dtype == tf.bfloat16
  assert {v.dtype for v in trunk.variables} == {tf.float32}
  assert all(g is not None and g.dtype == tf.float32 for g in grads)
  reference = trunk_lib.Trunk(depth=26)
  reference(x)
  assert ([v.name for v in trunk.variables] == [v.name for v in reference.variables])
  for a, b in zip(trunk.variables, reference.variables):
    a.assign(b)
  # Inference batch norm: block 3 within 2% (relative norm) of float32's (measured ~1%).
  got = tf.cast(trunk(x, training=False)["block3"], tf.float32)
  want = reference(x, training=False)["block3"]
  error = float(tf.norm(got - want) / tf.norm(want))
  assert 1e-4 < error < 0.02


def test_bf16_step_and_fp32_step_from_the_same_weights_agree(tmp_path, batches):
  fp32 = _trainer(tmp_path / "fp32", batches)
  path = fp32.save()
  bf16 = _trainer(tmp_path / "bf16", batches, precision="mixed_bfloat16")
  got = {}
  for name in TASKS:  # each task's step from the float32 weights
    # A float32 checkpoint loads into the bfloat16 model (same variables, same dtypes).
    bf16.checkpoint.restore(path).assert_existing_objects_matched()
    for a, b in zip(fp32.trunk.variables, bf16.trunk.variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Untraced: the step's ops in bfloat16 (test_xla_step_over_two_replicas traces one).
    with untraced_steps():
      got[name] = float(bf16._step_fn(name, True)(bf16._iterators[name])[0])  # pylint: disable=protected-access
  # The float32 step's loss: the task's loss in training mode, on the same weights and batch.
  expected = {name: float(fp32.tasks[name].model_fn(next(iter(batches[name](None))),
                                                    heads.Mode.TRAIN).loss)
              for name in TASKS}
  for name in TASKS:
    assert got[name] == pytest.approx(expected[name], rel=BF16_LOSS_RTOL[name]), name
  # Not trivially equal: the bf16 network really computed in bf16.
  assert any(got[n] != expected[n] for n in TASKS)


def test_xla_compiled_step_equals_the_plain_one(tmp_path, batches):
  # Colorization (a dense head, the same as motion segmentation's) and exemplar (pairs, a
  # hinge); relative position runs under XLA in test_xla_step_over_two_replicas.
  names = ["colorization", "exemplar"]
  # Slim's RMSProp (epsilon 1.0): the update is linear in the gradient, so XLA's rounding stays
  # rounding-sized in it (with a tiny epsilon, entries whose gradient is near zero take
  # full-size steps whose sign follows the rounding).
  test_training._bind("include 'experiments/common/slim_rmsprop.gin'")  # pylint: disable=protected-access
  make = lambda path, **kw: training.MultiTaskTrainer(  # pylint: disable=g-long-lambda
      str(path), tasks=names, input_fns={n: batches[n] for n in names}, **kw)
  plain = make(tmp_path / "plain")
  path = plain.save()
  xla = make(tmp_path / "xla", jit_compile=True)
  xla.checkpoint.restore(path).assert_existing_objects_matched()
  start = [v.numpy() for v in plain.trunk.trainable_variables]
  delta = lambda trainer: np.concatenate([  # pylint: disable=g-long-lambda
      (v.numpy() - s).ravel() for v, s in zip(trainer.trunk.trainable_variables, start)])
  losses, updates = {}, {}
  for trainer in (plain, xla):
    # The plain steps run untraced, op by op: the reference for what XLA compiles.
    with untraced_steps() if trainer is plain else contextlib.nullcontext():
      for name in names:  # colorization first: the trunk's update below is its alone
        step = trainer._step_fn(name, True)  # pylint: disable=protected-access
        losses[(trainer is xla, name)] = float(step(trainer._iterators[name])[0])  # pylint: disable=protected-access
        if name == "colorization":
          updates[trainer is xla] = delta(trainer)
  # XLA fuses and reorders float32 sums: ~1e-6 relative on colorization's loss; up to ~1e-3
  # seen on exemplar's (batch norm over 8 values at 1x1, then a hinge, amplify rounding). With the
  # small trunk: ~1e-7 and ~1e-5.
  tolerance = {"colorization": 1e-4, "exemplar": 1e-2}
  for name in names:
    assert losses[(True, name)] == pytest.approx(losses[(False, name)], rel=tolerance[name])
  # The update agrees too (colorization's: a smooth loss; exemplar's hinge switches terms on
  # and off with rounding, so its gradient may jump). Measured: 0.01-0.2% (relative norm); with
  # the small trunk 0.005-0.4%.
  want, have = updates[False], updates[True]
  assert np.linalg.norm(want) > 0
  assert np.linalg.norm(have - want) < 1e-2 * np.linalg.norm(want)


def test_float16_loss_scaling_skips_an_overflow_and_recovers(tmp_path, batches):
  trainer = training.MultiTaskTrainer(
      str(tmp_path), tasks=["relative_position"], precision="mixed_float16",
      input_fns={"relative_position": batches["relative_position"]})
  optimizer = trainer.optimizers["relative_position"]
  assert isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
  inner = optimizer.inner_optimizer
  # Inject an overflow: a loss scale that makes every float16 gradient infinite.
  optimizer._loss_scale._current_loss_scale.assign(2.0**20)  # pylint: disable=protected-access
  # The optimizer's variables but its update counter (which Keras advances on skipped updates
  # too, so that a schedule keeps time): its slots.
  slots = [v for v in inner.variables if v is not inner.iterations]
  snapshot = lambda: [v.numpy().copy() for v in trainer.var_lists["relative_position"] + slots]
  before = snapshot()
  trainer.train(num_steps=1, save_at_end=False)
  # Skipped: no variable and no slot moved, the scale halved.
  for a, b in zip(before, snapshot()):
    np.testing.assert_array_equal(a, b)
  assert float(optimizer.loss_scale) == 2.0**19
  assert trainer.skipped_updates["relative_position"] == 1
  # It keeps halving until the gradients fit, then trains: the run never stops on it.
  # (Measured: they fit at 2**15 or 2**16, with the small trunk at 2**16; float16 steps are slow
  # on CPUs.)
  trainer.train(num_steps=8, save_at_end=False)
  skipped = trainer.skipped_updates["relative_position"]
  assert 1 < skipped < 8
  assert float(optimizer.loss_scale) == 2.0**(20 - skipped)
  assert all(np.isfinite(v.numpy()).all() for v in inner.variables)
  assert any(not np.array_equal(a, b) for a, b in zip(before, snapshot()))


def test_checkpoints_load_across_precisions(tmp_path, batches):
  # Two tasks (float16 is slow on CPUs): one with a head of Keras layers, one with two.
  names = ["relative_position", "exemplar"]
  make = lambda **kw: training.MultiTaskTrainer(  # pylint: disable=g-long-lambda
      str(tmp_path), tasks=names, input_fns={n: batches[n] for n in names}, **kw)
  fp16 = make(precision="mixed_float16")
  for optimizer in fp16.optimizers.values():  # low enough that neither update is skipped
    optimizer._loss_scale._current_loss_scale.assign(2.0**8)  # pylint: disable=protected-access
  start = [v.numpy() for v in fp16.optimizers["exemplar"].inner_optimizer.variables]
  with untraced_steps():  # what they write is under test here, not how they compile
    fp16.train(num_steps=2)  # a step of each
  trunk_values = [v.numpy() for v in fp16.trunk.variables]
  slots = [v.numpy() for v in fp16.optimizers["exemplar"].inner_optimizer.variables]
  # Trained: not the values they start at (mean squares 1, momentums 0).
  assert any(not np.array_equal(s, s0) for s, s0 in zip(slots[1:], start[1:]))
  # The same model directory resumes in float32 and in bfloat16, slots included.
  for name in ("float32", "mixed_bfloat16"):
    resumed = make(precision=name)
    assert int(resumed.global_step) == 2
    for a, b in zip(trunk_values, resumed.trunk.variables):
      np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(slots, resumed.optimizers["exemplar"].variables):
      np.testing.assert_array_equal(a, b.numpy())


def test_training_reads_its_input_from_a_tf_data_service(tmp_path, batches):
  dispatcher = tf.data.experimental.service.DispatchServer()
  address = dispatcher.target.split("://")[1]
  workers = [tf.data.experimental.service.WorkerServer(
      tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
             for _ in range(2)]
  with gin.unlock_config():
    gin.bind_parameter("distribute_input.tf_data_service", dispatcher.target)
  trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["exemplar"],
                                      input_fns={"exemplar": batches["exemplar"]})
  with untraced_steps():  # the input is under test here, not the step
    summary = trainer.train(num_steps=2)
  assert summary["task_steps"] == {"exemplar": 2}
  assert all(np.isfinite(v) for v in summary["last_loss"].values())
  # The pipeline handed to the service is read back through a DataServiceDataset.
  from mtssl_tf import distribute  # pylint: disable=g-import-not-at-top
  graph = tf.compat.v1.GraphDef.FromString(distribute.distribute_input(
      tf.data.Dataset.range(3), job_name="probe")._as_serialized_graph().numpy())  # pylint: disable=protected-access
  assert any(node.op.startswith("DataServiceDataset") for node in graph.node)
  # "Parallel epochs": each of the 2 service workers runs the whole pipeline.
  values = distribute.distribute_input(tf.data.Dataset.range(3), job_name="probe2")
  assert sorted(int(v) for v in values) == [0, 0, 1, 1, 2, 2]
  # Readers first, then the servers (else the readers' heartbeats fail noisily at exit).
  del trainer, values
  gc.collect()
  for worker in workers:
    worker._stop()  # pylint: disable=protected-access
  dispatcher._stop()  # pylint: disable=protected-access


def test_xla_step_over_two_replicas(tmp_path, batches):
  # XLA inside MirroredStrategy: no merge_call may sit in the compiled step (slim's batch norm
  # statistics update per replica; see slim_compat), and the step must equal the plain one.
  names = ["relative_position"]
  inputs = {n: batches[n] for n in names}
  strategy = lambda: tf.distribute.MirroredStrategy(  # pylint: disable=g-long-lambda
      ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
  runs = {}
  for precision_name, jit in (("float32", False), ("float32", True), ("mixed_bfloat16", True)):
    trainer = training.MultiTaskTrainer(
        str(tmp_path / f"{precision_name}{jit}"), tasks=names, input_fns=inputs,
        strategy=strategy(), precision=precision_name, jit_compile=jit)
    if runs:
      trainer.checkpoint.restore(path).assert_existing_objects_matched()
    else:
      path = trainer.save()
    # The plain step runs untraced (op by op, a thread per replica): XLA's reference.
    with untraced_steps() if not jit else contextlib.nullcontext():
      loss = _first_losses(trainer)["relative_position"]
    stats = [float(tf.reduce_sum(v)) for v in trainer.trunk.variables
             if v.name.endswith("moving_mean:0")]
    runs[(precision_name, jit)] = (loss, stats)
  plain, xla = runs[("float32", False)], runs[("float32", True)]
  assert xla[0] == pytest.approx(plain[0], rel=1e-5)
  # Batch norm statistics moved (each replica's own copy, read as their mean), equally.
  np.testing.assert_allclose(xla[1], plain[1], rtol=1e-4, atol=1e-6)
  assert any(abs(s) > 0 for s in plain[1])
  # bfloat16 + XLA over two replicas runs, and is close (see BF16_LOSS_RTOL).
  assert runs[("mixed_bfloat16", True)][0] == pytest.approx(plain[0], rel=0.05)
