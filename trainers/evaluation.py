"""Evaluation of a generator during training (rank 0): FID, KID, precision/recall, per-tag accuracy and
text agreement.

What to compute comes from the spec's ``eval`` section. FID, KID and precision/recall (``pr``) read
InceptionV3 features: the weights file is found (``eval.fid_weights``, ``$GANRAY_FID_WEIGHTS``) or
downloaded into the cache when the loop starts, so a missing file or a failed download fails then,
not hours later. Generated images come from fixed seeds (and,
for conditional models, conditions drawn from the dataset's own: tag sets, or caption
lines), with StyleGAN2's noise fixed, and no draw touches the training run's random streams.
Every number comes with its settings (``eval_settings``).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trainers.conditioning import Conditioning, TagConditioning, TagEncoder
from trainers.data.manifest import Manifest
from trainers.grid import to_uint8
from trainers.networks import generate_images
from trainers.spec import JobSpec
from trainers.stored_order import iter_samples, read_images

EVAL_SEED = 1234567
INCEPTION_METRICS = frozenset({"fid", "kid", "pr"})


class Evaluator:
    """Computes the spec's eval.metrics for a generator; one instance per run, on rank 0."""

    def __init__(self, spec: JobSpec, manifest: Manifest, cond: Conditioning | TagEncoder | None,
                 device: torch.device | None = None):
        """cond: the loop's conditioning (a bare TagEncoder is taken as tags). Raises ValueError now (not at
        the first evaluation) when FID/KID/PR have no Inception weights (none named and the download
        failed), tag_accuracy has no tags, or text_agreement has no text model or no tags to judge by."""
        self.ev, self.url, self.manifest = spec.eval, spec.data.url, manifest
        if isinstance(cond, TagEncoder) and not isinstance(cond, TagConditioning):
            cond = TagConditioning(cond.vocabulary, self.url)
        self.cond = cond
        self.device = device or torch.device("cpu")
        self.metrics = list(self.ev.metrics)
        self.weights = None
        if INCEPTION_METRICS & set(self.metrics):
            from trainers.metrics.inception import resolve_weights

            self.weights = resolve_weights(self.ev.fid_weights)
        kind = cond.kind if cond is not None else "none"
        if "tag_accuracy" in self.metrics and (kind != "tags" or not cond.dim):
            raise ValueError("eval.metrics has tag_accuracy but the model is not tag-conditioned")
        if "text_agreement" in self.metrics and (kind != "text" or not manifest.vocabulary):
            raise ValueError("eval.metrics has text_agreement: it needs a text-conditioned model and a dataset "
                             "with tags (the judge reads them)")
        self._net = self._real = self._judge = None
        self._judge_scores: dict[str, Any] = {}
        self._prompts: tuple[list[str], list[list[str]], torch.Tensor] | None = None

    @property
    def tags(self) -> TagConditioning | None:
        return self.cond if isinstance(self.cond, TagConditioning) else None

    # -- inputs ----------------------------------------------------------
    def _conditions(self, n: int, seed: int) -> torch.Tensor | None:
        """n conditions drawn (with replacement, seeded) from the dataset's own (tag sets or caption lines)."""
        return self.cond.draw(n, seed) if self.cond is not None else None

    def _generate(self, g, n: int, seed: int, c: torch.Tensor | None) -> np.ndarray:
        z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
        out = []
        for i in range(0, n, 256):
            ci = c[i:i + 256].to(self.device) if c is not None else None
            out.append(to_uint8(generate_images(g, z[i:i + 256].to(self.device), ci)))
        return np.concatenate(out)

    def _real_chunks(self):
        batch = []
        for sample in iter_samples(self.url, self.ev.num_real):
            batch.append(sample["image"])
            if len(batch) == 256:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    # -- metrics ---------------------------------------------------------
    def evaluate(self, g, step: int) -> dict[str, Any]:
        """The configured metrics of g now, plus ``eval_seconds`` and an ``eval_settings`` line."""
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        settings = []
        if self.weights is not None:
            out.update(self._inception_metrics(g, settings))
        if "tag_accuracy" in self.metrics:
            out.update(self._tag_accuracy(g, settings))
        if "text_agreement" in self.metrics:
            out.update(self._text_agreement(g, settings))
        out["eval_seconds"] = time.perf_counter() - t0
        out["eval_settings"] = "; ".join(settings)
        return out

    def _inception_metrics(self, g, settings: list[str]) -> dict[str, Any]:
        from trainers.metrics.fid import RealStatistics, feature_stats, frechet_distance, kernel_inception_distance
        from trainers.metrics.inception import RESIZE_SETTINGS, features, load_inception, weights_digest
        from trainers.metrics.precision_recall import NEIGHBOURS, precision_recall

        if self._net is None:
            self._net = load_inception(self.weights, self.device)
        if self._real is None:
            self._real, _ = RealStatistics.load_or_compute(self.manifest.dataset_hash, self.weights,
                                                           self.ev.num_real, self._net, self._real_chunks)
        n = self.ev.num_samples
        feats = []
        c_all = self._conditions(n, EVAL_SEED + 1)
        for i in range(0, n, 500):
            m = min(500, n - i)
            c = c_all[i:i + m] if c_all is not None else None
            feats.append(features(self._net, self._generate(g, m, EVAL_SEED + i, c)))
        gen = np.concatenate(feats)
        out: dict[str, Any] = {}
        if "fid" in self.metrics:
            mu, sigma = feature_stats(gen)
            out["fid"] = frechet_distance(self._real.mu, self._real.sigma, mu, sigma)
        if "kid" in self.metrics:
            out["kid"] = kernel_inception_distance(self._real.features, gen)
        if "pr" in self.metrics:
            out["precision"], out["recall"] = precision_recall(self._real.features, gen)
        sha = weights_digest(self.weights)[:12]
        pr_n = min(n, len(self._real.features))
        pr_note = (f"; precision/recall: k={NEIGHBOURS} nearest neighbours on {pr_n} real and {pr_n} generated"
                   if "pr" in self.metrics else "")
        settings.append(f"FID/KID/PR: {n} generated (G_ema, truncation 1, fixed noise) vs {self._real.num_images} "
                        f"real of dataset {self.manifest.dataset_hash[:12]}; {RESIZE_SETTINGS}; weights sha256 "
                        f"{sha}; KID 100 subsets of <= 1000{pr_note}")
        return out

    def judge(self):
        """The per-tag judge of this dataset (trained once on the real images and cached)."""
        from trainers.metrics.tag_accuracy import load_or_train_judge

        if self._judge is None:
            encoder = TagEncoder(self.manifest.vocabulary)

            def labelled():
                images, tag_lists = read_images(self.url, limit=20000)
                return images, encoder.encode(tag_lists).numpy()

            self._judge, self._judge_scores, _ = load_or_train_judge(self.manifest.dataset_hash, labelled,
                                                                     encoder.vocabulary, self.ev.judge_epochs)
        return self._judge

    def _judge_note(self) -> str:
        return (f"judged by a CNN trained on the real images (every 10th held out: judge_real_acc "
                f"{self._judge_scores.get('judge_real_acc', float('nan')):.3f}); threshold 0.5")

    def _judge_keys(self) -> dict[str, Any]:
        return {k: v for k, v in self._judge_scores.items()
                if k in ("judge_real_acc", "judge_real_acc_min", "judge_real_acc_exact")}

    def _tag_accuracy(self, g, settings: list[str]) -> dict[str, Any]:
        from trainers.metrics.tag_accuracy import predict, score

        judge = self.judge()
        n = self.ev.tag_samples
        c = self._conditions(n, EVAL_SEED + 2)
        images = self._generate(g, n, EVAL_SEED + 3, c)
        out: dict[str, Any] = score(predict(judge, images), c.numpy(), self.cond.vocabulary)
        out.update(self._judge_keys())
        settings.append(f"tag accuracy: {n} samples (G_ema, fixed seeds) for tag sets drawn from the dataset, "
                        f"{self._judge_note()}")
        return out

    def _held_out_prompts(self) -> tuple[list[str], list[list[str]], torch.Tensor]:
        """The evaluation's prompts (composed from the dataset's tag sets, none a training caption line),
        their tags and their embeddings: made once per run."""
        from trainers.data.captions import caption_lines
        from trainers.conditioning.text import encode_prompts
        from trainers.conditioning.text_cache import iter_captions
        from trainers.metrics.text_agreement import compose_prompts

        if self._prompts is None:
            pool, seen = [], set()
            for sample in iter_samples(self.url):
                pool.append(sample["tags"])
            for _, caption in iter_captions(self.url, self.manifest):
                seen.update(caption_lines(caption))
            prompts, tags = compose_prompts(pool, self.ev.tag_samples, EVAL_SEED + 4, seen)
            self._prompts = (prompts, tags, encode_prompts(self.cond.encoder_name, self.cond.pooling, prompts))
        return self._prompts

    def _text_agreement(self, g, settings: list[str]) -> dict[str, Any]:
        from trainers.metrics.tag_accuracy import predict, score
        from trainers.metrics.text_agreement import DISTRACTORS, prompt_fractions, retrieval_r1

        judge = self.judge()
        prompts, tags, c = self._held_out_prompts()
        requested = TagEncoder(self.manifest.vocabulary).encode(tags).numpy()
        probs = predict(judge, self._generate(g, len(prompts), EVAL_SEED + 5, c))
        out: dict[str, Any] = score(probs, requested, self.manifest.vocabulary, prefix="text_tag_acc")
        out["text_prompt_score"] = float(np.nanmean(prompt_fractions(probs, requested)))
        out["text_retrieval_r1"] = retrieval_r1(probs, requested, EVAL_SEED + 6)
        out.update(self._judge_keys())
        settings.append(f"text agreement: {len(prompts)} prompts composed from tag subsets of the dataset's tag "
                        f"sets with the caption templates, none a training caption line, encoded by "
                        f"{self.cond.encoder_name}; one sample each (G_ema, fixed seeds, CA mean), "
                        f"{self._judge_note()}; text_prompt_score: mean over prompts of the share of prompted tags "
                        f"recognised; retrieval R@1 against {DISTRACTORS} prompts whose tags are not all the "
                        f"prompt's (chance 0.01)")
        return out
