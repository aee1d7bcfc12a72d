"""Import a PyTorch model: a chain of ``nn.Linear`` layers and ReLU-like activations.

What is read (the model is traced with ``torch.fx``, so a custom module whose ``forward``
calls ``clamp`` is read too):

* ``nn.Linear``: dense weights, pruned ones (``torch.nn.utils.prune``: ``weight_orig *
  weight_mask``, or the plain ``weight`` after ``prune.remove``) or a sparse weight
  tensor (COO or CSR layout). Its weight is spdnn's W transposed; its bias is added to
  every output (the ``dense`` rule); no bias is a zero bias.
* after a Linear: ``nn.ReLU`` / ``F.relu`` / ``torch.relu`` / ``.relu()``; ``nn.Hardtanh(0, c)``,
  ``nn.ReLU6``, ``F.hardtanh(x, 0, c)``, ``F.relu6``; ``torch.clamp`` / ``torch.clip`` /
  ``.clamp`` / ``.clip`` / ``.clamp_min`` / ``.clamp_max`` with constant bounds — each
  a ReLU (capped at c), folded as :meth:`~spdnn.models.assemble.LayerSpec.clamp` says;
  a Linear that no activation follows is an identity layer.
* no-ops: ``nn.Identity``, ``nn.Dropout`` (inference), ``nn.Flatten`` /
  ``torch.flatten`` from dimension 1 (spdnn's inputs are rows already).

Anything else (convolutions, other activations, a branch or a skip connection, a
clamp with a lower bound other than 0) is refused naming the module or node and what
is supported. The weights are taken in float64 (exact from float32 or float16).

Files (:func:`read_torch_file`): a ``.pt``/``.pth`` holds either a state dict of an
``nn.Sequential`` of Linear layers (read with ``weights_only=True``; every Linear but the
last is followed by a ReLU, uncapped unless ``hidden_cap``, the last is linear: say so
when it is not), or a whole pickled module (``torch.save(model)``), read only with
``trust_pickle=True`` because unpickling runs code from the file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import DataNotFoundError, FormatError, OptionError
from ..network import Network
from .assemble import SPARSE_THRESHOLD, LayerSpec, assemble

__all__ = ["from_torch", "read_torch_file", "require_torch"]

SUPPORTED = ("nn.Linear; after it nn.ReLU, nn.Hardtanh(0, c), nn.ReLU6, relu, clamp/clip(0, c); "
             "no-ops nn.Identity, nn.Dropout, nn.Flatten")


def require_torch():
    """Import torch, or raise OptionError saying what to install."""
    try:
        import torch
    except ImportError:
        raise OptionError("reading a PyTorch model needs PyTorch: pip install 'spdnn[torch]'") from None
    return torch


def _weight(module, torch) -> object:
    """The effective weight of a Linear, (out, in) float64: pruned, sparse or dense."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        w = module.weight_orig.detach() * module.weight_mask.detach()
    else:
        w = module.weight.detach()
    if w.layout != torch.strided:
        coo = w.to_sparse_coo().coalesce() if w.layout != torch.sparse_coo else w.coalesce()
        rows, cols = coo.indices().cpu().numpy()
        values = coo.values().to("cpu", torch.float64).numpy()
        return sp.coo_matrix((values, (rows, cols)), shape=tuple(w.shape)).tocsr()
    return w.to("cpu", torch.float64).numpy()


def _linear_spec(module, name: str, torch) -> LayerSpec:
    w = _weight(module, torch)
    n_out, n_in = w.shape
    bias = np.zeros(n_out) if module.bias is None else module.bias.detach().to("cpu", torch.float64).numpy()
    if sp.issparse(w):
        weights = w.T.tocsr()
    else:
        weights = np.ascontiguousarray(w.T)
    if not np.all(np.isfinite(bias)) or not np.all(np.isfinite(weights.data if sp.issparse(weights) else weights)):
        raise OptionError(f"{name}: non-finite weights or bias")
    return LayerSpec(weights, np.ascontiguousarray(bias), name)


def _bounds_of_call(node, torch) -> tuple | None:
    """(low, high) of a clamp-like call_function / call_method node, None when not one."""
    import torch.nn.functional as F

    t, args, kw = node.target, node.args, node.kwargs
    rest = list(args[1:])

    def pick(i, key, default=None):
        return rest[i] if len(rest) > i else kw.get(key, default)

    if t in (torch.relu, F.relu, "relu", torch.relu_, "relu_"):
        return 0.0, None
    if t in (F.relu6,):
        return 0.0, 6.0
    if t in (F.hardtanh,):
        return pick(0, "min_val", -1.0), pick(1, "max_val", 1.0)
    if t in (torch.clamp, torch.clip, "clamp", "clip", "clamp_", "clip_"):
        return pick(0, "min"), pick(1, "max")
    if t in (torch.clamp_min, "clamp_min"):
        return pick(0, "min"), None
    if t in (torch.clamp_max, "clamp_max"):
        return None, pick(0, "max")
    return None


def _is_noop_call(node, torch) -> bool:
    if node.target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return node.target == "contiguous"


def from_torch(model, *, storage="auto", sparse_threshold: float = SPARSE_THRESHOLD, where: str | None = None
               ) -> Network:
    """A spdnn :class:`Network` from a PyTorch model (module docstring: what is read).

    Parameters
    ----------
    model : torch.nn.Module
        Typically an ``nn.Sequential`` of Linear layers and activations.
    storage : {'auto', 'sparse', 'dense'} or one per Linear
        How each layer is held; 'auto': sparse when at most ``sparse_threshold`` of its
        weights are nonzero, else dense.
    sparse_threshold : float
        Default :data:`~spdnn.models.assemble.SPARSE_THRESHOLD` (0.25).
    where : str, optional
        What to call the model in messages (a file name).

    Raises
    ------
    OptionError
        PyTorch is missing (the message says what to install), the object is not a
        module, or it holds something spdnn cannot run: the module or node is named.
    """
    torch = require_torch()
    import torch.fx

    where = where or "model"
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways, all "unsupported"
        raise OptionError(f"{where}: cannot be traced as a chain of layers ({type(exc).__name__}: {exc}); "
                          f"supported: {SUPPORTED}") from None
    modules = dict(model.named_modules())
    specs: list[LayerSpec] = []
    current = None

    def refuse(node, what: str):
        raise OptionError(f"{where}: {what}; supported: {SUPPORTED}")

    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                refuse(node, f"a second input {node.name!r}")
            current = node
            continue
        if node.op == "output":
            if node.args[0] is not current:
                refuse(node, "the output is not the end of one chain of layers")
            break
        inputs = [a for a in node.all_input_nodes]
        if not node.args or node.args[0] is not current or inputs != [current]:
            refuse(node, f"node {node.name!r} does not take only the previous layer's output "
                         "(branches and skip connections are not supported)")
        label = f"module {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
        if node.op == "call_module":
            mod = modules[node.target]
            kind = type(mod).__name__
            label = f"module {node.target!r} ({kind})"
            if isinstance(mod, torch.nn.Linear):
                specs.append(_linear_spec(mod, label, torch))
            elif isinstance(mod, (torch.nn.Identity, torch.nn.Dropout)):
                pass
            elif isinstance(mod, torch.nn.Flatten):
                if mod.start_dim != 1:
                    refuse(node, f"{label}: start_dim {mod.start_dim} (supported: 1)")
            elif isinstance(mod, (torch.nn.ReLU, torch.nn.Hardtanh)):
                low, high = (0.0, None) if isinstance(mod, torch.nn.ReLU) else (mod.min_val, mod.max_val)
                _fold(specs, low, high, label, refuse, node)
            else:
                refuse(node, f"{label} is not supported")
        elif node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            label = f"node {node.name!r} ({name})"
            if _is_noop_call(node, torch):
                pass
            else:
                bounds = _bounds_of_call(node, torch)
                if bounds is None:
                    refuse(node, f"{label} is not supported")
                low, high = bounds
                for b in (low, high):
                    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))):
                        refuse(node, f"{label}: a bound that is not a constant number ({b!r})")
                _fold(specs, low, high, label, refuse, node)
        else:
            refuse(node, f"node {node.name!r} ({node.op} {node.target!r}) is not supported")
        current = node
    return assemble(specs, storage=storage, sparse_threshold=sparse_threshold, where=where)


def _fold(specs, low, high, label, refuse, node) -> None:
    if not specs:
        refuse(node, f"{label} comes before any Linear layer")
    why = specs[-1].clamp(low, high, label)
    if why is not None:
        refuse(node, why)


_LINEAR_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<index>\d+)\.(?P<what>weight|weight_orig|weight_mask|bias)$")


def _from_state_dict(state: dict, path: Path, hidden_cap, storage, sparse_threshold) -> Network:
    """A network from the state dict of an ``nn.Sequential`` of Linear layers (module docstring)."""
    torch = require_torch()
    groups: dict[int, dict] = {}
    prefixes = set()
    for key, value in state.items():
        m = _LINEAR_KEY.match(str(key))
        if m is None or not isinstance(value, torch.Tensor):
            raise FormatError(f"state dict key {key!r} is not '<index>.weight' or '<index>.bias' of an "
                              "nn.Sequential of nn.Linear layers", path=path)
        prefixes.add(m["prefix"])
        groups.setdefault(int(m["index"]), {})[m["what"]] = value
    if len(prefixes) > 1:
        raise FormatError(f"state dict holds several modules ({sorted(prefixes)}): expected one nn.Sequential",
                          path=path)
    if not groups:
        raise FormatError("empty state dict: no Linear layer", path=path)
    specs = []
    for index in sorted(groups):
        g = groups[index]
        label = f"layer {index!r} of the state dict"
        if "weight" in g and "weight_orig" not in g:
            weight = g["weight"]
        elif "weight_orig" in g and "weight_mask" in g:
            weight = g["weight_orig"] * g["weight_mask"]
        else:
            raise FormatError(f"{label}: no weight (expected '{index}.weight' or weight_orig and weight_mask)",
                              path=path)
        if weight.dim() != 2:
            raise FormatError(f"{label}: weight of shape {tuple(weight.shape)}, expected 2 dimensions "
                              "(out_features, in_features)", path=path)
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in g)
        linear.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
        if "bias" in g:
            linear.bias = torch.nn.Parameter(g["bias"].detach(), requires_grad=False)
        spec = _linear_spec(linear, label, torch)
        if specs:
            specs[-1].clamp(0.0, hidden_cap, label)
        specs.append(spec)
    try:
        return assemble(specs, storage=storage, sparse_threshold=sparse_threshold, where=str(path))
    except OptionError as exc:
        raise FormatError(str(exc), path=path) from None


def read_torch_file(path: str | os.PathLike, *, trust_pickle: bool = False, hidden_cap: float | None = None,
                    storage="auto", sparse_threshold: float = SPARSE_THRESHOLD) -> Network:
    """Read a ``.pt`` / ``.pth`` file (module docstring: what it may hold).

    Parameters
    ----------
    path : str or os.PathLike
    trust_pickle : bool
        Allow a whole pickled module (``torch.load(weights_only=False)``: runs code from
        the file; only for files you trust).
    hidden_cap : float, optional
        For a state dict: the cap of the ReLU after each hidden Linear (None: uncapped).
    storage, sparse_threshold
        As in :func:`from_torch`.

    Raises
    ------
    FormatError
        Not a torch file, or what it holds cannot be read (named).
    OptionError
        PyTorch is missing, or a pickled module without ``trust_pickle``.
    """
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file it cannot read safely
        if not trust_pickle:
            if "Unsupported global" in str(exc):    # a pickled object, not tensors
                raise OptionError(f"{path}: holds pickled Python objects (a whole module?); loading it runs "
                                  "code from the file: pass trust_pickle=True (--trust-pickle) if you trust it, "
                                  "or save model.state_dict() instead") from None
            raise FormatError(f"not a PyTorch file torch.load can read ({type(exc).__name__}: {exc})",
                              path=path) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise FormatError(f"not a PyTorch file torch.load can read ({type(exc2).__name__}: {exc2})",
                              path=path) from None
    if isinstance(obj, torch.nn.Module):
        try:
            return from_torch(obj, storage=storage, sparse_threshold=sparse_threshold, where=str(path))
        except OptionError as exc:
            raise FormatError(str(exc).removeprefix(f"{path}: "), path=path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):
        return _from_state_dict(obj, path, hidden_cap, storage, sparse_threshold)
    raise FormatError(f"holds a {type(obj).__name__}: expected an nn.Module or the state dict of an "
                      "nn.Sequential of nn.Linear layers", path=path)
