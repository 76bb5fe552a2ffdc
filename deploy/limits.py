"""A replica's load bounds: how many generate requests it holds, and how often ``POST /reload`` runs.

- :class:`GenerateSlots`: at most ``capacity`` generate requests at once (a running batch and the queue
  behind it, ``ServeConfig.generate_capacity``); one more is :class:`Busy` at once (503 with
  ``Retry-After``), never held. Nothing else takes a slot, so ``/reload``, ``/healthz``, ``/model`` and the
  page answer while generate is full (Serve's ``max_ongoing_requests`` leaves room for them).
- :class:`ReloadRate`: one reload at a time, and the next one at least ``interval_s`` after the last one
  ended; sooner is :class:`TooSoon` (429 with ``Retry-After``). Each reload asks MLflow.
- A walk (``POST /walk``) takes a generate slot like a generate request, and is bounded on its own:
  at most ``MAX_WALK_FRAMES`` frames through at most ``MAX_WALK_SEEDS`` key seeds, at ``WALK_FPS``
  frames per second, and its frames' pixels within the same ``max_request_pixels`` as a generate request.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator

RETRY_AFTER_S = 1  # what a refused generate request is told (Serve's own queue says the same)
MAX_WALK_FRAMES = 240  # frames of one POST /walk answer (10 s at 24 fps)
MAX_WALK_SEEDS = 16  # key seeds of one walk
WALK_FPS = (1, 50)  # the frame rates an answer may ask (GIF counts in centiseconds: 50 fps is 2 cs a frame)


class Busy(Exception):
    """Every generate slot of the replica is taken; the message says how many there are."""

    def __init__(self, capacity: int):
        super().__init__(f"the replica holds {capacity} generate requests (a running batch and its queue): the "
                         "queue is full, retry later")
        self.retry_after_s = RETRY_AFTER_S


class TooSoon(Exception):
    """A reload sooner than the interval allows (or while one runs)."""

    def __init__(self, retry_after_s: float, interval_s: float):
        super().__init__(f"POST /reload runs at most once every {interval_s:g} s (reload_min_interval_s); "
                         f"retry in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header of an answer: whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class GenerateSlots:
    def __init__(self, capacity: int):
        self.capacity, self.holding = capacity, 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """A slot for the block; Busy when none is free."""
        if self.holding >= self.capacity:
            raise Busy(self.capacity)
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1


class ReloadRate:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.running, self.ended = False, -math.inf

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The block is this reload; TooSoon while another runs or within interval_s of the last one's end."""
        wait = self.interval_s - (self.clock() - self.ended)
        if self.running or wait > 0:
            raise TooSoon(max(wait, self.interval_s if self.running else wait, 1e-9), self.interval_s)
        self.running = True
        try:
            yield
        finally:
            self.running, self.ended = False, self.clock()
