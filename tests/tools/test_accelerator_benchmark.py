"""The precision benchmark's pieces (tools/benchmarks/precision.py) run on a CPU: modes, peaks,
and one tiny measurement."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from benchmarks import precision as ab  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_modes_and_datasheet_peaks():
  assert ab.parse_mode("float32") == ("float32", False)
  assert ab.parse_mode("mixed_bfloat16+xla") == ("mixed_bfloat16", True)
  with pytest.raises(ValueError, match="Unknown mode 'bfloat16'"):
    ab.parse_mode("bfloat16")
  with pytest.raises(ValueError, match="Unknown mode"):
    ab.parse_mode("float32+tensorrt")
  assert ab.datasheet_peak("NVIDIA H100 80GB HBM3", "mixed_bfloat16") == 989.0
  assert ab.datasheet_peak("NVIDIA H200", "float32") == 494.0  # TF32
  assert ab.datasheet_peak("Some New GPU", "mixed_bfloat16") is None


def test_trunk_measurement_in_two_modes_on_the_cpu():
  records = []
  ab.benchmark_trunk_precision(["float32", "mixed_bfloat16+xla"], depth=26, size=32,
                               batch_size=2, steps=1, rounds=1,
                               emit=lambda **r: records.append(r))
  assert [(r["precision"], r["xla"]) for r in records] == [("float32", False),
                                                           ("mixed_bfloat16", True)]
  for record in records:
    assert record["device"] == "CPU" and record["datasheet_peak_tflops"] is None
    assert record["images_per_s"] > 0 and record["matmul_peer_tflops"] > 0
    # The profiler's count for depth 26 at 32x32: the same network in both precisions.
    assert record["forward_gflops_per_image"] == records[0]["forward_gflops_per_image"] > 0
    # (forward_gflops_per_image and images_per_s are rounded to 2 decimals.)
    assert record["achieved_tflops"] == pytest.approx(
        3 * record["forward_gflops_per_image"] * record["images_per_s"] / 1e3, rel=0.05)
