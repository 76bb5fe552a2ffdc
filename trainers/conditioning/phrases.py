"""Phrase pooling: a sentence embedding as the mean of its content phrases' embeddings.

A prompt is cut at punctuation and at English closed-class words (articles, determiners,
pronouns, prepositions, conjunctions, auxiliary verbs: the words that join descriptions,
not the descriptions), and each remaining run of words is encoded on its own: "a person
with raven hair and scarlet eyes" becomes "person", "raven hair", "scarlet eyes". The
mean of those unit vectors, renormalised, is the text's embedding. Each phrase is then
read by the encoder without the rest of the sentence around it, so a caption's wording
(the template, the order, the connecting words) moves the embedding much less than what
it describes. Measured with a linear probe from embeddings of composed captions to their
tags, applied to ``bench/prompts_paraphrased.json``: 0.79-0.80 of the prompted tags with
whole-sentence embeddings, 0.84 with phrase pooling (bench/text_encoder_probe.py).
``sentence`` pooling (one embedding of the whole text) is what text models trained before
phrase pooling existed use; their specs and registered versions read as ``sentence``.
No torch here; the encoding is :func:`trainers.conditioning.encoder.encode`'s.
"""
from __future__ import annotations

import re
from typing import Sequence

from trainers.errors import GanrayError

POOLINGS = ("phrases", "sentence")
DEFAULT_POOLING = "phrases"

# English closed-class words: by grammatical category, not by any prompt or template.
_ARTICLES_DETERMINERS = "a an the this that these those some any each every all both either neither no " \
                        "another other such what which whose my your his her its our their"
_PRONOUNS = "i me you he him she it we us they them who whom myself yourself himself herself itself " \
            "ourselves themselves someone somebody something anyone anybody anything one"
_PREPOSITIONS = "about above across after against along among around as at before behind below beneath " \
                "beside besides between beyond by down during for from in inside into near of off on onto " \
                "out outside over past through throughout to toward towards under underneath until up upon " \
                "with within without"
_CONJUNCTIONS = "and or but nor so yet because although though while whereas if unless than then"
_AUXILIARIES = "am is are was were be been being have has had having do does did will would shall should " \
               "can could may might must"
FUNCTION_WORDS = frozenset(" ".join((_ARTICLES_DETERMINERS, _PRONOUNS, _PREPOSITIONS, _CONJUNCTIONS,
                                     _AUXILIARIES)).split())
_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")


def phrases(text: str) -> list[str]:
    """The content phrases of text, in order (lower-cased); [text] when it has none."""
    out: list[str] = []
    run: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if token in FUNCTION_WORDS or not (token[0].isalnum() or token[0] == "_"):
            if run:
                out.append(" ".join(run))
                run = []
        else:
            run.append(token)
    if run:
        out.append(" ".join(run))
    return out or [text]


class PoolingError(GanrayError, ValueError):
    """A text pooling ganray does not know; the message lists the known ones."""


def check_pooling(pooling: str) -> str:
    """pooling, when it is one ganray knows; PoolingError naming the known ones otherwise."""
    if pooling not in POOLINGS:
        raise PoolingError(f"unknown text pooling {pooling!r}; known: {', '.join(POOLINGS)}")
    return pooling


def embed(encoder_name: str, texts: Sequence[str], pooling: str):
    """(N, dim) float32 unit-norm embeddings of texts by the named encoder: of each whole text
    (``sentence``), or the renormalised mean of its content phrases' (``phrases``; each distinct
    phrase is encoded once, so a caption table of many lines costs its vocabulary of phrases)."""
    import numpy as np

    from trainers.conditioning import encoder

    texts = list(texts)
    encoder.encoder_info(encoder_name)  # an unknown encoder is named before the pooling
    if check_pooling(pooling) == "sentence" or not texts:
        return encoder.encode(encoder_name, texts)
    split = [phrases(t) for t in texts]
    distinct = sorted({p for parts in split for p in parts})
    row = {p: i for i, p in enumerate(distinct)}
    table = encoder.encode(encoder_name, distinct)
    out = np.stack([table[[row[p] for p in parts]].mean(axis=0) for parts in split])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)
