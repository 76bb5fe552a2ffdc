"""moto's S3 server for the embedded stack, with an access log that never records a query string.

Presigned URLs carry their signature (``X-Amz-Signature``) and credential scope in the query
string, and werkzeug, which serves moto, logs every request line. Run as
``python -m orchestrator.stack.s3_server -H 127.0.0.1 -p PORT`` (moto's own arguments): every log
record of the process goes through one handler whose filter drops query strings and redacts
anything that looks like a signature or a credential, before it is written.
"""
from __future__ import annotations

import logging
import re
import sys

_QUERY = re.compile(r"\?[^\s\"']*")
_SIGNED = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId)=[^&\s\"']*",
                     re.IGNORECASE)


class NoQueryStrings(logging.Filter):
    """Rewrites a record's message without query strings or signature-like parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = message, ()
        return True


def redact(text: str) -> str:
    return _SIGNED.sub(r"\1=<redacted>", _QUERY.sub("", text))


def configure_logging() -> None:
    """One stderr handler for every logger of the process, behind the filter; werkzeug logs through it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(NoQueryStrings())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("werkzeug").setLevel(logging.INFO)  # werkzeug adds no handler of its own then


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
