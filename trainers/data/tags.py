"""Tag normalisation: the one spelling of a tag, for labels files at ingest and for a user's request.

Below both ``trainers/data/ingest`` (which normalises a labels file's tags) and
``trainers/conditioning`` (which normalises a request's), so neither imports the other.
"""
from __future__ import annotations

import re
from typing import Iterable


def normalise_tags(raw: Iterable[str]) -> list[str]:
    """Strips and lower-cases tags, keeping inner spaces ("Blonde  Hair" -> "blonde hair"), without repeats."""
    out = []
    for t in raw:
        t = re.sub(r"\s+", " ", str(t)).strip().lower()
        if t and t not in out:
            out.append(t)
    return out
