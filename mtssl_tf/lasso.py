"""Lasso layer selection (paper section 3.2): each consumer (a pretext task, or an evaluation)
reads a learned linear combination of the trunk's block-3 unit outputs instead of block 3's last
unit alone.

For N consumers and the M units of block 3 there is an N x M matrix alpha; consumer n's head
receives sum_m alpha[n, m] * unit_m. Each row sums to one and its entries may be negative; an L1
penalty `l1_weight * sum_m |alpha[n, m]|`, added to consumer n's loss, pushes the row to be
sparse, so that the training picks the layers each task uses (paper Figure 4).

How the row sums are kept at one: every row is its own variable, updated only by its consumer's
optimizer, and after each of that optimizer's updates `project(n)` moves the row onto the plane
sum = 1 by the smallest change (the Euclidean projection: subtract (sum - 1) / M from every
entry). So the constraint holds after every update, to float32 rounding (|sum - 1| < 1e-6 for
M = 23), and never drifts: each projection starts again from the current sum.

Equal sizes: the units must have one spatial size to be added. At output stride 32 block 3's
last unit is half the size of the others (its stride sits in that unit), so larger units are
subsampled the way slim subsamples a shortcut (every other pixel, from the first); at output
stride 8 or 16 all units already have one size.

Rows start at the plain trunk, all weight on the last unit (`init="last"`), or spread evenly
(`init="uniform"`).
"""

import gin
import numpy as np
import tensorflow as tf

INITS = ("last", "uniform")


def equalize(units):
  """Subsamples the units that are larger than the smallest to its size (slim's subsample).

  Args:
    units: list of float [B, H_m, W_m, C] with H_m a multiple of the smallest H (likewise W).

  Returns:
    list of [B, H, W, C], H and W the smallest.
  """
  height = min(u.shape[1] for u in units)
  equal = []
  for unit in units:
    factor = unit.shape[1] // height if height else 1
    equal.append(unit[:, ::factor, ::factor, :] if factor > 1 else unit)
  return equal


@gin.configurable
class Lasso(tf.Module):
  """One alpha row per consumer; see the module docstring."""

  def __init__(self, consumers, num_units, l1_weight=1e-3, init="last", name="lasso"):
    """Creates the rows.

    Args:
      consumers: names of the consumers (tasks), one row each, in the order of the matrix.
      num_units: M, the number of candidate units (block 3's units).
      l1_weight: weight of the L1 penalty on each row.
      init: "last" (one-hot on the last unit: the plain trunk) or "uniform" (1 / M each).
      name: module name.

    Raises:
      ValueError: for no consumers, fewer than 1 unit or an unknown init.
    """
    super().__init__(name=name)
    if not consumers:
      raise ValueError("Lasso needs at least one consumer.")
    if num_units < 1:
      raise ValueError(f"Lasso needs at least one unit, got {num_units}.")
    if init not in INITS:
      raise ValueError(f"Unknown lasso init {init!r}; choose one of {INITS} (gin: Lasso.init).")
    self.consumers = list(consumers)
    self.num_units = num_units
    self.l1_weight = l1_weight
    if init == "last":
      start = np.zeros([num_units], np.float32)
      start[-1] = 1.0
    else:
      start = np.full([num_units], 1.0 / num_units, np.float32)
    self.rows = {c: tf.Variable(start, name=f"alpha_{c}") for c in self.consumers}

  def row(self, consumer):
    """The alpha row variable of `consumer` ([M])."""
    if consumer not in self.rows:
      raise KeyError(f"Lasso has no row for {consumer!r}; it has {self.consumers}.")
    return self.rows[consumer]

  def combine(self, consumer, units):
    """sum_m alpha[consumer, m] * units[m], after `equalize`.

    Args:
      consumer: a consumer's name.
      units: list of M float [B, H_m, W_m, C].

    Returns:
      float [B, H, W, C].

    Raises:
      ValueError: if len(units) != M.
    """
    if len(units) != self.num_units:
      raise ValueError(f"Lasso over {self.num_units} units got {len(units)}.")
    units = equalize(units)
    # In float32 whatever the units' dtype (mixed precision keeps the alphas and their
    # gradients exact); the caller's next layer casts the result to its compute dtype.
    alpha = tf.cast(self.row(consumer), tf.float32)
    return tf.add_n([alpha[m] * tf.cast(unit, tf.float32) for m, unit in enumerate(units)])

  def penalty(self, consumer):
    """l1_weight * sum |alpha[consumer]|: add it to that consumer's loss."""
    return self.l1_weight * tf.reduce_sum(tf.abs(self.row(consumer)))

  def project(self, consumer):
    """Moves the row back onto sum = 1 (smallest Euclidean change); returns the assign op."""
    row = self.row(consumer)
    return row.assign_sub(tf.fill([self.num_units], (tf.reduce_sum(row) - 1.0) /
                                  self.num_units))

  def matrix(self):
    """alpha as a float32 [N, M] tensor, rows in consumer order."""
    return tf.stack([tf.convert_to_tensor(self.rows[c]) for c in self.consumers])

  def image(self, gamma=0.5, cell=12):
    """|alpha| for a TensorBoard image: [1, N * cell, M * cell, 1] in [0, 1].

    Each entry is a `cell` x `cell` square (a 4 x 23 matrix at ResNet-101 scale would
    otherwise be a 4 x 23 pixel image), shaded |alpha| ** gamma / max: the power (0.5 by
    default) lifts small entries into view, as the paper's Figure 4 does with its nonlinear
    scale. Rows are the consumers in order, columns block 3's units 1..M.
    """
    magnitude = tf.abs(self.matrix()) ** gamma
    shade = magnitude / tf.maximum(tf.reduce_max(magnitude), 1e-12)
    shade = tf.repeat(tf.repeat(shade, cell, axis=0), cell, axis=1)
    return shade[None, :, :, None]

  def markdown_table(self):
    """alpha as a Markdown table (rows: consumers; columns: units), for a TensorBoard text."""
    values = self.matrix().numpy()
    header = "| | " + " | ".join(f"unit {m + 1}" for m in range(self.num_units)) + " |"
    rule = "|---" * (self.num_units + 1) + "|"
    rows = [f"| {c} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
            for c, row in zip(self.consumers, values)]
    return "\n".join([header, rule] + rows)
