"""spdnn: sparse deep neural network inference at scale (Graph Challenge Sparse DNN).

Public API (everything else is private)::

    import spdnn
    net, feats, truth, info = spdnn.cached_challenge(neurons=1024, layers=120)
    result = spdnn.infer(net, feats, engine="auto", precision="fp32")
    print(spdnn.compare_categories(result.categories, truth).passed)

    # official files instead: spdnn.read_network(dir, neurons=1024, layers=120), spdnn.read_features(path, 1024),
    # spdnn.read_categories(path)

    # any feed-forward network: net = spdnn.from_torch(model) (or read_model("m.onnx" / "m.pt" / "m.spdnn")),
    # spdnn.save_model(net, "m.spdnn"), x = spdnn.read_inputs("images-idx3-ubyte.gz", net.inputs),
    # spdnn.infer(net, x, outputs="predictions").accuracy(labels)
"""
from __future__ import annotations

from .errors import (SpdnnError, FormatError, DataNotFoundError, ChecksumError, DownloadError,
                     EngineUnavailableError, OptionError, DeviceMemoryError, DiskFullError, SpdnnWarning)
from .network import Network, LazyLayers, OFFICIAL_BIAS, YMAX
from .engines import get_engine, available_engines, InferenceResult, Engine
from .engines.base import accuracy
from .formats import read_network, read_features, read_categories
from .generate.challenge import generate_challenge, cached_challenge, write_challenge
from .verify import compare_categories, explain_differences
from .models import from_onnx, from_torch, load_model, read_model, save_model
from .formats.inputs import read_inputs, read_labels

__version__ = "0.1.0"


def infer(network: Network, features, *, engine: str = "auto", precision: str | None = None,
          outputs: str = "categories", top_k: int | None = None, **options) -> InferenceResult:
    """Run inference with the named engine ('auto': best available).

    Parameters
    ----------
    network : Network
    features : scipy.sparse matrix (samples, N)
    engine : str
        'auto' (the best engine here that supports ``network``), 'reference', 'cpu', 'cuda', ...
    precision : {'fp32', 'fp64'}, optional
        Default: the engine's own (fp64 for the reference, the truth; fp32 for the others).
    outputs : {'categories', 'activations', 'predictions', 'topk'}
        What the result holds besides the categories (:mod:`spdnn.engines.base`, Outputs).
    top_k : int, optional
        With ``outputs='topk'``: how many of each final row's largest values.
    **options
        Passed to the engine's constructor (:func:`~spdnn.engines.get_engine`: an option
        the engine does not take is an :class:`OptionError` naming it; ``merge='auto'``
        is accepted by every engine).

    Returns
    -------
    InferenceResult
    """
    return get_engine(engine, network, precision=precision, **options).run(network, features, outputs=outputs,
                                                                           top_k=top_k)


__all__ = [
    "SpdnnError", "FormatError", "DataNotFoundError", "ChecksumError", "DownloadError",
    "EngineUnavailableError", "OptionError", "DeviceMemoryError", "DiskFullError", "SpdnnWarning",
    "Network", "LazyLayers", "OFFICIAL_BIAS", "YMAX",
    "get_engine", "available_engines", "InferenceResult", "Engine", "infer", "accuracy",
    "read_network", "read_features", "read_categories",
    "generate_challenge", "cached_challenge", "write_challenge",
    "compare_categories", "explain_differences",
    "from_torch", "from_onnx", "read_model", "save_model", "load_model", "read_inputs", "read_labels",
]
