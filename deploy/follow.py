"""The version a replica serves: loaded at start, and again whenever the alias moves.

:meth:`ModelFollower.refresh` resolves the reference and, when it names another version,
loads that one off the event loop and swaps it in with one assignment. A request holds the
model it was prepared with until it is answered, so a swap drops nothing in flight.
"""
from __future__ import annotations

import asyncio
import logging

from deploy.loader import LoadedModel, RegistryError, load_version, named_version, registry_client
from trainers.model_ref import ModelRef

log = logging.getLogger("ray.serve")


class ModelFollower:
    def __init__(self, ref: ModelRef, device: str = "cpu", client=None):
        self.ref, self.device = ref, device
        self.client = client if client is not None else registry_client()  # MLflow of the replica's environment
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> LoadedModel:
        """The version ref names now, loaded and current; a RegistryError (or LoadError) leaves the current
        one serving."""
        async with self._lock:
            try:
                version = int((await asyncio.to_thread(named_version, self.client, self.ref)).version)
                if self.current is None or self.current.version != version:
                    model = await asyncio.to_thread(load_version, self.client, self.ref, version, self.device)
                    previous, self.current = self.current, model
                    log.info("serving %s version %d (was %s)", self.ref, version,
                             previous.version if previous else "none")
            except RegistryError as err:
                self.last_error = str(err)
                raise
            self.last_error = None
            return self.current

    async def follow(self, poll_s: float) -> None:
        """Refreshes every poll_s (a pinned version: until it is loaded); errors are kept, never raised."""
        while True:
            try:
                await self.refresh()
            except RegistryError as err:
                log.warning("%s", err)
            except Exception as err:  # noqa: BLE001 - the poller must outlive anything
                self.last_error = f"{type(err).__name__}: {err}"[:500]
                log.exception("refreshing %s failed", self.ref)
            if self.current is not None and not self.ref.follows_alias:
                return
            await asyncio.sleep(poll_s if self.current is not None else min(poll_s, 2.0))
