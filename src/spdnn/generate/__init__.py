"""Offline challenge data: RadiX-Net weights, MNIST-derived inputs, float64 truth (docs/challenge.md, Generator).

Public API (re-exports; the modules hold the details)::

    from spdnn.generate import generate_challenge, write_challenge, cached_challenge
    network, features, truth, info = generate_challenge(1024, 120)
    write_challenge("out", 1024, 120)      # the official file layout, same seed -> same bytes
"""
from __future__ import annotations

from .radixnet import (radixnet_layer, radixnet_network, radixnet_permutations, radixnet_base, place_value,
                       default_bias, check_neurons)
from .mnist import load_mnist
from .features import challenge_features, reference_features, image_shape, features_device
from .challenge import generate_challenge, write_challenge, cached_challenge, compute_truth, ChallengeFiles

__all__ = ["radixnet_layer", "radixnet_network", "radixnet_permutations", "radixnet_base", "place_value",
           "default_bias", "check_neurons", "load_mnist", "challenge_features", "reference_features",
           "image_shape", "features_device",
           "generate_challenge", "write_challenge", "cached_challenge", "compute_truth", "ChallengeFiles"]
