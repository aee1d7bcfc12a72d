"""The official Graph Challenge layout: where the files of one problem are.

Layout (docs/challenge.md, Formats)::

    neuron{N}/n{N}-l{k}.tsv[.gz]         k = 1..L   (or the archive neuron{N}.tar.gz)
    sparse-images-{N}.tsv[.gz]           or a MatrixMarket subset  *.mtx[.gz]
    neuron{N}-l{L}-categories.tsv        or a MatrixMarket column vector  *.mtx

:func:`find_official` locates them; the readers live in :mod:`.networks` and
:mod:`.features` and are re-exported here. All indices in the files are 1-based; the
matrices returned are 0-based CSR, float64.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataNotFoundError, OptionError
from ..options import optional_positive_int
from .features import read_categories, read_features
from .networks import NETWORK_DIR_NAME, NETWORK_TAR_NAME, read_network, scan_layer_dir
from .text import input_file

__all__ = ["read_network", "read_features", "read_categories", "find_official", "OfficialPaths"]

_FEATURES_RE = re.compile(r"^sparse-images-(\d+)(-[^.]*)?\.(tsv|tsv\.gz|mtx|mtx\.gz)$")
_TRUTH_RE = re.compile(r"^neuron(\d+)-l(\d+)-categories(-[^.]*)?\.(tsv|mtx)$")
#: Names listed at most in a "nothing found" message.
_SHOWN_NAMES = 8


# --- locating the official layout ----------------------------------------------------------

@dataclass(frozen=True)
class OfficialPaths:
    """Where the official files of one problem are.

    Attributes
    ----------
    network : pathlib.Path
        The ``neuron{N}/`` folder or the ``neuron{N}.tar.gz`` archive.
    features : pathlib.Path or None
        ``sparse-images-{N}...`` (.tsv, .tsv.gz, .mtx, .mtx.gz).
    truth : pathlib.Path or None
        ``neuron{N}-l{L}-categories...`` (.tsv or .mtx).
    neurons : int
        N.
    layers : int or None
        L: as asked, else from the truth file name, else the number of layer files in
        the folder; None for an archive without a truth file (unknown without reading it).
    """

    network: Path
    features: Path | None
    truth: Path | None
    neurons: int
    layers: int | None


def _prefer_exact(cands: list[tuple[Path, str | None]], what: str, where: Path) -> Path | None:
    """Among files for one problem, take the exact official name, else the only variant."""
    if not cands:
        return None
    exact = [p for p, suffix in cands if not suffix]
    if exact:
        return sorted(exact, key=lambda p: (p.name.endswith(".gz"), p.name.endswith(".mtx")))[0]
    if len(cands) == 1:
        return cands[0][0]
    raise OptionError(f"{where}: several {what} files: {', '.join(sorted(p.name for p, _ in cands))}; "
                      "pass the file explicitly")


def _no_network(root: Path) -> DataNotFoundError:
    """The error for a folder without a network: a hint for loose layer files, else a short listing."""
    names = sorted(e.name for e in root.iterdir())
    layers = scan_layer_dir(root)
    if layers:
        n = min(layers)
        return DataNotFoundError(
            f"{root}: holds {len(layers[n])} layer files n{n}-l{{k}}.tsv directly; the official layout keeps them "
            f"in a folder neuron{n}/ beside the features and truth (move them there, or pass the folder as the "
            f"network)")
    shown = ", ".join(names[:_SHOWN_NAMES]) + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES
                                                else "")
    return DataNotFoundError(f"{root}: no official network (expected neuron{{N}}/ or neuron{{N}}.tar.gz); "
                             f"found: {shown or 'nothing'}")


def find_official(directory, neurons: int | None = None, layers: int | None = None) -> OfficialPaths:
    """Locate the official layout in ``directory``.

    Recognized: ``neuron{N}/`` or ``neuron{N}.tar.gz``; ``sparse-images-{N}[-x].tsv[.gz]``
    or ``.mtx[.gz]``; ``neuron{N}-l{L}-categories[-x].tsv`` or ``.mtx`` (a name with a
    ``-x`` suffix, such as ``-first1200``, is used when it is the only one).

    Parameters
    ----------
    directory : str or os.PathLike
    neurons, layers : int, optional
        Choose N and L; inferred when only one candidate exists.

    Raises
    ------
    DataNotFoundError
        No network in ``directory`` (or none for the requested N).
    OptionError
        Several candidates and no choice given (the message lists them).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: no such directory")
    neurons = optional_positive_int(neurons, "neurons")
    layers = optional_positive_int(layers, "layers")
    nets: dict[int, Path] = {}
    feats: dict[int, list] = {}
    truths: dict[tuple[int, int], list] = {}
    for e in sorted(root.iterdir()):
        # a file's official name on something unreadable (a dangling symlink, a loop, a
        # folder, a FIFO) is an error, never skipped: a skipped truth would be "no check"
        if (m := NETWORK_DIR_NAME.match(e.name)) and e.is_dir():
            nets[int(m.group(1))] = e
        elif m := NETWORK_TAR_NAME.match(e.name):
            nets.setdefault(int(m.group(1)), input_file(e))
        elif m := _FEATURES_RE.match(e.name):
            feats.setdefault(int(m.group(1)), []).append((input_file(e), m.group(2)))
        elif m := _TRUTH_RE.match(e.name):
            truths.setdefault((int(m.group(1)), int(m.group(2))), []).append((input_file(e), m.group(3)))
    if not nets:
        raise _no_network(root)
    if neurons is None and len(nets) > 1:
        raise OptionError(f"{root}: networks for several sizes N = {sorted(nets)}; choose one with neurons=N")
    n = neurons if neurons is not None else next(iter(nets))
    if n not in nets:
        raise DataNotFoundError(f"{root}: no network for N={n} (found N = {sorted(nets)})")
    net = nets[n]
    depths = sorted(L for (nn, L) in truths if nn == n)
    if layers is None:
        if len(depths) > 1:
            raise OptionError(f"{root}: truth files for several depths L = {depths} (N={n}); choose one with layers=L")
        if depths:
            layers = depths[0]
        elif net.is_dir():
            found = scan_layer_dir(net).get(n, {})
            layers = max(found) if found else None
    truth = _prefer_exact(truths.get((n, layers), []), "truth", root) if layers is not None else None
    features = _prefer_exact(feats.get(n, []), "features", root)
    return OfficialPaths(network=net, features=features, truth=truth, neurons=n, layers=layers)
