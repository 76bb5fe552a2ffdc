"""Tags as a person expects them (trainers.tag_groups, deploy.tags): the tags no training sample has two of
(hair colours, eye colours, backgrounds) form groups offered as a choice of one; a request combining tags
never seen together is refused with their names; where the data has the pair, it is accepted.

The tables are realistic: the tag sets of the built-in anime faces (the data every demo ingests: one hair,
eye and background colour per face, accessories at 30%) counted as the manifest counts them, and a
booru-like table whose colour tags are missing on part of the samples, with rare tags that never met.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from trainers.data.ingest.synth import BACKGROUNDS, EYE_COLOURS, HAIR_COLOURS, sample_face
from trainers.data.manifest import MAX_TAG_SETS, tag_set_key, top_tag_sets
from trainers.generator_metadata import GeneratorMetadata
from trainers.tag_groups import MIN_EXPECTED, never_together, tag_table

HAIR, EYES, BACKS = sorted(HAIR_COLOURS), sorted(EYE_COLOURS), sorted(BACKGROUNDS)


def faces_table(n: int, seed: int) -> dict[str, int]:
    """The manifest's tag-set table of n built-in faces (write_synthetic_dataset's tags for that seed)."""
    return top_tag_sets(Counter(tag_set_key(sample_face(random.Random(f"{seed}:{i}")).tags) for i in range(n)))


def vocabulary_of(table: dict[str, int]) -> list[str]:
    return sorted({t for key in table for t in key.split(",") if t})


@pytest.mark.parametrize("n, seed", [(60, 2), (240, 3), (2000, 4)])
def test_the_faces_hair_eye_and_background_colours_are_groups_and_accessories_toggles(n, seed):
    sets = faces_table(n, seed)
    table = tag_table(vocabulary_of(sets), sets)
    # in the order of the vocabulary ("black hair" < "blue eyes" < "dark background")
    assert [(g.name, list(g.tags)) for g in table.groups] == [("hair", HAIR), ("eyes", EYES), ("background", BACKS)]
    assert table.toggles == ["blush", "glasses", "hat", "ribbon"] and table.complete and table.samples == n
    assert never_together(table, ["blonde hair", "black hair", "hat"]) == [("blonde hair", "black hair")]
    assert never_together(table, ["blue eyes", "red eyes", "sky background", "dark background"]) == [
        ("blue eyes", "red eyes"), ("sky background", "dark background")]
    seen = max((k for k in sets if "hat" in k.split(",") and "glasses" in k.split(",")), key=sets.__getitem__)
    assert never_together(table, seen.split(",")) == []  # a combination the data has is accepted
    assert table.describe() == {"tag_groups": [{"name": "hair", "tags": HAIR}, {"name": "eyes", "tags": EYES},
                                               {"name": "background", "tags": BACKS}],
                                "tag_toggles": ["blush", "glasses", "hat", "ribbon"], "tag_sets_complete": True}


def test_too_few_samples_to_tell_leave_tags_toggles():
    sets = faces_table(12, 9)  # 2 faces per hair colour: never together could be luck
    table = tag_table(vocabulary_of(sets), sets)
    assert not any(set(g.tags) & set(HAIR) for g in table.groups)
    assert set(HAIR) <= set(table.toggles)
    for group in table.groups:  # what is grouped is telling: each member would meet the rest MIN_EXPECTED times
        total = sum(table.counts[t] for t in group.tags)
        assert all(table.counts[t] * (total - table.counts[t]) / table.samples >= MIN_EXPECTED for t in group.tags)


def booru_table() -> dict[str, int]:
    """1000 samples: hair colour tagged on 90%, eye colour on 70%, 'long hair'/'short hair' on 80%,
    'smile' on half, two rare tags ('wings' 3 samples, 'tail' 2) that never meet, 'monochrome' (no colour)."""
    rng, counts = random.Random(5), Counter()
    for i in range(1000):
        if i < 40:
            tags = ["monochrome", rng.choice(["long hair", "short hair"])] + (["smile"] if i % 2 else [])
        else:
            tags = [t for t, p in (("smile", 0.5),) if rng.random() < p]
            if rng.random() < 0.9:
                tags.append(rng.choice(["blonde hair", "brown hair", "black hair", "aqua hair"]))
            if rng.random() < 0.7:
                tags.append(rng.choice(["blue eyes", "brown eyes"]))
            if rng.random() < 0.8:
                tags.append(rng.choice(["long hair", "short hair"]))
        tags += ["wings"] if i in (100, 200, 300) else ["tail"] if i in (400, 500) else []
        counts[tag_set_key(tags)] += 1
    return top_tag_sets(counts)


def test_partly_tagged_colours_still_group_and_rare_tags_that_never_met_stay_toggles():
    sets = booru_table()
    assert "" in sets  # samples without any tag are counted, and ignored as tags
    table = tag_table(vocabulary_of(sets), sets)
    groups = {g.name: set(g.tags) for g in table.groups}
    # no monochrome sample has a hair or an eye colour: it is one choice with one of them (a person picks one
    # of them too); the group keeps the name most of its tags share
    assert [g for g in groups.values() if "monochrome" in g] in ([groups["hair"]], [groups["eyes"]])
    assert groups["hair"] - {"monochrome"} == {"aqua hair", "black hair", "blonde hair", "brown hair"}
    assert groups["eyes"] - {"monochrome"} == {"blue eyes", "brown eyes"}
    assert groups["hair 2"] == {"long hair", "short hair"} and len(groups) == 3
    assert {"smile", "wings", "tail"} <= set(table.toggles)
    assert not table.together("wings", "tail") and never_together(table, ["wings", "tail"]) == [("wings", "tail")]


def test_a_capped_table_groups_the_frequent_sets_and_refuses_nothing():
    sets = faces_table(240, 3)
    capped = tag_table(vocabulary_of(sets), sets, cap=len(sets))  # as many sets as a manifest keeps: maybe cut
    assert not capped.complete and [g.name for g in capped.groups] == ["hair", "eyes", "background"]
    assert never_together(capped, ["blonde hair", "black hair"]) == []  # rarer sets may hold the pair
    assert capped.describe()["tag_sets_complete"] is False
    assert len(sets) < MAX_TAG_SETS and tag_table(vocabulary_of(sets), sets).complete
    empty = tag_table(["hat", "glasses"], {})  # a version registered before the table
    assert (empty.groups, empty.toggles, empty.complete) == ((), ["hat", "glasses"], False)
    assert never_together(empty, ["hat", "glasses"]) == []


def test_the_server_refuses_tags_never_seen_together_by_name_and_takes_any_everywhere():
    from deploy.loader import LoadedModel
    from deploy.request import BadRequest, parse_body, prepare
    from deploy.tags import describe_tags

    sets = faces_table(240, 3)
    vocab = vocabulary_of(sets)
    meta = GeneratorMetadata({"arch": "cond-dcgan", "z_dim": 4, "c_dim": len(vocab), "resolution": 16}, vocab,
                             "tags", tag_sets=sets)
    model = LoadedModel("faces", 1, None, None, meta)
    with pytest.raises(BadRequest) as err:
        prepare(model, parse_body(b'{"tags": ["Blonde Hair", "hat", "black hair"]}'), 10 ** 6)
    assert str(err.value) == (
        "model faces: tags never seen together in its training data (240 samples): 'blonde hair' with "
        "'black hair'. Ask for at most one tag of each group; hair is one of: " + ", ".join(HAIR))
    with pytest.raises(BadRequest, match="unknown tag 'green hair'"):  # an unknown tag is named first
        prepare(model, parse_body(b'{"tags": ["green hair", "black hair", "blonde hair"]}'), 10 ** 6)
    ok = prepare(model, parse_body(b'{"n": 3, "tags": ["blonde hair", "blue eyes"]}'), 10 ** 6)
    assert (ok.rows[:, 4 + vocab.index("blonde hair")] == 1).all() and ok.rows[:, 4:].sum(1).min() >= 3
    # "any" everywhere: no tags, each sample's tags drawn from the data (one hair, eye and background colour)
    drawn = prepare(model, parse_body(b'{"n": 8, "seed": 4}'), 10 ** 6).rows[:, 4:]
    for group in (HAIR, EYES, BACKS):
        assert torch.equal(drawn[:, [vocab.index(t) for t in group]].sum(1), torch.ones(8))
    assert describe_tags(meta)["tag_groups"][0] == {"name": "hair", "tags": HAIR}
    old = GeneratorMetadata(meta.generator_config, vocab, "tags")  # no table: any combination, no groups
    assert prepare(LoadedModel("old", 1, None, None, old),
                   parse_body(b'{"tags": ["blonde hair", "black hair"]}'), 10 ** 6).n == 16
    assert describe_tags(old) == {"tag_groups": [], "tag_toggles": vocab, "tag_sets_complete": False}
    with pytest.raises(BadRequest, match="is tag-conditioned: give tags"):
        prepare(LoadedModel("old", 1, None, None, old), parse_body(b"{}"), 10 ** 6)
