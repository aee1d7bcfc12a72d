"""spdnn._atomic: a write either lands whole or leaves nothing, and its errors name the target."""
from __future__ import annotations

import errno
import gzip
import os
import tempfile
import time

import pytest

from spdnn._atomic import TEMP_GLOB, atomic_open, atomic_path, atomic_write_bytes, remove_stale_temporaries
from spdnn.errors import DiskFullError, SpdnnError


def _leftovers(folder):
    return sorted(p.name for p in folder.glob(TEMP_GLOB))


def test_write_lands_whole(tmp_path):
    target = tmp_path / "sub" / "x.tsv"
    with atomic_open(target, "w") as fh:
        fh.write("1\n2\n")
        assert not target.exists()  # nothing visible before the rename
    assert target.read_text() == "1\n2\n" and _leftovers(target.parent) == []
    atomic_write_bytes(tmp_path / "y.gz", b"abc")
    with atomic_open(tmp_path / "z.tsv.gz", "wb") as fh:
        fh.write(b"7\n")
    assert gzip.decompress((tmp_path / "z.tsv.gz").read_bytes()) == b"7\n"


@pytest.mark.parametrize("code", [errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)])
def test_full_disk_is_disk_full_error_about_the_target(tmp_path, code):
    target = tmp_path / "layer.tsv"
    target.write_text("old\n")
    with pytest.raises(DiskFullError) as info:
        with atomic_open(target, "wb") as fh:
            fh.write(b"x" * 100)
            fh.flush()
            raise OSError(code, os.strerror(code))  # no file name, as a real write(2) failure
    exc = info.value
    assert isinstance(exc, SpdnnError) and isinstance(exc, OSError) and exc.errno == code
    assert exc.filename == str(target) and exc.path == str(target)
    assert exc.written == 100 and exc.needed is None and exc.free is not None
    assert str(exc).startswith(f"{target}: ") and "needs more than the 100 bytes written" in str(exc)
    assert "nothing was left behind" in str(exc)
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_known_size_checked_before_writing(tmp_path):
    """A writer that knows the size fails before writing a byte, naming needed and free space."""
    body_ran = False
    with pytest.raises(DiskFullError) as info:
        with atomic_path(tmp_path / "huge.npz", size=1 << 62):
            body_ran = True
    assert not body_ran and info.value.needed == 1 << 62
    assert "needs 4.19e+06 TiB, " in str(info.value) and info.value.free is not None
    assert _leftovers(tmp_path) == [] and not (tmp_path / "huge.npz").exists()


def test_known_size_in_the_message(tmp_path):
    with pytest.raises(DiskFullError, match=r"needs 1\.5 KiB"):
        with atomic_path(tmp_path / "a.bin", size=1536) as tmp:
            tmp.write_bytes(b"1")
            raise OSError(errno.ENOSPC, "No space left on device")


def test_error_on_the_temporary_names_the_target(tmp_path, monkeypatch):
    """mkstemp refused (an unwritable folder): the error names the user's path, not the temporary."""
    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "abc" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "found.tsv"
    with pytest.raises(PermissionError) as info:
        with atomic_path(target):
            pass
    assert info.value.filename == str(target) and info.value.strerror == "Permission denied"


def test_other_errors_pass_unchanged_and_clean_up(tmp_path):
    target = tmp_path / "x"
    with pytest.raises(ValueError, match="bad"):
        with atomic_open(target, "w") as fh:
            fh.write("partial")
            raise ValueError("bad")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    other = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError) as info:
        with atomic_path(target):
            open(other / "no-such-dir" / "f")  # an error about another file keeps its name
    assert info.value.filename == str(other / "no-such-dir" / "f")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_remove_stale_temporaries(tmp_path):
    old, fresh, keep = tmp_path / ".a.tsv.x1.tmp", tmp_path / ".b.tsv.x2.tmp", tmp_path / "c.tsv"
    for p in (old, fresh, keep):
        p.write_text("x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert remove_stale_temporaries(tmp_path, older_than_s=3600) == [old]
    assert not old.exists() and fresh.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []
