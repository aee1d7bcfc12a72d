"""The kept fuzzer (issue 19): property-based tests over every reader and writer of spdnn.

Each property starts from a small valid file (drawn by Hypothesis, written by spdnn's
own writer where it has one), damages it with the mutations of ``fuzzing.py``
(truncation, flipped bytes, deleted or duplicated lines, inserted long or non-ASCII
tokens, other number spellings, damaged gzip) and asserts one of:

* the reader succeeds and its result equals the reference parse of the same bytes
  (``fuzzing.ref_*``, written from the format description, not from the reader);
* the reader raises a :class:`~spdnn.errors.SpdnnError` whose short message names the file.

Never another exception, never a hang past ``fuzzing.TIME_BOUND_S`` (and Hypothesis'
deadline in the ``ci`` profile), never a partial file left in the cache or the
temporary folder. Neutral rewrites (lines in another order, other blanks, gzip or
not) must read exactly as the original. At the command line (``spdnn run --data``,
``spdnn verify``, through click's CliRunner as in ``test_cli.py``): exit 0 or 1 with a
verdict that agrees with the truth file (and the ids saved by ``--save-categories``), or
exit 2 with one ``spdnn: error:`` line naming the file; never exit 3 or a traceback, and
``--save-categories`` leaves no file on error.

Profiles (``conftest.py``): ``ci`` (default: few examples, derandomized, no database)
and ``long`` (``--hypothesis-profile long``; ``benchmarks/fuzz.py`` runs it for a wall
time and counts the inputs tried).

Adding a reader (say a new model format): append a :class:`Reader` to :data:`READERS`
with a strategy of valid files, the reader call and a reference parse; the generic
properties below then fuzz it.
"""
from __future__ import annotations

import gzip
import inspect
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from hypothesis import assume, event, example, given, note, settings
from hypothesis import strategies as st

import fuzzing as fz
from fuzzing import Invalid
from spdnn.errors import OptionError, SpdnnError
from spdnn.formats import (read_categories, read_features, read_features_npz, read_layer, read_mtx, read_network,
                           write_categories, write_features_npz, write_features_tsv, write_layer_tsv)
from spdnn.generate.mnist import load_mnist

#: A whole property's time bound (pytest-timeout); each input has its own (fuzzing.TIME_BOUND_S).
#: benchmarks/fuzz.py sets SPDNN_FUZZ_TEST_TIMEOUT=0 (none) for its long rounds.
pytestmark = pytest.mark.timeout(int(os.environ.get("SPDNN_FUZZ_TEST_TIMEOUT", "600")))

OFFICIAL_SAMPLES = 60000
#: Host memory the readers are told is available while fuzzed (spdnn.memory.check_fits).
HOST_BYTES = 512 << 20


# --- the session's folders: cache, temporary files, inputs ---------------------------------

@pytest.fixture(scope="module", autouse=True)
def folders(tmp_path_factory):
    """A private cache (SPDNN_CACHE_DIR) and temporary folder for the module, the input folder, and
    a host of :data:`HOST_BYTES` memory (as :mod:`spdnn.memory` sees it)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tmp").mkdir()
    (root / "in").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPDNN_CACHE_DIR", str(root / "cache"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        # a file declaring a huge matrix must be refused before it is built, on any host
        mp.setattr("spdnn.memory.host_available_bytes", lambda: HOST_BYTES)
        _warm_up(root)
        yield root


def _warm_up(root: Path) -> None:
    """Read one small file of each kind once, so that compiling the readers' numba code (a
    fresh clone has no cache of it) does not count against the first example's deadline."""
    folder = root / "warm-up"
    folder.mkdir()
    m = sp.csr_matrix(np.array([[1.0, 0.0], [0.5, 1.0]]))
    write_layer_tsv(folder / "n2-l1.tsv.gz", m)
    read_layer(folder / "n2-l1.tsv.gz")
    write_features_tsv(folder / "f.tsv", m)
    read_features(folder / "f.tsv", samples=2, progress=False)
    (folder / "f.mtx").write_bytes(b"%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 1.5e0x\n")
    with pytest.raises(SpdnnError):
        read_mtx(folder / "f.mtx")
    write_features_npz(folder / "f.npz", m)
    read_features_npz(folder / "f.npz")
    write_categories(folder / "c.tsv", [1, 2])
    read_categories(folder / "c.tsv")
    shutil.rmtree(folder)


def leftovers(root: Path) -> list[str]:
    """Partial outputs: anything in the temporary folder, or a scratch folder in the cache."""
    left = [p.name for p in (root / "tmp").iterdir()]
    scratch = root / "cache" / "binary"
    left += [str(p) for p in scratch.glob("v*/tmp/*")]
    return left


def write_input(root: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``name`` in a fresh folder (inputs never share a path, so one example's
    cache entry can never answer for another's bytes)."""
    folder = Path(tempfile.mkdtemp(dir=root / "in"))
    path = folder / name
    path.write_bytes(data)
    return path


# --- one strategy per format: small valid files --------------------------------------------

#: Weights drawn for layers: the official 1/16, signs, zeros, tiny and large magnitudes.
WEIGHTS = st.one_of(st.sampled_from([0.0625, -0.3, 0.0, -0.0, 1.0, 1e-7, 5e-324, 3.0e38, 1e300, -2.5]),
                    st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def sparse_matrices(draw, *, rows=(1, 8), cols=(1, 8), values=WEIGHTS, max_entries=24) -> sp.csr_matrix:
    """A small sparse matrix (explicit zeros possible), float64 CSR."""
    n_rows, n_cols = draw(st.integers(*rows)), draw(st.integers(*cols))
    cells = draw(st.sets(st.tuples(st.integers(0, n_rows - 1), st.integers(0, n_cols - 1)), min_size=1,
                         max_size=max_entries))
    r, c = zip(*sorted(cells))
    v = [draw(values) for _ in r]
    return sp.csr_matrix((np.array(v, np.float64), (np.array(r), np.array(c))), shape=(n_rows, n_cols))


def _written(writer, matrix, name: str) -> bytes:
    """The bytes spdnn's ``writer`` gives for ``matrix`` (plain text: ``name`` without .gz)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        writer(path, matrix)
        return path.read_bytes()


@st.composite
def layer_files(draw) -> bytes:
    """An official layer file ``row \\t col \\t value`` (written by write_layer_tsv)."""
    n = draw(st.integers(1, 8))
    return _written(write_layer_tsv, draw(sparse_matrices(rows=(n, n), cols=(n, n))), "l.tsv")


@st.composite
def feature_files(draw) -> bytes:
    """Features ``sample \\t feature \\t value`` (written by write_features_tsv): mostly ones."""
    values = st.one_of(st.just(1.0), st.just(1.0), WEIGHTS)
    return _written(write_features_tsv, draw(sparse_matrices(values=values)), "f.tsv")


@st.composite
def mtx_files(draw) -> bytes:
    """A coordinate MatrixMarket file: pattern, real or integer, comment lines, rows in any order."""
    m = sp.coo_matrix(draw(sparse_matrices(values=st.sampled_from([1.0, 2.0, -3.0, 0.5]))))
    kind = draw(st.sampled_from(["pattern", "real", "integer"]))
    comments = draw(st.lists(st.sampled_from([b"% a comment", b"%", b"%%more"]), max_size=2))
    out = [f"%%MatrixMarket matrix coordinate {kind} general".encode(), *comments,
           f"{m.shape[0]} {m.shape[1]} {m.nnz}".encode()]
    for r, c, v in zip(m.row.tolist(), m.col.tolist(), m.data.tolist()):
        value = "" if kind == "pattern" else f" {int(v)}" if kind == "integer" else f" {v!r}"
        out.append(f"{r + 1} {c + 1}{value}".encode())
    order = draw(st.permutations(out[len(comments) + 2:]))
    return b"\n".join(out[:len(comments) + 2] + list(order)) + b"\n"


@st.composite
def id_files(draw) -> bytes:
    """A categories file: one 1-based id a line (written by write_categories)."""
    ids = draw(st.sets(st.integers(1, 30), max_size=12))
    return _written(write_categories, sorted(ids), "c.tsv")


@st.composite
def id_mtx_files(draw) -> bytes:
    """Categories as a MatrixMarket pattern vector (column ``S x 1`` or row ``1 x S``)."""
    samples = draw(st.integers(1, 40))
    ids = sorted(draw(st.sets(st.integers(1, samples), max_size=10)))
    column = draw(st.booleans())
    size = f"{samples} 1" if column else f"1 {samples}"
    body = "".join(f"{i} 1\n" if column else f"1 {i}\n" for i in ids)
    return f"%%MatrixMarket matrix coordinate pattern general\n{size} {len(ids)}\n{body}".encode()


@st.composite
def npz_files(draw) -> bytes:
    """A features .npz (write_features_npz): with or without ``data``."""
    m = draw(sparse_matrices(values=st.one_of(st.just(1.0), WEIGHTS)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.npz"
        write_features_npz(path, m, values=draw(st.sampled_from([None, True])))
        return path.read_bytes()


@st.composite
def idx_files(draw) -> bytes:
    """An IDX file of unsigned bytes in 3 dimensions (MNIST's layout), a few tiny images."""
    count, rows, cols = draw(st.integers(0, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    header = b"".join(v.to_bytes(4, "big") for v in (0x803, count, rows, cols))
    return header + draw(st.binary(min_size=count * rows * cols, max_size=count * rows * cols))


# --- reference parses ----------------------------------------------------------------------

def ref_layer(raw: bytes, neurons: int | None):
    rows, cols, vals = fz.ref_triples(fz.ref_decompress(raw), (neurons, neurons))
    if rows.size == 0:
        raise Invalid("empty layer")
    n = neurons or int(max(rows.max(), cols.max()))
    return fz.to_csr(rows, cols, vals, (n, n))


def ref_features(raw: bytes, neurons: int | None, samples: int | None, mtx: bool):
    text = fz.ref_decompress(raw)
    if mtx:
        rows, cols, nnz, kind, body = fz.ref_mtx(text)
        if (neurons is not None and cols != neurons) or (samples is not None and rows != samples):
            raise Invalid("declared shape differs")
        r, c, v = fz.ref_triples(body, (rows, cols), values=kind != "pattern")
        if r.size != nnz:
            raise Invalid("entry count")
        return fz.to_csr(r, c, v, (rows, cols))
    rows = samples or OFFICIAL_SAMPLES
    r, c, v = fz.ref_triples(text, (rows, neurons))
    if r.size == 0:
        raise Invalid("empty features")
    return fz.to_csr(r, c, v, (rows, neurons or int(c.max())))


def ref_categories(raw: bytes, samples: int | None, mtx: bool) -> np.ndarray:
    text = fz.ref_decompress(raw)
    if not mtx:
        return fz.ref_ids(text, samples)
    rows, cols, nnz, kind, body = fz.ref_mtx(text)
    r, c, _ = fz.ref_triples(body, (rows, cols), values=kind != "pattern")
    if r.size != nnz:
        raise Invalid("entry count")
    if cols == 1:
        ids = r
    elif rows == 1:
        ids = c
    else:
        raise Invalid("not a vector")
    if len(set(ids.tolist())) != ids.size or (samples is not None and ids.size and ids.max() > samples):
        raise Invalid("duplicate or beyond samples")
    return np.sort(ids)


def ref_npz(raw: bytes, neurons: int | None):
    """A features .npz read with zipfile and numpy, validated as a canonical CSR matrix.

    The zip CRC is checked for compressed members only: spdnn maps stored members without
    reading them (a byte changed inside an array reads as another value, or fails the
    structural checks), so the reference reads what is stored, as it is.
    """
    import zipfile

    arrays = {"data": None}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            for name in ("indptr", "indices", "shape", "data"):
                if name == "data" and "data.npy" not in zf.namelist():
                    continue
                info = zf.getinfo(name + ".npy")
                with zf.open(info) as fh:
                    if info.compress_type == zipfile.ZIP_STORED:
                        fh._expected_crc = None  # not checked: see the docstring
                    member = fh.read()
                stream = io.BytesIO(member)
                np.lib.format.read_magic(stream)
                stream.seek(0)
                arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
                if stream.tell() != len(member):  # bytes after the array: not what numpy writes
                    raise Invalid("member size")
    except Invalid:
        raise
    except Exception as exc:  # anything zipfile or numpy refuse
        raise Invalid(f"zip/npy: {type(exc).__name__}") from None
    return _checked_csr(arrays, neurons)


def _checked_csr(arrays, neurons):
    indptr, indices, shape, data = arrays["indptr"], arrays["indices"], arrays["shape"], arrays["data"]
    for a in (indptr, indices, shape) + (() if data is None else (data,)):
        if a.ndim != 1 or a.dtype.kind not in "iuf" or (a is not data and a.dtype.kind == "f"):
            raise Invalid("member type")
    if shape.size != 2 or shape.min() < 0 or (neurons is not None and shape[1] != neurons):
        raise Invalid("shape")
    samples, n = int(shape[0]), int(shape[1])
    if (indptr.size != samples + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
            or indptr[-1] != indices.size or (data is not None and data.size != indices.size)):
        raise Invalid("indptr")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise Invalid("indices out of range")
    for i in range(samples):
        row = indices[indptr[i]:indptr[i + 1]]
        if np.any(np.diff(row) <= 0):
            raise Invalid("row not sorted or duplicate")
    values = np.ones(indices.size) if data is None else data.astype(np.float64)
    return sp.csr_matrix((values, indices, indptr), shape=(samples, n))


# --- the readers under fuzz ----------------------------------------------------------------

@dataclass(frozen=True)
class Reader:
    """One reader under fuzz.

    ``valid``: strategy of valid files (plain bytes; ``gzip`` compresses them).
    ``options``: strategy of the reader's keyword arguments. ``read(path, **options)``
    is the reader; ``reference(raw_bytes, **options)`` the expected result (or
    :class:`Invalid`); ``same`` compares two results. ``neutral(raw)``: a strategy of
    rewrites that read exactly as ``raw`` (None: none). ``ordinary(expected)``: whether
    a valid input's reference result is one the reader must accept (values a later
    spec may narrow, such as weights beyond float32, are allowed to be refused).
    """

    name: str
    filename: str
    valid: st.SearchStrategy
    read: Callable
    reference: Callable
    options: st.SearchStrategy = field(default_factory=lambda: st.just({}))
    same: Callable = fz.same_matrix
    gzip: bool = False
    text: bool = True
    neutral: Callable | None = None
    ordinary: Callable = lambda expected: True


def _ordinary_matrix(m) -> bool:
    """Finite values within float32's range: refusing them is a reader's error."""
    data = np.asarray(sp.csr_matrix(m).data)
    return bool(np.all(np.abs(data) <= np.finfo(np.float32).max))


def _ordinary_features(m) -> bool:
    return bool(np.all(np.asarray(sp.csr_matrix(m).data) == 1.0))


def _same_ids(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.int64), np.asarray(b, np.int64))


def _same_images(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


_LAYER_OPTIONS = st.fixed_dictionaries({"neurons": st.sampled_from([None, 8])})
_FEATURE_OPTIONS = st.fixed_dictionaries({"neurons": st.sampled_from([None, 8]),
                                          "samples": st.sampled_from([None, 8]), "cache": st.booleans()})
_MTX_FEATURE_OPTIONS = st.fixed_dictionaries({"neurons": st.sampled_from([None]),
                                              "samples": st.sampled_from([None]), "cache": st.booleans()})


def _layer_neutral(raw):
    return st.one_of(fz.reordered_lines(raw), fz.respaced(raw))


def _mtx_neutral(raw):
    head = 1 + next(i for i, line in enumerate(raw.split(b"\n")[1:]) if not line.startswith(b"%")) + 1
    return fz.reordered_lines(raw, keep=head)


@st.composite
def _npz_neutral(draw, raw: bytes) -> bytes:
    """The same arrays compressed, in another member order, with int32 row pointers, or with a member more."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    if draw(st.booleans()) and arrays["indptr"].max(initial=0) < 2**31:
        arrays["indptr"] = arrays["indptr"].astype(np.int32)
    if draw(st.booleans()):
        arrays["__extra__"] = np.arange(3)
    order = draw(st.permutations(sorted(arrays)))
    out = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(out, **{k: arrays[k] for k in order})
    return out.getvalue()


def _features(path, **options):
    return read_features(path, progress=False, **options)


#: THE LIST OF READERS UNDER FUZZ. A new format (a single-file spdnn network, PyTorch or
#: ONNX importers, .npy inputs) is added here: a Reader with a strategy of small valid
#: files, the reader call and a reference parse of the bytes.
READERS = [
    Reader("layer-tsv", "n8-l1.tsv", layer_files(), read_layer,
           lambda raw, neurons=None: ref_layer(raw, neurons), options=_LAYER_OPTIONS, neutral=_layer_neutral,
           ordinary=_ordinary_matrix),
    Reader("layer-tsv-gz", "n8-l1.tsv.gz", layer_files(), read_layer,
           lambda raw, neurons=None: ref_layer(raw, neurons), options=_LAYER_OPTIONS, gzip=True,
           neutral=_layer_neutral, ordinary=_ordinary_matrix),
    Reader("features-tsv", "sparse-images-8.tsv", feature_files(), _features,
           lambda raw, neurons=None, samples=None, cache=True: ref_features(raw, neurons, samples, False),
           options=_FEATURE_OPTIONS, neutral=_layer_neutral, ordinary=_ordinary_features),
    Reader("features-tsv-gz", "sparse-images-8.tsv.gz", feature_files(), _features,
           lambda raw, neurons=None, samples=None, cache=True: ref_features(raw, neurons, samples, False),
           options=_FEATURE_OPTIONS, gzip=True, neutral=_layer_neutral, ordinary=_ordinary_features),
    Reader("features-mtx", "sparse-images-8.mtx", mtx_files(), _features,
           lambda raw, neurons=None, samples=None, cache=True: ref_features(raw, neurons, samples, True),
           options=_MTX_FEATURE_OPTIONS, neutral=_mtx_neutral, ordinary=_ordinary_matrix),
    Reader("features-mtx-gz", "sparse-images-8.mtx.gz", mtx_files(), _features,
           lambda raw, neurons=None, samples=None, cache=True: ref_features(raw, neurons, samples, True),
           options=_MTX_FEATURE_OPTIONS, gzip=True, neutral=_mtx_neutral, ordinary=_ordinary_matrix),
    Reader("matrix-mtx", "m.mtx", mtx_files(), read_mtx, lambda raw: ref_features(raw, None, None, True),
           neutral=_mtx_neutral, ordinary=_ordinary_matrix),
    Reader("features-npz", "f.npz", npz_files(), read_features_npz,
           lambda raw, neurons=None: ref_npz(raw, neurons), options=st.fixed_dictionaries(
               {"neurons": st.sampled_from([None, 8])}), text=False, ordinary=_ordinary_matrix,
           neutral=_npz_neutral),
    Reader("categories-tsv", "neuron8-l2-categories.tsv", id_files(), read_categories,
           lambda raw, samples=None: ref_categories(raw, samples, False),
           options=st.fixed_dictionaries({"samples": st.sampled_from([None, 30])}), same=_same_ids,
           neutral=lambda raw: st.one_of(fz.reordered_lines(raw), fz.respaced(raw))),
    Reader("categories-mtx", "neuron8-l2-categories.mtx", id_mtx_files(), read_categories,
           lambda raw, samples=None: ref_categories(raw, samples, True),
           options=st.fixed_dictionaries({"samples": st.sampled_from([None, 30])}), same=_same_ids,
           neutral=_mtx_neutral),
    Reader("mnist-idx", "images-idx3-ubyte", idx_files(), load_mnist, fz.ref_idx, same=_same_images, text=False,
           neutral=lambda raw: st.just(gzip.compress(raw, mtime=0))),
    Reader("mnist-idx-gz", "images-idx3-ubyte.gz", idx_files(), load_mnist, fz.ref_idx, same=_same_images,
           gzip=True, text=False),
]


def _check(case: Reader, folders: Path, raw: bytes, options: dict, *, path: Path | None = None):
    """The property of every reader: a right result or a SpdnnError naming the file; nothing left behind."""
    path = path or write_input(folders, case.filename, raw)
    got = fz.outcome(case.read, path, **options)
    try:
        want = case.reference(raw, **options)
    except Invalid as why:
        want = why
    note(f"reader: {got!r}\nreference: {want!r}")
    event("refused" if isinstance(got, SpdnnError) else "read")
    assert not leftovers(folders), f"partial output left behind: {leftovers(folders)}"
    if isinstance(want, fz.Huge):  # too large to compare here: either outcome, as long as it is clean
        assert not isinstance(got, SpdnnError) or fz.message_ok(got, path), got
        return got
    if isinstance(got, SpdnnError):
        assert fz.message_ok(got, path), f"the message does not name {path.name} (or is too long): {got}"
        assert isinstance(want, Invalid) or not case.ordinary(want), (
            f"refused a valid input: {got}")
        return got
    assert not isinstance(want, Invalid), f"read an invalid input ({want}) without an error"
    assert case.same(got, want), "the result differs from the reference parse"
    return got


def _compress(case: Reader, text: bytes) -> bytes:
    return gzip.compress(text, mtime=0) if case.gzip else text


@pytest.mark.parametrize("case", READERS, ids=[r.name for r in READERS])
@given(data=st.data())
def test_mutated_file_reads_right_or_is_refused(case, data, folders):
    """A mutated valid file gives the reference result, or a SpdnnError naming the file."""
    text = data.draw(case.valid, label="valid file")
    mutated = data.draw(fz.mutated(text) if case.text else fz.mutated(text, max_ops=2), label="mutated")
    options = data.draw(case.options, label="options")
    _check(case, folders, _compress(case, mutated), options)


@pytest.mark.parametrize("case", [r for r in READERS if r.gzip], ids=[r.name for r in READERS if r.gzip])
@given(data=st.data())
def test_damaged_compression_is_refused(case, data, folders):
    """gzip damage (truncation, flipped bytes, trailing garbage, another member) is refused or harmless."""
    text = data.draw(case.valid, label="valid file")
    raw = data.draw(fz.damaged_gzip(gzip.compress(text, mtime=0)), label="damaged gzip")
    _check(case, folders, raw, data.draw(case.options, label="options"))


@pytest.mark.parametrize("case", [r for r in READERS if r.neutral], ids=[r.name for r in READERS if r.neutral])
@given(data=st.data())
def test_neutral_rewrite_reads_the_same(case, data, folders):
    """Lines in another order, other blanks, gzip or not: the same result as the original bytes."""
    text = data.draw(case.valid, label="valid file")
    options = data.draw(case.options, label="options")
    try:
        case.reference(_compress(case, text), **options)
    except Invalid:
        assume(False)  # options the file does not meet (neurons=8 for a file of other N)
    original = fz.outcome(case.read, write_input(folders, case.filename, _compress(case, text)), **options)
    assert not isinstance(original, (SpdnnError, str)), f"valid file refused: {original}"
    rewritten = _compress(case, data.draw(case.neutral(text), label="rewrite"))
    assert case.same(fz.outcome(case.read, write_input(folders, case.filename, rewritten), **options), original)


# --- writers: what they write reads back the same ------------------------------------------

@given(m=sparse_matrices(rows=(1, 8), cols=(1, 8)), gz=st.booleans())
@example(m=sp.csr_matrix((np.array([-0.0, 0.0]), (np.array([0, 0]), np.array([0, 1]))), shape=(2, 2)), gz=False)
def test_layer_writer_round_trip(m, gz, folders):
    """write_layer_tsv then read_layer: the same matrix, value bits included (-0.0, subnormals, 1e300).

    Found by the fuzzer (the @example): a layer holding both 0.0 and -0.0 was written with one
    sign for both (the distinct values were found by value, not by bits)."""
    n = max(m.shape)
    m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=m.shape)
    m.resize((n, n))
    path = folders / "in" / ("w.tsv.gz" if gz else "w.tsv")
    write_layer_tsv(path, m)
    fz.count_example()
    text = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    note(f"matrix: {sp.coo_matrix(m)!r} {m.data.tolist()}\nfile: {text!r}")
    assert fz.same_matrix(read_layer(path, n), m)


@given(m=sparse_matrices(values=st.one_of(st.just(1.0), WEIGHTS)), gz=st.booleans())
def test_features_writers_round_trip(m, gz, folders):
    """write_features_tsv and write_features_npz then read_features / read_features_npz: the same matrix."""
    fz.count_example()
    path = write_input(folders, "sparse-images-8.tsv.gz" if gz else "sparse-images-8.tsv", b"")
    write_features_tsv(path, m)
    assert fz.same_matrix(read_features(path, m.shape[1], samples=m.shape[0], progress=False), m)
    npz = path.with_name("f.npz")
    write_features_npz(npz, m)
    assert fz.same_matrix(read_features_npz(npz, m.shape[1]), m)


@given(ids=st.lists(st.integers(1, 2**31 - 1), max_size=20))
@example(ids=[2**31 - 1])
def test_categories_writer_round_trip(ids, folders):
    """write_categories then read_categories: the sorted unique ids."""
    fz.count_example()
    path = folders / "in" / "c.tsv"
    write_categories(path, ids)
    assert _same_ids(read_categories(path), sorted(set(ids)))


def test_categories_writer_refuses_what_cannot_be_read_back(folders):
    """Found by the fuzzer: ids beyond 2**31 - 1 were written, then refused by every reader."""
    with pytest.raises(OptionError, match="2147483648"):
        write_categories(folders / "in" / "big.tsv", [1, 2**31])
    assert not (folders / "in" / "big.tsv").exists()


# --- official tarballs: neuron{N}.tar.gz read member by member ------------------------------

def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar archive of (name, bytes, kind) members; kind 'file', 'dir' or 'symlink'."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@st.composite
def tarball_members(draw):
    """(N, members) of a small valid archive: layers 1..L of N as neuron{N}/n{N}-l{k}.tsv (some gzipped)."""
    n, depth = draw(st.integers(2, 6)), draw(st.integers(1, 3))
    members = []
    for k in range(1, depth + 1):
        text = _written(write_layer_tsv, draw(sparse_matrices(rows=(n, n), cols=(n, n))), "l.tsv")
        if draw(st.integers(0, 3)) == 0:
            members.append((f"neuron{n}/n{n}-l{k}.tsv.gz", gzip.compress(text, mtime=0), "file"))
        else:
            members.append((f"neuron{n}/n{n}-l{k}.tsv", text, "file"))
    return n, members


@st.composite
def restructured(draw, n: int, members: list):
    """Members dropped, renamed to a gap or another N, or joined by directories, symlinks, other files."""
    members = list(members)
    kind = draw(st.sampled_from(["drop", "gap", "other-n", "dir", "symlink", "junk", "reorder"]))
    if kind == "drop":
        del members[draw(st.integers(0, len(members) - 1))]
    elif kind == "gap":
        i = draw(st.integers(0, len(members) - 1))
        members[i] = (f"neuron{n}/n{n}-l{len(members) + 2}.tsv", members[i][1], "file")
    elif kind == "other-n":
        members.append((f"neuron{n + 1}/n{n + 1}-l1.tsv", b"1\t1\t1\n", "file"))
    elif kind == "dir":
        members.insert(0, (f"neuron{n}/n{n}-l{len(members) + 1}.tsv", None, "dir"))
    elif kind == "symlink":
        members.append((f"neuron{n}/n{n}-l{len(members) + 1}.tsv", None, "symlink"))
    elif kind == "junk":
        members.insert(draw(st.integers(0, len(members))), ("neuron/README", b"\x00\xff junk", "file"))
    else:
        members = list(draw(st.permutations(members)))
    return members


_LAYER_MEMBER = re.compile(r"(?:^|/)n(\d+)-l(\d+)\.tsv(\.gz)?$")


def ref_network(raw: bytes, n: int) -> list:
    """Layers 1..L of an archive read with Python's tarfile (not streamed) and the reference layer parse."""
    blocks = fz.ref_decompress(raw)
    try:
        with tarfile.open(fileobj=io.BytesIO(blocks), mode="r:") as tar:
            members = [(m.name, m.isfile(), tar.extractfile(m).read() if m.isfile() else None)
                       for m in tar.getmembers()]
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Invalid(f"tar: {exc}") from None
    if blocks[end:end + 512] != bytes(512):  # tarfile stops quietly at a bad header: the archive ends with zeros
        raise Invalid("no end-of-archive block")
    layers = {}
    for name, isfile, data in members:
        m = _LAYER_MEMBER.search(name)
        if not m or not isfile or int(m.group(1)) != n:
            continue
        k = int(m.group(2))
        if k in layers:
            raise Invalid(f"layer {k} held twice")
        layers[k] = ref_layer(data, n)
    if not layers or sorted(layers) != list(range(1, max(layers) + 1)):
        raise Invalid("layers missing")
    return [layers[k] for k in sorted(layers)]


def _network_layers(path, cache):
    net = read_network(path, bias=-0.3, cache=cache, progress=False)
    return [sp.csr_matrix(w) for w in net.layers]


@given(data=st.data())
@settings(max_examples=settings().max_examples * 2)
def test_tarball_mutations(data, folders):
    """neuron{N}.tar.gz with a damaged member, damaged tar blocks, damaged gzip or other members:
    the layers of the reference reading, or a SpdnnError naming the archive."""
    n, members = data.draw(tarball_members(), label="archive")
    how = data.draw(st.sampled_from(["member", "structure", "tar-bytes", "gzip"]), label="damage")
    if how == "member":
        i = data.draw(st.integers(0, len(members) - 1), label="member")
        name, text, kind = members[i]
        if name.endswith(".gz"):
            text = gzip.decompress(text)
        members[i] = (name, data.draw(fz.mutated(text), label="member text"), kind)
    elif how == "structure":
        members = data.draw(restructured(n, members), label="members")
    raw = _tar(members)
    if how == "tar-bytes":
        raw = data.draw(fz.mutated(raw, max_ops=2), label="tar bytes")
    raw = gzip.compress(raw, mtime=0)
    if how == "gzip":
        raw = data.draw(fz.damaged_gzip(raw), label="damaged gzip")
    path = write_input(folders, f"neuron{n}.tar.gz", raw)
    got = fz.outcome(_network_layers, path, data.draw(st.booleans(), label="cache"))
    try:
        want = ref_network(raw, n)
    except Invalid as why:
        want = why
    note(f"reader: {got!r}\nreference: {want!r}")
    assert not leftovers(folders), leftovers(folders)
    if isinstance(got, SpdnnError):
        assert fz.message_ok(got, path), f"the message does not name {path.name}: {got}"
        assert isinstance(want, Invalid) or not all(_ordinary_matrix(w) for w in want), (
            f"refused a valid archive: {got}")
        return
    assert not isinstance(want, Invalid), f"read an invalid archive ({want}) without an error"
    assert len(got) == len(want) and all(fz.same_matrix(a, b) for a, b in zip(got, want))


# --- the command line: spdnn run --data DIR, spdnn verify ----------------------------------

def main_cli():
    """The ``spdnn`` click group (imported late, as test_cli.py does)."""
    from spdnn.cli import cli

    return cli


def _runner() -> CliRunner:
    """A CliRunner keeping stderr apart from stdout (click 8.1 needs mix_stderr=False)."""
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    return CliRunner(**kwargs)


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory):
    """A small data set in the official layout, N = 1024 (the official bias), 2 layers, 40 samples,
    truth computed by the reference engine, and the generator's .json beside the truth; as
    {'folder': the layout with neuron1024/, 'archive': the same with neuron1024.tar.gz}."""
    from factories import random_features
    from spdnn import infer
    from spdnn.network import Network

    rng = np.random.default_rng(19)
    n, depth, samples = 1024, 2, 40
    root = tmp_path_factory.mktemp("layout") / "data"
    (root / f"neuron{n}").mkdir(parents=True)
    layers = [sp.random(n, n, density=32 / n, format="csr", random_state=rng) for _ in range(depth)]
    for k, w in enumerate(layers, 1):
        w.data[:] = 0.0625
        write_layer_tsv(root / f"neuron{n}" / f"n{n}-l{k}.tsv", w)
    x = random_features(rng, samples, n, 0.3)
    write_features_tsv(root / f"sparse-images-{n}.tsv.gz", x)
    truth = infer(Network.from_layers(layers, -0.3), x, engine="reference").categories
    write_categories(root / f"neuron{n}-l{depth}-categories.tsv", truth)
    info = {"bias": -0.3, "neurons": n, "layers": depth, "samples": samples, "seed": 0, "features_nnz": int(x.nnz)}
    (root / f"neuron{n}-l{depth}-categories.json").write_text(json.dumps(info, indent=2) + "\n")
    assert len(truth), "the small data set needs some categories"
    archived = root.with_name("data-archive")
    shutil.copytree(root, archived, ignore=shutil.ignore_patterns(f"neuron{n}"))
    with tarfile.open(archived / f"neuron{n}.tar.gz", "w:gz") as tar:
        tar.add(root / f"neuron{n}", arcname=f"neuron{n}")
    return {"folder": root, "archive": archived}


#: The files of the layout that ``spdnn run --data`` reads, as (name, kind of mutation).
LAYOUT_FILES = [("neuron1024/n1024-l1.tsv", "text"), ("neuron1024/n1024-l2.tsv", "text"),
                ("sparse-images-1024.tsv.gz", "gzip"), ("neuron1024-l2-categories.tsv", "text"),
                ("neuron1024-l2-categories.json", "json")]
#: The same with the network as an archive.
ARCHIVE_LAYOUT_FILES = [("neuron1024.tar.gz", "archive"), *LAYOUT_FILES[2:]]

_JSON_LEAVES = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8)
#: Values a key of the generator's .json is set to: wrong types, signs, sizes, containers.
JSON_VALUES = _JSON_LEAVES | st.lists(_JSON_LEAVES, max_size=3) | st.dictionaries(st.text(max_size=5), _JSON_LEAVES,
                                                                                  max_size=3)


@st.composite
def json_mutated(draw, text: bytes) -> bytes:
    """The generator's .json with a key set to another JSON value, a key dropped, or damaged bytes."""
    how = draw(st.sampled_from(["set", "drop", "bytes", "not-an-object"]))
    if how == "bytes":
        return draw(fz.mutated(text, max_ops=2))
    info = json.loads(text)
    if how == "not-an-object":
        return json.dumps(draw(JSON_VALUES)).encode()
    key = draw(st.sampled_from(sorted(info)))
    if how == "drop":
        del info[key]
    else:
        info[key] = draw(JSON_VALUES)
    return json.dumps(info).encode()


def _stderr_lines(result) -> list[str]:
    """stderr's lines but spdnn's one-line warnings (a cache that cannot be written, say)."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("spdnn: warning: ")]


def _named(line: str, names) -> bool:
    return any(os.path.basename(name) in line for name in names)


@given(data=st.data())
def test_cli_run_with_a_mutated_file(data, official_layout, folders):
    """``spdnn run --data DIR`` with one file of the layout mutated: exit 0 or 1 with a consistent
    verdict, or exit 2 and one ``spdnn: error:`` line naming the file; no --save-categories file
    on error; never exit 3 or a traceback."""
    layout = data.draw(st.sampled_from(["folder", "archive"]), label="layout")
    name, kind = data.draw(st.sampled_from(LAYOUT_FILES if layout == "folder" else ARCHIVE_LAYOUT_FILES),
                           label="file")
    folder = Path(tempfile.mkdtemp(dir=folders / "in"))
    root = folder / "data"
    shutil.copytree(official_layout[layout], root, copy_function=os.link)
    target = root / name
    original = target.read_bytes()
    if kind == "json":
        raw = data.draw(json_mutated(original), label="json")
    elif kind == "archive" and data.draw(st.booleans(), label="damage the gzip"):
        raw = data.draw(fz.damaged_gzip(original), label="gzip bytes")
    elif kind == "archive":
        raw = gzip.compress(data.draw(fz.mutated(gzip.decompress(original), max_ops=2), label="tar bytes"), mtime=0)
    elif kind == "gzip" and data.draw(st.booleans(), label="damage the gzip"):
        raw = data.draw(fz.damaged_gzip(original), label="gzip bytes")
    elif kind == "gzip":
        raw = gzip.compress(data.draw(fz.mutated(gzip.decompress(original)), label="text"), mtime=0)
    else:
        raw = data.draw(fz.mutated(original), label="text")
    target.unlink()
    target.write_bytes(raw)
    saved = folder / "out" / "categories.tsv"
    saved.parent.mkdir()
    fz.count_example()
    with fz.time_bound():
        result = _runner().invoke(main_cli(), ["run", "--data", str(root), "--engine", "reference", "--json",
                                               "--no-progress", "--save-categories", str(saved)])
    note(f"exit {result.exit_code}\nstderr: {result.stderr}")
    event(f"{kind}: exit {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 1, 2), f"exit {result.exit_code}: {result.stderr}"
    assert not leftovers(folders), leftovers(folders)
    assert sorted(p.name for p in saved.parent.iterdir()) == ([saved.name] if result.exit_code != 2 else [])
    if result.exit_code == 2:
        lines = _stderr_lines(result)
        assert len(lines) == 1 and lines[0].startswith("spdnn: error: "), result.stderr
        files = [name] if kind != "json" else [p.name for p in root.rglob("*")]
        assert _named(lines[0], files), f"the error does not name {name}: {lines[0]}"
        return
    doc = json.loads(result.stdout)
    truth = read_categories(root / "neuron1024-l2-categories.tsv")
    assert doc["passed"] is (result.exit_code == 0)
    assert (doc["categories"] == truth.tolist()) is doc["passed"]
    assert read_categories(saved).tolist() == doc["categories"]


@given(data=st.data())
def test_cli_verify_with_a_mutated_file(data, folders):
    """``spdnn verify CATEGORIES TRUTH`` with a mutated CATEGORIES: exit 0 / 1 as the reference
    ids say, or exit 2 and one line naming the file."""
    truth_text = data.draw(id_files(), label="truth")
    found = data.draw(fz.mutated(truth_text), label="categories")
    truth = write_input(folders, "truth.tsv", truth_text)
    path = write_input(folders, "found.tsv", found)
    fz.count_example()
    with fz.time_bound():
        result = _runner().invoke(main_cli(), ["verify", str(path), str(truth)])
    note(f"exit {result.exit_code}\nstderr: {result.stderr}")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    try:
        want = fz.ref_ids(fz.ref_decompress(found))
    except Invalid as why:
        want = why
    if result.exit_code == 2:
        lines = _stderr_lines(result)
        assert len(lines) == 1 and lines[0].startswith("spdnn: error: ") and path.name in lines[0], result.stderr
        assert len(lines[0]) <= fz.MAX_MESSAGE, f"a message of {len(lines[0])} characters"
        assert isinstance(want, Invalid), f"refused valid ids: {lines[0]}"
        return
    assert not isinstance(want, Invalid), f"exit {result.exit_code} for an invalid file ({want})"
    same = np.array_equal(want, fz.ref_ids(truth_text))
    assert result.exit_code == (0 if same else 1), result.stdout + result.stderr


# --- regressions of what the fuzzer found (fixed here) -------------------------------------

def _npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return out.getvalue()


def test_npz_cut_at_the_front_is_a_format_error(folders):
    """Found by the fuzzer: a .npz missing its first bytes raised OSError (a negative seek) from the reader."""
    whole = _npz_bytes({"indptr": np.array([0, 1]), "indices": np.array([0], np.int32), "shape": np.array([1, 1])})
    path = write_input(folders, "f.npz", whole[27:])
    with pytest.raises(SpdnnError, match="f.npz"):
        read_features_npz(path)


@pytest.mark.parametrize("arrays, reason", [
    ({"indptr": np.array([0, 1]), "indices": np.array([5], np.int32), "shape": np.array([1, 2])}, "beyond"),
    ({"indptr": np.array([0, 2]), "indices": np.array([1, 0], np.int32), "shape": np.array([1, 2])}, "ascending"),
    ({"indptr": np.array([0, 2, 1, 2]), "indices": np.array([0, 1], np.int32), "shape": np.array([3, 2])},
     "row pointers"),
    ({"indptr": np.array([0, 1]), "indices": np.array([0], np.int32), "shape": np.array([1, 2]),
      "data": np.array([np.nan])}, "finite"),
    ({"indptr": np.array([0.0, 1.0]), "indices": np.array([0], np.int32), "shape": np.array([1, 2])}, "integers"),
    ({"indptr": np.array([0, 1]), "indices": np.array(["a"]), "shape": np.array([1, 2])}, "numeric"),
])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_that_is_no_canonical_csr_is_refused(arrays, reason, compressed, folders):
    """Found by the fuzzer: damaged .npz arrays (ids out of range, unsorted rows, decreasing row
    pointers, NaN values, float pointers) were handed on as a canonical matrix, to crash or mislead
    an engine; now read_features_npz and NpzSource refuse them, naming the file."""
    from spdnn.formats import NpzSource

    path = write_input(folders, "f.npz", _npz_bytes(arrays, compressed))
    with pytest.raises(SpdnnError, match=f"f.npz.*{reason}"):
        read_features_npz(path)
    with pytest.raises(SpdnnError, match=f"f.npz.*{reason}"):
        source = NpzSource(path)
        source.rows(0, source.samples)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_with_a_damaged_npy_header_is_refused(compressed, folders):
    """Found by the fuzzer: '(2,)' turned into '(2,(' in a .npy header made numpy raise
    tokenize.TokenError, which escaped the reader."""
    import zipfile

    arrays = {"indptr": np.array([0, 1]), "indices": np.array([0], np.int32), "shape": np.array([1, 1])}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array)
            member = member.getvalue()
            if name == "indptr":
                member = member.replace(b"(2,)", b"(2,(")
            zf.writestr(name + ".npy", member)
    path = write_input(folders, "f.npz", out.getvalue())
    with pytest.raises(SpdnnError, match="f.npz.*indptr"):
        read_features_npz(path)


def test_npz_member_longer_than_its_zip_entry_is_refused(folders):
    """A stored member whose .npy header claims more items than the zip entry holds (they would be
    read from the next member) is refused."""
    raw = bytearray(_npz_bytes({"indices": np.array([0], np.int32), "indptr": np.array([0, 1]),
                                "shape": np.array([1, 1])}))
    at = raw.index(b"'shape': (1,)")
    raw[at:at + 13] = b"'shape': (3,)"
    path = write_input(folders, "f.npz", bytes(raw))
    with pytest.raises(SpdnnError, match="f.npz"):
        read_features_npz(path)


@pytest.mark.parametrize("name, text, read", [
    ("n8-l1.tsv", b"1\t1\t-0.4\n1\t4\t1.3510798882109874e+16\x00", read_layer),
    ("n8-l1.tsv", b"1\t1\t0.0625\x00\x00\n", read_layer),
    ("sparse-images-8.tsv", b"1\t1\t1\x00\n", lambda p: read_features(p, cache=False, progress=False)),
    ("m.mtx", b"%%MatrixMarket matrix coordinate real general\n1 1 1\n1 1 2.5\x00\n", read_mtx),
])
def test_value_with_nul_bytes_is_refused(name, text, read, folders):
    """Found by the fuzzer: a value followed by NUL bytes ('0.0625\\0') was read as the number, because
    numpy's byte strings drop trailing NULs in the slow conversion path."""
    path = write_input(folders, name, text)
    with pytest.raises(SpdnnError, match="non-numeric value"):
        read(path)


@pytest.mark.parametrize("cut", ["member boundary", "inside a header", "damaged header"])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_archive_cut_or_damaged_between_members_is_refused(cut, suffix, folders):
    """Found by the fuzzer (and its reference, once it looked for the end-of-archive block): an
    archive cut at a member boundary, inside a header, or with a damaged header after the first
    member was read quietly with the layers before it: a shorter network, no error."""
    raw = bytearray(_tar([(f"neuron2/n2-l{k}.tsv", b"1\t1\t1\n2\t2\t0.5\n", "file") for k in (1, 2, 3)]))
    if cut == "member boundary":
        raw = raw[:2048]
    elif cut == "inside a header":
        raw = raw[:2048 + 100]
    else:
        raw[2048 + 10] ^= 0x55
    data = gzip.compress(bytes(raw), mtime=0) if suffix == ".tar.gz" else bytes(raw)
    path = write_input(folders, f"neuron2{suffix}", data)
    with pytest.raises(SpdnnError, match=f"neuron2{re.escape(suffix)}.*truncated or corrupt"):
        read_network(path, bias=-0.3, cache=False, progress=False)


@pytest.mark.parametrize("name, text, read", [
    ("n8-l1.tsv", b"2147483647\t1\t1\n", read_layer),
    ("m.mtx", b"%%MatrixMarket matrix coordinate pattern general\n2147483647 1 0\n", read_mtx),
    ("f.mtx", b"%%MatrixMarket matrix coordinate pattern general\n2147483647 1 1\n1 1\n",
     lambda p: read_features(p, cache=False, progress=False)),
    ("f.mtx", b"%%MatrixMarket matrix coordinate pattern general\n99999999999 5 1\n1 1\n",
     lambda p: read_features(p, cache=False, progress=False)),
    ("m.mtx", b"%%MatrixMarket matrix coordinate pattern general\n1 21474836471 1\n1 1\n", read_mtx),
])
def test_huge_declared_matrix_is_refused_before_it_is_built(name, text, read, folders):
    """Found by the fuzzer: one large number (a layer's index, a MatrixMarket size line) made the
    readers allocate row pointers for it: MemoryError, or on a large host a process killed for
    memory. Sizes beyond int32 are format errors; others are checked against the host memory."""
    path = write_input(folders, name, text)
    with pytest.raises(SpdnnError, match=name):
        read(path)


# --- regressions of issue 19 items 9, 10 and 4 -----------------------------------------------

def test_item_9_huge_integer_is_a_format_error(folders):
    path = write_input(folders, "n8-l1.tsv", b"1\t1\t1\n" + b"7" * 5000 + b"\t1\t1\n")
    with pytest.raises(SpdnnError):
        read_layer(path)


def test_item_10_huge_token_is_quoted_short(folders):
    path = write_input(folders, "n8-l1.tsv", b"1\t1\t1\n1\t1\t" + b"\x00" * 100_000 + b"\n")
    with pytest.raises(SpdnnError) as err:
        read_layer(path)
    assert len(str(err.value)) <= fz.MAX_MESSAGE


def test_item_4_duplicate_member_is_refused(folders):
    layer = b"1\t1\t1\n"
    raw = gzip.compress(_tar([("neuron2/n2-l1.tsv", layer, "file"), ("neuron2/n2-l1.tsv", b"2\t2\t1\n", "file")]))
    path = write_input(folders, "neuron2.tar.gz", raw)
    with pytest.raises(SpdnnError):
        read_network(path, bias=-0.3, cache=False, progress=False)
