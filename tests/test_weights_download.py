"""The Inception weights downloaded when no file is named: against a local HTTP server (a thread on 127.0.0.1
that each test starts and stops), a good body, reuse without a request, a truncated body, a wrong digest,
a body past the size bound and a server that is down; after a failure nothing is left in the cache."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trainers.metrics.download import DownloadError, fetch, file_name
from trainers.metrics.inception import STANDARD_URL, WeightsError, resolve_weights

pytestmark = pytest.mark.usefixtures("private_cache")

BODY = os.urandom(1_500_000)  # more than one read chunk
SHA = hashlib.sha256(BODY).hexdigest()
NAME = f"pt_inception-test-{SHA[:8]}.pth"  # the name carries the body's prefix, as torch hub names files


class Server:
    """Serves path -> (body, announced Content-Length or None for none) and records every request's path."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int | None]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                body, length = outer.routes[self.path]
                self.send_response(200)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)  # HTTP/1.0: the connection closes after the body, whatever was announced

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(10)


def dead_url(name: str = NAME) -> str:
    """A URL on a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/w/{name}"


def left_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_no_file_named_downloads_the_weights_once_into_the_cache_and_reuses_them(server, private_cache,
                                                                                  monkeypatch):
    server.routes["/w/" + NAME] = (BODY, len(BODY))
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", server.url("/w/" + NAME))
    path = resolve_weights(None)
    assert path == private_cache / "inception" / NAME and path.read_bytes() == BODY
    assert left_in(path.parent) == [NAME] and server.requests == ["/w/" + NAME]
    assert resolve_weights(None) == path and len(server.requests) == 1  # reused: no second request
    path.write_bytes(BODY[:1000])  # a damaged copy does not count: fetched again
    assert resolve_weights(None).read_bytes() == BODY and len(server.requests) == 2
    named = private_cache / "mine.pth"
    named.write_bytes(b"x")
    monkeypatch.setenv("GANRAY_FID_WEIGHTS", str(named))
    assert resolve_weights(None) == named and len(server.requests) == 2  # a named file wins, nothing fetched


def test_a_truncated_body_never_counts_and_the_error_says_what_to_fetch_and_where(server, private_cache,
                                                                                   monkeypatch):
    server.routes["/w/" + NAME] = (BODY[:400_000], len(BODY))  # announces more than it sends
    url = server.url("/w/" + NAME)
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", url)
    with pytest.raises(WeightsError) as err:
        resolve_weights(None)
    text = str(err.value)
    assert f"the body ended after 400000 of the {len(BODY)} bytes" in text
    assert f"Fetch {url} yourself and put it at {private_cache / 'inception' / NAME}" in text
    assert "eval.fid_weights or GANRAY_FID_WEIGHTS" in text and "GANRAY_FID_WEIGHTS_URL" in text
    assert left_in(private_cache / "inception") == []


def test_a_body_whose_digest_is_not_the_prefix_of_its_name_is_refused(server, private_cache, monkeypatch):
    wrong = f"pt_inception-test-{'0' if SHA[0] != '0' else '1'}{SHA[1:8]}.pth"
    server.routes["/w/" + wrong] = (BODY, len(BODY))
    server.routes["/w/nohash.pth"] = (BODY, len(BODY))
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", server.url("/w/" + wrong))
    with pytest.raises(WeightsError, match=f"sha256 is {SHA[:16]}\\.\\.\\., not the {wrong[18:26]}\\.\\.\\. its name"):
        resolve_weights(None)
    assert left_in(private_cache / "inception") == []
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", server.url("/w/nohash.pth"))
    with pytest.raises(WeightsError, match="'nohash.pth' carries no sha256 prefix.* yourself and set eval.fid_weights"):
        resolve_weights(None)
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", server.url("/w/missing-" + SHA[:8] + ".pth"))
    with pytest.raises(WeightsError, match="HTTPError: HTTP Error 404"):
        resolve_weights(None)
    assert left_in(private_cache / "inception") == [] and len(server.requests) == 2  # nohash: never requested


def test_a_body_past_the_size_bound_is_refused_announced_or_not(server, tmp_path):
    server.routes["/w/" + NAME] = (BODY, len(BODY))
    with pytest.raises(DownloadError, match=f"Content-Length {len(BODY)} is past the 1000000-byte bound"):
        fetch(server.url("/w/" + NAME), tmp_path / "c", max_bytes=1_000_000)
    server.routes["/w/" + NAME] = (BODY, None)  # no Content-Length: cut while reading
    with pytest.raises(DownloadError, match="the body is past the 1000000-byte bound"):
        fetch(server.url("/w/" + NAME), tmp_path / "c", max_bytes=1_000_000)
    assert left_in(tmp_path / "c") == []
    assert fetch(server.url("/w/" + NAME), tmp_path / "c").read_bytes() == BODY  # unannounced, whole: checked


def test_a_server_that_is_down_is_a_clear_error_leaving_nothing(private_cache, monkeypatch):
    url = dead_url()
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", url)
    with pytest.raises(WeightsError, match=f"downloaded them and failed: {url}: URLError.*Fetch {url} yourself"):
        resolve_weights(None)
    assert left_in(private_cache / "inception") == []


def test_the_default_url_is_pytorch_fids_release_and_its_name_carries_the_standard_prefix():
    assert STANDARD_URL == ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                            "pt_inception-2015-12-05-6726825d.pth")
    assert file_name(STANDARD_URL) == ("pt_inception-2015-12-05-6726825d.pth", "6726825d")
    for bad in ("ftp://h/x-6726825d.pth", "file:///tmp/x-6726825d.pth", "http://h/a/..%2F-6726825d.pth"):
        with pytest.raises(DownloadError):
            file_name(bad)
