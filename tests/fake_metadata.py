"""A fake cloud metadata server on loopback (AWS IMDSv2 and GCE), for agent and chaos tests.

Control endpoints (test-only): ``POST /__notice?in=SECONDS`` schedules a spot
stop that many seconds ahead (``&action=TEXT``: the notice's ``action``, default
``terminate``); ``POST /__mode?m=ok|error|hang|trickle|garbage|raw`` makes every
metadata answer normal, a 500, a hang longer than any client timeout, a trickle
(the whole answer, status line first, one byte every ``&every=SECONDS``, default
0.2: no single read ever times out), for the notice endpoints a 200 whose body is
``&body=TEXT`` (the token still works), or (``raw``) ``&body=TEXT`` sent as the
whole answer, status line included, instead of any HTTP. In-process tests set the
same fields on the State that ``serve`` returns (``terminate_at`` may be any
UNIX time up to 9999-12-31).
Run as a process: ``python tests/fake_metadata.py PORT``.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = "fake-imds-token"


class State:
    def __init__(self):
        self.terminate_at: float | None = None
        self.mode = "ok"
        self.requests = 0
        self.body = "garbage"  # the 200 answer in mode "garbage"
        self.trickle_s = 0.2  # seconds between bytes in mode "trickle"
        self.action = "terminate"  # the notice's `action`


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: str = "") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _trickle(self) -> None:
            data = b"HTTP/1.0 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(state.trickle_s)
            except OSError:  # the client gave up: that is the point
                pass
            self.close_connection = True

        def _raw(self) -> None:
            self.wfile.write(state.body.encode("utf-8", "surrogateescape"))
            self.close_connection = True

        def _faulty(self) -> bool:
            state.requests += 1
            if state.mode == "raw":
                self._raw()
                return True
            if state.mode == "trickle":
                self._trickle()
                return True
            if state.mode == "error":
                self._send(500, "boom")
                return True
            if state.mode == "hang":
                time.sleep(10)
                self._send(500, "late")
                return True
            return False

        def do_PUT(self):
            if self._faulty():
                return
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(200, TOKEN)
            self._send(400)

        def do_POST(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path == "/__notice":
                state.terminate_at = time.time() + float(q.get("in", ["120"])[0])
                state.action = q.get("action", [state.action])[0]
                return self._send(200, "ok")
            if url.path == "/__mode":
                state.mode = q["m"][0]
                state.body = q.get("body", [state.body])[0]
                state.trickle_s = float(q.get("every", [state.trickle_s])[0])
                return self._send(200, "ok")
            self._send(404)

        def do_GET(self):
            if self._faulty():
                return
            if self.path == "/latest/meta-data/spot/instance-action":
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    return self._send(401)
                if state.mode == "garbage":
                    return self._send(200, state.body)
                if state.terminate_at is None:
                    return self._send(404, "Not Found")
                when = datetime.fromtimestamp(state.terminate_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                return self._send(200, json.dumps({"action": state.action, "time": when}))
            if self.path == "/computeMetadata/v1/instance/preempted":
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403)
                if state.mode == "garbage":
                    return self._send(200, state.body)
                return self._send(200, "TRUE" if state.terminate_at is not None else "FALSE")
            self._send(404)

    return Handler


def serve(port: int = 0) -> tuple[ThreadingHTTPServer, State]:
    """Starts the server on 127.0.0.1:port in a daemon thread; returns (server, state)."""
    state = State()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


if __name__ == "__main__":
    srv, _ = serve(int(sys.argv[1]))
    print(f"listening on {srv.server_address[1]}", flush=True)
    threading.Event().wait()
