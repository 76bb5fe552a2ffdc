"""Storage URLs a user writes (``data.url``, ``checkpoint.storage``, ingest sources): known schemes only,
never a credential, and a form of any URL that is safe to print.

The schemes are fsspec's (``fsspec.registry.known_implementations``), the same list ingest checks.
Credentials belong in the environment (``AWS_*``...), never in a URL: a user name or password in the
URL's authority, or a presigned query (an S3, GCS or Azure signature), is refused, and the error shows
the URL with them replaced by ``***``.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

# Query parameters that carry a signature or a key: S3 (SigV4 and V2), GCS, Azure SAS, OSS.
SIGNED_QUERY_KEYS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "awsaccesskeyid",
    "x-goog-signature", "x-goog-credential", "googleaccessid", "sig", "ossaccesskeyid", "security-token",
    "access_token", "token"})
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def url_scheme(url: str) -> str | None:
    """The scheme of an fsspec URL (lower case), or None for a local path."""
    url = str(url)
    return url.split("://", 1)[0].lower() if "://" in url else None


def supported_schemes() -> list[str]:
    """Every scheme storage URLs may use: fsspec's known implementations."""
    from fsspec.registry import known_implementations

    return sorted(known_implementations)


def scheme_problem(url: str) -> str | None:
    """Why url's scheme cannot work (the message lists the supported ones), or None."""
    scheme = url_scheme(url)
    if scheme is None:
        return None
    known = supported_schemes()
    if scheme in known:
        return None
    return f"unknown URL scheme {scheme!r}; use a local path or one of: {', '.join(s + '://' for s in known)}"


def _signed(query: str) -> bool:
    return any(k.lower() in SIGNED_QUERY_KEYS for k, _ in parse_qsl(query, keep_blank_values=True))


def _userinfo(netloc: str) -> bool:
    return "@" in netloc


def has_credentials(url: str) -> bool:
    """Whether url embeds a credential: user info (``user:pw@``) or a presigned query."""
    if url_scheme(url) is None:
        return False
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return True  # unparseable: treat as unsafe to print
    return _userinfo(parts.netloc) or _signed(parts.query)


def redact_url(url: str) -> str:
    """url with its user info and a signed query replaced by ``***`` (unchanged when it holds neither)."""
    url = str(url)
    if not has_credentials(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url_scheme(url)}://***"
    netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if _userinfo(parts.netloc) else parts.netloc
    query = "***" if _signed(parts.query) else parts.query
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") + (
        f"#{parts.fragment}" if parts.fragment else "")


def redact_text(text: str) -> str:
    """text with every URL in it redacted (``redact_url``): for messages that quote a user's input."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))


def url_problem(url: str) -> str | None:
    """Why url cannot be a storage URL in a spec (credentials, unknown scheme), or None; never echoes a secret."""
    if has_credentials(url):
        return (f"{redact_url(url)} holds a credential (user info or a signed query); give credentials through "
                "the environment (AWS_ACCESS_KEY_ID, ...), never in a URL")
    return scheme_problem(url)
