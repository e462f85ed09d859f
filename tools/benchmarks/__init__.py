"""The benchmarks of tools/benchmark.py, one module each, every one against a peer in the same run.

  common.py          flags and helpers they share: JSON lines, timing in alternating rounds,
                     FLOP counts, toy JPEG folders and motion TFRecords
  trunk.py           "trunk": the trunk's training step beside Keras' ResNet101V2 to block 3
  inputs.py          "inputs": each task's input pipeline beside its training step
  motion_labels.py   "motion_labels": motion segmentation labels beside their optical flow
  training.py        "training": the multi-task loop beside its bare steps; 2 workers beside 1
  evals.py           "evals": each evaluation's inference and training step beside the trunk's
  precision.py       "precision": trunk and task steps per precision and XLA, beside the chip

Each module defines its own flags and a `run_from_flags(emit)`; its measuring functions take
plain arguments (tests call them with tiny sizes).
"""
