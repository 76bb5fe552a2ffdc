"""Which tags a person picks one of: groups of tags that never occur together in the training data.

A tag-conditioned version carries the training data's tag-set table (``GeneratorMetadata.tag_sets``:
each distinct combination of tags with how many samples have it). From it, :func:`tag_table` counts
every tag and every pair of tags, and finds the groups a person expects: hair colours, eye colours,
backgrounds, tags of which no sample has two. The page offers a group as a choice of one with "any"
as the default (MakeGirlsMoe's page does); every other tag stays a toggle. A request combining tags
never seen together (:func:`never_together`) is refused by the server with their names.

How a group is found (greedy, deterministic): the most frequent ungrouped tag starts one; every less
frequent tag that occurs with none of its members joins it, in order of frequency; then members whose
never-together is not telling are dropped one by one: a member whose expected co-occurrence with the
rest of the group, were the tags independent (count x others' count / samples), is under
``MIN_EXPECTED`` (5: a chance under 1% of seeing none by luck), so two rare tags that merely never
met stay toggles. A group keeps at least two tags.

The table may be capped: a manifest keeps the ``MAX_TAG_SETS`` most frequent tag sets only. A table
that holds that many may have lost rarer sets, so a pair absent from it may still be in the data:
``complete`` is then False; the groups are still offered (they come from the most frequent sets) but
:func:`never_together` refuses nothing, as nothing proves the pair was never seen.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.data.manifest import MAX_TAG_SETS

MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class TagGroup:
    """Tags of which no training sample has two; name is their shared last word ("hair"), else "one of"."""

    name: str
    tags: tuple[str, ...]  # in the order of the vocabulary


@dataclass(frozen=True)
class TagTable:
    """What a version's tag-set table says about its tags."""

    vocabulary: tuple[str, ...]
    counts: dict[str, int]  # samples with each tag
    pairs: dict[tuple[str, str], int]  # samples with both tags of a pair (sorted); absent: none
    samples: int  # samples the table covers
    complete: bool  # the table holds every tag set of the data (fewer than the manifest's cap)
    groups: tuple[TagGroup, ...]

    @property
    def toggles(self) -> list[str]:
        """The tags in no group, in the order of the vocabulary."""
        grouped = {t for g in self.groups for t in g.tags}
        return [t for t in self.vocabulary if t not in grouped]

    def together(self, a: str, b: str) -> int:
        """How many samples have both a and b."""
        return self.pairs.get((a, b) if a < b else (b, a), 0)

    def describe(self) -> dict:
        """GET /model's part: the groups, the toggles and whether the table is complete."""
        return {"tag_groups": [{"name": g.name, "tags": list(g.tags)} for g in self.groups],
                "tag_toggles": self.toggles, "tag_sets_complete": self.complete}


def tag_table(vocabulary: list[str], tag_sets: dict[str, int], cap: int = MAX_TAG_SETS) -> TagTable:
    """The counts, pairs and groups of a tag-set table ("a,b,c": samples; keys as ``tag_set_key`` writes
    them). Tags outside the vocabulary are left out; an empty table (versions registered before it
    existed) gives no groups and refuses nothing."""
    known = set(vocabulary)
    counts = {t: 0 for t in vocabulary}
    pairs: dict[tuple[str, str], int] = {}
    samples = 0
    for key, n in tag_sets.items():
        tags = sorted({t for t in key.split(",") if t in known})
        samples += n
        for i, a in enumerate(tags):
            counts[a] += n
            for b in tags[i + 1:]:
                pairs[(a, b)] = pairs.get((a, b), 0) + n
    complete = bool(tag_sets) and len(tag_sets) < cap
    table = TagTable(tuple(vocabulary), counts, pairs, samples, complete, ())
    return TagTable(tuple(vocabulary), counts, pairs, samples, complete, _groups(table))


def never_together(table: TagTable, tags: list[str]) -> list[tuple[str, str]]:
    """The pairs of tags (normalised, known) that no training sample has together, in request order; none
    when the table is not complete (a capped table cannot prove it) or a tag occurs in no sample."""
    if not table.complete:
        return []
    seen = [t for t in tags if table.counts.get(t, 0) > 0]
    return [(a, b) for i, a in enumerate(seen) for b in seen[i + 1:] if not table.together(a, b)]


def _groups(table: TagTable) -> tuple[TagGroup, ...]:
    order = {t: i for i, t in enumerate(table.vocabulary)}
    pool = sorted((t for t in table.vocabulary if table.counts[t] > 0), key=lambda t: (-table.counts[t], order[t]))
    found: list[list[str]] = []
    while pool:
        members = _telling(table, _grow(table, pool))
        if len(members) >= 2:
            found.append(sorted(members, key=order.__getitem__))
        pool = [t for t in pool[1:] if len(members) < 2 or t not in members]
    found.sort(key=lambda g: order[g[0]])
    return tuple(TagGroup(name, tuple(g)) for name, g in zip(_names(found), found))


def _grow(table: TagTable, pool: list[str]) -> list[str]:
    """pool[0] and every later tag of pool that occurs with none of the members so far."""
    members = [pool[0]]
    for tag in pool[1:]:
        if all(not table.together(tag, m) for m in members):
            members.append(tag)
    return members


def _telling(table: TagTable, members: list[str]) -> list[str]:
    """members without those whose never-together could be luck: drops the least telling one while its
    expected co-occurrence with the rest is under MIN_EXPECTED."""
    members = list(members)
    while len(members) >= 2:
        total = sum(table.counts[m] for m in members)
        expected = {m: table.counts[m] * (total - table.counts[m]) / table.samples for m in members}
        weakest = min(members, key=lambda m: (expected[m], -members.index(m)))
        if expected[weakest] >= MIN_EXPECTED:
            break
        members.remove(weakest)
    return members


def _names(groups: list[list[str]]) -> list[str]:
    """Each group's name: the last word most of its tags end with ("hair" for "blonde hair", "black hair"),
    else "one of"; a repeated name is numbered ("hair 2")."""
    names, used = [], {}
    for tags in groups:
        words = [t.rsplit(" ", 1)[1] for t in tags if " " in t]
        common = max(sorted(set(words)), key=words.count) if words else ""
        name = common if 2 * words.count(common) > len(tags) else "one of"
        used[name] = used.get(name, 0) + 1
        names.append(name if used[name] == 1 else f"{name} {used[name]}")
    return names
