"""Binary cache of parsed data (``config.cache_dir()/"binary"``, honours ``SPDNN_CACHE_DIR``).

Text files are parsed once; the arrays are stored as an uncompressed ``.npz`` whose name
is a hash of a *key*: the source's resolved path, size and ``mtime_ns`` plus whatever
selects the content (requested layers, N, ...). A changed source gives a new key, so a
stale entry is never read. The key is also stored inside the file and compared on load;
an unreadable or mismatching entry is treated as absent (removed and rebuilt).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._atomic import atomic_path
from ..config import cache_dir

__all__ = ["CACHE_VERSION", "binary_cache_dir", "source_stamp", "cache_path", "save_arrays", "load_arrays",
           "save_layers", "load_layers", "save_csr", "load_csr"]

#: Bump when the stored layout changes; old entries are then ignored.
CACHE_VERSION = 1

_KEY_FIELD = "__key__"


def binary_cache_dir() -> Path:
    """The cache folder (not created here)."""
    return cache_dir() / "binary"


def source_stamp(path: str | os.PathLike) -> dict:
    """Identity of a source file: resolved path, size in bytes, ``mtime_ns``."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _key_text(kind: str, key: dict) -> str:
    return json.dumps({"kind": kind, "version": CACHE_VERSION, "key": key}, sort_keys=True, default=str)


def cache_path(kind: str, key: dict, group: dict | None = None) -> Path:
    """Path of the cache entry for ``key`` (a JSON-serializable dict) of a given ``kind``.

    Parameters
    ----------
    kind : str
        A short word ('network', 'features', ...) that prefixes the file name.
    key : dict
        Everything that determines the content (use :func:`source_stamp` for files).
    group : dict, optional
        The part of the key that names the source and the request without its
        version (e.g. the resolved path and the layers asked for). Entries of one group
        share a name prefix, and saving a new one removes the group's stale entries.
    """
    digest = hashlib.sha256(_key_text(kind, key).encode()).hexdigest()[:32]
    if group is None:
        return binary_cache_dir() / f"{kind}-{digest}.npz"
    return binary_cache_dir() / f"{kind}-{_group_prefix(kind, group)}-{digest}.npz"


def _group_prefix(kind: str, group: dict) -> str:
    return hashlib.sha256(_key_text(kind, group).encode()).hexdigest()[:16]


def save_arrays(kind: str, key: dict, arrays: dict[str, np.ndarray], group: dict | None = None) -> Path:
    """Store ``arrays`` under ``key`` atomically; returns the entry's path.

    With ``group``, older entries of the same group (a changed source) are removed.
    Failure to write (read-only or full disk) is not an error: the cache is an
    optimisation, and the entry is simply not created.
    """
    path = cache_path(kind, key, group)
    payload = dict(arrays)
    payload[_KEY_FIELD] = np.frombuffer(_key_text(kind, key).encode(), dtype=np.uint8)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **payload)
        if group is not None:
            for stale in path.parent.glob(f"{kind}-{_group_prefix(kind, group)}-*.npz"):
                if stale != path:
                    stale.unlink(missing_ok=True)
    except OSError:
        pass
    return path


def load_arrays(kind: str, key: dict, group: dict | None = None) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``key``, or None when absent, stale or unreadable (then removed)."""
    path = cache_path(kind, key, group)
    if not path.is_file():
        return None
    try:
        # Open the file here: np.load leaks its own handle when the archive is damaged.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            stored = bytes(z[_KEY_FIELD]).decode()
            if stored != _key_text(kind, key):
                raise ValueError("key mismatch")
            return {name: z[name] for name in z.files if name != _KEY_FIELD}
    except Exception:  # any damage means "not cached": rebuild from the source
        try:
            path.unlink()
        except OSError:
            pass
        return None


def save_layers(kind: str, key: dict, layers: list[sp.csr_matrix], layer_ids, group: dict | None = None) -> Path:
    """Store CSR layers (all (N, N)) as concatenated arrays: indptr/indices int32, data float64."""
    n = layers[0].shape[0]
    nnz = np.array([w.nnz for w in layers], dtype=np.int64)
    offsets = np.zeros(len(layers) + 1, np.int64)
    np.cumsum(nnz, out=offsets[1:])
    big = bool(nnz.max() > np.iinfo(np.int32).max)
    itype = np.int64 if big else np.int32
    indptr = np.stack([np.asarray(w.indptr, itype) for w in layers])
    arrays = {
        "indptr": indptr,
        "indices": np.concatenate([np.asarray(w.indices, np.int32) for w in layers]),
        "data": np.concatenate([np.asarray(w.data, np.float64) for w in layers]),
        "offsets": offsets,
        "layer_ids": np.asarray(layer_ids, np.int64),
        "neurons": np.array([n], np.int64),
    }
    return save_arrays(kind, key, arrays, group)


def load_layers(kind: str, key: dict, group: dict | None = None) -> tuple[list[sp.csr_matrix], np.ndarray] | None:
    """Layers stored by :func:`save_layers` (canonical CSR) and their 1-based ids, or None."""
    z = load_arrays(kind, key, group)
    if z is None:
        return None
    try:
        n = int(z["neurons"][0])
        offsets, indptr, indices, data = z["offsets"], z["indptr"], z["indices"], z["data"]
        layers = []
        for k in range(len(offsets) - 1):
            s, e = int(offsets[k]), int(offsets[k + 1])
            w = sp.csr_matrix((data[s:e], indices[s:e], indptr[k]), shape=(n, n))
            w.has_sorted_indices = True
            w.has_canonical_format = True
            layers.append(w)
        return layers, z["layer_ids"]
    except Exception:
        cache_path(kind, key, group).unlink(missing_ok=True)
        return None


def save_csr(kind: str, key: dict, m: sp.csr_matrix, group: dict | None = None) -> Path:
    """Store one CSR matrix (float64 data, int32 indices, int32/int64 indptr)."""
    return save_arrays(kind, key, {"indptr": m.indptr, "indices": m.indices, "data": m.data,
                                   "shape": np.asarray(m.shape, np.int64)}, group)


def load_csr(kind: str, key: dict, group: dict | None = None) -> sp.csr_matrix | None:
    """A matrix stored by :func:`save_csr`, or None."""
    z = load_arrays(kind, key, group)
    if z is None:
        return None
    try:
        m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(v) for v in z["shape"]))
        m.has_sorted_indices = True
        m.has_canonical_format = True
        return m
    except Exception:
        cache_path(kind, key, group).unlink(missing_ok=True)
        return None
