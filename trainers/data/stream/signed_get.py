"""Whole-object GETs from S3 through presigned URLs: the cheap path for shard downloads.

s3fs reads a body through aiohttp in small chunks; on a 2-core node that costs
~2.8 ms of client CPU per MB and makes the server work harder too. Signing the
request with boto3 (locally, no round trip) and reading it with one urllib3
call costs ~0.75 ms/MB (bench/README.md, "Data streaming"). Everything that is
not a plain 200 or 404 -- a redirect to another region, a signature the
server refuses -- is handed back to the caller (``NotForSignedGet``), which
then uses s3fs for that dataset, so behaviour never depends on this path.

A body is read no further than one byte past the size the caller expects: an
object that announces more (``Content-Length``) is refused before its body is
read, and one that sends more without saying so is cut there (``ShardTooLarge``).

Presigned URLs are credentials for as long as they live: none is ever put in an
error message (``redact``) or kept after its request.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

from trainers import settings

# s3fs options this path understands; any other option (anon, profile, requester_pays...) keeps s3fs.
_UNDERSTOOD = {"key", "secret", "token", "client_kwargs", "config_kwargs", "endpoint_url",
               "skip_instance_cache", "use_listings_cache"}
_QUERY = re.compile(r"\?[^\s'\"()]*")


class NotForSignedGet(Exception):
    """The server answered in a way only a full S3 client handles (redirect, refused signature...)."""


class TransientGetError(Exception):
    """A fault worth retrying: a 5xx, a reset, a timeout, a short body."""


class ShardTooLarge(Exception):
    """An object larger than the manifest says; the message says how much larger, as far as it is known."""


def redact(text: str) -> str:
    """text with every URL query (where a signature would be) replaced by '?<signed>'."""
    return _QUERY.sub("?<signed>", text)


def usable(url: str, storage_options: dict[str, Any]) -> bool:
    """Whether shards of url can be fetched by signed GETs with these s3fs options."""
    if (settings.get("GANRAY_S3_SIGNED_GET") or "1") == "0":
        return False
    return str(url).startswith(("s3://", "s3a://")) and set(storage_options) <= _UNDERSTOOD


class SignedGetter:
    """GETs whole objects; thread-safe; its clients belong to the process that made them."""

    def __init__(self, storage_options: dict[str, Any]):
        opts = storage_options
        self._client_kwargs = dict(opts.get("client_kwargs") or {})
        if opts.get("endpoint_url"):
            self._client_kwargs.setdefault("endpoint_url", opts["endpoint_url"])
        self._keys = {k: opts[v] for k, v in (("aws_access_key_id", "key"), ("aws_secret_access_key", "secret"),
                                               ("aws_session_token", "token")) if opts.get(v)}
        cfg = opts.get("config_kwargs") or {}
        self._config = {"signature_version": "s3v4", **cfg}  # addressing style, region... as s3fs gets them
        self._timeouts = (float(cfg.get("connect_timeout", 10)), float(cfg.get("read_timeout", 60)))
        self._lock = threading.Lock()
        self._pid = -1
        self._s3: Any = None
        self._http: Any = None

    def _clients(self):
        with self._lock:
            if self._pid != os.getpid():  # neither boto3 nor a connection pool survives a fork
                import boto3
                import urllib3
                from botocore.config import Config

                session = boto3.session.Session(**self._keys)
                self._s3 = session.client("s3", config=Config(**self._config), **self._client_kwargs)
                self._http = urllib3.PoolManager(maxsize=16, retries=False,
                                                 timeout=urllib3.Timeout(connect=self._timeouts[0],
                                                                         read=self._timeouts[1]))
                self._pid = os.getpid()
            return self._s3, self._http

    def get(self, path: str, limit: int) -> bytes:
        """The bytes of bucket/key path, at most limit of them. FileNotFoundError for a 404, TransientGetError
        for what a retry may fix, NotForSignedGet for answers only s3fs handles, ShardTooLarge past limit."""
        import urllib3

        try:
            s3, http = self._clients()
        except Exception as err:  # noqa: BLE001 - options only s3fs understands: let it decide and report
            raise NotForSignedGet(f"cannot make a client: {type(err).__name__}") from None
        bucket, _, key = path.partition("/")
        try:
            signed = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900)
        except Exception as err:  # noqa: BLE001 - no credentials, a bad endpoint: let s3fs decide and report
            raise NotForSignedGet(f"cannot sign a GET: {type(err).__name__}") from None
        resp = None
        try:
            resp = http.request("GET", signed, preload_content=False, redirect=False)
            data = _read_at_most(resp, limit) if resp.status == 200 else resp.read(1 << 16)
        except urllib3.exceptions.HTTPError as err:
            raise TransientGetError(redact(f"{type(err).__name__}: {err}")) from None
        finally:
            if resp is not None:
                # A body read to its end went back to the pool already (urllib3 does that); a connection
                # with bytes left unread is closed, never reused.
                resp.close()
        if resp.status == 200:
            return data
        if resp.status == 404:
            raise FileNotFoundError(path)
        if resp.status >= 500:
            code = re.search(rb"<Code>([^<]{1,64})</Code>", data or b"")
            raise TransientGetError(f"HTTP {resp.status}" + (f" {code.group(1).decode()}" if code else ""))
        raise NotForSignedGet(f"HTTP {resp.status}")


def _read_at_most(resp: Any, limit: int) -> bytes:
    """The body of a 200, refused unread when it announces more than limit bytes, cut one byte past limit."""
    header = resp.headers.get("Content-Length")
    expected = int(header) if header is not None and header.isdigit() else None
    if expected is not None and expected > limit:
        raise ShardTooLarge(f"the object has {expected} bytes (not read)")
    data = resp.read() if expected is not None else resp.read(limit + 1)  # read(): Content-Length bytes, no more
    if len(data) > limit:
        raise ShardTooLarge(f"it has more than {limit} bytes (reading stopped at byte {len(data)})")
    if expected is not None and expected != len(data):
        raise TransientGetError(f"short body: {len(data)} of {expected} bytes")
    return data
