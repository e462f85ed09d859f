"""A diverging run keeps no bad checkpoint: it stops at the first step that leaves a NaN or an
Inf anywhere (loss, gradients, weights, slots, accumulators, lasso), names the last checkpoint,
and that checkpoint, like every other it wrote, holds only finite values."""

import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import training
# The tiny configuration, parsed before each test (an autouse fixture), and adding bindings.
from tests.test_training import _bind
from tests.test_training import _gin  # pylint: disable=unused-import

TASK = "relative_position"


def _nonfinite_tensors(prefix):
  """The names of the tensors of checkpoint `prefix` that hold a NaN or an Inf."""
  reader = tf.train.load_checkpoint(prefix)
  bad = []
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
      bad.append(name)
  return bad


def _checkpoints(directory):
  """{step: prefix} of the checkpoints in `directory`."""
  found = {}
  for index in glob.glob(os.path.join(directory, "ckpt-*.index")):
    prefix = index[:-len(".index")]
    found[int(prefix.rsplit("-", 1)[1])] = prefix
  return found


def test_a_diverging_run_stops_at_its_first_bad_step_and_keeps_only_clean_checkpoints(tmp_path):
  # With the mean square starting at 0, RMSProp moves every weight by about learning_rate * 3
  # at the first update: at 1e6 the next gradients' squares overflow float32 in the mean square
  # slot, while the loss (~1e30), the gradients and the weights (~1e7) stay finite for a few
  # more steps (seen with seeds 0 and 1). From TF1's start of 1 the first updates scale with the
  # gradient, and one CI run stayed finite for all 8 steps. A checkpoint after every step.
  tf.random.set_seed(0)
  _bind("TaskSettings.learning_rate = 1e6", "MultiTaskTrainer.checkpoint_every_compute = 1",
        "MultiTaskTrainer.max_checkpoints_to_keep = 100",
        "TaskSettings.initial_mean_square = 0.0")
  model_dir = str(tmp_path)
  trainer = training.MultiTaskTrainer(model_dir, tasks=[TASK])
  with pytest.raises(training.NonFiniteLoss) as info:
    trainer.train(num_steps=8)
  message = str(info.value)
  failed = int(re.search(r"at global step (\d+)", message).group(1))
  # The step did leave NaN or Inf behind (in memory: they are not rolled back)...
  state = [v.numpy() for v in trainer.trunk.variables + trainer.optimizers[TASK].variables
           if v.dtype.is_floating]
  assert not all(np.isfinite(v).all() for v in state)
  # ... and it was the first: a checkpoint after every step before it, each read back whole
  # and finite, none at or after it.
  saved = _checkpoints(model_dir)
  assert failed > 1 and sorted(saved) == list(range(1, failed)), (sorted(saved), failed)
  for step, prefix in saved.items():
    assert not _nonfinite_tensors(prefix), step
  last = saved[failed - 1]
  assert "\n" not in message and f"Task {TASK!r} diverged" in message
  assert f"The last checkpoint, {last}, holds only finite values" in message
  assert tf.train.latest_checkpoint(model_dir) == last
  # Nothing can be saved from the diverged state.
  with pytest.raises(training.NonFiniteLoss, match="Refusing to save"):
    trainer.save()
  assert sorted(_checkpoints(model_dir)) == sorted(saved)
  # A checkpoint written around the guards is refused when a run would resume from it.
  trainer.manager.save(checkpoint_number=failed)
  assert _nonfinite_tensors(tf.train.latest_checkpoint(model_dir))
  with pytest.raises(training.NonFiniteLoss, match=rf"ckpt-{failed} holds NaN or Inf"):
    training.MultiTaskTrainer(model_dir, tasks=[TASK])


def test_huge_values_pass_overflows_in_float16_are_skipped_and_a_nan_stops_at_its_step(
    tmp_path, caplog):
  _bind(f"{TASK}/TaskSettings.accumulation_steps = 2")
  rng = np.random.RandomState(0)
  batch = {f"{TASK}/patches": rng.uniform(-100, 100, [2, 2, 32, 32, 3]).astype(np.float32),
           f"{TASK}/label": rng.randint(0, 8, [2]).astype(np.int32)}
  trainer = training.MultiTaskTrainer(
      str(tmp_path), tasks=[TASK], precision="mixed_float16",
      input_fns={TASK: lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()})
  optimizer = trainer.optimizers[TASK]
  scale = optimizer._loss_scale._current_loss_scale  # pylint: disable=protected-access
  # Finite, but its square overflows float32 (the step's screen), as 1e30's does.
  velocity = next(v for v in optimizer.inner_optimizer.variables if "velocity" in v.name)
  velocity.assign(tf.fill(velocity.shape, 1e30))
  trainer.train(num_steps=2, save_at_end=False)  # accumulate, apply
  assert np.isfinite(velocity.numpy()).all()
  assert "hold finite values so large (~1e16 or more) that their squares overflow" in caplog.text
  # float16 gradients that overflow at an accumulating step (global step 3): a loss scale of
  # 2**26 makes them infinite. The accumulators keep only finite values, and so does a
  # checkpoint written before the apply.
  skipped = trainer.skipped_updates[TASK]
  scale.assign(2.0**26)
  trainer.train(num_steps=3, save_at_end=False)
  assert trainer.skipped_updates[TASK] == skipped + 1
  assert all(np.isfinite(a.numpy()).all() for a in trainer.accumulators[TASK])
  assert not _nonfinite_tensors(trainer.save())
  # The apply (global step 4) skips the update they belong to, though its own gradients (at a
  # small scale) are finite, and lowers the scale.
  scale.assign(2.0**8)
  before = [v.numpy() for v in trainer.var_lists[TASK]]
  trainer.train(num_steps=4, save_at_end=False)
  for a, b in zip(before, trainer.var_lists[TASK]):
    np.testing.assert_array_equal(a, b.numpy())
  assert float(optimizer.loss_scale) == 2.0**7
  assert not any(a.numpy().any() for a in trainer.accumulators[TASK])
  # A NaN in an accumulator stops the next step that writes it (an accumulating one, 5).
  accumulator = trainer.accumulators[TASK][3]
  accumulator.assign(tf.tensor_scatter_nd_update(
      accumulator, [[0] * len(accumulator.shape)], [np.nan]))
  with pytest.raises(training.NonFiniteLoss,
                     match=rf"at global step 5 \(its step 5\): its step left NaN or Inf in "
                           rf"{accumulator.name}\. .*The last checkpoint, .*ckpt-3, holds only"):
    trainer.train(num_steps=6)
  assert sorted(_checkpoints(str(tmp_path))) == [3]
