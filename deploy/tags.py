"""A served version's tag rules: its tag table (groups, toggles, pairs), computed once per loaded version,
and the check that refuses a request combining tags its training data never has together.

The table comes from the version's metadata (``trainers.tag_groups``); ``GET /model`` answers its
groups and the page offers each group as a choice of one.
"""
from __future__ import annotations

from trainers.data.tags import normalise_tags
from trainers.generator_metadata import GeneratorMetadata
from trainers.tag_groups import TagTable, never_together, tag_table

_TABLES: dict[int, tuple[GeneratorMetadata, TagTable]] = {}  # id(meta) -> (meta, its table); a few versions
_KEPT = 8


class NeverTogether(ValueError):
    """A request of tags the training data never has together; the message names them."""


def table_of(meta: GeneratorMetadata) -> TagTable:
    """meta's tag table, computed on first use (the metadata object is kept, so its id is not reused)."""
    hit = _TABLES.get(id(meta))
    if hit is None or hit[0] is not meta:
        if len(_TABLES) >= _KEPT:
            _TABLES.clear()
        hit = _TABLES[id(meta)] = (meta, tag_table(list(meta.vocabulary), meta.tag_sets))
    return hit[1]


def describe_tags(meta: GeneratorMetadata) -> dict:
    """GET /model's tag part: ``tag_groups`` ([{name, tags}]), ``tag_toggles``, ``tag_sets_complete``."""
    if meta.conditioning != "tags":
        return {"tag_groups": [], "tag_toggles": list(meta.vocabulary), "tag_sets_complete": False}
    return table_of(meta).describe()


def check_together(meta: GeneratorMetadata, tags: list[str], where: str) -> None:
    """NeverTogether naming each pair of tags that no training sample has together (and the group they
    are one choice of); nothing for a version without a complete tag-set table."""
    table = table_of(meta)
    pairs = never_together(table, normalise_tags(tags))
    if not pairs:
        return
    named = "; ".join(f"{a!r} with {b!r}" for a, b in pairs)
    groups = [g for g in table.groups if any(a in g.tags and b in g.tags for a, b in pairs)]
    hint = "".join(f"; {g.name} is one of: {', '.join(g.tags)}" for g in groups)
    raise NeverTogether(f"{where}: tags never seen together in its training data ({table.samples} samples): "
                        f"{named}. Ask for at most one tag of each group{hint}")
