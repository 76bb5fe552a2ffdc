"""Tag conditioning: a multi-hot vector over the dataset's tag vocabulary (``manifest.vocabulary``, sorted).

A request's tags are spelled as ingest spells a labels file's (``trainers/data/tags.py``).
``TagEncoder`` imports no torch at module level (the spec and the sampler read vocabularies
without it); torch is imported where a vector is made.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from trainers.data.tags import normalise_tags
from trainers.errors import GanrayError

if TYPE_CHECKING:
    import torch


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


class TagConditioning(TagEncoder):
    """The ``tags`` conditioning: c is the multi-hot vector of a sample's tags (or a request's)."""

    kind = "tags"
    matching_aware = False  # a projection D with an auxiliary multi-label head (MakeGirlsMoe), no mismatch term

    def __init__(self, vocabulary: Sequence[str], url: str):
        super().__init__(vocabulary)
        self.url = url
        self._pool: list[list[str]] | None = None

    def batch(self, samples: list[dict[str, Any]], gen: torch.Generator | None = None) -> torch.Tensor:
        """(N, dim) for a batch of training samples (their ``tags``); draws nothing from gen."""
        return self.encode([s["tags"] for s in samples])

    def request(self, tags: Iterable[str]) -> torch.Tensor:
        """(dim,) for a user's tags (UnknownTagError naming the known ones)."""
        return self.encode_request(normalise_tags(tags))

    def first(self, n: int) -> torch.Tensor:
        """The first n samples' vectors in stored order (padded with empty tag sets): the sample grid's."""
        from trainers.stored_order import iter_samples

        tag_lists = [s["tags"] for s in iter_samples(self.url, limit=n)]
        return self.encode(tag_lists + [[]] * (n - len(tag_lists)))

    def draw(self, n: int, seed: int) -> torch.Tensor:
        """n vectors drawn with replacement (seeded) from the dataset's own tag sets."""
        import numpy as np

        from trainers.stored_order import iter_samples

        if self._pool is None:
            self._pool = [s["tags"] for s in iter_samples(self.url)]
        idx = np.random.default_rng(seed).integers(0, len(self._pool), n)
        return self.encode([self._pool[i] for i in idx])
