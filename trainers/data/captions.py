"""Captions composed from tags (ingest ``--compose-captions``, ``data synth``), and the lines a caption holds.

A composed caption holds several lines, each one description of the image: a template
filled with a subset of its tags (at least one, every tag kept with probability 0.7) in a
shuffled order, as StackGAN's datasets hold several captions per image; training draws one
line per sample and step. The draw is seeded by the sample's name, so the same tags and
name always give the same caption (and the same dataset hash). The templates use the tag
names verbatim; ``bench/prompts_paraphrased.json`` holds prompts in wording they never use.
No torch here: ingest composes in its worker processes. Below both ingest and the text
conditioning (which reads a caption's lines, ``caption_lines``), so neither imports the other.
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

CAPTION_LINES = 4
KEEP_TAG = 0.7
TEMPLATES = (
    "{list}",
    "a face with {and_list}",
    "an anime character with {and_list}",
    "a picture of someone with {and_list}",
    "{and_list}, anime style",
)


def _and_list(tags: Sequence[str]) -> str:
    return tags[0] if len(tags) == 1 else f"{', '.join(tags[:-1])} and {tags[-1]}"


def fill(template: str, tags: Sequence[str]) -> str:
    """One template filled with tags in the given order."""
    return template.format(list=", ".join(tags), and_list=_and_list(tags))


def compose_line(tags: Sequence[str], rng: random.Random) -> str:
    """One description: a template with a non-empty random subset of tags, shuffled."""
    return compose_line_tags(tags, rng)[0]


def compose_line_tags(tags: Sequence[str], rng: random.Random) -> tuple[str, list[str]]:
    """(one description, the tags it mentions): compose_line with its subset."""
    keep = [t for t in tags if rng.random() < KEEP_TAG] or [rng.choice(list(tags))]
    rng.shuffle(keep)
    return fill(rng.choice(TEMPLATES), keep), keep


def compose_caption(tags: Sequence[str], name: str, lines: int = CAPTION_LINES) -> str | None:
    """A caption of `lines` descriptions for a sample's tags (None without tags), seeded by name."""
    tags = list(tags)
    if not tags:
        return None
    rng = random.Random(int.from_bytes(hashlib.sha256(f"caption:{name}".encode()).digest()[:8], "big"))
    out: list[str] = []
    for _ in range(lines):
        line = compose_line(tags, rng)
        if line not in out:
            out.append(line)
    return "\n".join(out)


def caption_lines(caption: str | None) -> list[str]:
    """The descriptions a caption holds: its non-empty lines, stripped."""
    return [line.strip() for line in (caption or "").splitlines() if line.strip()]


def template_wordings(tags: Sequence[str]) -> set[str]:
    """Every line a template can make from tags (any non-empty subset, any order): what a prompt
    must not be to count as paraphrased. Exponential in len(tags); meant for prompts of a few tags."""
    from itertools import combinations, permutations

    out = set()
    for k in range(1, len(tags) + 1):
        for subset in combinations(tags, k):
            for order in permutations(subset):
                out.update(fill(t, order) for t in TEMPLATES)
    return out
