"""Tags a request leaves open are drawn per sample from the training data's tag sets (MakeGirlsMoe's
"random" attributes): the manifest keeps the sets, the registered metadata carries them, sampling
draws from them reproducibly."""
from __future__ import annotations

from collections import Counter

import torch

from trainers.data.ingest.local import ingest
from trainers.data.ingest.synth import write_synthetic_dataset
from trainers.generator_metadata import GeneratorMetadata, read_metadata
from trainers.sampling import condition_rows, condition_vector, fill_tags, packed_rows

CONFIG = {"arch": "cond-dcgan", "z_dim": 4, "c_dim": 5, "resolution": 16}
VOCAB = ["blue eyes", "blonde hair", "hat", "red eyes", "sky background"]
SETS = {"blonde hair,blue eyes,sky background": 30, "blonde hair,hat,red eyes,sky background": 10,
        "blue eyes,hat,sky background": 60}


def test_the_manifest_keeps_the_tag_sets_of_the_ingested_samples(tmp_path):
    write_synthetic_dataset(tmp_path / "src", 120, 16, seed=1)
    manifest = ingest(tmp_path / "src", str(tmp_path / "ds"), tmp_path / "src" / "labels.csv", workers=1).manifest
    rows = (tmp_path / "src" / "labels.csv").read_text().splitlines()[1:]
    expected = Counter(",".join(sorted(r.split(",", 1)[1].strip('"').split(", "))) for r in rows)
    assert manifest.tag_sets == dict(expected) and sum(manifest.tag_sets.values()) == 120
    assert list(manifest.tag_sets.values()) == sorted(manifest.tag_sets.values(), reverse=True)


def test_open_tags_are_drawn_per_sample_reproducibly_and_the_requested_ones_always_kept():
    meta = GeneratorMetadata(CONFIG, VOCAB, "tags", tag_sets=SETS)
    drawn = fill_tags(meta, ["Blonde Hair"], 200, seed=5)
    assert all("blonde hair" in tags for tags in drawn)
    counts = Counter(",".join(t) for t in drawn)
    assert set(counts) == {"blonde hair,blue eyes,sky background", "blonde hair,hat,red eyes,sky background"}
    assert 0.6 < counts["blonde hair,blue eyes,sky background"] / 200 < 0.9  # weighted 30:10
    assert fill_tags(meta, ["blonde hair"], 200, seed=5) == drawn
    assert fill_tags(meta, ["blonde hair"], 3, seed=7) == drawn[2:5]  # sample i depends on seed + i alone
    assert fill_tags(meta, ["red eyes", "blue eyes"], 2, 0) == [["blue eyes", "red eyes"]] * 2  # no such set
    rows = condition_rows(meta, ["hat"], 4, 11)
    assert rows.shape == (4, 5) and bool((rows[:, VOCAB.index("hat")] == 1).all())
    exact = condition_rows(meta, ["hat"], 4, 11, fill=False)
    assert torch.equal(exact, condition_vector(meta, ["hat"]))
    packed = packed_rows(4, 4, 11, rows)
    assert packed.shape == (4, 9) and torch.equal(packed[:, 4:], rows)


def test_versions_registered_without_tag_sets_keep_exact_tags():
    old = read_metadata({"ganray": {"generator_config": CONFIG, "tags": VOCAB, "conditioning": "tags"}})
    assert old.tag_sets == {}
    assert torch.equal(condition_rows(old, ["hat"], 3, 0), condition_vector(old, ["hat"]))
    new = read_metadata({"ganray": GeneratorMetadata(CONFIG, VOCAB, "tags", tag_sets=SETS).to_dict()})
    assert new.tag_sets == SETS
