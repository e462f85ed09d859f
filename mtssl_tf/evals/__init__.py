"""The three evaluations (paper section 5), one file each; importing this registers them."""

from mtssl_tf.evals import base
from mtssl_tf.evals import imagenet_linear

__all__ = ["base", "imagenet_linear"]
