"""Tests of sRGB <-> Lab, the 313 bins, soft-encoding and rebalancing."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf import color

# Published CIE Lab (D65) values of sRGB colors (EasyRGB).
_KNOWN = [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.241, 80.092, 67.203)),
    ((0.0, 1.0, 0.0), (87.735, -86.183, 83.179)),
    ((0.0, 0.0, 1.0), (32.297, 79.188, -107.860)),
]


@pytest.mark.parametrize("rgb,lab", _KNOWN)
def test_known_colors(rgb, lab):
  np.testing.assert_allclose(color.rgb_to_lab(np.array([rgb])).numpy()[0], lab, atol=0.01)


def test_round_trip_batched_and_in_tf_data():
  rgb = np.random.RandomState(0).uniform(0, 1, [2, 5, 7, 3]).astype(np.float32)
  np.testing.assert_allclose(color.lab_to_rgb(color.rgb_to_lab(rgb)).numpy(), rgb, atol=2e-5)
  ds = tf.data.Dataset.from_tensor_slices(rgb).map(color.rgb_to_lab).map(color.lab_to_rgb)
  np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), rgb, atol=2e-5)


def test_rgb_to_lab_has_finite_gradients_at_black():
  rgb = tf.constant([[0.0, 0.0, 0.0], [0.5, 0.2, 0.0]])
  with tf.GradientTape() as tape:
    tape.watch(rgb)
    lab = color.rgb_to_lab(rgb)
  grad = tape.gradient(lab, rgb)
  assert np.all(np.isfinite(grad.numpy()))


def test_bins_are_the_313_grid_points():
  bins = color.ab_bins()
  assert bins.shape == (313, 2)
  assert np.all(bins % 10 == 0)
  assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100
  assert bins[:, 1].min() == -110 and bins[:, 1].max() == 100
  assert len({tuple(b) for b in bins}) == 313


def test_soft_encoding_peaks_at_nearest_bin_and_sums_to_one():
  rng = np.random.RandomState(1)
  bins = color.ab_bins()
  ab = bins[rng.randint(0, 313, 200)] + rng.uniform(-4.9, 4.9, [200, 2]).astype(np.float32)
  enc = color.soft_encode(ab).numpy()
  assert enc.shape == (200, 313)
  np.testing.assert_allclose(enc.sum(-1), 1.0, atol=1e-5)
  nearest = np.argmin(((ab[:, None] - bins[None]) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(enc.argmax(-1), nearest)
  np.testing.assert_array_equal(color.nearest_bin(ab).numpy(), nearest)
  assert np.all((enc > 0).sum(-1) == 5)
  # On a bin centre the weights are the Gaussian of the distances to the 4 grid neighbours (10).
  points = {tuple(b) for b in bins.tolist()}
  interior = next(i for i, (a, b) in enumerate(bins.tolist())
                  if {(a + 10, b), (a - 10, b), (a, b + 10), (a, b - 10)} <= points)
  centre = color.soft_encode(bins[interior:interior + 1]).numpy()[0]
  g = np.exp(-100 / 50.0)
  np.testing.assert_allclose(np.sort(centre)[::-1][:5], np.array([1, g, g, g, g]) / (1 + 4 * g),
                             rtol=1e-5)


def test_soft_encoding_inside_tf_data():
  ab = np.zeros([4, 4, 2], np.float32)
  ds = tf.data.Dataset.from_tensors(ab).map(color.soft_encode)
  out = next(iter(ds)).numpy()
  assert out.shape == (4, 4, 313)
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_rebalancing_weights_have_prior_weighted_mean_one():
  prior = np.random.RandomState(2).gamma(0.3, size=313)
  weights = color.rebalancing_weights(prior)
  p = prior / prior.sum()
  np.testing.assert_allclose(np.sum(p * weights), 1.0, rtol=1e-5)
  # Rare colors weigh more than common ones.
  assert weights[np.argmin(p)] > weights[np.argmax(p)]
  # lambda = 1 gives uniform weights; no prior gives all ones.
  np.testing.assert_allclose(color.rebalancing_weights(prior, mix=1.0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(color.rebalancing_weights(None), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="313 non-negative"):
    color.rebalancing_weights(np.ones(10))


def test_smoothed_prior_and_grayscale_detection():
  counts = np.zeros(313)
  counts[100] = 10
  prior = color.smooth_prior(counts)
  assert prior.argmax() == 100 and np.isclose(prior.sum(), 1.0)
  gray = color.rgb_to_lab(np.full([1, 4, 4, 3], 0.4, np.float32))[..., 1:]
  colored = color.rgb_to_lab(np.tile([[[[0.9, 0.1, 0.1]]]], [1, 4, 4, 1]).astype(np.float32))
  assert color.is_grayscale(gray).numpy().tolist() == [True]
  assert color.is_grayscale(colored[..., 1:]).numpy().tolist() == [False]


def test_annealed_mean_recovers_a_bin():
  probs = tf.one_hot([42], 313)
  np.testing.assert_allclose(color.annealed_mean(probs).numpy()[0], color.ab_bins()[42], atol=1e-3)


def test_lightness_as_rgb_is_l_on_the_0_255_scale_in_every_channel():
  lab = np.array([[[100.0, 20.0, -30.0], [50.0, -60.0, 5.0], [0.0, 0.0, 0.0]]], np.float32)
  gray = color.lightness_as_rgb(lab).numpy()
  np.testing.assert_allclose(gray, [[[255.0] * 3, [127.5] * 3, [0.0] * 3]], rtol=1e-6)
  assert gray.dtype == np.float32
