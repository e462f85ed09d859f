"""mtssl_tf: multi-task self-supervised visual learning (Doersch & Zisserman, ICCV 2017) in TF2."""

__version__ = "0.1.0"
