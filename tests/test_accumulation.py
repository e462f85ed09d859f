"""Gradient accumulation (paper section 4): an apply is the optimizer's update for the mean of
the task's accumulated gradients, checked against gradients and an RMSProp update computed here.
"""

import gin
import numpy as np
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.tasks import base
from tests import test_training
from tests.conftest import assert_close_at_scale
from tests.conftest import step_rounding

K = 3
LEARNING_RATE, RHO, MOMENTUM, EPSILON = 0.1, 0.9, 0.9, 1.0
# Of the largest value of each kind. Measured: 2e-7; a sum instead of the mean is off by 0.46,
# the last step's gradient alone by 0.93 (0.66 and 1.4 with the mean square starting at 0).
RTOL = 1e-5


def _batches(count, pairs=2, patch_size=32, seed=0):
  """`count` different relative-position batches of random patches and labels."""
  rng = np.random.RandomState(seed)
  return [{
      "relative_position/patches": rng.uniform(
          -100, 100, [pairs, 2, patch_size, patch_size, 3]).astype(np.float32),
      "relative_position/label": rng.randint(0, 8, [pairs]).astype(np.int32),
  } for _ in range(count)]


def _gradients(trunk, task, variables, batch):
  """Gradients (as float64) of the trainer's loss, task loss + weight decay, on one batch."""
  with tf.GradientTape() as tape:
    loss = task.model_fn(batch, heads.Mode.TRAIN).loss + trunk.regularization_loss()
  return [g.numpy().astype(np.float64) for g in tape.gradient(loss, variables)]


def _rmsprop(grad, velocity, momentum):
  """TF1's RMSProp (epsilon inside the square root), in float64: (step, velocity, momentum).

  The variable moves by -step.
  """
  velocity = RHO * velocity + (1 - RHO) * grad**2
  momentum = MOMENTUM * momentum + LEARNING_RATE * grad / np.sqrt(velocity + EPSILON)
  return momentum, velocity, momentum


def test_an_apply_is_the_rmsprop_update_for_the_mean_of_the_accumulated_gradients(tmp_path):
  """Two applies of 3 accumulated steps, on the trunk and the head, against a copy of the model.

  The copy (a trunk and head of its own, given the trainer's weights) computes each batch's
  gradient eagerly. The mean of batches 1-3 at the initial weights gives the first update by
  RMSProp's formula, computed here in float64; batches 4-6 at the weights after it give the
  second, from the velocity and momentum the first left. Before each apply the accumulators hold
  the sum of the first two gradients, after it nothing. At epsilon 1 the step depends on the
  gradient's scale (a sum instead of the mean is off by 0.46 of the largest step); the velocity,
  quadratic in the gradient, would show it at any epsilon. The tolerance, 1e-5 of the largest
  value of each kind, is float32 rounding (graph against eager gradients), plus one ulp of the
  weight where a step is read off as the difference of two weights.
  """
  gin.clear_config()
  tf.random.set_seed(0)
  common.parse_gin([], test_training.TINY + [
      f"relative_position/TaskSettings.accumulation_steps = {K}",
      f"TaskSettings.learning_rate = {LEARNING_RATE}", f"TaskSettings.rho = {RHO}",
      f"TaskSettings.momentum = {MOMENTUM}", f"TaskSettings.epsilon = {EPSILON}",
  ])
  try:
    batches = _batches(2 * K)
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    fns = {"relative_position": lambda ctx: tf.data.Dataset.from_tensor_slices(stacked)}
    trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position"],
                                        input_fns=fns)
    variables = trainer.var_lists["relative_position"]
    # The copy: a trunk and head of its own, given the trainer's initial weights.
    trunk = trunk_lib.Trunk()
    with gin.config_scope("relative_position"):
      task = base.get("relative_position")(trunk)
    task.model_fn({k: v[:1] for k, v in batches[0].items()}, heads.Mode.PREDICT)
    copy = list(trunk.trainable_variables) + task.head_variables
    assert [v.shape for v in copy] == [v.shape for v in variables]
    optimizer = trainer.optimizers["relative_position"]
    velocities = [v for v in optimizer.variables if v.name.startswith("velocity/")]
    momentums = [v for v in optimizer.variables if v.name.startswith("momentum/")]
    assert len(velocities) == len(momentums) == len(variables)
    names = [v.name for v in variables]

    # The mean square starts at 1, as TF1's (TaskSettings.initial_mean_square).
    velocity = [np.ones(v.shape) for v in variables]
    momentum = [np.zeros(v.shape) for v in variables]
    for apply in range(2):
      before = [v.numpy() for v in variables]
      for c, v in zip(copy, before):
        c.assign(v)
      grads = [_gradients(trunk, task, copy, b) for b in batches[apply * K:(apply + 1) * K]]
      # Before the apply the accumulators hold the sum of the first K - 1 steps' gradients.
      trainer.train(num_steps=apply * K + K - 1)
      assert_close_at_scale([a.numpy() for a in trainer.accumulators["relative_position"]],
                            [sum(g) for g in zip(*grads[:-1])], names, RTOL)
      trainer.train(num_steps=(apply + 1) * K)
      expected_step, velocity, momentum = zip(*[
          _rmsprop(sum(g) / K, v, m) for g, v, m in zip(zip(*grads), velocity, momentum)])
      after = [v.numpy() for v in variables]
      assert_close_at_scale([b.astype(np.float64) - a for a, b in zip(after, before)],
                            expected_step, names, RTOL,
                            [step_rounding(b, a) for a, b in zip(after, before)])
      # Less the start's share (1 x RHO^n, n updates so far), which would hide an error in
      # the squared gradients' part at the tolerance's scale.
      start_share = RHO**(apply + 1)
      assert_close_at_scale([v.numpy() - start_share for v in velocities],
                            [v - start_share for v in velocity], names, RTOL)
      assert_close_at_scale([v.numpy() for v in momentums], momentum, names, RTOL)
      assert not any(a.numpy().any() for a in trainer.accumulators["relative_position"])
    assert int(optimizer.iterations) == 2
  finally:
    gin.clear_config()
