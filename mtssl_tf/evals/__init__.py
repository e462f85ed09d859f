"""The three evaluations (paper section 5), one file each; importing this registers them."""

from mtssl_tf.evals import base
from mtssl_tf.evals import imagenet_linear
from mtssl_tf.evals import nyu_depth
from mtssl_tf.evals import voc_detection

__all__ = ["base", "imagenet_linear", "nyu_depth", "voc_detection"]
