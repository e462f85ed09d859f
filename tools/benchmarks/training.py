"""The "training" benchmark: the multi-task loop beside its bare steps; two workers beside one.

- "training_loop": `MultiTaskTrainer.train` (schedule, counters, loss checks, summaries,
  accumulation; paper section 4) in steps/s against a bare loop calling the same compiled task
  steps (`MultiTaskTrainer.run_step`) in the same order, on fixed batches with the small trunk
  and small inputs (where the loop's own overhead shows most). The two alternate in rounds.
- "training_workers": two MultiWorkerMirroredStrategy workers on 127.0.0.1 (two processes of
  tools/benchmark.py with --worker_output) against one, in examples/s at the same per-worker
  batch.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags
import gin
import tensorflow as tf

from benchmarks import common
from mtssl_tf import training
from mtssl_tf.bin import common as bin_common


# The benchmark's configuration: small trunk, small inputs, toy data, two tasks (one
# accumulating), no checkpoints.
BINDINGS = [
    "Trunk.depth = 26", "image_dataset.source = 'toy'", "image_dataset.num_toy_images = 32",
    "image_dataset.toy_size = (64, 72)", "relative_position.patch_size = 32",
    "relative_position.preprocess.gap = 4", "relative_position.preprocess.jitter = 2",
    "relative_position.batch_size = 8", "relative_position.fc_width = 64",
    "exemplar.patch_size = 32", "exemplar.batch_size = 8", "exemplar.head_width = 64",
    "exemplar/TaskSettings.accumulation_steps = 2", "MultiTaskTrainer.checkpoint_every_secs = None",
    "MultiTaskTrainer.log_every_secs = 1000", "MultiTaskTrainer.summary_every_steps = 20",
    "MultiTaskTrainer.tasks = ['relative_position', 'exemplar']",
]
# Global steps run before timing: every (task, apply) step function is traced.
WARM_UP_STEPS = 8
ENTRY_POINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "benchmark.py")


def schedule(trainer, steps):
  """The next `steps` (task, apply) pairs `trainer.train` would run, from its counters."""
  counts = [int(trainer.task_steps[n].numpy()) for n in trainer.names]
  weights = [trainer.settings[n].weight for n in trainer.names]
  order = []
  for _ in range(steps):
    i = training.next_task(counts, weights)
    counts[i] += 1
    name = trainer.names[i]
    order.append((name, counts[i] % trainer.settings[name].accumulation_steps == 0))
  return order


def run_loop(emit, steps, rounds, workdir, bindings=()):
  """Emits "training_loop": the loop against its bare steps, in the same process."""
  gin.clear_config()
  bin_common.parse_gin([], BINDINGS + list(bindings))
  try:
    probe = training.MultiTaskTrainer(os.path.join(workdir, "probe"))
    batches = {name: next(iter(task.input_fn())) for name, task in probe.tasks.items()}
    trainer = training.MultiTaskTrainer(
        os.path.join(workdir, "run"),
        input_fns={name: common.repeat_batch(batch) for name, batch in batches.items()})
    trainer.train(num_steps=WARM_UP_STEPS)
    order = schedule(trainer, steps)

    def loop():
      trainer.train(num_steps=int(trainer.global_step.numpy()) + steps, save_at_end=False)

    def bare():
      for name, apply in order:
        loss, _, _ = trainer.run_step(name, apply)
      return loss

    # No untimed call: both are warm after WARM_UP_STEPS, and a call is a whole round.
    seconds, _ = common.alternate({"loop": loop, "bare": bare}, rounds, 1, warm_up=False)
  finally:
    gin.clear_config()
  loop_s, bare_s = seconds["loop"], seconds["bare"]
  emit(benchmark="training_loop", tasks=trainer.names, steps=steps,
       loop_steps_per_s=round(steps / loop_s, 2), bare_steps_per_s=round(steps / bare_s, 2),
       ratio_loop_over_bare=round(bare_s / loop_s, 3),
       overhead_percent=round(100 * (loop_s - bare_s) / bare_s, 2))


def _free_addresses(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
  for s in sockets:
    s.close()
  return addresses


def _workers_examples_per_s(num_workers, steps, workdir):
  """Runs `num_workers` loopback workers (processes of the entry point); the chief's examples/s."""
  cluster = {"worker": _free_addresses(num_workers)}
  processes, outputs = [], []
  for index in range(num_workers):
    output = os.path.join(workdir, f"workers{num_workers}_{index}.json")
    outputs.append(output)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    processes.append(subprocess.Popen(
        [sys.executable, ENTRY_POINT, "--benchmarks=", f"--worker_output={output}",
         f"--training_steps={steps}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  for process in processes:
    _, err = process.communicate(timeout=1800)
    if process.returncode:
      raise RuntimeError(f"benchmark worker failed: {err[-2000:]}")
  with open(outputs[0]) as f:
    return json.load(f)["examples_per_s"]


def run_workers(emit, steps, workdir):
  """Emits "training_workers": two loopback workers against one."""
  one = _workers_examples_per_s(1, steps, workdir)
  two = _workers_examples_per_s(2, steps, workdir)
  emit(benchmark="training_workers", cpus=os.cpu_count(), one_worker_examples_per_s=one,
       two_workers_examples_per_s=two, ratio_two_over_one=round(two / one, 3),
       note="same per-worker batch; on one machine the two workers share its cores")


def run_worker_from_flags(values=flags.FLAGS):
  """The entry point's work under --worker_output."""
  run_worker(values.worker_output, values.training_steps)


def run_worker(output, steps):
  """One worker of `run_workers`: MultiWorkerMirroredStrategy from TF_CONFIG; writes examples/s."""
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  workers = strategy.num_replicas_in_sync
  per_worker = 8
  bin_common.parse_gin([], BINDINGS + [f"relative_position.batch_size = {per_worker * workers}",
                                       f"exemplar.batch_size = {per_worker * workers}"])
  trainer = training.MultiTaskTrainer(tempfile.mkdtemp(prefix="mtssl_benchmark_worker_"),
                                      strategy=strategy)
  trainer.train(num_steps=WARM_UP_STEPS)
  start = time.perf_counter()
  trainer.train(num_steps=WARM_UP_STEPS + steps, save_at_end=False)
  seconds = time.perf_counter() - start
  with open(output, "w") as f:
    json.dump({"examples_per_s": round(per_worker * workers * steps / seconds, 2),
               "workers": workers}, f)


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of 'training' only (common.define_flags has the shared ones)."""
  flags.DEFINE_integer("training_steps", 60, "'training': timed global steps per round.",
                       flag_values=flag_values)
  flags.DEFINE_string("worker_output", None, "Internal to 'training': run as one of its "
                      "MultiWorkerMirroredStrategy workers (cluster from TF_CONFIG) and write "
                      "its examples/s to this JSON file.", flag_values=flag_values)


def run_from_flags(emit, values=flags.FLAGS):
  workdir = tempfile.mkdtemp(prefix="mtssl_benchmark_training_")
  run_loop(emit, values.training_steps, values.rounds, workdir)
  run_workers(emit, values.training_steps, workdir)
