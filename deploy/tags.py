"""A served version's tag rules: its tag table's answer to ``GET /model`` (groups, toggles), and the check
that refuses a request combining tags its training data never has together.

The table is the version's metadata's (``GeneratorMetadata.tag_table``, from ``trainers.tag_groups``,
computed once per loaded version); the page offers each group as a choice of one.
"""
from __future__ import annotations

from trainers.data.tags import normalise_tags
from trainers.generator_metadata import GeneratorMetadata
from trainers.tag_groups import never_together


class NeverTogether(ValueError):
    """A request of tags the training data never has together; the message names them."""


def describe_tags(meta: GeneratorMetadata) -> dict:
    """GET /model's tag part: ``tag_groups`` ([{name, tags}]), ``tag_toggles``, ``tag_sets_complete``."""
    if meta.conditioning != "tags":
        return {"tag_groups": [], "tag_toggles": list(meta.vocabulary), "tag_sets_complete": False}
    return meta.tag_table.describe()


def check_together(meta: GeneratorMetadata, tags: list[str], where: str) -> None:
    """NeverTogether naming each pair of tags that no training sample has together (and the group they
    are one choice of); nothing for a version without a complete tag-set table."""
    table = meta.tag_table
    pairs = never_together(table, normalise_tags(tags))
    if not pairs:
        return
    named = "; ".join(f"{a!r} with {b!r}" for a, b in pairs)
    groups = [g for g in table.groups if any(a in g.tags and b in g.tags for a, b in pairs)]
    hint = "".join(f"; {g.name} is one of: {', '.join(g.tags)}" for g in groups)
    raise NeverTogether(f"{where}: tags never seen together in its training data ({table.samples} samples): "
                        f"{named}. Ask for at most one tag of each group{hint}")
