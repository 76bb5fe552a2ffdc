"""The tracking server: a client of it, and waiting it out when it went away (which errors mean "away",
the backoff, the patience).

MLflow's own client retries a refused connection for about four minutes, silently, inside
one call. ganray asks it for short attempts (:data:`QUICK_REQUESTS`, set by
``cluster.endpoints.resolve_endpoints`` and on the Train controller) and retries here instead,
with a backoff it logs: the controller callback keeps its reports meanwhile
(``orchestrator/controller/outbox.py``), and the driver's finishing (the state, the registration, the
summary) waits up to :data:`PATIENCE_S` for the server to come back before giving up.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from trainers.errors import GanrayError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("ganray.retry")
T = TypeVar("T")

PATIENCE_S = 300.0  # how long the driver's finishing waits for the tracking server to come back
# One MLflow request: at most two quick retries of its own (~3 s), then the caller's backoff.
QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_AWAY = re.compile(r"failed with exception|Max retries exceeded|Connection (refused|reset|aborted)|"
                   r"RemoteDisconnected|timed out|error code (429|502|503|504)\b", re.IGNORECASE)


class TrackingError(GanrayError, RuntimeError):
    """MLflow cannot be reached or refuses what we ask."""


def client(tracking_uri: str | None) -> "MlflowClient":
    """A client of the tracking server (and its registry); TrackingError when there is none."""
    if not tracking_uri:
        raise TrackingError("no MLflow server: start the local stack (`ganray local up`) or set MLFLOW_TRACKING_URI")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def quick_requests() -> None:
    """Short MLflow requests in this process, unless the environment chose otherwise."""
    for k, v in QUICK_REQUESTS.items():
        os.environ.setdefault(k, v)


def unreachable(err: BaseException) -> bool:
    """Whether err means the tracking server could not be reached (or is restarting), as opposed to a
    refusal of what was asked, which no wait will change."""
    seen = 0
    e: BaseException | None = err
    while e is not None and seen < 8:
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in ("ConnectionError", "Timeout",
                                                                                 "ReadTimeout", "ConnectTimeout"):
            return True
        if _AWAY.search(str(getattr(e, "message", "")) or str(e)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class Backoff:
    """Delays of 0.5 s doubling up to cap_s."""

    def __init__(self, first_s: float = 0.5, cap_s: float = 10.0):
        self.first_s, self.cap_s, self.next_s = first_s, cap_s, first_s

    def delay(self) -> float:
        d, self.next_s = self.next_s, min(self.next_s * 2, self.cap_s)
        return d

    def reset(self) -> None:
        self.next_s = self.first_s


def patiently(fn: Callable[[], T], what: str, patience_s: float = PATIENCE_S) -> T:
    """fn(), retried with a logged backoff while the tracking server is unreachable, for up to
    patience_s; TrackingError after that. Any other error is raised at once."""
    start, backoff, last_log = time.monotonic(), Backoff(), 0.0
    while True:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - classified below
            waited = time.monotonic() - start
            if not unreachable(err):
                raise
            if waited >= patience_s:
                raise TrackingError(f"MLflow unreachable for {waited:.0f}s while {what} "
                                    f"({type(err).__name__}); run the job again once it answers") from None
            if time.monotonic() - last_log >= 30 or last_log == 0.0:
                log.warning("MLflow unreachable while %s (%s); retrying for up to %.0fs more", what,
                            type(err).__name__, patience_s - waited)
                last_log = time.monotonic()
            time.sleep(min(backoff.delay(), max(0.1, patience_s - waited)))
            continue
        if last_log:
            log.warning("MLflow answered again after %.0fs; %s", time.monotonic() - start, what)
        return result
