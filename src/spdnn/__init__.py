"""spdnn: sparse deep neural network inference at scale (Graph Challenge Sparse DNN).

Public API (everything else is private)::

    import spdnn
    net, feats, truth, info = spdnn.cached_challenge(neurons=1024, layers=120)
    result = spdnn.infer(net, feats, engine="auto", precision="fp32")
    print(spdnn.compare_categories(result.categories, truth).passed)

    # official files instead: spdnn.read_network(dir, neurons=1024, layers=120), spdnn.read_features(path, 1024),
    # spdnn.read_categories(path)
"""
from __future__ import annotations

from .errors import (SpdnnError, FormatError, DataNotFoundError, ChecksumError, DownloadError,
                     EngineUnavailableError, OptionError, DeviceMemoryError, DiskFullError, SpdnnWarning)
from .network import Network, LazyLayers, OFFICIAL_BIAS, YMAX
from .engines import get_engine, available_engines, InferenceResult, Engine
from .formats import read_network, read_features, read_categories
from .generate.challenge import generate_challenge, cached_challenge, write_challenge
from .verify import compare_categories, explain_differences

__version__ = "0.1.0"


def infer(network: Network, features, *, engine: str = "auto", precision: str | None = None,
          **options) -> InferenceResult:
    """Run inference with the named engine ('auto': best available).

    Parameters
    ----------
    network : Network
    features : scipy.sparse matrix (samples, N)
    engine : str
        'auto', 'reference', 'cpu', 'cuda', ...
    precision : {'fp32', 'fp64'}, optional
        Default: the engine's own (fp64 for the reference, the truth; fp32 for the others).
    **options
        Passed to the engine's constructor (:func:`~spdnn.engines.get_engine`: an option
        the engine does not take is an :class:`OptionError` naming it; ``merge='auto'``
        is accepted by every engine).

    Returns
    -------
    InferenceResult
    """
    return get_engine(engine, precision=precision, **options).run(network, features)


__all__ = [
    "SpdnnError", "FormatError", "DataNotFoundError", "ChecksumError", "DownloadError",
    "EngineUnavailableError", "OptionError", "DeviceMemoryError", "DiskFullError", "SpdnnWarning",
    "Network", "LazyLayers", "OFFICIAL_BIAS", "YMAX",
    "get_engine", "available_engines", "InferenceResult", "Engine", "infer",
    "read_network", "read_features", "read_categories",
    "generate_challenge", "cached_challenge", "write_challenge",
    "compare_categories", "explain_differences",
]
