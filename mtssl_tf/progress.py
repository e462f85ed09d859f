"""Progress lines: durations (ETAs) that stay right past a day, task names that fit a console."""

import math

# Short task names for progress lines, as the paper's tables abbreviate them (RP, Col, Ex, MS).
SHORT_TASK_NAMES = {
    "relative_position": "rp",
    "colorization": "col",
    "exemplar": "ex",
    "motion_segmentation": "ms",
    "imagenet_labels": "in",
}


def format_duration(seconds):
  """A duration for a progress line: "07:05:03" below a day, "3d07h" from a day on, "?" when
  unknown (NaN, infinite or negative).

  `time.strftime("%H:%M:%S", time.gmtime(s))` wraps at 24 hours: a 30-hour ETA reads 06:00:00.
  """
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  if seconds < 86400:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
  return f"{seconds // 86400}d{seconds // 3600 % 24:02d}h"


def short_task_names(names):
  """{task: short name} for `names`: the paper's abbreviation, else the initials of its words
  ("video_order" -> "vo"); the full name wherever two would be the same."""
  short = {n: SHORT_TASK_NAMES.get(n, "".join(w[:1] for w in n.split("_"))) for n in names}
  clash = {s for s in short.values() if list(short.values()).count(s) > 1}
  return {n: (n if s in clash else s) for n, s in short.items()}
