"""Text-image agreement of a text-conditioned generator, judged by the per-tag judge (``tag_accuracy.py``).

Prompts are composed from tag sets of the dataset (a random non-empty subset of one
sample's tags, through the caption templates), keeping only prompts that are no line of
any training caption: the generator never saw these texts. For each prompt the judge
reads the generated image; two numbers come out:

- ``text_tag_acc``: the share of prompted tags the judge recognises (probability > 0.5),
  with ``text_prompt_score`` (the mean over prompts of each prompt's share, the benchmark's
  score), per tag, false positives and exact matches as for tag accuracy;
- ``text_retrieval_r1``: whether the image matches its own prompt better than 99 other
  prompts: the score of a prompt for an image is the mean log-probability the judge gives
  the prompt's tags; distractors whose tags are all among the prompt's own are left out
  (the image would rightly match them too). Chance is 1/100.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from trainers.data.captions import compose_line_tags

DISTRACTORS = 99


def compose_prompts(tag_pool: Sequence[Sequence[str]], n: int, seed: int, seen: set[str]
                    ) -> tuple[list[str], list[list[str]]]:
    """n (prompt, tags) composed from the pool's tag sets, none in `seen` (training caption lines)."""
    rng = random.Random(seed)
    prompts, tags = [], []
    pool = [list(t) for t in tag_pool if t]
    if not pool:
        raise ValueError("no tag sets to compose prompts from (the dataset has no tags)")
    for _ in range(n * 50):
        if len(prompts) == n:
            break
        chosen = pool[rng.randrange(len(pool))]
        line, mentioned = compose_line_tags(chosen, rng)
        if line in seen:
            continue
        prompts.append(line)
        tags.append(mentioned)
    return prompts, tags


def prompt_fractions(probs: np.ndarray, requested: np.ndarray) -> np.ndarray:
    """Per row: the share of requested tags with probability > 0.5 (NaN for a row with none)."""
    req = requested > 0.5
    hit = ((probs > 0.5) & req).sum(1)
    count = req.sum(1)
    return np.where(count > 0, hit / np.maximum(count, 1), np.nan)


def retrieval_r1(probs: np.ndarray, requested: np.ndarray, seed: int, distractors: int = DISTRACTORS) -> float:
    """The share of images whose own prompt scores above every distractor prompt (see the module docstring)."""
    req = requested > 0.5
    logp = np.log(np.clip(probs, 1e-6, 1.0))
    counts = np.maximum(req.sum(1), 1)
    scores = (logp @ req.T.astype(np.float64)) / counts[None, :]  # scores[i, j]: image i, prompt j
    rng = np.random.default_rng(seed)
    hits = []
    for i in range(len(req)):
        others = [j for j in range(len(req)) if j != i and (req[j] & ~req[i]).any()]
        if not others:
            continue
        pick = rng.choice(others, size=min(distractors, len(others)), replace=False)
        hits.append(scores[i, i] > scores[i, pick].max())
    return float(np.mean(hits)) if hits else float("nan")
