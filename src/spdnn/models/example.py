"""The example shipped in the package: a small sparse MNIST network, the images, the labels.

The network (``spdnn/data/mnist-sparse-mlp.spdnn``) was trained by
``benchmarks/train_mnist.py`` on the first 50,000 of the shipped MNIST training images
(pixel / 255, flattened to 784) and is scored on the other 10,000 (the *held-out* rows
50,000..59,999); its header's metadata records how it was trained and its accuracy.
``spdnn predict --example`` runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..generate.mnist import MNIST_LABELS_PATH, MNIST_PATH

__all__ = ["ExampleFiles", "example_files", "EXAMPLE_MODEL", "HELD_OUT"]

#: The shipped network.
EXAMPLE_MODEL = MNIST_PATH.parent / "mnist-sparse-mlp.spdnn"

#: Rows of the shipped images the example network was not trained on: [start, stop).
HELD_OUT = (50_000, 60_000)


@dataclass(frozen=True)
class ExampleFiles:
    """Paths of the shipped example and the rows to score it on.

    Attributes
    ----------
    model, images, labels : pathlib.Path
        The ``.spdnn`` network, the MNIST training images and their labels (IDX, gzip).
    held_out : tuple of int
        [start, stop), 0-based rows of the images not used in training.
    """

    model: Path
    images: Path
    labels: Path
    held_out: tuple


def example_files() -> ExampleFiles:
    """The shipped example's files (they may be missing from a source tree without data)."""
    return ExampleFiles(EXAMPLE_MODEL, MNIST_PATH, MNIST_LABELS_PATH, HELD_OUT)
