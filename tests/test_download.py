"""Downloads against a local HTTP server: MD5, resume with Range, servers ignoring Range, errors."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spdnn.errors import ChecksumError, DownloadError, OptionError
from spdnn.formats import OFFICIAL_BASE_URL, OFFICIAL_MD5, download_file, download_official
from spdnn.formats.download import official_files


class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 with optional Range support."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.honour_range = True
        self.truncate_at: int | None = None
        self.send_length = True                 # False: no Content-Length (the body ends when the connection does)
        self.range_shift = 0                    # a wrong 206: the range answered starts this many bytes off
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start += server.range_shift
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                if server.send_length:
                    self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.truncate_at is not None:
                    part = part[: server.truncate_at]
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def payload(rng):
    return rng.integers(0, 256, size=3_000_000, dtype="uint8").tobytes()


@pytest.fixture
def server(payload):
    with FileServer({"/data/file.bin": payload}) as srv:
        yield srv


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_full_download_with_md5(server, payload, tmp_path):
    dest = tmp_path / "out" / "file.bin"
    got = download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert got == dest and dest.read_bytes() == payload
    assert not (tmp_path / "out" / "file.bin.part").exists()
    assert server.requests == [("/data/file.bin", None)]


def test_resume_from_part(server, payload, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload[:1_234_567])
    download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert dest.read_bytes() == payload
    assert server.requests == [("/data/file.bin", "bytes=1234567-")]


def test_interrupted_transfer_then_resume(server, payload, tmp_path):
    dest = tmp_path / "file.bin"
    server.truncate_at = 1_000_000
    with pytest.raises(DownloadError, match="truncated"):
        download_file(server.url + "/data/file.bin", dest, md5=md5(payload), timeout=10)
    assert not dest.exists()
    assert (tmp_path / "file.bin.part").stat().st_size == 1_000_000
    server.truncate_at = None
    download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert dest.read_bytes() == payload
    assert server.requests[-1] == ("/data/file.bin", "bytes=1000000-")


def test_server_ignoring_range_restarts(server, payload, tmp_path):
    server.honour_range = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale prefix that must not survive")
    download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert dest.read_bytes() == payload


def test_part_longer_than_file_restarts(server, payload, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload + b"extra")
    download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert dest.read_bytes() == payload


def test_md5_mismatch_leaves_no_file(server, payload, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError, match=md5(payload)):
        download_file(server.url + "/data/file.bin", dest, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_http_404(server, tmp_path):
    url = server.url + "/data/missing.bin"
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
        download_file(url, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", timeout=5)


def test_official_names_and_addresses():
    files = official_files(1024, 120)
    assert [f[1] for f in files] == ["neuron1024.tar.gz", "sparse-images-1024.tsv.gz", "neuron1024-l120-categories.tsv"]
    assert files[0][0] == OFFICIAL_BASE_URL + "/dnn/neuron1024.tar.gz" and files[0][2] == OFFICIAL_MD5[1024]
    assert files[1][0] == OFFICIAL_BASE_URL + "/mnist/sparse-images-1024.tsv.gz"
    assert files[2][0] == OFFICIAL_BASE_URL + "/dnn/neuron1024-l120-categories.tsv"
    with pytest.raises(OptionError):
        official_files(1000, 120)
    with pytest.raises(OptionError):
        official_files(1024, 100)
    with pytest.raises(OptionError):
        official_files(1024, 120, what=("weights",))


def test_download_official_from_mirror(tmp_path):
    files = {"/mirror/mnist/sparse-images-4096.tsv.gz": b"features",
             "/mirror/dnn/neuron4096-l480-categories.tsv": b"1\n2\n"}
    with FileServer(files) as srv:
        paths = download_official(4096, 480, tmp_path, base_url=srv.url + "/mirror", what=("features", "truth"))
        assert [p.name for p in paths] == ["sparse-images-4096.tsv.gz", "neuron4096-l480-categories.tsv"]
        assert paths[1].read_bytes() == b"1\n2\n"
        n = len(srv.requests)
        download_official(4096, 480, tmp_path, base_url=srv.url + "/mirror", what=("features", "truth"))
        assert len(srv.requests) == n  # present files are kept
        # The network archive is MD5-checked against the official digest.
        srv.files["/mirror/dnn/neuron4096.tar.gz"] = b"not the official archive"
        with pytest.raises(ChecksumError):
            download_official(4096, 480, tmp_path, base_url=srv.url + "/mirror", what="network")
        assert not (tmp_path / "neuron4096.tar.gz").exists()


def test_unconfirmable_size_is_never_renamed(server, payload, tmp_path):
    """No Content-Length and a dropped connection look alike: without an MD5 nothing is kept."""
    server.send_length = False
    server.truncate_at = 1_000_000
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="does not state the size and no MD5 is known"):
        download_file(server.url + "/data/file.bin", dest)
    assert list(tmp_path.iterdir()) == []
    # With an MD5 the cut file is caught and removed; the whole one is kept.
    with pytest.raises(ChecksumError):
        download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert list(tmp_path.iterdir()) == []
    server.truncate_at = None
    download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert dest.read_bytes() == payload


def test_resumed_size_confirmed_by_content_range(server, payload, tmp_path):
    server.send_length = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload[:500_000])
    server.truncate_at = 1_000_000
    with pytest.raises(DownloadError, match=f"truncated at 1500000 of {len(payload)} bytes; run again to resume"):
        download_file(server.url + "/data/file.bin", dest)
    assert not dest.exists() and (tmp_path / "file.bin.part").stat().st_size == 1_500_000
    server.truncate_at = None
    download_file(server.url + "/data/file.bin", dest)
    assert dest.read_bytes() == payload


def test_wrong_partial_answer_says_what_to_delete(server, payload, tmp_path):
    server.range_shift = 1000
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    part.write_bytes(payload[:1_234_567])
    with pytest.raises(DownloadError, match=rf"request from byte 1234567; delete {part} to start over"):
        download_file(server.url + "/data/file.bin", dest, md5=md5(payload))
    assert not dest.exists() and part.read_bytes() == payload[:1_234_567]


def test_one_md5_failure_does_not_stop_the_others(tmp_path):
    files = {"/m/dnn/neuron4096.tar.gz": b"not the official archive",
             "/m/mnist/sparse-images-4096.tsv.gz": b"features",
             "/m/dnn/neuron4096-l120-categories.tsv": b"1\n2\n"}
    with FileServer(files) as srv:
        with pytest.raises(ChecksumError) as err:
            download_official(4096, 120, tmp_path, base_url=srv.url + "/m")
    message = str(err.value)
    assert "neuron4096.tar.gz: MD5" in message and "the download was removed" in message
    assert "fetched: sparse-images-4096.tsv.gz, neuron4096-l120-categories.tsv" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neuron4096-l120-categories.tsv",
                                                         "sparse-images-4096.tsv.gz"]
