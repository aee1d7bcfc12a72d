"""spdnn's own model file (``.spdnn``): a whole network in one file, read memory-mapped.

Layout (all integers little-endian)::

    bytes 0..7     magic b"SPDNNMDL"
    bytes 8..15    uint64: H, the length of the JSON header
    bytes 16..     the header, UTF-8 JSON, padded with spaces so the arrays start at a
                   multiple of 64 bytes
    then           the arrays, raw, each at an offset that is a multiple of 64

The header::

    {"format": "spdnn-model", "version": 1, "size": <file bytes>,
     "widths": [n_0, ..., n_L],
     "layers": [{"storage": "sparse" | "dense", "shape": [n_in, n_out], "nnz": <stored weights>,
                 "bias_rule": "structural" | "dense", "activation": "relu" | "identity",
                 "cap": <float> | null,                       # null: none (and always for identity)
                 "indptr": ARRAY, "indices": ARRAY, "data": ARRAY,   # sparse: CSR, rows = inputs
                 "weights": ARRAY,                            # dense: row-major (n_in, n_out)
                 "bias": ARRAY}, ...],
     "metadata": {...}}                                       # free JSON: source, accuracy, ...

    ARRAY = {"offset": <bytes from the file's start>, "dtype": "<i4" | "<i8" | "<f8", "count": <items>}

``indptr`` and ``indices`` share one integer type (int32 where every count fits, else
int64), so scipy takes them without a copy; values are float64. Sparse layers are
canonical CSR (indices strictly ascending within a row).

:func:`load_model` validates everything before it builds the network (magic, version,
size, offsets, dtypes, counts, row pointers, index ranges and order, finite values,
caps) and raises :class:`~spdnn.errors.FormatError` naming the file and what is wrong;
the arrays of the network it returns map the file (no copy). :func:`save_model` writes
atomically (:mod:`spdnn._atomic`), one layer at a time.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_path
from ..errors import FormatError, OptionError
from ..network import ACTIVATIONS, BIAS_RULES, Network

__all__ = ["save_model", "load_model", "read_header", "MODEL_SUFFIX", "FORMAT_VERSION", "MAGIC"]

MAGIC = b"SPDNNMDL"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".spdnn"
_PREFIX = struct.Struct("<8sQ")
_ALIGN = 64
_MAX_HEADER = 64 << 20
_INDEX_TYPES = ("<i4", "<i8")
_INT32_MAX = np.iinfo(np.int32).max


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _layer_plan(w) -> tuple[str, int, str]:
    """(storage, stored weights, index dtype) of a layer."""
    if isinstance(w, np.ndarray):
        return "dense", int(w.size), ""
    m = w if sp.isspmatrix_csr(w) or isinstance(w, sp.csr_array) else sp.csr_matrix(w)
    small = max(int(m.nnz), int(m.shape[1])) <= _INT32_MAX
    return "sparse", int(m.nnz), "<i4" if small else "<i8"


def save_model(network: Network, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write ``network`` to ``path`` in spdnn's model format, atomically.

    Parameters
    ----------
    network : Network
        Any network: sparse or dense layers, any widths, rules, activations and caps
        (a :class:`~spdnn.network.LazyLayers` network is built one layer at a time, twice).
    path : str or os.PathLike
        Conventionally ending in ``.spdnn``.
    metadata : dict, optional
        JSON-serializable facts kept in the header (where the model came from, its accuracy).

    Returns
    -------
    pathlib.Path
    """
    if not isinstance(network, Network):
        raise OptionError(f"network: expected a spdnn.Network, got {type(network).__name__}")
    meta = {} if metadata is None else dict(metadata)
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"metadata: not JSON-serializable ({exc})") from None
    widths = list(network.widths)
    plans = [_layer_plan(network.layers[k]) for k in range(network.depth)]
    entries, sizes = [], []
    for k, (storage, nnz, itype) in enumerate(plans):
        rule = network.rule(k)
        entry = {"storage": storage, "shape": [widths[k], widths[k + 1]], "nnz": nnz,
                 "bias_rule": rule.bias_rule, "activation": rule.activation,
                 "cap": rule.cap if rule.activation == "relu" and math.isfinite(rule.cap) else None}
        arrays = ([("indptr", itype, widths[k] + 1), ("indices", itype, nnz), ("data", "<f8", nnz)]
                  if storage == "sparse" else [("weights", "<f8", widths[k] * widths[k + 1])])
        arrays.append(("bias", "<f8", widths[k + 1]))
        for name, dtype, count in arrays:
            entry[name] = {"offset": 0, "dtype": dtype, "count": count}
            sizes.append((k, name, np.dtype(dtype).itemsize * count))
        entries.append(entry)
    header = {"format": "spdnn-model", "version": FORMAT_VERSION, "size": 0, "widths": widths,
              "layers": entries, "metadata": meta}

    def encode() -> bytes:
        return json.dumps(header, separators=(",", ":")).encode("utf-8")

    # offsets depend on the header's length, which depends on the offsets' digits: lay out
    # with a generous header length, then pad the header to it
    room = _aligned(_PREFIX.size + len(encode()) + 24 * (len(sizes) + 1))
    offset = room
    for k, name, nbytes in sizes:
        entries[k][name]["offset"] = offset
        offset = _aligned(offset + nbytes)
    header["size"] = offset
    text = encode()
    text += b" " * (room - _PREFIX.size - len(text))
    path = Path(path)
    with atomic_path(path, size=offset) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, len(text)) + text)
            for k in range(network.depth):
                w = network.layers[k]
                entry = entries[k]
                if entry["storage"] == "sparse":
                    m = sp.csr_matrix(w)
                    if not m.has_canonical_format:
                        m = m.copy()
                        m.sum_duplicates()
                    parts = [("indptr", m.indptr), ("indices", m.indices), ("data", m.data)]
                else:
                    parts = [("weights", w)]
                parts.append(("bias", network.bias[k]))
                for name, values in parts:
                    spec = entry[name]
                    fh.write(b"\0" * (spec["offset"] - fh.tell()))
                    np.ascontiguousarray(values, dtype=spec["dtype"]).tofile(fh)
            fh.write(b"\0" * (offset - fh.tell()))
    return path


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a ``.spdnn`` file (magic, length and JSON checked; not the arrays).

    Raises :class:`FormatError` (naming the file) when it is not a model file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(_PREFIX.size)
            size = os.fstat(fh.fileno()).st_size
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                raise FormatError(f"not a spdnn model file (expected the magic bytes {MAGIC!r} at the start)",
                                  path=path)
            _, length = _PREFIX.unpack(prefix)
            if length > min(_MAX_HEADER, size - _PREFIX.size):
                raise FormatError(f"header length {length} runs past the end of the file ({size} bytes)", path=path)
            raw = fh.read(length)
    except IsADirectoryError:
        raise FormatError("is a directory, expected a .spdnn model file", path=path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"header is not UTF-8 JSON ({exc})", path=path) from None
    if not isinstance(header, dict) or header.get("format") != "spdnn-model":
        raise FormatError("header: expected a JSON object with \"format\": \"spdnn-model\"", path=path)
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise FormatError(f"format version {version!r}: this spdnn reads version {FORMAT_VERSION}"
                          + (" (written by a newer spdnn: upgrade)" if isinstance(version, int)
                             and version > FORMAT_VERSION else ""), path=path)
    if header.get("size") != size:
        raise FormatError(f"{size} bytes, the header says {header.get('size')!r} (truncated or appended to)",
                          path=path)
    header["_data_start"] = _PREFIX.size + length
    return header


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Validates the arrays of one file against its header and maps them."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header
        self.buffer = np.memmap(path, dtype=np.uint8, mode="r") if header["size"] else np.zeros(0, np.uint8)
        self.spans: list[tuple[int, int, str]] = []

    def fail(self, message: str):
        raise FormatError(message, path=self.path)

    def array(self, where: str, spec, dtypes: tuple, count: int) -> np.ndarray:
        if not isinstance(spec, dict):
            self.fail(f"{where}: missing or not an object")
        offset, dtype, items = spec.get("offset"), spec.get("dtype"), spec.get("count")
        if dtype not in dtypes:
            self.fail(f"{where}: dtype {dtype!r}, expected {' or '.join(dtypes)}")
        if not _int(items) or items != count:
            self.fail(f"{where}: count {items!r}, expected {count}")
        item = np.dtype(dtype).itemsize
        if not _int(offset) or offset < self.header["_data_start"] or offset % item:
            self.fail(f"{where}: offset {offset!r} is not an aligned position after the header")
        end = offset + item * count
        if end > self.header["size"]:
            self.fail(f"{where}: bytes {offset}..{end} run past the end of the file ({self.header['size']} bytes)")
        self.spans.append((offset, end, where))
        return self.buffer[offset:end].view(dtype)

    def check_overlaps(self) -> None:
        spans = sorted(s for s in self.spans if s[1] > s[0])
        for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
            if b0 < a1:
                self.fail(f"{b} overlaps {a} (bytes {b0} < {a1})")

    def finite(self, where: str, values: np.ndarray) -> None:
        if values.size and not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            self.fail(f"{where}: non-finite value {bad}")


def load_model(path: str | os.PathLike) -> Network:
    """Read a ``.spdnn`` model file; every array maps the file (no copy).

    Returns
    -------
    Network
        Its layers are CSR matrices and numpy arrays over a read-only memory map of the file.

    Raises
    ------
    FormatError
        The file is not a valid model file; the message names it and what is wrong
        (layer numbers 1-based).
    DataNotFoundError / OSError
        The file cannot be opened.
    """
    path = Path(path)
    if not path.exists():
        from ..errors import DataNotFoundError

        raise DataNotFoundError(f"{path}: no such model file")
    header = read_header(path)
    r = _Reader(path, header)
    widths, entries = header.get("widths"), header.get("layers")
    if not isinstance(entries, list) or not entries:
        r.fail("header: \"layers\" must be a non-empty list")
    if (not isinstance(widths, list) or len(widths) != len(entries) + 1
            or not all(_int(w) and w > 0 for w in widths)):
        r.fail(f"header: \"widths\" must be {len(entries) + 1} positive integers, got {widths!r:.80}")
    layers, biases, rules, acts, caps = [], [], [], [], []
    for k, e in enumerate(entries):
        where = f"layer {k + 1}"
        if not isinstance(e, dict):
            r.fail(f"{where}: not an object")
        n_in, n_out = widths[k], widths[k + 1]
        if e.get("shape") != [n_in, n_out]:
            r.fail(f"{where}: shape {e.get('shape')!r}, expected [{n_in}, {n_out}] from the widths")
        if e.get("bias_rule") not in BIAS_RULES:
            r.fail(f"{where}: bias_rule {e.get('bias_rule')!r}, expected one of {list(BIAS_RULES)}")
        if e.get("activation") not in ACTIVATIONS:
            r.fail(f"{where}: activation {e.get('activation')!r}, expected one of {list(ACTIVATIONS)}")
        cap = e.get("cap")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap)
                                or not cap > 0 or e["activation"] != "relu"):
            r.fail(f"{where}: cap {cap!r}, expected a positive number (ReLU only) or null for none")
        nnz = e.get("nnz")
        if e.get("storage") == "sparse":
            if not _int(nnz) or not 0 <= nnz <= n_in * n_out:
                r.fail(f"{where}: nnz {nnz!r}, expected 0..{n_in * n_out}")
            indptr = r.array(f"{where} indptr", e.get("indptr"), _INDEX_TYPES, n_in + 1)
            indices = r.array(f"{where} indices", e.get("indices"), _INDEX_TYPES, nnz)
            data = r.array(f"{where} data", e.get("data"), ("<f8",), nnz)
            if indptr.dtype != indices.dtype:
                r.fail(f"{where}: indptr ({indptr.dtype.str}) and indices ({indices.dtype.str}) differ in type")
            _check_csr(r, where, indptr, indices, n_out)
            r.finite(f"{where} data", data)
            m = sp.csr_matrix((data, indices, indptr), shape=(n_in, n_out))
            m.has_sorted_indices = True
            m.has_canonical_format = True
            layers.append(m)
        elif e.get("storage") == "dense":
            weights = r.array(f"{where} weights", e.get("weights"), ("<f8",), n_in * n_out)
            r.finite(f"{where} weights", weights)
            layers.append(weights.reshape(n_in, n_out))
        else:
            r.fail(f"{where}: storage {e.get('storage')!r}, expected 'sparse' or 'dense'")
        bias = r.array(f"{where} bias", e.get("bias"), ("<f8",), n_out)
        r.finite(f"{where} bias", bias)
        biases.append(bias)
        rules.append(e["bias_rule"])
        acts.append(e["activation"])
        caps.append(None if cap is None else float(cap))
    r.check_overlaps()
    try:
        return Network.from_layers(layers, bias=biases, bias_rule=rules, activation=acts, ymax=caps)
    except OptionError as exc:  # pragma: no cover - every field was checked above
        raise FormatError(str(exc), path=path) from None


def _check_csr(r: _Reader, where: str, indptr: np.ndarray, indices: np.ndarray, n_out: int) -> None:
    """Row pointers from 0 to nnz, never decreasing; column ids in [0, n_out), strictly
    ascending within each row."""
    nnz = indices.shape[0]
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
        r.fail(f"{where} indptr: runs from {int(indptr[0])} to {int(indptr[-1])}, expected 0 to nnz {nnz}")
    steps = np.diff(indptr)
    if steps.size and int(steps.min()) < 0:
        r.fail(f"{where} indptr: decreases after row {int(np.argmax(steps < 0)) + 1}")
    if nnz == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= n_out:
        r.fail(f"{where} indices: {low if low < 0 else high} is outside 0..{n_out - 1}")
    starts = np.zeros(nnz, dtype=bool)
    starts[indptr[:-1][steps > 0]] = True
    rising = np.diff(indices) > 0
    bad = ~(rising | starts[1:])
    if bad.any():
        at = int(np.argmax(bad)) + 1
        row = int(np.searchsorted(indptr, at, side="right")) - 1
        r.fail(f"{where} indices: not strictly ascending in row {row + 1} (column {int(indices[at])})")
