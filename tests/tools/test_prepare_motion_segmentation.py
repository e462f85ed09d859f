"""Tests of tools/prepare_motion_segmentation.py on toy videos: masks, bad videos, resuming."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import motion_labels
from mtssl_tf.data import motion_records
from mtssl_tf.data import toy_video

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOL = os.path.join(_ROOT, "tools", "prepare_motion_segmentation.py")
_spec = importlib.util.spec_from_file_location("prepare_motion_segmentation", _TOOL)
pms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pms)

CAMERAS = ("pan_zoom", "static", "pan", "rotate")
# One labelled frame per video keeps the tests fast.
SETTINGS = pms.Settings(frames_per_video=1, clip_spacing=5)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """Four good toy videos (with their true masks), a short one, a corrupt one, a tiny one."""
  folder = tmp_path_factory.mktemp("videos")
  truths = {}
  for i, camera in enumerate(CAMERAS):
    clip = toy_video.make_clip(num_frames=11, camera=camera, seed=i)
    name = f"good/{camera}_{i}.avi"
    os.makedirs(folder / "good", exist_ok=True)
    toy_video.write_video(str(folder / name), clip.frames)
    truths[name] = clip.masks[0]
  short = toy_video.make_clip(num_frames=5, camera="static", seed=9)
  toy_video.write_video(str(folder / "short.avi"), short.frames)
  (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
  toy_video.write_video(str(folder / "tiny.avi"), np.zeros([12, 6, 6, 3], np.uint8))
  (folder / "notes.txt").write_text("not a video: ignored")
  return folder, truths


def _files(directory):
  return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
          if name.startswith(pms.SHARD_PREFIX)}


def _read_records(directory):
  dataset = motion_records.motion_dataset(
      source="tfrecord", pattern=str(directory / "*.tfrecord"), shuffle_files=False)
  return {ex["video_id"].numpy().decode(): ex for ex in dataset}


def test_labels_skips_and_summary(videos, tmp_path):
  folder, truths = videos
  found = pms.find_videos(str(folder))
  assert [os.path.relpath(v, folder) for v in found] == [
      "corrupt.mp4", "good/pan_2.avi", "good/pan_zoom_0.avi", "good/rotate_3.avi",
      "good/static_1.avi", "short.avi", "tiny.avi"]
  summary = pms.prepare(found, str(tmp_path), SETTINGS, videos_per_shard=2,
                        video_root=str(folder), progress_interval=0)
  assert summary["shards"] == 4 and summary["shards_complete"] == 4
  assert summary["videos"] == 7 and summary["videos_labelled"] == 4 and summary["frames"] == 4
  assert summary["skipped_counts"] == {"unreadable": 1, "shorter than the track length": 1,
                                       "zero-size frames": 1}
  assert summary["skipped"]["unreadable"][0].startswith("corrupt.mp4")
  assert summary["skipped"]["shorter than the track length"][0].startswith("short.avi")
  assert summary["skipped"]["zero-size frames"][0].startswith("tiny.avi")
  with open(tmp_path / "summary.json") as f:
    assert json.load(f) == summary

  records = _read_records(tmp_path)
  assert set(records) == set(truths)
  for video_id, example in records.items():
    assert example["image"].shape == (240, 320, 3)
    assert example["mask"].shape == (30, 40) and example["mask"].dtype == tf.uint8
    assert int(example["frame_index"]) == 0
    # The tool's mask of the compressed video overlaps the generator's true moving objects.
    mask = example["mask"].numpy().astype(bool)
    truth = motion_labels.downsample_mask(truths[video_id])
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou >= 0.6, (video_id, iou)
    assert (mask & ~truth).sum() <= 0.02 * (~truth).sum()


def test_resume_after_a_crash_equals_a_clean_run(videos, tmp_path):
  folder, _ = videos
  found = pms.find_videos(str(folder))
  clean, resumed = tmp_path / "clean", tmp_path / "resumed"
  pms.prepare(found, str(clean), SETTINGS, videos_per_shard=2, video_root=str(folder))
  pms.prepare(found, str(resumed), SETTINGS, videos_per_shard=2, video_root=str(folder))
  # A crash during shard 2, after shard 1's records but before its JSON: shard 1 is not
  # complete, shard 2 left only a temporary file.
  for name in ("motion_seg-00001-of-00004.json", "motion_seg-00002-of-00004.json",
               "motion_seg-00002-of-00004.tfrecord"):
    os.remove(resumed / name)
  (resumed / "motion_seg-00002-of-00004.tfrecord.tmp-123").write_bytes(b"half a shard")
  kept = resumed / "motion_seg-00000-of-00004.tfrecord"
  os.utime(kept, (1, 1))
  summary = pms.prepare(found, str(resumed), SETTINGS, videos_per_shard=2,
                        video_root=str(folder))
  assert summary["shards_complete"] == 4
  assert _files(resumed) == _files(clean)
  assert not [n for n in os.listdir(resumed) if ".tmp-" in n]
  # Complete shards were not redone.
  assert os.stat(kept).st_mtime == 1


def test_other_settings_in_the_same_directory_are_refused(videos, tmp_path):
  folder, _ = videos
  found = pms.find_videos(str(folder))[:2]
  pms.prepare(found, str(tmp_path), SETTINGS, video_root=str(folder))
  other = pms.Settings(frames_per_video=1, clip_spacing=5, max_side=160)
  with pytest.raises(ValueError, match=r"other settings.*settings\.max_side.*--overwrite"):
    pms.prepare(found, str(tmp_path), other, video_root=str(folder))
  summary = pms.prepare(found, str(tmp_path), other, video_root=str(folder), overwrite=True)
  records = _read_records(tmp_path)
  assert summary["frames"] == 1 and len(records) == 1
  assert next(iter(records.values()))["image"].shape == (120, 160, 3)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="--frames_per_video"):
    pms.Settings(frames_per_video=0).check()
  with pytest.raises(ValueError, match="residual_threshold"):
    pms.Settings(labels=motion_labels.LabelConfig(residual_threshold=0)).check()


def test_the_binary_in_parallel_processes_matches_the_library(videos, tmp_path):
  folder, _ = videos
  library, binary = tmp_path / "library", tmp_path / "binary"
  pms.prepare(pms.find_videos(str(folder)), str(library), SETTINGS, videos_per_shard=2,
              video_root=str(folder))
  result = subprocess.run(
      [sys.executable, _TOOL, f"--videos={folder}", f"--output_dir={binary}",
       "--frames_per_video=1", "--clip_spacing=5", "--videos_per_shard=2", "--num_workers=2"],
      capture_output=True, text=True, timeout=300, cwd=_ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "7/7 videos, 4 frames" in result.stderr
  assert _files(binary) == _files(library)


def test_sigterm_keeps_finished_shards_and_a_rerun_completes_them(videos, tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  folder, _ = videos
  clean, stopped = tmp_path / "clean", tmp_path / "stopped"
  pms.prepare(pms.find_videos(str(folder)), str(clean), SETTINGS, videos_per_shard=1,
              video_root=str(folder))
  command = [sys.executable, _TOOL, f"--videos={folder}", f"--output_dir={stopped}",
             "--frames_per_video=1", "--clip_spacing=5", "--videos_per_shard=1",
             "--num_workers=1"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(command, cwd=_ROOT, env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if stopped.exists() and any(n.endswith(".json") and n.startswith(pms.SHARD_PREFIX)
                                for n in os.listdir(stopped)):
      process.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-2000:]
  assert "run the same command again" in stderr
  done = [n for n in os.listdir(stopped) if n.endswith(".json") and n.startswith("motion")]
  assert 1 <= len(done) < 7
  rerun = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert _files(stopped) == _files(clean)
