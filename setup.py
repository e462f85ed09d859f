"""Installs mtssl_tf with the pinned stack from requirements.txt (the one list of pins)."""

import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
  with open(os.path.join(_HERE, "requirements.txt")) as f:
    lines = (line.split("#", 1)[0].strip() for line in f)
    return [line for line in lines if line]


setuptools.setup(
    name="mtssl_tf",
    version="0.1.0",
    description="Multi-task self-supervised visual learning (Doersch & Zisserman 2017) in TF2.",
    packages=setuptools.find_packages(include=["mtssl_tf", "mtssl_tf.*"]),
    package_data={"mtssl_tf.assets": ["*.npy"]},
    python_requires=">=3.11,<3.12",
    install_requires=_requirements(),
    extras_require={"test": ["pytest>=7,<9", "pytest-xdist>=3,<4"]},
    entry_points={
        "console_scripts": [
            "mtssl-export = mtssl_tf.bin.export:run",
            "mtssl-demo = mtssl_tf.bin.demo:run",
            "mtssl-train = mtssl_tf.bin.train:run",
            "mtssl-evaluate = mtssl_tf.bin.evaluate:run",
        ],
    },
)
