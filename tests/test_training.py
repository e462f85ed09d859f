"""Tests of the multi-task training loop: schedule, accumulation, optimizers, checkpoints,
strategies, errors."""

import collections
import dataclasses
import glob
import shutil
import types

import gin
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import training
from mtssl_tf import trunk as trunk_lib
from mtssl_tf.bin import common
from mtssl_tf.tasks import base
from tests.conftest import untraced_steps

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


def _tasks(names):
  """{name: task} built as the trainer builds them (each in its gin scope, on one trunk), without
  a trainer's variables, optimizers and checkpoint: for drawing batches from their pipelines."""
  trunk = trunk_lib.Trunk()
  tasks = {}
  for name in names:
    with gin.config_scope(name):
      tasks[name] = base.get(name)(trunk)
  return tasks


def _fixed_batches(names):
  """{task: input_fn} giving the same batch (drawn once from the task's pipeline) every step."""
  fns = {}
  for name, task in _tasks(names).items():
    # A colorization batch of only grayscale images has no loss at all: draw another.
    batch = next(b for b in task.input_fn()
                 if not ("colorization/has_color" in b and
                         not bool(tf.reduce_any(b["colorization/has_color"]))))
    fns[name] = (lambda b: lambda ctx: tf.data.Dataset.from_tensors(b).repeat())(batch)
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


# One run shared by the tests of accumulation, compute accounting, summaries and resuming:
# relative position (3 units of compute a step) and exemplar (1 unit, applying every 3rd of its
# steps) alternate, rp at odd global steps, with the lasso, on fixed batches. Its steps run
# untraced: these tests are about what the loop does around them, and what one step computes.
RUN_TASKS = ["relative_position", "exemplar"]
RUN = [
    "exemplar/TaskSettings.accumulation_steps = 3",
    "MultiTaskTrainer.use_lasso = True",
    "relative_position/TaskSettings.cost_per_step = 3.0",
    "exemplar/TaskSettings.cost_per_step = 1.0",
    "MultiTaskTrainer.checkpoint_every_compute = 5.0",
    "MultiTaskTrainer.summary_every_steps = 2",
    "MultiTaskTrainer.max_checkpoints_to_keep = 20",
]
# Global steps 1-8 one `train` call each; then one call up to this much compute.
RUN_STEPS, RUN_MAX_COMPUTE = 8, 24.0


def _summaries(model_dir):
  """{tag: {step: value}} of the scalars (None for other summaries) in model_dir/train."""
  written = collections.defaultdict(dict)
  for path in glob.glob(str(model_dir / "train" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = (float(tf.make_ndarray(value.tensor)) if value.metadata.plugin_data.plugin_name
                  == "scalars" else None)
        written[value.tag][event.step] = number
  return written


def _checkpoint_steps(model_dir):
  return sorted(int(p.split("-")[-1].split(".")[0])
                for p in glob.glob(str(model_dir / "ckpt-*.index")))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The shared run (`RUN`), built and trained once for the module's tests.

  Returns a namespace: input_fns, model_dir, steps ({global step 1-8: what changed at it}),
  states ({3 and 6: the state after that step}), at_step_3 (a copy of the model directory after
  step 3), summaries (written by step 8), checkpoints (after step 8) and compute_summary (the
  summary of the call up to RUN_MAX_COMPUTE).
  """
  gin.clear_config()
  common.parse_gin([], TINY + RUN)
  root = tmp_path_factory.mktemp("run")
  model_dir = root / "run"
  input_fns = _fixed_batches(RUN_TASKS)
  trainer = training.MultiTaskTrainer(str(model_dir), tasks=RUN_TASKS, input_fns=input_fns)
  ex_opt, rp_opt = trainer.optimizers["exemplar"], trainer.optimizers["relative_position"]
  accumulators = trainer.accumulators["exemplar"]
  snapshot = lambda opt: [v.numpy().copy() for v in opt.variables]
  ex_before, rp_before = snapshot(ex_opt), snapshot(rp_opt)
  with untraced_steps():
    steps, states = {}, {}
    for step in range(1, RUN_STEPS + 1):
      summary = trainer.train(num_steps=step, save_at_end=False)
      ex_after, rp_after = snapshot(ex_opt), snapshot(rp_opt)
      steps[step] = {
          "ex_changed": any(not np.array_equal(a, b) for a, b in zip(ex_before, ex_after)),
          "rp_changed": any(not np.array_equal(a, b) for a, b in zip(rp_before, rp_after)),
          "ex_steps": int(trainer.task_steps["exemplar"]),
          "accumulated": sum(float(tf.reduce_sum(tf.abs(a))) for a in accumulators),
          "iterations": (int(ex_opt.iterations), int(rp_opt.iterations)),
          "loss": summary["last_loss"][RUN_TASKS[(step - 1) % 2]],
      }
      ex_before, rp_before = ex_after, rp_after
      if step in (3, 6):
        states[step] = {"accumulators": [a.numpy() for a in accumulators],
                        "rp_optimizer": snapshot(rp_opt),
                        "lasso": trainer.lasso.matrix().numpy(),
                        "trunk": [v.numpy() for v in trainer.trunk.trainable_variables]}
      if step == 3:
        shutil.copytree(model_dir, root / "at_step_3")
    summaries = _summaries(model_dir)
    checkpoints = _checkpoint_steps(model_dir)
    compute_summary = dict(trainer.train(max_compute=RUN_MAX_COMPUTE),
                           compute_used=float(trainer.compute_used))
  gin.clear_config()
  return types.SimpleNamespace(
      trainer=trainer, input_fns=input_fns, model_dir=model_dir, steps=steps, states=states,
      at_step_3=root / "at_step_3", summaries=summaries, checkpoints=checkpoints,
      compute_summary=compute_summary)


@pytest.mark.xdist_group("test_training_run")
def test_slots_change_only_on_apply_steps_and_accumulators_empty_after_apply(run):
  trainer = run.trainer
  assert len(trainer.accumulators["exemplar"]) == len(trainer.var_lists["exemplar"])
  assert not trainer.accumulators["relative_position"]
  for step in range(1, 7):  # tasks alternate: rp, ex, rp, ex, rp, ex
    done = run.steps[step]
    if step % 2 == 1:  # relative position's step: applies every step (accumulation 1)
      assert done["rp_changed"] and not done["ex_changed"], step
    elif done["ex_steps"] % 3 == 0:  # exemplar's apply step
      assert done["ex_changed"] and not done["rp_changed"], step
      assert done["accumulated"] == 0.0
    else:  # exemplar accumulates
      assert not done["ex_changed"] and not done["rp_changed"], step
      assert done["accumulated"] > 0.0
  assert run.steps[6]["iterations"] == (1, 3)


def test_a_short_multi_task_run_lowers_every_loss(tmp_path):
  # The demo's rate for the small trunk, and its colorization head (experiments/demo.gin). The
  # mean square starts at 0, so that every update is a full step: from TF1's start of 1 (the
  # default) steps reach full size only after ~130 updates, beyond a test's few.
  _bind("TaskSettings.learning_rate = 3e-4", "colorization.head_width = 64",
        "TaskSettings.initial_mean_square = 0.0")
  names = ["relative_position", "colorization", "exemplar", "motion_segmentation"]
  fns = _fixed_batches(names)
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"), tasks=names, input_fns=fns)
  # 4 steps each: the mean losses of each task's first and last 2. Over 8 seeds colorization's
  # drop to 0.82 of the first (at most 0.85), motion segmentation's to 0.62 (0.70), the others'
  # below 0.4; with TINY's 8-channel colorization head it took 30 steps to reach 0.89 (0.92).
  # Untraced: a step computes the same compiled or not (test_accumulation.py checks a compiled
  # one), and 16 eager steps cost less than tracing four.
  with untraced_steps():
    summary = trainer.train(num_steps=16)
  assert summary["task_steps"] == {n: 4 for n in names}
  for name in names:
    assert summary["last_mean_loss"][name] < 0.95 * summary["first_mean_loss"][name], name


def _conv_weight_rms(trunk):
  """Mean over the trunk's conv kernels of each kernel's root mean square."""
  kernels = [v for v in trunk.trainable_variables if v.name.endswith("weights:0")]
  assert len(kernels) >= 10
  return float(np.mean([np.sqrt(np.mean(np.square(v.numpy()))) for v in kernels]))


def test_the_demo_pretraining_does_not_shrink_the_trunk(tmp_path, monkeypatch):
  # The demo's configuration on a trunk of one unit per block. Motion segmentation on one fixed
  # batch: its loss nears 0 within tens of steps, after which any weight decay in its loss is
  # most of the gradient its RMSProp normalizes, and moves each weight by up to the learning
  # rate per step. With slim's decay (1e-4) 60 steps shrink the conv weights' RMS to 0.87 of
  # its start (0.54 in 100); without, it grows by about 1%. The mean square starts at 0, where
  # it tracks the squared gradient at once, as it does once TF1's start of 1 (the default) has
  # faded after ~130 updates: 60 steps from 1 are all warm-up and move nothing much either way.
  monkeypatch.setitem(trunk_lib.BLOCK_UNITS, 20, (1, 1, 1))
  gin.clear_config()
  common.parse_gin(["experiments/demo.gin"], ["Trunk.depth = 20",
                                              "TaskSettings.initial_mean_square = 0.0"])
  names = ["motion_segmentation"]
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"), tasks=names,
                                      input_fns=_fixed_batches(names))
  trainer.trunk(tf.zeros([1, 64, 64, 3]), training=False)
  start = _conv_weight_rms(trainer.trunk)
  with untraced_steps():
    trainer.train(num_steps=60)
  assert _conv_weight_rms(trainer.trunk) > 0.98 * start
  # The evaluations' trunks, built in their gin scopes, keep slim's decay.
  for name in ("imagenet_linear", "nyu_depth", "voc_detection"):
    with gin.config_scope(name):
      assert trunk_lib.Trunk().weight_decay == 1e-4, name


@pytest.mark.xdist_group("test_training_run")
def test_compute_accounting_checkpoints_and_operative_config(run):
  # Steps alternate rp (3), ex (1): compute 3, 4, 7, 8, 11, 12, 15, 16 over steps 1-8 (one call
  # each): crosses 5 at step 3, 10 at step 5, 15 at step 7.
  assert run.checkpoints == [3, 5, 7]
  # Then one call: 19, 20, 23, 24 -> crosses 20 at step 10 (and not again before 25); stops at
  # 24 (step 12), where the final checkpoint is written.
  assert run.compute_summary["step"] == 12 and run.compute_summary["compute_used"] == 24.0
  assert _checkpoint_steps(run.model_dir) == [3, 5, 7, 10, 12]
  config = (run.model_dir / "operative_config.gin").read_text()
  assert "Trunk.depth = 26" in config and "TaskSettings.cost_per_step = 3.0" in config
  tags = set(_summaries(run.model_dir))
  assert {"relative_position/loss", "exemplar/triplet_accuracy", "exemplar/learning_rate",
          "steps_per_sec"} <= tags
  assert any(tag.startswith("operative_config") for tag in tags)


@pytest.mark.xdist_group("test_training_run")
def test_resume_restores_step_counters_slots_and_lasso(run):
  _bind(*RUN)
  # Fixed batches: the input pipelines' positions are not checkpointed (after a resume the
  # data order differs), so only fixed inputs let the two runs be compared step by step.
  second = training.MultiTaskTrainer(str(run.at_step_3), tasks=RUN_TASKS,
                                     input_fns=run.input_fns)
  first = run.states[3]  # after rp, ex (accumulated, not applied), rp
  assert second.restored_from.endswith("ckpt-3")
  assert int(second.global_step) == 3 and int(second.task_steps["exemplar"]) == 1
  assert any(a.any() for a in first["accumulators"])
  for a, b in zip(first["accumulators"], second.accumulators["exemplar"]):
    np.testing.assert_array_equal(a, b.numpy())
  for a, b in zip(first["rp_optimizer"], second.optimizers["relative_position"].variables):
    np.testing.assert_array_equal(a, b.numpy())
  np.testing.assert_array_equal(first["lasso"], second.lasso.matrix().numpy())
  # Both continue identically: ex accumulates again, rp, then ex applies what was restored.
  with untraced_steps():  # as the first run's
    second.train(num_steps=6)
  first = run.states[6]
  np.testing.assert_allclose(first["lasso"], second.lasso.matrix().numpy())
  for a, b in zip(first["trunk"], second.trunk.trainable_variables):
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
  row_sums = second.lasso.matrix().numpy().sum(axis=1)
  np.testing.assert_allclose(row_sums, 1.0, atol=1e-6)


def test_nan_loss_stops_naming_task_and_step_and_keeps_the_checkpoint(tmp_path):
  names = ["relative_position", "exemplar"]
  good = next(iter(_tasks(["relative_position"])["relative_position"].input_fn()))
  poisoned = dict(good)
  poisoned["relative_position/patches"] = tf.fill(good["relative_position/patches"].shape,
                                                  np.inf)
  # Relative position's first batch is good, its second (global step 3) overflows.
  fns = {"relative_position": lambda ctx: tf.data.Dataset.from_tensors(good).concatenate(
      tf.data.Dataset.from_tensors(poisoned).repeat())}
  trainer = training.MultiTaskTrainer(str(tmp_path / "run"), tasks=names, input_fns=fns)
  with untraced_steps():  # where the loop stops and what it keeps is under test, not the step
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


@pytest.mark.xdist_group("test_training_run")
def test_every_task_writes_summaries_on_its_own_cadence(run):
  # Two tasks alternate (rp at odd global steps, ex at even ones). A cadence counted in global
  # steps would write only exemplar; counted in each task's own steps, both appear, at their
  # own 2nd and 4th steps, with the mean loss of the steps since their last write.
  written = run.summaries
  losses = [run.steps[step]["loss"] for step in range(1, RUN_STEPS + 1)]
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
  # The trunk's conv kernels' mean RMS, from the variables saved after step 6.
  names = [v.name for v in run.trainer.trunk.trainable_variables]
  kernels = [w for n, w in zip(names, run.states[6]["trunk"]) if n.endswith("/weights:0")]
  assert len(kernels) >= 10
  np.testing.assert_allclose(written["trunk/conv_weight_rms"][6],
                             np.mean([np.sqrt(np.mean(w.astype(np.float64)**2)) for w in kernels]),
                             rtol=1e-5)


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


def test_a_seeded_deterministic_run_repeats_itself_exactly(tmp_path):
  # Two runs of the same seed on the real input pipelines (random patches, color dropping,
  # exemplar's crops and color jitter, shuffling): every checkpointed value equal. Without
  # op determinism the parallel pipelines hand their random draws to examples in any order,
  # and the same seed gave weights apart by more than their own size after 40 steps.
  from tensorflow.python.framework import config as tf_config  # pylint: disable=g-import-not-at-top
  _bind("MultiTaskTrainer.tasks = ['relative_position', 'exemplar']")
  values = []
  try:
    for run_name in ("a", "b"):
      with untraced_steps():
        training.run_training(str(tmp_path / run_name), num_steps=4, seed=0, deterministic=True)
      # Off again: what runs next in the process (the demo's checks) is not serialized.
      assert not tf_config.is_op_determinism_enabled()
      reader = tf.train.load_checkpoint(str(tmp_path / run_name / "ckpt-4"))
      values.append({n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
                     if n.endswith("VARIABLE_VALUE")})
  finally:
    tf_config.disable_op_determinism()
  assert sorted(values[0]) == sorted(values[1])
  trunk_names = [n for n in values[0] if n.startswith("trunk/")]
  assert len(trunk_names) > 50
  for name in values[0]:
    np.testing.assert_array_equal(values[0][name], values[1][name], err_msg=name)
  with pytest.raises(ValueError, match="run_training.deterministic needs run_training.seed"):
    training.run_training(str(tmp_path / "c"), num_steps=1, deterministic=True)


def test_a_tasks_rmsprop_is_tf1s_from_its_first_update():
  # The paper's TensorFlow-Slim code trained with TF1's tf.train.RMSPropOptimizer, whose mean
  # square starts at 1; Keras's RMSprop starts it at 0, which makes the first update 3.2 times
  # the learning rate per weight whatever the gradient (and 300 times TF1's here, for the
  # gradients of 1e-2). Rows of gradients of 1e-4, 1e-2 and 1: six updates of a task's
  # optimizer against TF1's own, at the task's default rho, momentum and epsilon.
  gin.clear_config()
  settings = training.TaskSettings(learning_rate=1e-3)
  rng = np.random.RandomState(0)
  start = rng.normal(size=[3, 5]).astype(np.float32)
  ours, theirs = tf.Variable(start), tf.Variable(start)
  optimizer = training.make_optimizer(settings, [ours])
  reference = tf.compat.v1.train.RMSPropOptimizer(
      1e-3, decay=settings.rho, momentum=settings.momentum, epsilon=settings.epsilon)
  for _ in range(6):
    gradient = tf.constant(rng.normal(size=[3, 5]) * [[1e-4], [1e-2], [1.0]], tf.float32)
    optimizer.apply_gradients([(gradient, ours)])
    reference.apply_gradients([(gradient, theirs)])
    moved, expected = ours.numpy() - start, theirs.numpy() - start
    # Row by row: each row's steps are of its own size (1e-7 to 1e-2 here).
    for row in range(3):
      np.testing.assert_allclose(moved[row], expected[row], rtol=1e-3,
                                 atol=1e-3 * np.abs(expected[row]).max() + 1e-9)


def test_a_tasks_update_does_not_depend_on_its_loss_scale(tmp_path):
  # Paper section 4: a separate RMSProp per task makes a loss's scale irrelevant to how fast the
  # task trains. That holds when epsilon is small beside the squared gradients and the mean
  # square tracks them: checked from a mean square of 0 (_first_trunk_updates zeroes the
  # slots), as it is once TF1's start of 1 has faded (rho^k, about 130 updates at |g| ~ 1e-3).
  # Slim's TF1 recipe (epsilon 1.0) makes the update nearly proportional to the loss scale.
  name = "exemplar"
  batches = _fixed_batches([name])
  trainer = training.MultiTaskTrainer(str(tmp_path / "default"), tasks=[name], input_fns=batches)
  # Untraced: the optimizer's arithmetic is under test, not how the step compiles.
  with untraced_steps():
    reference, small, large = map(np.linalg.norm, _first_trunk_updates(trainer, name,
                                                                       [1.0, 0.01, 100.0]))
  assert 0.5 < small / reference < 2 and 0.5 < large / reference < 2, (small, reference, large)
  # Slim's recipe: the update follows the loss, ~x100 (weight decay's gradient is unscaled).
  _bind("include 'experiments/common/slim_rmsprop.gin'")
  slim = training.MultiTaskTrainer(str(tmp_path / "slim"), tasks=[name], input_fns=batches)
  with untraced_steps():
    reference, large = map(np.linalg.norm, _first_trunk_updates(slim, name, [1.0, 100.0]))
  assert large / reference > 20, (reference, large)


@pytest.mark.xdist_group("test_training_run")
def test_run_step_runs_one_step_and_leaves_the_bookkeeping_to_train(run):
  trainer, name = run.trainer, "exemplar"  # accumulates 3 steps per apply
  variables, accumulators = trainer.var_lists[name], trainer.accumulators[name]
  counters = (int(trainer.global_step), int(trainer.task_steps[name]))
  iterations = int(trainer.optimizers[name].iterations)
  start = [v.numpy() for v in variables]
  summed = [a.numpy() for a in accumulators]
  # The step's loss and gradient by hand, on its fixed batch: the task's loss, weight decay and
  # the task's lasso penalty (paper section 3.2).
  batch = next(iter(run.input_fns[name](tf.distribute.InputContext())))
  with tf.GradientTape() as tape:
    task_loss = trainer.tasks[name].model_fn(batch, heads.Mode.TRAIN).loss
    total = task_loss + trainer.trunk.regularization_loss() + trainer.lasso.penalty(name)
  gradients = tape.gradient(total, variables)

  with untraced_steps():  # as the run's steps
    loss, flags, _ = trainer.run_step(name, apply=False)
  assert float(loss) == pytest.approx(float(task_loss), rel=1e-5)
  assert flags.numpy().tolist() == [0.0, 0.0]
  for before, after, gradient in zip(summed, accumulators, gradients):
    np.testing.assert_allclose(after.numpy() - before, gradient.numpy(), rtol=1e-3, atol=1e-6)
  assert all(np.array_equal(v.numpy(), s) for v, s in zip(variables, start))

  with untraced_steps():
    trainer.run_step(name, apply=True)
  assert int(trainer.optimizers[name].iterations) == iterations + 1
  assert not all(np.array_equal(v.numpy(), s) for v, s in zip(variables, start))
  assert not any(np.any(a.numpy()) for a in accumulators)
  # The schedule's counters are `train`'s to move.
  assert (int(trainer.global_step), int(trainer.task_steps[name])) == counters
