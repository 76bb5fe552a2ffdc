"""How much of a paraphrased prompt's tags the text embedding itself carries, per pooling (no GAN).

A linear probe (one L2-regularised logistic regression per tag, scikit-learn) is fitted from
the embeddings of caption lines composed from the synthetic faces' tags (the templates ingest
``--compose-captions`` uses) to the tags each line mentions, then applied to the prompts of
``bench/prompts_paraphrased.json``. Two readings per prompt, averaged over prompts:

- ``threshold``: the share of the prompted tags whose probability is > 0.5;
- ``group_argmax``: the share of the prompted tags that win their group (hair colour, eye
  colour, background; a binary accessory counts when > 0.5).

A generator conditioned on the same embeddings reads prompts through a learned map of the same
training captions, so this is a ceiling-like reading of what the encoder and pooling hand it.
Every pooling in ``trainers.conditioning.phrases.POOLINGS`` is measured over the same captions,
over a grid of regularisation strengths (medians reported).

    .venv/bin/python bench/text_encoder_probe.py --out bench/results/text_encoder_probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STRENGTHS = (0.3, 1.0, 3.0, 10.0, 100.0)  # scikit-learn's C: inverse L2 strength


def training_lines(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    from trainers.data.captions import compose_line_tags
    from trainers.data.ingest.synth import sample_face

    rng = random.Random(seed)
    lines, mentioned = [], []
    for _ in range(n):
        line, kept = compose_line_tags(sample_face(rng).tags, rng)
        lines.append(line)
        mentioned.append(kept)
    return lines, mentioned


def tag_groups() -> list[list[str]]:
    from trainers.data.ingest.synth import ACCESSORIES, BACKGROUNDS, EYE_COLOURS, HAIR_COLOURS

    return [sorted(HAIR_COLOURS), sorted(EYE_COLOURS), sorted(BACKGROUNDS)] + [[a] for a in ACCESSORIES]


def probe(train_x, labels, test_x, prompts, vocabulary, groups, strength) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    probs = np.zeros((len(test_x), len(vocabulary)))
    for j in range(len(vocabulary)):
        fit = LogisticRegression(C=strength, max_iter=2000).fit(train_x, labels[:, j])
        probs[:, j] = fit.predict_proba(test_x)[:, 1]
    index = {t: j for j, t in enumerate(vocabulary)}
    threshold, argmax = [], []
    for p, row in zip(prompts, probs):
        threshold.append(np.mean([row[index[t]] > 0.5 for t in p["tags"]]))
        won = []
        for t in p["tags"]:
            group = next(g for g in groups if t in g)
            won.append(row[index[t]] > 0.5 if len(group) == 1 else max(group, key=lambda x: row[index[x]]) == t)
        argmax.append(np.mean(won))
    return {"threshold": float(np.mean(threshold)), "group_argmax": float(np.mean(argmax))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=3000, help="composed caption lines to fit the probe on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", default=str(ROOT / "bench" / "prompts_paraphrased.json"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from trainers.conditioning.encoder import DEFAULT_TEXT_ENCODER
    from trainers.conditioning.phrases import POOLINGS, embed

    prompts = json.loads(Path(args.prompts).read_text())["prompts"]
    lines, mentioned = training_lines(args.lines, args.seed)
    groups = tag_groups()
    vocabulary = sorted(t for g in groups for t in g)
    labels = np.array([[t in m for t in vocabulary] for m in mentioned], dtype=int)
    results = {}
    for pooling in POOLINGS:
        t0 = time.perf_counter()
        scale = np.sqrt(384)  # unit-norm embeddings to unit variance per component, as the networks take them
        train_x = embed(DEFAULT_TEXT_ENCODER, lines, pooling) * scale
        test_x = embed(DEFAULT_TEXT_ENCODER, [p["prompt"] for p in prompts], pooling) * scale
        encode_s = time.perf_counter() - t0
        per_strength = {str(c): probe(train_x, labels, test_x, prompts, vocabulary, groups, c) for c in STRENGTHS}
        results[pooling] = {
            "median_threshold": float(np.median([v["threshold"] for v in per_strength.values()])),
            "median_group_argmax": float(np.median([v["group_argmax"] for v in per_strength.values()])),
            "per_strength": per_strength, "encode_seconds": encode_s}
        print(pooling, json.dumps({k: v for k, v in results[pooling].items() if k != "per_strength"}), flush=True)
    out = {"bench": "text_encoder_probe", "encoder": DEFAULT_TEXT_ENCODER, "lines": args.lines, "seed": args.seed,
           "prompts": len(prompts), "results": results,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
           "notes": "linear probe per tag from caption-line embeddings (composed from synthetic faces' tags) to "
                    "the tags each line mentions, applied to the paraphrased prompts; medians over C in "
                    f"{list(STRENGTHS)}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
