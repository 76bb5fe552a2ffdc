"""The serve configuration of one application: its one owner, for ``ganray serve``, the RayService
manifest (``k8s/base/rayservice.yaml``) and the replicas.

``ganray serve`` builds a :class:`ServeConfig` and sends :meth:`ServeConfig.to_args` as the
application's ``args``; Serve hands them to ``deploy.app:build_app`` and to every replica, which
read them back with :meth:`ServeConfig.from_args` and check them again (unknown keys, types,
ranges, the model reference by ``trainers.model_ref``'s grammar). No Ray, Serve or FastAPI here.

Every application has a bearer token, and the token itself never is an argument (Serve's REST API
hands the args to anyone who reaches the dashboard): ``token_sha256`` is its sha256 (what ``ganray
serve`` sends), or ``token_file`` a file on the replica's node that holds it (what the RayService
mounts from a Kubernetes Secret); the replica keeps only the sha256 (:func:`token_digest`).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainers.errors import UsageError
from trainers.model_ref import ModelRef, forms, parse_ref

MODEL_FORMS = forms(need_version=True, version_option=False)
CONTROL_SLOTS = 8  # requests beside the generate ones a replica always takes: /reload, /healthz, /model, the page
TOKEN_MIN_CHARS = 16
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


RANGES: dict[str, tuple[type, float]] = {  # every number field: (type, lowest value)
    "poll_s": (float, 0.1), "max_batch_size": (int, 1), "batch_wait_s": (float, 0.0), "replicas": (int, 1),
    "num_cpus": (float, 0.0), "num_gpus": (float, 0.0), "rows_per_pass": (int, 1), "max_queued_requests": (int, 0),
    "request_timeout_s": (float, 0.5), "max_request_pixels": (int, 1), "reload_min_interval_s": (float, 0.0)}


class ArgsError(UsageError, ValueError):
    """An application argument that cannot work; the message names it."""


@dataclass(frozen=True)
class ServeConfig:
    """What one application serves and how; every field is an ``args`` key of the same name."""

    model: ModelRef  # NAME@ALIAS (the replicas follow the alias) or NAME/VERSION (pinned)
    poll_s: float = 10.0  # how often a replica checks the alias; POST /reload checks at once
    max_batch_size: int = 16  # Serve's request batching per replica
    batch_wait_s: float = 0.01
    replicas: int = 1
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica; a GPU replica samples on cuda
    rows_per_pass: int = 64  # the most input rows one forward pass takes
    max_queued_requests: int = 32  # generate requests a replica holds beyond a running batch; more: 503 + Retry-After
    request_timeout_s: float = 60.0  # a generate request not answered by then: 503 + Retry-After
    max_request_pixels: int = 64 * 256 * 256  # rows x height x width of one request; more: 400 naming it
    reload_min_interval_s: float = 2.0  # POST /reload at most once per interval per replica; more: 429
    token_file: str | None = None  # a file on the replica's node holding the bearer token (the RayService's)
    token_sha256: str | None = None  # the sha256 of the bearer token, 64 lowercase hex (what ganray serve sends)
    private: bool = False  # /generate and /model (so the page's data) need the token too
    allow_origins: tuple[str, ...] = ()  # origins (scheme://host[:port]) allowed beside the endpoint's own

    def __post_init__(self):
        if not isinstance(self.model, ModelRef):
            raise ArgsError(f"argument model must be a ModelRef naming a version ({MODEL_FORMS}), got {self.model!r}")
        try:  # the reference it writes reads back as itself: every part is of the grammar
            same = parse_ref(str(self.model), need_version=True, version_option=False) == self.model
        except UsageError as err:
            raise ArgsError(f"argument model: {err}") from None
        if not same:
            raise ArgsError(f"argument model must name one version or one alias, got {self.model!r}")
        for name, (kind, low) in RANGES.items():
            object.__setattr__(self, name, _number(name, getattr(self, name), kind, low))
        _check_token(self.token_file, self.token_sha256)
        if not isinstance(self.private, bool):
            raise ArgsError(f"argument private must be true or false, got {self.private!r}")
        object.__setattr__(self, "allow_origins", _origins(self.allow_origins))

    def to_args(self) -> dict[str, Any]:
        """The application's ``args``: plain JSON types, the model as its reference text."""
        return {f.name: _plain(self, f.name) for f in fields(self)}

    @classmethod
    def from_args(cls, args: Any) -> "ServeConfig":
        """The checked config of an application's ``args``; ArgsError names the bad or unknown one."""
        if not isinstance(args, dict):
            raise ArgsError(f"the application's args must be a mapping, got {type(args).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(map(str, set(args) - set(known)))
        if unknown:
            raise ArgsError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if "model" not in args:
            raise ArgsError(f"argument model is required: {MODEL_FORMS}")
        try:
            model = parse_ref(args["model"], need_version=True, version_option=False)
        except UsageError as err:
            raise ArgsError(f"argument model: {err}") from None
        return cls(model, **{k: v for k, v in args.items() if k != "model"})

    def device(self) -> str:
        """cuda when the replica holds a GPU, else cpu."""
        if self.num_gpus > 0:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        return "cpu"

    def generate_capacity(self) -> int:
        """The generate requests one replica holds at once: a running batch and the queue behind it."""
        return self.max_batch_size + self.max_queued_requests

    def max_ongoing_requests(self) -> int:
        """Serve's bound per replica: every generate request it holds, and room beside them that no generate
        request takes (``CONTROL_SLOTS``: /reload, /healthz, /model and the page answer while generate is full)."""
        return self.generate_capacity() + CONTROL_SLOTS


def token_digest(token: str) -> str:
    """The sha256 (64 lowercase hex) of a bearer token: what a config carries and a replica compares."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_token(path: str | Path) -> str:
    """The bearer token in the file at path (surrounding whitespace dropped); ArgsError naming the file, never
    its content, when it is missing, unreadable, empty or too short to be a secret."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ArgsError(f"token file {path}: cannot read it ({why})") from None
    if len(token) < TOKEN_MIN_CHARS or any(ch.isspace() for ch in token):
        raise ArgsError(f"token file {path} must hold one token of at least {TOKEN_MIN_CHARS} characters without "
                        "spaces (ganray serve generates one when --token-file is not given)")
    return token


def normalise_origin(text: Any) -> str | None:
    """scheme://host[:port] in lower case, the scheme's default port dropped; None for anything else."""
    if not isinstance(text, str) or len(text) > 300:
        return None
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _check_token(token_file: Any, token_sha256: Any) -> None:
    if (token_file is None) == (token_sha256 is None):
        raise ArgsError("give exactly one of the arguments token_file (a file on the replica's node holding the "
                        "bearer token) and token_sha256 (its sha256): every application needs a token, and the "
                        "token itself is never an argument")
    if token_sha256 is not None and not (isinstance(token_sha256, str) and SHA256_HEX.fullmatch(token_sha256)):
        raise ArgsError("argument token_sha256 must be the sha256 of the token as 64 lowercase hex digits")
    if token_file is not None and not (isinstance(token_file, str) and token_file.startswith("/")
                                       and "\x00" not in token_file and len(token_file) < 4096):
        raise ArgsError(f"argument token_file must be an absolute path on the replica's node, got {token_file!r:.80}")


def _origins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ArgsError(f"argument allow_origins must be a list of origins (scheme://host[:port]), got {value!r:.80}")
    origins = []
    for item in value:
        origin = normalise_origin(item)
        if origin is None:
            raise ArgsError(f"argument allow_origins: {item!r:.80} is not an origin: give scheme://host[:port] "
                            "(http or https, no path; '*' is not accepted)")
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _plain(config: ServeConfig, name: str) -> Any:
    value = getattr(config, name)
    return str(value) if name == "model" else list(value) if name == "allow_origins" else value


def _number(name: str, value: Any, kind: type, low: float) -> int | float:
    ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else
                                          isinstance(value, (int, float)) and math.isfinite(value))
    if not ok or value < low:
        what = "an integer" if kind is int else "a number"
        raise ArgsError(f"argument {name} must be {what} >= {low:g}, got {value!r}")
    return kind(value)
