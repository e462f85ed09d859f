"""Tests of eval_pool: evaluation runs in single-threaded worker processes."""

import json
import multiprocessing
import os
import re
import time

import gin
import pytest

from mtssl_tf import eval_pool
from mtssl_tf.bin import common

# A one-step linear probe of a random depth-26 trunk on 16 toy images.
SMALL = ["Trunk.depth = 26", "imagenet_linear.dataset = 'toy'", "imagenet_linear.batch_size = 8",
         "imagenet_linear.crop_size = 96", "imagenet_linear.preprocess.resize = 100",
         "imagenet_linear/EvalSettings.train_steps = 2",
         "imagenet_linear/EvalSettings.batch_norm_batches = 1",
         "imagenet_linear.shuffle_buffer = 8", "imagenet_linear.num_toy_images = 16"]


@pytest.fixture(autouse=True)
def _gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_workers_take_the_gin_configuration_and_repeat_the_in_process_run(tmp_path):
  # Two seeds in two workers, and seed 0 again in this process: the workers parse the caller's
  # bindings (a worker without them would build the default ImageNet protocol and fail on the
  # missing dataset), and a seeded run gives the same numbers in a single-threaded worker as
  # in this process.
  jobs = [eval_pool.Job("imagenet_linear", str(tmp_path / f"seed{s}"), s, dict(init="random"))
          for s in (0, 1)]
  done = []
  pooled = eval_pool.run_jobs(jobs, 2, gin_params=SMALL,
                              on_done=lambda i, results, seconds: done.append(i))
  assert sorted(done) == [0, 1]
  assert [r["seed"] for r, _ in pooled] == [0, 1]
  assert all(r["plan"]["train_steps"] == 2 for r, _ in pooled)
  with open(tmp_path / "seed1" / "imagenet_linear-random.json") as f:
    assert json.load(f)["seed"] == 1
  common.parse_gin([], SMALL)
  (here, _), = eval_pool.run_jobs(
      [eval_pool.Job("imagenet_linear", str(tmp_path / "here"), 0, dict(init="random"))], 1)
  for key in ("top1", "top5"):
    assert pooled[0][0]["metrics"][key] == here["metrics"][key]
  assert pooled[0][0]["final_train_loss"] == pytest.approx(here["final_train_loss"], rel=1e-5)
  assert pooled[0][0]["final_train_loss"] != pooled[1][0]["final_train_loss"]
  # Each result records the gin configuration it ran with: a worker's is the caller's.
  assert "imagenet_linear.batch_size" in here["gin_config"]
  assert pooled[0][0]["gin_config"] == here["gin_config"] == gin.config_str()


def test_a_failing_job_raises_its_error_and_stops_the_others(tmp_path):
  # Its own workers are stopped; a child process this process had before is not its to stop.
  other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
  other.start()
  before = set(multiprocessing.active_children())
  try:
    missing = str(tmp_path / "no_such_checkpoint")
    jobs = [eval_pool.Job("imagenet_linear", str(tmp_path), 0, dict(checkpoint=missing))]
    with pytest.raises(FileNotFoundError,
                       match=f"Checkpoint {re.escape(missing)} does not exist"):
      eval_pool.run_jobs(jobs * 2, 2, gin_params=SMALL)
    assert not [c for c in multiprocessing.active_children()
                if c.is_alive() and c not in before]
    assert other.is_alive()
  finally:
    other.kill()
    other.join()


def test_default_processes_is_the_cores_at_most_one_per_job():
  cores = len(os.sched_getaffinity(0))
  assert eval_pool.default_processes([None] * 100) == cores
  assert eval_pool.default_processes([None]) == 1
  assert eval_pool.default_processes([]) == 1


def test_longest_first_orders_by_expected_cost_and_keeps_ties_in_order():
  jobs = [eval_pool.Job(name, f"/out/{i}", 0, {}) for i, name in enumerate(
      ["imagenet_linear", "nyu_depth", "voc_detection", "imagenet_linear", "voc_detection"])]
  ordered = eval_pool.longest_first(jobs)
  assert [j.output_dir for j in ordered] == ["/out/2", "/out/4", "/out/1", "/out/0", "/out/3"]
