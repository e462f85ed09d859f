"""Color for the colorization task (Zhang et al. 2016): sRGB <-> CIE Lab, the 313 ab bins,
soft-encoding and class rebalancing.

* `rgb_to_lab` / `lab_to_rgb`: sRGB with the D65 white point, IEC 61966-2-1 transfer curve and
  the CIE 1976 L*a*b* formulas, batched over any leading axes. `rgb_to_lab` is differentiable
  everywhere in [0, 1] (the cube root and the sRGB power law are guarded at 0).
* `lightness_as_rgb`: the grayscale trunk input of colorization and of relative position's
  harmonized patches (paper section 3.3): L on the 0-255 scale in all three channels.
* `ab_bins()`: the 313 in-gamut ab bin centres of a grid of 10 (shipped in
  `mtssl_tf/assets/pts_in_hull.npy`, rows of (a, b)).
* `soft_encode`: each ab value spread over its 5 nearest bins with a Gaussian of sigma 5 (the
  paper's setting; the released training code used 10 neighbours: `num_neighbors`).
* `rebalancing_weights`: w proportional to ((1 - lambda) p + lambda / Q)^-1, lambda = 0.5, scaled
  so that the prior-weighted mean weight is 1. With no prior (`prior=None`) the prior is taken
  as uniform, which makes every weight 1: no rebalancing. Compute ImageNet's prior with
  `tools/compute_color_prior.py` and pass it (gin: `colorization.prior_path`).
"""

import importlib.resources

import numpy as np
import tensorflow as tf

NUM_BINS = 313
# sRGB (linear) -> XYZ, D65 (the matrix of scikit-image and EasyRGB); white = its row sums.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = _RGB_TO_XYZ.sum(axis=1)
_DELTA = 6.0 / 29.0
# Images whose every pixel has |ab| below this are grayscale (Zhang et al.'s training code).
GRAYSCALE_AB_THRESHOLD = 5.0


def _srgb_to_linear(c):
  # Clamped before the power so that the gradient of the unused branch is finite at 0.
  high = tf.pow((tf.maximum(c, 0.04045) + 0.055) / 1.055, 2.4)
  return tf.where(c <= 0.04045, c / 12.92, high)


def _linear_to_srgb(c):
  high = 1.055 * tf.pow(tf.maximum(c, 0.0031308), 1.0 / 2.4) - 0.055
  return tf.where(c <= 0.0031308, 12.92 * c, high)


def _lab_f(t):
  cube_root = tf.pow(tf.maximum(t, _DELTA**3), 1.0 / 3.0)
  return tf.where(t > _DELTA**3, cube_root, t / (3 * _DELTA**2) + 4.0 / 29.0)


def _lab_f_inv(f):
  return tf.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))


def rgb_to_lab(rgb):
  """sRGB in [0, 1] -> CIE Lab (D65).

  Args:
    rgb: float Tensor [..., 3], sRGB values in [0, 1].

  Returns:
    float Tensor [..., 3]: L in [0, 100], a and b roughly in [-110, 100].
  """
  rgb = tf.convert_to_tensor(rgb, tf.float32)
  linear = _srgb_to_linear(rgb)
  xyz = tf.linalg.matvec(tf.constant(_RGB_TO_XYZ / _WHITE_D65[:, None], tf.float32), linear)
  f = _lab_f(xyz)
  fx, fy, fz = tf.unstack(f, axis=-1)
  return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
  """CIE Lab (D65) -> sRGB in [0, 1], clipped to the gamut.

  Args:
    lab: float Tensor [..., 3].

  Returns:
    float Tensor [..., 3] in [0, 1].
  """
  lab = tf.convert_to_tensor(lab, tf.float32)
  l, a, b = tf.unstack(lab, axis=-1)
  fy = (l + 16.0) / 116.0
  f = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
  xyz = _lab_f_inv(f) * tf.constant(_WHITE_D65, tf.float32)
  linear = tf.linalg.matvec(tf.constant(_XYZ_TO_RGB, tf.float32), xyz)
  return tf.clip_by_value(_linear_to_srgb(tf.clip_by_value(linear, 0.0, 1.0)), 0.0, 1.0)


def lightness_as_rgb(lab):
  """Lab [..., 3] -> the L channel on the 0-255 scale replicated to 3 channels, float32.

  Colorization's trunk input, which relative position's harmonized mode shares (paper
  section 3.3).
  """
  lightness = lab[..., :1] * (255.0 / 100.0)
  return tf.concat([lightness] * 3, axis=-1)


def ab_bins():
  """The 313 ab bin centres, float32 numpy array [313, 2] of (a, b)."""
  with importlib.resources.files("mtssl_tf.assets").joinpath("pts_in_hull.npy").open("rb") as f:
    bins = np.load(f).astype(np.float32)
  if bins.shape != (NUM_BINS, 2):
    raise ValueError(f"mtssl_tf/assets/pts_in_hull.npy has shape {bins.shape}, expected "
                     f"({NUM_BINS}, 2); reinstall the package.")
  return bins


def _squared_distances(ab, bins):
  """[..., 2] x [Q, 2] -> [..., Q] squared distances."""
  diff = ab[..., None, :] - tf.constant(bins, ab.dtype)
  return tf.reduce_sum(tf.square(diff), axis=-1)


def nearest_bin(ab):
  """Index of the nearest bin of each ab value: int32 Tensor [...]."""
  ab = tf.convert_to_tensor(ab, tf.float32)
  return tf.argmin(_squared_distances(ab, ab_bins()), axis=-1, output_type=tf.int32)


def soft_encode(ab, sigma=5.0, num_neighbors=5):
  """Soft-encodes ab values onto their nearest bins with Gaussian weights.

  Args:
    ab: float Tensor [..., 2].
    sigma: Gaussian width in ab units.
    num_neighbors: how many nearest bins receive weight.

  Returns:
    float32 Tensor [..., 313], non-negative, summing to 1 over the last axis.
  """
  ab = tf.convert_to_tensor(ab, tf.float32)
  d2 = _squared_distances(ab, ab_bins())
  neg_d2, indices = tf.math.top_k(-d2, k=num_neighbors)
  # Softmax of -d^2 / (2 sigma^2) over the k nearest = normalized Gaussian weights, computed
  # stably even far outside the gamut.
  weights = tf.nn.softmax(neg_d2 / (2.0 * sigma**2), axis=-1)
  return tf.reduce_sum(tf.one_hot(indices, NUM_BINS) * weights[..., None], axis=-2)


def rebalancing_weights(prior=None, mix=0.5):
  """Class-rebalancing weights per bin (Zhang et al. eq. 4).

  Args:
    prior: array [313] of bin probabilities (normalized here), or None for uniform.
    mix: lambda, the weight of the uniform distribution in the mixture.

  Returns:
    float32 numpy array [313] with sum(prior * w) == 1.

  Raises:
    ValueError: if the prior has the wrong shape, negative entries or zero mass.
  """
  if prior is None:
    prior = np.full([NUM_BINS], 1.0 / NUM_BINS)
  prior = np.asarray(prior, np.float64)
  if prior.shape != (NUM_BINS,) or np.any(prior < 0) or prior.sum() <= 0:
    raise ValueError(f"The color prior must be {NUM_BINS} non-negative probabilities, got shape "
                     f"{prior.shape}, min {prior.min() if prior.size else None}, sum "
                     f"{prior.sum()}. Recompute it with tools/compute_color_prior.py.")
  prior = prior / prior.sum()
  weights = 1.0 / ((1.0 - mix) * prior + mix / NUM_BINS)
  weights /= np.sum(prior * weights)
  return weights.astype(np.float32)


def smooth_prior(counts, sigma=5.0):
  """Normalizes bin counts into a prior smoothed with a Gaussian over ab (as Zhang et al.)."""
  bins = ab_bins().astype(np.float64)
  d2 = np.sum(np.square(bins[:, None, :] - bins[None, :, :]), axis=-1)
  kernel = np.exp(-d2 / (2 * sigma**2))
  smoothed = kernel @ np.asarray(counts, np.float64)
  if smoothed.sum() <= 0:
    raise ValueError("No colored pixel was counted: the prior is empty.")
  return smoothed / smoothed.sum()


def is_grayscale(ab, threshold=GRAYSCALE_AB_THRESHOLD):
  """True for an image whose every pixel has |a| and |b| below `threshold`.

  Args:
    ab: float Tensor [..., H, W, 2] (one image or a batch).

  Returns:
    bool Tensor [...].
  """
  return tf.reduce_all(tf.abs(ab) < threshold, axis=[-3, -2, -1])


def annealed_mean(probs, temperature=0.38):
  """ab from a bin distribution by Zhang et al.'s annealed mean (for visualisation).

  Args:
    probs: float Tensor [..., 313] of probabilities.

  Returns:
    float Tensor [..., 2].
  """
  logits = tf.math.log(tf.maximum(probs, 1e-12)) / temperature
  return tf.linalg.matmul(tf.nn.softmax(logits, axis=-1), tf.constant(ab_bins()))
