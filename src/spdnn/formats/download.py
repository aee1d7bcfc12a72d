"""Downloading the official files: resumable, size- and MD5-checked, atomic (urllib only).

A download goes to ``dest.part``; an interrupted one is resumed with an HTTP ``Range``
request (a server that ignores it and answers 200 makes it restart from zero). Only a
file whose size the server confirmed, and whose MD5 matches where one is known, is
renamed to ``dest``; a file whose completeness cannot be told is never renamed.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .._progress import progress_bar
from ..errors import ChecksumError, DownloadError, OptionError, quote
from ..options import positive_int

__all__ = ["OFFICIAL_BASE_URL", "OFFICIAL_MD5", "OFFICIAL_SIZES", "OFFICIAL_DEPTHS", "download_file",
           "download_official", "official_files", "file_md5"]

#: Root of the official data (docs/challenge.md, Formats).
OFFICIAL_BASE_URL = "https://graphchallenge.s3.amazonaws.com/synthetic/sparsechallenge_2019"

#: MD5 of the network archives ``neuron{N}.tar.gz`` (docs/challenge.md, Formats; none published for 65536).
OFFICIAL_MD5 = {
    1024: "8ccdd73e06ff905f7c72410e9a5cc4be",
    4096: "ebf3785df180ae921db7c805e5c9adfb",
    16384: "92a48c20050e3d8fcf511b810eb56faf",
}

#: Official network sizes N and depths L.
OFFICIAL_SIZES = (1024, 4096, 16384, 65536)
OFFICIAL_DEPTHS = (120, 480, 1920)

_BLOCK = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file's bytes."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "spdnn"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if start and exc.code == 416:  # the partial file is not a prefix we can extend
            exc.close()
            return None
        exc.close()
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None


def _content_range(header: str) -> tuple[int, int, int | None] | None:
    """(first, last, total or None) of a ``Content-Range: bytes a-b/total`` header, or None."""
    try:
        unit, spec = header.split(" ", 1)
        span, total = spec.split("/", 1)
        first, last = (int(v) for v in span.split("-", 1))
    except ValueError:
        return None
    if unit != "bytes":
        return None
    return first, last, (None if total.strip() == "*" else int(total))


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None, progress: bool | None = None,
                  timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (resumable, atomic, size- and optionally MD5-checked).

    The transfer goes to ``dest + '.part'``, kept when interrupted so that the next call
    resumes it with an HTTP ``Range`` request (a server answering 200 restarts it). The
    file is renamed to ``dest`` only when its size is confirmed (the server's
    ``Content-Length`` or ``Content-Range`` total) and, with ``md5``, its digest.

    Parameters
    ----------
    url : str
    dest : str or os.PathLike
        Final path.
    md5 : str, optional
        Expected hex digest of the complete file.
    progress : bool, optional
        Byte progress bar (None: when stderr is a terminal).
    timeout : float
        Seconds for connecting and for each read.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        HTTP error status, connection failure, a short transfer (resumable: run again),
        a size the server does not state and no MD5 to check instead, or a wrong
        partial answer (the message names the ``.part`` file to delete).
    ChecksumError
        The complete file's MD5 differs from ``md5``; the bad file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    resp = _open(url, start, timeout)
    if resp is None:  # 416: the partial file is not a prefix we can extend
        part.unlink(missing_ok=True)
        start = 0
        resp = _open(url, 0, timeout)
    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.strip().isdigit() else None
        if start and resp.status == 206:
            crange = _content_range(resp.headers.get("Content-Range", ""))
            if crange is None or crange[0] != start or (length is not None and crange[1] - crange[0] + 1 != length):
                raise DownloadError(f"{url}: the server answered range {resp.headers.get('Content-Range')!r} to a "
                                    f"request from byte {start}; delete {part} to start over")
            total = crange[2] if crange[2] is not None else (None if length is None else start + length)
            mode = "ab"
        else:
            start, mode = 0, "wb"
            total = length
        if total is None and md5 is None:
            raise DownloadError(f"{url}: the server does not state the size and no MD5 is known, so a complete "
                                f"transfer cannot be told from a cut one; nothing was written")
        got = _receive(resp, part, mode, url, start, total, dest.name, progress)
    size = start + got
    if total is not None and size != total:
        if size < total:
            raise DownloadError(f"{url}: transfer truncated at {size} of {total} bytes; run again to resume")
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: received {size} bytes, {total - size} more than the server announced; "
                            f"the download was removed")
    if md5 is not None:
        digest = file_md5(part)
        if digest.lower() != md5.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: MD5 {digest} does not match the expected {md5.lower()}; "
                                f"the download was removed")
    os.replace(part, dest)
    return dest


def _receive(resp, part: Path, mode: str, url: str, start: int, total: int | None, name: str, progress) -> int:
    """Copy the response body to ``part`` (appending or from zero); returns the bytes received."""
    got = 0
    bar = progress_bar(None, enabled=progress, desc=name, total=total, unit="B")
    bar.update(start)
    try:
        with open(part, mode) as out:
            while True:
                try:
                    block = resp.read(_BLOCK)
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(f"{url}: transfer interrupted after {start + got} bytes ({exc}); "
                                        f"run again to resume") from None
                if not block:
                    return got
                out.write(block)
                got += len(block)
                bar.update(len(block))
    finally:
        bar.close()


def check_base_url(base_url) -> str:
    """``base_url`` if it is an absolute http://, https:// (with a host) or file:// address, else OptionError."""
    parsed = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https", "file") or (
            parsed.scheme != "file" and not parsed.netloc) or any(c.isspace() for c in base_url):
        raise OptionError(f"base_url={quote(str(base_url), 80)}: expected an address such as "
                          f"{OFFICIAL_BASE_URL} (http://, https:// or file://)")
    return base_url


def official_files(neurons: int, layers: int, *, base_url: str = OFFICIAL_BASE_URL,
                   what=("network", "features", "truth")) -> list[tuple[str, str, str | None]]:
    """(url, file name, md5 or None) of the official files of one problem.

    Raises
    ------
    OptionError
        N or L is not an official size, ``what`` names an unknown part, or ``base_url``
        is not an http(s):// or file:// address.
    """
    check_base_url(base_url)
    neurons = positive_int(neurons, "neurons")
    layers = positive_int(layers, "layers")
    if neurons not in OFFICIAL_SIZES:
        raise OptionError(f"neurons={neurons}: official sizes are {OFFICIAL_SIZES}")
    if layers not in OFFICIAL_DEPTHS:
        raise OptionError(f"layers={layers}: official depths are {OFFICIAL_DEPTHS}")
    if isinstance(what, str):
        what = (what,)
    base = base_url.rstrip("/")
    table = {
        "network": (f"{base}/dnn/neuron{neurons}.tar.gz", f"neuron{neurons}.tar.gz", OFFICIAL_MD5.get(neurons)),
        "features": (f"{base}/mnist/sparse-images-{neurons}.tsv.gz", f"sparse-images-{neurons}.tsv.gz", None),
        "truth": (f"{base}/dnn/neuron{neurons}-l{layers}-categories.tsv",
                  f"neuron{neurons}-l{layers}-categories.tsv", None),
    }
    unknown = [w for w in what if w not in table]
    if unknown:
        raise OptionError(f"what={tuple(what)!r}: unknown part(s) {unknown}; expected network, features, truth")
    return [table[w] for w in what]


def download_official(neurons: int, layers: int, dest_dir: str | os.PathLike, *,
                      base_url: str = OFFICIAL_BASE_URL, what=("network", "features", "truth"),
                      progress: bool | None = None) -> list[Path]:
    """Download the official files of one problem into ``dest_dir`` under their official names.

    A file already present is kept (after checking its MD5 when one is known).

    Parameters
    ----------
    neurons : int
        N, one of 1024, 4096, 16384, 65536.
    layers : int
        L, one of 120, 480, 1920 (names the truth file).
    dest_dir : str or os.PathLike
    base_url : str
        Root URL (a mirror or a local server in tests).
    what : sequence of {'network', 'features', 'truth'}
    progress : bool, optional

    Returns
    -------
    list of pathlib.Path
        The downloaded (or already present) files, in the order of ``what``.

    Raises
    ------
    ChecksumError
        After every file was tried: the files whose MD5 did not match (removed), and
        the ones fetched.
    DownloadError
        A transfer failed (see :func:`download_file`); the files after it are not tried.
    """
    out = Path(dest_dir)
    paths, failures = [], []
    for url, name, md5 in official_files(neurons, layers, base_url=base_url, what=what):
        dest = out / name
        if dest.is_file() and (md5 is None or file_md5(dest) == md5):
            paths.append(dest)
            continue
        try:
            paths.append(download_file(url, dest, md5=md5, progress=progress))
        except ChecksumError as exc:
            failures.append(exc)   # the other files are still fetched
    if failures:
        fetched = f"; fetched: {', '.join(p.name for p in paths)}" if paths else ""
        raise ChecksumError("; ".join(str(e) for e in failures) + fetched)
    return paths
