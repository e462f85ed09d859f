"""Tests of the multi-task training loop: schedule, accumulation, optimizers, checkpoints,
strategies, errors."""

import collections
import dataclasses
import glob

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import training
from mtssl_tf.bin import common

# A tiny configuration: the small trunk, small inputs, toy data.
TINY = [
    "Trunk.depth = 26",
    "image_dataset.source = 'toy'",
    "image_dataset.num_toy_images = 16",
    "image_dataset.toy_size = (64, 72)",
    "motion_dataset.num_toy_clips = 2",
    "motion_dataset.toy_frames_per_clip = 2",
    "motion_dataset.toy_size = (64, 64)",
    "relative_position.patch_size = 32",
    "relative_position.preprocess.gap = 4",
    "relative_position.preprocess.jitter = 2",
    "relative_position.preprocess.image_area = None",
    "relative_position.batch_size = 4",
    "relative_position.fc_width = 16",
    "colorization.crop_size = 32",
    "colorization.batch_size = 2",
    "colorization.head_width = 8",
    "exemplar.patch_size = 32",
    "exemplar.batch_size = 4",
    "exemplar.head_width = 16",
    "exemplar.embedding_size = 8",
    "motion_segmentation.crop_size = 32",
    "motion_segmentation.batch_size = 2",
    "motion_segmentation.head_width = 8",
    "MultiTaskTrainer.checkpoint_every_secs = None",
    "MultiTaskTrainer.log_every_secs = 1000",
]


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  common.parse_gin([], TINY)
  yield
  gin.clear_config()


def _bind(*bindings):
  with gin.unlock_config():
    gin.parse_config(list(bindings))


def _fixed_batches(trainer_tasks, seed=0):
  """{task: input_fn} giving the same batch (drawn once from the task's pipeline) every step."""
  fns = {}
  for name, task in trainer_tasks.items():
    # A colorization batch of only grayscale images has no loss at all: draw another.
    batch = next(b for b in task.input_fn()
                 if not ("colorization/has_color" in b and
                         not bool(tf.reduce_any(b["colorization/has_color"]))))
    fns[name] = (lambda b: lambda ctx: tf.data.Dataset.from_tensors(b).repeat())(batch)
  del seed
  return fns


def test_schedule_is_weighted_deterministic_round_robin():
  counts, order = [0, 0, 0], []
  for _ in range(12):
    i = training.next_task(counts, [2.0, 1.0, 1.0])
    counts[i] += 1
    order.append(i)
  assert order == [0, 0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 2] or order[:4] == [0, 1, 0, 2]
  assert counts == [6, 3, 3]
  # A task of weight 0 never runs; the sequence depends only on the counters.
  assert training.next_task([5, 0], [1.0, 0.0]) == 0
  assert training.next_task([3, 1], [1.0, 1.0]) == training.next_task([3, 1], [1.0, 1.0]) == 1


def test_slots_change_only_on_apply_steps_and_accumulators_empty_after_apply(tmp_path):
  _bind("exemplar/TaskSettings.accumulation_steps = 3")
  trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position", "exemplar"])
  ex_opt, rp_opt = trainer.optimizers["exemplar"], trainer.optimizers["relative_position"]
  accumulators = trainer.accumulators["exemplar"]
  assert len(accumulators) == len(trainer.var_lists["exemplar"])
  assert not trainer.accumulators["relative_position"]
  snapshot = lambda opt: [v.numpy().copy() for v in opt.variables]
  ex_before, rp_before = snapshot(ex_opt), snapshot(rp_opt)
  for step in range(1, 7):  # tasks alternate: rp, ex, rp, ex, rp, ex
    trainer.train(num_steps=step)
    ex_after, rp_after = snapshot(ex_opt), snapshot(rp_opt)
    ex_changed = any(not np.array_equal(a, b) for a, b in zip(ex_before, ex_after))
    rp_changed = any(not np.array_equal(a, b) for a, b in zip(rp_before, rp_after))
    ex_steps = int(trainer.task_steps["exemplar"])
    accumulated = sum(float(tf.reduce_sum(tf.abs(a))) for a in accumulators)
    if step % 2 == 1:  # relative position's step: applies every step (accumulation 1)
      assert rp_changed and not ex_changed
    elif ex_steps % 3 == 0:  # exemplar's apply step
      assert ex_changed and not rp_changed
      assert accumulated == 0.0
    else:  # exemplar accumulates
      assert not ex_changed and not rp_changed
      assert accumulated > 0.0
    ex_before, rp_before = ex_after, rp_after
  assert int(ex_opt.iterations) == 1 and int(rp_opt.iterations) == 3


def test_a_short_multi_task_run_lowers_every_loss(tmp_path):
  # The demo's rate for the small trunk (experiments/demo.gin).
  _bind("TaskSettings.learning_rate = 3e-4")
  names = ["relative_position", "colorization", "exemplar", "motion_segmentation"]
  probe = training.MultiTaskTrainer(str(tmp_path / "probe"), tasks=names)
  fns = _fixed_batches(probe.tasks)
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"), tasks=names, input_fns=fns)
  summary = trainer.train(num_steps=160)
  assert summary["task_steps"] == {n: 40 for n in names}
  for name in names:
    assert summary["last_mean_loss"][name] < 0.95 * summary["first_mean_loss"][name], name


def test_compute_accounting_checkpoints_and_operative_config(tmp_path):
  _bind("relative_position/TaskSettings.cost_per_step = 3.0",
        "exemplar/TaskSettings.cost_per_step = 1.0",
        "MultiTaskTrainer.checkpoint_every_compute = 5.0", "MultiTaskTrainer.summary_every_steps = 1")
  trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position", "exemplar"],
                             max_checkpoints_to_keep=20)
  summary = trainer.train(max_compute=12.0)
  # Steps alternate rp (3), ex (1): compute 3, 4, 7, 8, 11, 12 -> crosses 5 at step 3, 10 at
  # step 5; stops at 12 (step 6), where the final checkpoint is written.
  assert summary["step"] == 6 and float(trainer.compute_used) == 12.0
  steps = sorted(int(p.split("-")[-1].split(".")[0])
                 for p in glob.glob(str(tmp_path / "ckpt-*.index")))
  assert steps == [3, 5, 6]
  config = (tmp_path / "operative_config.gin").read_text()
  assert "Trunk.depth = 26" in config and "TaskSettings.cost_per_step = 3.0" in config
  events = glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {"relative_position/loss", "exemplar/triplet_accuracy", "exemplar/learning_rate",
          "steps_per_sec"} <= tags
  assert any(tag.startswith("operative_config") for tag in tags)


def test_resume_restores_step_counters_slots_and_lasso(tmp_path):
  _bind("exemplar/TaskSettings.accumulation_steps = 2", "MultiTaskTrainer.use_lasso = True")
  names = ["relative_position", "exemplar"]
  # Fixed batches: the input pipelines' positions are not checkpointed (after a resume the
  # data order differs), so only fixed inputs let the two runs be compared step by step.
  fns = _fixed_batches(training.MultiTaskTrainer(str(tmp_path / "probe"), tasks=names).tasks)
  first = training.MultiTaskTrainer(str(tmp_path), tasks=names, input_fns=fns)
  first.train(num_steps=3)  # rp, ex (accumulated, not applied), rp
  second = training.MultiTaskTrainer(str(tmp_path), tasks=names, input_fns=fns)
  assert second.restored_from.endswith("ckpt-3")
  assert int(second.global_step) == 3 and int(second.task_steps["exemplar"]) == 1
  for a, b in zip(first.accumulators["exemplar"], second.accumulators["exemplar"]):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  for a, b in zip(first.optimizers["relative_position"].variables,
                  second.optimizers["relative_position"].variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  np.testing.assert_array_equal(first.lasso.matrix().numpy(), second.lasso.matrix().numpy())
  # Both continue identically: the schedule resumes at exemplar's apply step.
  first.train(num_steps=4)
  second.train(num_steps=4)
  np.testing.assert_allclose(first.lasso.matrix().numpy(), second.lasso.matrix().numpy())
  for a, b in zip(first.trunk.trainable_variables, second.trunk.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  row_sums = second.lasso.matrix().numpy().sum(axis=1)
  np.testing.assert_allclose(row_sums, 1.0, atol=1e-6)


def test_nan_loss_stops_naming_task_and_step_and_keeps_the_checkpoint(tmp_path):
  names = ["relative_position", "exemplar"]
  good = next(iter(training.MultiTaskTrainer(str(tmp_path / "probe"), tasks=names)
                   .tasks["relative_position"].input_fn()))
  poisoned = dict(good)
  poisoned["relative_position/patches"] = tf.fill(good["relative_position/patches"].shape,
                                                  np.inf)
  # Relative position's first batch is good, its second (global step 3) overflows.
  fns = {"relative_position": lambda ctx: tf.data.Dataset.from_tensors(good).concatenate(
      tf.data.Dataset.from_tensors(poisoned).repeat())}
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"), tasks=names, input_fns=fns)
  trainer.train(num_steps=2)
  saved = tf.train.latest_checkpoint(str(tmp_path / "run"))
  before = {n: tf.train.load_variable(saved, n) for n, _ in tf.train.list_variables(saved)
            if "trunk" in n}
  with pytest.raises(training.NonFiniteLoss, match=r"'relative_position'.*global step 3"):
    trainer.train(num_steps=6)
  assert tf.train.latest_checkpoint(str(tmp_path / "run")) == saved
  after = {n: tf.train.load_variable(saved, n) for n in before}
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])


def test_bad_configurations_fail_before_training(tmp_path):
  with pytest.raises(KeyError, match="registered tasks"):
    training.MultiTaskTrainer(str(tmp_path), tasks=["jigsaw"])
  _bind("relative_position/TaskSettings.weight = 0", "exemplar/TaskSettings.weight = 0")
  with pytest.raises(ValueError, match="Every task weight is zero"):
    training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position", "exemplar"])
  gin.clear_config()
  common.parse_gin([], TINY + ["image_dataset.source = 'folder'",
                               f"image_dataset.pattern = '{tmp_path / 'missing'}'"])
  with pytest.raises(ValueError, match="does not exist"):
    training.MultiTaskTrainer(str(tmp_path / "run"), tasks=["exemplar"])
  assert not glob.glob(str(tmp_path / "run" / "ckpt-*"))
  with pytest.raises(ValueError, match="no_such_setting"):
    with gin.unlock_config():
      common.parse_gin([], ["MultiTaskTrainer.no_such_setting = 1"])
  with pytest.raises(ValueError, match="No tasks"):
    training.MultiTaskTrainer(str(tmp_path), tasks=[])
  gin.clear_config()
  common.parse_gin([], TINY)
  with pytest.raises(ValueError, match="num_steps or max_compute"):
    training.MultiTaskTrainer(str(tmp_path / "x"), tasks=["exemplar"]).train()


def test_every_task_writes_summaries_on_its_own_cadence(tmp_path):
  # Two tasks alternate (rp at odd global steps, ex at even ones). A cadence counted in global
  # steps would write only exemplar; counted in each task's own steps, both appear, at their
  # own 2nd and 4th steps, with the mean loss of the steps since their last write.
  _bind("MultiTaskTrainer.summary_every_steps = 2", "MultiTaskTrainer.use_lasso = True")
  trainer = training.MultiTaskTrainer(str(tmp_path), tasks=["relative_position", "exemplar"])
  losses = []
  for step in range(1, 9):
    summary = trainer.train(num_steps=step, save_at_end=False)
    name = "relative_position" if step % 2 else "exemplar"
    losses.append(summary["last_loss"][name])
  written = collections.defaultdict(dict)
  for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = (float(tf.make_ndarray(value.tensor)) if value.metadata.plugin_data.plugin_name
                  == "scalars" else None)
        written[value.tag][event.step] = number
  assert set(written["relative_position/loss"]) == {3, 7}
  assert set(written["exemplar/loss"]) == {4, 8}
  assert set(written["exemplar/triplet_accuracy"]) == {4, 8}
  assert set(written["relative_position/learning_rate"]) == {3, 7}
  np.testing.assert_allclose(written["relative_position/loss"][7], np.mean(losses[4:7:2]),
                             rtol=1e-6)
  np.testing.assert_allclose(written["exemplar/loss"][4], np.mean(losses[1:4:2]), rtol=1e-6)
  # Run-wide scalars on the global cadence (and at the end of each call).
  assert {2, 4, 6, 8} <= set(written["steps_per_sec"]) and 8 in written["compute_used"]
  assert 8 in written["lasso/alpha"] and 8 in written["lasso/alpha_table"]


def _first_trunk_updates(trainer, name, loss_scales):
  """The trunk's update (flattened) of task `name`'s first apply, from the trainer's current
  weights and fresh optimizer slots, with its loss times each of loss_scales."""
  variables = trainer.trunk.trainable_variables + trainer.tasks[name].head_variables
  start = [v.numpy() for v in variables]
  scale = tf.Variable(1.0, trainable=False)
  task = trainer.tasks[name]
  model_fn = task.model_fn

  def scaled_model_fn(features, mode):
    spec = model_fn(features, mode)
    return dataclasses.replace(spec, loss=spec.loss * scale)

  task.model_fn = scaled_model_fn
  updates = []
  for loss_scale in loss_scales:
    for variable, value in zip(variables, start):
      variable.assign(value)
    for slot in trainer.optimizers[name].variables:  # iterations, velocities, momentums
      slot.assign(tf.zeros_like(slot))
    scale.assign(loss_scale)
    trainer.train(num_steps=int(trainer.global_step) + 1, save_at_end=False)
    updates.append(np.concatenate([(v.numpy() - s).ravel()
                                   for v, s in zip(trainer.trunk.trainable_variables, start)]))
  return updates


def test_a_tasks_update_does_not_depend_on_its_loss_scale(tmp_path):
  # Paper section 4: a separate RMSProp per task makes a loss's scale irrelevant to how fast the
  # task trains. That holds when epsilon is small beside the squared gradients; slim's TF1
  # recipe (epsilon 1.0) makes the update nearly proportional to the loss scale instead.
  name = "exemplar"
  trainer = training.MultiTaskTrainer(str(tmp_path / "default"), tasks=[name])
  batches = _fixed_batches(trainer.tasks)
  trainer = training.MultiTaskTrainer(str(tmp_path / "default"), tasks=[name], input_fns=batches)
  reference, small, large = map(np.linalg.norm, _first_trunk_updates(trainer, name,
                                                                     [1.0, 0.01, 100.0]))
  assert 0.5 < small / reference < 2 and 0.5 < large / reference < 2, (small, reference, large)
  # Slim's recipe: the update follows the loss, ~x100 (weight decay's gradient is unscaled).
  _bind("include 'experiments/common/slim_rmsprop.gin'")
  slim = training.MultiTaskTrainer(str(tmp_path / "slim"), tasks=[name], input_fns=batches)
  reference, large = map(np.linalg.norm, _first_trunk_updates(slim, name, [1.0, 100.0]))
  assert large / reference > 20, (reference, large)
