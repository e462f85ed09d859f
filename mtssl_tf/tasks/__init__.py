"""The pretext tasks, one file each; importing this package registers them (see base.py)."""

from mtssl_tf.tasks import base
from mtssl_tf.tasks import colorization
from mtssl_tf.tasks import exemplar
from mtssl_tf.tasks import imagenet_labels
from mtssl_tf.tasks import motion_segmentation
from mtssl_tf.tasks import relative_position

__all__ = ["base", "colorization", "exemplar", "imagenet_labels", "motion_segmentation", "relative_position"]
