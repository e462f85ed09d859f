"""The "motion_labels" benchmark: motion segmentation labels beside the optical flow they need.

Label extraction (`motion_labels.label_frame`, defaults: 10 tracked steps, forward and backward
DIS flow: the paper's section 2 labels frames from 10 tracked frames) in labelled frames/s in
one process at 320x240, beside the bare optical flow it is built on: the 20 flow fields one label
needs, timed alone in the same run.
"""

from absl import flags
import cv2

from benchmarks import common
from mtssl_tf.data import motion_labels
from mtssl_tf.data import toy_video


def run(emit, steps, rounds, size=(240, 320)):
  """Emits one "motion_labels" record."""
  config = motion_labels.LabelConfig()
  clip = toy_video.make_clip(num_frames=config.track_length + 1, size=size, seed=0)
  grays = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip.frames]

  def flows_only():
    for k in range(config.track_length):
      motion_labels.dense_flow(grays[k], grays[k + 1], config.flow_method)
      motion_labels.dense_flow(grays[k + 1], grays[k], config.flow_method)

  seconds, _ = common.alternate(
      {"label": lambda: motion_labels.label_frame(clip.frames, config), "flow": flows_only},
      rounds, steps)
  emit(benchmark="motion_labels", size=list(size), track_length=config.track_length,
       flow_method=config.flow_method,
       labelled_frames_per_s_per_process=round(1 / seconds["label"], 2),
       flow_only_frames_per_s=round(1 / seconds["flow"], 2),
       flow_share_of_label_time=round(seconds["flow"] / seconds["label"], 3))


def run_from_flags(emit, values=flags.FLAGS):
  """Runs with the shared --steps and --rounds (common.define_flags); no flags of its own."""
  run(emit, values.steps, values.rounds)
