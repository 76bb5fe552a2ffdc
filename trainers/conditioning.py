"""Conditioning vectors: what a conditional generator is asked for.

``tags``: a multi-hot vector over the dataset's tag vocabulary (``manifest.vocabulary``, sorted).
Text prompts (sentence embeddings) are a later issue; they will be another encoder with the
same two methods, feeding the same ``c`` input of the networks.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, Sequence

from trainers.errors import GanrayError

if TYPE_CHECKING:  # torch is imported where a vector is made: ingest reads tags without it
    import torch


def normalise_tags(raw: Iterable[str]) -> list[str]:
    """Strips and lower-cases tags, keeping inner spaces ("Blonde  Hair" -> "blonde hair"), without repeats."""
    out = []
    for t in raw:
        t = re.sub(r"\s+", " ", str(t)).strip().lower()
        if t and t not in out:
            out.append(t)
    return out


class UnknownTagError(GanrayError, ValueError):
    """A requested tag is not in the model's vocabulary; the message lists the known ones."""


class TagEncoder:
    """Multi-hot vectors over a fixed, ordered tag vocabulary."""

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.vocabulary)}

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def encode(self, tag_lists: Iterable[Iterable[str]]) -> torch.Tensor:
        """(N, dim) float multi-hot for N samples' tags; tags outside the vocabulary are ignored."""
        import torch

        rows = list(tag_lists)
        c = torch.zeros(len(rows), self.dim)
        for i, tags in enumerate(rows):
            for t in tags:
                j = self.index.get(t)
                if j is not None:
                    c[i, j] = 1.0
        return c

    def encode_request(self, tags: Iterable[str]) -> torch.Tensor:
        """(dim,) multi-hot for a user's request; an unknown tag raises UnknownTagError naming the known ones."""
        tags = list(tags)
        unknown = [t for t in tags if t not in self.index]
        if unknown:
            raise UnknownTagError(f"unknown tag{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                  f"known tags: {', '.join(self.vocabulary)}")
        return self.encode([tags])[0]

    def decode(self, c: torch.Tensor, threshold: float = 0.5) -> list[list[str]]:
        """Tag lists for rows of c (multi-hot or probabilities)."""
        import torch

        return [[self.vocabulary[j] for j in torch.nonzero(row > threshold).flatten().tolist()] for row in c]
