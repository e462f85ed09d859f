"""Distribution conventions, in one place.

* The strategy comes from a name: "default" (one device: CPU or one GPU), "mirrored" (all local
  GPUs, or the devices given), "multi_worker" (MultiWorkerMirroredStrategy from `TF_CONFIG`).
* Each task's global batch is split over replicas by the `tf.distribute.InputContext` that
  `distribute_datasets_from_function` passes to `input_fn` (`Task.per_replica_batch`).
* A replica's loss is its per-replica mean divided by `num_replicas_in_sync` (`scale_loss`), so
  that summing gradients over replicas, which the optimizers do, gives the gradient of the
  global mean.
* Input can run on other machines: with a tf.data service dispatcher address
  (`distribute_input.tf_data_service`, flag `--tf_data_service`), each task's pipeline runs on
  the service's workers and the trainers only read finished batches (WORKSPACE.md says how to
  start the dispatcher and workers).
* Only the chief writes checkpoints and summaries to the model directory; the other workers
  write theirs (a collective save needs every worker) to a temporary directory,
  `.worker_tmp_<index>/` in the model directory, that is deleted when the run ends. One that a
  crashed run left is deleted when the next one starts (`remove_stale_worker_dirs`): by its
  worker, or by the chief when no worker of the new cluster has that index.
"""

import contextlib
import json
import os
import re
import shutil

from absl import logging
import gin
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


@gin.configurable
def make_strategy(name="default", devices=None):
  """A `tf.distribute.Strategy` by name.

  Args:
    name: one of `STRATEGIES`.
    devices: for "mirrored", the devices to mirror over (default: all local GPUs, or the CPU).

  Returns:
    The strategy.

  Raises:
    ValueError: for an unknown name, or "multi_worker" without a TF_CONFIG naming a cluster.
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES} "
                     "(run_training.strategy_name, or make_strategy.name).")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(devices=devices)
  config = json.loads(os.environ.get("TF_CONFIG", "{}"))
  if "cluster" not in config or "task" not in config:
    raise ValueError(
        "strategy 'multi_worker' needs TF_CONFIG with a cluster and this worker's task, e.g. "
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": '
        '{"type": "worker", "index": 0}}\' (see WORKSPACE.md).')
  return tf.distribute.MultiWorkerMirroredStrategy()


@gin.configurable
def distribute_input(dataset, job_name, tf_data_service=None, target_workers="ANY"):
  """Hands a task's input pipeline to a tf.data service, if one is given.

  The service's workers run the whole pipeline (decoding, augmentation, batching); every
  replica of every trainer joins the job `job_name` and reads the next finished batch from
  any worker ("parallel epochs": each service worker runs its own copy of the infinite,
  randomly augmented pipeline, so no two batches are the same). Without a service the dataset
  is returned as is.

  Args:
    dataset: a task's batched dataset (per replica).
    job_name: the job's name; the task's name, so that tasks never share a job.
    tf_data_service: None, or the dispatcher's address, e.g. "grpc://input-0:5050".
    target_workers: "ANY" or "LOCAL" (read only from a tf.data worker on the same host).

  Returns:
    A dataset.
  """
  if not tf_data_service:
    return dataset
  return dataset.apply(tf.data.experimental.service.distribute(
      processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,
      service=tf_data_service, job_name=job_name, target_workers=target_workers))


def scale_loss(loss, strategy=None):
  """A replica's loss divided by the number of replicas (summed gradients = global mean)."""
  strategy = strategy or tf.distribute.get_strategy()
  return loss / tf.cast(strategy.num_replicas_in_sync, loss.dtype)


def worker_info(strategy):
  """(is_chief, worker index, number of workers) of this process."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True, 0, 1
  task_type, task_id = resolver.task_type, resolver.task_id
  num_workers = len(resolver.cluster_spec().as_dict().get("worker", [])) + len(
      resolver.cluster_spec().as_dict().get("chief", []))
  is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                      "chief" not in resolver.cluster_spec().as_dict())
  index = task_id if task_type == "worker" else 0
  return is_chief, index, max(num_workers, 1)


_WORKER_DIR = re.compile(r"\.worker_tmp_(0|[1-9]\d*)")


def _worker_dir_indices(strategy):
  """The indices of the non-chief workers of the strategy's cluster (they write elsewhere)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  workers = range(len(cluster.get("worker", [])))
  # Without a "chief" task, worker 0 is the chief.
  return set(workers) if "chief" in cluster else set(workers) - {0}


def write_dir(model_dir, strategy):
  """Where this worker writes: model_dir for the chief, a temporary directory for the others."""
  is_chief, index, _ = worker_info(strategy)
  if is_chief:
    return model_dir
  return os.path.join(model_dir, f".worker_tmp_{index}")


def remove_stale_worker_dirs(model_dir, strategy):
  """Deletes the workers' temporary directories an earlier run left; returns their paths.

  A worker deletes its own (nothing in it is ever restored: every worker restores the chief's
  checkpoint); the chief deletes those no worker of this cluster uses, e.g. all of them in a
  one-worker run. The directories of the cluster's other workers are theirs to delete.

  Args:
    model_dir: the run's directory.
    strategy: this process's `tf.distribute.Strategy`.

  Returns:
    The deleted directories.
  """
  if not tf.io.gfile.isdir(model_dir):
    return []
  is_chief, index, _ = worker_info(strategy)
  live = _worker_dir_indices(strategy)
  removed = []
  for entry in sorted(tf.io.gfile.listdir(model_dir)):
    match = _WORKER_DIR.fullmatch(entry.rstrip("/"))
    path = os.path.join(model_dir, entry.rstrip("/"))
    if not match or not tf.io.gfile.isdir(path):
      continue
    number = int(match.group(1))
    if (is_chief and number not in live) or (not is_chief and number == index):
      tf.io.gfile.rmtree(path)
      removed.append(path)
  if removed:
    logging.info("Removed the workers' temporary directories an earlier run left in %s: %s.",
                 model_dir, ", ".join(os.path.basename(p) for p in removed))
  return removed


def remove_worker_dir(model_dir, strategy):
  """Deletes a non-chief worker's temporary directory (nothing to do on the chief)."""
  path = write_dir(model_dir, strategy)
  if path != model_dir and tf.io.gfile.exists(path):
    try:
      tf.io.gfile.rmtree(path)
    except (OSError, tf.errors.OpError) as e:  # another run may share it; not fatal
      logging.warning("Could not remove %s: %s", path, e)
      shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def seeded(seed, deterministic=True):
  """Seeds Python, NumPy and TensorFlow inside (when seed is not None), with op determinism on
  (`deterministic`), turned off again on leaving unless it was on before.

  The one place where runs are made repeatable: the trainer (`run_training.seed`,
  `run_training.deterministic`) and the evaluations (`evaluate(seed=...)`).
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import config as tf_config  # only enable_* is public
  if seed is not None:
    tf.keras.utils.set_random_seed(int(seed))
  turn_off = (seed is not None and deterministic and
              not tf_config.is_op_determinism_enabled())
  if turn_off:
    tf_config.enable_op_determinism()
  try:
    yield
  finally:
    if turn_off:
      tf_config.disable_op_determinism()
