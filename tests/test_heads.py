"""Tests of what pretext tasks and evaluations share: the registry and the head on the trunk."""

import ast
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import heads
from mtssl_tf import lasso as lasso_lib
from mtssl_tf import validate
from mtssl_tf.evals import base as evals_base
from mtssl_tf.tasks import base as tasks_base

PACKAGE = pathlib.Path(heads.__file__).parent


class _StubTrunk(tf.Module):
  """A depth-26 trunk's endpoints in miniature: block 3's two units are w * x and 2 * w * x."""

  depth = 26

  def __init__(self):
    super().__init__(name="stub_trunk")
    self.w = tf.Variable(3.0)
    self.calls = []

  def __call__(self, images, training, output_stride):
    self.calls.append((training, output_stride))
    unit_2 = 2.0 * self.w * images
    return {"block3/unit_1": self.w * images, "block3/unit_2": unit_2, "block3": unit_2}


class _Probe(heads.Head):
  name = "probe"
  output_stride = 16

  def __init__(self, trunk, batch_size=12):
    super().__init__(trunk)
    self.batch_size = batch_size
    self.scale = tf.Variable(1.0)


def test_registry_names_its_classes_and_refuses_a_second_class_under_one_name():
  registry = heads.Registry("widget", "mtssl_tf")

  @registry.register("b")
  class B:
    pass

  @registry.register("a")
  class A:
    pass

  assert (A.name, B.name) == ("a", "b")
  assert registry.get("a") is A and registry.names() == ["a", "b"]
  assert registry.register("a")(A) is A  # the same class again (a module reload) is fine
  with pytest.raises(ValueError, match=r"^Widget name 'a' is registered twice: .*A'> and "
                     r".*C'>\.$"):
    @registry.register("a")
    class C:  # pylint: disable=unused-variable
      pass
  assert registry.get("a") is A
  with pytest.raises(KeyError, match=r"Unknown widget 'c'; registered widgets: \['a', 'b'\]"):
    registry.get("c")


def test_tasks_and_evaluations_are_heads_in_registries_of_their_own():
  assert issubclass(tasks_base.Task, heads.Head)
  assert issubclass(evals_base.Evaluation, heads.Head)
  assert set(tasks_base.registered()) == {"colorization", "exemplar", "imagenet_labels",
                                          "motion_segmentation", "relative_position"}
  assert evals_base.registered() == ["imagenet_linear", "nyu_depth", "voc_detection"]
  with pytest.raises(KeyError, match="registered evaluations"):
    evals_base.get("colorization")


def test_evaluations_import_nothing_from_the_tasks():
  files = sorted((PACKAGE / "evals").glob("*.py")) + [PACKAGE / "heads.py"]
  imported = {}
  for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      imported[path.name] = imported.get(path.name, []) + names
  assert "mtssl_tf.heads" in imported["base.py"]  # the scan sees the package's imports
  assert not [(f, n) for f, names in imported.items() for n in names
              if n.startswith("mtssl_tf.tasks")]


def test_head_variables_are_the_heads_own_not_the_trunks_or_the_lassos():
  trunk = _StubTrunk()
  probe = _Probe(trunk)
  probe.lasso = lasso_lib.Lasso(["probe"], 2)
  everything = {v.ref() for v in probe.trainable_variables}
  assert {trunk.w.ref(), probe.lasso.row("probe").ref(), probe.scale.ref()} <= everything
  assert [v.ref() for v in probe.head_variables] == [probe.scale.ref()]


def test_per_replica_batch_divides_the_global_batch_or_names_the_binding():
  probe = _Probe(_StubTrunk(), batch_size=12)
  assert probe.per_replica_batch(None) == 12
  assert probe.per_replica_batch(tf.distribute.InputContext(num_replicas_in_sync=4)) == 3
  with pytest.raises(validate.SettingError, match=r"^probe.batch_size = 12 does not divide "
                     r"among 5 replicas; bind a multiple of 5\.$"):
    probe.per_replica_batch(tf.distribute.InputContext(num_replicas_in_sync=5))


def test_an_evaluations_batch_is_checked_like_a_tasks():
  linear = evals_base.get("imagenet_linear")
  with pytest.raises(validate.SettingError, match=r"^imagenet_linear.batch_size = 0: expects a "
                     r"positive integer"):
    linear(_StubTrunk(), dataset="toy", batch_size=0)
  probe = linear(_StubTrunk(), dataset="toy", batch_size=16)
  with pytest.raises(validate.SettingError, match=r"^imagenet_linear.batch_size = 16 does not "
                     r"divide among 3 replicas"):
    probe.per_replica_batch(tf.distribute.InputContext(num_replicas_in_sync=3))


@pytest.mark.parametrize("value", [0, -4, 2.5, True, "8"])
def test_batch_size_is_a_positive_integer(value):
  with pytest.raises(validate.SettingError, match=rf"^probe.batch_size = {value!r}: expects a "
                     r"positive integer; fix the gin binding\.$"):
    _Probe(_StubTrunk(), batch_size=value)


def test_key_prefixes_the_heads_name():
  assert _Probe(_StubTrunk()).key("image") == "probe/image"


def test_representation_is_block3_at_the_heads_stride():
  trunk = _StubTrunk()
  images = tf.constant([[[[1.0], [2.0]]]])
  np.testing.assert_allclose(_Probe(trunk).representation(images, training=True).numpy(),
                             [[[[6.0], [12.0]]]])
  assert trunk.calls == [(True, 16)]


@pytest.mark.parametrize("frozen", [False, True])
def test_lasso_representation_and_what_a_frozen_trunk_lets_through(frozen):
  trunk = _StubTrunk()
  probe = _Probe(trunk)
  probe.lasso = lasso_lib.Lasso(["probe"], 2, init="uniform")  # alpha = (0.5, 0.5)
  images = tf.constant([[[[1.0], [2.0]]]])  # units: 3 x and 6 x
  with tf.GradientTape() as tape:
    mixed = probe.representation(images, training=False, frozen=frozen)
    total = tf.reduce_sum(mixed)
  np.testing.assert_allclose(mixed.numpy(), [[[[4.5], [9.0]]]])
  d_w, d_alpha = tape.gradient(total, [trunk.w, probe.lasso.row("probe")])
  # d total / d alpha_m = sum of unit m = (9, 18), frozen or not: the lasso still learns.
  np.testing.assert_allclose(d_alpha.numpy(), [9.0, 18.0])
  if frozen:
    assert d_w is None
  else:  # d/dw (0.5 w + 0.5 * 2 w) * (1 + 2) = 1.5 * 3
    assert float(d_w) == pytest.approx(4.5)
