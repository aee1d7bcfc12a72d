"""Data sources and file formats: the official layout, MatrixMarket, a binary cache, download.

Re-exports only; see :mod:`.tsv`, :mod:`.mtx`, :mod:`.official`, :mod:`.cache`,
:mod:`.download`.
"""
from __future__ import annotations

from .cache import cache_path
from .download import OFFICIAL_BASE_URL, OFFICIAL_MD5, download_file, download_official
from .mtx import read_mtx
from .official import OfficialPaths, find_official, read_categories, read_features, read_network
from .tsv import read_layer, write_categories, write_features_tsv, write_layer_tsv

__all__ = [
    "read_layer", "read_network", "read_features", "read_categories", "read_mtx",
    "write_layer_tsv", "write_features_tsv", "write_categories",
    "find_official", "OfficialPaths",
    "download_file", "download_official", "OFFICIAL_BASE_URL", "OFFICIAL_MD5",
    "cache_path",
]
