"""The pretext tasks, one file each; importing this package registers them (see base.py)."""

from mtssl_tf.tasks import base
from mtssl_tf.tasks import colorization

__all__ = ["base", "colorization"]
