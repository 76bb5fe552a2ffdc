"""One HTTP request to a cloud metadata server, bounded in total time and size.

A socket timeout bounds each read, not the request: a server that sends one
byte every second never trips a two-second read timeout. Here a watchdog cuts
the connection (shutdown of the socket, which wakes a blocked read) when the
request's total deadline passes, whatever phase it is in: connecting, sending,
or reading the status line, the headers or the body. Answers are small; more
than ``max_bytes`` of body is cut and flagged.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class DeadlineExceeded(TimeoutError):
    """No complete answer within the request's total deadline."""


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    truncated: bool = False


class _Watchdog:
    """Shuts the connection's socket down once `at` (time.monotonic) has passed, until stopped."""

    def __init__(self, conn: http.client.HTTPConnection, at: float):
        self.conn, self.at = conn, at
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._done.wait(max(0.0, self.at - time.monotonic())):
            return
        self.fired = True
        while not self._done.is_set():  # the socket may not exist yet (still connecting): keep trying
            sock = self.conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()


def request(method: str, url: str, headers: dict[str, str] | None = None, *, total_s: float,
            read_timeout_s: float, max_bytes: int = 64 * 1024) -> Answer:
    """method url -> Answer within total_s seconds all told, else DeadlineExceeded.

    Other failures raise what http.client and the socket raise (OSError, HTTPException).
    """
    if total_s <= 0:
        raise DeadlineExceeded(f"no time left for {method} {url}")
    parts = urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(parts.hostname, parts.port, timeout=min(read_timeout_s, total_s))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    watchdog = _Watchdog(conn, time.monotonic() + total_s)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read(max_bytes + 1)
    except (OSError, http.client.HTTPException):
        if watchdog.fired:
            raise DeadlineExceeded(f"no complete answer to {method} {parts.path} within {total_s:.1f} s") from None
        raise
    finally:
        watchdog.stop()
        conn.close()
    if watchdog.fired:
        raise DeadlineExceeded(f"no complete answer to {method} {parts.path} within {total_s:.1f} s")
    return Answer(resp.status, body[:max_bytes].decode("utf-8", "replace"), len(body) > max_bytes)
