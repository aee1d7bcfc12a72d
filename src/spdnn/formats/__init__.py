"""Data sources and file formats: the official layout, MatrixMarket, features .npz, cache, download.

Re-exports only. Modules: :mod:`.text` (the line scanner shared by TSV and
MatrixMarket), :mod:`.tsv` (official tab-separated files, read and written),
:mod:`.mtx` (MatrixMarket), :mod:`.npz` (the features ``.npz`` layout),
:mod:`.sources` (row-range feature sources), :mod:`.networks` and :mod:`.features`
(streaming readers), :mod:`.official` (locating a whole problem), :mod:`.cache` (the
binary cache), :mod:`.download`.
"""
from __future__ import annotations

from .cache import cache_info, clear_cache
from .download import OFFICIAL_BASE_URL, OFFICIAL_MD5, download_file, download_official
from .mtx import read_mtx
from .npz import read_features_npz, write_features_npz
from .official import OfficialPaths, find_official, read_categories, read_features, read_network
from .sources import CsrSource, FeatureSource, HeadSource, NpzSource, as_source, save_npz_source
from .tsv import read_layer, write_categories, write_features_tsv, write_layer_tsv

__all__ = [
    "read_layer", "read_network", "read_features", "read_categories", "read_mtx",
    "write_layer_tsv", "write_features_tsv", "write_categories",
    "find_official", "OfficialPaths",
    "download_file", "download_official", "OFFICIAL_BASE_URL", "OFFICIAL_MD5",
    "cache_info", "clear_cache", "read_features_npz", "write_features_npz",
    "FeatureSource", "CsrSource", "NpzSource", "HeadSource", "as_source", "save_npz_source",
]
