"""Benchmarks, printed as JSON lines, each against a peer measured in the same run.

  python tools/benchmark.py                       # everything below
  python tools/benchmark.py --benchmarks=trunk --sizes=224 --steps=3
  python tools/benchmark.py --benchmarks=inputs --tasks=relative_position,exemplar

"trunk":

Trunk training step (forward, backward, RMSProp update) in images/s beside the same step for
`tf.keras.applications.ResNet101V2(weights=None, include_top=False)` cut at `conv4_block23_out`
(the same network up to block 3, written in Keras); and the trunk's achieved GFLOP/s beside the
best conv/matmul throughput this script measures on the machine in the same run. Measurements of
the trunk and its peer alternate in rounds and the median round is reported, so that a busy
machine slows both alike.

"inputs": each pretext task's input pipeline (`task.input_fn`) in examples/s on 1 and on 2
cores (tf.data's private thread pool), reading JPEGs of ImageNet's typical size (500x375) from
a folder (motion segmentation: TFRecords of 320x240 toy frames and masks, as
tools/prepare_motion_segmentation.py writes them), beside the same task's whole training step (trunk + head + loss + RMSProp, at its
default batch) in examples/s, measured in the same run. `input_over_step` above 1 means the
input keeps up with training. The pipeline is measured a second time from decoded images held
in memory, so that decoding and the task's own preprocessing can be told apart.

"training": the multi-task loop (`training.MultiTaskTrainer.train`: schedule, counters, loss checks,
summaries, accumulation) in steps/s against a bare loop calling the same compiled task steps in
the same order, on fixed batches with the small trunk and small inputs (where the loop's own
overhead shows most); and two MultiWorkerMirroredStrategy workers on 127.0.0.1 (two processes)
against one, in examples/s at the same per-worker batch.

"evals": for each evaluation (`--evals`: ImageNet linear probe 224x224, batch 8, stride 32; NYU
depth 240x320, batch 4, stride 16; VOC detection 512x512, batch 2, stride 16), in images/s:
its inference (the PREDICT pass) beside the bare trunk's forward pass on the same images at the
same stride, and its training step as `mtssl_tf/evaluation.py` takes it (model_fn's TRAIN loss,
plus the trunk's weight decay where the trunk is fine-tuned; gradients over the head's variables,
and the trunk's only where the evaluation fine-tunes it; SGD with momentum) beside a bare trunk
training step (forward at that stride, backward, RMSProp) on the same images. The probe and depth
get random images with constant labels; detection gets a batch of its toy scenes, drawn at its
input size, through its own parser (image_info, anchor targets, ground truth). The four
measurements alternate in rounds and the median round is kept.

"motion_labels": motion segmentation label extraction (`motion_labels.label_frame`, defaults:
10 tracked steps, forward and backward DIS flow) in labelled frames/s in one process at
320x240, beside the bare optical flow it is built on: the 20 flow fields one label needs,
timed alone in the same run.

"precision" (`tools/accelerator_benchmark.py`; the default with `--device=gpu`): the trunk's
training step and each task's training step (through the real loop) per `--modes` (float32,
mixed_bfloat16, mixed_bfloat16+xla by default) in images/s, with achieved TFLOP/s and the
fraction of the chip's peak, beside each task's input pipeline on all CPU cores.

  python tools/benchmark.py --device=gpu                 # on a GPU machine (tools/gpu_check.sh)
  python tools/benchmark.py --benchmarks=precision --depth=26 --precision_size=64 \
      --precision_batch_size=4 --task_gin="Trunk.depth = 26" ...        # the same code on a CPU

Not a test: nothing here asserts.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtssl_tf import evaluation as evaluation_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf import heads  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf import input_convention  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf import trunk as trunk_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import motion_labels  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import motion_records  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.data import toy  # pylint: disable=g-import-not-at-top,wrong-import-position
from mtssl_tf.tasks import base  # pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accelerator_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list("benchmarks", ["trunk", "inputs", "motion_labels", "training", "evals"],
                  "Which benchmarks to run.")
flags.DEFINE_integer("training_steps", 60, "Timed steps of the 'training' benchmark.")
flags.DEFINE_list("evals", ["imagenet_linear", "nyu_depth", "voc_detection"],
                  "Evaluations the 'evals' benchmark measures.")
flags.DEFINE_string("worker_output", None, "Internal: a 'training' worker writes here.")
flags.DEFINE_list("tasks", ["relative_position", "colorization", "exemplar", "motion_segmentation"],
                  "Tasks whose input pipelines the 'inputs' benchmark measures.")
flags.DEFINE_list("input_cores", ["1", "2"], "tf.data thread pool sizes to measure.")
flags.DEFINE_float("input_seconds", 8.0, "Seconds of input pipeline timing per setting.")
flags.DEFINE_integer("task_depth", 101, "Trunk depth in 'inputs' (task steps) and 'evals'.")
flags.DEFINE_list("sizes", ["96", "224"], "Square input sizes.")
flags.DEFINE_integer("batch_size", 8, "Images per training step.")
flags.DEFINE_integer("steps", 3, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds of trunk and peer; the median is kept.")
flags.DEFINE_integer("depth", 101, "Trunk depth.")
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "gpu: require a GPU, and run the 'precision' "
                  "benchmark with the paper's sizes unless --benchmarks says otherwise.")
flags.DEFINE_list("modes", ["float32", "mixed_bfloat16", "mixed_bfloat16+xla"],
                  "'precision': precisions, each optionally '+xla'.")
flags.DEFINE_integer("precision_size", 224, "'precision': the trunk step's image side.")
flags.DEFINE_integer("precision_batch_size", None, "'precision': the trunk step's batch "
                     "(default 128 on a GPU, --batch_size on a CPU).")
flags.DEFINE_list("precision_tasks", ["relative_position", "colorization", "exemplar",
                                      "motion_segmentation"],
                  "'precision': tasks whose training step is measured (empty: none).")
flags.DEFINE_multi_string("task_gin", [], "'precision': gin bindings for the task steps (e.g. "
                          "smaller batches and crops on a CPU).")
flags.DEFINE_string("output", None, "Also append every JSON line to this file.")


def emit(**record):
  line = json.dumps(record)
  print(line, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "a") as f:
      f.write(line + "\n")


def forward_flops(fn, spec):
  """FLOPs of one call of `fn` on `spec`, counted by TF's profiler on the traced graph."""
  # pylint: disable=g-direct-tensorflow-import
  from tensorflow.python.profiler import model_analyzer
  from tensorflow.python.profiler import option_builder
  graph = tf.function(fn).get_concrete_function(spec).graph
  opts = option_builder.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  return model_analyzer.profile(graph, options=opts).total_float_ops


def make_train_step(forward, variables):
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=1e-4)
  optimizer.build(variables)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(forward(images)))
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return loss

  return step


def time_steps(step, images, steps):
  step(images).numpy()  # trace and warm up
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(images)
  loss.numpy()
  return (time.perf_counter() - start) / steps


def measure_peak(seconds=3.0):
  """Best GFLOP/s of a large matmul and of a ResNet-like 3x3 conv on this machine."""
  results = {}
  a = tf.random.normal([2048, 2048])
  matmul = tf.function(lambda x: tf.matmul(x, x))
  x = tf.random.normal([8, 28, 28, 256])
  w = tf.random.normal([3, 3, 256, 256])
  conv = tf.function(lambda x: tf.nn.conv2d(x, w, 1, "SAME"))
  for name, fn, arg, flops in [
      ("matmul_2048", matmul, a, 2 * 2048**3),
      ("conv3x3_256_28x28_b8", conv, x, 2 * 8 * 28 * 28 * 256 * 256 * 9),
  ]:
    fn(arg).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      fn(arg).numpy()
      count += 1
    results[name] = flops * count / (time.perf_counter() - start) / 1e9
  return results


def keras_peer(size):
  base = tf.keras.applications.ResNet101V2(
      weights=None, include_top=False, input_shape=(size, size, 3))
  return tf.keras.Model(base.input, base.get_layer("conv4_block23_out").output)


def write_jpegs(folder, count=128, size=(375, 500)):
  """Toy images of ImageNet's typical size, JPEG-encoded as ImageNet's are."""
  for i, image in enumerate(toy.make_toy_images(count, size, seed=0)):
    tf.io.write_file(os.path.join(folder, f"{i:04d}.jpg"), tf.io.encode_jpeg(image, quality=90))


def input_examples_per_s(dataset, batch_size, cores, seconds):
  """Examples/s of a batched dataset restricted to `cores` threads."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  iterator = iter(dataset.with_options(options))
  for _ in range(2):  # warm up: autotuning, prefetch buffers
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += batch_size
  return count / (time.perf_counter() - start)


def task_step_examples_per_s(task, features, steps):
  """Examples/s of a task's whole training step on one fixed batch."""
  spec = task.model_fn(features, heads.Mode.TRAIN)  # makes the head's variables
  variables = task.trunk.trainable_variables + task.head_variables
  optimizer = tf.keras.optimizers.RMSprop(learning_rate=1e-4)
  optimizer.build(variables)

  @tf.function
  def step(features):
    with tf.GradientTape() as tape:
      loss = task.model_fn(features, heads.Mode.TRAIN).loss + task.trunk.regularization_loss()
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  del spec
  seconds = time_steps(step, features, steps)
  return task.batch_size / seconds


def write_motion_records(folder, clips=8, frames_per_clip=4):
  """Toy 320x240 frames and masks in the format of tools/prepare_motion_segmentation.py."""
  from mtssl_tf.data import toy_video  # pylint: disable=g-import-not-at-top
  examples = toy_video.toy_motion_examples(num_clips=clips, frames_per_clip=frames_per_clip,
                                           size=(240, 320), seed=0)
  path = os.path.join(folder, "motion_seg-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(len(examples["image"])):
      writer.write(motion_records.make_example(
          examples["image"][i], examples["mask"][i], str(examples["video_id"][i]),
          int(examples["frame_index"][i])))
  return path


def benchmark_inputs():
  folder = tempfile.mkdtemp(prefix="mtssl_benchmark_data_")
  write_jpegs(folder)
  motion_path = write_motion_records(folder)
  image_sources = {
      False: lambda ctx: sources.image_dataset(source="folder", pattern=folder,
                                               input_context=ctx),
      True: lambda ctx: sources.image_dataset(source="folder", pattern=folder,
                                              input_context=ctx).cache(),
  }
  motion_sources = {
      False: lambda ctx: motion_records.motion_dataset(source="tfrecord", pattern=motion_path,
                                                       input_context=ctx),
      True: lambda ctx: motion_records.motion_dataset(source="tfrecord", pattern=motion_path,
                                                      input_context=ctx).cache(),
  }
  for name in FLAGS.tasks:
    trunk = trunk_lib.Trunk(depth=FLAGS.task_depth)
    task_sources = motion_sources if name == "motion_segmentation" else image_sources
    from_files, decoded = task_sources[False], task_sources[True]
    task = base.get(name)(trunk, source_fn=from_files)
    record = dict(benchmark="task_input", task=name, batch_size=task.batch_size,
                  image_size=[240, 320] if name == "motion_segmentation" else [375, 500],
                  cpus=os.cpu_count())
    for cores in map(int, FLAGS.input_cores):
      record[f"input_examples_per_s_{cores}_cores"] = round(input_examples_per_s(
          task.input_fn(), task.batch_size, cores, FLAGS.input_seconds), 1)
      task.source_fn = decoded
      record[f"input_examples_per_s_{cores}_cores_predecoded"] = round(input_examples_per_s(
          task.input_fn(), task.batch_size, cores, FLAGS.input_seconds), 1)
      task.source_fn = from_files
    features = next(iter(task.input_fn()))
    step = task_step_examples_per_s(task, features, FLAGS.steps)
    record.update(depth=FLAGS.task_depth, step_examples_per_s=round(step, 2))
    for cores in map(int, FLAGS.input_cores):
      record[f"input_over_step_{cores}_cores"] = round(
          record[f"input_examples_per_s_{cores}_cores"] / step, 2)
    emit(**record)


def benchmark_motion_labels():
  from mtssl_tf.data import toy_video  # pylint: disable=g-import-not-at-top
  config = motion_labels.LabelConfig()
  clip = toy_video.make_clip(num_frames=config.track_length + 1, size=(240, 320), seed=0)
  grays = [cv2_gray(f) for f in clip.frames]

  def label():
    motion_labels.label_frame(clip.frames, config)

  def flows_only():
    for k in range(config.track_length):
      motion_labels.dense_flow(grays[k], grays[k + 1], config.flow_method)
      motion_labels.dense_flow(grays[k + 1], grays[k], config.flow_method)

  label_t, flow_t = [], []
  for _ in range(FLAGS.rounds):
    label_t.append(_seconds(label, FLAGS.steps))
    flow_t.append(_seconds(flows_only, FLAGS.steps))
  label_s, flow_s = statistics.median(label_t), statistics.median(flow_t)
  emit(benchmark="motion_labels", size=[240, 320], track_length=config.track_length,
       flow_method=config.flow_method, labelled_frames_per_s_per_process=round(1 / label_s, 2),
       flow_only_frames_per_s=round(1 / flow_s, 2),
       flow_share_of_label_time=round(flow_s / label_s, 3))


def cv2_gray(frame):
  import cv2  # pylint: disable=g-import-not-at-top
  return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _seconds(fn, repeats):
  fn()  # warm up
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


# The 'training' benchmark's configuration: small trunk, small inputs, toy data.
_TRAINING_BINDINGS = [
    "Trunk.depth = 26", "image_dataset.source = 'toy'", "image_dataset.num_toy_images = 32",
    "image_dataset.toy_size = (64, 72)", "relative_position.patch_size = 32",
    "relative_position.preprocess.gap = 4", "relative_position.preprocess.jitter = 2",
    "relative_position.batch_size = 8", "relative_position.fc_width = 64",
    "exemplar.patch_size = 32", "exemplar.batch_size = 8", "exemplar.head_width = 64",
    "exemplar/TaskSettings.accumulation_steps = 2", "MultiTaskTrainer.checkpoint_every_secs = None",
    "MultiTaskTrainer.log_every_secs = 1000", "MultiTaskTrainer.summary_every_steps = 20",
    "MultiTaskTrainer.tasks = ['relative_position', 'exemplar']",
]


def _fixed_input_fns(tasks):
  fns = {}
  for name, task in tasks.items():
    batch = next(iter(task.input_fn()))
    fns[name] = (lambda b: lambda ctx: tf.data.Dataset.from_tensors(b).repeat())(batch)
  return fns


def benchmark_training():
  import gin  # pylint: disable=g-import-not-at-top
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  common.parse_gin([], _TRAINING_BINDINGS)
  workdir = tempfile.mkdtemp(prefix="mtssl_benchmark_training_")
  probe = training.MultiTaskTrainer(os.path.join(workdir, "probe"))
  trainer = training.MultiTaskTrainer(os.path.join(workdir, "run"),
                             input_fns=_fixed_input_fns(probe.tasks))
  steps = FLAGS.training_steps
  trainer.train(num_steps=8)  # traces every (task, apply) step function
  order = []
  counts = [int(trainer.task_steps[n].numpy()) for n in trainer.names]
  weights = [trainer.settings[n].weight for n in trainer.names]
  for _ in range(steps):
    i = training.next_task(counts, weights)
    counts[i] += 1
    name = trainer.names[i]
    order.append((name, counts[i] % trainer.settings[name].accumulation_steps == 0))

  def bare():
    for name, apply in order:
      loss, _, _ = trainer._step_fn(name, apply)(trainer._iterators[name])  # pylint: disable=protected-access
    loss.numpy()

  loop_t, bare_t = [], []
  for _ in range(FLAGS.rounds):
    start = time.perf_counter()
    trainer.train(num_steps=int(trainer.global_step.numpy()) + steps, save_at_end=False)
    loop_t.append(time.perf_counter() - start)
    bare_t.append(_timed(bare))
  loop_s, bare_s = statistics.median(loop_t), statistics.median(bare_t)
  emit(benchmark="training_loop", tasks=trainer.names, steps=steps,
       loop_steps_per_s=round(steps / loop_s, 2), bare_steps_per_s=round(steps / bare_s, 2),
       ratio_loop_over_bare=round(bare_s / loop_s, 3),
       overhead_percent=round(100 * (loop_s - bare_s) / bare_s, 2))
  gin.clear_config()
  _benchmark_workers(workdir)


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _benchmark_workers(workdir):
  """Two loopback workers against one, as subprocesses of this script."""
  import json as json_lib  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  results = {}
  for num_workers in (1, 2):
    sockets = [socket.socket() for _ in range(num_workers)]
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
      s.close()
    processes, outputs = [], []
    for index in range(num_workers):
      output = os.path.join(workdir, f"workers{num_workers}_{index}.json")
      outputs.append(output)
      env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                 TF_CONFIG=json_lib.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}}))
      processes.append(subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "--benchmarks=",
           f"--worker_output={output}", f"--training_steps={FLAGS.training_steps}"],
          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for process in processes:
      _, err = process.communicate(timeout=1800)
      if process.returncode:
        raise RuntimeError(f"benchmark worker failed: {err[-2000:]}")
    with open(outputs[0]) as f:
      results[num_workers] = json_lib.load(f)
  one, two = results[1]["examples_per_s"], results[2]["examples_per_s"]
  emit(benchmark="training_workers", cpus=os.cpu_count(), one_worker_examples_per_s=one,
       two_workers_examples_per_s=two, ratio_two_over_one=round(two / one, 3),
       note="same per-worker batch; on one machine the two workers share its cores")


def _run_worker(output):
  """A 'training' worker: MultiWorkerMirroredStrategy from TF_CONFIG; writes examples/s."""
  import gin  # pylint: disable=g-import-not-at-top
  from mtssl_tf import training  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  workers = strategy.num_replicas_in_sync
  common.parse_gin([], _TRAINING_BINDINGS + [
      f"relative_position.batch_size = {8 * workers}", f"exemplar.batch_size = {8 * workers}"])
  trainer = training.MultiTaskTrainer(tempfile.mkdtemp(prefix="mtssl_benchmark_worker_"),
                             strategy=strategy)
  trainer.train(num_steps=8)
  start = time.perf_counter()
  trainer.train(num_steps=8 + FLAGS.training_steps, save_at_end=False)
  seconds = time.perf_counter() - start
  del gin
  with open(output, "w") as f:
    json.dump({"examples_per_s": round(8 * workers * FLAGS.training_steps / seconds, 2),
               "workers": workers}, f)


# Per evaluation: (height, width) of its network input and its batch in the 'evals' benchmark.
_EVAL_SIZES = {"imagenet_linear": ((224, 224), 8), "nyu_depth": ((240, 320), 4),
               "voc_detection": ((512, 512), 2)}


def _eval_features(name, trunk, height, width, batch):
  """(evaluation, training batch, PREDICT batch, input description) for the 'evals' benchmark.

  The linear probe and depth take random images with constant labels. Detection's features
  (image_info, anchor targets, ground truth) come from its own parser: a `VocDetection` on its
  toy scenes (drawn at the input size, a few of them) at output_size (height, width).
  """
  from mtssl_tf.evals import base as evals_base  # pylint: disable=g-import-not-at-top
  if name == "voc_detection":
    # pylint: disable=g-import-not-at-top
    from mtssl_tf.data import toy_detection
    from mtssl_tf.evals import voc_detection
    evaluation = voc_detection.VocDetection(
        trunk, dataset="toy", batch_size=batch, min_size=min(height, width),
        max_size=max(height, width), padded_size=(height, width), shuffle_buffer=batch)
    # A few scenes are enough; the default 256 + 64 at 512x512 take ~25 s to draw.
    evaluation.toy_data = lambda training: toy_detection.make_scenes(
        num_scenes=2 * batch, size=(height, width), num_classes=evaluation.num_classes,
        seed=0 if training else 1)
    train = next(iter(evaluation.input_fn(None, split="train")))
    test = next(iter(evaluation.input_fn(None, split=evaluation.eval_split)))
    return evaluation, train, test, "toy scenes through its parser"
  # On the toy set (nothing to download); the batches timed are random images.
  evaluation = evals_base.get(name)(trunk, dataset="toy", batch_size=batch)
  images = input_convention.to_trunk_input(
      tf.random.uniform([batch, height, width, 3], 0, 255, seed=0))
  features = {f"{name}/image": images}
  if name == "imagenet_linear":
    evaluation.num_classes = 1000
    features["imagenet_linear/label"] = tf.zeros([batch], tf.int32)
  elif name == "nyu_depth":
    features["nyu_depth/depth"] = tf.ones([batch, height, width])
    features["nyu_depth/valid"] = tf.ones([batch, height, width], tf.bool)
  return evaluation, features, features, "random images, constant labels"


def benchmark_evals():
  unknown = set(FLAGS.evals) - set(_EVAL_SIZES)
  if unknown:
    raise app.UsageError(f"--evals: unknown {sorted(unknown)}; choose {sorted(_EVAL_SIZES)}.")
  for name in FLAGS.evals:
    _benchmark_eval(name)


def _benchmark_eval(name):
  """One evaluation's PREDICT pass and training step beside the bare trunk's; emits a record."""
  (height, width), batch = _EVAL_SIZES[name]
  trunk = trunk_lib.Trunk(depth=FLAGS.task_depth)
  evaluation, train_features, features, source = _eval_features(name, trunk, height, width,
                                                                 batch)
  images, train_images = features[f"{name}/image"], train_features[f"{name}/image"]
  stride = evaluation.output_stride
  # The evaluation loop's own step (SGD on its protocol's schedule, weight decay, lasso).
  evaluator = evaluation_lib.Evaluator(name, init="random", trunk=trunk, evaluation=evaluation)
  forward = tf.function(lambda x: trunk(x, training=False, output_stride=stride)["block3"])
  trunk_step = make_train_step(
      lambda x: trunk(x, training=True, output_stride=stride)["block3"],
      trunk.trainable_variables)
  measured = {
      "predict": lambda: tf.nest.map_structure(lambda t: t.numpy(), evaluator.predict(features)),
      "forward": lambda: forward(images).numpy(),
      "eval_train": lambda: evaluator.train_step(train_features)[0].numpy(),
      "trunk_train": lambda: trunk_step(train_images).numpy(),
  }
  rounds = {k: [] for k in measured}
  for _ in range(FLAGS.rounds):
    for k, fn in measured.items():
      rounds[k].append(_seconds(fn, FLAGS.steps))
  seconds = {k: statistics.median(v) for k, v in rounds.items()}
  emit(benchmark="eval", evaluation=name, depth=FLAGS.task_depth, size=[height, width],
       batch_size=batch, output_stride=stride, input=source,
       eval_images_per_s=round(batch / seconds["predict"], 2),
       trunk_forward_images_per_s=round(batch / seconds["forward"], 2),
       ratio_eval_over_trunk=round(seconds["forward"] / seconds["predict"], 3),
       eval_trains_trunk=evaluation.fine_tunes_trunk,
       eval_train_images_per_s=round(batch / seconds["eval_train"], 2),
       trunk_train_images_per_s=round(batch / seconds["trunk_train"], 2),
       ratio_eval_train_over_trunk_train=round(seconds["trunk_train"] / seconds["eval_train"],
                                               3),
       round_s={k: [round(t, 3) for t in v] for k, v in rounds.items()})


def main(argv):
  del argv
  if FLAGS.worker_output:
    _run_worker(FLAGS.worker_output)
    return
  gpus = tf.config.list_physical_devices("GPU")
  emit(benchmark="machine", tensorflow=tf.__version__, cpus=os.cpu_count(), gpus=len(gpus),
       built_with_cuda=tf.test.is_built_with_cuda(),
       device=accelerator_benchmark.device_description()[0])
  benchmarks = FLAGS.benchmarks
  if FLAGS.device == "gpu":
    if not gpus:
      raise app.UsageError(
          "--device=gpu, but TensorFlow sees no GPU (built with CUDA: "
          f"{tf.test.is_built_with_cuda()}). Install tensorflow[and-cuda]=={tf.__version__} "
          "(tools/gpu_check.sh does) and check nvidia-smi.")
    if not FLAGS["benchmarks"].present:
      benchmarks = ["precision"]
  known = {"trunk", "inputs", "motion_labels", "training", "evals", "precision"}
  unknown = set(benchmarks) - known
  if unknown:
    raise app.UsageError(f"--benchmarks: unknown {sorted(unknown)}; choose from "
                         f"{sorted(known)}.")
  if "precision" in benchmarks:
    benchmark_precision(gpu=bool(gpus))
  if "evals" in benchmarks:
    benchmark_evals()
  if "training" in benchmarks:
    benchmark_training()
  if "motion_labels" in benchmarks:
    benchmark_motion_labels()
  if "inputs" in benchmarks:
    benchmark_inputs()
  if "trunk" in benchmarks:
    benchmark_trunk()


def benchmark_precision(gpu):
  """The trunk's and each task's step per precision mode (tools/accelerator_benchmark.py)."""
  import gin  # pylint: disable=g-import-not-at-top
  from mtssl_tf.bin import common  # pylint: disable=g-import-not-at-top
  batch = FLAGS.precision_batch_size or (128 if gpu else FLAGS.batch_size)
  accelerator_benchmark.benchmark_trunk_precision(
      FLAGS.modes, FLAGS.depth, FLAGS.precision_size, batch, FLAGS.steps, FLAGS.rounds, emit)
  if not FLAGS.precision_tasks:
    return
  gin.clear_config()
  common.parse_gin(["trunk/resnet_v2_101.gin"] + [f"tasks/{t}.gin" for t in FLAGS.precision_tasks],
                   [f"Trunk.depth = {FLAGS.depth}"] + FLAGS.task_gin)

  def make_sources():
    folder = tempfile.mkdtemp(prefix="mtssl_benchmark_data_")
    write_jpegs(folder)
    motion_path = write_motion_records(folder)
    return (lambda ctx: sources.image_dataset(source="folder", pattern=folder,
                                              input_context=ctx),
            lambda ctx: motion_records.motion_dataset(source="tfrecord", pattern=motion_path,
                                                      input_context=ctx))

  accelerator_benchmark.benchmark_task_precision(
      FLAGS.modes, FLAGS.precision_tasks, FLAGS.steps, FLAGS.input_seconds, emit, make_sources,
      input_examples_per_s)
  gin.clear_config()


def benchmark_trunk():
  peak = measure_peak()
  peak_gflops = max(peak.values())
  emit(benchmark="peak", **{f"{k}_gflops": round(v, 1) for k, v in peak.items()})
  for size in map(int, FLAGS.sizes):
    trunk = trunk_lib.Trunk(depth=FLAGS.depth)
    spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    ours_fwd = lambda x: trunk(x, training=True)["block3"]  # pylint: disable=cell-var-from-loop
    trunk(tf.zeros([1, size, size, 3]))
    flops_per_image = forward_flops(lambda x: trunk(x, training=False)["block3"], spec)  # pylint: disable=cell-var-from-loop
    peer = keras_peer(size)
    peer_fwd = lambda x: peer(x, training=True)  # pylint: disable=cell-var-from-loop
    images = input_convention.to_trunk_input(
        tf.random.uniform([FLAGS.batch_size, size, size, 3], 0, 255))
    ours_step = make_train_step(ours_fwd, trunk.trainable_variables)
    peer_step = make_train_step(peer_fwd, peer.trainable_variables)
    ours_t, peer_t = [], []
    for _ in range(FLAGS.rounds):
      ours_t.append(time_steps(ours_step, images, FLAGS.steps))
      peer_t.append(time_steps(peer_step, images, FLAGS.steps))
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    ours_ips, peer_ips = FLAGS.batch_size / ours_s, FLAGS.batch_size / peer_s
    # A training step costs about 3x the forward pass (forward, grad wrt inputs, grad wrt weights).
    achieved = 3 * flops_per_image * FLAGS.batch_size / ours_s / 1e9
    emit(benchmark="trunk_train_step", size=size, batch_size=FLAGS.batch_size,
         depth=FLAGS.depth, trunk_images_per_s=round(ours_ips, 2),
         keras_resnet101v2_block3_images_per_s=round(peer_ips, 2),
         ratio_trunk_over_keras=round(ours_ips / peer_ips, 3),
         forward_gflops_per_image=round(flops_per_image / 1e9, 2),
         trunk_achieved_gflops=round(achieved, 1), peak_gflops=round(peak_gflops, 1),
         fraction_of_peak=round(achieved / peak_gflops, 3),
         trunk_trainable_params=trunk_lib.count_parameters(trunk.trainable_variables),
         keras_trainable_params=trunk_lib.count_parameters(peer.trainable_variables),
         trunk_round_s=[round(t, 3) for t in ours_t], keras_round_s=[round(t, 3) for t in peer_t])


if __name__ == "__main__":
  app.run(main)
