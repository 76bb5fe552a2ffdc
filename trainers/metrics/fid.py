"""FID and KID from InceptionV3 pool3 features; real-image statistics cached per dataset.

FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)), with the trace
of the matrix square root computed from the eigenvalues of S_r^(1/2) S_g S_r^(1/2) (symmetric,
so numerically tame). KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel
(x.y / d + 1)^3 averaged over random subsets, as StyleGAN2-ADA computes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from trainers.cache_paths import under_root
from trainers.metrics import cache_dir
from trainers.metrics.inception import RESIZE_SETTINGS, features, weights_digest

KID_SUBSETS, KID_SUBSET_SIZE, KID_MAX_REAL = 100, 1000, 10000
CACHE_VERSION = 1


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of N x D features (covariance with N - 1)."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between two Gaussians (FID when they fit Inception features)."""
    diff = mu1 - mu2
    s1 = _sqrt_psd(sigma1)
    eig = np.linalg.eigvalsh(s1 @ sigma2 @ s1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def kernel_inception_distance(real: np.ndarray, gen: np.ndarray, num_subsets: int = KID_SUBSETS,
                              max_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float:
    """KID: the mean over subsets of the unbiased MMD^2 with a cubic polynomial kernel."""
    n = real.shape[1]
    m = min(len(real), len(gen), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, got {len(real)} and {len(gen)}")
    rng = np.random.default_rng(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(len(gen), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


class RealStatistics:
    """mu, sigma and (up to KID_MAX_REAL) features of a dataset's real images, cached on disk.

    The cache key is (dataset hash, weights sha256, number of images, settings version), so a
    changed dataset or other weights never reuse stale numbers.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, feats: np.ndarray, num_images: int):
        self.mu, self.sigma, self.features, self.num_images = mu, sigma, feats, num_images

    @staticmethod
    def cache_path(dataset_hash: str, weights_sha: str, num_real: int) -> Path:
        """The statistics' file, inside the cache folder (CachePathError for a hash that would leave it)."""
        name = f"{dataset_hash[:20]}-{weights_sha[:12]}-n{num_real}-v{CACHE_VERSION}.npz"
        return under_root(cache_dir(), "fid", name)

    @classmethod
    def load_or_compute(cls, dataset_hash: str, weights_path: str | Path, num_real: int, net,
                        chunks: Callable[[], Iterable[np.ndarray]]) -> tuple["RealStatistics", bool]:
        """(statistics, whether they came from the cache); chunks() yields uint8 image batches."""
        path = cls.cache_path(dataset_hash, weights_digest(weights_path), num_real)
        if path.exists():
            with np.load(path) as z:
                return cls(z["mu"], z["sigma"], z["features"], int(z["num_images"])), True
        feats, count = [], 0
        for batch in chunks():
            batch = batch[: num_real - count]
            feats.append(features(net, batch))
            count += len(batch)
            if count >= num_real:
                break
        all_feats = np.concatenate(feats)
        mu, sigma = feature_stats(all_feats)
        keep = all_feats[np.random.default_rng(0).permutation(len(all_feats))[:KID_MAX_REAL]].astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, mu=mu, sigma=sigma, features=keep, num_images=len(all_feats),
                 settings=json.dumps({"resize": RESIZE_SETTINGS}))
        os.replace(tmp, path)
        return cls(mu, sigma, keep, len(all_feats)), False
