"""Makes the motion segmentation task's training data from a collection of videos.

  python tools/prepare_motion_segmentation.py --videos=/data/videos --output_dir=/data/motion_seg
  python tools/prepare_motion_segmentation.py --video_list=videos.txt --output_dir=... \
      --frames_per_video=20 --clip_spacing=15 --num_workers=16

For each video, frames 0, s, 2s, ... (s = --clip_spacing, at most --frames_per_video of them)
are labelled: each is tracked densely over the --track_length frames after it, the camera's
motion (a RANSAC homography per frame step) is removed, and the pixels whose residual motion
stays above a threshold are marked as moving (mtssl_tf/data/motion_labels.py says exactly how;
every threshold is a flag of the same name). Frames are first resized so their longer side is
at most --max_side (thresholds are in pixels at that size) and cropped to multiples of the mask
stride (8). The masks are stored downsampled by 8.

Output, in --output_dir:
  motion_seg-NNNNN-of-MMMMM.tfrecord   records of mtssl_tf/data/motion_records.py: the frame
                                       (JPEG), its mask (PNG), video id, frame index, sizes.
  motion_seg-NNNNN-of-MMMMM.json       that shard's counts; written last, it marks the shard
                                       complete.
  settings.json                        the settings and the video list the shards were made
                                       with.
  summary.json                         totals over all shards: videos labelled, skipped videos
                                       by reason (unreadable, shorter than the track length,
                                       zero-size frames) with their names, frames labelled,
                                       empty masks, mean moving fraction.

Videos are split into shards of --videos_per_shard in sorted order; shards run in parallel in
--num_workers processes. A shard is written to a temporary name and renamed when complete, so
after a crash, Ctrl-C or SIGTERM, running the same command again redoes only the unfinished
shards and gives the same files a clean run would. Running it with other settings into the
same --output_dir is refused (or pass --overwrite to start again).

Reads any container and codec OpenCV's FFmpeg backend reads (opencv-python-headless).
"""

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue as queue_lib
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtssl_tf import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf import progress  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import motion_labels  # pylint: disable=g-import-not-at-top,wrong-import-position

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".ogv", ".3gp")
SKIP_REASONS = ("unreadable", "shorter than the track length", "zero-size frames")
SHARD_PREFIX = "motion_seg"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the tool makes; stored in settings.json and compared on a rerun."""
  frames_per_video: int = 10
  clip_spacing: int = 30
  max_side: int = 320
  jpeg_quality: int = 90
  labels: motion_labels.LabelConfig = motion_labels.LabelConfig()

  def check(self):
    problems = []
    if self.frames_per_video < 1:
      problems.append(f"--frames_per_video={self.frames_per_video} must be >= 1")
    if self.clip_spacing < 1:
      problems.append(f"--clip_spacing={self.clip_spacing} must be >= 1")
    if self.max_side < self.labels.stride:
      problems.append(f"--max_side={self.max_side} must be >= the stride {self.labels.stride}")
    if not 1 <= self.jpeg_quality <= 100:
      problems.append(f"--jpeg_quality={self.jpeg_quality} must be in [1, 100]")
    if problems:
      raise ValueError("; ".join(problems) + ".")
    self.labels.check()
    return self


class BadVideo(Exception):
  """A video that is skipped; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason, detail=""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def find_videos(folder):
  """Video files under `folder` (recursively, by extension, any case), sorted."""
  if not os.path.isdir(folder):
    raise ValueError(f"--videos={folder!r} is not a directory; give a folder of videos or use "
                     "--video_list.")
  found = []
  for directory, _, names in os.walk(folder, followlinks=True):
    found.extend(os.path.join(directory, n) for n in names
                 if os.path.splitext(n)[1].lower() in VIDEO_EXTENSIONS)
  return sorted(found)


def read_video_list(path):
  """Paths from a list file: one per line; blank lines and lines starting with # ignored.

  Relative paths are taken relative to the list file's folder.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--video_list={path!r} does not exist.")
  base = os.path.dirname(os.path.abspath(path))
  videos = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line and not line.startswith("#"):
        videos.append(line if os.path.isabs(line) else os.path.join(base, line))
  return videos


def prepare_frame(frame, max_side, stride):
  """BGR frame from OpenCV -> RGB, longer side at most max_side, sides multiples of stride."""
  height, width = frame.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  if scale < 1.0:
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
  height, width = frame.shape[:2]
  height, width = height - height % stride, width - width % stride
  if height == 0 or width == 0:
    raise BadVideo("zero-size frames", f"frames of {frame.shape[1]}x{frame.shape[0]} are "
                   f"smaller than the stride {stride}")
  return np.ascontiguousarray(frame[:height, :width, ::-1])


def label_video(path, settings):
  """Labels the sampled frames of one video.

  Args:
    path: video file.
    settings: `Settings`.

  Yields:
    (frame_index, frame uint8 [H, W, 3], mask bool [H/8, W/8], motion_labels.LabelStats).

  Raises:
    BadVideo: the video cannot be opened or decoded, is shorter than track_length + 1 frames,
      or has zero-size frames.
  """
  track = settings.labels.track_length
  wanted = [i * settings.clip_spacing for i in range(settings.frames_per_video)]
  last_needed = wanted[-1] + track
  capture = cv2.VideoCapture(path)
  try:
    if not capture.isOpened():
      raise BadVideo("unreadable", "OpenCV could not open it")
    window = collections.deque(maxlen=track + 1)
    index = -1
    wanted_set = set(wanted)
    while index < last_needed:
      ok, frame = capture.read()
      if not ok:
        break
      index += 1
      if frame is None or frame.size == 0:
        raise BadVideo("zero-size frames", f"frame {index} is empty")
      window.append(prepare_frame(frame, settings.max_side, settings.labels.stride))
      start = index - track
      if len(window) == track + 1 and start in wanted_set:
        frames = np.stack(window)
        _, small, stats = motion_labels.label_frame(frames, settings.labels)
        yield start, frames[0], small, stats
    if index < 0:
      raise BadVideo("unreadable", "no frame could be decoded")
    if index < track:
      raise BadVideo("shorter than the track length",
                     f"{index + 1} frames, labelling needs {track + 1}")
  finally:
    capture.release()


def shard_name(index, count):
  return f"{SHARD_PREFIX}-{index:05d}-of-{count:05d}"


def _write_json(path, value):
  files.write_atomically(path, lambda f: json.dump(value, f, indent=1, sort_keys=True))


_PROGRESS_QUEUE = None


def _init_worker(queue):
  global _PROGRESS_QUEUE
  _PROGRESS_QUEUE = queue
  # One OpenCV thread per process: the processes are the parallelism.
  cv2.setNumThreads(1)
  # The parent handles Ctrl-C and SIGTERM and stops the pool.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_shard(job):
  """Labels one shard's videos and writes its records and JSON (both atomically).

  Args:
    job: (output_dir, shard index, shard count, [(video path, video id)], Settings).

  Returns:
    The shard's summary dict (what its JSON holds).
  """
  # Imported here: worker processes pay for TensorFlow only when they write.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mtssl_tf.data import motion_records  # pylint: disable=g-import-not-at-top
  output_dir, index, count, videos, settings = job
  name = os.path.join(output_dir, shard_name(index, count))
  summary = {"shard": index, "videos": len(videos), "videos_labelled": 0, "frames": 0,
             "empty_masks": 0, "moving_fraction_sum": 0.0, "failed_flow_steps": 0,
             "skipped": {reason: [] for reason in SKIP_REASONS}}
  with files.atomic_path(f"{name}.tfrecord") as tmp, tf.io.TFRecordWriter(tmp) as writer:
    for path, video_id in videos:
      frames = 0
      try:
        for frame_index, frame, mask, stats in label_video(path, settings):
          writer.write(motion_records.make_example(frame, mask, video_id, frame_index,
                                                   settings.jpeg_quality))
          frames += 1
          summary["empty_masks"] += int(not mask.any())
          summary["moving_fraction_sum"] += float(mask.mean())
          summary["failed_flow_steps"] += stats.failed_steps
        summary["videos_labelled"] += 1
      except BadVideo as e:
        summary["skipped"][e.reason].append(f"{video_id}: {e}")
      except cv2.error as e:
        summary["skipped"]["unreadable"].append(f"{video_id}: OpenCV error {e}")
      summary["frames"] += frames
      if _PROGRESS_QUEUE is not None:
        _PROGRESS_QUEUE.put((1, frames))
  _write_json(f"{name}.json", summary)
  return summary


def _is_complete(output_dir, index, count):
  name = os.path.join(output_dir, shard_name(index, count))
  return os.path.exists(f"{name}.tfrecord") and os.path.exists(f"{name}.json")


class Progress:
  """A progress bar: videos done, frames labelled, frames/s, ETA; a line per interval."""

  def __init__(self, total_videos, interval=5.0, stream=sys.stderr):
    self.total = total_videos
    self.videos = 0
    self.frames = 0
    self.start = time.time()
    self.interval = interval
    self.last = 0.0
    self.stream = stream

  def update(self, videos, frames, force=False):
    self.videos += videos
    self.frames += frames
    now = time.time()
    if force or now - self.last >= self.interval:
      self.last = now
      self.stream.write(self.line() + "\n")
      self.stream.flush()

  def line(self):
    elapsed = max(time.time() - self.start, 1e-9)
    done = self.videos / self.total if self.total else 1.0
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    eta = elapsed / done - elapsed if done > 0 else float("nan")
    eta_text = progress.format_duration(eta)
    return (f"[{bar}] {self.videos}/{self.total} videos, {self.frames} frames, "
            f"{self.frames / elapsed:.1f} frames/s, ETA {eta_text}")


def _flatten(record, prefix=""):
  """{'a': {'b': 1}} -> {'a.b': 1}, so that a difference names the setting itself."""
  flat = {}
  for key, value in record.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _check_settings(output_dir, record, overwrite):
  """Refuses to mix shards made with other settings or videos; writes settings.json."""
  path = os.path.join(output_dir, "settings.json")
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      old = json.load(f)
    if old != record:
      old, new = _flatten(old), _flatten(record)
      differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise ValueError(
          f"{output_dir} holds shards made with other settings (differ: {differ}; see "
          f"{path}). Use another --output_dir, or --overwrite to delete them and start again.")
  if overwrite:
    for name in os.listdir(output_dir):
      if name.startswith(SHARD_PREFIX) or name in ("settings.json", "summary.json"):
        os.remove(os.path.join(output_dir, name))
  _write_json(path, record)


def prepare(videos, output_dir, settings, num_workers=1, videos_per_shard=16, overwrite=False,
            video_root=None, progress_interval=5.0):
  """Labels `videos` into shards in `output_dir`, skipping shards already complete.

  Args:
    videos: list of video paths.
    output_dir: where shards and JSON files go (created if missing).
    settings: `Settings`.
    num_workers: processes; 1 runs in this process.
    videos_per_shard: videos per shard.
    overwrite: delete what output_dir holds first.
    video_root: video ids are paths relative to this (default: the paths as given).
    progress_interval: seconds between progress lines.

  Returns:
    The summary dict (also written to summary.json).

  Raises:
    ValueError: for bad settings, no videos, or an output_dir made with other settings.
  """
  settings.check()
  if not videos:
    raise ValueError("No videos to label: check --videos or --video_list.")
  if videos_per_shard < 1:
    raise ValueError(f"--videos_per_shard={videos_per_shard} must be >= 1.")
  os.makedirs(output_dir, exist_ok=True)
  ids = [os.path.relpath(v, video_root) if video_root else v for v in videos]
  count = (len(videos) + videos_per_shard - 1) // videos_per_shard
  record = {"settings": json.loads(json.dumps(dataclasses.asdict(settings))),
            "videos_per_shard": videos_per_shard, "num_shards": count,
            "num_videos": len(videos),
            "video_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
  _check_settings(output_dir, record, overwrite)
  # Temporary files of a run that was stopped are never complete shards.
  for name in os.listdir(output_dir):
    if files.is_temporary(name, rf"{SHARD_PREFIX}-\d{{5}}-of-\d{{5}}\.tfrecord|.+\.json"):
      os.remove(os.path.join(output_dir, name))
  jobs = []
  for index in range(count):
    if _is_complete(output_dir, index, count):
      continue
    chunk = slice(index * videos_per_shard, (index + 1) * videos_per_shard)
    jobs.append((output_dir, index, count, list(zip(videos[chunk], ids[chunk])), settings))
  pending = sum(len(job[3]) for job in jobs)
  logging.info("%d videos in %d shards; %d shards (%d videos) to do.", len(videos), count,
               len(jobs), pending)
  progress = Progress(pending, interval=progress_interval)
  if num_workers <= 1 or len(jobs) <= 1:
    global _PROGRESS_QUEUE
    queue = collections.deque()

    class _Local:  # the queue interface process_shard uses, in this process
      put = queue.append

    _PROGRESS_QUEUE = _Local
    try:
      for job in jobs:
        process_shard(job)
        while queue:
          progress.update(*queue.popleft())
    finally:
      _PROGRESS_QUEUE = None
  else:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with context.Pool(min(num_workers, len(jobs)), initializer=_init_worker,
                      initargs=(queue,)) as pool:
      results = [pool.apply_async(process_shard, (job,)) for job in jobs]
      while not all(r.ready() for r in results):
        try:
          progress.update(*queue.get(timeout=0.5))
        except queue_lib.Empty:
          pass
      for r in results:
        r.get()  # re-raises a worker's exception
      while not queue.empty():
        progress.update(*queue.get())
  progress.update(0, 0, force=True)
  return write_summary(output_dir, count)


def write_summary(output_dir, count):
  """Adds up the shards' JSON files into summary.json; returns it."""
  total = {"shards": count, "shards_complete": 0, "videos": 0, "videos_labelled": 0,
           "frames": 0, "empty_masks": 0, "failed_flow_steps": 0,
           "skipped": {reason: [] for reason in SKIP_REASONS}}
  moving = 0.0
  for index in range(count):
    path = os.path.join(output_dir, shard_name(index, count) + ".json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      shard = json.load(f)
    total["shards_complete"] += 1
    for key in ("videos", "videos_labelled", "frames", "empty_masks", "failed_flow_steps"):
      total[key] += shard[key]
    moving += shard["moving_fraction_sum"]
    for reason in SKIP_REASONS:
      total["skipped"][reason].extend(shard["skipped"][reason])
  total["skipped_counts"] = {r: len(v) for r, v in total["skipped"].items()}
  total["mean_moving_fraction"] = moving / total["frames"] if total["frames"] else 0.0
  _write_json(os.path.join(output_dir, "summary.json"), total)
  return total


def define_flags():
  """The tool's flags (defined only when it runs as a program, so tests can import it)."""
  defaults = motion_labels.LabelConfig()
  flags.DEFINE_string("videos", None, "Folder of videos, searched recursively.")
  flags.DEFINE_string("video_list", None, "File listing video paths, one per line.")
  flags.DEFINE_string("output_dir", None, "Where the shards and summaries go.")
  flags.DEFINE_integer("frames_per_video", Settings.frames_per_video,
                       "Frames labelled per video (0, s, 2s, ...).")
  flags.DEFINE_integer("clip_spacing", Settings.clip_spacing,
                       "Frames between labelled frames of a video (s).")
  flags.DEFINE_integer("max_side", Settings.max_side,
                       "Frames are resized so their longer side is at most this.")
  flags.DEFINE_integer("jpeg_quality", Settings.jpeg_quality, "JPEG quality of stored frames.")
  flags.DEFINE_integer("num_workers", os.cpu_count(), "Processes.")
  flags.DEFINE_integer("videos_per_shard", 16, "Videos per output shard.")
  flags.DEFINE_bool("overwrite", False, "Delete the output_dir's shards and start again.")
  help_texts = {
      "track_length": "Frames tracked after the labelled one (the paper: 10).",
      "flow_method": "Dense optical flow: dis or farneback.",
      "grid_step": "Flow is sampled every this many pixels to fit the camera homography.",
      "ransac_threshold": "RANSAC inlier distance of the camera homography, px.",
      "forward_backward_threshold": "A track ends when the backward flow misses it by more "
                                    "than this, px (occlusion); 0 disables the check.",
      "residual_threshold": "Motion not explained by the camera above this (px per frame) "
                            "counts as moving in that step.",
      "min_moving_fraction": "A pixel moves when at least this fraction of its track's steps "
                             "are above residual_threshold.",
      "min_track_steps": "Tracks shorter than this (left the frame, occluded) never move.",
      "opening_size": "Side of the morphological opening that removes speckles; <2: none.",
      "min_component_fraction": "Moving regions smaller than this fraction of the frame are "
                                "dropped.",
      "max_hole_fraction": "Holes smaller than this fraction of the frame are filled.",
      "stride": "Downsampling of the stored masks (the paper: 8).",
  }
  for field in dataclasses.fields(motion_labels.LabelConfig):
    default = getattr(defaults, field.name)
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}[type(default)]
    define(field.name, default, help_texts[field.name])


def settings_from_flags(values):
  labels = motion_labels.LabelConfig(**{
      f.name: getattr(values, f.name) for f in dataclasses.fields(motion_labels.LabelConfig)})
  return Settings(frames_per_video=values.frames_per_video, clip_spacing=values.clip_spacing,
                  max_side=values.max_side, jpeg_quality=values.jpeg_quality, labels=labels)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  if not values.output_dir:
    raise app.UsageError("--output_dir is required.")
  if bool(values.videos) == bool(values.video_list):
    raise app.UsageError("Give exactly one of --videos (a folder) and --video_list (a file).")
  if values.videos:
    videos, root = find_videos(values.videos), values.videos
  else:
    videos, root = read_video_list(values.video_list), None
  # SIGTERM (a scheduler stopping the job) stops like Ctrl-C: finished shards stay.
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  try:
    summary = prepare(videos, values.output_dir, settings_from_flags(values),
                      num_workers=values.num_workers, videos_per_shard=values.videos_per_shard,
                      overwrite=values.overwrite, video_root=root)
  except KeyboardInterrupt:
    logging.warning("Stopped. Complete shards are kept; run the same command again to finish.")
    return 130
  logging.info("Done: %d of %d videos labelled, %d frames, skipped %s. Summary: %s",
               summary["videos_labelled"], summary["videos"], summary["frames"],
               summary["skipped_counts"], os.path.join(values.output_dir, "summary.json"))
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
