"""tools/benchmark.py and its benchmarks (tools/benchmarks/): flags, one small run, public API."""

import ast
import glob
import json
import os
import sys

from absl import app
from absl import flags
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOOLS = os.path.join(_ROOT, "tools")
sys.path.insert(0, _TOOLS)
# pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark
from benchmarks import common
from benchmarks import motion_labels
# pylint: enable=g-import-not-at-top,wrong-import-position

MODULES = ["common", "evals", "inputs", "motion_labels", "precision", "training", "trunk"]


def test_each_benchmark_is_a_module_and_the_entry_point_lists_every_flag():
  assert sorted(os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(_TOOLS, "benchmarks", "[!_]*.py"))) == MODULES
  assert sorted(benchmark.BENCHMARKS) == sorted(set(MODULES) - {"common"})
  values = flags.FlagValues()
  benchmark.define_flags(values)
  # --help prints the main module's key flags: every benchmark's flags are among them.
  listed = {flag.name for flag in values.get_key_flags_for_module(benchmark)}
  for module in [common, *benchmark.BENCHMARKS.values()]:
    own = {flag.name for flag in values.get_flags_for_module(module)}
    assert own <= listed, module.__name__
  for name in ["sizes", "tasks", "training_steps", "evals", "modes", "steps", "output"]:
    assert name in listed and values[name].help, name


def test_the_entry_point_checks_which_benchmarks_to_run():
  def parse(*args):
    values = flags.FlagValues()
    benchmark.define_flags(values)
    values(["benchmark", *args])
    return values

  # In the order they run, whatever the order given.
  assert benchmark.selected([], parse("--benchmarks=trunk,evals")) == ["evals", "trunk"]
  assert benchmark.selected([], parse()) == ["evals", "training", "motion_labels", "inputs",
                                             "trunk"]
  with pytest.raises(app.UsageError, match=r"--benchmarks: unknown \['speed'\]"):
    benchmark.selected([], parse("--benchmarks=trunk,speed"))
  with pytest.raises(app.UsageError, match="--device=gpu, but TensorFlow sees no GPU"):
    benchmark.selected([], parse("--device=gpu"))
  assert benchmark.selected(["a GPU"], parse("--device=gpu")) == ["precision"]
  assert benchmark.selected(["a GPU"], parse("--device=gpu", "--benchmarks=trunk")) == ["trunk"]


def test_motion_labels_at_the_smallest_size_against_its_flow():
  records = []
  motion_labels.run(lambda **r: records.append(r), steps=1, rounds=1, size=(48, 64))
  [record] = records
  assert record["benchmark"] == "motion_labels" and record["size"] == [48, 64]
  label_s = 1 / record["labelled_frames_per_s_per_process"]
  flow_s = 1 / record["flow_only_frames_per_s"]
  # The share is the flows' time over the label's. Not bounded by 1 here: one timed step each,
  # on a machine shared with the other test worker, can time the flows alone slower than a
  # whole label (1.42 seen); the benchmark's rounds, not a unit test, measure the share.
  assert record["flow_share_of_label_time"] > 0
  assert record["flow_share_of_label_time"] == pytest.approx(flow_s / label_s, rel=0.05, abs=0.01)


def test_the_entry_point_runs_a_benchmark_and_writes_json_lines(tmp_path, capsys):
  output = tmp_path / "benchmark.jsonl"
  values = flags.FlagValues()
  benchmark.define_flags(values)
  values(["benchmark", "--benchmarks=motion_labels", "--steps=1", "--rounds=1",
          f"--output={output}"])
  benchmark.run(values, common.json_emitter(values.output))
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["benchmark"] for r in printed] == ["machine", "motion_labels"]
  assert [json.loads(line) for line in output.read_text().splitlines()] == printed
  assert printed[1]["size"] == [240, 320] and printed[1]["track_length"] == 10


def protected_accesses(paths):
  """'path:line: text' of each `x._name` (x not self or cls) and protected-access pragma."""
  found = []
  for path in paths:
    with open(path) as f:
      source = f.read()
    lines = source.splitlines()
    for number, line in enumerate(lines, 1):
      if "protected-access" in line:
        found.append(f"{path}:{number}: {line.strip()}")
    for node in ast.walk(ast.parse(source)):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and
          not node.attr.startswith("__") and
          not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
        found.append(f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()}")
  return found


def test_the_tools_use_only_public_members():
  paths = glob.glob(os.path.join(_TOOLS, "**", "*.py"), recursive=True)
  assert len(paths) > 10
  assert not protected_accesses(paths)


def test_the_protected_access_check_catches_both_forms(tmp_path):
  path = tmp_path / "tool.py"
  path.write_text("def f(trainer, obj):\n"
                  "  trainer._step_fn('a', True)(trainer._iterators['a'])\n"
                  "  obj.x  # pylint: disable=protected-access\n"
                  "  return self._fine, cls._fine, obj.__class__\n")
  assert protected_accesses([str(path)]) == [
      f"{path}:3: obj.x  # pylint: disable=protected-access",
      f"{path}:2: trainer._step_fn('a', True)(trainer._iterators['a'])",
      f"{path}:2: trainer._step_fn('a', True)(trainer._iterators['a'])",
  ]
