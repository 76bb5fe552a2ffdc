"""Evaluation of a generator during training (rank 0): FID, KID and per-tag accuracy, with their settings.

What to compute comes from the spec's ``eval`` section. FID/KID need the Inception weights as
a local file (``eval.fid_weights`` or ``$GANRAY_FID_WEIGHTS``); asking for them without it
fails when the loop starts, not hours later. Generated images come from fixed seeds (and,
for conditional models, tag sets drawn from the dataset's own), with StyleGAN2's noise
fixed, and no draw touches the training run's random streams.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trainers.conditioning import TagEncoder
from trainers.data.manifest import Manifest
from trainers.grid import to_uint8
from trainers.networks import generate_images
from trainers.spec import JobSpec
from trainers.stored_order import iter_samples, read_images

EVAL_SEED = 1234567


class Evaluator:
    """Computes the spec's eval.metrics for a generator; one instance per run, on rank 0."""

    def __init__(self, spec: JobSpec, manifest: Manifest, tags: TagEncoder | None,
                 device: torch.device | None = None):
        """Raises ValueError now (not at the first evaluation) when FID/KID have no Inception weights
        or tag_accuracy has no tags."""
        self.ev, self.url, self.manifest, self.tags = spec.eval, spec.data.url, manifest, tags
        self.device = device or torch.device("cpu")
        self.metrics = list(self.ev.metrics)
        self.weights = None
        if "fid" in self.metrics or "kid" in self.metrics:
            from trainers.metrics.inception import resolve_weights

            self.weights = resolve_weights(self.ev.fid_weights)
        if "tag_accuracy" in self.metrics and (tags is None or not tags.dim):
            raise ValueError("eval.metrics has tag_accuracy but the model is not tag-conditioned")
        self._net = self._real = self._judge = None
        self._judge_scores: dict[str, Any] = {}
        self._tag_pool: list[list[str]] | None = None

    # -- inputs ----------------------------------------------------------
    def _tag_sets(self, n: int, seed: int) -> torch.Tensor | None:
        """n tag vectors drawn (with replacement, seeded) from the dataset's own tag sets."""
        if self.tags is None:
            return None
        if self._tag_pool is None:
            self._tag_pool = [s["tags"] for s in iter_samples(self.url)]
        idx = np.random.default_rng(seed).integers(0, len(self._tag_pool), n)
        return self.tags.encode([self._tag_pool[i] for i in idx])

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
            out.update(self._fid_kid(g, settings))
        if "tag_accuracy" in self.metrics:
            out.update(self._tag_accuracy(g, settings))
        out["eval_seconds"] = time.perf_counter() - t0
        out["eval_settings"] = "; ".join(settings)
        return out

    def _fid_kid(self, g, settings: list[str]) -> dict[str, Any]:
        from trainers.metrics.fid import RealStatistics, feature_stats, frechet_distance, kernel_inception_distance
        from trainers.metrics.inception import RESIZE_SETTINGS, features, load_inception, weights_digest

        if self._net is None:
            self._net = load_inception(self.weights, self.device)
        if self._real is None:
            self._real, _ = RealStatistics.load_or_compute(self.manifest.dataset_hash, self.weights,
                                                           self.ev.num_real, self._net, self._real_chunks)
        n = self.ev.num_samples
        feats = []
        c_all = self._tag_sets(n, EVAL_SEED + 1)
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
        sha = weights_digest(self.weights)[:12]
        settings.append(f"FID/KID: {n} generated (G_ema, truncation 1, fixed noise) vs {self._real.num_images} real "
                        f"of dataset {self.manifest.dataset_hash[:12]}; {RESIZE_SETTINGS}; weights sha256 {sha}; "
                        f"KID 100 subsets of <= 1000")
        return out

    def _tag_accuracy(self, g, settings: list[str]) -> dict[str, Any]:
        from trainers.metrics.tag_accuracy import load_or_train_judge, predict, score

        if self._judge is None:
            def labelled():
                images, tag_lists = read_images(self.url, limit=20000)
                return images, self.tags.encode(tag_lists).numpy()

            self._judge, self._judge_scores, _ = load_or_train_judge(self.manifest.dataset_hash, labelled,
                                                                     self.tags.vocabulary,
                                                                     self.ev.judge_epochs)
        n = self.ev.tag_samples
        c = self._tag_sets(n, EVAL_SEED + 2)
        images = self._generate(g, n, EVAL_SEED + 3, c)
        out: dict[str, Any] = score(predict(self._judge, images), c.numpy(), self.tags.vocabulary)
        out.update({k: v for k, v in self._judge_scores.items()
                    if k in ("judge_real_acc", "judge_real_acc_min", "judge_real_acc_exact")})
        settings.append(f"tag accuracy: {n} samples (G_ema, fixed seeds) for tag sets drawn from the dataset, judged "
                        f"by a CNN trained on the real images (every 10th held out: judge_real_acc "
                        f"{self._judge_scores.get('judge_real_acc', float('nan')):.3f}); threshold 0.5")
        return out
