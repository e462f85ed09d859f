"""The SavedModel export: signatures, fine-tuning after reload, the mtssl-export binary."""

import os
import shutil
import subprocess
import sys
import types

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from mtssl_tf import export as export_lib
from mtssl_tf import input_convention
from mtssl_tf import trunk as trunk_lib
from tests.conftest import randomize_batch_norm
from tests.conftest import save_tf1_checkpoint

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One worker runs the module: the tests share `exported`.
pytestmark = pytest.mark.xdist_group("test_export")
_UINT8 = np.random.RandomState(0).randint(0, 256, [2, 48, 40, 3]).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  trunk = trunk_lib.Trunk(depth=26, output_stride=16)
  trunk.ensure_built()
  randomize_batch_norm(trunk.variables, seed=5)
  export_dir = str(tmp_path_factory.mktemp("export") / "trunk")
  export_lib.export_trunk(trunk, export_dir, source_checkpoint="in-memory")
  return trunk, export_dir


@pytest.fixture(scope="module")
def slim_checkpoint(exported, tmp_path_factory):
  """The exported trunk's weights as a TF1 name-based checkpoint (as slim's are), with a
  classifier variable that is not the trunk's; returns its prefix."""
  trunk, _ = exported
  values = {v.name.split(":")[0]: v.numpy() for v in trunk.variables}
  values["resnet_v2_26/logits/weights"] = np.ones([1, 1, 1024, 10], np.float32)
  return save_tf1_checkpoint(values,
                             str(tmp_path_factory.mktemp("slim") / "resnet_v2_26.ckpt"))


@pytest.fixture(scope="module")
def binary_run(exported, slim_checkpoint, tmp_path_factory):
  """mtssl-export run once, with --overwrite, on `slim_checkpoint`, at output stride 8.

  Its --export_dir holds a copy of `exported`'s SavedModel with a file of its own: the earlier
  export that the run replaces.
  """
  _, export_dir = exported
  prefix = slim_checkpoint
  root = tmp_path_factory.mktemp("binary")
  parent = root / "exports"
  target = parent / "trunk"
  shutil.copytree(export_dir, target)
  (target / "stale.txt").write_text("from the earlier export")
  env = dict(os.environ, PYTHONPATH=_REPO)
  cmd = [sys.executable, "-m", "mtssl_tf.bin.export", f"--checkpoint={prefix}",
         f"--export_dir={target}", "--output_stride=8", "--overwrite",
         "--gin_param=Trunk.depth = 26"]  # the checkpoint's depth: accepted
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
  return types.SimpleNamespace(prefix=prefix, parent=parent, export_dir=str(target), env=env,
                               result=result)


def _close(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def test_signatures_match_the_live_trunk(exported):
  trunk, export_dir = exported
  loaded = tf.saved_model.load(export_dir)
  assert set(loaded.signatures) == {"serving_default", "serve_uint8", "serve_float"}
  live = trunk(input_convention.to_trunk_input(_UINT8), training=False)
  by_uint8 = loaded.signatures["serving_default"](images=tf.constant(_UINT8))
  by_float = loaded.signatures["serve_float"](images=tf.constant(_UINT8, tf.float32))
  assert set(by_uint8) == set(live) == set(by_float)
  assert by_uint8["block3"].shape.as_list() == [2, 3, 3, 1024]  # ceil(48/16) x ceil(40/16)
  for name in live:
    assert _close(by_uint8[name], live[name]), name
    assert _close(by_float[name], live[name]), name
  assert _close(loaded(tf.constant(_UINT8, tf.float32))["block2"], live["block2"])
  metadata = export_lib.load_metadata(export_dir)
  assert metadata["depth"] == 26 and metadata["output_stride"] == 16
  assert metadata["input"]["mean_rgb_subtracted_inside"] == list(input_convention.MEAN_RGB)


def test_fine_tuning_step_on_the_reloaded_trunk_changes_its_weights(exported):
  trunk, export_dir = exported
  loaded = tf.saved_model.load(export_dir)
  assert len(loaded.trainable_variables) == 68 and len(loaded.variables) == 104
  np.testing.assert_allclose(loaded.regularization_losses[0]().numpy(),
                             trunk.regularization_loss().numpy(), rtol=1e-6)
  moving = [v for v in loaded.variables if v.name.endswith("moving_mean:0")][0]
  moving_before = moving.numpy().copy()
  before = [v.numpy().copy() for v in loaded.trainable_variables]
  optimizer = tf.keras.optimizers.RMSprop(1e-3)
  with tf.GradientTape() as tape:
    out = loaded(tf.constant(_UINT8, tf.float32), training=True)["block3"]
    loss = tf.reduce_mean(tf.square(out)) + loaded.regularization_losses[0]()
  grads = tape.gradient(loss, loaded.trainable_variables)
  assert all(g is not None for g in grads)
  optimizer.apply_gradients(zip(grads, loaded.trainable_variables))
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, loaded.trainable_variables)]
  assert all(changed)
  assert not np.array_equal(moving_before, moving.numpy())  # BN statistics updated in training
  # The live trunk is untouched: the SavedModel owns its own copy.
  assert not np.array_equal(trunk.trainable_variables[0].numpy(),
                            loaded.trainable_variables[0].numpy())


def test_hub_keras_layer_loads_it_trainable(exported):
  _, export_dir = exported
  layer = hub.KerasLayer(export_dir, trainable=True)
  out = layer(tf.constant(_UINT8, tf.float32), training=False)
  assert out["block3"].shape.as_list() == [2, 3, 3, 1024]
  assert len(layer.trainable_weights) == 68
  assert len(layer.losses) == 1  # slim's weight decay, from regularization_losses


def test_refuses_to_overwrite_and_leaves_no_temporary(exported, binary_run):
  trunk, export_dir = exported
  with pytest.raises(FileExistsError, match="already exists"):
    export_lib.export_trunk(trunk, export_dir)
  # An earlier export (the fixture's, with a file of its own) is replaced whole: by `binary_run`,
  # mtssl-export --overwrite (export_trunk's overwrite=True).
  assert binary_run.result.returncode == 0, binary_run.result.stderr[-3000:]
  target = binary_run.export_dir
  assert sorted(os.listdir(binary_run.parent)) == ["trunk"]
  assert "stale.txt" not in os.listdir(target) and "saved_model.pb" in os.listdir(target)


def test_binary_exports_a_tf1_slim_style_checkpoint(binary_run, tmp_path):
  """mtssl-export on a name-based checkpoint: depth read from the names, stride from its flag."""
  result, prefix, env = binary_run.result, binary_run.prefix, binary_run.env
  assert result.returncode == 0, result.stderr[-3000:]
  assert "loaded 104 trunk variables, skipped 1" in result.stdout
  loaded = tf.saved_model.load(binary_run.export_dir)
  out = loaded.signatures["serve_uint8"](images=tf.constant(_UINT8))
  assert out["block3"].shape.as_list() == [2, 6, 5, 1024]  # output stride 8
  live = trunk_lib.Trunk(depth=26, output_stride=8)
  trunk_lib.init_from_checkpoint(live, prefix)
  assert _close(out["block3"], live(input_convention.to_trunk_input(_UINT8))["block3"])

  # A depth binding that contradicts the checkpoint: refused in one line, nothing written. (The
  # library's other refusals, an existing export and a missing checkpoint, reach the console
  # the same way: test_refuses_to_overwrite_and_leaves_no_temporary, test_checkpoint.py.)
  deeper = subprocess.run([sys.executable, "-m", "mtssl_tf.bin.export",
                           f"--checkpoint={prefix}", f"--export_dir={tmp_path}/d",
                           "--gin_param=Trunk.depth = 50"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
  assert deeper.returncode == 1 and "Traceback" not in deeper.stderr
  assert deeper.stderr.splitlines()[-1:] == [
      f"mtssl-export: Trunk.depth = 50 (gin) but {prefix} holds a depth-26 trunk (resnet_v2_26); "
      "drop the binding, bind Trunk.depth = 26, or export a depth-50 checkpoint."]
  assert not os.path.exists(f"{tmp_path}/d")


def test_refuses_a_trunk_depth_binding_the_checkpoint_contradicts(slim_checkpoint, tmp_path):
  prefix = slim_checkpoint
  try:
    with gin.unlock_config():
      gin.bind_parameter("Trunk.depth", 50)
    with pytest.raises(ValueError, match=r"^Trunk.depth = 50 \(gin\) but .* holds a depth-26 "):
      export_lib.export_from_checkpoint(prefix, str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")
  finally:
    gin.clear_config()
